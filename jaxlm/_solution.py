"""The result of a solve: `Solution`, and the `Status` enumeration with its messages."""

import enum
import html

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._trace import Trace


class Status(enum.IntEnum):
    """Why a solve stopped. `Solution.status` holds these values as an int32 array."""

    RUNNING = -1
    CONVERGED_GTOL = 0
    CONVERGED_XTOL = 1
    CONVERGED_FTOL = 2
    MAX_STEPS = 3
    NONFINITE_START = 4
    NONFINITE_JACOBIAN = 5
    NO_DESCENT = 6
    DERIVATIVE_REGULARISED = 7
    SINGULAR_HESSIAN = 8
    COUPLED_DATA_POINTS = 9
    STOPPED_BY_CALLBACK = 10
    TOO_FEW_POINTS = 11

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def success(self) -> bool:
        return self in (
            Status.CONVERGED_GTOL,
            Status.CONVERGED_XTOL,
            Status.CONVERGED_FTOL,
            Status.DERIVATIVE_REGULARISED,
        )


_MESSAGES = {
    Status.RUNNING: "The solve has not finished.",
    Status.CONVERGED_GTOL: "Converged: the gradient norm |g|_inf fell below gtol.",
    Status.CONVERGED_XTOL: "Converged: the step |h| fell below xtol * (|x| + xtol).",
    Status.CONVERGED_FTOL: (
        "Converged: the actual and predicted relative reductions of the cost fell below ftol."
    ),
    Status.MAX_STEPS: (
        "Stopped at max_steps before converging: raise max_steps, loosen ftol/xtol/gtol, "
        "or start closer to the solution."
    ),
    Status.NONFINITE_START: (
        "The residuals or the Jacobian at the starting point are not finite (NaN or inf): "
        "check the data passed in args for NaN/inf and choose an x0 where the model is finite "
        "(with estimator='poisson': where the model is > 0 wherever a count is > 0, and the counts >= 0)."
    ),
    Status.NONFINITE_JACOBIAN: (
        "The Jacobian became non-finite (NaN or inf) at an accepted point although the "
        "residuals were finite: the model is not differentiable there; reparametrise it, "
        "add bounds, or supply jac."
    ),
    Status.NO_DESCENT: (
        "No step could reduce the cost: the damping grew without bound, or (for the undamped "
        "GaussNewton and NewtonRaphson) a step led to non-finite values. The model may be "
        "non-smooth or overflow near this point; check the model and its derivatives, or use a "
        "damped solver (LevenbergMarquardt, DampedNewton, GaussNewton(backtracking=True))."
    ),
    Status.DERIVATIVE_REGULARISED: (
        "Converged, but the Hessian of the cost at the solution is singular or indefinite, so "
        "the implicit derivative used its pseudo-inverse (the minimum-norm tangent). Set only "
        "when the solution is differentiated. Check that every parameter is identifiable "
        "(no redundant parameters), or use adjoint=jaxlm.UnrolledAdjoint()."
    ),
    Status.SINGULAR_HESSIAN: (
        "The Hessian is singular, so the Newton step is not defined: NewtonRaphson cannot go on "
        "from this point. Use DampedNewton or LevenbergMarquardt, which damp the step, or check "
        "that every parameter is identifiable."
    ),
    Status.COUPLED_DATA_POINTS: (
        "With residual_chunk_size, the residuals of a data point changed with the other points "
        "in its chunk: the model couples the data points (a mean or norm over the data, a "
        "cumulative sum, a convolution), which a fit in chunks cannot reproduce. Compute such "
        "quantities from all the data beforehand and pass them in (in args, or closed over as "
        "constants), or drop residual_chunk_size."
    ),
    Status.STOPPED_BY_CALLBACK: (
        "Stopped by the callback (it raised StopIteration or returned True) before converging: "
        "params is the last accepted point."
    ),
    Status.TOO_FEW_POINTS: (
        "Too few data points remained to determine the parameters (none, or, for scipy's method "
        "'lm' and curve_fit's default without bounds, fewer than the parameters varied) once the "
        "points left out were taken away (mask=False, weight 0, sigma=inf, or NaN with "
        "nan_policy='omit'): params is where the solve stopped, which the data do not determine. "
        "Check that dataset's data, or hold parameters with fixed=."
    ),
}

SUCCESS_CODES = tuple(int(s) for s in Status if s.success)


def succeeded(status: Int[Array, "..."]) -> Bool[Array, "..."]:
    """`Status.success` of status values in an array (also traced)."""
    return jnp.isin(status, jnp.array(SUCCESS_CODES))


class Solution(eqx.Module):
    """The result of `jaxlm.least_squares`: a pytree of arrays only.

    Under `jax.vmap` every field carries the batch axis, so each fit has its own status.

    Attributes:
        params: the solution, with the same pytree structure as `x0`.
        cost: ½‖r‖² at `params`.
        residual: the residuals at `params`, in the shape that `fun` returns.
        grad_norm: ‖Jᵀr‖∞ at `params`.
        num_steps: iterations taken (accepted and rejected steps).
        num_fev: evaluations of the residuals (Jacobian evaluations not included).
        num_jev: evaluations of the Jacobian.
        status: a `jaxlm.Status` value, as an int32 array.
        success: whether the solve converged.
        trace: a `jaxlm.Trace` of the iterations when the solve was asked to record one
            (`trace=K`), else None.
    """

    params: PyTree[Array]
    cost: Float[Array, ""]
    residual: Array
    grad_norm: Float[Array, ""]
    num_steps: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]
    status: Int[Array, ""]
    success: Bool[Array, ""]
    trace: Trace | None = None

    @property
    def message(self):
        """The status as text: one string, or a nested list of strings for a batch."""
        status = np.asarray(self.status)
        if status.ndim == 0:
            return Status(int(status)).message
        return np.vectorize(lambda s: Status(int(s)).message, otypes=[object])(status).tolist()

    def __repr__(self) -> str:
        status = np.asarray(self.status)
        if status.ndim != 0:
            values, counts = np.unique(status, return_counts=True)
            counts = {Status(int(s)).name: int(c) for s, c in zip(values, counts, strict=True)}
            return f"Solution(batch of {status.size} fits, status counts {counts})"
        return (
            f"Solution(success={bool(self.success)}, status={Status(int(status)).name}, "
            f"cost={float(self.cost):.6g}, grad_norm={float(self.grad_norm):.3g}, "
            f"num_steps={int(self.num_steps)}, num_fev={int(self.num_fev)}, "
            f"num_jev={int(self.num_jev)},\n  params={self.params})"
        )

    def _repr_html_(self) -> str:
        """The solution as an HTML table, for notebooks."""
        status = np.asarray(self.status)
        if status.ndim != 0:
            return f"<pre>{html.escape(repr(self))}</pre>"
        rows = [
            ("success", bool(self.success)),
            ("status", f"{Status(int(status)).name}: {Status(int(status)).message}"),
            ("cost", f"{float(self.cost):.6g}"),
            ("|g|_inf", f"{float(self.grad_norm):.3g}"),
            (
                "steps / residual evaluations / Jacobians",
                f"{int(self.num_steps)} / {int(self.num_fev)} / {int(self.num_jev)}",
            ),
            ("params", self.params),
        ]
        cells = "".join(f"<tr><td>{name}</td><td>{html.escape(str(value))}</td></tr>" for name, value in rows)
        return f"<table>{cells}</table>"


def make_solution(
    params, cost, residual, state, num_steps, throw: bool, caller: str, trace=None, unravel=None
) -> Solution:
    """The `Solution` of a finished solve; with `throw`, an error (also under jit) if it failed.

    A trace recorded on flat parameters gets them back in the structure of x0 through `unravel`.
    """
    if trace is not None:
        trace = eqx.tree_at(lambda t: t.params, trace, jax.vmap(unravel)(trace.params))
    success = succeeded(state.status)
    solution = Solution(
        params=params,
        cost=cost,
        residual=residual,
        grad_norm=jnp.max(jnp.abs(state.grad)),
        num_steps=num_steps,
        num_fev=state.num_fev,
        num_jev=state.num_jev,
        status=state.status,
        success=success,
        trace=trace,
    )
    if throw:
        messages = [f"jaxlm.{caller} failed: {Status(i).message}" for i in range(len(Status) - 1)]
        solution = eqx.branched_error_if(solution, ~success, state.status, messages)
    return solution
