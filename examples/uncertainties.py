"""Uncertainties: `curve_fit` with sigma, bounds and a robust loss, confidence bands, and
scipy's numbers side by side.

A dose–response curve (a four-parameter logistic in log10 dose) measured at 24 doses, with a
known standard deviation at each point (larger at high response). We fit it

1. with `sigma` and `absolute_sigma=True`: popt, pcov and standard errors, then `jaxlm.fit` for
   the 95% confidence band of the curve and the prediction band of a new measurement;
2. with `bounds`: the bottom of the curve cannot be negative, and this dataset pushes it there;
3. with a robust loss (`soft_l1`) after corrupting three points: the ordinary fit is dragged
   several standard errors away from the fit to the clean data, the robust one stays within
   about one.

Each fit is repeated with `scipy.optimize.curve_fit` at tight tolerances and compared.

    python examples/uncertainties.py [output folder]      # JAXLM_NOTEBOOK_SIZE=small for a quick run
"""

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import jaxlm

jax.config.update("jax_enable_x64", True)

NAMES = ("bottom", "top", "log_ec50", "hill")
TRUE = (0.0, 1.0, -6.0, 1.2)
P0 = [0.1, 0.9, -5.5, 1.0]
SCIPY_TOLERANCES = {"ftol": 1e-14, "xtol": 1e-14, "gtol": 1e-14}


def logistic(log_dose, bottom, top, log_ec50, hill):
    return bottom + (top - bottom) / (1 + 10.0 ** ((log_ec50 - log_dose) * hill))


def logistic_np(log_dose, bottom, top, log_ec50, hill):
    """The same model with numpy, for scipy."""
    return bottom + (top - bottom) / (1 + 10.0 ** ((log_ec50 - log_dose) * hill))


def make_data(seed=3):
    rng = np.random.default_rng(seed)
    log_dose = np.linspace(-9.0, -3.0, 24)
    clean = logistic_np(log_dose, *TRUE)
    sigma = 0.02 + 0.05 * clean
    return log_dose, clean + sigma * rng.normal(size=log_dose.size), sigma


def in_sigmas(popt, scipy_popt, pcov):
    """The largest |jaxlm − scipy| of a parameter, in units of its standard error."""
    return float(np.max(np.abs(np.asarray(popt) - scipy_popt) / np.sqrt(np.diag(np.asarray(pcov)))))


def covariance_difference(pcov, scipy_pcov):
    """The largest |Δ pcov_ij| relative to σ_i·σ_j."""
    scale = np.sqrt(np.outer(np.diag(scipy_pcov), np.diag(scipy_pcov)))
    return float(np.max(np.abs(np.asarray(pcov) - scipy_pcov) / scale))


def table(title, jaxlm_popt, jaxlm_pcov, scipy_popt, scipy_pcov):
    print(title)
    print(f"{'':>10} | {'jaxlm':>12} {'± σ':>10} | {'scipy':>12} {'± σ':>10}")
    jaxlm_err, scipy_err = np.sqrt(np.diag(jaxlm_pcov)), np.sqrt(np.diag(scipy_pcov))
    for i, name in enumerate(NAMES):
        ours = f"{jaxlm_popt[i]:12.6f} {jaxlm_err[i]:10.6f}"
        theirs = f"{scipy_popt[i]:12.6f} {scipy_err[i]:10.6f}"
        print(f"{name:>10} | {ours} | {theirs}")


def main(size=None, out_dir=None):
    size = size or os.environ.get("JAXLM_NOTEBOOK_SIZE", "full")  # every fit here is small
    print(f"running on {jax.devices()}")
    log_dose, y, sigma = make_data()
    differences = {}

    # 1. Known measurement errors: sigma with absolute_sigma=True.
    popt, pcov = jaxlm.curve_fit(logistic, log_dose, y, p0=P0, sigma=sigma, absolute_sigma=True)
    scipy_popt, scipy_pcov = scipy.optimize.curve_fit(
        logistic_np, log_dose, y, p0=P0, sigma=sigma, absolute_sigma=True, **SCIPY_TOLERANCES
    )
    table("1. sigma, absolute_sigma=True", np.asarray(popt), np.asarray(pcov), scipy_popt, scipy_pcov)
    differences["sigma"] = (in_sigmas(popt, scipy_popt, pcov), covariance_difference(pcov, scipy_pcov))

    result = jaxlm.fit(logistic, log_dose, y, p0=P0, sigma=sigma, absolute_sigma=True)
    print(result.report())
    grid = jnp.linspace(-9.0, -3.0, 7)
    band = result.confidence_band(grid)
    prediction = result.prediction_band(grid, sigma=0.02 + 0.05 * result.eval(grid))
    for x, b, p in zip(np.asarray(grid), np.asarray(band), np.asarray(prediction), strict=True):
        print(f"log dose {x:5.1f}: curve ± {b:.4f} (95% confidence), new point ± {p:.4f} (95% prediction)")

    # 2. Bounds: the bottom cannot be negative. Scipy uses its trust-region reflective method.
    lower, upper = [0.0, 0.0, -12.0, 0.1], [1.0, 2.0, 0.0, 5.0]
    free, free_pcov = jaxlm.curve_fit(logistic, log_dose, y, p0=P0)
    bounded, bounded_pcov = jaxlm.curve_fit(logistic, log_dose, y, p0=P0, bounds=(lower, upper))
    scipy_bounded, _ = scipy.optimize.curve_fit(
        logistic_np, log_dose, y, p0=P0, bounds=(lower, upper), **SCIPY_TOLERANCES
    )
    print(f"2. bounds: unbounded bottom {float(free[0]):+.5f}; bounded {np.round(np.asarray(bounded), 6)}")
    print(f"   scipy (trf):                      {np.round(scipy_bounded, 6)}")
    print(f"   standard error of the bottom: {float(jnp.sqrt(bounded_pcov[0, 0]))} (NaN: pinned at a bound)")
    differences["bounds"] = (in_sigmas(bounded, scipy_bounded, free_pcov), None)

    # 3. Outliers: three corrupted points, an ordinary fit and a robust one.
    corrupted = y.copy()
    corrupted[[5, 12, 19]] += [0.5, -0.6, 0.4]
    ordinary = jaxlm.curve_fit(logistic, log_dose, corrupted, p0=P0)[0]
    robust, robust_pcov = jaxlm.curve_fit(logistic, log_dose, corrupted, p0=P0, loss="soft_l1", f_scale=0.02)
    robust_options = {"method": "trf", "loss": "soft_l1", "f_scale": 0.02, **SCIPY_TOLERANCES}
    scipy_robust, scipy_robust_pcov = scipy.optimize.curve_fit(
        logistic_np, log_dose, corrupted, p0=P0, **robust_options
    )
    free_stderr = np.sqrt(np.diag(np.asarray(free_pcov)))
    ordinary_shift = (np.asarray(ordinary) - np.asarray(free)) / free_stderr
    robust_shift = (np.asarray(robust) - np.asarray(free)) / free_stderr
    print(f"3. outliers: fit to the clean data {np.round(np.asarray(free), 4)}")
    print(f"   ordinary fit     {np.round(np.asarray(ordinary), 4)}, moved {np.round(ordinary_shift, 1)} σ")
    print(f"   soft_l1 fit      {np.round(np.asarray(robust), 4)}, moved {np.round(robust_shift, 1)} σ")
    table("   soft_l1, side by side", robust, np.asarray(robust_pcov), scipy_robust, scipy_robust_pcov)
    differences["soft_l1"] = (
        in_sigmas(robust, scipy_robust, robust_pcov),
        covariance_difference(robust_pcov, scipy_robust_pcov),
    )
    for name, (p, c) in differences.items():
        pcov_text = "" if c is None else f"; pcov {c:.1e} of σᵢσⱼ"
        print(f"largest difference from scipy, {name}: popt {p:.1e} standard errors{pcov_text}")

    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        jaxlm.plot.fit(result, log_dose, y, sigma=sigma).savefig(out / "uncertainties_fit.png")
    return {
        "popt": np.asarray(popt),
        "stderr": np.sqrt(np.diag(np.asarray(pcov))),
        "differences": differences,
        "free_bottom": float(free[0]),
        "scipy_bounded": scipy_bounded,
        "bounded": np.asarray(bounded),
        "bounded_stderr": np.sqrt(np.diag(np.asarray(bounded_pcov))),
        "ordinary_shift": ordinary_shift,
        "robust_shift": robust_shift,
        "true": np.asarray(TRUE),
    }


if __name__ == "__main__":
    main(out_dir=sys.argv[1] if len(sys.argv) > 1 else None)
