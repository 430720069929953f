"""Newton–Raphson on the cost, with the exact Hessian.

Reference:
    J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., 2006, Section 3.3.

Minimise F(x) (½‖r(x)‖² for least squares, or a scalar cost) with the Newton step on the
exact Hessian H = ∇²F (for least squares JᵀJ + Σ rᵢ∇²rᵢ, from `jax.hessian`-style forward-over-
reverse differentiation):

    x ← x − H⁻¹∇F(x)

Every step is taken. Near a minimum where H is positive definite the convergence is
quadratic, and for large-residual problems faster than Gauss–Newton's. Far from one the
method is unstable: H may be indefinite (the step then heads to a saddle or a maximum) or
singular, and nothing stops a step from overshooting. Use `DampedNewton` or
`LevenbergMarquardt` unless you start close to the solution.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._loop import AbstractSolver, Problem
from .._solution import Status
from .._trace import StepInfo, StepKind
from ._tolerances import check_tolerances, convergence_status, hessian_scale, initial_status


class NewtonState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"]
    cost: Float[Array, ""]
    grad: Float[Array, " n"]
    hessian: Float[Array, "n n"]
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]  # evaluations of the gradient and Hessian


def newton_init(problem: Problem, x0, gtol) -> NewtonState:
    cost, residual = problem.evaluate(x0)
    grad, hessian = problem.gradient_and_hessian(x0)
    return NewtonState(
        x=x0,
        residual=residual,
        cost=cost,
        grad=grad,
        hessian=hessian,
        status=initial_status(grad, gtol, x0.dtype),
        num_fev=jnp.array(1, jnp.int32),
        num_jev=jnp.array(1, jnp.int32),
    )


class NewtonRaphson(AbstractSolver):
    """Newton's method on the cost with the exact Hessian: fast near a solution, unstable far from one.

    Args:
        ftol, xtol, gtol: the stopping tests, as for `LevenbergMarquardt` (None: from the dtype).

    A step to a point where the cost is not finite stops the solve with `NO_DESCENT`, a singular
    Hessian with `SINGULAR_HESSIAN`.
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None

    def __check_init__(self):
        check_tolerances(self)

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> NewtonState:
        return newton_init(problem, x0, self.gtol)

    def step_info(self, state: NewtonState) -> StepInfo:
        return StepInfo(jnp.array(StepKind.NEWTON), jnp.array(True), jnp.nan, jnp.nan)

    def step(self, problem: Problem, state: NewtonState) -> NewtonState:
        step = -jnp.linalg.solve(state.hessian, state.grad)
        x_trial = state.x + step
        cost_trial, residual_trial = problem.evaluate(x_trial)
        step_is_finite = jnp.all(jnp.isfinite(step))
        ok = step_is_finite & jnp.isfinite(cost_trial)

        x = jnp.where(ok, x_trial, state.x)
        grad, hessian = problem.gradient_and_hessian(x)
        status = convergence_status(
            grad=grad,
            # Norms in the variables scaled by √|diag H|, so that a large parameter next to a small
            # one cannot hide the small one's steps (MINPACK scales its xtol test the same way).
            step_norm=jnp.linalg.norm(hessian_scale(state.hessian) * step),
            x_norm=jnp.linalg.norm(hessian_scale(state.hessian) * x),
            cost=state.cost,
            actual_reduction=state.cost - cost_trial,
            predicted_reduction=-jnp.dot(state.grad, step) - 0.5 * step @ state.hessian @ step,
            ftol=self.ftol,
            xtol=self.xtol,
            gtol=self.gtol,
            dtype=x.dtype,
        )
        return NewtonState(
            x=x,
            residual=jnp.where(ok, residual_trial, state.residual),
            cost=jnp.where(ok, cost_trial, state.cost),
            grad=grad,
            hessian=hessian,
            status=jnp.select(
                [ok, step_is_finite], [status, Status.NO_DESCENT], Status.SINGULAR_HESSIAN
            ).astype(jnp.int32),
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + 1,
        )
