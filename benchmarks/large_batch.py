"""Ten million fits in one call: `least_squares_batch` in chunks, with progress, on 1 or more devices.

The 2-D Gaussian spots of `gaussian_batch.py` (5×5 pixels, float32, tolerance 1e-5), N = 10⁷
by default, solved by one `jaxlm.least_squares_batch` call that cuts them into chunks, shows a
tqdm progress bar and shards every chunk over the devices. On this CPU-only machine the devices
are the host's cores made into XLA devices with `--xla_force_host_platform_device_count`, one
process per device count. Reported: total time, fits/s, chunk size, converged fraction and the
peak resident memory of the process.

    python benchmarks/large_batch.py                         # 1e7 fits on 1 and on 2 devices
    python benchmarks/large_batch.py --fits 1000000 --devices 1
"""

import argparse
import os
import resource
import subprocess
import sys
import time


def child(num_fits, dtype_name):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlm
    from jaxlm import _batch
    from jaxlm.demo import gaussian_2d_residual, make_spots

    jax.config.update("jax_enable_x64", dtype_name == "float64")
    dtype = jnp.dtype(dtype_name)
    tol = 1e-10 if dtype == jnp.float64 else 1e-5
    pieces = [
        make_spots(jax.random.key(i), min(10**6, num_fits - i * 10**6), 5, dtype)
        for i in range((num_fits + 10**6 - 1) // 10**6)
    ]
    data = np.concatenate([np.asarray(p[0]) for p in pieces])
    start = np.concatenate([np.asarray(p[2]) for p in pieces])
    del pieces
    solver = jaxlm.LevenbergMarquardt(ftol=tol, xtol=tol)
    chunk_sizes = []
    original = _batch._default_chunk_size

    def recording(*args):
        chunk_sizes.append(original(*args))
        return chunk_sizes[-1]

    _batch._default_chunk_size = recording
    # Compile on a small batch first, so that the timed call measures the solve.
    jaxlm.least_squares_batch(
        gaussian_2d_residual, start[:100_000], (data[:100_000],), solver=solver, progress=False
    )
    begin = time.perf_counter()
    solution = jaxlm.least_squares_batch(gaussian_2d_residual, start, (data,), solver=solver, progress=True)
    seconds = time.perf_counter() - begin
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"| {num_fits:,} | {dtype_name} | {len(jax.devices())} | {chunk_sizes[-1]} | {seconds:.1f} | "
        f"{num_fits / seconds:,.0f} | {solution.success.mean():.5f} | {peak_gib:.1f} |",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fits", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.fits, args.dtype)
        return
    print("| fits | dtype | devices | chunk per device | seconds | fits/s | converged | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for devices in args.devices:
        environment = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        command = [sys.executable, __file__, "--child", "--fits", str(args.fits), "--dtype", args.dtype]
        subprocess.run(command, env=environment, check=True)


if __name__ == "__main__":
    main()
