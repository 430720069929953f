"""The main demo: `python -m jaxlm` fits a batch of noisy 2-D Gaussian spots with
`least_squares_batch`, then a sample of the same spots with scipy's
`least_squares(method="lm")`, and prints both rates and how well they agree."""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import LevenbergMarquardt, Status, least_squares_batch
from .demo import PARAMETER_NAMES, gaussian_2d_residual, make_spots


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxlm", description=__doc__)
    parser.add_argument("--num-fits", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=5, help="pixels per side")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--scipy-fits", type=int, default=1000, help="spots fitted by scipy (0: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)

    data, truth, start = make_spots(jax.random.key(0), args.num_fits, args.size, dtype)
    data, truth, start = np.asarray(data), np.asarray(truth), np.asarray(start)
    solver = LevenbergMarquardt()
    print(
        f"jaxlm demo: {args.num_fits:,} noisy 2-D Gaussian spots, {args.size}x{args.size} pixels, "
        f"{args.dtype}, on {jax.devices()[0].platform}"
    )

    def fit(progress):
        return least_squares_batch(gaussian_2d_residual, start, (data,), solver=solver, progress=progress)

    begin = time.perf_counter()
    fit(progress=False)  # compiles
    compiled = time.perf_counter() - begin
    begin = time.perf_counter()
    solution = fit(progress=not args.no_progress)
    seconds = time.perf_counter() - begin
    rate = args.num_fits / seconds
    print(
        f"jaxlm.least_squares_batch: {seconds:.3f} s, {rate:,.0f} fits/s "
        f"(the first call, compiling, took {compiled:.1f} s)"
    )

    status, counts = np.unique(solution.status, return_counts=True)
    by_status = ", ".join(f"{Status(int(s)).name} {int(c):,}" for s, c in zip(status, counts, strict=True))
    success = np.asarray(solution.success)
    print(
        f"converged: {success.mean():.2%} ({by_status}); steps: mean {float(solution.num_steps.mean()):.1f}, "
        f"max {int(solution.num_steps.max())}"
    )
    error = (solution.params - truth)[success]
    print(f"{'parameter':<10} {'true (mean)':>12} {'error mean':>11} {'error std':>10}")
    for i, name in enumerate(PARAMETER_NAMES):
        mean, std = error[:, i].mean(), error[:, i].std()
        print(f"{name:<10} {truth[:, i].mean():>12.4g} {mean:>11.3g} {std:>10.3g}")

    if args.scipy_fits > 0:
        compare_with_scipy(solution, data, start, min(args.scipy_fits, args.num_fits), rate)


def compare_with_scipy(solution, data, start, num_fits, rate) -> None:
    """Fit the first `num_fits` spots with scipy's MINPACK Levenberg–Marquardt (float64, finite
    differences, as a scipy script would) and compare its rate and answers with jaxlm's."""
    try:
        import scipy.optimize
    except ImportError:
        print("scipy is not installed: no comparison (pip install scipy)")
        return
    size = data.shape[-1]
    coordinates = np.arange(size, dtype=float)
    x, y = coordinates[None, :], coordinates[:, None]

    def residual(p, spot):
        amplitude, x0, y0, width, offset = p
        return (amplitude * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * width**2)) + offset - spot).ravel()

    params = np.empty((num_fits, start.shape[1]))
    begin = time.perf_counter()
    for i in range(num_fits):
        spot, x0 = data[i].astype(float), start[i].astype(float)
        params[i] = scipy.optimize.least_squares(residual, x0, args=(spot,), method="lm").x
    seconds = time.perf_counter() - begin
    scipy_rate = num_fits / seconds
    print(
        f"scipy.optimize.least_squares(method='lm'), one spot at a time: {num_fits:,} spots in "
        f"{seconds:.2f} s, {scipy_rate:,.0f} fits/s; jaxlm is {rate / scipy_rate:,.0f}x faster"
    )
    # The two answers against the statistical spread of the parameter across the spots.
    spread = solution.params[:num_fits].std(axis=0)
    difference = np.abs(solution.params[:num_fits] - params).max(axis=0) / spread
    print(
        "agreement with scipy, largest difference over the spots in units of each parameter's spread: "
        + ", ".join(f"{name} {d:.1e}" for name, d in zip(PARAMETER_NAMES, difference, strict=True))
    )


if __name__ == "__main__":
    main()
