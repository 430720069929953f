"""Batched 2-D Gaussian spot fitting (the Gpufit benchmark): throughput against batch size.

Each fit is a 2-D Gaussian (amplitude, x0, y0, width, offset) on 5×5 pixels with noise of
σ = 17.05, as in Gpufit's CPU/GPU comparison example (`jaxlm.demo.make_spots`). We fit batches
of growing size in float32 two ways, on whatever device JAX has (CPU, GPU or TPU):

- `jax.jit(jax.vmap(jaxlm.least_squares))`: one compiled solve for the whole batch;
- `jaxlm.least_squares_batch`: the driver for large batches (chunks, every device, no waiting
  for the slowest fits), with numpy arrays in and out.

and measure fits per second (best of a few calls after compiling), then look at the accuracy
of the fitted parameters against the truth.

    python examples/gaussian_spots.py [output folder]      # JAXLM_NOTEBOOK_SIZE=small for a quick run
"""

import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import jaxlm
from jaxlm.demo import NOISE_STD, PARAMETER_NAMES, gaussian_2d_residual, make_spots

SIZES = {"full": [100, 1_000, 10_000, 100_000], "small": [1_000]}  # small: one size, one compile


def fit_with_vmap(data, start):
    return jax.vmap(lambda x0, image: jaxlm.least_squares(gaussian_2d_residual, x0, (image,)))(start, data)


fit_with_vmap = jax.jit(fit_with_vmap)


def fits_per_second(solve, num_fits, repeats):
    jax.block_until_ready(solve())  # compile (and warm up) first
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(solve())
        best = min(best, time.perf_counter() - start)
    return num_fits / best


def main(size=None, out_dir=None):
    size = size or os.environ.get("JAXLM_NOTEBOOK_SIZE", "full")
    device = jax.devices()[0]
    print(f"running on {jax.devices()}")
    repeats = 3 if size == "full" else 1
    sizes = SIZES[size]
    throughput = {"jit(vmap(least_squares))": [], "least_squares_batch": []}
    for num_fits in sizes:
        data, truth, start = make_spots(jax.random.key(0), num_fits, dtype=jnp.float32)
        data_np, start_np = np.asarray(data), np.asarray(start)

        def with_vmap(data=data, start=start):
            return fit_with_vmap(data, start).params

        def with_batch(data=data_np, start=start_np):
            return jaxlm.least_squares_batch(gaussian_2d_residual, start, (data,), progress=False).params

        vmapped = fits_per_second(with_vmap, num_fits, repeats)
        batched = fits_per_second(with_batch, num_fits, repeats)
        throughput["jit(vmap(least_squares))"].append(vmapped)
        throughput["least_squares_batch"].append(batched)
        print(f"N = {num_fits:>7,}: vmap {vmapped:10,.0f} fits/s, batch driver {batched:10,.0f} fits/s")

    # Accuracy on the largest batch: fitted minus true parameters.
    solution = fit_with_vmap(data, start)
    success = np.asarray(solution.success)
    error = np.asarray(solution.params - truth)[success]
    statuses, counts = np.unique(np.asarray(solution.status), return_counts=True)
    by_status = ", ".join(f"{jaxlm.Status(int(s)).name} {c}" for s, c in zip(statuses, counts, strict=True))
    print(f"{success.sum()} of {num_fits} fits converged ({by_status})")
    for i, name in enumerate(PARAMETER_NAMES):
        print(f"{name:>10}: fitted − true, mean {error[:, i].mean():+.4f}, sd {error[:, i].std():.4f}")

    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        figure = Figure(figsize=(6, 4))
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        for label, values in throughput.items():
            ax.loglog(sizes, values, "o-", label=label)
        ax.set_xlabel("batch size (fits)")
        ax.set_ylabel("fits per second")
        ax.set_title(f"2-D Gaussian fits, float32, on {device.platform.upper()}")
        ax.legend()
        figure.savefig(out / "spots_throughput.png")
        figure = Figure(figsize=(15, 3))
        FigureCanvasAgg(figure)
        for i, (ax, name) in enumerate(zip(figure.subplots(1, 5), PARAMETER_NAMES, strict=True)):
            ax.hist(error[:, i], bins=50, color="tab:blue")
            ax.set_title(f"{name}: fitted − true")
        figure.tight_layout()
        figure.savefig(out / "spots_accuracy.png")
    return {
        "sizes": sizes,
        "throughput": throughput,
        "converged": float(success.mean()),
        "error_mean": error.mean(axis=0),
        "error_sd": error.std(axis=0),
        "noise": NOISE_STD,
    }


if __name__ == "__main__":
    main(out_dir=sys.argv[1] if len(sys.argv) > 1 else None)
