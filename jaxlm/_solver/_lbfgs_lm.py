"""L-BFGS first, then Levenberg–Marquardt.

References:
    D. C. Liu, J. Nocedal, "On the limited memory BFGS method for large scale optimization",
    Math. Programming 45, 1989 (L-BFGS; optax's implementation with a zoom line search).
    ALGLIB's "function + gradient + Jacobian" least-squares mode, which starts with a
    quasi-Newton phase that needs only gradients.

A gradient of F = ½‖r‖² costs one reverse-mode pass (a vector–Jacobian product), a Jacobian
costs n forward passes. Far from the solution L-BFGS makes cheap progress from gradients alone;
near it LM converges fast. So:

    phase 1 (L-BFGS):  x ← x + αd with optax's L-BFGS direction d and zoom line search, until a
                       step reduces F by less than `switch_tolerance`·F, or after
                       `max_lbfgs_steps` steps, or on a non-finite value;
    phase 2 (LM):      `LevenbergMarquardt` from the point phase 1 reached, with its own
                       stopping tests. Only phase 2 evaluates Jacobians.

(ALGLIB also lets the LM quadratic model precondition later quasi-Newton steps; that part is
not implemented here.)
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, Float, Int, PyTree

from .._loop import AbstractSolver, Problem
from .._solution import Status
from ._levenberg_marquardt import LevenbergMarquardt, LevenbergMarquardtState
from ._tolerances import initial_status

LBFGS_PHASE, LM_PHASE = 0, 1


class LBFGSLMState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"]
    cost: Float[Array, ""]
    grad: Float[Array, " n"]
    phase: Int[Array, ""]
    num_lbfgs_steps: Int[Array, ""]
    lbfgs_state: PyTree
    lm_state: LevenbergMarquardtState
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]


class LBFGSLM(AbstractSolver):
    """L-BFGS (optax) to get close cheaply, then Levenberg–Marquardt to converge.

    Args:
        lm: the `LevenbergMarquardt` of phase 2 (its tolerances are the solve's).
        max_lbfgs_steps: the most L-BFGS steps before switching to LM.
        switch_tolerance: switch when an L-BFGS step reduces the cost by less than this
            fraction of it.
        memory_size: the number of L-BFGS correction pairs.

    It pays off when Jacobians are expensive (many parameters) and the start is far; on small
    problems plain LM is faster (see benchmarks/README.md).
    """

    lm: LevenbergMarquardt = eqx.field(default_factory=LevenbergMarquardt)
    max_lbfgs_steps: int = eqx.field(default=100, static=True)
    switch_tolerance: float = 1e-3
    memory_size: int = eqx.field(default=10, static=True)

    def _optimizer(self):
        return optax.lbfgs(memory_size=self.memory_size)

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> LBFGSLMState:
        problem.require_residuals("LBFGSLM")
        cost, residual = problem.evaluate(x0)
        grad = problem.gradient(x0)
        lm_shape = jax.eval_shape(lambda: self.lm.init(problem, x0))
        return LBFGSLMState(
            x=x0,
            residual=residual,
            cost=cost,
            grad=grad,
            phase=jnp.array(LBFGS_PHASE, jnp.int32),
            num_lbfgs_steps=jnp.array(0, jnp.int32),
            lbfgs_state=self._optimizer().init(x0),
            lm_state=jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), lm_shape),
            status=initial_status(grad, self.lm.gtol, x0.dtype),
            num_fev=jnp.array(1, jnp.int32),
            num_jev=jnp.array(0, jnp.int32),
        )

    def step(self, problem: Problem, state: LBFGSLMState) -> LBFGSLMState:
        return lax.cond(
            state.phase == LBFGS_PHASE,
            lambda s: self._lbfgs_step(problem, s),
            lambda s: self._lm_step(problem, s),
            state,
        )

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
        x = jnp.where(better, x_trial, state.x)
        cost = jnp.where(better, cost_trial, state.cost)
        residual = jnp.where(better, residual_trial, state.residual)
        grad = lax.cond(better, problem.gradient, lambda _: state.grad, x)
        num_steps = state.num_lbfgs_steps + 1
        small_progress = (state.cost - cost) <= self.switch_tolerance * state.cost
        switch = ~better | small_progress | (num_steps >= self.max_lbfgs_steps)
        lm_state = lax.cond(switch, lambda: self.lm.init(problem, x), lambda: state.lm_state)
        line_search_evaluations = optax.tree_utils.tree_get(lbfgs_state, "num_linesearch_steps")
        return LBFGSLMState(
            x=x,
            residual=residual,
            cost=cost,
            grad=grad,
            phase=jnp.where(switch, LM_PHASE, LBFGS_PHASE).astype(jnp.int32),
            num_lbfgs_steps=num_steps,
            lbfgs_state=lbfgs_state,
            lm_state=lm_state,
            status=jnp.where(switch, lm_state.status, Status.RUNNING).astype(jnp.int32),
            num_fev=state.num_fev + 1 + jnp.asarray(line_search_evaluations, jnp.int32),
            num_jev=state.num_jev + switch.astype(jnp.int32),
        )

    def _lm_step(self, problem, state):
        lm_state = self.lm.step(problem, state.lm_state)
        accepted_jacobians = lm_state.num_jev - state.lm_state.num_jev
        return eqx.tree_at(
            lambda s: (s.x, s.residual, s.cost, s.grad, s.lm_state, s.status, s.num_fev, s.num_jev),
            state,
            (
                lm_state.x,
                lm_state.residual,
                lm_state.cost,
                lm_state.grad,
                lm_state,
                lm_state.status,
                state.num_fev + 1,
                state.num_jev + accepted_jacobians,
            ),
        )
