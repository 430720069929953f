"""A batch of fits over the processes of a `jax.distributed` job (several hosts, or several
processes on one).

Every process is handed the same whole batch and solves one block of it: process i of P takes
fits `np.array_split(range(N), P)[i]`, contiguous and of sizes that differ by at most one, on
its own local devices. The fits are independent, so the processes do not talk to each other
while they solve; at the end each block's `Solution` is padded to the largest block's size and
gathered with `jax.experimental.multihost_utils.process_allgather` (JAX's collectives between
the processes: gloo on CPUs, NCCL on GPUs), and the padding is cut away again, so that every
process returns the `Solution` of the whole batch, in the order of the fits.

A process that dies: JAX's coordination service notices that it stopped sending heartbeats
(after `heartbeat_timeout_seconds` of `jax.distributed.initialize`, 100 s by default) and
terminates every other process of the job, with the message "Terminating process because the
JAX distributed service detected fatal errors. This most likely indicates that another task
died". The job fails as a whole instead of waiting for the gather forever.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from ._solution import Solution


def process_block(num_fits: int) -> slice:
    """The fits that this process solves in a `distributed=True` batch of `num_fits` fits:
    block `jax.process_index()` of `np.array_split(np.arange(num_fits), jax.process_count())`."""
    check_initialized()
    count, index = jax.process_count(), jax.process_index()
    if num_fits < count:
        raise ValueError(
            f"distributed=True splits the batch over the {count} processes, which needs at least "
            f"{count} fits; got {num_fits}. Solve a batch this small on one process (distributed=False)."
        )
    sizes = block_sizes(num_fits, count)
    begin = sum(sizes[:index])
    return slice(begin, begin + sizes[index])


def block_sizes(num_fits: int, count: int) -> list[int]:
    """The sizes of `np.array_split(range(num_fits), count)`: the first num_fits mod count
    blocks have one fit more."""
    base, extra = divmod(num_fits, count)
    return [base + (index < extra) for index in range(count)]


def check_initialized() -> None:
    if not jax.distributed.is_initialized():
        raise RuntimeError(
            "distributed=True needs a jax.distributed job: call jax.distributed.initialize() in every "
            "process first (with coordinator_address, num_processes and process_id, or without "
            "arguments under SLURM, Open MPI or on a TPU pod, which JAX detects), then call "
            "least_squares_batch with the same arguments in every process. For one process, leave "
            "distributed=False."
        )


def check_local(devices) -> None:
    """An error for devices that belong to another process: each process solves on its own."""
    others = [device for device in devices if device.process_index != jax.process_index()]
    if others:
        raise ValueError(
            f"with distributed=True each process solves its block on its own devices, but devices "
            f"has {others} of other processes: pass devices=None (all of jax.local_devices()) or "
            "some of jax.local_devices()."
        )


def gather_blocks(block: Solution, num_fits: int) -> Solution:
    """The `Solution` of the whole batch, in every process, from each process's block."""
    sizes = block_sizes(num_fits, jax.process_count())
    largest, size = sizes[0], block.status.shape[0]

    def padded(leaf):
        if size == largest:
            return np.asarray(leaf)
        return np.concatenate([leaf, np.repeat(leaf[-1:], largest - size, axis=0)])

    gathered = multihost_utils.process_allgather(jax.tree.map(padded, block), tiled=False)
    return jax.tree.map(lambda leaf: np.concatenate([leaf[i, :n] for i, n in enumerate(sizes)]), gathered)
