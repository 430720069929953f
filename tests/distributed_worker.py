"""One process of a `jax.distributed` job for tests/test_distributed.py:

    python distributed_worker.py PORT NUM_PROCESSES PROCESS_ID SCENARIO OUTPUT

"solve": fit the batch of `batch()` with `least_squares_batch(distributed=True)`, each process
given unusable data (NaN) outside its own block, and save the gathered solution and the block
(`gather=False`). "die": the last process exits before its share; the others try to solve.
"""

import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

NUM_FITS = 37  # not a multiple of 2 or 4: blocks of unequal sizes
FAILING_FIT = 33  # NaN data: this fit fails, in the last process's block
CHUNK_SIZE = 8  # several chunks per process


def decay(params, t, y):
    return params[0] * jnp.exp(-params[1] * t) + params[2] - y


def batch():
    """(x0, t, y): NUM_FITS exponential decays of 20 points; FAILING_FIT's data are NaN."""
    rng = np.random.default_rng(7)
    t = np.linspace(0.0, 4.0, 20)
    truth = np.stack(
        [rng.uniform(1, 3, NUM_FITS), rng.uniform(0.5, 2, NUM_FITS), rng.uniform(0, 1, NUM_FITS)], 1
    )
    y = (
        truth[:, :1] * np.exp(-truth[:, 1:2] * t)
        + truth[:, 2:]
        + 0.01 * rng.standard_normal((NUM_FITS, t.size))
    )
    y[FAILING_FIT] = np.nan
    return np.ones((NUM_FITS, 3)), t, y


def main(port, num_processes, process_id, scenario, output):
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes, process_id, heartbeat_timeout_seconds=5, initialization_timeout=60
    )
    import jaxlm

    x0, t, y = batch()
    block = jaxlm.process_block(NUM_FITS)
    if scenario == "die" and process_id == num_processes - 1:
        os._exit(3)
    unusable = np.full_like(y, np.nan)  # a fit solved from these rows would fail
    unusable[block] = y[block]
    options = dict(in_axes=(None, 0), chunk_size=CHUNK_SIZE, progress=False, distributed=True)
    solution = jaxlm.least_squares_batch(decay, x0, (t, unusable), **options)
    local = jaxlm.least_squares_batch(decay, x0, (t, unusable), gather=False, **options)
    np.savez(
        output,
        params=solution.params,
        status=solution.status,
        num_steps=solution.num_steps,
        cost=solution.cost,
        block=[block.start, block.stop],
        local_params=local.params,
        local_status=local.status,
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    port, num_processes, process_id, scenario, output = sys.argv[1:]
    main(int(port), int(num_processes), int(process_id), scenario, output)
