"""`verbose=True`: one line per iteration, printed from inside `jit` by a debug callback.

A single fit prints its own line,

    iter    12  cost 1.234500e-01  |g| 3.1e-04  mu 1.0e-03  step LM      accepted

and under `vmap` the batch prints one aggregated line per iteration instead of one per fit,

    iter    12  running 3  converged 997  failed 0  worst cost 1.234500e-01

This works through a custom batching rule: `log_iteration` prints a fit's line, and its `vmap`
rule receives the whole batch at once and prints the summary.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ._solution import Status
from ._trace import StepKind

SHORT_NAMES = {
    StepKind.START: "start",
    StepKind.LEVENBERG_MARQUARDT: "LM",
    StepKind.GAUSS_NEWTON: "GN",
    StepKind.NEWTON: "Newton",
    StepKind.QUASI_NEWTON: "QN",
    StepKind.LBFGS: "L-BFGS",
}
_SUCCESS = np.array([int(s) for s in Status if s.success])


def format_iteration(num_steps, cost, grad_norm, damping, radius, step_kind, accepted, status) -> str:
    line = f"iter {int(num_steps):5d}  cost {float(cost):.6e}  |g| {float(grad_norm):.1e}"
    if np.isfinite(damping):
        line += f"  mu {float(damping):.1e}"
    if np.isfinite(radius):
        line += f"  Delta {float(radius):.1e}"
    line += f"  step {SHORT_NAMES.get(StepKind(int(step_kind)), '?'):<6}"
    if int(step_kind) != StepKind.START:
        line += "  accepted" if bool(accepted) else "  rejected"
    if int(status) != Status.RUNNING:
        line += f"  {Status(int(status)).name}"
    return line.rstrip()


def format_batch(num_steps, cost, status) -> str:
    status = np.asarray(status).ravel()
    running = int(np.sum(status == Status.RUNNING))
    converged = int(np.sum(np.isin(status, _SUCCESS)))
    failed = status.size - running - converged
    cost = np.asarray(cost).ravel()
    finite = cost[np.isfinite(cost)]
    worst = f"{float(finite.max()):.6e}" if finite.size else "nan"
    return (
        f"iter {int(np.max(num_steps)):5d}  running {running}  converged {converged}  failed {failed}  "
        f"worst cost {worst}"
    )


def _print_iteration(*values):
    print(format_iteration(*values), flush=True)


def _print_batch(num_steps, cost, status):
    print(format_batch(num_steps, cost, status), flush=True)


@jax.custom_batching.custom_vmap
def _log(num_steps, cost, grad_norm, damping, radius, step_kind, accepted, status):
    jax.debug.callback(
        _print_iteration, num_steps, cost, grad_norm, damping, radius, step_kind, accepted, status
    )
    return num_steps


@_log.def_vmap
def _log_batch(
    axis_size, in_batched, num_steps, cost, grad_norm, damping, radius, step_kind, accepted, status
):
    del grad_norm, damping, radius, step_kind, accepted
    num_steps, cost, status = (
        value if batched else jnp.broadcast_to(value, (axis_size, *jnp.shape(value)))
        for value, batched in zip(
            (num_steps, cost, status), (in_batched[0], in_batched[1], in_batched[7]), strict=True
        )
    )
    jax.debug.callback(_print_batch, num_steps, cost, status)
    return num_steps, True


def log_iteration(num_steps, state, info):
    """Print the iteration's line (or the batch's); returns `num_steps`, which carries the
    print into the loop so that it is not removed as unused."""
    dtype = state.cost.dtype
    values = (
        state.cost,
        jnp.max(jnp.abs(state.grad)),
        jnp.asarray(info.damping, dtype),
        jnp.asarray(info.radius, dtype),
        jnp.asarray(info.step_kind, jnp.int32),
        jnp.asarray(info.accepted),
        state.status,
    )
    # Printing is not differentiated (UnrolledAdjoint differentiates through the loop body).
    return _log(num_steps, *jax.lax.stop_gradient(values))
