"""Quick start: fit one curve with `least_squares` and `curve_fit`, see the fit and its report,
then fit a whole batch of curves in one call.

    python examples/quick_start.py            # JAXLM_NOTEBOOK_SIZE=small for a quick run

The notebook `notebooks/quick_start.ipynb` tells the same story, cell by cell.
"""

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxlm

TRUE = {"height": 3.0, "center": 0.4, "width": 0.8, "background": 0.5}
NOISE = 0.1


def peak(x, height, center, width, background):
    """A Gaussian peak on a flat background, written with jax.numpy (as for scipy's curve_fit)."""
    return height * jnp.exp(-0.5 * ((x - center) / width) ** 2) + background


def residual(params, x, y):
    """The residuals of `least_squares`: model minus data, for parameters in a dict."""
    return peak(x, params["height"], params["center"], params["width"], params["background"]) - y


def make_data(key, num_datasets=None):
    x = jnp.linspace(-3.0, 3.0, 50)
    shape = x.shape if num_datasets is None else (num_datasets, *x.shape)
    y = peak(x, *TRUE.values()) + NOISE * jax.random.normal(key, shape)
    return x, y


def main(size=None, out_dir=None):
    size = size or os.environ.get("JAXLM_NOTEBOOK_SIZE", "full")
    print(f"jaxlm {jaxlm.__version__} on {jax.devices()}")
    x, y = make_data(jax.random.key(0))

    # 1. least_squares: residuals in, a Solution out.
    start = {"height": 1.0, "center": 0.0, "width": 1.0, "background": 0.0}
    solution = jaxlm.least_squares(residual, start, args=(x, y))
    print(solution.message)
    print({name: round(float(value), 4) for name, value in solution.params.items()})
    print(f"{int(solution.num_steps)} steps, cost {float(solution.cost):.4f}")

    # 2. curve_fit: scipy's interface, (popt, pcov).
    popt, pcov = jaxlm.curve_fit(peak, x, y, p0=[1.0, 0.0, 1.0, 0.0], sigma=jnp.full(x.shape, NOISE))
    errors = jnp.sqrt(jnp.diag(pcov))
    for name, value, error in zip(TRUE, popt, errors, strict=True):
        print(f"{name:>10} = {float(value):.4f} ± {float(error):.4f}   (true {TRUE[name]})")

    # 3. fit: the same fit with statistics, a report and confidence bands.
    result = jaxlm.fit(peak, x, y, p0=[1.0, 0.0, 1.0, 0.0], sigma=jnp.full(x.shape, NOISE))
    print(result.report())
    figure = jaxlm.plot.fit(result, x, y, sigma=NOISE)

    # 4. A batch: one call fits every dataset (one compiled, vmapped solve).
    num_datasets = 1000 if size == "full" else 100
    _, ys = make_data(jax.random.key(1), num_datasets)
    popts, _ = jaxlm.curve_fit(peak, x, ys, p0=[1.0, 0.0, 1.0, 0.0])
    spread = np.std(np.asarray(popts), axis=0)
    print(f"{num_datasets} datasets in one call; spread of the fitted parameters: {np.round(spread, 4)}")

    if out_dir is not None:
        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
        figure.savefig(pathlib.Path(out_dir) / "quick_start_fit.png")
    return {
        "params": {name: float(value) for name, value in solution.params.items()},
        "success": bool(solution.success),
        "popt": np.asarray(popt),
        "errors": np.asarray(errors),
        "report": result.report(),
        "spread": spread,
    }


if __name__ == "__main__":
    main(out_dir=sys.argv[1] if len(sys.argv) > 1 else None)
