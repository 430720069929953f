"""MatrixFreeLM: Levenberg–Marquardt with conjugate gradients on Jacobian–vector products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import PROBLEMS, exponential_decay

import jaxlm
from jaxlm._loop import Problem, run
from jaxlm._solver import MatrixFreeLM
from jaxlm._trace import StepKind

N = 100  # parameters of the generated problem, with M = 2N residuals
M = 2 * N


def blurred_tanh(x, b):
    """r = A·(tanh(x) + 0.1x³) − b for a sparse A (2N × N): a periodic 3-point blur over a first
    difference. Zero residual at the x that made b; J = A·diag(s'(x)) is never needed."""
    u = jnp.tanh(x) + 0.1 * x**3
    blurred = 0.6 * u + 0.2 * (jnp.roll(u, 1) + jnp.roll(u, -1))
    return jnp.concatenate([blurred, u - jnp.roll(u, 1)]) - b


X_TRUE = jnp.asarray(np.random.default_rng(0).uniform(-2.0, 2.0, N))
B = blurred_tanh(X_TRUE, 0.0)
X0 = jnp.zeros(N)


@jax.jit
def solve(x0, b):
    return jaxlm.least_squares(blurred_tanh, x0, (b,), solver=MatrixFreeLM())


@jax.jit
def solve_dense(x0, b):
    return jaxlm.least_squares(blurred_tanh, x0, (b,), solver=jaxlm.LevenbergMarquardt())


@pytest.mark.parametrize(
    "problem_name, rtol",
    [
        ("exponential_decay", 1e-9),
        ("rosenbrock", 1e-9),
        ("gaussian_peak_dict", 1e-6),
        ("bard", 1e-6),
        ("box_3d", 1e-9),
        ("brown_dennis", 1e-4),  # a flat minimum with large residuals: both stop by ftol, a little apart
    ],
)
def test_agrees_with_dense_levenberg_marquardt(problem_name, rtol):
    problem = PROBLEMS[problem_name]
    matrix_free = jaxlm.least_squares(problem.fun, problem.x0, problem.args, solver=MatrixFreeLM())
    dense = jaxlm.least_squares(problem.fun, problem.x0, problem.args, solver=jaxlm.LevenbergMarquardt())
    assert bool(matrix_free.success) and bool(dense.success), (matrix_free.status, dense.status)
    np.testing.assert_allclose(matrix_free.cost, dense.cost, rtol=1e-9, atol=1e-20)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9), matrix_free.params, dense.params
    )


def test_generated_problem_in_float64_matches_dense_and_the_truth():
    solution, dense = solve(X0, B), solve_dense(X0, B)
    assert bool(solution.success) and int(solution.num_steps) < 30, solution
    np.testing.assert_allclose(solution.params, X_TRUE, atol=1e-10)
    np.testing.assert_allclose(solution.params, dense.params, atol=1e-10)
    assert float(solution.cost) < 1e-20


def test_generated_problem_converges_cleanly_in_float32():
    solution = solve(X0.astype(jnp.float32), B.astype(jnp.float32))
    assert solution.params.dtype == jnp.float32
    assert int(solution.status) in (jaxlm.Status.CONVERGED_XTOL, jaxlm.Status.CONVERGED_FTOL), solution
    assert int(solution.num_steps) < 50
    np.testing.assert_allclose(solution.params, X_TRUE, atol=1e-3)


def test_badly_scaled_problem_needs_the_diagonal_probes():
    """Powell's badly scaled problem (x* = (1.1e-5, 9.1)): with D = I a CG step converged in the
    residual norm can be tiny along the flat direction; Marquardt scaling with a Jacobi
    preconditioner from the estimated diag(JᵀJ) reaches the solution."""
    problem = PROBLEMS["powell_badly_scaled"]
    solution = jaxlm.least_squares(problem.fun, problem.x0, solver=MatrixFreeLM(diagonal_probes=8))
    assert bool(solution.success)
    np.testing.assert_allclose(solution.params, problem.solution, rtol=1e-6)


def _never(x):
    raise AssertionError("MatrixFreeLM asked for the Jacobian")


def test_the_jacobian_is_never_called():
    problem = Problem(residual=lambda x: blurred_tanh(x, B), jacobian=_never)
    for solver in (MatrixFreeLM(), MatrixFreeLM(diagonal_probes=4)):
        state, num_steps, _ = jax.jit(lambda x0, s=solver: run(s, problem, x0, max_steps=100))(X0)
        assert int(state.status) == jaxlm.Status.CONVERGED_XTOL
        np.testing.assert_allclose(state.x, X_TRUE, atol=1e-8)
        assert 0 < int(state.total_cg_iterations) <= int(num_steps) * MatrixFreeLM().max_cg_iterations


def _intermediate_shapes(jaxpr):
    """The shapes of every value computed in a jaxpr, including those of its loops and branches."""
    shapes = set()
    for equation in jaxpr.eqns:
        shapes.update(tuple(getattr(var.aval, "shape", ())) for var in equation.outvars)
        for param in equation.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    shapes |= _intermediate_shapes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    shapes |= _intermediate_shapes(sub)
    return shapes


def test_no_jacobian_sized_array_is_formed():
    matrix_shapes = {(M, N), (N, M), (N, N)}
    assert _intermediate_shapes(jax.make_jaxpr(solve)(X0, B).jaxpr).isdisjoint(matrix_shapes)
    # The test can see a Jacobian where there is one.
    assert (M, N) in _intermediate_shapes(jax.make_jaxpr(solve_dense)(X0, B).jaxpr)


def test_the_implicit_gradient_forms_no_matrix_either():
    """With MatrixFreeLM the implicit derivative defaults to CG on Hessian–vector products."""
    matrix_shapes = {(M, N), (N, M), (N, N)}
    assert _intermediate_shapes(jax.make_jaxpr(jax.grad(_loss))(B).jaxpr).isdisjoint(matrix_shapes)
    eigh = jaxlm.ImplicitAdjoint(linear_solver="eigh")

    def dense_adjoint_loss(b):
        return jnp.sum(
            jaxlm.least_squares(blurred_tanh, X0, (b,), solver=MatrixFreeLM(), adjoint=eigh).params ** 2
        )

    assert (N, N) in _intermediate_shapes(jax.make_jaxpr(jax.grad(dense_adjoint_loss))(B).jaxpr)


def test_residuals_are_evaluated_once_per_step():
    """The trial point's evaluation is also its linearisation: a rejected step re-evaluates
    nothing at the current point, and the CG products never re-run the residual function."""
    evaluations = []

    def counted(x):
        jax.debug.callback(lambda: evaluations.append(1))
        return PROBLEMS["rosenbrock"].fun(x)

    solution = jaxlm.least_squares(counted, PROBLEMS["rosenbrock"].x0, solver=MatrixFreeLM(), trace=100)
    accepted = np.asarray(solution.trace.accepted[1 : int(solution.trace.length)])
    assert not accepted.all()  # the test needs rejected steps
    assert len(evaluations) == int(solution.num_fev) == int(solution.num_steps) + 1
    assert int(solution.num_jev) == 1 + accepted.sum()
    kinds = np.asarray(solution.trace.step_kind[1 : int(solution.trace.length)])
    assert (kinds == StepKind.LEVENBERG_MARQUARDT).all()


def test_vmap_batches_fits_and_a_bad_fit_fails_alone():
    t, y = PROBLEMS["exponential_decay"].args
    ys = jnp.stack([y, 2 * y, y.at[3].set(jnp.nan), 0.5 * y])
    starts = jnp.array([[1.0, 0.5], [2.0, 1.0], [1.0, 0.5], [0.3, 3.0]])
    fit = jax.vmap(lambda x0, y: jaxlm.least_squares(exponential_decay, x0, (t, y), solver=MatrixFreeLM()))
    batch = jax.jit(fit)(starts, ys)
    np.testing.assert_array_equal(batch.success, [True, True, False, True])
    assert int(batch.status[2]) == jaxlm.Status.NONFINITE_START
    np.testing.assert_allclose(
        batch.params[np.array([0, 1, 3])], [[2.5, 1.3], [5.0, 1.3], [1.25, 1.3]], rtol=1e-8
    )


def _loss(b):
    return jnp.sum(solve(X0, b).params ** 2)


def test_implicit_gradient_matches_dense_and_finite_differences():
    grad = jax.jit(jax.grad(_loss))(B)
    dense_grad = jax.grad(lambda b: jnp.sum(solve_dense(X0, b).params ** 2))(B)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-6, atol=1e-8)
    direction = jnp.asarray(np.random.default_rng(1).normal(size=M))
    step = 1e-4
    loss = jax.jit(_loss)
    finite_difference = (loss(B + step * direction) - loss(B - step * direction)) / (2 * step)
    np.testing.assert_allclose(jnp.dot(grad, direction), finite_difference, rtol=1e-5)


def _distance_to_one(b):
    return jnp.sum((solve(X0, b).params - 1) ** 2)


def test_vmapped_gradients_and_a_fit_with_nan_data():
    """Per-fit CG solves under vmap: the good fits' gradients are those of single fits, the one
    with NaN data gets a NaN gradient alone."""
    bs = jnp.stack([B, 1.05 * B, B.at[7].set(jnp.nan)])
    grads = jax.jit(jax.vmap(jax.grad(_distance_to_one)))(bs)
    for i in range(2):
        single = jax.jit(jax.grad(_distance_to_one))(bs[i])
        np.testing.assert_allclose(grads[i], single, rtol=1e-6, atol=1e-9)
    assert np.all(np.isfinite(grads[:2]))
    assert np.all(np.isnan(grads[2]))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"ftol": -1e-8}, "ftol must be >= 0"),
        ({"xtol": -1.0}, "xtol must be >= 0"),
        ({"gtol": -1.0}, "gtol must be >= 0"),
        ({"max_cg_iterations": 0}, "max_cg_iterations must be an int >= 1"),
        ({"max_cg_iterations": 2.5}, "max_cg_iterations must be an int >= 1"),
        ({"diagonal_probes": -1}, "diagonal_probes must be an int >= 0"),
        ({"cg_tolerance": 0.0}, "cg_tolerance must be in"),
        ({"cg_tolerance": 1.5}, "cg_tolerance must be in"),
        ({"initial_damping": 0.0}, "initial_damping must be > 0"),
    ],
)
def test_bad_configuration_is_a_clear_error(options, match):
    with pytest.raises(ValueError, match=match):
        MatrixFreeLM(**options)


def test_bounds_and_scalar_costs_are_refused():
    bounded = Problem(residual=jnp.sin, jacobian=None, lower=jnp.zeros(2), upper=jnp.ones(2))
    with pytest.raises(ValueError, match="does not support bounds"):
        MatrixFreeLM().init(bounded, jnp.full(2, 0.5))
    scalar = Problem(residual=None, jacobian=None, scalar_cost=jnp.sum)
    with pytest.raises(ValueError, match="MatrixFreeLM needs residuals"):
        MatrixFreeLM().init(scalar, jnp.zeros(2))


def _unrolled_loss(b):
    solution = jaxlm.least_squares(
        blurred_tanh, X0, (b,), solver=MatrixFreeLM(), adjoint=jaxlm.UnrolledAdjoint(), max_steps=20
    )
    return jnp.sum(solution.params**2)


def test_unrolled_gradient_matches_the_implicit_one():
    """Reverse mode through the iterations, CG included (a checkpointed loop)."""
    unrolled = jax.jit(jax.grad(_unrolled_loss))(B)
    np.testing.assert_allclose(unrolled, jax.jit(jax.grad(_loss))(B), rtol=1e-6, atol=1e-8)
