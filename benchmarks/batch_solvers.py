"""Throughput of each least-squares solver in the batch driver: 2-D Gaussians, 5×5 pixels.

The spots of `gaussian_batch.py` (`jaxlm.demo.make_spots`), fitted by `least_squares_batch`
with LevenbergMarquardt, GaussNewton and HybridLMQN at their default tolerances. Reported:
fits/s (best of `--repeats` calls after compiling), the fraction of fits that succeeded, and
the largest difference of the amplitude from LevenbergMarquardt's, relative.

    python benchmarks/batch_solvers.py
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.demo import gaussian_2d_residual, make_spots  # noqa: E402

SOLVERS = {
    "LevenbergMarquardt": jaxlm.LevenbergMarquardt(),
    "GaussNewton": jaxlm.GaussNewton(),
    "HybridLMQN": jaxlm.HybridLMQN(),
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fits", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, N = {args.fits}")
    print("| dtype | solver | fits/s | succeeded | max rel. Δ amplitude vs LM |")
    print("|---|---|---|---|---|")
    for dtype in (jnp.float32, jnp.float64):
        data, _, start = make_spots(jax.random.key(0), args.fits, 5, dtype)
        amplitude_lm = None
        for name, solver in SOLVERS.items():

            def run(solver=solver, start=start, data=data):
                return jaxlm.least_squares_batch(
                    gaussian_2d_residual, start, (data,), solver=solver, progress=False
                )

            solution = run()
            times = []
            for _ in range(args.repeats):
                begin = time.perf_counter()
                solution = run()
                times.append(time.perf_counter() - begin)
            amplitude = np.asarray(solution.params[:, 0], np.float64)
            if amplitude_lm is None:
                amplitude_lm = amplitude
            difference = np.max(np.abs(amplitude - amplitude_lm) / np.abs(amplitude_lm))
            print(
                f"| {jnp.dtype(dtype).name} | {name} | {args.fits / min(times):,.0f} "
                f"| {np.mean(solution.success):.4f} | {difference:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
