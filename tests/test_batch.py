"""least_squares_batch: chunks, rounds that leave the stragglers behind, devices, progress."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import exponential_decay

import jaxlm
from jaxlm import _batch

T = np.linspace(0.0, 3.0, 25)
NUM_FITS = 300
HARD = (7, 150, 299)  # far starts: many more steps than the others
NAN_DATA = 42  # a fit whose data contain NaN


def _dataset(dtype=np.float64):
    rng = np.random.default_rng(0)
    amplitude = rng.uniform(1.0, 4.0, NUM_FITS)
    rate = rng.uniform(0.3, 2.0, NUM_FITS)
    y = amplitude[:, None] * np.exp(-rate[:, None] * T) + 0.01 * rng.normal(size=(NUM_FITS, T.size))
    y[NAN_DATA, 3] = np.nan
    starts = np.stack([amplitude * 1.2, rate * 0.8], axis=1)
    starts[list(HARD)] = [[30.0, 40.0]]
    return y.astype(dtype), starts.astype(dtype)


Y, STARTS = _dataset()


@jax.jit
def _vmapped(starts, y):
    return jax.vmap(lambda p, y: jaxlm.least_squares(exponential_decay, p, (T, y)))(starts, y)


@pytest.fixture(scope="module")
def reference():
    return _vmapped(STARTS, Y)


@pytest.fixture(scope="module")
def batched():
    return jaxlm.least_squares_batch(
        exponential_decay, STARTS, (T, Y), in_axes=(None, 0), chunk_size=128, progress=False
    )


def test_same_fits_as_vmap(reference, batched):
    """Every fit takes the steps of its own solve, with its own status, through chunks and rounds."""
    assert isinstance(batched.params, np.ndarray) and batched.params.shape == (NUM_FITS, 2)
    # The compiled programs differ, so the last bits of a step may too: a fit can stop one step
    # earlier or later, on another of the tolerance tests, at the same point.
    np.testing.assert_array_equal(batched.success, reference.success)
    steps_differ = batched.num_steps != np.asarray(reference.num_steps)
    assert steps_differ.mean() <= 0.05, steps_differ.mean()
    assert np.all(np.abs(batched.num_steps - np.asarray(reference.num_steps)) <= 1)
    ok = np.asarray(reference.success)
    np.testing.assert_allclose(batched.params[ok], np.asarray(reference.params)[ok], rtol=1e-8)
    np.testing.assert_allclose(batched.cost[ok], np.asarray(reference.cost)[ok], rtol=1e-10)
    assert batched.status[NAN_DATA] == jaxlm.Status.NONFINITE_START
    assert batched.success.sum() == NUM_FITS - 1
    assert np.min(batched.num_steps[list(HARD)]) > 3 * np.median(batched.num_steps)
    assert batched.residual is None


def test_rounds_leave_the_stragglers_behind(monkeypatch):
    """After the first round only the few running fits go on, in a smaller batch."""
    sizes = []
    original = _batch._BatchSolve.round

    def recording_round(self, states, num_steps, args, last_round, mesh, stage):
        sizes.append((states.status.shape[0], last_round))
        return original(self, states, num_steps, args, last_round, mesh, stage)

    monkeypatch.setattr(_batch._BatchSolve, "round", recording_round)
    solution = jaxlm.least_squares_batch(
        exponential_decay, STARTS[:256], (T, Y[:256]), in_axes=(None, 0), progress=False
    )
    assert sizes[0] == (256, False)
    assert len(sizes) >= 2 and all(size < 256 for size, _ in sizes[1:])
    assert sizes[-1] == (_batch.MIN_ROUND_SIZE, True)
    assert np.all(solution.status != jaxlm.Status.RUNNING)


def test_pytree_params_residuals_float32_and_progress(capsys):
    y32, starts32 = Y[:40].astype(np.float32), STARTS[:40].astype(np.float32)

    def decay_dict(params, t, y):
        return exponential_decay(jnp.stack([params["a"], params["k"]]), t, y)

    solution = jaxlm.least_squares_batch(
        decay_dict,
        {"a": starts32[:, 0], "k": starts32[:, 1]},
        (T.astype(np.float32), y32),
        in_axes=(None, 0),
        return_residuals=True,
        progress=True,
    )
    assert "40/40" in capsys.readouterr().err
    assert solution.params["a"].dtype == np.float32 and solution.residual.shape == (40, T.size)
    assert solution.success.all()
    one = jaxlm.least_squares(exponential_decay, starts32[0], (T.astype(np.float32), y32[0]))
    np.testing.assert_allclose(solution.params["k"][0], one.params[1], rtol=1e-5)
    np.testing.assert_allclose(solution.residual[0], one.residual, atol=1e-5)


def test_bounds_and_robust_loss():
    bounds = ([0.0, 0.0], [3.0, 10.0])
    starts = np.clip(STARTS[:20], 0.1, 2.9)
    solution = jaxlm.least_squares_batch(
        exponential_decay,
        starts,
        (T, Y[:20]),
        in_axes=(None, 0),
        bounds=bounds,
        loss="soft_l1",
        progress=False,
    )
    for i in (0, 1, 5):
        one = jaxlm.least_squares(exponential_decay, starts[i], (T, Y[i]), bounds=bounds, loss="soft_l1")
        np.testing.assert_allclose(solution.params[i], one.params, rtol=1e-9)
        assert solution.status[i] == one.status
    assert np.all(solution.params[:, 0] <= 3.0)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"in_axes": (0,)}, ValueError, "in_axes must be 0 or None"),
        ({"in_axes": (None, 1)}, ValueError, "in_axes must be 0 or None"),
        ({"args": (T, Y[:10])}, ValueError, "same leading axis"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive integer"),
        ({"chunk_size": 2.5}, ValueError, "chunk_size must be a positive integer"),
        ({"x0": STARTS[:0], "args": (T, Y[:0])}, ValueError, "the batch is empty"),
        ({"bounds": (0.0, 1.0)}, ValueError, "outside the bounds"),
        ({"devices": []}, ValueError, "devices is empty"),
        ({"solver": jaxlm.DampedNewton(), "bounds": (-100.0, 100.0)}, ValueError, "LevenbergMarquardt only"),
    ],
)
def test_bad_input(options, error, match):
    call = {"x0": STARTS, "args": (T, Y), "in_axes": (None, 0), **options}
    with pytest.raises(error, match=match):
        jaxlm.least_squares_batch(exponential_decay, call.pop("x0"), call.pop("args"), progress=False, **call)


def test_sharded_over_four_devices():
    """Each chunk is split over every device; the fits are the same as on one device."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        import jaxlm
        from jaxlm import _batch
        assert len(jax.devices()) == 4, jax.devices()
        t = np.linspace(0.0, 3.0, 25)
        rate = np.linspace(0.3, 2.0, 203)
        y = 2.0 * np.exp(-rate[:, None] * t)
        starts = np.stack([np.full(203, 1.0), rate * 0.7], axis=1)
        starts[17] = [30.0, 40.0]
        def decay(p, t, y):
            return p[0] * jax.numpy.exp(-p[1] * t) - y
        seen = []
        original = _batch._BatchSolve.start
        def recording_start(self, starts, args):
            states, num_steps = original(self, starts, args)
            if not isinstance(states.x, jax.core.Tracer):
                seen.append(len(states.x.sharding.device_set))
            return states, num_steps
        _batch._BatchSolve.start = recording_start
        sharded = jaxlm.least_squares_batch(decay, starts, (t, y), in_axes=(None, 0), chunk_size=100)
        one = jaxlm.least_squares_batch(decay, starts, (t, y), in_axes=(None, 0), devices=jax.devices()[:1])
        assert seen == [4] * 3 + [1], seen
        assert np.array_equal(sharded.status, one.status) and np.array_equal(sharded.num_steps, one.num_steps)
        np.testing.assert_allclose(sharded.params, one.params, rtol=1e-12)
        assert sharded.success.all(), sharded
        print("ok")
        """
    )
    environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("num_residuals", [25, 40])
def test_elementwise_normal_equations(num_residuals):
    """The batch driver's JᵀJ and Jᵀr (sums of elementwise products for up to
    ELEMENTWISE_MAX_RESIDUALS residuals, matrix products above) are the matrix products."""
    from jaxlm._least_squares import build_problem
    from jaxlm._loop import ELEMENTWISE_MAX_RESIDUALS

    t = np.linspace(0.0, 3.0, num_residuals)
    y = np.stack([2.0 * np.exp(-1.3 * t), 0.5 * np.exp(-0.2 * t)])
    params = np.array([[1.0, 1.0], [0.7, 0.1]])

    def normal_equations(params, y, elementwise):
        problem = build_problem(
            exponential_decay, None, (t, y), params, (num_residuals,), elementwise_sums=elementwise
        )
        _, residual = problem.evaluate(params)
        return problem.normal_equations(params, residual)

    for elementwise in (True, False):
        jac, jtj, grad = jax.jit(jax.vmap(lambda p, y, e=elementwise: normal_equations(p, y, e)))(params, y)
        np.testing.assert_allclose(jtj, np.einsum("bki,bkj->bij", jac, jac), rtol=1e-13)
        residual = jax.vmap(exponential_decay, in_axes=(0, None, 0))(params, t, y)
        np.testing.assert_allclose(grad, np.einsum("bki,bk->bi", jac, residual), rtol=1e-13)
    lowered = jax.jit(jax.vmap(lambda p, y: normal_equations(p, y, True))).lower(params, y).as_text()
    assert ("dot_general" in lowered) == (num_residuals > ELEMENTWISE_MAX_RESIDUALS)


@pytest.mark.parametrize("solver", [jaxlm.GaussNewton(), jaxlm.HybridLMQN()], ids=lambda s: type(s).__name__)
def test_other_solvers_same_fits_as_vmap(solver):
    """GaussNewton and the hybrid take their normal equations from the problem too, so in the batch
    driver (25 residuals: elementwise sums) they fit as they do under vmap."""
    easy = [i for i in range(24) if i not in HARD and i != NAN_DATA]
    starts, y = STARTS[easy], Y[easy]
    reference = jax.jit(
        jax.vmap(lambda p, y: jaxlm.least_squares(exponential_decay, p, (T, y), solver=solver))
    )(starts, y)
    batched = jaxlm.least_squares_batch(
        exponential_decay, starts, (T, y), in_axes=(None, 0), solver=solver, progress=False
    )
    assert np.all(batched.success) and np.all(np.asarray(reference.success))
    np.testing.assert_array_equal(batched.num_steps, np.asarray(reference.num_steps))
    np.testing.assert_allclose(batched.params, np.asarray(reference.params), rtol=1e-8)
    np.testing.assert_allclose(batched.cost, np.asarray(reference.cost), rtol=1e-10)


def test_compiler_options(monkeypatch):
    """The batch driver compiles with XLA:CPU's own reductions, and a single fit called from
    Python with XLA:CPU's older emitters, where the installed jaxlib has the option; without
    options where it does not."""
    from jaxlm import _compiler_options

    options = _compiler_options.compiler_options()
    assert options in ({}, _compiler_options.CPU_BATCH_OPTIONS)
    single_fit_options = _compiler_options.single_fit_compiler_options()
    assert single_fit_options in ({}, _compiler_options.CPU_SINGLE_FIT_OPTIONS)
    if options:

        def gram(x):
            return jnp.sum(x[:, :, :, None] * x[:, :, None, :], axis=1)

        gram = jax.jit(gram, compiler_options=options)
        x = np.arange(12.0).reshape(2, 3, 2)
        np.testing.assert_allclose(gram(x), np.einsum("bki,bkj->bij", x, x))
    unknown = {"xla_no_such_option_anywhere": "1"}
    monkeypatch.setattr(_compiler_options, "CPU_BATCH_OPTIONS", unknown)
    monkeypatch.setattr(_compiler_options, "CPU_SINGLE_FIT_OPTIONS", unknown)
    _compiler_options.compiler_options.cache_clear()
    _compiler_options.single_fit_compiler_options.cache_clear()
    try:
        assert _compiler_options.compiler_options() == {}
        assert _compiler_options.single_fit_compiler_options() == {}
    finally:
        monkeypatch.undo()
        _compiler_options.compiler_options.cache_clear()
        _compiler_options.single_fit_compiler_options.cache_clear()
    assert _compiler_options.compiler_options() == options
    assert _compiler_options.single_fit_compiler_options() == single_fit_options


def test_fits_that_reach_the_fallback_stage_same_as_vmap():
    """With `fallback_after=3` the far starts move on to the fallback's rounds, which gather them
    into a batch of their own; each fit still takes the steps of its own solve."""
    solver = jaxlm.LevenbergMarquardt(fallback_after=3)
    reference = jax.jit(
        jax.vmap(lambda p, y: jaxlm.least_squares(exponential_decay, p, (T, y), solver=solver))
    )(STARTS[:200], Y[:200])
    batched = jaxlm.least_squares_batch(
        exponential_decay, STARTS[:200], (T, Y[:200]), in_axes=(None, 0), solver=solver, progress=False
    )
    np.testing.assert_array_equal(batched.success, reference.success)
    assert np.all(np.abs(batched.num_steps - np.asarray(reference.num_steps)) <= 1)
    ok = np.asarray(reference.success)
    np.testing.assert_allclose(batched.params[ok], np.asarray(reference.params)[ok], rtol=1e-8)
    assert batched.success[list(HARD[:2])].all() and np.min(batched.num_steps[list(HARD[:2])]) > 3
