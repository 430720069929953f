"""What a user coming from scipy meets: `curve_fit`'s scipy keywords, failure that is never silent
(RuntimeError, OptimizeWarning, a warning per batch, a status under jit), clear errors for complex
data and NumPy models, and `jaxlm.scipy.least_squares` beyond scipy's own tests."""

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxlm
import jaxlm.scipy
from jaxlm import _dispatch

X = np.linspace(0.0, 4.0, 30)
Y = 2.5 * np.exp(-1.3 * X) + 0.5 + 0.02 * np.random.default_rng(3).standard_normal(X.size)
P0 = [1.0, 1.0, 0.0]


def decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def numpy_decay(x, a, b, c):
    return a * np.exp(-b * x) + c


# Failure is loud from Python, a status under tracing.


def test_a_model_that_is_nan_raises_as_scipy_does():
    with pytest.raises(RuntimeError, match=r"Optimal parameters not found: .*NONFINITE_START"):
        jaxlm.curve_fit(lambda t, a, b, c: a * t * jnp.nan, X, Y, p0=P0)
    with pytest.raises(RuntimeError, match=r"Optimal parameters not found: .*MAX_STEPS: .*raise max_steps"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, maxfev=3)
    with pytest.raises(RuntimeError):  # scipy raises for the same
        scipy.optimize.curve_fit(numpy_decay, X, Y, p0=P0, maxfev=3)


def test_under_jit_a_failed_fit_is_a_status_with_nan_covariance():
    fit = jax.jit(lambda y: jaxlm.curve_fit(decay, X, y, p0=P0, maxfev=3, full_output=True))
    popt, pcov, info, message, code = fit(jnp.asarray(Y))
    assert int(info["status"]) == jaxlm.Status.MAX_STEPS and not bool(info["success"])
    assert message is None and int(code) == 5  # MINPACK's "too many evaluations"
    assert np.all(np.isfinite(popt)) and np.all(np.isnan(pcov))


def test_a_batch_warns_once_with_the_counts_of_failed_fits():
    ys = np.stack([Y, Y * np.nan, 2 * Y])
    with pytest.warns(jaxlm.OptimizeWarning, match=r"1 of 3 fits did not converge \(NONFINITE_START: 1\)"):
        popt, pcov, info, _, _ = jaxlm.curve_fit(decay, X, ys, p0=P0, check_finite=False, full_output=True)
    np.testing.assert_array_equal(info["success"], [True, False, True])
    assert np.all(np.isnan(pcov[1])) and np.all(np.isfinite(np.asarray(pcov)[[0, 2]]))
    np.testing.assert_allclose(popt[0], jaxlm.curve_fit(decay, X, Y, p0=P0)[0], rtol=1e-9)


def test_jaxlm_fit_reports_failure_in_its_status():
    result = jaxlm.fit(lambda t, a, b, c: a * t * jnp.nan, X, Y, p0=P0)
    assert not bool(result.success) and int(result.status) == jaxlm.Status.NONFINITE_START


def test_an_indeterminate_covariance_warns_with_a_subclass_of_scipys_warning():
    assert issubclass(jaxlm.OptimizeWarning, scipy.optimize.OptimizeWarning)
    with pytest.warns(jaxlm.OptimizeWarning, match="Covariance of the parameters could not be estimated"):
        _, pcov = jaxlm.curve_fit(lambda x, a, b: a * x, X, Y)  # b does not enter the model
    assert np.all(np.isinf(pcov))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=scipy.optimize.OptimizeWarning)  # scipy's filter
        jaxlm.curve_fit(lambda x, a, b: a * x, X, Y)
    # scipy's "trf" takes the pseudo-inverse instead, as do jaxlm's "trf" and "dogbox".
    _, pcov = jaxlm.curve_fit(lambda x, a, b: a * x, X, Y, method="trf")
    _, expected = scipy.optimize.curve_fit(lambda x, a, b: a * x, X, Y, method="trf")
    np.testing.assert_allclose(pcov, expected, rtol=1e-6, atol=1e-12)


# A call from Python of the same kind as an earlier one (the same model, shapes and options) skips
# to checking its data and fitting: it must behave exactly as the first did.


def undetermined(x, a, b):  # b does not enter the model
    return a * x


def test_a_repeated_call_gives_what_a_first_call_gives(backend_compiles):
    sigma = np.full(X.size, 0.02)
    calls = [
        {"p0": P0},
        {"p0": np.array(P0)},
        {"p0": np.array(P0), "sigma": sigma, "absolute_sigma": True},
        {"p0": P0, "method": "trf"},
        {},  # p0 from f's signature
    ]
    for kwargs in calls:
        _dispatch.EAGER_PLANS.clear()
        first = jaxlm.curve_fit(decay, X, Y, **kwargs)
        assert len(_dispatch.EAGER_PLANS) == 1  # kept for the calls of this kind that follow
        before = backend_compiles()
        for y in (Y, 1.5 * Y, Y.astype(np.float32)):  # float32 data: a kind of their own
            popt, pcov = jaxlm.curve_fit(decay, X, y, **kwargs)
            _dispatch.EAGER_PLANS.clear()
            expected = jaxlm.curve_fit(decay, X, y, **kwargs)
            assert type(popt) is np.ndarray and type(pcov) is np.ndarray
            np.testing.assert_array_equal(popt, expected[0])
            np.testing.assert_array_equal(pcov, expected[1])
            assert backend_compiles() == before or y.dtype == np.float32
        np.testing.assert_array_equal(jaxlm.curve_fit(decay, X, Y, **kwargs)[0], first[0])
    expected = scipy.optimize.curve_fit(numpy_decay, X, Y, p0=P0, sigma=sigma, absolute_sigma=True)
    popt, pcov = jaxlm.curve_fit(decay, X, Y, p0=P0, sigma=sigma, absolute_sigma=True)
    np.testing.assert_allclose(popt, expected[0], rtol=1e-6)
    np.testing.assert_allclose(pcov, expected[1], rtol=1e-4)


def test_a_repeated_call_checks_its_data_and_reports_its_outcome():
    _dispatch.EAGER_PLANS.clear()
    jaxlm.curve_fit(decay, X, Y, p0=P0)  # the first call of each kind, with good data
    jaxlm.curve_fit(decay, X, Y, p0=P0, check_finite=False)
    jaxlm.curve_fit(decay, X, Y, p0=P0, sigma=np.full(X.size, 0.02))
    assert len(_dispatch.EAGER_PLANS) == 3
    for _ in range(2):
        with pytest.raises(ValueError, match="ydata contains NaN or inf"):
            jaxlm.curve_fit(decay, X, np.where(X > 2, np.nan, Y), p0=P0)
        with pytest.raises(ValueError, match="xdata contains NaN or inf"):
            jaxlm.curve_fit(decay, np.where(X > 2, np.inf, X), Y, p0=P0)
        with pytest.raises(RuntimeError, match=r"Optimal parameters not found: .*NONFINITE_START"):
            jaxlm.curve_fit(decay, X, np.where(X > 2, np.nan, Y), p0=P0, check_finite=False)
        with pytest.raises(ValueError, match="sigma must be > 0"):
            jaxlm.curve_fit(decay, X, Y, p0=P0, sigma=np.where(X > 2, 0.0, 0.02))
        with pytest.warns(jaxlm.OptimizeWarning, match="Covariance of the parameters") as caught:
            _, pcov = jaxlm.curve_fit(undetermined, X, Y, p0=[1.0, 1.0])
        assert np.all(np.isinf(pcov))
        assert [warning.filename for warning in caught] == [__file__]  # the caller's line
    # A p0 that the repeated call cannot take goes the first call's way, with its error.
    with pytest.raises(ValueError, match="could not convert"):
        jaxlm.curve_fit(decay, X, Y, p0=["1", "x", "0"])


def test_a_result_is_fetched_by_polling_then_blocking(monkeypatch):
    matrix = jnp.full((200, 200), 1 / 200)
    power = jax.jit(lambda a: jnp.linalg.matrix_power(a, 64))
    expected = np.asarray(power(matrix))
    for seconds in (0.0, 1e-3, 10.0):  # blocks at once, polls a while, polls until it is there
        monkeypatch.setattr(_dispatch, "POLL_SECONDS", seconds)
        np.testing.assert_array_equal(_dispatch.fetch(power(matrix)), expected)
    assert _dispatch.fetch(np.arange(3)).tolist() == [0, 1, 2]


# Clear errors.


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jaxlm.curve_fit(decay, X, Y + 0j, p0=P0), "ydata is complex"),
        (lambda: jaxlm.curve_fit(decay, X, Y, p0=[1.0 + 1j, 1.0, 0.0]), "p0 is complex"),
        (lambda: jaxlm.curve_fit(decay, X, Y, p0=P0, sigma=np.ones(X.size) * 1j), "sigma is complex"),
        (lambda: jaxlm.curve_fit(lambda x, a: a * (1 + 1j) * x, X, Y), "model f.* is complex"),
    ],
    ids=["data", "p0", "sigma", "model"],
)
def test_complex_data_and_models_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _assigns_in_place(x, a, b):
    y = a * x + b
    y[0] = 0.0
    return y


@pytest.mark.parametrize(
    ("model", "advice"),
    [
        (numpy_decay, r"Write it with jax.numpy: `import jax.numpy as jnp` and jnp.exp"),
        (lambda x, a, b, c: a * x if b > 0 else -a * x, "use jnp.where"),
        (_assigns_in_place, r"write a = a.at\[i\].set\(v\)"),
    ],
    ids=["np.exp", "a Python branch", "in-place assignment"],
)
def test_a_numpy_model_gets_an_error_that_says_what_to_write(model, advice):
    with pytest.raises(TypeError, match="the model f cannot be traced by JAX: .*" + advice):
        jaxlm.curve_fit(model, X, Y, p0=P0[: 2 if model is _assigns_in_place else 3])


def test_scipy_keywords_are_checked_as_scipy_checks_them():
    with pytest.raises(TypeError, match="unexpected keyword argument 'kaboom'"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, kaboom=1)
    with pytest.raises(ValueError, match="'args' is not a supported keyword argument"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, args=(1,))
    with pytest.raises(ValueError, match="x_scale"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, x_scale=-1.0)
    with pytest.raises(ValueError, match="tr_solver"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, tr_solver="best")
    with pytest.raises(TypeError, match="lsmr"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, tr_solver="lsmr", tr_options={"tol": 1e-3})
    with pytest.raises(ValueError, match="Method 'lm' only works for unconstrained problems"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, bounds=(0, 3), method="lm")
    with pytest.raises(ValueError, match="pass one of maxfev and max_nfev"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, maxfev=10, max_nfev=10)
    with pytest.raises(ValueError, match="not both"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, method="trf", solver=jaxlm.LevenbergMarquardt())


@pytest.mark.parametrize("method", [None, "lm", "trf", "dogbox"])
def test_methods_agree_with_scipy_and_report_its_codes(method):
    popt, pcov, info, message, code = jaxlm.curve_fit(
        decay, X, Y, p0=P0, method=method, ftol=1e-12, xtol=1e-12, full_output=True
    )
    expected, expected_pcov, expected_info, _, _ = scipy.optimize.curve_fit(
        numpy_decay, X, Y, p0=P0, method=method, ftol=1e-14, xtol=1e-14, gtol=1e-14, full_output=True
    )
    np.testing.assert_allclose(popt, expected, rtol=1e-7)
    np.testing.assert_allclose(pcov, expected_pcov, rtol=1e-6)
    assert set(expected_info) <= set(info) and isinstance(message, str) and code in (1, 2, 3, 4)
    if method in (None, "lm"):  # MINPACK's factorisation J·P = Q·R of the whitened Jacobian
        n = len(P0)
        r = np.asarray(info["fjac"]).T[:n]
        jacobian = jax.jacfwd(lambda p: decay(X, *p))(popt)[:, np.asarray(info["ipvt"])]
        np.testing.assert_allclose(np.abs(np.triu(r)), np.abs(np.linalg.qr(jacobian, mode="r")), rtol=1e-8)
        assert info["fjac"].shape == expected_info["fjac"].shape and info["qtf"].shape == (n,)
        assert sorted(np.asarray(info["ipvt"]).tolist()) == list(range(n))


def test_maxfev_counts_evaluations_and_bounds_can_be_scipy_bounds():
    with pytest.raises(RuntimeError, match="MAX_STEPS"):
        jaxlm.curve_fit(decay, X, Y, p0=P0, max_nfev=5, method="trf")
    *_, info, _, _ = jax.jit(
        lambda y: jaxlm.curve_fit(decay, X, y, p0=P0, max_nfev=5, method="trf", full_output=True)
    )(jnp.asarray(Y))
    assert int(info["nfev"]) == 5
    bounds = scipy.optimize.Bounds([0.0, 0.0, -1.0], [2.0, 5.0, 1.0])
    popt, _ = jaxlm.curve_fit(decay, X, Y, p0=[1.0, 1.0, 0.0], bounds=bounds)
    tight = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}
    expected, _ = scipy.optimize.curve_fit(numpy_decay, X, Y, p0=[1.0, 1.0, 0.0], bounds=bounds, **tight)
    assert popt[0] == 2.0  # at its upper bound
    np.testing.assert_allclose(popt, expected, rtol=1e-6)


def test_omitted_points_with_a_covariance_matrix_are_those_points_removed():
    rng = np.random.default_rng(5)
    a = 0.02 * rng.standard_normal((X.size, X.size))
    covariance = np.diag(np.full(X.size, 0.02**2)) + a @ a.T
    y = Y.copy()
    y[[4, 11]] = np.nan
    x = X.copy()
    x[20] = np.nan
    keep = np.isfinite(x) & np.isfinite(y)
    popt, pcov = jaxlm.curve_fit(decay, x, y, p0=P0, sigma=covariance, nan_policy="omit")
    expected, expected_pcov = jaxlm.curve_fit(decay, x[keep], y[keep], p0=P0, sigma=covariance[keep][:, keep])
    np.testing.assert_allclose(popt, expected, rtol=1e-10)
    np.testing.assert_allclose(pcov, expected_pcov, rtol=1e-8)
    masked, _ = jaxlm.curve_fit(decay, X, Y, p0=P0, sigma=covariance, mask=keep)
    kept, _ = jaxlm.curve_fit(decay, X[keep], Y[keep], p0=P0, sigma=covariance[keep][:, keep])
    np.testing.assert_allclose(masked, kept, rtol=1e-10)


def test_a_callable_loss_traced_or_on_the_host_is_scipys():
    def soft_l1(z):  # scipy's definition, written with jax.numpy
        t = 1 + z
        return jnp.stack([2 * (t**0.5 - 1), t**-0.5, -0.5 * t**-1.5])

    def soft_l1_numpy(z):  # written for NumPy, with in-place assignment: called on the host
        rho = np.empty((3, z.size))
        t = 1 + z
        rho[0], rho[1], rho[2] = 2 * (t**0.5 - 1), t**-0.5, -0.5 * t**-1.5
        return rho

    y = Y.copy()
    y[7] += 1.0  # an outlier
    builtin, builtin_pcov = jaxlm.curve_fit(decay, X, y, p0=P0, loss="soft_l1", f_scale=0.05)
    for loss in (soft_l1, soft_l1_numpy):
        popt, pcov = jaxlm.curve_fit(decay, X, y, p0=P0, loss=loss, f_scale=0.05)
        np.testing.assert_allclose(popt, builtin, rtol=1e-7)
        np.testing.assert_allclose(pcov, builtin_pcov, rtol=1e-6)


def test_verbose_one_prints_scipys_report(capsys):
    jaxlm.curve_fit(decay, X, Y, p0=P0, verbose=1)
    printed = capsys.readouterr().out
    assert "Converged" in printed and "Function evaluations" in printed


# jaxlm.scipy.least_squares


def test_least_squares_of_a_host_function_with_a_sparse_jacobian():
    import scipy.sparse

    def broyden(x):  # NumPy with in-place updates: evaluated on the host
        f = (3 - x) * x + 1
        f[1:] -= x[:-1]
        f[:-1] -= 2 * x[1:]
        return f

    def jacobian(x):
        return scipy.sparse.diags([-np.ones(x.size - 1), 3 - 2 * x, -2 * np.ones(x.size - 1)], [-1, 0, 1])

    x0 = -np.ones(12)
    expected = scipy.optimize.least_squares(broyden, x0, jacobian)
    for jac in ("2-point", "3-point", jacobian):
        result = jaxlm.scipy.least_squares(broyden, x0, jac)
        assert result.success and result.cost < 1e-20
        np.testing.assert_allclose(result.x, expected.x, rtol=1e-10)
    assert scipy.sparse.issparse(result.jac)


def test_least_squares_reuses_its_compiled_solve_for_new_data(backend_compiles):
    def residual(p, t, y, scale=1.0):
        return scale * (p[0] * jnp.exp(-p[1] * t) + p[2] - y)

    jaxlm.scipy.least_squares(residual, P0, args=(X, Y), kwargs={"scale": 2.0})
    before = backend_compiles()
    result = jaxlm.scipy.least_squares(residual, P0, args=(X, 2 * Y), kwargs={"scale": 2.0})
    assert backend_compiles() == before and result.success
    expected = scipy.optimize.least_squares(
        lambda p: 2.0 * (numpy_decay(X, *p) - 2 * Y), P0, ftol=1e-14, xtol=1e-14, gtol=1e-14
    )
    np.testing.assert_allclose(result.x, expected.x, rtol=1e-6)


def test_least_squares_is_for_python_and_says_what_to_use_under_jit():
    with pytest.raises(TypeError, match=r"inside jax\.jit, jax\.vmap or jax\.grad use jaxlm\.least_squares"):
        jax.jit(lambda x0: jaxlm.scipy.least_squares(lambda p: p - 1.0, x0).x)(jnp.ones(2))


def test_least_squares_works_in_float64_without_jax_enable_x64():
    script = (
        "import numpy as np, jax, jaxlm.scipy\n"
        "assert not jax.config.jax_enable_x64\n"
        "rosenbrock = lambda p: jax.numpy.stack([10 * (p[1] - p[0]**2), 1 - p[0]])\n"
        "r = jaxlm.scipy.least_squares(rosenbrock, [-1.2, 1.0])\n"
        "assert r.x.dtype == np.float64 and np.max(np.abs(r.x - 1)) < 1e-12, r.x\n"
        "assert jax.numpy.ones(1).dtype == np.float32\n"
    )
    environment = {"JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu", "PATH": ""}
    subprocess.run([sys.executable, "-c", script], check=True, env=environment, timeout=300)
