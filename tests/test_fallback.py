"""The default LevenbergMarquardt's fallback stage: a fit that has not converged after
`fallback_after` steps goes on with Moré's trust region and geodesic acceleration; one that
converges at a stationary point at infinity starts again from x₀ with it, and returns to that
point if the fallback ends higher."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mgh import PROBLEMS
from nist import load, matching_digits
from registry import exponential_decay

import jaxlm

NIELSEN_ONLY = jaxlm.LevenbergMarquardt(fallback_after=None)
T = jnp.linspace(0.0, 3.0, 25)
Y = 2.5 * jnp.exp(-1.3 * T)
FAR_START = jnp.array([30.0, 40.0])  # a rate of 40: the fit crawls back for dozens of steps


def solve_nist(name, start, solver, **options):
    problem = load(name)
    data = (jnp.asarray(problem.x), jnp.asarray(problem.y))
    solution = jaxlm.least_squares(
        problem.residual, jnp.asarray(problem.starts[start]), data, solver=solver, **options
    )
    return solution, matching_digits(solution.params, problem.certified).min()


def test_a_fit_that_has_not_converged_moves_on_to_the_trust_region():
    solver = jaxlm.LevenbergMarquardt(fallback_after=3)
    solution = jaxlm.least_squares(exponential_decay, FAR_START, (T, Y), solver=solver, trace=100)
    assert bool(solution.success), solution.message
    np.testing.assert_allclose(solution.params, [2.5, 1.3], rtol=1e-8)
    assert int(solution.num_steps) > 3
    radius = np.asarray(solution.trace.radius)[: int(solution.trace.length)]
    assert np.all(np.isnan(radius[:3]))  # Nielsen's rule has no radius (row 0 is the start)
    assert np.all(np.isfinite(radius[3:]))  # the trust region's, from the switch after step 3 on
    # It goes on from the point it had reached: the radius starts as long as the last step.
    plain = jaxlm.least_squares(
        exponential_decay, FAR_START, (T, Y), solver=NIELSEN_ONLY, max_steps=3, trace=3
    )
    np.testing.assert_allclose(solution.trace.params[3], plain.trace.params[3], rtol=1e-12)


def test_a_fit_that_converges_at_infinity_starts_again_from_x0():
    # NIST BoxBOD from start 1: Nielsen's rule runs b₂ off to +∞, where the model is the constant
    # b₁ and the cost stops changing, and reports convergence there.
    plateau, digits = solve_nist("BoxBOD", 0, NIELSEN_ONLY)
    assert bool(plateau.success) and digits < 0
    solution, digits = solve_nist("BoxBOD", 0, jaxlm.LevenbergMarquardt())
    assert bool(solution.success), solution.message
    assert digits > 6
    assert float(solution.cost) < 0.2 * float(plateau.cost)


def test_the_fallback_returns_to_the_point_at_infinity_if_it_ends_higher():
    # Box 3-D from 100·x₀: Nielsen's rule ends at MINPACK's ‖r‖² = 0.0756 with x₂ → ∞ (its column
    # of J is 0); the trust region from x₀ ends far higher, so the solve returns there.
    problem = PROBLEMS["Box 3-D"]
    x0 = jnp.asarray(problem.start(100.0))
    plain = jaxlm.least_squares(problem.residual, x0, solver=NIELSEN_ONLY)
    solution = jaxlm.least_squares(problem.residual, x0)
    assert bool(solution.success), solution.message
    np.testing.assert_allclose(2 * float(solution.cost), 0.0755887, rtol=1e-4)
    np.testing.assert_allclose(solution.params, plain.params, rtol=1e-10)
    assert int(solution.num_steps) > int(plain.num_steps)


def test_a_stale_scaling_makes_the_fallback_start_again_from_x0():
    # NIST MGH10 from start 1: after 30 steps of Nielsen's rule b₁ has fallen to 1e-4, and the
    # running maximum of diag(JᵀJ), set at the start where the model is 10⁴ times the data, no
    # longer fits; from there no rule reaches the minimum in 1000 steps, from x₀ the trust region does.
    solution, digits = solve_nist("MGH10", 0, jaxlm.LevenbergMarquardt())
    assert bool(solution.success), solution.message
    assert digits > 6
    assert int(solution.num_steps) < 1000


def test_residuals_without_forward_derivatives_fall_back_without_acceleration():
    @jax.custom_vjp
    def decay(p):
        return exponential_decay(p, T, Y)

    decay.defvjp(
        lambda p: (decay(p), p), lambda p, g: (jax.jacrev(lambda p: exponential_decay(p, T, Y))(p).T @ g,)
    )
    # custom_vjp functions have no JVP: the Jacobian comes from reverse mode, and the fallback
    # cannot take the second directional derivatives that geodesic acceleration needs.
    solution = jaxlm.least_squares(
        lambda p: decay(p),
        FAR_START,
        solver=jaxlm.LevenbergMarquardt(fallback_after=3),
        jac=jax.jacrev(decay),
    )
    assert bool(solution.success), solution.message
    np.testing.assert_allclose(solution.params, [2.5, 1.3], rtol=1e-8)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"fallback_after": 0}, "fallback_after must be a positive"),
        ({"fallback_after": 2.5}, "fallback_after must be a positive"),
        ({"fallback_after": True}, "fallback_after must be a positive"),
        ({"fallback_acceleration": 0.0}, "fallback_acceleration must be > 0"),
    ],
)
def test_bad_fallback_options(options, match):
    with pytest.raises(ValueError, match=match):
        jaxlm.LevenbergMarquardt(**options)
