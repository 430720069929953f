"""The main demo: `python -m jaxlm` fits a batch of noisy 2-D Gaussian spots and reports on it."""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import LevenbergMarquardt, Status, least_squares
from .demo import PARAMETER_NAMES, gaussian_2d_residual, make_spots


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxlm", description=__doc__)
    parser.add_argument("--num-fits", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=5, help="pixels per side")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)

    data, truth, start = make_spots(jax.random.key(0), args.num_fits, args.size, dtype)
    solver = LevenbergMarquardt()
    fit = jax.jit(jax.vmap(lambda p, d: least_squares(gaussian_2d_residual, p, (d,), solver=solver)))

    print(
        f"jaxlm demo: {args.num_fits:,} noisy 2-D Gaussian spots, {args.size}x{args.size} pixels, "
        f"{args.dtype}, on {jax.devices()[0].platform}"
    )
    begin = time.perf_counter()
    jax.block_until_ready(fit(start, data))
    first = time.perf_counter() - begin
    begin = time.perf_counter()
    solution = jax.block_until_ready(fit(start, data))
    seconds = time.perf_counter() - begin
    rate = args.num_fits / seconds
    print(f"compiled and ran in {first:.2f} s; a second run took {seconds:.3f} s: {rate:,.0f} fits/s")

    status, counts = np.unique(np.asarray(solution.status), return_counts=True)
    by_status = ", ".join(f"{Status(int(s)).name} {int(c):,}" for s, c in zip(status, counts, strict=True))
    success = np.asarray(solution.success)
    print(
        f"converged: {success.mean():.2%} ({by_status}); steps: mean {float(solution.num_steps.mean()):.1f}, "
        f"max {int(solution.num_steps.max())}"
    )

    error = np.asarray(solution.params - truth)[success]
    print(f"{'parameter':<10} {'true (mean)':>12} {'error mean':>11} {'error std':>10}")
    for i, name in enumerate(PARAMETER_NAMES):
        mean, std = error[:, i].mean(), error[:, i].std()
        print(f"{name:<10} {float(truth[:, i].mean()):>12.4g} {mean:>11.3g} {std:>10.3g}")


if __name__ == "__main__":
    main()
