"""Step-by-step use: drive a solve from Python (`Stepper`), or hand the solver residuals that JAX
cannot compute itself (`AskTell`, reverse communication as in ALGLIB's optimisers).

Both run the same solvers and the same driver checks (`first_state`, `next_state`) as
`least_squares`; only who calls the loop differs.
"""

import dataclasses
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Int, PyTree

from ._dispatch import called_from_python, compiled
from ._least_squares import as_float_params, build_problem, check_residuals
from ._loop import AbstractSolver, Problem, first_state, next_state
from ._solution import Solution, Status, make_solution
from ._solver import GaussNewton, HybridLMQN, LevenbergMarquardt


class StepperState(NamedTuple):
    """A `Stepper`'s state: the solver's own and the number of steps taken. (A NamedTuple, a
    pytree like a module, costs under a µs to build per step where a module costs 10 µs.)"""

    solver_state: PyTree
    num_steps: Int[Array, ""]


class Stepper:
    """A least-squares solve driven one step at a time from Python.

    Example:
        >>> import jax.numpy as jnp, jaxlm
        >>> def residual(p, t, y):
        ...     return p[0] * jnp.exp(-p[1] * t) - y
        >>> t = jnp.linspace(0.0, 3.0, 20)
        >>> y = 2.0 * jnp.exp(-1.3 * t)
        >>> stepper = jaxlm.Stepper(residual, jnp.array([1.0, 1.0]), args=(t, y))
        >>> state = stepper.init()
        >>> while not stepper.terminate(state):
        ...     state = stepper.step(state)  # log, or stop early, here
        >>> solution = stepper.solution(state)
        >>> bool(solution.success), [round(float(p), 4) for p in solution.params]
        (True, [2.0, 1.3])

    `init` and `step` are compiled once per residual function, solver and shapes: a new
    `Stepper` for new data of the same shapes compiles nothing. The state is the solver's own
    (for LM it holds λ as `damping`, the Jacobian, the gradient, ...), so a training loop can
    take one solver step per training step, log anything, or stop early. The arguments are
    those of `least_squares`.
    """

    def __init__(
        self,
        fun: Callable[..., ArrayLike],
        x0: PyTree[ArrayLike],
        args: tuple = (),
        *,
        solver: AbstractSolver | None = None,
        jac: Callable[..., Any] | None = None,
        max_steps: int = 1000,
    ):
        solver = LevenbergMarquardt() if solver is None else solver
        self._x0 = as_float_params(x0)
        self._shape = check_residuals(fun, self._x0, args).shape
        self._unravel = ravel_pytree(self._x0)[1]
        # The compiled init and step take the data as arguments: every Stepper of the same
        # residual function, solver and shapes shares them (a Stepper per dataset compiles once).
        # They are called with every step, so the data is put on the device once, here.
        self._static = (fun, jac, solver, int(max_steps), self._shape)
        self._data = jax.tree.map(_on_device, (self._x0, args))
        self._compiled = {}

    def init(self, x0: PyTree[ArrayLike] | None = None) -> StepperState:
        """The state at `x0` (by default the `x0` given to the constructor)."""
        x0 = self._x0 if x0 is None else as_float_params(x0)
        solver_state = self._call(_first_state, (*self._data, ravel_pytree(x0)[0]))
        return StepperState(solver_state, jnp.array(0, jnp.int32))

    def step(self, state: StepperState) -> StepperState:
        """One solver step (accepted or rejected), with the driver's checks and max_steps."""
        return StepperState(*self._call(_next_state, (*self._data, state.solver_state, state.num_steps)))

    def _call(self, function, dynamic):
        # The compiled function is kept per instance (and per context: called from Python, it
        # has the single-fit compiler options), which saves call_compiled's lookup on every step.
        key = (function, called_from_python())
        if key not in self._compiled:
            self._compiled[key] = compiled(function, self._static, dynamic, single_fit=True)
        return self._compiled[key](*dynamic)

    def terminate(self, state: StepperState) -> bool:
        """Whether the solve has stopped (converged or failed: see `solution(state).status`)."""
        return bool(state.solver_state.status != Status.RUNNING)

    def params(self, state: StepperState) -> PyTree:
        return self._unravel(state.solver_state.x)

    def solution(self, state: StepperState) -> Solution:
        s = state.solver_state
        return make_solution(
            self._unravel(s.x), s.cost, s.residual.reshape(self._shape), s, state.num_steps, False, "Stepper"
        )


def _on_device(leaf):
    return jax.device_put(leaf) if isinstance(leaf, np.ndarray) else leaf


def _first_state(fun, jac, solver, max_steps, residual_shape, x0, args, start):
    return first_state(solver, build_problem(fun, jac, args, x0, residual_shape), start)


def _next_state(fun, jac, solver, max_steps, residual_shape, x0, args, solver_state, num_steps):
    problem = build_problem(fun, jac, args, x0, residual_shape)
    return next_state(solver, problem, solver_state, num_steps, max_steps)


@dataclass(frozen=True)
class Request:
    """What an `AskTell` solver needs next: the residuals (or the Jacobian) at `x`."""

    x: np.ndarray
    jacobian: bool  # False: tell(residuals); True: tell(jacobian=...)


_ASK_TELL_SOLVERS = (LevenbergMarquardt, GaussNewton, HybridLMQN)


class AskTell:
    """Reverse communication: the solver asks for residuals at a point, you compute them anywhere.

    For models that JAX cannot trace (an external simulator, a C library, an instrument):

        >>> import numpy as np, jaxlm
        >>> t = np.linspace(0.0, 3.0, 20)
        >>> data = 2.0 * np.exp(-1.3 * t)
        >>> def my_model(x):                                 # anything that computes numbers
        ...     return x[0] * np.exp(-x[1] * t)
        >>> solver = jaxlm.AskTell(np.array([1.0, 1.0]))    # a flat array of parameters
        >>> while not solver.done:
        ...     request = solver.ask()                       # a jaxlm.Request
        ...     solver.tell(my_model(np.asarray(request.x)) - data)
        >>> solution = solver.solution
        >>> bool(solution.success), [round(float(p), 4) for p in solution.params]
        (True, [2.0, 1.3])

    (With `jacobian="tell"`, a request with `request.jacobian` set is answered with
    `solver.tell(jacobian=...)`.)

    With `jacobian="finite_differences"` (the default) the solver never asks for a Jacobian:
    it asks for the residuals at x + hᵢeᵢ (forward differences, hᵢ = √eps·max(|xᵢ|, 1)) instead.
    With `jacobian="tell"` it asks for the Jacobian, an (m, n) array, at each accepted point.

    The solver runs eagerly in a background thread that waits for each answer, so the
    residuals can come from anywhere and take any time. Supported solvers are those that work
    from residuals and Jacobians alone: `LevenbergMarquardt` (without geodesic acceleration; its
    fallback rule runs without it too), `GaussNewton` and `HybridLMQN`.
    """

    def __init__(
        self,
        x0: ArrayLike,
        *,
        solver: AbstractSolver | None = None,
        max_steps: int = 1000,
        jacobian: str = "finite_differences",
    ):
        solver = LevenbergMarquardt() if solver is None else solver
        if not isinstance(solver, _ASK_TELL_SOLVERS) or getattr(solver, "geodesic_acceleration", None):
            raise ValueError(
                f"AskTell works with LevenbergMarquardt (without geodesic acceleration), GaussNewton and "
                f"HybridLMQN, which need only residuals and Jacobians; got {solver!r}."
            )
        if isinstance(solver, LevenbergMarquardt) and solver.fallback_acceleration is not None:
            # Geodesic acceleration differentiates the residuals, which only the user can evaluate.
            solver = dataclasses.replace(solver, fallback_acceleration=None)
        if jacobian not in ("finite_differences", "tell"):
            raise ValueError(f"jacobian must be 'finite_differences' or 'tell', got {jacobian!r}.")
        x0 = np.asarray(x0)
        if x0.ndim != 1 or not np.issubdtype(x0.dtype, np.floating):
            raise ValueError(
                f"AskTell needs x0 as a 1-D float array, got shape {x0.shape}, dtype {x0.dtype}."
            )
        self._requests: queue.Queue = queue.Queue()
        self._answers: queue.Queue = queue.Queue()
        self._pending: Request | None = None
        self._solution: Solution | None = None
        self._tell_jacobian = jacobian == "tell"
        self._thread = threading.Thread(
            target=self._solve, args=(solver, jnp.asarray(x0), max_steps), daemon=True
        )
        self._thread.start()

    # The user's side.

    @property
    def done(self) -> bool:
        """Whether the solve has finished (then `solution` holds the result)."""
        self._wait_for_request()
        return self._solution is not None

    def ask(self) -> Request:
        """The next point where the solver needs residuals (or the Jacobian)."""
        self._wait_for_request()
        if self._solution is not None:
            raise RuntimeError("The solve has finished: read AskTell.solution instead of asking.")
        return self._pending

    def tell(self, residuals: ArrayLike | None = None, *, jacobian: ArrayLike | None = None) -> None:
        """Answer the pending request: residuals (a 1-D array), or the Jacobian if it asked for one."""
        request = self.ask()
        answer = jacobian if request.jacobian else residuals
        if answer is None:
            wanted = "the Jacobian: tell(jacobian=...)" if request.jacobian else "residuals: tell(residuals)"
            raise ValueError(f"The pending request is for {wanted}.")
        self._pending = None
        self._answers.put(np.asarray(answer, dtype=request.x.dtype))

    @property
    def solution(self) -> Solution:
        if not self.done:
            raise RuntimeError("The solve has not finished: answer the requests from ask() first.")
        return self._solution

    def _wait_for_request(self):
        if self._pending is None and self._solution is None:
            kind, payload = self._requests.get()
            if kind == "request":
                self._pending = payload
            elif kind == "error":
                raise payload
            else:
                self._solution = payload

    # The solver's side, in the background thread.

    def _evaluate(self, x, jacobian: bool):
        self._requests.put(("request", Request(np.asarray(x), jacobian)))
        return jnp.asarray(self._answers.get())

    def _residual(self, x):
        return self._evaluate(x, jacobian=False)

    def _jacobian(self, x):
        if self._tell_jacobian:
            return self._evaluate(x, jacobian=True)
        residual = self._residual(x)  # the residuals at x are asked again: the solver does not cache
        steps = jnp.sqrt(jnp.finfo(x.dtype).eps) * jnp.maximum(jnp.abs(x), 1)
        columns = [(self._residual(x.at[i].add(steps[i])) - residual) / steps[i] for i in range(x.shape[0])]
        return jnp.stack(columns, axis=1)

    def _solve(self, solver, x0, max_steps):
        try:
            problem = Problem(self._residual, self._jacobian)
            with jax.disable_jit():  # run eagerly, so that lax.cond calls only the branch it takes
                state = first_state(solver, problem, x0)
                num_steps = jnp.array(0, jnp.int32)
                while int(state.status) == Status.RUNNING:
                    state, num_steps = next_state(solver, problem, state, num_steps, max_steps)
            solution = make_solution(state.x, state.cost, state.residual, state, num_steps, False, "AskTell")
            self._requests.put(("done", solution))
        except Exception as error:
            self._requests.put(("error", error))
