"""The least_squares API: parameters as pytrees, Jacobians, options and counts (input errors:
test_bad_input.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import PROBLEMS, exponential_decay, rosenbrock

import jaxlm

DECAY = PROBLEMS["exponential_decay"]


def test_dict_params_keep_their_structure():
    problem = PROBLEMS["gaussian_peak_dict"]
    solution = jaxlm.least_squares(problem.fun, problem.x0, problem.args)
    assert set(solution.params) == {"peak", "background"}
    assert solution.params["peak"].shape == (3,)
    np.testing.assert_allclose(solution.params["peak"], [3.0, 0.7, 1.2], atol=0.02)


def test_residuals_of_any_shape():
    def residual(p, data):
        return p[0] * jnp.ones((3, 4)) + p[1] - data

    data = jnp.arange(12.0).reshape(3, 4) * 0 + 5.0
    solution = jaxlm.least_squares(residual, jnp.array([1.0, 1.0]), (data,))
    assert solution.residual.shape == (3, 4)
    assert bool(solution.success)
    np.testing.assert_allclose(jnp.sum(solution.params), 5.0, rtol=1e-10)


def decay_jacobian_matrix(params, t, y):
    e = jnp.exp(-params[1] * t)
    return jnp.stack([e, -params[0] * t * e], axis=1)


def decay_jacobian_pytree(params, t, y):  # the layout jax.jacfwd(fun) returns: (m,) + (2,)
    return decay_jacobian_matrix(params, t, y)


def peak_jacobian(params, x, y):
    return jax.jacfwd(PROBLEMS["gaussian_peak_dict"].fun)(params, x, y)


def test_user_jacobian_gives_the_autodiff_answer():
    auto = jaxlm.least_squares(exponential_decay, DECAY.x0, DECAY.args)
    user = jaxlm.least_squares(exponential_decay, DECAY.x0, DECAY.args, jac=decay_jacobian_matrix)
    np.testing.assert_allclose(user.params, auto.params, rtol=1e-12)
    assert int(user.num_steps) == int(auto.num_steps)


def test_user_jacobian_as_pytree():
    problem = PROBLEMS["gaussian_peak_dict"]
    auto = jaxlm.least_squares(problem.fun, problem.x0, problem.args)
    user = jaxlm.least_squares(problem.fun, problem.x0, problem.args, jac=peak_jacobian)
    for key in auto.params:
        np.testing.assert_allclose(user.params[key], auto.params[key], rtol=1e-12)


def test_fewer_residuals_than_parameters_uses_reverse_mode():
    def underdetermined(p):
        return jnp.array([p[0] + 2 * p[1] + 3 * p[2] - 6.0])

    solution = jaxlm.least_squares(underdetermined, jnp.zeros(3))
    assert bool(solution.success)
    assert float(solution.cost) < 1e-20


def test_classic_damping_rule_and_unscaled_damping_converge():
    for solver in (
        jaxlm.LevenbergMarquardt(damping_rule="classic"),
        jaxlm.LevenbergMarquardt(scaled=False),
        jaxlm.LevenbergMarquardt(damping_rule="classic", scaled=False),
    ):
        solution = jaxlm.least_squares(rosenbrock, jnp.array([-1.2, 1.0]), solver=solver)
        assert bool(solution.success), solution.message
        np.testing.assert_allclose(solution.params, [1.0, 1.0], atol=1e-8)


def test_damping_rules_take_different_paths():
    nielsen = jaxlm.least_squares(rosenbrock, jnp.array([-1.2, 1.0]))
    classic = jaxlm.least_squares(
        rosenbrock, jnp.array([-1.2, 1.0]), solver=jaxlm.LevenbergMarquardt(damping_rule="classic")
    )
    assert int(nielsen.num_fev) != int(classic.num_fev)


def test_parameters_on_very_different_scales():
    # One parameter of order 1e6 and one of order 1e-6: Marquardt scaling makes this routine.
    t = jnp.linspace(0.0, 1.0, 30)
    y = 2e6 * jnp.exp(-3e-6 * 1e6 * t)

    def residual(p, t, y):
        return (p[0] * jnp.exp(-p[1] * 1e6 * t) - y) / 1e6

    solution = jaxlm.least_squares(residual, jnp.array([1e6, 1e-6]), (t, y))
    assert bool(solution.success), solution.message
    np.testing.assert_allclose(solution.params, [2e6, 3e-6], rtol=1e-8)


def test_rejected_steps_do_not_recompute_the_jacobian():
    calls = []

    def counting_jacobian(p):
        jax.debug.callback(lambda: calls.append(1))
        return jax.jacfwd(PROBLEMS["log_with_nan_region"].fun)(p)

    solution = jaxlm.least_squares(
        PROBLEMS["log_with_nan_region"].fun, jnp.array([10.0, 0.2]), jac=counting_jacobian
    )
    jax.effects_barrier()
    assert bool(solution.success)
    assert len(calls) == int(solution.num_jev)
    assert int(solution.num_jev) < int(solution.num_fev)  # some steps were rejected


def test_nonfinite_trial_point_is_a_rejected_step():
    # From p = 10 the Gauss–Newton step of log(p) lands at p < 0, where the residual is NaN.
    residual = PROBLEMS["log_with_nan_region"].fun
    jac = jax.jacfwd(residual)(jnp.array([10.0, 0.2]))
    gauss_newton_step = -jnp.linalg.solve(jac, residual(jnp.array([10.0, 0.2])))
    assert float(10.0 + gauss_newton_step[0]) < 0
    solution = jaxlm.least_squares(residual, jnp.array([10.0, 0.2]))
    assert bool(solution.success)
    np.testing.assert_allclose(solution.params, [1.0, 1.0], rtol=1e-8)
    assert bool(jnp.all(jnp.isfinite(solution.params)))


def test_max_steps_is_a_status_not_an_error():
    solution = jaxlm.least_squares(rosenbrock, jnp.array([-1.2, 1.0]), max_steps=2)
    assert int(solution.status) == jaxlm.Status.MAX_STEPS
    assert not bool(solution.success)
    assert "max_steps" in solution.message
    assert int(solution.num_steps) == 2


def test_throw_raises_with_the_status_message():
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(
            jaxlm.least_squares(rosenbrock, jnp.array([-1.2, 1.0]), max_steps=2, throw=True)
        )


def test_throw_does_not_raise_on_success():
    solution = jaxlm.least_squares(rosenbrock, jnp.array([-1.2, 1.0]), throw=True)
    assert bool(solution.success)


def test_integer_start_is_promoted_to_float():
    solution = jaxlm.least_squares(rosenbrock, jnp.array([-1, 1]))
    assert solution.params.dtype == jnp.float64
    assert bool(solution.success)


def test_solution_is_a_pytree_of_arrays_with_a_readable_repr():
    solution = jaxlm.least_squares(rosenbrock, jnp.array([-1.2, 1.0]))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(solution))
    text = repr(solution)
    assert "success=True" in text and "CONVERGED" in text
    assert "<table>" in solution._repr_html_() and "CONVERGED" in solution._repr_html_()
    assert jaxlm.Status(int(solution.status)).success
