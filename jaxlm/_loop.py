"""The one driver loop that every solver runs in: init → while_loop(step) → state.

A solver is an immutable `AbstractSolver` with three methods. `init(problem, x0)` evaluates the
starting point; `step(problem, state)` computes one step, decides whether to accept it, updates
its own damping or radius, and sets `state.status` to a converged `Status` when its tolerances
are met; `step_info(state)` says what kind of step that was, for traces and logs. Everything
that is the same for all solvers lives here: the check of the starting point, non-finite
values, `max_steps`, counting steps, and recording traces.

A solver's state is an `equinox.Module` with at least the fields `x`, `residual`, `cost`,
`grad`, `status`, `num_fev` and `num_jev` (`residual` is None for a chunked problem).
"""

import abc
import functools
from collections.abc import Callable

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._chunked import ChunkedResiduals
from ._log import log_iteration
from ._solution import Status
from ._trace import StepInfo, StepKind, Trace, empty_trace, record

ELEMENTWISE_MAX_RESIDUALS = 32
BOUNDARY_STEP = 0.995  # θ: the fraction of the way to a bound that a step cut by the box goes
SNAP_FRACTION = 0.01  # how close to a bound (relative to it and to the step) a step goes onto it


class Problem(eqx.Module):
    """A problem on a flat parameter vector: what the solvers see.

    `least_squares` gives the residuals and their Jacobian (the cost is F = ½‖r‖²); `minimize`
    gives only a scalar cost, which the Newton-type solvers can work with. With
    `least_squares(residual_chunk_size=...)` the residuals come in `chunks` instead, and only
    LevenbergMarquardt can use them: through `evaluate` and `normal_equations`, which never
    form r or J whole.
    """

    residual: Callable[[Float[Array, " n"]], Float[Array, " m"]] | None
    jacobian: Callable[[Float[Array, " n"]], Float[Array, "m n"]] | None
    scalar_cost: Callable[[Float[Array, " n"]], Float[Array, ""]] | None = None
    lower: Float[Array, " n"] | None = None  # box constraints lower ≤ x ≤ upper (None: none)
    upper: Float[Array, " n"] | None = None
    chunks: ChunkedResiduals | None = None
    # JᵀJ and Jᵀr as sums of elementwise products for up to ELEMENTWISE_MAX_RESIDUALS residuals
    # (see `jtj_and_gradient`): set by `least_squares_batch`, which vmaps every problem and
    # compiles it with `compiler_options()`.
    elementwise_sums: bool = eqx.field(default=False, static=True)

    @property
    def bounded(self) -> bool:
        return self.lower is not None

    def cost(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """F(x): ½‖r(x)‖², or the scalar cost of `minimize`."""
        return self.evaluate(x)[0]

    def evaluate(self, x: Float[Array, " n"]) -> tuple[Float[Array, ""], Float[Array, " m"] | None]:
        """(F(x), r(x)); the residuals are an empty array for a scalar cost, and None for a chunked
        problem, whose cost is summed chunk by chunk."""
        if self.chunks is not None:
            return self.chunks.cost(x), None
        if self.residual is None:
            return self.scalar_cost(x), jnp.zeros((0,), x.dtype)
        residual = self.residual(x)
        return jnp.sum(0.5 * residual**2), residual  # ½ inside the sum: no kernel of its own

    def normal_equations(
        self, x: Float[Array, " n"], residual: Float[Array, " m"] | None
    ) -> tuple[Float[Array, "m n"] | None, Float[Array, "n n"], Float[Array, " n"]]:
        """(J, JᵀJ, Jᵀr) at x, given r(x) from `evaluate`; J is None for a chunked problem, whose
        JᵀJ and Jᵀr are accumulated chunk by chunk."""
        if self.chunks is not None:
            return None, *self.chunks.normal_equations(x)
        jac = self.jacobian(x)
        return jac, *self.jtj_and_gradient(jac, residual)

    def jtj_and_gradient(
        self, jac: Float[Array, "m n"], residual: Float[Array, " m"]
    ) -> tuple[Float[Array, "n n"], Float[Array, " n"]]:
        """(JᵀJ, Jᵀr): matrix products (BLAS for one fit), or, with `elementwise_sums` and a few
        residuals, sums of elementwise products. A vmapped batch of fits computes those 5× faster
        than the batch of tiny matrix products that `vmap` makes of `jac.T @ jac` (the 5 × 25
        Jacobians of a batch of 5×5 Gaussians), provided XLA:CPU, not YNNPACK, does the sums
        (`compiler_options()`). With more residuals XLA recomputes the Jacobian in every sum or
        writes all m·n² products out, and the matrix products are faster."""
        if not self.elementwise_sums or jac.shape[0] > ELEMENTWISE_MAX_RESIDUALS:
            return jac.T @ jac, jac.T @ residual
        return jnp.sum(jac[:, :, None] * jac[:, None, :], axis=0), jnp.sum(jac * residual[:, None], axis=0)

    def curvature_gradient(
        self, x: Float[Array, " n"], v: Float[Array, " n"], jac: Float[Array, "m n"] | None
    ) -> tuple[Float[Array, " n"], Float[Array, " m"] | None]:
        """(Jᵀr'', r'') with r'' = r''(x)[v, v], the second directional derivative of the residuals
        along v, by a nested `jvp` (for geodesic acceleration); r'' is None for a chunked problem."""
        if self.chunks is not None:
            return self.chunks.curvature_gradient(x, v), None

        def directional_derivative(x):
            return jax.jvp(self.residual, (x,), (v,))[1]

        second_derivative = jax.jvp(directional_derivative, (x,), (v,))[1]
        return jac.T @ second_derivative, second_derivative

    def twice_differentiable(self, x: Float[Array, " n"]) -> bool:
        """Whether `curvature_gradient` can be traced: not where JAX cannot differentiate the residuals
        forward twice (a `jax.pure_callback` to the host, a `jax.custom_vjp` function)."""

        def curvature(x):
            return self.curvature_gradient(x, x, None if self.jacobian is None else self.jacobian(x))

        try:
            jax.eval_shape(curvature, x)
        except Exception:  # whatever JAX raises for a function without forward derivatives
            return False
        return True

    def gradient(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        """∇F(x) (for least squares Jᵀr), by reverse-mode differentiation."""
        return jax.grad(self.cost)(x)

    def hessian(self, x: Float[Array, " n"]) -> Float[Array, "n n"]:
        """The exact Hessian ∇²F(x) (for least squares JᵀJ + Σ rᵢ∇²rᵢ), forward over reverse."""
        return jax.jacfwd(self.gradient)(x)

    def gradient_and_hessian(self, x: Float[Array, " n"]) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
        """∇F(x) and ∇²F(x) from one forward-over-reverse pass (the gradient is its primal)."""
        hessian, gradient = jax.jacfwd(lambda x: (self.gradient(x),) * 2, has_aux=True)(x)
        return gradient, hessian

    def project(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        """x moved into the box (the identity without bounds)."""
        return x if not self.bounded else jnp.clip(x, self.lower, self.upper)

    def step_into_box(self, x: Float[Array, " n"], step: Float[Array, " n"]) -> Float[Array, " n"]:
        """x + step, cut at the box (the identity without bounds).

        A coordinate whose step crosses a bound stops short of it, at x + θ·(bound − x) with
        θ = 0.995, as scipy's trust-region reflective method does: landing on a bound where the
        cost does not depend on the parameter to first order (one that enters squared, say)
        would leave it there for good. It goes onto the bound when it is already within
        √eps·(1 + |bound|) of it, or within `SNAP_FRACTION` of |bound| and of the step (a step
        that overshoots by far a bound it has come close to): there the cost pushes against the
        bound, and the parameter is pinned at it from the next step on (see `free_variables`)."""
        if not self.bounded:
            return x + step
        trial = x + step
        on_box = jnp.clip(trial, self.lower, self.upper)
        distance = jnp.abs(on_box - x)
        near = (distance <= jnp.sqrt(jnp.finfo(x.dtype).eps) * (1 + jnp.abs(on_box))) | (
            (distance <= SNAP_FRACTION * jnp.abs(step)) & (distance <= SNAP_FRACTION * jnp.abs(on_box))
        )
        stopped_short = x + BOUNDARY_STEP * (on_box - x)
        return jnp.where((on_box != trial) & ~near, stopped_short, on_box)

    def free_variables(self, x: Float[Array, " n"], grad: Float[Array, " n"]) -> Bool[Array, " n"]:
        """The parameters that may move: all but those at a bound that the gradient pushes
        against, and those fixed by lower = upper (the active set of projected Newton methods,
        Bertsekas 1982)."""
        if not self.bounded:
            return jnp.ones(x.shape, bool)
        return pinned_free(x, grad, self.lower, self.upper)

    def projected_gradient(self, x: Float[Array, " n"], grad: Float[Array, " n"]) -> Float[Array, " n"]:
        """The gradient over the parameters that may move (`free_variables`), 0 elsewhere."""
        return jnp.where(self.free_variables(x, grad), grad, 0)

    def require_residuals(self, solver_name: str) -> None:
        if self.residual is None and self.chunks is None:
            raise ValueError(
                f"{solver_name} needs residuals: call jaxlm.least_squares(fun, ...) with a residual "
                "function, or use a Newton-type solver (NewtonRaphson, DampedNewton) with jaxlm.minimize."
            )


def pinned_free(x, grad, lower, upper) -> Bool[Array, " n"]:
    """~pinned, pinned = (at the lower bound and ∂F/∂x > 0) or (at the upper bound and ∂F/∂x < 0)
    or lower = upper."""
    pinned = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0)) | (lower == upper)
    return ~pinned


class AbstractSolver(eqx.Module):
    """The interface between a solver and the driver loop."""

    @abc.abstractmethod
    def init(self, problem: Problem, x0: Float[Array, " n"]) -> PyTree: ...

    @abc.abstractmethod
    def step(self, problem: Problem, state: PyTree) -> PyTree: ...

    @abc.abstractmethod
    def step_info(self, state: PyTree) -> StepInfo:
        """The kind of the last step, whether it was accepted, and the damping and radius after it."""

    def stage_steps(self) -> tuple[Callable[[Problem, PyTree], PyTree], ...]:
        """The step of each stage of the solver, in order: a solver that can move on to a costlier
        kind of step (`LevenbergMarquardt`'s fallback) has several, and `step` is the one that
        works in any stage. A stage's step moves a fit on to the next stage (see `stage`), and the
        driver runs each stage in a loop of its own, so that a vmapped batch pays for a later stage
        only while one of its fits is in it. A fit that moves on is RUNNING, also one that the
        next stage resumes after it had stopped."""
        return (self.step,)

    def stage(self, state: PyTree) -> Int[Array, ""]:
        """The index into `stage_steps` of the stage that `state` is in (stages only go forward)."""
        return jnp.array(0, jnp.int32)


def _set_status(state, status):
    return eqx.tree_at(lambda s: s.status, state, status)


def first_state(solver: AbstractSolver, problem: Problem, x0: Array) -> PyTree:
    """The solver's state at `x0`, with status `NONFINITE_START` if it is not finite there (and,
    for residuals in chunks, `COUPLED_DATA_POINTS` if a data point's residuals depend on others)."""
    state = solver.init(problem, x0)
    status = state.status
    if problem.chunks is not None:
        independent = problem.chunks.rows_are_independent(x0)
        status = jnp.where(independent, status, Status.COUPLED_DATA_POINTS)
    start_is_finite = jnp.isfinite(state.cost) & jnp.all(jnp.isfinite(state.grad))
    return _set_status(state, jnp.where(start_is_finite, status, Status.NONFINITE_START))


def next_state(solver: AbstractSolver, problem: Problem, state: PyTree, num_steps, max_steps: int, step=None):
    """One step of the solver (`step`, one of its `stage_steps`, or by default `solver.step`), then
    the checks every solver shares: non-finite values, max_steps."""
    state = (solver.step if step is None else step)(problem, state)
    num_steps = num_steps + 1
    status = jnp.where(jnp.all(jnp.isfinite(state.grad)), state.status, Status.NONFINITE_JACOBIAN)
    status = jnp.where((status == Status.RUNNING) & (num_steps >= max_steps), Status.MAX_STEPS, status)
    return _set_status(state, status), num_steps


def run(
    solver: AbstractSolver,
    problem: Problem,
    x0: Array,
    max_steps: int,
    loop_kind: str = "lax",
    trace_steps: int = 0,
    verbose: bool = False,
    on_step: Callable[[PyTree, Int[Array, ""]], Bool[Array, ""]] | None = None,
) -> tuple[PyTree, Int[Array, ""], Trace | None]:
    """Solve from `x0`; returns the final solver state, the number of steps taken, and the trace.

    `loop_kind` is "lax" (`lax.while_loop`: forward-mode differentiable only, the default) or
    "bounded" (Equinox's bounded loop of `max_steps` iterations, which reverse mode can
    differentiate through: used by `UnrolledAdjoint`). With `trace_steps` > 0 the start and the
    first `trace_steps` steps are recorded in a `Trace` (with flat parameters); otherwise the
    trace is None. With `verbose` every iteration prints a line (see `_log.py`). `on_step(state,
    num_steps)`, when given, is called after every step and returns whether to stop there (status
    `STOPPED_BY_CALLBACK`): the hook for a user's callback. `max_steps` = 0 evaluates the start only.
    """

    def body(carry, step):
        state, num_steps, trace = carry
        state, num_steps = next_state(solver, problem, state, num_steps, max_steps, step)
        if on_step is not None:
            stop = on_step(state, num_steps) & (state.status == Status.RUNNING)
            state = _set_status(state, jnp.where(stop, Status.STOPPED_BY_CALLBACK, state.status))
        if verbose:
            num_steps = log_iteration(num_steps, state, solver.step_info(state))
        if trace is not None:
            trace = record(trace, num_steps, state, solver.step_info(state))
        return state, num_steps, trace

    state = first_state(solver, problem, x0)
    if max_steps == 0:
        state = _set_status(state, jnp.where(state.status == Status.RUNNING, Status.MAX_STEPS, state.status))
    start = eqx.tree_at(lambda info: info.step_kind, solver.step_info(state), jnp.array(StepKind.START))
    num_steps = jnp.array(0, jnp.int32)
    if verbose:
        num_steps = log_iteration(num_steps, state, start)
    trace = None
    if trace_steps > 0:
        trace = record(empty_trace(trace_steps + 1, x0), jnp.array(0), state, start)
    carry = (state, num_steps, trace)
    if max_steps == 0:
        return carry
    # One loop per stage: a fit leaves a stage's loop when it stops or moves on to the next stage.
    for index, step in enumerate(solver.stage_steps()):

        def in_stage(carry, index=index):
            state, _, _ = carry
            return (state.status == Status.RUNNING) & (solver.stage(state) == index)

        stage_body = functools.partial(body, step=step)
        if loop_kind == "lax":
            carry = lax.while_loop(in_stage, stage_body, carry)
        else:
            carry = eqxi.while_loop(in_stage, stage_body, carry, max_steps=max_steps, kind=loop_kind)
    return carry
