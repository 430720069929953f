"""What the default solver's fallback costs on the Gaussian batch: `LevenbergMarquardt()` against
`LevenbergMarquardt(fallback_after=None)` (Nielsen's rule alone, the default without its
fallback stage), on 10⁵ 5×5 spots (`jaxlm.demo.make_spots`, tolerance 1e-5 in float32, 1e-10 in
float64, as in `gaussian_batch.py`), as `jit(vmap(least_squares))` and as `least_squares_batch`.

The configurations run in turns, `--repeats` times each, in one process; reported: fits/s (the
best and the median run), the first call (compilation and a run), and the steps of the slowest
fit. Each dtype runs in its own process (float64 needs jax_enable_x64).

    python benchmarks/default_speed.py --dtype float32
    python benchmarks/default_speed.py --dtype float64
"""

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", "float64" in sys.argv)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.demo import gaussian_2d_residual, make_spots  # noqa: E402


def solvers(tol):
    configurations = {
        "LevenbergMarquardt()": jaxlm.LevenbergMarquardt(ftol=tol, xtol=tol),
        "LevenbergMarquardt(fallback_after=None)": jaxlm.LevenbergMarquardt(
            ftol=tol, xtol=tol, fallback_after=None
        ),
    }
    runs = {}
    for label, solver in configurations.items():
        runs[f"{label}, vmap"] = jax.jit(
            jax.vmap(
                lambda p, d, solver=solver: jaxlm.least_squares(gaussian_2d_residual, p, (d,), solver=solver)
            )
        )
        runs[f"{label}, least_squares_batch"] = lambda p, d, solver=solver: jaxlm.least_squares_batch(
            gaussian_2d_residual, p, (d,), solver=solver, progress=False
        )
    return runs


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--fits", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    tol = 1e-10 if dtype == jnp.float64 else 1e-5
    data, _, start = make_spots(jax.random.PRNGKey(0), args.fits, 5, dtype)
    runs = solvers(tol)
    first_call, seconds, slowest = {}, {label: [] for label in runs}, {}
    for label, solve in runs.items():
        began = time.perf_counter()
        solution = jax.block_until_ready(solve(start, data))
        first_call[label] = time.perf_counter() - began
        slowest[label] = int(np.max(np.asarray(solution.num_steps)))
    for _ in range(args.repeats):
        for label, solve in runs.items():
            began = time.perf_counter()
            jax.block_until_ready(solve(start, data))
            seconds[label].append(time.perf_counter() - began)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.fits:,} 5×5 fits, {args.dtype}")
    print("| solver, driver | fits/s (best) | fits/s (median) | first call (s) | steps of the slowest fit |")
    print("|---|---|---|---|---|")
    for label, times in seconds.items():
        print(
            f"| {label} | {args.fits / min(times):,.0f} | {args.fits / np.median(times):,.0f} | "
            f"{first_call[label]:.1f} | {slowest[label]} |"
        )


if __name__ == "__main__":
    main()
