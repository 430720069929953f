"""The catalogue of bad input: each entry gets an error that says what to do, or, where the
problem can only be seen in the data of one fit, a status of that fit (so that a batch goes on).

Errors for curve_fit's own arguments are in test_curve_fit.py, for bounds in test_bounds.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import PROBLEMS, exponential_decay, rosenbrock

import jaxlm

DECAY = PROBLEMS["exponential_decay"]
T, Y = DECAY.args


def _wrong_shape_jacobian(params, t, y):
    return jnp.ones((3, 2))


ERRORS = {
    # The residual function.
    "residuals of an integer dtype": (
        lambda: jaxlm.least_squares(lambda p: jnp.round(p).astype(int), jnp.ones(2)),
        TypeError,
        "floating point",
    ),
    "residuals of another float dtype than x0": (
        lambda: jaxlm.least_squares(lambda p: p.astype(jnp.float32), jnp.ones(2)),
        TypeError,
        "dtype float32",
    ),
    "residuals that are not one array": (
        lambda: jaxlm.least_squares(lambda p: (p, p), jnp.ones(2)),
        TypeError,
        "one array of residuals",
    ),
    "a scalar cost of the wrong shape (minimize)": (
        lambda: jaxlm.minimize(lambda p: p, jnp.ones(2)),
        TypeError,
        "must return a scalar cost",
    ),
    "a model of the wrong shape (curve_fit)": (
        lambda: jaxlm.curve_fit(lambda x, a: a * x[:5], T, Y),
        ValueError,
        "must match",
    ),
    # Data.
    "empty data": (
        lambda: jaxlm.least_squares(exponential_decay, jnp.ones(2), (T[:0], Y[:0])),
        ValueError,
        "no residuals",
    ),
    "empty data (curve_fit)": (
        lambda: jaxlm.curve_fit(lambda x, a: a * x, T[:0], Y[:0]),
        ValueError,
        "ydata is empty",
    ),
    "NaN in the data (curve_fit)": (
        lambda: jaxlm.curve_fit(lambda x, a: a * x, T, Y.at[3].set(jnp.nan)),
        ValueError,
        "nan_policy='omit'",
    ),
    "x and y of different lengths (curve_fit)": (
        lambda: jaxlm.curve_fit(lambda x, a: a * x, T, Y[:-1]),
        ValueError,
        "must match",
    ),
    "args that are not a tuple": (
        lambda: jaxlm.least_squares(exponential_decay, jnp.ones(2), T),
        TypeError,
        "args must be a tuple",
    ),
    # The start.
    "NaN in the start": (
        lambda: jaxlm.least_squares(rosenbrock, jnp.array([jnp.nan, 1.0])),
        ValueError,
        "x0 contains NaN",
    ),
    "inf in the start": (
        lambda: jaxlm.least_squares(rosenbrock, jnp.array([jnp.inf, 1.0])),
        ValueError,
        "x0 contains NaN or inf",
    ),
    "no parameters": (lambda: jaxlm.least_squares(rosenbrock, {}), ValueError, "x0 has no parameters"),
    "complex parameters": (lambda: jaxlm.least_squares(rosenbrock, jnp.ones(2) * 1j), TypeError, "complex"),
    # Options.
    "max_steps not a count": (
        lambda: jaxlm.least_squares(rosenbrock, jnp.ones(2), max_steps=2.5),
        ValueError,
        "max_steps",
    ),
    "max_steps < 0": (lambda: jaxlm.minimize(jnp.sum, jnp.ones(2), max_steps=-5), ValueError, "max_steps"),
    "a solver that is not one": (
        lambda: jaxlm.least_squares(rosenbrock, jnp.ones(2), solver="lm"),
        TypeError,
        "solver must be",
    ),
    "an unknown damping rule": (
        lambda: jaxlm.LevenbergMarquardt(damping_rule="fast"),
        ValueError,
        "damping_rule",
    ),
    "a Jacobian of the wrong shape from jac": (
        lambda: jaxlm.least_squares(exponential_decay, jnp.ones(2), (T, Y), jac=_wrong_shape_jacobian),
        ValueError,
        r"jac returned shapes .*expected a 2-D array of shape \(25, 2\)",
    ),
    "a trace length that is not a count": (
        lambda: jaxlm.least_squares(rosenbrock, jnp.ones(2), trace=-1),
        ValueError,
        "trace must be",
    ),
}


@pytest.mark.parametrize("entry", list(ERRORS))
def test_bad_input_is_a_clear_error(entry):
    call, error, match = ERRORS[entry]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "solver_class",
    [
        jaxlm.LevenbergMarquardt,
        jaxlm.GaussNewton,
        jaxlm.NewtonRaphson,
        jaxlm.DampedNewton,
        jaxlm.HybridLMQN,
        jaxlm.MatrixFreeLM,
    ],
)
@pytest.mark.parametrize("name", ["ftol", "xtol", "gtol"])
def test_negative_tolerances_are_an_error_for_every_solver(solver_class, name):
    with pytest.raises(ValueError, match=f"{name} must be >= 0"):
        solver_class(**{name: -1e-8})
    solver_class(**{name: 0.0})  # 0 turns a test off


def test_nonfinite_data_is_a_status_of_that_fit():
    """NaN or inf in the data of one fit, also under jit where nothing can be checked eagerly."""
    for bad in (jnp.nan, jnp.inf):
        solution = jax.jit(lambda y: jaxlm.least_squares(exponential_decay, DECAY.x0, (T, y)))(
            Y.at[3].set(bad)
        )
        assert int(solution.status) == jaxlm.Status.NONFINITE_START
        assert "NaN" in solution.message and "args" in solution.message
    # In a batch the other fits go on (see also test_vmap.test_bad_members_fail_alone).
    ys = jnp.stack([Y, Y.at[0].set(jnp.nan), 2 * Y])
    batch = jax.vmap(lambda y: jaxlm.least_squares(exponential_decay, DECAY.x0, (T, y)))(ys)
    np.testing.assert_array_equal(batch.success, [True, False, True])


def test_more_parameters_than_residuals():
    """Least squares with m < n has a manifold of solutions: the damped solvers return one of
    them; Newton–Raphson's Hessian is singular there, which its status says; curve_fit's
    covariance is inf, as scipy's."""

    def underdetermined(params):
        return jnp.array([params[0] + params[1] - 1.0])

    solution = jaxlm.least_squares(underdetermined, jnp.array([3.0, 4.0]))
    assert bool(solution.success)
    np.testing.assert_allclose(solution.params, [0.0, 1.0], atol=1e-10)  # the nearest solution
    newton = jaxlm.least_squares(underdetermined, jnp.array([3.0, 4.0]), solver=jaxlm.NewtonRaphson())
    assert int(newton.status) == jaxlm.Status.SINGULAR_HESSIAN and "identifiable" in newton.message
    quadratic = lambda x, a, b, c: a + b * x + c * x**2
    with pytest.raises(TypeError, match="must not exceed the number of data points"):  # as scipy's "lm"
        jaxlm.curve_fit(quadratic, T[:2], Y[:2])
    with pytest.warns(jaxlm.OptimizeWarning, match="could not be estimated"):
        _, pcov = jaxlm.curve_fit(quadratic, T[:2], Y[:2], method="trf")
    assert np.all(np.isinf(pcov))
