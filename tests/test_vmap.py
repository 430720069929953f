"""least_squares under jax.vmap: a batch of fits, each with its own status."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import SOLVERS, exponential_decay

import jaxlm

T = jnp.linspace(0.0, 3.0, 25)


def _batch(num_fits, dtype=jnp.float64):
    amplitude = jnp.linspace(1.0, 4.0, num_fits, dtype=dtype)
    rate = jnp.linspace(0.3, 2.0, num_fits, dtype=dtype)
    t = T.astype(dtype)
    y = amplitude[:, None] * jnp.exp(-rate[:, None] * t) + 0.01 * jnp.sin(
        5 * t + jnp.arange(num_fits)[:, None]
    )
    starts = jnp.stack([amplitude * 0.5 + 0.3, rate * 1.7 + 0.1], axis=1).astype(dtype)
    return t, y.astype(dtype), starts


def _fit(x0, t, y):
    return jaxlm.least_squares(exponential_decay, x0, (t, y))


fit_batch = jax.jit(jax.vmap(_fit, in_axes=(0, None, 0)))


def test_batch_agrees_with_one_by_one():
    t, y, starts = _batch(8)
    batch = fit_batch(starts, t, y)
    assert batch.status.shape == (8,) and batch.params.shape == (8, 2)
    for i in range(8):
        single = _fit(starts[i], t, y[i])
        np.testing.assert_allclose(batch.params[i], single.params, rtol=1e-9)
        assert int(batch.status[i]) == int(single.status)
        assert bool(batch.success[i])
    assert len(set(np.asarray(batch.num_steps).tolist())) > 1  # the fits really differ


def test_bad_members_fail_alone():
    t, y, starts = _batch(8)
    clean = fit_batch(starts, t, y)
    y_bad = y.at[2, 5].set(jnp.nan)  # NaN in the data of fit 2
    starts_bad = starts.at[5].set(jnp.array([1.0, -1e3]))  # exp(3000) overflows for fit 5
    batch = fit_batch(starts_bad, t, y_bad)
    assert not bool(batch.success[2]) and not bool(batch.success[5])
    assert int(batch.status[2]) == int(batch.status[5]) == jaxlm.Status.NONFINITE_START
    others = np.array([i for i in range(8) if i not in (2, 5)])
    assert bool(jnp.all(batch.success[others]))
    np.testing.assert_allclose(batch.params[others], clean.params[others], rtol=1e-12)
    np.testing.assert_array_equal(batch.num_steps[others], clean.num_steps[others])
    messages = batch.message
    assert "NaN" in messages[2] and messages[0].startswith("Converged")


def test_batch_with_hard_and_easy_members_reports_each():
    t, y, starts = _batch(4)
    hard = jax.vmap(lambda x0, y: jaxlm.least_squares(exponential_decay, x0, (t, y), max_steps=3))(starts, y)
    statuses = {jaxlm.Status(int(s)) for s in hard.status}
    assert jaxlm.Status.MAX_STEPS in statuses
    assert np.all(np.asarray(hard.num_steps) <= 3)
    assert "batch of 4 fits" in repr(hard)


def test_nested_vmap():
    t, y, starts = _batch(6)
    nested = jax.vmap(jax.vmap(_fit, in_axes=(0, None, 0)), in_axes=(0, None, 0))
    batch = nested(starts.reshape(2, 3, 2), t, y.reshape(2, 3, -1))
    assert batch.params.shape == (2, 3, 2)
    np.testing.assert_allclose(batch.params.reshape(6, 2), fit_batch(starts, t, y).params, rtol=1e-9)


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_every_solver_batches_and_fails_alone(solver_name):
    solver = SOLVERS[solver_name]
    t, y, starts = _batch(6)
    y = y.at[2, 5].set(jnp.nan)

    def fit(x0, y):
        return jaxlm.least_squares(exponential_decay, x0, (t, y), solver=solver)

    batch = jax.jit(jax.vmap(fit))(starts, y)
    assert int(batch.status[2]) == jaxlm.Status.NONFINITE_START
    for i in (0, 1, 3, 4, 5):
        single = fit(starts[i], y[i])
        assert bool(batch.success[i]) and int(batch.status[i]) == int(single.status)
        np.testing.assert_allclose(batch.params[i], single.params, rtol=1e-9)
