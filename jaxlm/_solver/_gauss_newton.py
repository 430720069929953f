"""Gauss–Newton, optionally with a backtracking line search.

References:
    K. Madsen, H. B. Nielsen, O. Tingleff, "Methods for Non-Linear Least Squares Problems",
    2nd ed., IMM, DTU, 2004, Section 3.1.
    J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., 2006, Section 10.3 and
    Algorithm 3.1 (backtracking with the Armijo condition).

Minimise F(x) = ½‖r(x)‖² by linearising the residuals, r(x + h) ≈ r + Jh:

    solve      JᵀJ h = −g                      (the least-norm solution when J is rank-deficient)
    without line search:  x ← x + h
    with backtracking:    x ← x + αh  if F(x + αh) ≤ F(x) + c·α·gᵀh (c = 1e-4), then α ← 1
                          otherwise   α ← α/2 and try again (the Jacobian is kept)

Near a solution with small residuals the convergence is quadratic; with large residuals it is
linear at best and may diverge, which the backtracking safeguard prevents.
"""

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from .._linear import solve_damped_normal_equations
from .._loop import AbstractSolver, Problem
from .._solution import Status
from .._trace import StepInfo, StepKind
from ._tolerances import check_tolerances, convergence_status, initial_status

ARMIJO = 1e-4


class GaussNewtonState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"]
    cost: Float[Array, ""]
    jac: Float[Array, "m n"]
    grad: Float[Array, " n"]
    step_length: Float[Array, ""]  # α
    accepted: Bool[Array, ""]
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]


class GaussNewton(AbstractSolver):
    """The undamped Gauss–Newton step, with a backtracking line search as an option.

    Args:
        ftol, xtol, gtol: the stopping tests, as for `LevenbergMarquardt` (None: from the dtype).
        backtracking: halve the step until the cost decreases enough (Armijo). Without it
            every step is taken, which is fast near a small-residual solution and can diverge
            elsewhere (a step to a non-finite point stops the solve with `NO_DESCENT`).
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    backtracking: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        check_tolerances(self)

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> GaussNewtonState:
        problem.require_residuals("GaussNewton")
        cost, residual = problem.evaluate(x0)
        jac, _, grad = problem.normal_equations(x0, residual)
        return GaussNewtonState(
            x=x0,
            residual=residual,
            cost=cost,
            jac=jac,
            grad=grad,
            step_length=jnp.asarray(1, x0.dtype),
            accepted=jnp.array(True),
            status=initial_status(grad, self.gtol, x0.dtype),
            num_fev=jnp.array(1, jnp.int32),
            num_jev=jnp.array(1, jnp.int32),
        )

    def step_info(self, state: GaussNewtonState) -> StepInfo:
        return StepInfo(jnp.array(StepKind.GAUSS_NEWTON), state.accepted, jnp.nan, jnp.nan)

    def step(self, problem: Problem, state: GaussNewtonState) -> GaussNewtonState:
        dtype = state.x.dtype
        alpha = state.step_length
        jtj, _ = problem.jtj_and_gradient(state.jac, state.residual)
        direction = solve_damped_normal_equations(
            jtj, state.grad, jnp.zeros((), dtype), jnp.ones_like(state.x), state.jac, state.residual
        )
        step = alpha * direction
        x_trial = state.x + step
        cost_trial, residual_trial = problem.evaluate(x_trial)
        slope = jnp.dot(state.grad, direction)
        finite = jnp.isfinite(cost_trial)
        if self.backtracking:
            accepted = finite & (cost_trial <= state.cost + ARMIJO * alpha * slope)
        else:
            accepted = finite

        def move_to_trial_point():
            jac, _, grad = problem.normal_equations(x_trial, residual_trial)
            return x_trial, residual_trial, cost_trial, jac, grad

        # One `cond` chooses the next point, with a new Jacobian only when the step was accepted
        # (a `where` per field would compile to a kernel each, as in LevenbergMarquardt).
        stay = (state.x, state.residual, state.cost, state.jac, state.grad)
        x, residual, cost, jac, grad = lax.cond(accepted, move_to_trial_point, lambda: stay)
        predicted_reduction = -alpha * slope - 0.5 * jnp.sum((state.jac @ step) ** 2)

        status = convergence_status(
            grad=grad,
            step_norm=jnp.linalg.norm(direction),  # the full Gauss–Newton step, even when it was cut
            x_norm=jnp.linalg.norm(x),
            cost=state.cost,
            actual_reduction=state.cost - cost_trial,
            predicted_reduction=predicted_reduction,
            ftol=self.ftol,
            xtol=self.xtol,
            gtol=self.gtol,
            dtype=dtype,
        )
        # gtol and xtol hold wherever they are met; ftol only after a full accepted step, since a
        # shortened one reduces the cost little because it was cut.
        full_step_taken = accepted & (alpha == 1)
        status = jnp.where((status == Status.CONVERGED_FTOL) & ~full_step_taken, Status.RUNNING, status)
        next_alpha = jnp.where(accepted, 1, alpha / 2).astype(dtype)
        stuck = ~accepted & ((not self.backtracking) | (next_alpha < jnp.finfo(dtype).eps))
        status = jnp.where((status == Status.RUNNING) & stuck, Status.NO_DESCENT, status)
        return GaussNewtonState(
            x=x,
            residual=residual,
            cost=cost,
            jac=jac,
            grad=grad,
            step_length=next_alpha,
            accepted=accepted,
            status=status.astype(jnp.int32),
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + accepted.astype(jnp.int32),
        )
