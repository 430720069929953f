"""Box constraints in `least_squares`: every LM variant against scipy's bounded solver, pytree
bounds, derivatives at an active bound, batches and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from registry import LM_VARIANTS, exponential_decay

import jaxlm

T = jnp.linspace(0.0, 4.0, 30)
Y = 2.5 * jnp.exp(-1.3 * T) + 0.5 + 0.05 * jax.random.normal(jax.random.key(1), (30,))
TIGHT = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}


def decay_with_offset(params, t, y):
    return params[0] * jnp.exp(-params[1] * t) + params[2] - y


def _scipy(lower, upper, x0):
    return scipy.optimize.least_squares(
        lambda p: np.asarray(decay_with_offset(p, T, Y)), x0, bounds=(lower, upper), **TIGHT
    ).x


BOXES = {
    "inactive": ([0.0, 0.0, 0.0], [10.0, 10.0, 10.0], [1.0, 2.0, 0.8]),
    "lower active": ([0.0, 0.0, 0.7], [10.0, 10.0, 10.0], [1.0, 2.0, 0.8]),
    "two upper active": ([0.0, 1.5, -1.0], [2.4, 10.0, 10.0], [1.0, 2.0, 0.8]),
}


@pytest.mark.parametrize("box", list(BOXES))
@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_bounded_fit_agrees_with_scipy(variant, box):
    lower, upper, x0 = BOXES[box]
    solution = jaxlm.least_squares(
        decay_with_offset, jnp.array(x0), (T, Y), solver=LM_VARIANTS[variant], bounds=(lower, upper)
    )
    assert bool(solution.success), solution.message
    params = np.asarray(solution.params)
    assert np.all(params >= np.array(lower)) and np.all(params <= np.array(upper))
    np.testing.assert_allclose(params, _scipy(lower, upper, x0), rtol=1e-6)


def test_bounds_as_a_pytree_and_a_fixed_parameter():
    def residual(params, t, y):
        return params["amplitude"] * jnp.exp(-params["rate"] * t) + params["offset"] - y

    x0 = {"amplitude": 1.0, "rate": 2.0, "offset": 0.6}
    lower = {"amplitude": 0.0, "rate": 0.0, "offset": 0.6}  # offset fixed: lower = upper
    upper = {"amplitude": jnp.inf, "rate": jnp.inf, "offset": 0.6}
    solution = jaxlm.least_squares(residual, x0, (T, Y), bounds=(lower, upper))
    assert float(solution.params["offset"]) == 0.6
    expected = _scipy([0.0, 0.0, 0.6 - 1e-12], [np.inf, np.inf, 0.6 + 1e-12], [1.0, 2.0, 0.6])
    np.testing.assert_allclose(
        [solution.params["amplitude"], solution.params["rate"]], expected[:2], rtol=1e-6
    )


def test_derivative_at_an_active_bound_implicit_and_unrolled():
    bounds = (jnp.array([0.0, 0.0, 0.7]), jnp.array([10.0, 10.0, 10.0]))

    def fitted(y, adjoint):
        return jaxlm.least_squares(
            decay_with_offset,
            jnp.array([1.0, 2.0, 1.0]),
            (T, y),
            bounds=bounds,
            adjoint=adjoint,
            max_steps=60,
        ).params

    implicit = jax.jacobian(fitted)(Y, jaxlm.ImplicitAdjoint())
    unrolled = jax.jacobian(fitted)(Y, jaxlm.UnrolledAdjoint())
    np.testing.assert_array_equal(implicit[2], 0.0)  # pinned: no derivative
    np.testing.assert_allclose(implicit, unrolled, atol=1e-6)
    matrix_free = jax.jacobian(fitted)(Y, jaxlm.ImplicitAdjoint(linear_solver="cg"))
    np.testing.assert_array_equal(matrix_free[2], 0.0)
    np.testing.assert_allclose(matrix_free, implicit, rtol=1e-6, atol=1e-9)
    # The free parameters move as in the fit with the pinned one held at its bound.
    held = jax.jacobian(
        lambda y: (
            jaxlm.least_squares(
                lambda p, t, y: decay_with_offset(jnp.append(p, 0.7), t, y), jnp.array([1.0, 2.0]), (T, y)
            ).params
        )
    )(Y)
    np.testing.assert_allclose(implicit[:2], held, atol=1e-6)


def test_bounds_under_vmap_with_one_box_per_fit():
    ys = jnp.stack([Y, Y + 0.4])
    lowers = jnp.array([[0.0, 0.0, 0.7], [0.0, 0.0, 0.0]])

    def fit(y, lower):
        return jaxlm.least_squares(
            decay_with_offset, jnp.array([1.0, 2.0, 0.8]), (T, y), bounds=(lower, 10.0)
        ).params

    batched = jax.vmap(fit)(ys, lowers)
    for i in range(2):
        np.testing.assert_allclose(batched[i], fit(ys[i], lowers[i]), rtol=1e-9)
    assert float(batched[0, 2]) == 0.7 and float(batched[1, 2]) > 0.7


def test_float32_bounded_fit():
    solution = jaxlm.least_squares(
        decay_with_offset,
        jnp.array([1.0, 2.0, 0.8], jnp.float32),
        (T.astype(jnp.float32), Y.astype(jnp.float32)),
        bounds=([0.0, 0.0, 0.7], 10.0),
    )
    assert solution.params.dtype == jnp.float32 and bool(solution.success)
    np.testing.assert_allclose(
        solution.params, _scipy([0.0, 0.0, 0.7], [10.0] * 3, [1.0, 2.0, 0.8]), rtol=1e-3
    )


@pytest.mark.parametrize(
    ("bounds", "options", "error", "match"),
    [
        ((1.0, 0.0), {}, ValueError, "lower <= upper"),
        ((1.5, 3.0), {}, ValueError, "x0 is outside the bounds"),
        ((jnp.zeros(3), 1.0), {}, ValueError, "the lower bound does not match"),
        ((0.0,), {}, TypeError, "pair"),
        ((0.0, 3.0), {"solver": jaxlm.GaussNewton()}, ValueError, "LevenbergMarquardt only"),
    ],
    ids=["lower > upper", "x0 outside", "wrong shape", "not a pair", "solver without bounds"],
)
def test_bad_bounds(bounds, options, error, match):
    with pytest.raises(error, match=match):
        jaxlm.least_squares(exponential_decay, jnp.array([1.0, 1.0]), (T, Y), bounds=bounds, **options)
