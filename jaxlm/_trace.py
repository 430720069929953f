"""Recorded traces: what the solver did at each iteration, in buffers of a fixed size.

A `lax.while_loop` cannot grow a list, so a trace is a set of arrays with one row per iteration,
allocated before the loop and filled as it runs. They survive `jit` and `vmap` (under `vmap`
every fit has its own rows) and cost nothing when not asked for.
"""

import enum

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree


class StepKind(enum.IntEnum):
    """The kind of step an iteration took, as recorded in traces (`Solution.trace.step_kind`)."""

    NONE = -1  # a trace row past the end of the solve
    START = 0  # row 0 of a trace: the starting point
    LEVENBERG_MARQUARDT = 1
    GAUSS_NEWTON = 2
    NEWTON = 3
    QUASI_NEWTON = 4  # a BFGS or L-BFGS step with a model of the Hessian
    LBFGS = 5  # optax's L-BFGS with its line search (the first phase of LBFGSLM)


class StepInfo(eqx.Module):
    """What a solver reports about its last step (see `AbstractSolver.step_info`)."""

    step_kind: Int[Array, ""]  # a StepKind value
    accepted: Bool[Array, ""]
    damping: Float[Array, ""]  # μ after the step; NaN for solvers without one
    radius: Float[Array, ""]  # Δ after the step; NaN for solvers without one


class Trace(eqx.Module):
    """Per-iteration record of a solve (`least_squares(..., trace=K)`): row 0 is the start and row
    k the state after step k, for k ≤ K. Rows after the last step have step kind
    `StepKind.NONE` and NaN values; `length` is the number of rows filled.

    Attributes:
        params: the parameters after each step (rejected steps repeat the previous point), with
            the structure of `x0` and a leading axis of rows.
        cost: F = ½‖r‖² (or the scalar cost of `minimize`).
        grad_norm: ‖g‖∞.
        damping: the damping μ after the step (NaN for solvers without one).
        radius: the trust radius Δ after the step (NaN for solvers without one).
        step_kind: the `jaxlm.StepKind` of the step (START in row 0).
        accepted: whether the step was taken.
        length: the number of rows filled, min(num_steps, K) + 1.
    """

    params: PyTree[Array]
    cost: Float[Array, " rows"]
    grad_norm: Float[Array, " rows"]
    damping: Float[Array, " rows"]
    radius: Float[Array, " rows"]
    step_kind: Int[Array, " rows"]
    accepted: Bool[Array, " rows"]
    length: Int[Array, ""]


def empty_trace(num_rows: int, x: Float[Array, " n"]) -> Trace:
    """A trace of `num_rows` rows for flat parameters like `x`, with nothing recorded yet."""
    nan = jnp.full((num_rows,), jnp.nan, x.dtype)
    return Trace(
        params=jnp.full((num_rows, x.size), jnp.nan, x.dtype),
        cost=nan,
        grad_norm=nan,
        damping=nan,
        radius=nan,
        step_kind=jnp.full((num_rows,), StepKind.NONE, jnp.int32),
        accepted=jnp.zeros((num_rows,), bool),
        length=jnp.array(0, jnp.int32),
    )


def record(trace: Trace, row: Int[Array, ""], state: PyTree, info: StepInfo) -> Trace:
    """The trace with `row` set from the solver state; a row past the end is dropped."""
    dtype = state.x.dtype

    def put(buffer, value):
        return buffer.at[row].set(jnp.asarray(value, buffer.dtype), mode="drop")

    return Trace(
        params=put(trace.params, state.x),
        cost=put(trace.cost, state.cost),
        grad_norm=put(trace.grad_norm, jnp.max(jnp.abs(state.grad))),
        damping=put(trace.damping, jnp.asarray(info.damping, dtype)),
        radius=put(trace.radius, jnp.asarray(info.radius, dtype)),
        step_kind=put(trace.step_kind, info.step_kind),
        accepted=put(trace.accepted, info.accepted),
        length=jnp.minimum(row + 1, trace.cost.shape[0]).astype(jnp.int32),
    )
