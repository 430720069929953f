"""Default tolerances, chosen from the dtype of the parameters."""

import jax
import jax.numpy as jnp

from .._linear import diagonal_of
from .._solution import Status

# float64 stops close to machine precision; float32 stops where rounding noise in the cost
# (a few eps relative) would otherwise keep rejecting steps until max_steps. gtol defaults to 0
# as in MINPACK: ‖g‖∞ has the units of the problem, so any fixed threshold would stop problems
# with tiny residuals (NIST's Lanczos) long before they converge.
_DEFAULTS = {
    jnp.dtype(jnp.float64): {"ftol": 1e-12, "xtol": 1e-12, "gtol": 0.0},
    jnp.dtype(jnp.float32): {"ftol": 1e-5, "xtol": 1e-5, "gtol": 0.0},
    jnp.dtype(jnp.float16): {"ftol": 1e-2, "xtol": 1e-2, "gtol": 0.0},
    jnp.dtype(jnp.bfloat16): {"ftol": 1e-2, "xtol": 1e-2, "gtol": 0.0},
}


def check_tolerances(solver) -> None:
    """An error that says what to do for a negative tolerance (0 turns a test off)."""
    for name in ("ftol", "xtol", "gtol"):
        value = getattr(solver, name)
        if value is not None and is_concrete(value) and not value >= 0:
            raise ValueError(
                f"{name} must be >= 0 (0 turns that test off) or None (a default from the dtype), "
                f"got {value}."
            )


def is_concrete(value) -> bool:
    """Whether `value` is a number that Python can compare, not a tracer."""
    return not isinstance(value, jax.core.Tracer)


def resolve_tolerance(name: str, value: float | None, dtype) -> float:
    """`value` if it was given, else the default for `dtype`."""
    return _DEFAULTS[jnp.dtype(dtype)][name] if value is None else value


def convergence_status(
    *, grad, step_norm, x_norm, cost, actual_reduction, predicted_reduction, ftol, xtol, gtol, dtype
):
    """The shared stopping tests of the Newton-type solvers, as a `Status` value.

    ‖g‖∞ ≤ gtol; ‖h‖ ≤ xtol·(‖x‖ + xtol); or both the actual and the predicted reduction of the
    cost at most ftol·|F| (MINPACK's test; |F| so that it also serves a scalar cost that can be
    negative). `None` tolerances take the defaults of `dtype`.
    """
    ftol = resolve_tolerance("ftol", ftol, dtype)
    xtol = resolve_tolerance("xtol", xtol, dtype)
    gtol = resolve_tolerance("gtol", gtol, dtype)
    scale = jnp.abs(cost)
    ftol_met = (jnp.abs(actual_reduction) <= ftol * scale) & (jnp.abs(predicted_reduction) <= ftol * scale)
    status = jnp.where(ftol_met, Status.CONVERGED_FTOL, Status.RUNNING)
    status = jnp.where(step_norm <= xtol * (x_norm + xtol), Status.CONVERGED_XTOL, status)
    return jnp.where(jnp.max(jnp.abs(grad)) <= gtol, Status.CONVERGED_GTOL, status).astype(jnp.int32)


def levenberg_marquardt_status(
    solver,
    *,
    grad,
    step_norm,
    x_norm,
    cost,
    actual_reduction,
    predicted_reduction,
    gain_ratio,
    diverged,
    xtol_applies=True,
    ftol_applies=True,
):
    """The stopping tests of the Levenberg–Marquardt solvers (MINPACK's), as a `Status` value.

    ‖g‖∞ ≤ gtol (g already masked to the free parameters); ‖Dh‖ ≤ xtol·(‖Dx‖ + xtol); or both
    the actual and the predicted reduction of the cost at most ftol·F with a gain ratio ρ ≤ 2
    (the quadratic model agreed with the step). `xtol_applies` and `ftol_applies` say whether the
    step can be judged by those tests at all (a step refused for its curvature, or one from an
    unfinished inner solve, says nothing about convergence). `NO_DESCENT` when `diverged` (the
    damping or the radius is no longer finite). The tolerances are `solver.ftol`, `.xtol`,
    `.gtol`, or the defaults of the dtype.
    """
    dtype = grad.dtype
    ftol = resolve_tolerance("ftol", solver.ftol, dtype)
    xtol = resolve_tolerance("xtol", solver.xtol, dtype)
    gtol = resolve_tolerance("gtol", solver.gtol, dtype)
    gtol_met = jnp.max(jnp.abs(grad)) <= gtol
    xtol_met = (step_norm <= xtol * (x_norm + xtol)) & xtol_applies
    ftol_met = (
        (jnp.abs(actual_reduction) <= ftol * cost)
        & (predicted_reduction <= ftol * cost)
        & (gain_ratio <= 2)
        & ftol_applies
    )
    # The first test met names the status (nested `where`s: `jnp.select` compiles to more kernels).
    status = jnp.where(diverged, Status.NO_DESCENT, Status.RUNNING)
    status = jnp.where(ftol_met, Status.CONVERGED_FTOL, status)
    status = jnp.where(xtol_met, Status.CONVERGED_XTOL, status)
    return jnp.where(gtol_met, Status.CONVERGED_GTOL, status).astype(jnp.int32)


def initial_status(grad, gtol, dtype):
    """`CONVERGED_GTOL` if the starting point already meets gtol, else `RUNNING`."""
    gtol = resolve_tolerance("gtol", gtol, dtype)
    return jnp.where(jnp.max(jnp.abs(grad)) <= gtol, Status.CONVERGED_GTOL, Status.RUNNING).astype(jnp.int32)


def hessian_scale(hessian):
    """√|diag H| (1 where it is 0): the scaling of the xtol test of the Newton-type solvers."""
    diagonal = jnp.sqrt(jnp.abs(diagonal_of(hessian)))
    return jnp.where(diagonal > 0, diagonal, 1)
