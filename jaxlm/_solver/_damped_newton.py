"""Damped Newton: Levenberg's method on the exact Hessian of the cost.

References:
    K. Levenberg, "A method for the solution of certain non-linear problems in least squares",
    Quart. Appl. Math. 2, 1944.
    P. E. Frandsen, K. Jonasson, H. B. Nielsen, O. Tingleff, "Unconstrained Optimization",
    3rd ed., IMM, DTU, 2004, Section 5.2 (damped Newton methods, Nielsen's damping update);
    ALGLIB's "function + gradient + Hessian" least-squares mode.

Minimise F(x) with the exact Hessian H = ∇²F (for least squares JᵀJ + Σ rᵢ∇²rᵢ), which is what
large-residual problems need, where the Gauss–Newton model JᵀJ is poor:

    solve      (H + μI) h = −∇F        (by Cholesky; if H + μI is not positive definite,
                                         the step is rejected and μ grows)
    gain ratio ρ = (F(x) − F(x + h)) / (L(0) − L(h)),  L(0) − L(h) = −hᵀ∇F − ½hᵀHh
    if ρ > 0:  x ← x + h;  μ ← μ·max(1/3, 1 − (2ρ − 1)³), ν ← 2
    else:      μ ← μν, ν ← 2ν

with μ₀ = τ·max|diag H|. Because μ grows until H + μI is positive definite, the method works
where H is indefinite. With `reuse_hessian`, a step whose gain ratio is above 3/4 (the
quadratic model was good) keeps its Hessian for the next step and only the gradient is
re-evaluated, for at most MAX_REUSE steps in a row; a rejected step refreshes a reused Hessian,
and convergence is only declared from a step made with a fresh one.
"""

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from .._linear import diagonal_of
from .._loop import AbstractSolver, Problem
from .._solution import Status
from .._trace import StepInfo, StepKind
from ._tolerances import check_tolerances, convergence_status, hessian_scale, initial_status

GOOD_MODEL = 0.75
MAX_REUSE = 4


class DampedNewtonState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"]
    cost: Float[Array, ""]
    grad: Float[Array, " n"]
    hessian: Float[Array, "n n"]
    hessian_age: Int[Array, ""]  # accepted steps since the Hessian was evaluated (0: at x)
    damping: Float[Array, ""]  # μ
    damping_growth: Float[Array, ""]  # ν
    accepted: Bool[Array, ""]
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]  # Hessian evaluations
    num_gev: Int[Array, ""]  # gradient evaluations


class DampedNewton(AbstractSolver):
    """Levenberg's damped Newton method on the exact Hessian, for large-residual problems.

    Args:
        ftol, xtol, gtol: the stopping tests, as for `LevenbergMarquardt` (None: from the dtype).
        initial_damping: τ in μ₀ = τ·max|diag H|.
        reuse_hessian: keep the Hessian after a step whose gain ratio exceeds 3/4, re-evaluating
            only the gradient; saves Hessian evaluations (`Solution.num_jev`) on problems where
            the Hessian changes slowly.
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    initial_damping: float = 1e-3
    reuse_hessian: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        check_tolerances(self)

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> DampedNewtonState:
        cost, residual = problem.evaluate(x0)
        grad, hessian = problem.gradient_and_hessian(x0)
        largest = jnp.maximum(jnp.max(jnp.abs(diagonal_of(hessian))), jnp.finfo(x0.dtype).tiny)
        return DampedNewtonState(
            x=x0,
            residual=residual,
            cost=cost,
            grad=grad,
            hessian=hessian,
            hessian_age=jnp.array(0, jnp.int32),
            damping=(self.initial_damping * largest).astype(x0.dtype),
            damping_growth=jnp.asarray(2, x0.dtype),
            accepted=jnp.array(True),
            status=initial_status(grad, self.gtol, x0.dtype),
            num_fev=jnp.array(1, jnp.int32),
            num_jev=jnp.array(1, jnp.int32),
            num_gev=jnp.array(1, jnp.int32),
        )

    def step_info(self, state: DampedNewtonState) -> StepInfo:
        return StepInfo(jnp.array(StepKind.NEWTON), state.accepted, state.damping, jnp.nan)

    def step(self, problem: Problem, state: DampedNewtonState) -> DampedNewtonState:
        dtype = state.x.dtype
        mu, nu = state.damping, state.damping_growth
        n = state.x.shape[0]

        matrix = state.hessian + mu * jnp.eye(n, dtype=dtype)
        positive_definite = jnp.all(jnp.isfinite(jnp.linalg.cholesky(lax.stop_gradient(matrix))))
        # Factor a harmless matrix when H + μI is indefinite, so that differentiating through the
        # iterations (UnrolledAdjoint) never meets the NaN of a failed factorisation.
        factor = jnp.linalg.cholesky(jnp.where(positive_definite, matrix, jnp.eye(n, dtype=dtype)))
        step = -_cholesky_solve(factor, state.grad)
        x_trial = state.x + step
        cost_trial, residual_trial = problem.evaluate(x_trial)
        actual_reduction = state.cost - cost_trial
        predicted_reduction = -jnp.dot(state.grad, step) - 0.5 * step @ state.hessian @ step
        gain_ratio = actual_reduction / predicted_reduction
        accepted = positive_definite & (predicted_reduction > 0) & (gain_ratio > 0)

        mu = jnp.where(accepted, mu * jnp.maximum(1 / 3, 1 - (2 * gain_ratio - 1) ** 3), mu * nu)
        nu = jnp.where(accepted, 2, 2 * nu).astype(dtype)

        x = jnp.where(accepted, x_trial, state.x)
        fresh = state.hessian_age == 0
        if self.reuse_hessian:
            # Keep the Hessian after a step the quadratic model predicted well, a few times in a row;
            # after a rejected step, refresh it if it was evaluated at an earlier point.
            good_step = accepted & (gain_ratio > GOOD_MODEL) & (state.hessian_age < MAX_REUSE)
            keep_hessian = jnp.where(accepted, good_step, fresh)
        else:
            keep_hessian = ~accepted
        hessian = lax.cond(keep_hessian, lambda _: state.hessian, problem.hessian, x)
        grad = lax.cond(accepted, problem.gradient, lambda _: state.grad, x)

        status = convergence_status(
            grad=grad,
            # Norms in the variables scaled by √|diag H|, so that a large parameter next to a small
            # one cannot hide the small one's steps (MINPACK scales its xtol test the same way).
            step_norm=jnp.linalg.norm(hessian_scale(state.hessian) * step),
            x_norm=jnp.linalg.norm(hessian_scale(state.hessian) * x),
            cost=state.cost,
            actual_reduction=actual_reduction,
            predicted_reduction=predicted_reduction,
            ftol=self.ftol,
            xtol=self.xtol,
            gtol=self.gtol,
            dtype=dtype,
        )
        # A rejected step can still show that no progress is possible (xtol), not ftol or gtol; a step
        # made with a reused Hessian converges only by gtol (its model may be the slow one).
        status = jnp.where(accepted | (status == Status.CONVERGED_XTOL), status, Status.RUNNING)
        status = jnp.where(fresh | (status == Status.CONVERGED_GTOL), status, Status.RUNNING)
        status = jnp.where(jnp.isfinite(mu), status, Status.NO_DESCENT)
        return DampedNewtonState(
            x=x,
            residual=jnp.where(accepted, residual_trial, state.residual),
            cost=jnp.where(accepted, cost_trial, state.cost),
            grad=grad,
            hessian=hessian,
            hessian_age=jnp.where(keep_hessian, state.hessian_age + accepted, 0).astype(jnp.int32),
            damping=mu.astype(dtype),
            damping_growth=nu,
            accepted=accepted,
            status=status.astype(jnp.int32),
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + (~keep_hessian).astype(jnp.int32),
            num_gev=state.num_gev + accepted.astype(jnp.int32),
        )


def _cholesky_solve(factor, rhs):
    forward = lax.linalg.triangular_solve(factor, rhs[:, None], left_side=True, lower=True)
    return lax.linalg.triangular_solve(factor, forward, left_side=True, lower=True, transpose_a=True)[:, 0]
