"""Derivatives through least_squares: grad, jvp, vjp, jacfwd/jacrev, implicit and unrolled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import SOLVERS, exponential_decay, gaussian_peak

import jaxlm


def exponential_growth(params, t, y):
    return params[0] * jnp.exp(params[1] * t) - y


T = jnp.linspace(-1.0, 1.0, 20)
# Data the model cannot fit: the final residuals are large (cost ≈ 10 against a signal of
# ½‖y‖² ≈ 70), so the Gauss–Newton Hessian JᵀJ is not the exact one, and the derivative built
# on it is wrong by about 12%.
Y_LARGE_RESIDUAL = 2.0 * jnp.exp(1.5 * T) + jnp.sin(9 * T) + jnp.cos(4 * T)
X0 = jnp.array([1.0, 1.0])
# Solved to the last digit (it stops when a step changes nothing), so that finite differences
# of the solution are meaningful.
TIGHT = jaxlm.LevenbergMarquardt(ftol=0.0, xtol=0.0, gtol=1e-13)


def _params(y, solver=TIGHT, adjoint=None, max_steps=1000):
    solution = jaxlm.least_squares(
        exponential_growth, X0, (T, y), solver=solver, adjoint=adjoint, max_steps=max_steps
    )
    return solution.params


def _central_differences(fun, y, indices, step=2e-2):
    """d fun / d y[i] for each i by the fourth-order central stencil, in one vmapped call.

    The solution is accurate to about 1e-9 (the problem squares its condition number), so the
    step must be large for that error to be
    small against it; the fourth-order stencil keeps the truncation error at O(step⁴).
    """
    basis = jnp.eye(y.size)[jnp.asarray(indices)] * step
    points = jnp.concatenate([y + basis, y - basis, y + 2 * basis, y - 2 * basis])
    plus, minus, plus2, minus2 = jnp.split(jax.vmap(fun)(points), 4)
    return (8 * (plus - minus) - (plus2 - minus2)) / (12 * step)


FD_INDICES = [0, 7, 19]


@pytest.fixture(scope="module")
def finite_differences():
    return _central_differences(jax.jit(_params), Y_LARGE_RESIDUAL, FD_INDICES)


@pytest.fixture(scope="module")
def implicit_jacobian():
    return jax.jit(jax.jacrev(_params))(Y_LARGE_RESIDUAL)


def test_implicit_matches_finite_differences_on_large_residuals(implicit_jacobian, finite_differences):
    np.testing.assert_allclose(implicit_jacobian[:, FD_INDICES].T, finite_differences, rtol=1e-5, atol=1e-9)


def test_gauss_newton_option_is_wrong_by_percents_on_large_residuals(implicit_jacobian):
    gauss_newton = jax.jacrev(lambda y: _params(y, adjoint=jaxlm.ImplicitAdjoint(hessian="gauss_newton")))(
        Y_LARGE_RESIDUAL
    )
    relative = np.max(np.abs(gauss_newton - implicit_jacobian)) / np.max(np.abs(implicit_jacobian))
    assert relative > 0.05


def test_gauss_newton_option_is_exact_for_zero_residuals():
    y = 0.8 * jnp.exp(2.5 * T)
    exact = jax.jacrev(_params)(y)
    gauss_newton = jax.jacrev(lambda y: _params(y, adjoint=jaxlm.ImplicitAdjoint(hessian="gauss_newton")))(y)
    np.testing.assert_allclose(gauss_newton, exact, rtol=1e-6, atol=1e-10)


def test_forward_mode_equals_reverse_mode(implicit_jacobian):
    forward = jax.jit(jax.jacfwd(_params))(Y_LARGE_RESIDUAL)
    np.testing.assert_allclose(forward, implicit_jacobian, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("hessian", ["exact", "gauss_newton"])
def test_conjugate_gradients_give_the_derivative_of_the_eigendecomposition(hessian, implicit_jacobian):
    """H is never formed with linear_solver="cg": CG on Hessian–vector products, in reverse and
    forward mode, agrees with the eigendecomposition to CG's tolerance (√ε)."""

    def params(y, linear_solver):
        return _params(y, adjoint=jaxlm.ImplicitAdjoint(hessian=hessian, linear_solver=linear_solver))

    reference = implicit_jacobian if hessian == "exact" else jax.jacrev(params)(Y_LARGE_RESIDUAL, "eigh")
    reverse = jax.jit(jax.jacrev(params), static_argnums=1)(Y_LARGE_RESIDUAL, "cg")
    forward = jax.jit(jax.jacfwd(params), static_argnums=1)(Y_LARGE_RESIDUAL, "cg")
    np.testing.assert_allclose(reverse, reference, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(forward, reference, rtol=1e-6, atol=1e-9)


def _jumping_fit(theta, adjoint):
    """r = (x0 + x1 − 1, θ(x0 − x1) + ½): at θ = 0 every point of x0 + x1 = 1 is a minimum (H is
    singular), and the change of θ pulls along that line, where H has no curvature: the
    derivative of the minimiser does not exist."""

    def residual(x, theta):
        return jnp.stack([x[0] + x[1] - 1, theta * (x[0] - x[1]) + 0.5])

    return jaxlm.least_squares(residual, jnp.array([0.2, 0.3]), (theta,), adjoint=adjoint)


def test_conjugate_gradients_fail_loudly_where_the_derivative_does_not_exist():
    theta, direction = jnp.asarray(0.0), jnp.asarray(1.0)
    regularised, tangent = jax.jvp(lambda th: _jumping_fit(th, None), (theta,), (direction,))
    assert int(regularised.status) == jaxlm.Status.DERIVATIVE_REGULARISED
    assert np.all(np.isfinite(tangent.params))  # the pseudo-inverse drops the direction
    adjoint = jaxlm.ImplicitAdjoint(linear_solver="cg")
    _, tangent = jax.jvp(lambda th: _jumping_fit(th, adjoint), (theta,), (direction,))
    assert np.all(np.isnan(tangent.params))
    assert np.isnan(jax.grad(lambda th: _jumping_fit(th, adjoint).params[0])(theta))


def test_conjugate_gradients_on_a_singular_hessian():
    """a and b enter only as a + b, so H is singular. Forward mode: a change of the data moves the
    solution within the range of H, where CG from 0 stays, so it finds the pseudo-inverse's tangent
    as the eigendecomposition does. Reverse mode solves with the cotangent dx, which has a
    component in the null space of H: CG cannot drop it, and the gradient is NaN, not a wrong
    number."""
    t = jnp.linspace(0.0, 1.0, 10)

    def redundant(params, y):
        return (params[0] + params[1]) * t - y

    def fitted(y, linear_solver):
        adjoint = jaxlm.ImplicitAdjoint(linear_solver=linear_solver)
        return jaxlm.least_squares(redundant, jnp.array([1.0, 0.5]), (y,), adjoint=adjoint).params

    y = 3.0 * t + 0.1 * jnp.cos(5 * t)
    pseudo_inverse = jax.jacfwd(fitted)(y, "eigh")
    np.testing.assert_allclose(jax.jacfwd(fitted)(y, "cg"), pseudo_inverse, rtol=1e-6, atol=1e-12)
    assert np.all(np.isnan(jax.jacrev(fitted)(y, "cg")))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"linear_solver": "lu"}, "linear_solver must be 'auto', 'eigh' or 'cg'"),
        ({"cg_tolerance": 0.0}, "cg_tolerance must be None or in"),
        ({"cg_tolerance": 2.0}, "cg_tolerance must be None or in"),
        ({"max_cg_iterations": 0}, "max_cg_iterations must be None or an int >= 1"),
        ({"max_cg_iterations": 10.0}, "max_cg_iterations must be None or an int >= 1"),
    ],
)
def test_bad_implicit_adjoint_options_are_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        jaxlm.ImplicitAdjoint(**options)


# Linearly converging methods stop (by ftol) before the derivative of their iteration has
# converged as far, so their unrolled derivative is compared more loosely.
UNROLLED_RTOL = {"gauss_newton": 1e-4, "gauss_newton_backtracking": 1e-4, "hybrid": 1e-4}


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_every_solver_implicit_matches_unrolled(solver_name, implicit_jacobian):
    if solver_name == "lbfgs_lm":
        pytest.skip("optax's L-BFGS line search is a lax.while_loop, which reverse mode cannot unroll")
    solver = SOLVERS[solver_name]
    unrolled = jax.jit(
        jax.jacrev(lambda y: _params(y, solver=solver, adjoint=jaxlm.UnrolledAdjoint(), max_steps=64))
    )(Y_LARGE_RESIDUAL)
    implicit = jax.jacrev(lambda y: _params(y, solver=solver))(Y_LARGE_RESIDUAL)
    np.testing.assert_allclose(unrolled, implicit, rtol=UNROLLED_RTOL.get(solver_name, 1e-5), atol=1e-8)
    # Where the solver finds the same minimum as the tight reference solve, so does its derivative.
    if np.allclose(_params(Y_LARGE_RESIDUAL, solver=solver), _params(Y_LARGE_RESIDUAL), rtol=1e-6):
        np.testing.assert_allclose(implicit, implicit_jacobian, rtol=1e-6, atol=1e-9)
    else:
        assert solver_name == "newton_raphson"  # it converges to another stationary point from X0


def test_unrolled_forward_mode_and_early_stop():
    """The unrolled adjoint differentiates what the iterations computed, also when stopped early."""
    y = Y_LARGE_RESIDUAL

    def after_three_steps(y):
        return _params(y, adjoint=jaxlm.UnrolledAdjoint(), max_steps=3)

    forward = jax.jacfwd(after_three_steps)(y)
    reverse = jax.jacrev(after_three_steps)(y)
    np.testing.assert_allclose(forward, reverse, rtol=1e-10, atol=1e-12)
    fd = _central_differences(after_three_steps, y, FD_INDICES, step=1e-4)
    np.testing.assert_allclose(forward[:, FD_INDICES].T, fd, rtol=1e-5, atol=1e-8)


def test_cost_value_and_grad_jvp_vjp():
    def cost(y):
        return jaxlm.least_squares(exponential_growth, X0, (T, y), solver=TIGHT).cost

    value, gradient = jax.value_and_grad(cost)(Y_LARGE_RESIDUAL)
    # At a minimum dF*/dy = ∂F/∂y = −r (the envelope theorem).
    residual = exponential_growth(_params(Y_LARGE_RESIDUAL), T, Y_LARGE_RESIDUAL)
    np.testing.assert_allclose(gradient, -residual, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(value, 0.5 * jnp.sum(residual**2), rtol=1e-12)
    direction = jnp.cos(jnp.arange(T.size))
    _, tangent = jax.jvp(cost, (Y_LARGE_RESIDUAL,), (direction,))
    np.testing.assert_allclose(tangent, jnp.dot(gradient, direction), rtol=1e-8)
    _, pullback = jax.vjp(cost, Y_LARGE_RESIDUAL)
    np.testing.assert_allclose(pullback(1.0)[0], gradient, rtol=1e-12)


def test_residual_is_differentiated_too():
    def residual_sum(y):
        return jnp.sum(jaxlm.least_squares(exponential_growth, X0, (T, y), solver=TIGHT).residual ** 3)

    gradient = jax.grad(residual_sum)(Y_LARGE_RESIDUAL)
    fd = _central_differences(residual_sum, Y_LARGE_RESIDUAL, FD_INDICES)
    np.testing.assert_allclose(gradient[jnp.asarray(FD_INDICES)], fd, rtol=1e-5)


def test_gradient_with_respect_to_start_is_zero():
    gradient = jax.grad(
        lambda x0: jnp.sum(jaxlm.least_squares(exponential_growth, x0, (T, Y_LARGE_RESIDUAL)).params)
    )(X0)
    np.testing.assert_array_equal(gradient, jnp.zeros(2))


def test_pytree_params_and_pytree_args():
    """A dict of parameters, differentiated with respect to a dict of hyperparameters in args."""
    x = jnp.linspace(-5.0, 5.0, 41)

    def residual(params, x, hyper):
        clean = hyper["height"] * jnp.exp(-0.5 * ((x - 0.7) / 1.2) ** 2) + hyper["level"]
        return gaussian_peak(params, x, clean + 0.05 * jnp.sin(7 * x))

    start = {"peak": jnp.array([2.0, 0.0, 1.0]), "background": jnp.array([0.0, 0.0])}
    hyper = {"height": jnp.array(3.0), "level": jnp.array(0.5)}

    def fitted_height(hyper):
        return jaxlm.least_squares(residual, start, (x, hyper), solver=TIGHT).params["peak"][0]

    gradient = jax.grad(fitted_height)(hyper)
    assert set(gradient) == {"height", "level"}
    for name in ("height", "level"):

        def along(value, name=name):
            return fitted_height({**hyper, name: value})

        fd = _central_differences(along, hyper[name][None], [0])
        np.testing.assert_allclose(gradient[name], fd[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gradient["height"], 1.0, rtol=0.05)  # the fit follows the data


def test_closed_over_values_are_differentiated():
    def via_closure(scale):
        residual = lambda p: exponential_growth(p, T, scale * Y_LARGE_RESIDUAL)
        return jaxlm.least_squares(residual, X0, solver=TIGHT).params

    def via_args(scale):
        return _params(scale * Y_LARGE_RESIDUAL)

    np.testing.assert_allclose(jax.jacrev(via_closure)(1.0), jax.jacrev(via_args)(1.0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(via_closure)(1.0), jax.jacrev(via_args)(1.0), rtol=1e-9, atol=1e-12)


def test_singular_hessian_is_regularised_and_reported():
    """Redundant parameters a and b enter only as a + b: H is singular at every solution."""
    t = jnp.linspace(0.0, 1.0, 10)

    def redundant(params, y):
        return (params[0] + params[1]) * t - y

    def solve(y):
        return jaxlm.least_squares(redundant, jnp.array([1.0, 0.5]), (y,))

    y = 3.0 * t + 0.1 * jnp.cos(5 * t)
    jacobian = jax.jacrev(lambda y: solve(y).params)(y)
    assert np.all(np.isfinite(jacobian))
    # The minimum-norm tangent splits d(a + b)/dy = t / (t·t) equally between a and b.
    np.testing.assert_allclose(jacobian[0], jacobian[1], rtol=1e-9)
    np.testing.assert_allclose(jacobian[0] + jacobian[1], t / jnp.dot(t, t), rtol=1e-9, atol=1e-12)

    differentiated, _ = jax.jvp(solve, (y,), (jnp.ones_like(y),))
    assert int(differentiated.status) == jaxlm.Status.DERIVATIVE_REGULARISED
    assert bool(differentiated.success)
    assert int(solve(y).status) != jaxlm.Status.DERIVATIVE_REGULARISED  # only when differentiated


@pytest.mark.parametrize("linear_solver", ["eigh", "cg"])
def test_float32_gradient(linear_solver):
    y32 = Y_LARGE_RESIDUAL.astype(jnp.float32)
    adjoint = jaxlm.ImplicitAdjoint(linear_solver=linear_solver)

    def params32(y):
        return jaxlm.least_squares(
            exponential_growth, X0.astype(jnp.float32), (T.astype(jnp.float32), y), adjoint=adjoint
        ).params

    jacobian32 = jax.jacrev(params32)(y32)
    assert jacobian32.dtype == jnp.float32
    np.testing.assert_allclose(jacobian32, jax.jacrev(_params)(Y_LARGE_RESIDUAL), rtol=2e-3, atol=1e-6)


def test_grad_does_not_recompile():
    traces = []

    def counting_residual(params, t, y):
        traces.append(None)
        return exponential_decay(params, t, y)

    @jax.jit
    def loss_grad(y):
        return jax.grad(lambda y: jnp.sum(jaxlm.least_squares(counting_residual, X0, (T, y)).params))(y)

    first = loss_grad(2.5 * jnp.exp(-1.3 * T))
    count = len(traces)
    second = loss_grad(1.5 * jnp.exp(-0.7 * T))
    assert len(traces) == count
    assert not np.allclose(first, second)


def _sum_of_params(y):
    return jnp.sum(jaxlm.least_squares(exponential_growth, X0, (T, y)).params)


def test_vmap_of_grad_and_grad_of_vmap_agree_with_one_by_one():
    ys = jnp.stack([Y_LARGE_RESIDUAL, 1.3 * Y_LARGE_RESIDUAL, Y_LARGE_RESIDUAL + jnp.cos(3 * T)])
    ys = jnp.concatenate([ys, ys[:1].at[0, 4].set(jnp.nan)])  # a fit with NaN in its data
    per_fit = jax.jit(jax.vmap(jax.grad(_sum_of_params)))(ys)
    summed = jax.jit(jax.grad(lambda ys: jnp.sum(jax.vmap(_sum_of_params)(ys))))(ys)
    for i in range(3):
        single = jax.grad(_sum_of_params)(ys[i])
        np.testing.assert_allclose(per_fit[i], single, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(summed[i], single, rtol=1e-9, atol=1e-12)
    assert not bool(jax.vmap(lambda y: jaxlm.least_squares(exponential_growth, X0, (T, y)).success)(ys)[3])


def test_indefinite_hessian_at_a_saddle_is_reported():
    """Started on the line x1 = 0, the solve stops at the saddle (θ, 0) of ½((x0 − θ)² + (x1² − 1)²)."""

    def saddle(x, theta):
        return jnp.stack([x[0] - theta, x[1] ** 2 - 1])

    def solve(theta):
        return jaxlm.least_squares(saddle, jnp.array([1.0, 0.0]), (theta,))

    solution, tangent = jax.jvp(solve, (jnp.asarray(0.3),), (jnp.asarray(1.0),))
    np.testing.assert_allclose(solution.params, [0.3, 0.0], atol=1e-10)
    np.testing.assert_allclose(tangent.params, [1.0, 0.0], atol=1e-10)  # H = diag(1, −2) is invertible
    assert int(solution.status) == jaxlm.Status.DERIVATIVE_REGULARISED
    np.testing.assert_allclose(jax.grad(lambda th: solve(th).params[0])(0.3), 1.0, atol=1e-10)
