"""`curve_fit` against `scipy.optimize.curve_fit`, robust losses against scipy's least_squares,
batches, masks, NaN policies and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxlm

# scipy at tight tolerances, so that the comparison measures jaxlm, not scipy's early stop.
TIGHT = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}
RNG = np.random.default_rng(7)
X = np.linspace(0.0, 4.0, 40)


def decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def peak(x, height, center, width, background):
    return height * jnp.exp(-0.5 * ((x - center) / width) ** 2) + background


def rational(x, a, b):
    return a * x / (1 + b * x)


MODELS = {
    "decay": (decay, (2.5, 1.3, 0.5), (1.0, 1.0, 0.0)),
    "peak": (peak, (3.0, 2.0, 0.6, 0.4), (2.0, 1.8, 1.0, 0.0)),
    "rational": (rational, (2.0, 0.7), (1.0, 1.0)),
}
SIGMA_1D = 0.02 + 0.05 * RNG.random(X.size)
_A = 0.01 * RNG.standard_normal((X.size, X.size))
SIGMA_2D = np.diag(SIGMA_1D**2) + _A @ _A.T
SIGMA_OPTIONS = {
    "none": {},
    "sigma 1-D": {"sigma": SIGMA_1D},
    "sigma 1-D absolute": {"sigma": SIGMA_1D, "absolute_sigma": True},
    "sigma 2-D": {"sigma": SIGMA_2D},
    "sigma 2-D absolute": {"sigma": SIGMA_2D, "absolute_sigma": True},
}


def _numpy_model(model):
    return lambda x, *p: np.asarray(model(x, *p))


def _data(model, truth, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(model(X, *truth)) + noise * rng.standard_normal(X.size)


def _relative(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b) / np.abs(b))


def _covariance_error(pcov, expected):
    """The largest difference relative to √(σᵢ²σⱼ²): near-zero covariances are compared at the
    scale of their variances, not relative to themselves."""
    pcov, expected = np.asarray(pcov), np.asarray(expected)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    return np.max(np.abs(pcov - expected) / scale)


@pytest.mark.parametrize("sigma", list(SIGMA_OPTIONS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_agrees_with_scipy(model_name, sigma):
    model, truth, p0 = MODELS[model_name]
    y = _data(model, truth)
    options = SIGMA_OPTIONS[sigma]
    popt, pcov = jaxlm.curve_fit(model, X, y, p0=p0, **options)
    expected_popt, expected_pcov = scipy.optimize.curve_fit(
        _numpy_model(model), X, y, p0=p0, **options, **TIGHT
    )
    assert _relative(popt, expected_popt) < 1e-6
    assert _covariance_error(pcov, expected_pcov) < 1e-6


def test_p0_defaults_to_ones_from_the_signature_and_full_output():
    y = _data(rational, (2.0, 0.7))
    popt, _, info, message, status = jaxlm.curve_fit(rational, X, y, full_output=True)
    expected, _ = scipy.optimize.curve_fit(_numpy_model(rational), X, y, p0=[1.0, 1.0], **TIGHT)
    assert _relative(popt, expected) < 1e-6
    assert bool(info["success"]) and status == jaxlm.Status(int(status)) and "Converged" in message
    assert info["fvec"].shape == X.shape and int(info["nfev"]) >= int(info["num_steps"])
    np.testing.assert_allclose(np.sum(np.asarray(info["fvec"]) ** 2), 2 * info["solution"].cost, rtol=1e-12)


def test_python_lists_as_scipy_takes_them():
    y = _data(rational, (2.0, 0.7))
    expected, expected_pcov = jaxlm.curve_fit(rational, X, y, p0=[1.0, 1.0])
    popt, pcov = jaxlm.curve_fit(rational, X.tolist(), y.tolist(), p0=[1, 1])  # xdata one array, not a pytree
    np.testing.assert_allclose(popt, expected, rtol=1e-12)
    np.testing.assert_allclose(pcov, expected_pcov, rtol=1e-10)


def test_a_repeated_call_does_not_trace_the_model_again():
    """The model's output shape is cached with the compiled fit: a second call from Python with
    data of the same shapes runs no Python code of the model; new shapes trace it again."""
    calls = []

    def counted(x, a, b):
        calls.append(None)
        return rational(x, a, b)

    y = _data(rational, (2.0, 0.7))
    first, _ = jaxlm.curve_fit(counted, X, y, p0=[1.0, 1.0])
    traced = len(calls)
    second, _ = jaxlm.curve_fit(counted, X, 1.1 * y, p0=[1.0, 1.0])
    assert traced > 0 and len(calls) == traced
    assert not np.allclose(first, second)
    jaxlm.curve_fit(counted, X[:20], y[:20], p0=[1.0, 1.0])
    assert len(calls) > traced


class _UnhashableModel:
    __hash__ = None  # a model object that cannot be a cache key still works

    def __call__(self, x, a, b):
        return rational(x, a, b)


def test_an_unhashable_model_object():
    y = _data(rational, (2.0, 0.7))
    popt, _ = jaxlm.curve_fit(_UnhashableModel(), X, y, p0=[1.0, 1.0])
    np.testing.assert_allclose(popt, jaxlm.curve_fit(rational, X, y, p0=[1.0, 1.0])[0], rtol=1e-10)


def test_singular_jacobian_gives_inf_covariance_and_says_so():
    def redundant(x, a, b, c):
        return (a + b) * jnp.exp(-c * x)

    y = _data(redundant, (1.0, 1.5, 0.8))
    with pytest.warns(jaxlm.OptimizeWarning, match="could not be estimated"):
        popt, pcov, info, _, _ = jaxlm.curve_fit(redundant, X, y, full_output=True)
    assert bool(info["success"])
    assert np.all(np.isinf(pcov)) and bool(info["covariance_singular"])
    np.testing.assert_allclose(popt[0] + popt[1], 2.5, rtol=0.05)
    # m ≤ n with the variance estimated from the data: inf, as in scipy.
    with pytest.warns(jaxlm.OptimizeWarning, match="could not be estimated"):
        _, pcov = jaxlm.curve_fit(rational, X[:2], np.array([0.5, 0.9]))
    assert np.all(np.isinf(pcov))


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan"])
def test_robust_losses_agree_with_scipy(loss):
    y = _data(decay, (2.5, 1.3, 0.5), noise=0.02, seed=3)
    y[[4, 13, 30]] += [2.0, -1.5, 3.0]  # outliers
    p0 = np.array([1.0, 1.0, 0.0])

    def residual(p, x, y):
        return decay(x, *p) - y

    solution = jaxlm.least_squares(residual, jnp.asarray(p0), (X, y), loss=loss, f_scale=0.1)
    expected = scipy.optimize.least_squares(
        lambda p: np.asarray(residual(p, X, y)), p0, loss=loss, f_scale=0.1, **TIGHT
    )
    assert _relative(solution.params, expected.x) < 1e-6
    np.testing.assert_allclose(solution.cost, expected.cost, rtol=1e-10)
    np.testing.assert_allclose(solution.residual, expected.fun, atol=1e-6)  # the model's residuals

    popt, pcov = jaxlm.curve_fit(decay, X, y, p0=p0, loss=loss, f_scale=0.1)
    expected_popt, expected_pcov = scipy.optimize.curve_fit(
        _numpy_model(decay), X, y, p0=p0, method="trf", loss=loss, f_scale=0.1, **TIGHT
    )
    assert _relative(popt, expected_popt) < 1e-6
    assert _covariance_error(pcov, expected_pcov) < 1e-6
    # The robust fit is close to the truth where plain least squares is pulled away.
    plain, _ = jaxlm.curve_fit(decay, X, y, p0=p0)
    assert np.max(np.abs(popt - np.array([2.5, 1.3, 0.5]))) < np.max(
        np.abs(plain - np.array([2.5, 1.3, 0.5]))
    )


def test_a_batch_matches_a_loop_of_single_fits():
    truths = np.array([[2.5, 1.3, 0.5], [1.0, 0.5, -0.2], [4.0, 2.0, 1.0], [0.5, 0.9, 0.0]])
    ys = np.stack([_data(decay, truth, seed=i) for i, truth in enumerate(truths)])
    p0 = np.array([1.0, 1.0, 0.0])
    popt, pcov = jaxlm.curve_fit(decay, X, ys, p0=p0, sigma=SIGMA_1D)
    assert popt.shape == (4, 3) and pcov.shape == (4, 3, 3)
    for i in range(4):
        single_popt, single_pcov = jaxlm.curve_fit(decay, X, ys[i], p0=p0, sigma=SIGMA_1D)
        np.testing.assert_allclose(popt[i], single_popt, rtol=1e-9)
        np.testing.assert_allclose(pcov[i], single_pcov, rtol=1e-7)
    # One starting point per dataset, and jax.vmap over curve_fit itself.
    unweighted = jaxlm.curve_fit(decay, X, ys, p0=p0)[0]
    per_fit = jaxlm.curve_fit(decay, X, ys, p0=truths * 1.1)[0]
    np.testing.assert_allclose(per_fit, unweighted, atol=1e-7)  # other starts, same minima
    vmapped = jax.vmap(lambda y: jaxlm.curve_fit(decay, X, y, p0=p0)[0])(ys)
    np.testing.assert_allclose(vmapped, unweighted, rtol=1e-9)


def test_datasets_of_different_lengths_through_a_mask():
    lengths = [40, 25, 12]
    ys = np.stack([_data(decay, (2.5, 1.3, 0.5), seed=i) for i in range(3)])
    mask = np.arange(X.size)[None, :] < np.array(lengths)[:, None]
    ys[~mask] = 1e6  # garbage beyond each dataset's end must not matter
    p0 = np.array([1.0, 1.0, 0.0])
    popt, pcov = jaxlm.curve_fit(decay, X, ys, p0=p0, mask=mask)
    for i, length in enumerate(lengths):
        expected_popt, expected_pcov = scipy.optimize.curve_fit(
            _numpy_model(decay), X[:length], ys[i, :length], p0=p0, **TIGHT
        )
        assert _relative(popt[i], expected_popt) < 1e-6
        assert _covariance_error(pcov[i], expected_pcov) < 1e-6
    # sigma = inf, or weight 0, leaves a point out in the same way.
    sigma = np.where(mask[2], 1.0, np.inf)
    popt_sigma, pcov_sigma = jaxlm.curve_fit(decay, X, ys[2], p0=p0, sigma=sigma)
    np.testing.assert_allclose(popt_sigma, popt[2], rtol=1e-9)
    popt_weights, pcov_weights = jaxlm.curve_fit(decay, X, ys[2], p0=p0, weights=mask[2].astype(float))
    np.testing.assert_allclose(popt_weights, popt[2], rtol=1e-9)
    np.testing.assert_allclose(pcov_weights, pcov_sigma, rtol=1e-9)


def test_a_fit_with_too_few_points_left_fails():
    # All points left out, or all but two for three parameters: scipy raises ("must not exceed the
    # number of data points"). jaxlm raises for one fit called from Python and gives each fit of a
    # batch the status TOO_FEW_POINTS, instead of a fit at (or near) p0 called converged.
    good = _data(decay, (2.5, 1.3, 0.5))
    all_nan = np.full(X.size, np.nan)
    two_left = good.copy()
    two_left[2:] = np.nan
    p0 = np.array([1.0, 1.0, 0.0])
    for y in (all_nan, two_left):
        with pytest.raises(RuntimeError, match="TOO_FEW_POINTS: Too few data points"):
            jaxlm.curve_fit(decay, X, y, p0=p0, nan_policy="omit")
    with pytest.raises(RuntimeError, match="TOO_FEW_POINTS"):
        jaxlm.curve_fit(decay, X, good, p0=p0, mask=np.arange(X.size) < 2)
    with pytest.raises(RuntimeError, match="TOO_FEW_POINTS"):
        jaxlm.curve_fit(decay, X, good, p0=p0, sigma=np.full(X.size, np.inf))
    ys = np.stack([good, all_nan, two_left])
    with pytest.warns(jaxlm.OptimizeWarning, match="2 of 3 fits did not converge"):
        _, pcov, info, _, code = jaxlm.curve_fit(decay, X, ys, p0=p0, nan_policy="omit", full_output=True)
    assert np.asarray(info["success"]).tolist() == [True, False, False]
    assert np.asarray(info["status"])[1:].tolist() == [jaxlm.Status.TOO_FEW_POINTS] * 2
    assert np.asarray(code)[1:].tolist() == [0, 0]  # MINPACK's "improper input"
    assert np.all(np.isfinite(pcov[0])) and np.all(np.isnan(pcov[1:]))


def test_weights_are_one_over_sigma():
    y = _data(decay, (2.5, 1.3, 0.5))
    with_sigma = jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.0], sigma=SIGMA_1D)
    with_weights = jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.0], weights=1 / SIGMA_1D)
    np.testing.assert_allclose(with_weights[0], with_sigma[0], rtol=1e-12)
    np.testing.assert_allclose(with_weights[1], with_sigma[1], rtol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        jaxlm.curve_fit(decay, X, y, sigma=SIGMA_1D, weights=1 / SIGMA_1D)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        jaxlm.curve_fit(decay, X, y, weights=-np.ones(X.size))


def test_nan_policies():
    y = _data(decay, (2.5, 1.3, 0.5))
    y[[3, 17]] = np.nan
    p0 = np.array([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="nan_policy='omit'"):
        jaxlm.curve_fit(decay, X, y, p0=p0)
    with pytest.raises(ValueError, match="NaN"):
        jaxlm.curve_fit(decay, X, y, p0=p0, nan_policy="raise")
    popt, pcov = jaxlm.curve_fit(decay, X, y, p0=p0, nan_policy="omit")
    keep = np.isfinite(y)
    expected_popt, expected_pcov = scipy.optimize.curve_fit(
        _numpy_model(decay), X[keep], y[keep], p0=p0, **TIGHT
    )
    assert _relative(popt, expected_popt) < 1e-6
    assert _covariance_error(pcov, expected_pcov) < 1e-6
    with pytest.raises(ValueError, match="'propagate'` is not supported"):  # as in scipy
        jaxlm.curve_fit(decay, X, y, p0=p0, nan_policy="propagate")
    # Under jit the data cannot be checked: the fit to NaN data fails with a status.
    fit = jax.jit(lambda y: jaxlm.curve_fit(decay, X, y, p0=p0, check_finite=False, full_output=True))
    popt, pcov, info, message, code = fit(jnp.asarray(y))
    assert not bool(info["success"]) and int(info["status"]) == jaxlm.Status.NONFINITE_START
    assert message is None and int(code) == 0 and np.all(np.isnan(pcov))


def test_under_jit_and_differentiable():
    def line(x, a, b):
        return a * x + b

    y = jnp.asarray(_data(line, (2.0, -1.0)))
    fit = jax.jit(lambda y: jaxlm.curve_fit(line, X, y)[0])
    np.testing.assert_allclose(fit(y), np.polyfit(X, np.asarray(y), 1), rtol=1e-9)
    # For a straight line popt = (XᵀX)⁻¹Xᵀy exactly, so ∂popt/∂y is that matrix.
    design = np.stack([X, np.ones_like(X)], axis=1)
    np.testing.assert_allclose(jax.jacobian(fit)(y), np.linalg.pinv(design), atol=1e-9)


def test_float32():
    y = _data(decay, (2.5, 1.3, 0.5)).astype(np.float32)
    popt, pcov = jaxlm.curve_fit(decay, X.astype(np.float32), y, p0=np.array([1.0, 1.0, 0.0]))
    assert popt.dtype == jnp.float32 and pcov.dtype == jnp.float32
    expected_popt, expected_pcov = scipy.optimize.curve_fit(
        _numpy_model(decay), X, y.astype(np.float64), p0=[1.0, 1.0, 0.0], **TIGHT
    )
    assert _relative(popt, expected_popt) < 1e-3
    assert _covariance_error(pcov, expected_pcov) < 1e-2


def test_float32_covariance_of_many_points_is_not_called_singular():
    # σ_min/σ_max of J is 7e-4 here, below scipy's threshold eps·m = 2.4e-3 at float32's eps:
    # without the cap at √eps = 3.5e-4 the fit of 20,000 points would report pcov = inf.
    t = np.linspace(20.0, 21.0, 20_000)
    y = 1.0 + 0.5 * t + 0.01 * RNG.standard_normal(t.size)

    def line(t, a, b):
        return a + b * t

    _, expected_pcov = jaxlm.curve_fit(line, t, y, [0.0, 0.0])
    _, pcov, info, *_ = jaxlm.curve_fit(
        line, t.astype(np.float32), y.astype(np.float32), [0.0, 0.0], full_output=True
    )
    assert not bool(info["covariance_singular"])
    np.testing.assert_allclose(np.sqrt(np.diag(pcov)), np.sqrt(np.diag(expected_pcov)), rtol=1e-3)


def test_user_jacobian():
    def decay_jacobian(x, a, b, c):
        e = jnp.exp(-b * x)
        return jnp.stack([e, -a * x * e, jnp.ones_like(x)], axis=1)

    y = _data(decay, (2.5, 1.3, 0.5))
    with_jac = jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.0], sigma=SIGMA_1D, jac=decay_jacobian)
    without = jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.0], sigma=SIGMA_1D)
    np.testing.assert_allclose(with_jac[0], without[0], rtol=1e-9)
    np.testing.assert_allclose(with_jac[1], without[1], rtol=1e-7)


def _star_args_model(x, *params):
    return params[0] * x


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: jaxlm.curve_fit(decay, X, np.ones(7)), ValueError, "must match"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), p0=[1.0, 2.0]), TypeError, "one value per parameter"),
        (lambda: jaxlm.curve_fit(_star_args_model, X, np.ones(40)), ValueError, "p0 is needed"),
        (lambda: jaxlm.curve_fit(lambda x, a: jnp.sum(a * x), X, np.ones(40)), ValueError, "one value per"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), sigma=np.ones(5)), ValueError, "sigma has shape"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), sigma=np.zeros(40)), ValueError, "sigma must be > 0"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), sigma=-np.eye(40)), ValueError, "positive definite"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), mask=np.ones(40)), TypeError, "booleans"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), nan_policy="drop"), ValueError, "nan_policy"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), loss="l1"), ValueError, "loss must be"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), method="newton"), ValueError, "method must be"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), bounds=(1, 0)), ValueError, "lower <= upper"),
        (
            lambda: jaxlm.curve_fit(decay, X, np.ones(40), p0=[1, 1, 0], bounds=(0.5, 2)),
            ValueError,
            "p0 is outside",
        ),
        (
            lambda: jaxlm.curve_fit(decay, X, np.ones(40), bounds=(0, 2), solver=jaxlm.HybridLMQN()),
            ValueError,
            "need LevenbergMarquardt",
        ),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40), fixed=[0, 1, 0]), ValueError, "fixed must be"),
        (lambda: jaxlm.curve_fit(decay, X, np.ones(40) * 1j), ValueError, "ydata is complex"),
    ],
    ids=[
        "x and y of different lengths",
        "p0 of the wrong length",
        "p0 missing with *params",
        "f returns the wrong shape",
        "sigma of the wrong shape",
        "sigma not positive",
        "covariance not positive definite",
        "mask not boolean",
        "unknown nan_policy",
        "unknown loss",
        "unknown method",
        "bounds with lower > upper",
        "p0 outside the bounds",
        "bounds with a solver that cannot",
        "fixed not boolean",
        "complex data",
    ],
)
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bounds_that_end_inactive_agree_with_scipy():
    y = _data(decay, (2.5, 1.3, 0.5))
    bounds = (0.0, [10.0, 10.0, 10.0])
    popt, pcov = jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.1], bounds=bounds, sigma=SIGMA_1D)
    expected_popt, expected_pcov = scipy.optimize.curve_fit(
        _numpy_model(decay), X, y, p0=[1.0, 1.0, 0.1], bounds=bounds, sigma=SIGMA_1D, **TIGHT
    )
    assert _relative(popt, expected_popt) < 1e-6
    assert _covariance_error(pcov, expected_pcov) < 1e-6


def test_a_pinned_parameter_has_no_covariance_and_no_derivative():
    y = _data(decay, (2.5, 1.3, 0.5))
    # The data want c ≈ 0.5; with c ≥ 0.7 the fit ends on that bound and is the fit with c held.
    popt, pcov = jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.8], bounds=([0.0, 0.0, 0.7], 10.0))
    held_popt, held_pcov = scipy.optimize.curve_fit(
        lambda x, a, b: np.asarray(decay(x, a, b, 0.7)), X, y, p0=[1.0, 1.0], **TIGHT
    )
    assert popt[2] == 0.7
    assert _relative(popt[:2], held_popt) < 1e-6
    assert _covariance_error(pcov[:2, :2], held_pcov) < 1e-6
    assert np.all(np.isnan(pcov[2])) and np.all(np.isnan(pcov[:, 2]))

    def fitted(y):
        return jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.8], bounds=([0.0, 0.0, 0.7], 10.0))[0]

    derivative = jax.jacobian(fitted)(jnp.asarray(y))
    np.testing.assert_array_equal(derivative[2], 0.0)
    held = jax.jacobian(
        lambda y: jaxlm.curve_fit(lambda x, a, b: decay(x, a, b, 0.7), X, y, p0=[1.0, 1.0])[0]
    )
    np.testing.assert_allclose(derivative[:2], held(jnp.asarray(y)), atol=1e-6)  # as accurate as the fits


def test_fixed_parameters_are_held_and_left_out():
    y = _data(decay, (2.5, 1.3, 0.5))
    popt, pcov = jaxlm.curve_fit(decay, X, y, p0=[1.0, 1.0, 0.6], fixed=np.array([False, False, True]))
    held_popt, held_pcov = scipy.optimize.curve_fit(
        lambda x, a, b: np.asarray(decay(x, a, b, 0.6)), X, y, p0=[1.0, 1.0], **TIGHT
    )
    assert popt[2] == 0.6
    assert _relative(popt[:2], held_popt) < 1e-6
    assert _covariance_error(pcov[:2, :2], held_pcov) < 1e-6  # m − 2 degrees of freedom, as lmfit
    assert np.all(np.isnan(pcov[2]))
    # In a batch each dataset holds its own p0 value.
    p0 = np.array([[1.0, 1.0, 0.6], [1.0, 1.0, 0.4]])
    batch_popt, _ = jaxlm.curve_fit(decay, X, np.stack([y, y]), p0=p0, fixed=np.array([False, False, True]))
    np.testing.assert_array_equal(batch_popt[:, 2], [0.6, 0.4])
    np.testing.assert_allclose(batch_popt[0], popt, rtol=1e-9)
