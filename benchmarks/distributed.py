"""`least_squares_batch(distributed=True)`: one process against several processes of a
`jax.distributed` job on this machine, each process pinned to its own cores.

The 2-D Gaussian spots of `gaussian_batch.py` (5×5 pixels, float32, tolerance 1e-5; the data
made with the same key in every process), N = 10⁶ by default. Each configuration runs in fresh
processes: one process on all cores (plain `least_squares_batch`, and pinned to one core), then
P processes on 127.0.0.1, process i pinned to core i mod (number of cores), with
`distributed=True`. Every process solves the batch twice and times the second solve (the first
compiles); reported: the time of the slowest process, fits/s, and the time of the gather
(`process_allgather` of the blocks' solutions, timed on its own after a local solve).

    python benchmarks/distributed.py                      # 1e6 fits: 1 process, then 2
    python benchmarks/distributed.py --fits 100000 --processes 2 4
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time


def worker(num_fits, num_processes, process_id, port, cores):
    import jax

    if cores:
        os.sched_setaffinity(0, cores)
    if num_processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
    import numpy as np

    import jaxlm
    from jaxlm import _distributed
    from jaxlm.demo import gaussian_2d_residual, make_spots

    data, _, start = (np.asarray(a) for a in make_spots(jax.random.key(0), num_fits))
    solver = jaxlm.LevenbergMarquardt(ftol=1e-5, xtol=1e-5)
    options = dict(solver=solver, progress=False, distributed=num_processes > 1)
    jaxlm.least_squares_batch(gaussian_2d_residual, start, (data,), **options)  # compiles
    began = time.perf_counter()
    solution = jaxlm.least_squares_batch(gaussian_2d_residual, start, (data,), **options)
    seconds = time.perf_counter() - began
    gather_seconds = 0.0
    if num_processes > 1:
        local = jaxlm.least_squares_batch(gaussian_2d_residual, start, (data,), gather=False, **options)
        began = time.perf_counter()
        _distributed.gather_blocks(local, num_fits)
        gather_seconds = time.perf_counter() - began
    print(
        json.dumps(
            {
                "seconds": seconds,
                "gather_seconds": gather_seconds,
                "converged": float(np.mean(solution.success)),
                "num_fits": int(solution.status.shape[0]),
            }
        ),
        flush=True,
    )
    if num_processes > 1:
        jax.distributed.shutdown()


def run(num_fits, num_processes, pin):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    num_cores = os.cpu_count()
    processes = []
    for i in range(num_processes):
        cores = str(i % num_cores) if pin else ""
        numbers = (str(n) for n in (num_fits, num_processes, i, port))
        command = [sys.executable, __file__, "--worker", *numbers, cores]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(err[-3000:])
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fits", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    print(f"{args.fits} 2-D Gaussian spots (5×5, float32), {os.cpu_count()} cores")
    print("| processes | cores each | s (slowest process) | fits/s | gather s | converged |")
    print("|---|---|---|---|---|---|")
    configurations = [(1, False), (1, True)] + [(p, True) for p in args.processes]
    for num_processes, pin in configurations:
        results = run(args.fits, num_processes, pin)
        assert all(r["num_fits"] == args.fits for r in results)
        seconds = max(r["seconds"] for r in results)
        gather = max(r["gather_seconds"] for r in results)
        cores = 1 if pin else os.cpu_count()
        print(
            f"| {num_processes} | {cores} | {seconds:.2f} | {args.fits / seconds:,.0f} | "
            f"{gather:.3f} | {results[0]['converged']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        num_fits, num_processes, process_id, port = (int(a) for a in sys.argv[2:6])
        cores = {int(c) for c in sys.argv[6].split(",") if c} if len(sys.argv) > 6 else set()
        worker(num_fits, num_processes, process_id, port, cores)
    else:
        main()
