"""Madsen's hybrid: Levenberg–Marquardt steps, switching to quasi-Newton steps on large residuals.

References:
    K. Madsen, "A combined Gauss–Newton and quasi-Newton method for non-linear least squares",
    Institute for Numerical Analysis (now IMM), DTU, Report NI-88-10, 1988.
    K. Madsen, H. B. Nielsen, O. Tingleff, "Methods for Non-Linear Least Squares Problems",
    2nd ed., IMM, DTU, 2004, Section 3.4 (the presentation followed here).

LM converges only linearly when the residuals at the solution are large, because JᵀJ misses
the term Σ rᵢ∇²rᵢ of the Hessian. The hybrid keeps a BFGS approximation B of the full Hessian
of F = ½‖r‖², updated after every step h = x_new − x with

    y = J_newᵀJ_new·h + (J_new − J)ᵀ r(x_new),   and if hᵀy > 0:  B ← B + yyᵀ/(hᵀy) − (Bh)(Bh)ᵀ/(hᵀBh),

and uses it when LM is seen to be slow:

    LM step   (JᵀJ + μI) h = −g, gain ratio and Nielsen's damping update as in LM; a step with
              ρ > 0 is taken. If ‖g_new‖∞ < 0.02·F_new on three consecutive taken LM steps,
              the residuals are large: switch to QN.
    QN step   B h = −g, cut to the trust radius ‖h‖ ≤ Δ. The step is taken if F_new < F, or if
              F_new ≤ (1 + δ)F and ‖g_new‖∞ < ‖g‖∞ (δ = √eps). Δ ← Δ/2 when ρ < 1/4 and
              Δ ← max(Δ, 3‖h‖) when ρ > 3/4. If ‖g_new‖∞ ≥ ‖g‖∞, switch back to LM.

The Jacobian is evaluated at every trial point (the B update needs it). When switching to QN
the radius starts at max(‖h_LM‖, the xtol threshold) (our choice). The xtol test is taken in
the variables scaled by √diag(JᵀJ), as MINPACK does (our choice: with μI damping a parameter of
600 next to one of 2e-4 would otherwise stop the solve, NIST Misra1c). `step_kind` in the state
records the kind of the last step (a `StepKind`: LEVENBERG_MARQUARDT or QUASI_NEWTON).
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._linear import diagonal_of, solve_damped_normal_equations
from .._loop import AbstractSolver, Problem
from .._solution import Status
from .._trace import StepInfo, StepKind
from ._tolerances import check_tolerances, convergence_status, initial_status, resolve_tolerance

LARGE_RESIDUAL_RATIO = 0.02
STEPS_BEFORE_SWITCH = 3


class HybridState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"]
    cost: Float[Array, ""]
    jac: Float[Array, "m n"]
    grad: Float[Array, " n"]
    hessian_approximation: Float[Array, "n n"]  # B
    damping: Float[Array, ""]  # μ
    damping_growth: Float[Array, ""]  # ν
    radius: Float[Array, ""]  # Δ
    use_quasi_newton: Bool[Array, ""]
    large_residual_count: Int[Array, ""]
    step_kind: Int[Array, ""]
    num_quasi_newton_steps: Int[Array, ""]
    accepted: Bool[Array, ""]
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]


class HybridLMQN(AbstractSolver):
    """Madsen's hybrid of Levenberg–Marquardt and BFGS quasi-Newton steps, for large residuals.

    Args:
        ftol, xtol, gtol: the stopping tests, as for `LevenbergMarquardt` (None: from the dtype).
        initial_damping: τ in μ₀ = τ·max diag(JᵀJ).
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    initial_damping: float = 1e-3

    def __check_init__(self):
        check_tolerances(self)
        if not self.initial_damping > 0:
            raise ValueError(f"initial_damping must be > 0, got {self.initial_damping}.")

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> HybridState:
        problem.require_residuals("HybridLMQN")
        cost, residual = problem.evaluate(x0)
        jac, jtj, grad = problem.normal_equations(x0, residual)
        dtype = x0.dtype
        largest = jnp.maximum(jnp.max(diagonal_of(jtj)), jnp.finfo(dtype).tiny)
        return HybridState(
            x=x0,
            residual=residual,
            cost=cost,
            jac=jac,
            grad=grad,
            hessian_approximation=jnp.eye(x0.shape[0], dtype=dtype),
            damping=(self.initial_damping * largest).astype(dtype),
            damping_growth=jnp.asarray(2, dtype),
            radius=jnp.asarray(1, dtype),
            use_quasi_newton=jnp.array(False),
            large_residual_count=jnp.array(0, jnp.int32),
            step_kind=jnp.array(StepKind.LEVENBERG_MARQUARDT, jnp.int32),
            num_quasi_newton_steps=jnp.array(0, jnp.int32),
            accepted=jnp.array(True),
            status=initial_status(grad, self.gtol, dtype),
            num_fev=jnp.array(1, jnp.int32),
            num_jev=jnp.array(1, jnp.int32),
        )

    def step_info(self, state: HybridState) -> StepInfo:
        return StepInfo(state.step_kind, state.accepted, state.damping, state.radius)

    def step(self, problem: Problem, state: HybridState) -> HybridState:
        dtype = state.x.dtype
        mu, nu, radius, qn = state.damping, state.damping_growth, state.radius, state.use_quasi_newton
        grad, cost, B = state.grad, state.cost, state.hessian_approximation

        jtj, _ = problem.jtj_and_gradient(state.jac, state.residual)
        lm_step = solve_damped_normal_equations(jtj, grad, mu, jnp.ones_like(grad), state.jac, state.residual)
        qn_step = -jnp.linalg.solve(B, grad)
        qn_step = qn_step * jnp.minimum(1, radius / jnp.linalg.norm(qn_step))
        step = jnp.where(qn, qn_step, lm_step)

        x_new = state.x + step
        cost_new, residual_new = problem.evaluate(x_new)
        jac_new, _, grad_new = problem.normal_equations(x_new, residual_new)
        finite = jnp.isfinite(cost_new) & jnp.all(jnp.isfinite(grad_new))
        grad_new_norm, grad_norm = jnp.max(jnp.abs(grad_new)), jnp.max(jnp.abs(grad))

        # LM: gain ratio against the damped model, Nielsen's update, and the count of steps that
        # show large residuals.
        lm_predicted = 0.5 * jnp.dot(step, mu * step - grad)
        lm_gain = (cost - cost_new) / lm_predicted
        lm_better = finite & (lm_gain > 0)
        mu_new = jnp.where(lm_better, mu * jnp.maximum(1 / 3, 1 - (2 * lm_gain - 1) ** 3), mu * nu)
        nu_new = jnp.where(lm_better, 2, 2 * nu)
        large_residuals = lm_better & (grad_new_norm < LARGE_RESIDUAL_RATIO * cost_new)
        count = jnp.where(large_residuals, state.large_residual_count + 1, 0)
        switch_to_qn = count >= STEPS_BEFORE_SWITCH

        # QN: trust-region update of Δ and Madsen's acceptance test.
        qn_predicted = -jnp.dot(step, grad) - 0.5 * step @ B @ step
        qn_gain = (cost - cost_new) / qn_predicted
        step_norm = jnp.linalg.norm(step)
        radius_qn = jnp.where(
            qn_gain < 0.25, radius / 2, jnp.where(qn_gain > 0.75, jnp.maximum(radius, 3 * step_norm), radius)
        )
        delta = jnp.sqrt(jnp.finfo(dtype).eps)
        qn_better = finite & (
            (cost_new < cost) | ((cost_new <= (1 + delta) * cost) & (grad_new_norm < grad_norm))
        )
        back_to_lm = ~finite | (grad_new_norm >= grad_norm)

        # The BFGS update of B, after every step with finite values.
        y = jac_new.T @ (jac_new @ step) + (jac_new - state.jac).T @ residual_new
        curvature = jnp.dot(step, y)
        Bh = B @ step
        update = finite & (curvature > 0)
        B_updated = (
            B
            + jnp.outer(y, y) / jnp.where(update, curvature, 1)
            - jnp.outer(Bh, Bh) / jnp.where(update, jnp.dot(step, Bh), 1)
        )
        B = jnp.where(update, B_updated, B)

        xtol = resolve_tolerance("xtol", self.xtol, dtype)
        xtol_threshold = xtol * (jnp.linalg.norm(state.x) + xtol)
        column_norms = jnp.sqrt(diagonal_of(jtj))
        weight = jnp.where(column_norms > 0, column_norms, 1)
        better = jnp.where(qn, qn_better, lm_better)
        use_qn = jnp.where(qn, ~back_to_lm, switch_to_qn)
        radius = jnp.where(
            qn, radius_qn, jnp.where(switch_to_qn, jnp.maximum(step_norm, xtol_threshold), radius)
        )

        x = jnp.where(better, x_new, state.x)
        status = convergence_status(
            grad=jnp.where(better, grad_new, grad),
            # The stopping test in the variables scaled by D = √diag(JᵀJ) (as MINPACK does), so that a
            # large parameter next to a small one cannot hide the small one's steps.
            step_norm=jnp.linalg.norm(weight * step),
            x_norm=jnp.linalg.norm(weight * x),
            cost=cost,
            actual_reduction=cost - cost_new,
            predicted_reduction=jnp.where(qn, qn_predicted, lm_predicted),
            ftol=self.ftol,
            xtol=self.xtol,
            gtol=self.gtol,
            dtype=dtype,
        )
        # A step refused for its cost counts for xtol only (the point did not move).
        status = jnp.where(better | (status == Status.CONVERGED_XTOL), status, Status.RUNNING)
        status = jnp.where(jnp.isfinite(mu_new), status, Status.NO_DESCENT)
        return HybridState(
            x=x,
            residual=jnp.where(better, residual_new, state.residual),
            cost=jnp.where(better, cost_new, cost),
            jac=jnp.where(better, jac_new, state.jac),
            grad=jnp.where(better, grad_new, grad),
            hessian_approximation=B,
            damping=jnp.where(qn, mu, mu_new).astype(dtype),
            damping_growth=jnp.where(qn, nu, nu_new).astype(dtype),
            radius=radius.astype(dtype),
            use_quasi_newton=use_qn,
            large_residual_count=jnp.where(qn | switch_to_qn, 0, count).astype(jnp.int32),
            step_kind=jnp.where(qn, StepKind.QUASI_NEWTON, StepKind.LEVENBERG_MARQUARDT).astype(jnp.int32),
            num_quasi_newton_steps=state.num_quasi_newton_steps + qn.astype(jnp.int32),
            accepted=better,
            status=status.astype(jnp.int32),
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + 1,
        )
