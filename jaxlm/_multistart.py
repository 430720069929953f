"""`multistart`: many starts of one problem, solved at once with `vmap`; the best and all of them."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PyTree

from ._dispatch import call_compiled
from ._least_squares import least_squares
from ._solution import Solution


def multistart(
    fun: Callable[..., ArrayLike], starts: PyTree[ArrayLike], args: tuple = (), **options
) -> tuple[Solution, Solution]:
    """Solve `least_squares(fun, x0, args, **options)` from every start at once.

    Args:
        fun: the residual function, as for `least_squares`.
        starts: the starting points: the structure of one `x0` with a leading axis of starts
            (e.g. an array of shape (num_starts, n), or a dict of such arrays). Random starts
            are one line away: `x0 + scale * jax.random.normal(key, (num_starts, n))`.
        args, options: as for `least_squares` (solver, max_steps, jac, ...); the same data for
            every start.

    Returns:
        `(best, all_solutions)`: the converged solution with the lowest cost (or, if none
        converged, the one with the lowest finite cost), and the batch of all solutions.

    It is one jitted, vmapped solve, compiled once per `fun` and options (a later call with
    new starts or data of the same shapes reuses it): the starts cost about as much as one when
    the batch fits the machine, and a symmetric or unlucky start no longer decides the answer.
    """
    static = (fun, tuple(sorted(options.items())))
    return call_compiled(_multistart, static, (starts, args), raises=bool(options.get("throw", False)))


def _multistart(fun, options, starts, args) -> tuple[Solution, Solution]:
    solutions = jax.vmap(lambda x0: least_squares(fun, x0, args, **dict(options)))(starts)
    finite_cost = jnp.where(jnp.isfinite(solutions.cost), solutions.cost, jnp.inf)
    converged_cost = jnp.where(solutions.success, finite_cost, jnp.inf)
    best_index = jnp.where(jnp.any(solutions.success), jnp.argmin(converged_cost), jnp.argmin(finite_cost))
    best = jax.tree.map(lambda leaf: leaf[best_index], solutions)
    return best, solutions
