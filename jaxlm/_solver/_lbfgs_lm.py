"""L-BFGS first, then Levenberg–Marquardt, whose quadratic model preconditions further L-BFGS steps.

References:
    D. C. Liu, J. Nocedal, "On the limited memory BFGS method for large scale optimization",
    Math. Programming 45, 1989 (L-BFGS; optax's implementation with a zoom line search).
    J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., Springer 2006, Algorithm 7.4
    (the two-loop recursion, whose initial matrix H₀ may be any symmetric positive definite
    approximation of the inverse Hessian).
    ALGLIB's "function + gradient + Jacobian" least-squares mode, which starts with a
    quasi-Newton phase that needs only gradients and lets the LM model precondition it later.

A gradient of F = ½‖r‖² costs one reverse-mode pass (a vector–Jacobian product), a Jacobian
costs n forward passes. Far from the solution L-BFGS makes cheap progress from gradients alone;
near it LM converges fast; and one Jacobian can serve several steps. So there are three phases:

    L-BFGS:   x ← x + αd with optax's L-BFGS direction d and zoom line search, until a step
              reduces F by less than `switch_tolerance`·F, or after `max_lbfgs_steps` steps, or
              on a non-finite value. Then LM at that point.
    LM:       one `LevenbergMarquardt` step, with its damping μ, scaling D and stopping tests.
              After a step it accepts (which evaluated J at the new point), go to
    L-BFGS preconditioned by the LM model:
              d = −H g by the two-loop recursion over the pairs (s, y = Δg) collected since
              that Jacobian, with H₀ = (JᵀJ + μD)⁻¹ (so the first such step is the LM step,
              and later ones correct the Gauss–Newton model with the curvature L-BFGS
              measures, the Σ rᵢ∇²rᵢ that JᵀJ misses). The full step is taken when it meets
              Armijo's condition F(x + d) ≤ F + 10⁻⁴·gᵀd; it costs one residual and one
              gradient evaluation, no Jacobian. When a step fails that test, reduces F by less
              than `switch_tolerance`·F, or `max_preconditioned_steps` were taken, go back to
              an LM step (with a new Jacobian if x moved, and the same μ).

The stopping tests on the step and the cost (xtol, ftol) are LM's; a preconditioned step can
only stop the solve by gtol. `step_kind` in the state records the kind of the last step.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._linear import diagonal_matrix
from .._loop import AbstractSolver, Problem
from .._solution import Status
from .._trace import StepInfo, StepKind
from ._levenberg_marquardt import LevenbergMarquardt, LevenbergMarquardtState
from ._tolerances import initial_status

ARMIJO = 1e-4


class LBFGSLMState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"]
    cost: Float[Array, ""]
    grad: Float[Array, " n"]
    phase: Int[Array, ""]  # the StepKind of the next step: LBFGS, LEVENBERG_MARQUARDT or QUASI_NEWTON
    step_kind: Int[Array, ""]  # the StepKind of the last step
    accepted: Bool[Array, ""]
    num_lbfgs_steps: Int[Array, ""]
    lbfgs_state: PyTree
    lm_state: LevenbergMarquardtState
    s_pairs: Float[Array, "memory n"]  # newest first
    y_pairs: Float[Array, "memory n"]
    num_pairs: Int[Array, ""]
    steps_since_jacobian: Int[Array, ""]
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]


class LBFGSLM(AbstractSolver):
    """L-BFGS (optax) to get close cheaply, then Levenberg–Marquardt, whose model preconditions
    further L-BFGS steps so that one Jacobian serves several steps.

    Args:
        lm: the `LevenbergMarquardt` of the LM steps (its tolerances are the solve's).
        max_lbfgs_steps: the most steps of the first (plain) L-BFGS phase.
        switch_tolerance: leave an L-BFGS phase when a step reduces the cost by less than this
            fraction of it.
        memory_size: the number of L-BFGS correction pairs (both L-BFGS phases).
        max_preconditioned_steps: the most preconditioned L-BFGS steps per Jacobian; 0 turns
            them off (plain L-BFGS, then plain LM).

    It pays off when Jacobians are expensive (many parameters) and the start is far, or when
    the residuals are large at the solution; on small problems plain LM is faster (see
    benchmarks/README.md).
    """

    lm: LevenbergMarquardt = eqx.field(default_factory=LevenbergMarquardt)
    max_lbfgs_steps: int = eqx.field(default=100, static=True)
    switch_tolerance: float = 1e-3
    memory_size: int = eqx.field(default=10, static=True)
    max_preconditioned_steps: int = eqx.field(default=10, static=True)

    def __check_init__(self):
        if self.max_lbfgs_steps < 0 or self.max_preconditioned_steps < 0 or self.memory_size < 1:
            raise ValueError(
                "max_lbfgs_steps and max_preconditioned_steps must be >= 0 and memory_size >= 1, got "
                f"{self.max_lbfgs_steps}, {self.max_preconditioned_steps} and {self.memory_size}."
            )

    def _optimizer(self):
        return optax.lbfgs(memory_size=self.memory_size)

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> LBFGSLMState:
        problem.require_residuals("LBFGSLM")
        cost, residual = problem.evaluate(x0)
        grad = problem.gradient(x0)
        lm_shape = jax.eval_shape(lambda: self.lm.init(problem, x0))
        n = x0.size
        start_with_lm = self.max_lbfgs_steps == 0
        return LBFGSLMState(
            x=x0,
            residual=residual,
            cost=cost,
            grad=grad,
            phase=jnp.array(StepKind.LEVENBERG_MARQUARDT if start_with_lm else StepKind.LBFGS, jnp.int32),
            step_kind=jnp.array(StepKind.START, jnp.int32),
            accepted=jnp.array(True),
            num_lbfgs_steps=jnp.array(0, jnp.int32),
            lbfgs_state=self._optimizer().init(x0),
            lm_state=(
                self.lm.init(problem, x0)
                if start_with_lm
                else jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), lm_shape)
            ),
            s_pairs=jnp.zeros((self.memory_size, n), x0.dtype),
            y_pairs=jnp.zeros((self.memory_size, n), x0.dtype),
            num_pairs=jnp.array(0, jnp.int32),
            steps_since_jacobian=jnp.array(0, jnp.int32),
            status=initial_status(grad, self.lm.gtol, x0.dtype),
            num_fev=jnp.array(1, jnp.int32),
            num_jev=jnp.array(int(start_with_lm), jnp.int32),
        )

    def step_info(self, state: LBFGSLMState) -> StepInfo:
        # μ of the LM model once there is one (it also preconditions the quasi-Newton steps).
        damping = jnp.where(state.num_jev > 0, state.lm_state.damping, jnp.nan)
        return StepInfo(state.step_kind, state.accepted, damping, jnp.nan)

    def step(self, problem: Problem, state: LBFGSLMState) -> LBFGSLMState:
        branches = {
            StepKind.LBFGS: self._lbfgs_step,
            StepKind.LEVENBERG_MARQUARDT: self._lm_step,
            StepKind.QUASI_NEWTON: self._preconditioned_step,
        }
        index = jnp.select([state.phase == kind for kind in branches], list(range(len(branches))))
        return lax.switch(index, [lambda s, f=f: f(problem, s) for f in branches.values()], state)

    def _lbfgs_step(self, problem, state):
        dtype = state.x.dtype
        # optax's line search works in the default float type; the problem stays in its own.
        updates, lbfgs_state = self._optimizer().update(
            state.grad,
            state.lbfgs_state,
            state.x,
            value=state.cost,
            grad=state.grad,
            value_fn=lambda x: problem.cost(x.astype(dtype)),
        )
        x_trial = (state.x + updates).astype(dtype)
        cost_trial, residual_trial = problem.evaluate(x_trial)
        better = jnp.isfinite(cost_trial) & (cost_trial <= state.cost)
        x, cost, residual, grad = _take_if(better, problem, state, x_trial, cost_trial, residual_trial)
        num_steps = state.num_lbfgs_steps + 1
        small_progress = (state.cost - cost) <= self.switch_tolerance * state.cost
        switch = ~better | small_progress | (num_steps >= self.max_lbfgs_steps)
        lm_state = lax.cond(switch, lambda: self.lm.init(problem, x), lambda: state.lm_state)
        line_search_evaluations = optax.tree_utils.tree_get(lbfgs_state, "num_linesearch_steps")
        return dataclasses.replace(
            state,
            x=x,
            residual=residual,
            cost=cost,
            grad=grad,
            phase=jnp.where(switch, StepKind.LEVENBERG_MARQUARDT, StepKind.LBFGS).astype(jnp.int32),
            step_kind=jnp.array(StepKind.LBFGS, jnp.int32),
            accepted=better,
            num_lbfgs_steps=num_steps,
            lbfgs_state=lbfgs_state,
            lm_state=lm_state,
            status=jnp.where(switch, lm_state.status, Status.RUNNING).astype(jnp.int32),
            num_fev=state.num_fev + 1 + jnp.asarray(line_search_evaluations, jnp.int32),
            num_jev=state.num_jev + switch.astype(jnp.int32),
        )

    def _lm_step(self, problem, state):
        lm_state = self.lm.step(problem, state.lm_state)
        # After an accepted step J is fresh: its model (JᵀJ + μD) becomes the preconditioner.
        precondition = lm_state.accepted & (self.max_preconditioned_steps > 0)
        next_phase = jnp.where(precondition, StepKind.QUASI_NEWTON, StepKind.LEVENBERG_MARQUARDT)
        return dataclasses.replace(
            state,
            x=lm_state.x,
            residual=lm_state.residual,
            cost=lm_state.cost,
            grad=lm_state.grad,
            phase=next_phase.astype(jnp.int32),
            step_kind=jnp.array(StepKind.LEVENBERG_MARQUARDT, jnp.int32),
            accepted=lm_state.accepted,
            lm_state=lm_state,
            num_pairs=jnp.array(0, jnp.int32),
            steps_since_jacobian=jnp.array(0, jnp.int32),
            status=lm_state.status,
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + (lm_state.num_jev - state.lm_state.num_jev),
        )

    def _preconditioned_step(self, problem, state):
        dtype = state.x.dtype
        lm = state.lm_state  # at the point of the last Jacobian: its model is H₀⁻¹
        factor = jnp.linalg.cholesky(lm.jtj + diagonal_matrix(lm.damping * lm.scale))
        direction = -_two_loop(
            state.grad,
            state.s_pairs,
            state.y_pairs,
            state.num_pairs,
            lambda q: jax.scipy.linalg.cho_solve((factor, True), q),
        )
        slope = jnp.dot(state.grad, direction)
        x_trial = state.x + direction
        cost_trial, residual_trial = problem.evaluate(x_trial)
        accepted = (
            jnp.all(jnp.isfinite(direction)) & (slope < 0) & (cost_trial <= state.cost + ARMIJO * slope)
        )
        x, cost, residual, grad = _take_if(accepted, problem, state, x_trial, cost_trial, residual_trial)

        s, y = x - state.x, grad - state.grad
        new_pair = accepted & (jnp.dot(s, y) > jnp.finfo(dtype).eps * jnp.dot(y, y))
        s_pairs = jnp.where(new_pair, jnp.roll(state.s_pairs, 1, axis=0).at[0].set(s), state.s_pairs)
        y_pairs = jnp.where(new_pair, jnp.roll(state.y_pairs, 1, axis=0).at[0].set(y), state.y_pairs)
        num_pairs = jnp.minimum(state.num_pairs + new_pair, self.memory_size).astype(jnp.int32)
        steps = state.steps_since_jacobian + accepted.astype(jnp.int32)

        no_gradient_progress = jnp.max(jnp.abs(grad)) >= jnp.max(jnp.abs(state.grad))
        back_to_lm = ~accepted | no_gradient_progress | (steps >= self.max_preconditioned_steps)
        lm_state = lax.cond(
            back_to_lm,
            lambda: self._restart_lm(problem, state.lm_state, x, moved=steps > 0),
            lambda: state.lm_state,
        )
        status = initial_status(grad, self.lm.gtol, dtype)  # only gtol can stop at a quasi-Newton step
        next_phase = jnp.where(back_to_lm, StepKind.LEVENBERG_MARQUARDT, StepKind.QUASI_NEWTON)
        return dataclasses.replace(
            state,
            x=x,
            residual=residual,
            cost=cost,
            grad=grad,
            phase=next_phase.astype(jnp.int32),
            step_kind=jnp.array(StepKind.QUASI_NEWTON, jnp.int32),
            accepted=accepted,
            lm_state=lm_state,
            s_pairs=s_pairs,
            y_pairs=y_pairs,
            num_pairs=num_pairs,
            steps_since_jacobian=steps,
            status=status,
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + (back_to_lm & (steps > 0)).astype(jnp.int32),
        )

    def _restart_lm(self, problem, lm_state, x, moved):
        """The LM state at x for the next LM step, keeping the damping of the last one.

        If x has not moved since the Jacobian, the LM state is still valid; a failed first
        preconditioned step was the LM step itself, so it counts as a rejection under LM's rule.
        """

        def at_new_point():
            fresh = self.lm.init(problem, x)
            return dataclasses.replace(
                fresh,
                scale=jnp.maximum(fresh.scale, lm_state.scale) if self.lm.scaled else lm_state.scale,
                damping=lm_state.damping,
                damping_growth=lm_state.damping_growth,
                radius=lm_state.radius,
                num_fev=lm_state.num_fev + 1,
                num_jev=lm_state.num_jev + 1,
            )

        def rejected_here():
            damping, growth = self.lm.damping_after_rejection(lm_state.damping, lm_state.damping_growth)
            return dataclasses.replace(lm_state, damping=damping, damping_growth=growth)

        return lax.cond(moved, at_new_point, rejected_here)


def _take_if(accepted, problem, state, x_trial, cost_trial, residual_trial):
    """(x, F, r, ∇F) at the trial point if it was accepted, else those of the state."""
    x = jnp.where(accepted, x_trial, state.x)
    cost = jnp.where(accepted, cost_trial, state.cost)
    residual = jnp.where(accepted, residual_trial, state.residual)
    grad = lax.cond(accepted, problem.gradient, lambda _: state.grad, x)
    return x, cost, residual, grad


def _two_loop(grad, s_pairs, y_pairs, num_pairs, apply_initial_inverse):
    """H·g for the L-BFGS inverse-Hessian approximation H built on H₀ from the stored pairs."""
    valid = jnp.arange(s_pairs.shape[0]) < num_pairs
    curvature = jnp.sum(s_pairs * y_pairs, axis=1)
    rho = jnp.where(valid, 1 / jnp.where(valid, curvature, 1), 0)

    def newest_to_oldest(q, pair):
        s, y, rho_i = pair
        alpha = rho_i * jnp.dot(s, q)
        return q - alpha * y, alpha

    q, alphas = lax.scan(newest_to_oldest, grad, (s_pairs, y_pairs, rho))
    r = apply_initial_inverse(q)

    def oldest_to_newest(r, pair):
        s, y, rho_i, alpha = pair
        beta = rho_i * jnp.dot(y, r)
        return r + (alpha - beta) * s, None

    r, _ = lax.scan(oldest_to_newest, r, (s_pairs, y_pairs, rho, alphas), reverse=True)
    return r
