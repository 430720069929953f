"""`least_squares`: set up the flat problem, run the driver under `jit`, build the `Solution`."""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, PyTree

from ._chunked import ChunkedResiduals, chunk_of, split_data
from ._dispatch import call_compiled
from ._implicit import AbstractAdjoint, ImplicitAdjoint
from ._loop import AbstractSolver, Problem, run
from ._loss import Loss, check_loss, with_loss, with_loss_jacobian
from ._poisson import check_estimator, poisson_fun
from ._solution import Solution, make_solution
from ._solver import LevenbergMarquardt, MatrixFreeLM
from ._traceable import cannot_trace, untraceable_error


def least_squares(
    fun: Callable[..., ArrayLike],
    x0: PyTree[ArrayLike],
    args: tuple = (),
    *,
    solver: AbstractSolver | None = None,
    max_steps: int = 1000,
    jac: Callable[..., Any] | None = None,
    throw: bool = False,
    adjoint: AbstractAdjoint | None = None,
    trace: int = 0,
    verbose: bool = False,
    loss: Loss = "linear",
    f_scale: float = 1.0,
    bounds: tuple[Any, Any] | None = None,
    residual_chunk_size: int | None = None,
    estimator: str = "least_squares",
) -> Solution:
    """Minimise ½‖fun(params, *args)‖² over `params`, starting from `x0`.

    Args:
        fun: the residual function `fun(params, *args)`, returning an array of any shape.
        x0: the starting point: an array or any pytree of arrays (a dict, a tuple, ...).
        args: extra arguments passed to `fun` (data, hyperparameters). Pass data here rather
            than closing over it, so that one compiled solve serves every dataset.
        solver: the solver; `None` means `jaxlm.LevenbergMarquardt()`.
        max_steps: the most iterations (accepted and rejected steps) before stopping with
            status `MAX_STEPS`.
        jac: optional Jacobian `jac(params, *args)`: either a 2-D array of shape
            (number of residuals, number of parameters) with residuals and parameters
            flattened in `ravel_pytree` order, or the pytree that `jax.jacfwd(fun)` returns.
            By default `jax.jacfwd` is used when there are at least as many residuals as
            parameters, and `jax.jacrev` otherwise.
        throw: raise an error (also under `jit`) when the solve did not converge. By default
            failure is reported in `Solution.status` and `Solution.success`, so that one bad
            fit in a batch does not stop the others.
        adjoint: how derivatives of the solution with respect to `args` (and to arrays that
            `fun` closes over) are computed: `None` means `jaxlm.ImplicitAdjoint()`, the
            implicit function theorem at the solution with the exact Hessian (formed and
            eigendecomposed, or, for `MatrixFreeLM`, never formed: CG on its products);
            `jaxlm.UnrolledAdjoint()` differentiates through the iterations instead.
        trace: record the start and the first `trace` steps (cost, gradient norm, damping,
            radius, step kind, acceptance, parameters) in `Solution.trace`, a `jaxlm.Trace` of
            fixed-size buffers that survives `jit` and `vmap`. 0 (the default) records nothing.
        verbose: print one line per iteration (cost, ‖g‖∞, μ or Δ, step kind, accepted), also
            under `jit`; under `vmap` one line per iteration for the whole batch (fits running,
            converged and failed, worst cost).
        loss: "linear" (least squares, the default) or a robust loss that limits the pull of
            outliers: "soft_l1", "huber", "cauchy" or "arctan", as defined by
            `scipy.optimize.least_squares`, or scipy's callable `loss(z)` returning the (3, m)
            array of ρ(z), ρ'(z), ρ''(z); the cost is then ½·f_scale²·Σ ρ((rᵢ/f_scale)²).
        f_scale: the residual size where a robust loss departs from least squares.
        bounds: box constraints `(lower, upper)` with lower ≤ params ≤ upper (LevenbergMarquardt
            only): each a scalar, a flat array of all parameters, or a pytree like `x0`; ±inf
            for no bound; lower = upper holds a parameter fixed. A parameter that ends at a
            bound the cost pushes against is pinned: its derivative with respect to `args` is 0.
        residual_chunk_size: for fits with very many residuals (10⁵ and more) and few parameters
            (LevenbergMarquardt only): evaluate the residuals and their Jacobian `residual_chunk_size`
            data points at a time and accumulate JᵀJ, Jᵀr and ½‖r‖² over the chunks, so that
            the m × n Jacobian is never stored: besides the data and the residuals returned in
            the solution, the solve needs memory for one chunk (residual_chunk_size × n) only. The data
            points are the leading axis of the residuals that `fun` returns, of length m;
            every array in `args` whose leading axis has length m is split along it into
            chunks (x, y, weights, ...), and everything else in `args` is passed whole to every
            chunk. So `fun` must compute each data point's residuals from that point's rows
            alone, and take its data from `args`, not from a closure (a fit whose residuals
            change with the other points of a chunk stops at the start with status
            `COUPLED_DATA_POINTS`). When residual_chunk_size does not divide m, the last chunk
            is the last residual_chunk_size rows, with the rows already counted masked out; a
            residual_chunk_size ≥ m makes one chunk. The solution equals that of the plain
            solve to rounding, except where the normal equations are nearly singular: the
            fallback there, the SVD of J, becomes an eigendecomposition of JᵀJ, whose accuracy
            depends on cond(J)² instead of cond(J). 10⁴–10⁵ is a good size (and with fewer
            memory passes the solve is also faster, see benchmarks/README.md). Derivatives
            through the solve (`ImplicitAdjoint()`) are evaluated chunk by chunk too, but
            `ImplicitAdjoint(hessian="gauss_newton")` forms J. `None` (the default) forms the
            whole Jacobian.
        estimator: "least_squares" (the default), or "poisson" for counts: `fun(params, *args)`
            returns the pair (model values, counts) and the solve maximises the Poisson
            likelihood (Gpufit's MLE estimator): it minimises ½‖r̂‖² over the deviance residuals
            r̂ = `jaxlm.poisson_residual(model, counts)`, which are the solution's `residual` (flat),
            and `cost` is the negative log-likelihood less its constant. A model ≤ 0 where a
            count is > 0 has no likelihood: a start there stops with `NONFINITE_START`.

    Returns:
        A `jaxlm.Solution`. The whole solve is one `lax.while_loop` inside `jit`; it can be
        `jax.vmap`ped over data and starting points, and every fit gets its own status.
    """
    solver, adjoint = check_options(fun, args, solver, LevenbergMarquardt, max_steps, adjoint, trace)
    if jac is not None and not callable(jac):
        raise TypeError(f"jac must be None or callable as jac(params, *args), got {jac!r}.")
    check_estimator(estimator, loss, jac)
    x0 = as_float_params(x0)
    bounds = flat_bounds(bounds, x0)
    check_loss_and_bounds(loss, f_scale, jac, bounds, solver)
    f_scale = as_array(f_scale, jnp.result_type(*jax.tree.leaves(x0)))
    check_chunk_size(residual_chunk_size, solver)
    fun = poisson_fun(fun) if estimator == "poisson" else fun
    static = (
        fun,
        solver,
        int(max_steps),
        jac,
        throw,
        adjoint,
        int(trace),
        loss,
        bool(verbose),
        None if residual_chunk_size is None else int(residual_chunk_size),
    )
    return call_compiled(_least_squares, static, (x0, args, f_scale, bounds), raises=throw, single_fit=True)


def check_loss_and_bounds(loss, f_scale, jac, bounds, solver) -> None:
    """The checks of a robust loss and of bounds (flat, or None) that `least_squares` and
    `least_squares_batch` share."""
    del jac  # a Jacobian of the model works with every loss (see `with_loss_jacobian`)
    check_loss(loss, f_scale)
    if bounds is not None and not isinstance(solver, LevenbergMarquardt):
        raise ValueError(
            f"bounds are supported by LevenbergMarquardt only, not {type(solver).__name__}: use "
            "solver=jaxlm.LevenbergMarquardt(), or reparametrise the bounded parameters."
        )


def check_chunk_size(residual_chunk_size, solver) -> None:
    if residual_chunk_size is None:
        return
    if (
        isinstance(residual_chunk_size, bool)
        or not isinstance(residual_chunk_size, (int, np.integer))
        or residual_chunk_size < 1
    ):
        raise ValueError(
            "residual_chunk_size must be a positive integer (a number of data points per chunk, "
            f"e.g. 10_000) or None, got {residual_chunk_size!r}."
        )
    if not isinstance(solver, LevenbergMarquardt):
        raise ValueError(
            f"residual_chunk_size is supported by LevenbergMarquardt only, not {type(solver).__name__}: "
            "use solver=jaxlm.LevenbergMarquardt() (the default), or drop residual_chunk_size."
        )


def check_chunks(fun, x0, args, residual_shape, residual_chunk_size) -> tuple:
    """Checks that `fun` can be evaluated in chunks of data points; returns the arguments of one
    chunk, to trace `fun` with."""
    if len(residual_shape) == 0:
        raise ValueError(
            "residual_chunk_size needs residuals with a leading axis over the data points, but fun "
            "returned a scalar: return one residual per data point."
        )
    num_rows = residual_shape[0]
    size = min(residual_chunk_size, num_rows)
    data, rest = split_data(args, num_rows)
    if not jax.tree.leaves(data):
        raise ValueError(
            "residual_chunk_size splits the arrays in args whose leading axis has the length of the "
            f"residuals' leading axis ({num_rows}), but no array in args has it: pass the per-point "
            "data (x, y, weights, ...) in args instead of closing over it."
        )
    example = chunk_of(data, rest, 0, size)
    expected = (size, *residual_shape[1:])
    message = (
        "with residual_chunk_size, fun must compute the residuals of each data point from that point's "
        "rows of the data in args alone: pass all per-point data in args (not in a closure), with the data "
        f"points along the leading axis. On a chunk of {size} rows, expecting residuals of shape {expected}, "
    )
    try:
        chunk_shape = jax.eval_shape(lambda p: fun(p, *example), x0).shape
    except (TypeError, ValueError) as error:
        raise ValueError(message + f"fun failed with: {error}") from error
    if chunk_shape != expected:
        raise ValueError(message + f"it returned residuals of shape {chunk_shape}.")
    return example


def flat_bounds(bounds, x0) -> tuple[Array, Array] | None:
    """(lower, upper) as flat arrays in `ravel_pytree` order, checked; None when unbounded."""
    if bounds is None:
        return None
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise TypeError(f"bounds must be a pair (lower, upper), got {bounds!r}.")
    x_flat, _ = ravel_pytree(x0)
    n = x_flat.size

    def flat(bound, name):
        shape_error = ValueError(
            f"the {name} bound does not match the parameters: use a scalar, an array of all {n} "
            "parameters, or a pytree with the structure of x0."
        )
        if jax.tree.structure(bound) == jax.tree.structure(x0):
            try:
                leaves = [
                    jnp.broadcast_to(jnp.asarray(b, x_flat.dtype), jnp.shape(leaf))
                    for b, leaf in zip(jax.tree.leaves(bound), jax.tree.leaves(x0), strict=True)
                ]
            except ValueError:
                raise shape_error from None
            return jnp.concatenate([jnp.ravel(b) for b in leaves])
        if np.ndim(bound) == 0:
            return jnp.full((n,), bound, x_flat.dtype)
        bound = jnp.asarray(bound, x_flat.dtype)
        if bound.shape != (n,):
            raise shape_error
        return bound

    lower, upper = flat(bounds[0], "lower"), flat(bounds[1], "upper")
    return None if check_box(lower, upper, x_flat, "x0") else (lower, upper)


def check_box(lower, upper, start, name: str) -> bool:
    """Errors for lower > upper or a start outside the box; whether there are no bounds at all.

    Only concrete values can be checked: under tracing the box is taken as given (and bounded).
    """
    if any(isinstance(v, jax.core.Tracer) for v in (lower, upper, start)):
        return False
    lower, upper, start = np.asarray(lower), np.asarray(upper), np.asarray(start)
    if np.any(np.isnan(lower)) or np.any(np.isnan(upper)) or np.any(lower > upper):
        raise ValueError("bounds must satisfy lower <= upper (and not be NaN) for every parameter.")
    if np.any(start < lower) or np.any(start > upper):
        raise ValueError(
            f"Initial guess is outside of provided bounds: {name} is outside the bounds; start from a "
            f"point with lower <= {name} <= upper."
        )
    return bool(np.all(lower == -np.inf) and np.all(upper == np.inf))


@functools.cache
def default_instance(module_type, **fields):
    """One instance per default solver or adjoint, shared by every call: Equinox modules are
    immutable, and an eager call that built its defaults anew (running their checks) spent tens
    of µs on it."""
    return module_type(**fields)


def check_options(fun, args, solver, default_solver_type, max_steps, adjoint, trace):
    """The checks `least_squares` and `minimize` share; returns the solver and adjoint to use."""
    solver = default_instance(default_solver_type) if solver is None else solver
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"solver must be a jaxlm solver such as jaxlm.{default_solver_type.__name__}(), got {solver!r}."
        )
    if not callable(fun):
        raise TypeError(f"fun must be callable as fun(params, *args), got {fun!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(
            f"max_steps must be an integer >= 0 (0 evaluates the start only), got {max_steps!r}."
        )
    if isinstance(trace, bool) or not isinstance(trace, (int, np.integer)) or trace < 0:
        raise ValueError(
            f"trace must be a number of steps to record (an int >= 0; 0 records nothing), got {trace!r}."
        )
    if not isinstance(args, tuple):
        raise TypeError(
            f"args must be a tuple of extra arguments for fun, got {type(args).__name__}; "
            "for a single argument write args=(value,)."
        )
    if adjoint is not None and not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            f"adjoint must be jaxlm.ImplicitAdjoint() or jaxlm.UnrolledAdjoint(), got {adjoint!r}."
        )
    if adjoint is None or (isinstance(adjoint, ImplicitAdjoint) and adjoint.linear_solver == "auto"):
        # A matrix-free solver is used where H cannot be formed: its derivative must not form it either.
        linear_solver = "cg" if isinstance(solver, MatrixFreeLM) else "eigh"
        if adjoint is None:
            adjoint = default_instance(ImplicitAdjoint, linear_solver=linear_solver)
        else:
            adjoint = dataclasses.replace(adjoint, linear_solver=linear_solver)
    return solver, adjoint


def as_array(value, dtype=None):
    """`value` as an array of `dtype` (by default its own, as JAX would store it): data, or a
    scalar option (f_scale) that `jit` should trace rather than compile anew for every value.
    A JAX array or tracer (when differentiated) stays a JAX array; anything else becomes a NumPy
    array, which a jitted call takes as it is: converting it eagerly with `jnp.asarray` costs
    10–40 µs per array and call."""
    if isinstance(value, jax.Array):
        return jnp.asarray(value, dtype)
    value = np.asarray(value, dtype)
    return value.astype(jax.dtypes.canonicalize_dtype(value.dtype), copy=False)


def as_float_params(x0):
    leaves = jax.tree.leaves(x0)
    if not leaves:
        raise ValueError("x0 has no parameters: pass an array or a pytree of arrays.")

    def to_float(leaf):
        leaf = as_array(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            raise TypeError(
                "x0 is complex; jaxlm solves real least-squares problems: "
                "split it into real and imaginary parts."
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf = leaf.astype(jnp.result_type(float))
        if not isinstance(leaf, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError("x0 contains NaN or inf: start from finite values.")
        return leaf

    return jax.tree.map(to_float, x0)


def check_residuals(fun, x0, args) -> jax.ShapeDtypeStruct:
    """The shape and dtype of fun's residuals, with an error that says what to do if they are wrong."""
    dtype = ravel_pytree(x0)[0].dtype
    try:
        out = jax.eval_shape(lambda p: fun(p, *args), x0)
    except Exception as error:
        if cannot_trace(error):
            raise untraceable_error("fun", error) from error
        raise
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"fun must return one array of residuals, got {jax.tree.structure(out)}; "
            "concatenate the parts, e.g. jnp.concatenate([r1.ravel(), r2.ravel()])."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"fun returned residuals of dtype {out.dtype}; they must be floating point "
            f"({dtype}, the dtype of x0). Check that the model does not round or compare."
        )
    if out.dtype != dtype:
        raise TypeError(
            f"fun returned residuals of dtype {out.dtype} for parameters of dtype {dtype}. "
            f"Use one dtype: cast the data in args (or x0) so that both are {dtype} or both {out.dtype}."
        )
    if out.size == 0:
        raise ValueError("fun returned no residuals (an empty array): check the data passed in args.")
    return out


def build_problem(
    fun, jac, args, x0, residual_shape, bounds=None, residual_chunk_size=None, elementwise_sums=False
) -> Problem:
    """The flat problem the solvers see: residuals and Jacobian as functions of a flat vector
    (or, with a residual_chunk_size, those of chunks of the data points)."""
    x_flat, unravel = ravel_pytree(x0)
    lower, upper = (None, None) if bounds is None else bounds
    if residual_chunk_size is not None:
        chunks = chunked_residuals(fun, jac, args, x0, residual_shape, residual_chunk_size)
        return Problem(None, None, lower=lower, upper=upper, chunks=chunks)

    def residual(x):
        return jnp.ravel(fun(unravel(x), *args))

    if jac is None:
        num_residuals = int(np.prod(residual_shape))
        jacobian = (jax.jacfwd if num_residuals >= x_flat.size else jax.jacrev)(residual)
    else:
        user_jacobian = _user_jacobian(jac, unravel, x0, residual_shape, x_flat.dtype)

        def jacobian(x):
            return user_jacobian(x, args)

    return Problem(residual, jacobian, lower=lower, upper=upper, elementwise_sums=elementwise_sums)


def chunked_residuals(fun, jac, args, x0, residual_shape, residual_chunk_size) -> ChunkedResiduals:
    x_flat, unravel = ravel_pytree(x0)
    num_rows = residual_shape[0]
    size = min(residual_chunk_size, num_rows)
    data, rest = split_data(args, num_rows)

    def rows(x, start):
        return fun(unravel(x), *chunk_of(data, rest, start, size))

    rows_jacobian = None
    if jac is not None:
        chunk_shape = (size, *residual_shape[1:])
        user_jacobian = _user_jacobian(jac, unravel, x0, chunk_shape, x_flat.dtype)

        def rows_jacobian(x, start):
            return user_jacobian(x, chunk_of(data, rest, start, size))

    return ChunkedResiduals(rows, rows_jacobian, num_rows, size)


def _least_squares(
    fun,
    solver,
    max_steps,
    jac,
    throw,
    adjoint,
    trace_steps,
    loss,
    verbose,
    residual_chunk_size,
    x0,
    args,
    f_scale,
    bounds,
    on_step=None,
) -> Solution:
    out = check_residuals(fun, x0, args)
    # With chunks, fun and jac are called on the arguments of one chunk.
    example_args = (
        args if residual_chunk_size is None else check_chunks(fun, x0, args, out.shape, residual_chunk_size)
    )
    unravel = ravel_pytree(x0)[1]
    model_residual = fun
    fun = with_loss(model_residual, loss, f_scale)
    jac = with_loss_jacobian(model_residual, jac, loss, f_scale)
    # Arrays that fun or jac close over (tracers of an outer jax.grad, say) become explicit
    # inputs, so that derivatives with respect to them flow through the adjoint like args.
    fun = eqx.filter_closure_convert(fun, x0, *example_args)
    if jac is not None:
        jac = eqx.filter_closure_convert(jac, x0, *example_args)
    inputs = (fun, jac, args, x0, solver, bounds)

    def evaluate(x, inputs):
        fun, jac, args, x0, *_ = inputs
        if residual_chunk_size is not None:
            chunks = chunked_residuals(fun, jac, args, x0, out.shape, residual_chunk_size)
            return chunks.cost(x), jnp.ravel(chunks.residual(x))
        r = jnp.ravel(fun(unravel(x), *args))
        return 0.5 * jnp.sum(r**2), r

    def primal(inputs, loop_kind):
        fun, jac, args, x0, solver, bounds = inputs
        problem = build_problem(fun, jac, args, x0, out.shape, bounds, residual_chunk_size)
        x0 = problem.project(ravel_pytree(x0)[0])  # only a traced x0 can be outside: checked before
        state, num_steps, trace = run(
            solver, problem, x0, max_steps, loop_kind, trace_steps, verbose, on_step
        )
        # A chunked solve keeps no residuals in its state: they are evaluated once, at the end.
        residual = state.residual if problem.chunks is None else problem.chunks.residual(state.x)
        return state.x, residual, state.cost, state, num_steps, trace

    x, r, cost, state, num_steps, trace = adjoint.apply(primal, evaluate, inputs, bounds)
    if loss != "linear":  # report the model's residuals, not the solver's rescaled ones
        r = model_residual(unravel(x), *args)
    return make_solution(
        unravel(x), cost, r.reshape(out.shape), state, num_steps, throw, "least_squares", trace, unravel
    )


def _user_jacobian(jac, unravel, x0, residual_shape, dtype):
    num_residuals = int(np.prod(residual_shape))
    leaves = jax.tree.leaves(x0)
    num_params = sum(leaf.size for leaf in leaves)
    expected = (
        f"a 2-D array of shape ({num_residuals}, {num_params}) or the pytree of jax.jacfwd(fun), "
        f"with leaves of shape residual shape {tuple(residual_shape)} + parameter shape"
    )

    def jacobian(x, args):
        params = unravel(x)
        out = jac(params, *args)
        out_leaves = jax.tree.leaves(out)
        if isinstance(out, jax.Array | np.ndarray) and out.shape == (num_residuals, num_params):
            matrix = out
        elif jax.tree.structure(out) == jax.tree.structure(x0) and all(
            o.shape == tuple(residual_shape) + leaf.shape for o, leaf in zip(out_leaves, leaves, strict=True)
        ):
            matrix = jnp.concatenate([o.reshape(num_residuals, -1) for o in out_leaves], axis=1)
        else:
            shapes = jax.tree.map(lambda o: getattr(o, "shape", type(o).__name__), out)
            raise ValueError(f"jac returned shapes {shapes}; expected {expected}.")
        matrix = jnp.asarray(matrix)
        if matrix.dtype != dtype:
            raise TypeError(f"jac returned dtype {matrix.dtype}; expected {dtype}, the dtype of x0.")
        return matrix

    return jacobian
