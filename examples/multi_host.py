"""A batch of 2-D Gaussian spots fitted over the processes of a `jax.distributed` job.

Every process runs this same script: it makes (or memory-maps) the same batch, calls
`jaxlm.least_squares_batch(..., distributed=True)`, solves its own block of the fits on its own
devices, and gets the `Solution` of the whole batch back. Process 0 prints the summary and
writes the parameters and statuses to `--output`.

Two processes on this machine (a free port for the coordinator, which process 0 runs):

    python examples/multi_host.py --coordinator 127.0.0.1:12345 --num-processes 2 --process-id 0 &
    python examples/multi_host.py --coordinator 127.0.0.1:12345 --num-processes 2 --process-id 1

Under SLURM, one process per task; JAX reads the coordinator, the number of processes and each
one's id from SLURM's environment:

    srun --nodes=2 --ntasks-per-node=1 python examples/multi_host.py --num-fits 10000000

(Open MPI's `mpirun` and TPU pods are detected the same way.) A batch larger than a host's memory
can be written once to `.npy` files and opened with `np.load(..., mmap_mode="r")` in every
process: each reads only its own block.
"""

import argparse
import time

import jax
import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--coordinator", help="host:port of process 0 (omit under SLURM, Open MPI, TPU pods)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--num-fits", type=int, default=100_000)
    parser.add_argument("--output", default="multi_host_fits.npz")
    args = parser.parse_args(argv)

    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jaxlm  # after initialize: the devices of the job are set up by then
    from jaxlm.demo import gaussian_2d_residual, make_spots

    # The same batch in every process (the same key); only its block is solved here.
    data, truth, start = (np.asarray(a) for a in make_spots(jax.random.key(0), args.num_fits))
    block = jaxlm.process_block(args.num_fits)
    began = time.perf_counter()
    solution = jaxlm.least_squares_batch(gaussian_2d_residual, start, (data,), distributed=True)
    seconds = time.perf_counter() - began

    print(
        f"process {jax.process_index()} of {jax.process_count()}: solved fits {block.start}–{block.stop - 1} "
        f"on {jax.local_devices()}, and has all {solution.status.shape[0]} back ({seconds:.2f} s)",
        flush=True,
    )
    if jax.process_index() == 0:
        converged = np.mean(solution.success)
        error = np.median(np.abs(solution.params[:, 1] - truth[:, 1]))
        print(
            f"{args.num_fits} fits over {jax.process_count()} processes in {seconds:.2f} s, compilation "
            f"included; converged: {converged:.2%}; median |x0 error|: {error:.3f} px"
        )
        np.savez(args.output, params=solution.params, status=solution.status)
        print(f"wrote {args.output}")
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
