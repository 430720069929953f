"""`minimize`: a scalar cost for the Newton-type solvers, with the same loop, Solution and adjoints."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike, PyTree

from ._dispatch import call_compiled
from ._implicit import AbstractAdjoint
from ._least_squares import as_float_params, check_options
from ._loop import AbstractSolver, Problem, run
from ._solution import Solution, make_solution
from ._solver import DampedNewton


def minimize(
    fun: Callable[..., ArrayLike],
    x0: PyTree[ArrayLike],
    args: tuple = (),
    *,
    solver: AbstractSolver | None = None,
    max_steps: int = 1000,
    throw: bool = False,
    adjoint: AbstractAdjoint | None = None,
    trace: int = 0,
    verbose: bool = False,
) -> Solution:
    """Minimise a scalar cost `fun(params, *args)` with a Newton-type solver.

    For costs written as users write them (a mean squared error, a negative log-likelihood);
    the gradient and the exact Hessian come from JAX. `solver=None` means
    `jaxlm.DampedNewton()`; `jaxlm.NewtonRaphson()` also works. The solvers that need residuals
    (Levenberg–Marquardt, Gauss–Newton, the hybrid) belong to `least_squares`.

    Returns a `jaxlm.Solution` whose `cost` is `fun` at the solution and whose `residual` is an
    empty array. Everything else is as in `least_squares`: one jitted `lax.while_loop`, `vmap`,
    per-fit status, `throw`, `trace`, `verbose`, and gradients with respect to `args` through `adjoint`.
    """
    solver, adjoint = check_options(fun, args, solver, DampedNewton, max_steps, adjoint, trace)
    static = (fun, solver, int(max_steps), throw, adjoint, int(trace), bool(verbose))
    return call_compiled(_minimize, static, (as_float_params(x0), args), raises=throw, single_fit=True)


def _minimize(fun, solver, max_steps, throw, adjoint, trace_steps, verbose, x0, args) -> Solution:
    x_flat, unravel = ravel_pytree(x0)
    out = jax.eval_shape(lambda p: fun(p, *args), x0)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", jax.tree.structure(out))
        raise TypeError(
            f"fun must return a scalar cost, got {shape}; for residuals use jaxlm.least_squares, "
            "or reduce them, e.g. jnp.sum(r**2)."
        )
    if out.dtype != x_flat.dtype:
        raise TypeError(
            f"fun returned a cost of dtype {out.dtype} for parameters of dtype {x_flat.dtype}: use one dtype."
        )

    fun = eqx.filter_closure_convert(fun, x0, *args)
    inputs = (fun, args, x0, solver)

    def evaluate(x, inputs):
        fun, args, _, _ = inputs
        return fun(unravel(x), *args), jnp.zeros((0,), x.dtype)

    def primal(inputs, loop_kind):
        _, _, x0, solver = inputs
        problem = Problem(None, None, scalar_cost=lambda x: evaluate(x, inputs)[0])
        state, num_steps, trace = run(
            solver, problem, ravel_pytree(x0)[0], max_steps, loop_kind, trace_steps, verbose
        )
        return state.x, state.residual, state.cost, state, num_steps, trace

    x, r, cost, state, num_steps, trace = adjoint.apply(primal, evaluate, inputs)
    return make_solution(unravel(x), cost, r, state, num_steps, throw, "minimize", trace, unravel)
