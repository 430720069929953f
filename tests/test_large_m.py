"""`least_squares(residual_chunk_size=...)`: the normal equations accumulated over chunks of data points
give the plain solve's answer, without an m × n array anywhere in the computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import LM_VARIANTS

import jaxlm
from jaxlm._chunked import ChunkedResiduals, chunk_of, split_data

TRUTH = jnp.array([2.0, 1.3, 0.7, 2.5, 0.3])
START = jnp.array([1.0, 1.0, 0.5, 2.3, 0.0])
BOUNDS = ([0.0, 0.0, 0.0, 0.0, -1.0], [10.0, 10.0, 10.0, 10.0, 0.25])  # the last one active


def decay_and_peak(params, t, y):
    amplitude, rate, peak, center, background = params
    return amplitude * jnp.exp(-rate * t) + peak * jnp.exp(-2 * (t - center) ** 2) + background - y


def make_data(m, dtype=jnp.float64):
    t = jnp.linspace(0.0, 5.0, m)
    y = decay_and_peak(TRUTH, t, 0.0) + 0.02 * jax.random.normal(jax.random.key(0), (m,))
    return t.astype(dtype), y.astype(dtype)


T, Y = make_data(2000)


def assert_same_solution(chunked, plain, rtol=1e-10, same_steps=True):
    assert bool(chunked.success), chunked.message
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol), chunked.params, plain.params)
    np.testing.assert_allclose(chunked.cost, plain.cost, rtol=max(rtol, 1e-12))
    np.testing.assert_allclose(chunked.residual, plain.residual, rtol=1e-8, atol=1e-8)
    assert chunked.residual.shape == plain.residual.shape
    if same_steps:
        assert int(chunked.num_steps) == int(plain.num_steps)
        assert int(chunked.num_jev) == int(plain.num_jev)


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_chunked_solve_equals_the_plain_solve(variant):
    solver = LM_VARIANTS[variant]
    plain = jaxlm.least_squares(decay_and_peak, START, (T, Y), solver=solver)
    chunked = jaxlm.least_squares(decay_and_peak, START, (T, Y), solver=solver, residual_chunk_size=250)
    assert_same_solution(chunked, plain)


@pytest.mark.parametrize("residual_chunk_size", [300, 1999, 2000, 5000])
def test_chunk_size_need_not_divide_the_number_of_points(residual_chunk_size):
    # 300 leaves a last chunk that overlaps the one before; 1999 leaves one row for it; 2000 and
    # 5000 make one chunk.
    plain = jaxlm.least_squares(decay_and_peak, START, (T, Y))
    chunked = jaxlm.least_squares(decay_and_peak, START, (T, Y), residual_chunk_size=residual_chunk_size)
    assert_same_solution(chunked, plain)


def test_float32():
    t, y = make_data(3000, jnp.float32)
    start = START.astype(jnp.float32)
    reference = jaxlm.least_squares(decay_and_peak, START, (t.astype(jnp.float64), y.astype(jnp.float64)))
    plain = jaxlm.least_squares(decay_and_peak, start, (t, y))
    chunked = jaxlm.least_squares(decay_and_peak, start, (t, y), residual_chunk_size=128)
    assert chunked.params.dtype == jnp.float32 and chunked.residual.dtype == jnp.float32
    assert bool(chunked.success), chunked.message
    np.testing.assert_allclose(chunked.params, reference.params, rtol=2e-5)
    np.testing.assert_allclose(chunked.params, plain.params, rtol=2e-5)


def test_float32_chunk_totals_are_summed_without_growing_error():
    # 100,000 chunks of 2 rows, each row's residual 0.1: a running sum of the chunk totals in
    # float32 is off by 7e-4 (relative) here; the compensated sum is exact to rounding.
    m, size = 200_000, 2
    data, rest = split_data((jnp.zeros(m, jnp.float32),), m)

    def rows(x, start):
        (zeros,) = chunk_of(data, rest, start, size)
        return x[0] + zeros

    chunks = ChunkedResiduals(rows, None, m, size)
    x = jnp.array([0.1], jnp.float32)
    exact = 0.5 * m * np.float64(x[0]) ** 2
    assert abs(float(jax.jit(chunks.cost)(x)) - exact) / exact < 1e-6


@pytest.mark.parametrize("variant", ["nielsen", "trust_region", "geodesic"])
def test_bounds(variant):
    solver = LM_VARIANTS[variant]
    plain = jaxlm.least_squares(decay_and_peak, START, (T, Y), solver=solver, bounds=BOUNDS)
    chunked = jaxlm.least_squares(
        decay_and_peak, START, (T, Y), solver=solver, bounds=BOUNDS, residual_chunk_size=256
    )
    assert float(chunked.params[4]) == 0.25
    assert_same_solution(chunked, plain)


def test_jit_and_vmap_over_datasets():
    ys = jnp.stack([Y, 1.1 * Y, 0.9 * Y + 0.1])

    def solve(y, residual_chunk_size):
        return jaxlm.least_squares(decay_and_peak, START, (T, y), residual_chunk_size=residual_chunk_size)

    plain = jax.vmap(lambda y: solve(y, None))(ys)
    chunked = jax.jit(jax.vmap(lambda y: solve(y, 256)))(ys)
    assert chunked.params.shape == (3, 5) and chunked.residual.shape == (3, 2000)
    assert np.all(chunked.success)
    np.testing.assert_allclose(chunked.params, plain.params, rtol=1e-10)
    np.testing.assert_array_equal(chunked.num_steps, plain.num_steps)


def test_dict_params_rows_of_several_residuals_and_broadcast_args():
    # Each data point has two residuals (the fit of y and of a scaled copy); `weight` is passed
    # whole to every chunk, `t` and `y` are split.
    def residual(params, t, y, weight):
        model = params["amplitude"] * jnp.exp(-params["rate"] * t) + params["background"]
        return jnp.stack([model - y, weight * (model - y)], axis=1)

    x0 = {"amplitude": 1.0, "rate": 1.0, "background": 0.0}
    args = (T, Y, jnp.array(0.5))
    plain = jaxlm.least_squares(residual, x0, args)
    chunked = jaxlm.least_squares(residual, x0, args, residual_chunk_size=333)
    assert chunked.residual.shape == (2000, 2)
    assert_same_solution(chunked, plain)


def test_user_jacobian_and_robust_loss():
    def jac(params, t, y):
        amplitude, rate, peak, center, _ = params
        decay, bump = jnp.exp(-rate * t), jnp.exp(-2 * (t - center) ** 2)
        columns = [decay, -amplitude * t * decay, bump, 4 * peak * (t - center) * bump, jnp.ones_like(t)]
        return jnp.stack(columns, axis=1)

    plain = jaxlm.least_squares(decay_and_peak, START, (T, Y), jac=jac)
    chunked = jaxlm.least_squares(decay_and_peak, START, (T, Y), jac=jac, residual_chunk_size=300)
    assert_same_solution(chunked, plain, same_steps=False)  # the stopping step may differ by rounding
    plain = jaxlm.least_squares(decay_and_peak, START, (T, Y), loss="soft_l1", f_scale=0.05)
    chunked = jaxlm.least_squares(
        decay_and_peak, START, (T, Y), loss="soft_l1", f_scale=0.05, residual_chunk_size=300
    )
    assert_same_solution(chunked, plain)


def test_implicit_gradient_through_a_chunked_solve():
    def fitted(y, residual_chunk_size):
        return jaxlm.least_squares(
            decay_and_peak, START, (T, y), residual_chunk_size=residual_chunk_size
        ).params

    def loss(y, residual_chunk_size):
        return jnp.sum(fitted(y, residual_chunk_size) ** 2)

    np.testing.assert_allclose(jax.grad(loss)(Y, 256), jax.grad(loss)(Y, None), rtol=1e-8, atol=1e-12)
    tangent = jnp.cos(T)
    _, chunked = jax.jvp(lambda y: fitted(y, 256), (Y,), (tangent,))
    _, plain = jax.jvp(lambda y: fitted(y, None), (Y,), (tangent,))
    np.testing.assert_allclose(chunked, plain, rtol=1e-8)


def test_unrolled_gradient_through_a_chunked_solve():
    def loss(y, residual_chunk_size):
        solution = jaxlm.least_squares(
            decay_and_peak,
            START,
            (T, y),
            residual_chunk_size=residual_chunk_size,
            adjoint=jaxlm.UnrolledAdjoint(),
            max_steps=12,
        )
        return jnp.sum(solution.params**2)

    np.testing.assert_allclose(jax.grad(loss)(Y, 256), jax.grad(loss)(Y, None), rtol=1e-6, atol=1e-10)


def _array_sizes(jaxpr):
    """The number of elements of every value computed in `jaxpr` and in the jaxprs inside it."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield math.prod(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            for inner in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _array_sizes(inner)


@pytest.mark.parametrize("variant", ["nielsen", "geodesic"])
def test_no_m_by_n_array_in_a_chunked_solve(variant):
    m, n = T.size, START.size

    def largest(residual_chunk_size, solver=LM_VARIANTS[variant]):
        solve = jax.jit(
            lambda y: jaxlm.least_squares(
                decay_and_peak, START, (T, y), solver=solver, residual_chunk_size=residual_chunk_size
            )
        )
        return max(_array_sizes(jax.make_jaxpr(solve)(Y).jaxpr))

    assert largest(None) >= m * n  # the check sees the Jacobian of the plain solve
    assert largest(256) < m * n
    assert largest(256, jaxlm.LevenbergMarquardt(damping_rule="trust_region")) < m * n


@pytest.mark.parametrize("residual_chunk_size", [0, -100, 2.5, "1000", True, np.float64(100.0)])
def test_bad_chunk_size(residual_chunk_size):
    with pytest.raises(ValueError, match="residual_chunk_size must be a positive integer"):
        jaxlm.least_squares(decay_and_peak, START, (T, Y), residual_chunk_size=residual_chunk_size)


def test_numpy_integer_chunk_size():
    solution = jaxlm.least_squares(decay_and_peak, START, (T, Y), residual_chunk_size=np.int64(500))
    assert bool(solution.success)


@pytest.mark.parametrize(
    "solver",
    [jaxlm.GaussNewton(), jaxlm.NewtonRaphson(), jaxlm.DampedNewton(), jaxlm.HybridLMQN(), jaxlm.LBFGSLM()],
)
def test_other_solvers_say_to_use_levenberg_marquardt(solver):
    with pytest.raises(ValueError, match="LevenbergMarquardt"):
        jaxlm.least_squares(decay_and_peak, START, (T, Y), solver=solver, residual_chunk_size=100)


def test_residuals_without_a_data_axis_are_an_error():
    with pytest.raises(ValueError, match="leading axis over the data points"):
        jaxlm.least_squares(
            lambda p, t, y: jnp.sum(decay_and_peak(p, t, y) ** 2), START, (T, Y), residual_chunk_size=100
        )


def test_data_in_a_closure_is_an_error():
    with pytest.raises(ValueError, match="no array in args"):
        jaxlm.least_squares(lambda p: decay_and_peak(p, T, Y), START, residual_chunk_size=100)
    # Some data in args, the rest closed over: a chunk's residuals come out with the wrong length.
    with pytest.raises(ValueError, match="row"):
        jaxlm.least_squares(lambda p, t: decay_and_peak(p, t, Y), START, (T,), residual_chunk_size=100)


def centred(params, t, y):  # each residual minus the mean of all: couples the points
    residual = decay_and_peak(params, t, y)
    return residual - jnp.mean(residual)


def normalised(params, t, y):  # divided by the data's spread
    return decay_and_peak(params, t, y) / jnp.std(y)


def cumulative(params, t, y):  # each residual sums those of the points before it
    return jnp.cumsum(decay_and_peak(params, t, y)) / t.size


@pytest.mark.parametrize("fun", [centred, normalised, cumulative])
@pytest.mark.parametrize("residual_chunk_size", [256, T.size - 1])
def test_a_model_that_couples_points_stops_at_the_start(fun, residual_chunk_size):
    """Chunks would fit each chunk's mean, spread or sums instead of the data's (a wrong answer
    that looked converged); the solve says so instead. One chunk holding all the points is fine."""
    solution = jaxlm.least_squares(fun, START, (T, Y), residual_chunk_size=residual_chunk_size)
    assert int(solution.status) == jaxlm.Status.COUPLED_DATA_POINTS
    assert not bool(solution.success) and "couples the data points" in solution.message
    np.testing.assert_array_equal(solution.params, START)
    whole = jaxlm.least_squares(fun, START, (T, Y), residual_chunk_size=T.size)
    assert_same_solution(whole, jaxlm.least_squares(fun, START, (T, Y)))


def test_coupled_points_in_float32_and_in_a_batch():
    t32, y32 = make_data(2000, jnp.float32)
    solve = jax.vmap(
        lambda fun_index, y: jax.lax.switch(
            fun_index,
            [
                lambda y: jaxlm.least_squares(
                    decay_and_peak, START.astype(jnp.float32), (t32, y), residual_chunk_size=256
                ),
                lambda y: jaxlm.least_squares(
                    centred, START.astype(jnp.float32), (t32, y), residual_chunk_size=256
                ),
            ],
            y,
        )
    )
    solutions = solve(jnp.array([0, 1, 0]), jnp.stack([y32, y32, 1.1 * y32]))
    np.testing.assert_array_equal(solutions.success, [True, False, True])
    assert int(solutions.status[1]) == jaxlm.Status.COUPLED_DATA_POINTS


# `curve_fit(residual_chunk_size=...)`: the fit and pcov (from R of J = QR, accumulated chunk by chunk).


def decay_and_peak_model(t, amplitude, rate, peak, center, background):
    return decay_and_peak(jnp.stack([amplitude, rate, peak, center, background]), t, 0.0)


def assert_same_fit(chunked, plain, rtol=1e-10):
    (p_chunked, cov_chunked, info_chunked, *_), (p_plain, cov_plain, info_plain, *_) = chunked, plain
    assert bool(info_chunked["success"])
    np.testing.assert_allclose(p_chunked, p_plain, rtol=rtol)
    # pcov in units of the standard errors (the correlations), where near-zero entries are compared fairly.
    assert np.array_equal(np.isnan(cov_chunked), np.isnan(cov_plain))
    errors = np.sqrt(np.abs(np.diag(cov_plain)))
    scale = np.outer(np.where(errors > 0, errors, 1), np.where(errors > 0, errors, 1))
    np.testing.assert_allclose(
        np.asarray(cov_chunked) / scale, np.asarray(cov_plain) / scale, atol=100 * rtol
    )
    np.testing.assert_allclose(info_chunked["fvec"], info_plain["fvec"], atol=1e-8)
    for key in ("r_squared", "num_points", "num_varied", "covariance_singular"):
        np.testing.assert_allclose(info_chunked[key], info_plain[key], rtol=1e-10)


SIGMA = 0.02 * (1 + jnp.arange(T.size) % 3)
MASK = jnp.arange(T.size) % 7 != 0
CURVE_FIT_OPTIONS = {
    "plain": {},
    "sigma": {"sigma": SIGMA, "absolute_sigma": True},
    "robust": {"loss": "soft_l1", "f_scale": 0.05},
    "bounds": {"bounds": BOUNDS},  # the background ends pinned at its bound: NaN in pcov
    "mask": {"mask": MASK},
}


@pytest.mark.parametrize("options", list(CURVE_FIT_OPTIONS))
def test_chunked_curve_fit_equals_the_plain_fit(options):
    options = CURVE_FIT_OPTIONS[options]
    plain = jaxlm.curve_fit(decay_and_peak_model, T, Y, START, full_output=True, **options)
    # 300 does not divide 2000: the last chunk overlaps the one before.
    chunked = jaxlm.curve_fit(
        decay_and_peak_model, T, Y, START, full_output=True, residual_chunk_size=300, **options
    )
    assert_same_fit(chunked, plain)
    if "bounds" in options:
        assert np.isnan(chunked[1][-1, -1]) and not np.isnan(chunked[1][0, 0])


def test_chunked_curve_fit_with_scipy_xdata_layout_and_images():
    # scipy's (k, M) xdata: the points along the last axis.
    xy = jax.random.uniform(jax.random.key(1), (2, 500), minval=-1, maxval=1)

    def surface(xy, a, b, c):
        return a * jnp.exp(b * xy[0]) + c * xy[1] ** 2

    z = surface(xy, 2.0, 0.5, -1.0) + 0.01 * jax.random.normal(jax.random.key(2), (500,))
    plain = jaxlm.curve_fit(surface, xy, z, [1.0, 1.0, 1.0], full_output=True)
    chunked = jaxlm.curve_fit(surface, xy, z, [1.0, 1.0, 1.0], full_output=True, residual_chunk_size=64)
    assert_same_fit(chunked, plain, rtol=1e-9)

    # An image: the points are its rows, chunked along with the rows of the coordinate grids.
    rows, columns = jnp.mgrid[0:20, 0:15].astype(float)

    def spot(grid, amplitude, x0, y0, width, background):
        x, y = grid
        return amplitude * jnp.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * width**2)) + background

    image = spot((columns, rows), 10.0, 7.0, 9.0, 2.0, 1.0)
    image = image + 0.1 * jax.random.normal(jax.random.key(3), image.shape)
    start = [8.0, 6.0, 8.0, 3.0, 0.0]
    plain = jaxlm.curve_fit(spot, (columns, rows), image, start, full_output=True)
    chunked = jaxlm.curve_fit(spot, (columns, rows), image, start, full_output=True, residual_chunk_size=7)
    assert_same_fit(chunked, plain)


def test_chunked_curve_fit_of_a_batch_under_jit_and_differentiated():
    datasets = jnp.stack([Y, 1.1 * Y, Y + 0.05])

    def fit(datasets, residual_chunk_size):
        popt, pcov = jaxlm.curve_fit(
            decay_and_peak_model, T, datasets, START, residual_chunk_size=residual_chunk_size
        )
        return popt, pcov

    chunked = jax.jit(fit, static_argnums=1)(datasets, 300)
    plain = fit(datasets, None)
    np.testing.assert_allclose(chunked[0], plain[0], rtol=1e-10)
    np.testing.assert_allclose(chunked[1], plain[1], rtol=1e-8, atol=1e-14)

    def loss(y, residual_chunk_size):
        popt, pcov = fit(y, residual_chunk_size)
        return jnp.sum(popt**2) + jnp.sum(jnp.sqrt(jnp.diag(pcov)))

    np.testing.assert_allclose(jax.grad(loss)(Y, 300), jax.grad(loss)(Y, None), rtol=1e-7, atol=1e-12)


def test_chunked_curve_fit_in_float32():
    t, y = make_data(2000, jnp.float32)
    plain = jaxlm.curve_fit(decay_and_peak_model, t, y, START, full_output=True)
    chunked = jaxlm.curve_fit(decay_and_peak_model, t, y, START, full_output=True, residual_chunk_size=300)
    assert chunked[0].dtype == chunked[1].dtype == jnp.float32
    assert bool(chunked[2]["success"])
    errors = np.sqrt(np.diag(plain[1]))
    assert np.max(np.abs(chunked[0] - plain[0]) / errors) < 0.05
    np.testing.assert_allclose(np.sqrt(np.diag(chunked[1])), errors, rtol=1e-3)


def test_no_m_by_n_array_in_a_chunked_curve_fit():
    m, n = T.size, START.size

    def largest(residual_chunk_size):
        def fit(y):
            return jaxlm.curve_fit(decay_and_peak_model, T, y, START, residual_chunk_size=residual_chunk_size)

        return max(_array_sizes(jax.make_jaxpr(fit)(Y).jaxpr))

    assert largest(None) >= m * n
    assert largest(256) < m * n


def test_chunked_curve_fit_of_a_singular_problem_gives_inf_covariance():
    def redundant(t, a, b, rate):  # only a + b is determined
        return (a + b) * jnp.exp(-rate * t)

    with pytest.warns(jaxlm.OptimizeWarning, match="could not be estimated"):
        _, pcov, info, *_ = jaxlm.curve_fit(
            redundant, T, Y, [1.0, 1.0, 1.0], full_output=True, residual_chunk_size=300
        )
    assert bool(info["covariance_singular"]) and np.all(np.isinf(pcov))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"residual_chunk_size": 0}, "positive integer"),
        ({"residual_chunk_size": 100, "solver": jaxlm.GaussNewton()}, "LevenbergMarquardt"),
        ({"residual_chunk_size": 100, "sigma": 0.02 * jnp.eye(T.size)}, "not a covariance matrix"),
    ],
)
def test_chunked_curve_fit_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        jaxlm.curve_fit(decay_and_peak_model, T, Y, START, **options)


def test_chunked_curve_fit_of_a_model_that_does_not_work_point_by_point_is_an_error():
    def closed_over(t, *params):  # ignores its x: the points are in the closure
        return decay_and_peak_model(T, *params)

    with pytest.raises(ValueError, match="f must compute the model at each data point"):
        jaxlm.curve_fit(closed_over, T, Y, START, residual_chunk_size=100)

    def centred_model(t, *params):  # evaluates point by point, but minus the mean over the points
        model = decay_and_peak_model(t, *params)
        return model - jnp.mean(model)

    with pytest.raises(RuntimeError, match=r"COUPLED_DATA_POINTS: .*couples the data points"):
        jaxlm.curve_fit(centred_model, T, Y, START, residual_chunk_size=256)
