"""`jaxlm.fit`: statistics against their textbook formulas, bands against linear regression,
the report, batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import jaxlm
from jaxlm._fit_result import student_t_quantile

X = np.linspace(0.0, 4.0, 30)
RNG = np.random.default_rng(11)


def line(x, slope, intercept):
    return slope * x + intercept


def decay(x, amplitude, rate, offset):
    return amplitude * jnp.exp(-rate * x) + offset


LINE_Y = 1.5 * X - 0.7 + 0.2 * RNG.standard_normal(X.size)
DECAY_Y = np.asarray(decay(X, 2.5, 1.3, 0.5)) + 0.05 * RNG.standard_normal(X.size)


def test_statistics_and_bands_of_a_straight_line_are_the_textbook_ones():
    result = jaxlm.fit(line, X, LINE_Y)
    n = X.size
    slope, intercept = np.polyfit(X, LINE_Y, 1)
    np.testing.assert_allclose(result.params, [slope, intercept], rtol=1e-9)
    residual = LINE_Y - (slope * X + intercept)
    s2 = np.sum(residual**2) / (n - 2)
    sxx = np.sum((X - X.mean()) ** 2)
    np.testing.assert_allclose(result.chi_square, np.sum(residual**2), rtol=1e-9)
    np.testing.assert_allclose(result.reduced_chi_square, s2, rtol=1e-9)
    np.testing.assert_allclose(
        result.stderr, [np.sqrt(s2 / sxx), np.sqrt(s2 * (1 / n + X.mean() ** 2 / sxx))], rtol=1e-8
    )
    total = np.sum((LINE_Y - LINE_Y.mean()) ** 2)
    np.testing.assert_allclose(result.r_squared, 1 - np.sum(residual**2) / total, rtol=1e-9)
    log_term = n * np.log(np.sum(residual**2) / n)
    np.testing.assert_allclose([result.aic, result.bic], [log_term + 4, log_term + 2 * np.log(n)], rtol=1e-9)
    assert int(result.degrees_of_freedom) == n - 2 and result.names == ("slope", "intercept")

    x_new = np.array([-1.0, 0.0, 2.0, 5.0])
    t = scipy.stats.t.ppf(0.975, n - 2)
    leverage = 1 / n + (x_new - X.mean()) ** 2 / sxx
    np.testing.assert_allclose(result.confidence_band(x_new), t * np.sqrt(s2 * leverage), rtol=1e-7)
    np.testing.assert_allclose(result.prediction_band(x_new), t * np.sqrt(s2 * (1 + leverage)), rtol=1e-7)
    np.testing.assert_allclose(result.eval(x_new), slope * x_new + intercept, rtol=1e-9)


@pytest.mark.parametrize("dof", [1, 2, 5, 28, 400])
@pytest.mark.parametrize("probability", [0.6, 0.975, 0.995])
def test_student_t_quantile(probability, dof):
    np.testing.assert_allclose(
        student_t_quantile(probability, dof), scipy.stats.t.ppf(probability, dof), rtol=1e-10
    )


def test_weighted_fit_agrees_with_curve_fit_and_needs_sigma_for_predictions():
    sigma = 0.05 * np.ones(X.size)
    result = jaxlm.fit(decay, X, DECAY_Y, p0=[1.0, 1.0, 0.0], sigma=sigma)
    popt, pcov = scipy.optimize.curve_fit(
        lambda x, *p: np.asarray(decay(x, *p)), X, DECAY_Y, p0=[1.0, 1.0, 0.0], sigma=sigma
    )
    np.testing.assert_allclose(result.params, popt, rtol=1e-6)
    np.testing.assert_allclose(result.stderr, np.sqrt(np.diag(pcov)), rtol=1e-5)
    np.testing.assert_allclose(
        result.correlation, pcov / np.sqrt(np.outer(np.diag(pcov), np.diag(pcov))), atol=1e-6
    )
    np.testing.assert_allclose(
        result.chi_square, np.sum(((DECAY_Y - decay(X, *popt)) / sigma) ** 2), rtol=1e-6
    )
    with pytest.raises(ValueError, match="pass sigma"):
        result.prediction_band(X)
    assert np.all(result.prediction_band(X, sigma=0.05) > result.confidence_band(X))


def test_report_and_html():
    result = jaxlm.fit(decay, X, DECAY_Y, p0=[1.0, 1.0, 0.0])
    report = result.report()
    for piece in (
        "[[Fit Statistics]]",
        "reduced chi-square",
        "Akaike",
        "R-squared",
        "[[Variables]]",
        "[[Correlations]]",
    ):
        assert piece in report
    for i, name in enumerate(result.names):
        assert f"{name}:" in report and f"{float(result.params[i]):.8g}" in report
    assert str(result) == report
    html = result._repr_html_()
    assert "<table>" in html and "amplitude" in html and "standard error" in html


def test_report_marks_fixed_parameters_and_failures():
    fixed = jaxlm.fit(decay, X, DECAY_Y, p0=[1.0, 1.0, 0.5], fixed=np.array([False, False, True]))
    assert "offset:    0.5 (fixed or at a bound)" in fixed.report()
    assert int(fixed.num_varied) == 2 and np.isnan(float(fixed.stderr[2]))
    failed = jaxlm.fit(decay, X, DECAY_Y, p0=[1.0, 1.0, 0.0], max_steps=2)
    assert "FAILED" in failed.report() and "max_steps" in failed.report()


def test_a_batch_of_fits_and_jit():
    ys = np.stack([DECAY_Y, DECAY_Y + 1.0, 2 * DECAY_Y])
    batch = jaxlm.fit(decay, X, ys, p0=[1.0, 1.0, 0.0])
    assert batch.params.shape == (3, 3) and batch.chi_square.shape == (3,)
    assert "batch of 3 fits, 3 succeeded" in str(batch)
    single = jaxlm.fit(decay, X, ys[2], p0=[1.0, 1.0, 0.0])
    np.testing.assert_allclose(batch[2].params, single.params, rtol=1e-9)
    np.testing.assert_allclose(batch[2].aic, single.aic, rtol=1e-9)
    with pytest.raises(ValueError, match="result\\[i\\]"):
        batch.report()
    jitted = jax.jit(lambda y: jaxlm.fit(decay, X, y, p0=[1.0, 1.0, 0.0]).stderr)(jnp.asarray(ys[2]))
    np.testing.assert_allclose(jitted, single.stderr, rtol=1e-9)
