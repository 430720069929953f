"""The Poisson maximum-likelihood estimator (Gpufit's MLE): its deviance residuals, the fits of
`least_squares`, `least_squares_batch` and `curve_fit` with `estimator="poisson"`, the
Cramér–Rao covariance, and its checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln

import jaxlm

SIZE = 7
PIXELS = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE)), 0).astype(float)
TRUTH = np.array([300.0, 3.0, 3.0, 1.0, 5.0])  # peak, x0, y0, width, background per pixel


def spot(xy, amplitude, x0, y0, width, background):
    return amplitude * jnp.exp(-((xy[0] - x0) ** 2 + (xy[1] - y0) ** 2) / (2 * width**2)) + background


def spot_counts(params, counts):  # for least_squares: (model, counts)
    return spot(PIXELS.astype(params.dtype), *params), counts


def counts(num, truth=TRUTH, seed=0):
    mean = np.asarray(spot(PIXELS, *truth))
    return np.random.default_rng(seed).poisson(mean, (num, SIZE, SIZE)).astype(float)


def deviance_half(model, z):
    """F = Σ (f − z − z ln(f/z)), per point, computed directly (cancels where f ≈ z)."""
    return model - z - np.where(z > 0, z * np.log(np.where(z > 0, model / np.where(z > 0, z, 1), 1)), 0)


def test_the_deviance_residuals_square_to_the_mle_objective_and_are_smooth():
    rng = np.random.default_rng(1)
    z = rng.poisson(5.0, 400).astype(float)
    f = np.where(z > 0, z, 1.0) * rng.uniform(0.2, 3.0, 400)
    r = np.asarray(jaxlm.poisson_residual(f, z))
    np.testing.assert_allclose(0.5 * r**2, deviance_half(f, z), rtol=1e-9)
    np.testing.assert_array_equal(np.sign(r), np.sign(f - z))
    # Near f = z the direct formula cancels; F = z·d²/2·(1 − 2d/3 + d²/2 − 2d³/5 + O(d⁴)).
    z_near = np.array([3.0, 7.0, 20.0])
    d = np.array([1e-7, -3e-6, 2e-9])
    f_near = z_near * (1 + d)
    d = (f_near - z_near) / z_near  # that of the rounded f (f − z is exact)
    near = np.asarray(jaxlm.poisson_residual(f_near, z_near))
    series = z_near * d**2 / 2 * (1 - 2 * d / 3 + d**2 / 2 - 2 * d**3 / 5)
    np.testing.assert_allclose(0.5 * near**2, series, rtol=1e-13)
    # dr̂/df = (1 − z/f)/r̂, and 1/√z at f = z; for z = 0, r̂ = √(2f).
    derivative = jax.vmap(jax.grad(jaxlm.poisson_residual))(jnp.asarray(f), jnp.asarray(z))
    np.testing.assert_allclose(derivative, (1 - z / f) / r, rtol=1e-9)
    assert float(jax.grad(jaxlm.poisson_residual)(4.0, 4.0)) == pytest.approx(0.5, rel=1e-15)
    assert float(jaxlm.poisson_residual(2.0, 0.0)) == pytest.approx(2.0)
    # No likelihood: a model <= 0 where a count is > 0, a negative model or count.
    invalid = jaxlm.poisson_residual(jnp.array([-1.0, 0.0, 1.0, 0.0]), jnp.array([1.0, 1.0, -1.0, 0.0]))
    assert np.isnan(invalid[:3]).all() and float(invalid[3]) == 0.0
    slope = jax.vmap(jax.grad(jaxlm.poisson_residual))
    slopes = slope(jnp.array([-1.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 0.0]))
    assert np.isnan(slopes[:2]).all() and float(slopes[2]) == np.inf  # √(2f) at f = 0
    assert jaxlm.poisson_residual(jnp.float32(3.0), jnp.float32(2.0)).dtype == jnp.float32


def test_least_squares_finds_the_maximum_of_the_likelihood():
    z = counts(1, seed=3)[0]
    solution = jaxlm.least_squares(spot_counts, TRUTH * 1.1, (z,), estimator="poisson")
    assert bool(solution.success)
    model = np.asarray(spot(PIXELS, *solution.params))
    assert float(solution.cost) == pytest.approx(deviance_half(model, z).sum(), rel=1e-10)

    def negative_log_likelihood(p):
        f = spot(PIXELS, *p)
        return jnp.sum(f - z * jnp.log(f))

    gradient = jax.grad(negative_log_likelihood)(solution.params)
    scale = jax.grad(negative_log_likelihood)(jnp.asarray(TRUTH * 1.1))
    assert np.all(np.abs(gradient) <= 1e-7 * np.abs(scale))  # a stationary point of ln L
    # Least squares on the same counts is another estimator, with another answer.
    plain = jaxlm.least_squares(lambda p, z: spot(PIXELS, *p) - z, TRUTH * 1.1, (z,))
    assert not np.allclose(plain.params, solution.params, rtol=1e-4)


def test_curve_fit_reaches_the_cramer_rao_bound_and_its_pcov_is_that_bound():
    # 400 spots: the spread of x0 over the CRLB (from the truth) is within 10% of 1 for the MLE,
    # larger for least squares; pcov (the inverse Fisher information) matches the spread.
    data = counts(400, seed=5)
    popt, pcov, info, _, _ = jaxlm.curve_fit(
        spot, PIXELS, data, p0=TRUTH * 1.05, estimator="poisson", full_output=True
    )
    assert np.all(info["success"])
    jacobian = np.asarray(jax.jacfwd(lambda p: spot(PIXELS, *p).ravel())(jnp.asarray(TRUTH)))
    fisher = jacobian.T @ (jacobian / np.asarray(spot(PIXELS, *TRUTH)).ravel()[:, None])
    crlb = np.sqrt(np.diag(np.linalg.inv(fisher)))
    spread = np.asarray(popt).std(axis=0)
    np.testing.assert_allclose(spread[1:3] / crlb[1:3], 1, atol=0.1)
    np.testing.assert_allclose(np.abs(np.asarray(popt).mean(axis=0) - TRUTH) / crlb, 0, atol=0.2)
    stderr = np.sqrt(np.diagonal(np.asarray(pcov), axis1=1, axis2=2))
    np.testing.assert_allclose(np.median(stderr, axis=0) / spread, 1, atol=0.1)
    least_squares_popt, _ = jaxlm.curve_fit(spot, PIXELS, data, p0=TRUTH * 1.05)
    assert np.all(np.asarray(least_squares_popt).std(axis=0)[1:] > spread[1:])
    # The CRLB is absolute: absolute_sigma changes nothing.
    single = jaxlm.curve_fit(spot, PIXELS, data[0], p0=TRUTH * 1.05, estimator="poisson")
    np.testing.assert_allclose(single[1], pcov[0], rtol=1e-6)
    np.testing.assert_allclose(single[0], popt[0], rtol=1e-8)


def test_the_batch_driver_vmap_float32_zero_counts_and_a_failed_fit():
    dim = np.array([20.0, 3.0, 3.0, 1.0, 0.3])  # few photons: most pixels count 0
    z = np.concatenate([counts(63, dim, seed=7), counts(1, dim, seed=8)]).astype(np.float32)
    assert np.mean(z == 0) > 0.3
    starts = np.tile(dim * 1.1, (64, 1)).astype(np.float32)
    starts[-1, 4] = -5.0  # the model is < 0 at this start: that fit fails, the others do not
    batch = jaxlm.least_squares_batch(spot_counts, starts, (z,), estimator="poisson", progress=False)
    assert batch.params.dtype == np.float32
    assert batch.status[-1] == jaxlm.Status.NONFINITE_START and np.all(batch.success[:-1])
    vmapped = jax.vmap(lambda x0, z: jaxlm.least_squares(spot_counts, x0, (z,), estimator="poisson"))(
        jnp.asarray(starts[:-1]), jnp.asarray(z[:-1])
    )
    np.testing.assert_allclose(batch.params[:-1], vmapped.params, rtol=2e-3, atol=2e-3)


def test_bounds_and_the_implicit_gradient_of_the_mle():
    z = counts(1, seed=11)[0]
    start = np.array([330.0, 3.3, 3.3, 1.1, 3.5])
    bounded = jaxlm.least_squares(
        spot_counts, start, (z,), estimator="poisson", bounds=(0.0, [1e4, 6, 6, 3, 4.0])
    )
    assert bool(bounded.success) and float(bounded.params[4]) == 4.0  # pinned at its bound

    def x0_of(counts):
        return jaxlm.least_squares(spot_counts, TRUTH * 1.1, (counts,), estimator="poisson").params[1]

    gradient = jax.grad(x0_of)(jnp.asarray(z))
    step = 1e-4
    for pixel in [(3, 4), (2, 3), (0, 0)]:
        up, down = z.copy(), z.copy()
        up[pixel] += step
        down[pixel] -= step
        central = (float(x0_of(jnp.asarray(up))) - float(x0_of(jnp.asarray(down)))) / (2 * step)
        assert float(gradient[pixel]) == pytest.approx(central, rel=1e-4, abs=1e-9)


def test_fit_reports_the_likelihood():
    z = counts(1, seed=13)[0]
    result = jaxlm.fit(spot, PIXELS, z, p0=TRUTH * 1.05, estimator="poisson")
    f = np.asarray(spot(PIXELS, *result.params))
    log_likelihood = np.sum(z * np.log(f) - f - np.asarray(gammaln(z + 1)))
    assert float(result.log_likelihood) == pytest.approx(log_likelihood, rel=1e-10)
    assert float(result.aic) == pytest.approx(2 * 5 - 2 * log_likelihood, rel=1e-10)
    assert float(result.chi_square) == pytest.approx(2 * deviance_half(f, z).sum(), rel=1e-9)
    report = result.report()
    assert "estimator        = poisson" in report and "deviance" in report and "log-likelihood" in report
    assert np.isnan(jaxlm.fit(spot, PIXELS, z, p0=TRUTH * 1.05).log_likelihood)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda z: jaxlm.curve_fit(spot, PIXELS, z - 10, p0=TRUTH, estimator="poisson"),
         ValueError, "negative"),
        (lambda z: jaxlm.curve_fit(spot, PIXELS, z, p0=TRUTH, sigma=np.ones_like(z), estimator="poisson"),
         ValueError, "leave sigma and weights out"),
        (lambda z: jaxlm.curve_fit(spot, PIXELS, z, p0=TRUTH, loss="huber", estimator="poisson"),
         ValueError, "leave loss='linear'"),
        (lambda z: jaxlm.curve_fit(spot, PIXELS, z, p0=TRUTH, estimator="mle"), ValueError, "'poisson'"),
        (lambda z: jaxlm.least_squares(lambda p, z: spot(PIXELS, *p) - z, TRUTH, (z,), estimator="poisson"),
         TypeError, r"returns the pair \(model values, counts\)"),
        (lambda z: jaxlm.least_squares(spot_counts, TRUTH, (z,), jac=lambda p, z: None, estimator="poisson"),
         ValueError, "leave jac=None"),
    ],
)  # fmt: skip
def test_wrong_input_gets_an_error_that_says_what_to_do(call, error, match):
    with pytest.raises(error, match=match):
        call(counts(1)[0])


def test_a_model_without_likelihood_at_the_start_fails_with_a_status_that_says_why():
    with pytest.raises(RuntimeError, match="estimator='poisson'"):
        jaxlm.curve_fit(spot, PIXELS, counts(1)[0], p0=[300.0, 3, 3, 1, -50.0], estimator="poisson")
