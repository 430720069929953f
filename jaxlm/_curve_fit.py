"""`curve_fit`: scipy's interface for fitting a model to data, batched, jittable and differentiable.

The fit minimises ½‖W(f(x, p) − y)‖², where W whitens the data: W = diag(1/σ) for standard
deviations σ, W = L⁻¹ for a covariance matrix Σ = LLᵀ (its Cholesky factor), W = I without
sigma. The covariance of the parameters is the one scipy reports (`scipy.optimize.curve_fit`):

    pcov = (JᵀJ)⁻¹ · s²,    s² = Σ r̂ᵢ² / (m − n)    (s² = 1 with absolute_sigma=True),

with J the Jacobian of the whitened residuals at the solution (for a robust loss, scipy's
rescaled J̃ = diag(√(ρ' + 2ρ''z))·J and Σ r̂ᵢ² = 2·cost), computed from the SVD of J. When J is
rank-deficient (a singular value below min(eps·max(m, n), √eps)·s_max: scipy's threshold, capped
so that float32 fits of 10⁶ points and more are not all called singular), or when m ≤ n and
the variance is estimated from the data, pcov is inf in every entry, as scipy gives it.
Parameters held fixed, or pinned at a bound that the data push against, are held in J (their
columns dropped): their rows and columns of pcov are NaN and n counts only the varied ones.

Points can be left out without changing shapes (which `vmap` needs): `mask=False`, `sigma=inf`
and `nan_policy="omit"` give them weight 0, and m counts only the points that remain.

With `residual_chunk_size` (10⁶ points and more) neither the fit nor pcov forms J: the fit
accumulates JᵀJ and Jᵀr over chunks of points (see `_chunked.py`), and pcov comes from the
triangular factor R of J = QR, updated chunk by chunk as R ← R of [R; J_c] (the sequential form
of a tall-skinny QR: Demmel, Grigori, Hoemmen, Langou, "Communication-optimal parallel and
sequential QR and LU factorizations", SIAM J. Sci. Comput. 34(1), 2012). R has the singular
values and right singular vectors of J, so pcov is the one J gives, to rounding, without
squaring J's condition number as JᵀJ would.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, ArrayLike

from ._chunked import ChunkedResiduals, chunk_of, split_data
from ._dispatch import call_compiled
from ._implicit import AbstractAdjoint
from ._least_squares import (
    _least_squares,
    as_array,
    check_box,
    check_chunk_size,
    check_options,
    chunked_residuals,
)
from ._linear import rank_tolerance
from ._loop import AbstractSolver, pinned_free
from ._loss import Loss, check_loss, robust_jacobian_weights, robust_residual, with_loss
from ._solver import LevenbergMarquardt

NAN_POLICIES = (None, "raise", "omit", "propagate")


def curve_fit(
    f: Callable[..., ArrayLike],
    xdata: Any,
    ydata: ArrayLike,
    p0: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds=(-np.inf, np.inf),
    method: str | None = None,
    jac: Callable[..., ArrayLike] | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    mask: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    fixed: ArrayLike | None = None,
    loss: Loss = "linear",
    f_scale: float = 1.0,
    solver=None,
    max_steps: int = 1000,
    verbose: bool = False,
    residual_chunk_size: int | None = None,
):
    """Fit `f(xdata, *params)` to `ydata`, with the semantics of `scipy.optimize.curve_fit`.

    Args:
        f: the model `f(x, p1, p2, ...)`, written with jax.numpy; returns an array of the
            shape of one dataset.
        xdata: the independent variable: an array, or anything `f` accepts (a tuple of arrays).
        ydata: the data, of the shape `f` returns; or a batch of datasets with a leading batch
            axis, fitted all at once (one compiled, vmapped solve).
        p0: the starting values (length n; or one row per dataset of a batch). Without it, all
            ones, with n taken from `f`'s signature.
        sigma: the uncertainties of `ydata`: standard deviations of the shape of `ydata` (or of
            one dataset, shared by the batch), or for 1-D data an m × m covariance matrix (or
            one per dataset). inf gives a point weight 0.
        absolute_sigma: if True, sigma is in absolute units and pcov is (JᵀJ)⁻¹; if False
            (scipy's default) only the relative sizes of sigma matter and pcov is scaled by the
            reduced χ².
        check_finite: raise if the data contain NaN or inf (default: True unless nan_policy is
            "omit" or "propagate"). Only checked for concrete data (outside `jit`/`vmap`).
        bounds: box constraints `(lower, upper)`, each a scalar or an array of length n, as in
            scipy (LevenbergMarquardt only; the steps are projected onto the box). A parameter
            that ends at a bound the data push against is pinned there: its row and column of
            pcov are NaN (it has no covariance), the others are those of the free parameters
            with the pinned ones held, and its derivative is 0.
        method: None or "lm" (jaxlm's Levenberg–Marquardt, or `solver`).
        jac: the Jacobian of `f`: `jac(x, *params)` of shape (m, n), as in scipy.
        full_output: also return `infodict`, `mesg` and `ier`, as scipy does.
        nan_policy: None or "raise" (an error for NaN in the data), "omit" (leave those points
            out: weight 0), "propagate" (fit anyway; the fit then reports a non-finite status).
        mask: booleans of the shape of `ydata`: False leaves a point out (datasets of different
            lengths in one batch).
        weights: instead of sigma, lmfit's weights wᵢ = 1/σᵢ that multiply the residuals
            (0 leaves a point out); pcov is scaled by the reduced χ² unless absolute_sigma.
        fixed: booleans of length n: True holds that parameter at its value in p0 (lmfit's
            `vary=False`); it is left out of pcov (NaN) and of the degrees of freedom.
        loss, f_scale: a robust loss, as in `scipy.optimize.least_squares`.
        solver, max_steps, verbose: as for `jaxlm.least_squares`.
        residual_chunk_size: for data with very many points (10⁶ and more; LevenbergMarquardt
            only): evaluate the model `residual_chunk_size` points at a time, so that the
            Jacobian (points × parameters) is never stored, neither in the fit nor for pcov
            (see `jaxlm.least_squares`). The points are the first axis of `ydata` (of one
            dataset); every array in `xdata` with the points along its first axis (or, as
            scipy's (k, M) `xdata`, along its last) is split with them, so `f` must compute
            each point's value from that point's x alone (a fit whose model couples the
            points stops at the start with status `COUPLED_DATA_POINTS`). sigma must be
            standard deviations (or weights), not a covariance matrix. The result is that of
            the plain fit, to rounding. 10⁴–10⁵ is a good size.

    Returns:
        `(popt, pcov)`, with a leading batch axis for a batch; with `full_output`,
        `(popt, pcov, infodict, mesg, ier)`, where `infodict` has `fvec` (the whitened
        residuals), `nfev`, `njev`, `num_steps`, `status`, `success`, `covariance_singular`
        (True where pcov is inf), `num_points` and `num_varied` (the points and parameters
        that count in the degrees of freedom), `r_squared` and `solution` (the
        `jaxlm.Solution`); `mesg` is the status message (None under `jit`: use
        `jaxlm.Status(int(ier)).message` outside) and `ier` the `jaxlm.Status` code.

    Failure does not raise (a batch goes on when one fit fails): check `infodict["success"]`.
    """
    if method not in (None, "lm"):
        raise ValueError(f"method must be None or 'lm' (jaxlm's solvers; see solver=), got {method!r}.")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}.")
    check_loss(loss, f_scale)
    if jac is not None and loss != "linear":
        raise ValueError("jac with a robust loss is not supported: drop jac (JAX differentiates f).")
    if jac is not None and not callable(jac):
        raise TypeError(f"jac must be callable as jac(x, *params), got {jac!r}.")

    ydata = as_array(ydata)
    if not jnp.issubdtype(ydata.dtype, jnp.floating):
        ydata = ydata.astype(jnp.result_type(float))
    dtype = ydata.dtype
    if ydata.size == 0:
        raise ValueError("ydata is empty: there is nothing to fit; check how the data were loaded.")
    if isinstance(xdata, list):  # scipy's array_like: [0.0, 0.5, 1.0, ...] is one array, not a pytree
        try:
            xdata = np.asarray(xdata)
        except ValueError:  # ragged: leave it a list of arrays
            pass
    xdata = jax.tree.map(lambda leaf: _as_float(leaf, dtype), xdata)
    num_params = _num_params(f, p0)
    p0 = np.ones(num_params, dtype) if p0 is None else as_array(p0, dtype)

    single_p0 = p0 if p0.ndim == 1 else p0[0]
    model_shape = _model_shape(f, xdata, single_p0)
    if ydata.shape == model_shape:
        batch = None
    elif ydata.shape[1:] == model_shape:
        batch = ydata.shape[0]
    else:
        raise ValueError(
            f"f(xdata, *p0) has shape {model_shape} but ydata has shape {ydata.shape}: they must match "
            "(or ydata may have one extra leading axis, a batch of datasets)."
        )
    if p0.ndim != 1 and not (batch is not None and p0.shape == (batch, num_params)):
        raise ValueError(
            f"p0 must have shape ({num_params},), or ({batch}, {num_params}) for a batch; got {p0.shape}."
        )

    if check_finite is None:
        check_finite = nan_policy not in ("omit", "propagate")
    if check_finite or nan_policy == "raise":
        for name, value in (("ydata", ydata), *(("xdata", leaf) for leaf in jax.tree.leaves(xdata))):
            if not isinstance(value, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(value))):
                raise ValueError(
                    f"{name} contains NaN or inf: remove those points, or pass nan_policy='omit' to "
                    "leave them out of the fit (or 'propagate' to fit anyway)."
                )

    if weights is not None:
        if sigma is not None:
            raise ValueError("pass sigma or weights (= 1/sigma), not both.")
        weights = jnp.asarray(weights, dtype)
        if not isinstance(weights, jax.core.Tracer) and not np.all(np.asarray(weights) >= 0):
            raise ValueError("weights must be >= 0 (1/sigma; 0 leaves a point out).")
        sigma = jnp.where(weights > 0, 1 / jnp.where(weights > 0, weights, 1), jnp.inf)
    weights, factor = _whitening(sigma, ydata, model_shape, batch, dtype)
    keep = None if mask is None else _as_mask(mask, ydata.shape)
    if nan_policy == "omit":
        keep = jnp.ones(ydata.shape, bool) if keep is None else keep
        keep = keep & jnp.isfinite(ydata)
        for leaf in jax.tree.leaves(xdata):
            if jnp.shape(leaf) == model_shape:
                keep = keep & jnp.isfinite(leaf)
    if factor is not None and (mask is not None or nan_policy == "omit"):
        raise ValueError(
            "mask and nan_policy='omit' work with 1-D sigma only: with a covariance matrix, leaving "
            "points out changes the covariance of the others; pass the covariance of the kept points."
        )
    if keep is not None:  # a mask or nan_policy="omit": the points left out get weight 0
        ydata = jnp.where(keep, ydata, 0)
        weights = jnp.where(keep, 1 if weights is None else weights, 0).astype(dtype)

    solver, adjoint = check_options(f, (), solver, LevenbergMarquardt, max_steps, None, 0)
    points_last = None
    if residual_chunk_size is not None:
        check_chunk_size(residual_chunk_size, solver)
        if factor is not None:
            raise ValueError(
                "residual_chunk_size needs sigma as standard deviations (or weights), not a covariance "
                "matrix: a covariance couples the points, so they cannot be fitted in chunks."
            )
        xdata, points_last = _points_first(xdata, model_shape[0])
        _check_model_on_a_chunk(f, xdata, points_last, single_p0, model_shape, residual_chunk_size)
        residual_chunk_size = int(residual_chunk_size)
    box = _box(bounds, fixed, p0, num_params, dtype)
    if box is not None and not isinstance(solver, LevenbergMarquardt):
        raise ValueError(
            f"bounds and fixed parameters need LevenbergMarquardt, not {type(solver).__name__}: use "
            "solver=jaxlm.LevenbergMarquardt() (the default)."
        )
    options = _FitOptions(
        f,
        jac,
        loss,
        bool(absolute_sigma),
        solver,
        adjoint,
        int(max_steps),
        bool(verbose),
        residual_chunk_size,
        points_last,
    )
    f_scale = as_array(f_scale, dtype)
    axes = None
    if batch is not None:
        axes = (0, _batch_axis(weights, ydata.ndim), _batch_axis(factor, 3), 0 if p0.ndim == 2 else None)
    outputs = call_compiled(
        _fit_outputs,
        (options, axes, full_output),
        (xdata, ydata, weights, factor, p0, f_scale, box),
        single_fit=batch is None,
    )
    if not full_output:
        return outputs
    popt, pcov, (solution, statistics) = outputs
    infodict = {
        "fvec": solution.residual,
        "nfev": solution.num_fev,
        "njev": solution.num_jev,
        "num_steps": solution.num_steps,
        "status": solution.status,
        "success": solution.success,
        **statistics,
        "solution": solution,
    }
    traced = isinstance(solution.status, jax.core.Tracer)
    return popt, pcov, infodict, None if traced else solution.message, solution.status


class _FitOptions(NamedTuple):
    """What `_fit` compiles in (a tuple, not an Equinox module: it is built on every call, and a
    module took 30 µs to build)."""

    f: Callable
    jac: Callable | None
    loss: str
    absolute_sigma: bool
    solver: AbstractSolver
    adjoint: AbstractAdjoint
    max_steps: int
    verbose: bool
    residual_chunk_size: int | None
    # For each leaf of xdata, whether `_points_first` moved its last axis (the points) to the front.
    points_last: tuple[bool, ...] | None


def _fit_outputs(options, axes, full_output, xdata, ydata, weights, factor, p0, f_scale, box):
    """`_fit`, vmapped over `axes` for a batch of datasets; (popt, pcov) only unless `full_output`
    (fewer arrays to hand back to Python after an eager call)."""

    def one(ydata, weights, factor, p0):
        return _fit(options, xdata, ydata, weights, factor, p0, f_scale, box)

    if axes is not None:
        one = jax.vmap(one, axes)
    outputs = one(ydata, weights, factor, p0)
    return outputs if full_output else outputs[:2]


def _fit(options, xdata, ydata, weights, factor, p0, f_scale, box):
    f, model_jac, chunk_size = options.f, options.jac, options.residual_chunk_size

    def whiten(difference, weights):
        if factor is not None:
            return solve_triangular(factor, difference, lower=True)
        if weights is not None:
            return jnp.where(weights > 0, weights * difference, 0)
        return difference

    def model_x(xdata):  # xdata as f takes it (with chunks: one chunk's points)
        return xdata if options.points_last is None else _move_axis(xdata, options.points_last, 0, -1)

    # The data are arguments, not closed over, so that a chunked fit can split them into chunks.
    def residual(params, xdata, ydata, weights):
        return whiten(f(model_x(xdata), *unpack(params)) - ydata, weights)

    jac = None
    if model_jac is not None:

        def jac(params, xdata, ydata, weights):
            matrix = jnp.asarray(model_jac(model_x(xdata), *unpack(params))).reshape(ydata.size, params.size)
            if factor is not None:
                return solve_triangular(factor, matrix, lower=True)
            if weights is not None:
                return jnp.where(weights.reshape(-1, 1) > 0, weights.reshape(-1, 1) * matrix, 0)
            return matrix

    bounds = None
    if box is not None:
        lower, upper, fixed = box
        bounds = (jnp.where(fixed, p0, lower), jnp.where(fixed, p0, upper))
    data = (xdata, ydata, weights)
    solution = _least_squares(
        residual,
        x0=p0,
        args=data,
        solver=options.solver,
        max_steps=options.max_steps,
        jac=jac,
        throw=False,
        adjoint=options.adjoint,
        trace_steps=0,
        loss=options.loss,
        f_scale=f_scale,
        bounds=bounds,
        verbose=options.verbose,
        residual_chunk_size=chunk_size,
    )
    popt = solution.params
    whitened = solution.residual.ravel()  # the (whitened) model residuals at popt
    if chunk_size is None:
        jacobian = jax.jacfwd(lambda p: residual(p, *data).ravel())(popt)
        if options.loss != "linear":
            jacobian = robust_jacobian_weights(whitened, options.loss, f_scale)[:, None] * jacobian

        def cost(params):
            return 0.5 * jnp.sum(robust_residual(residual(params, *data), options.loss, f_scale) ** 2)

    else:  # R of J = QR in place of J (the same singular values and right singular vectors)
        chunks = chunked_residuals(residual, None, data, popt, ydata.shape, chunk_size)
        jacobian = _r_factor(chunks, popt, options.loss, f_scale)
        robust = with_loss(residual, options.loss, f_scale)
        cost = chunked_residuals(robust, None, data, popt, ydata.shape, chunk_size).cost
    num_points = whitened.size if weights is None else jnp.sum(weights > 0)
    free = jnp.ones(popt.shape, bool)
    if bounds is not None:
        free = pinned_free(popt, jax.grad(cost)(popt), *bounds)
    pcov, singular = _covariance(
        jacobian, whitened.size, 2 * solution.cost, num_points, options.absolute_sigma, free
    )
    solution = eqx.tree_at(lambda s: s.residual, solution, whitened)
    # R² = 1 − χ²/χ²₀ with χ²₀ that of the (weighted) mean of the data as the model.
    if weights is None:
        mean = jnp.mean(ydata)
    else:
        mean = jnp.sum(weights**2 * ydata) / jnp.sum(weights**2)
    total = jnp.sum(whiten(ydata - mean, weights) ** 2)
    statistics = {
        "covariance_singular": singular,
        "num_points": num_points,
        "num_varied": jnp.sum(free),
        "r_squared": 1 - jnp.sum(whitened**2) / total,
    }
    return popt, pcov, (solution, statistics)


def _r_factor(chunks: ChunkedResiduals, params, loss, f_scale):
    """R (n × n, upper triangular) of J = QR, J the Jacobian of the residuals (scipy's J̃ for a
    robust loss), by a scan over the chunks: R ← R of [R; J_c]. JᵀJ = RᵀR, and the SVD of R has
    the singular values and right singular vectors of J."""

    def add_chunk(r, index):
        jac, residual = chunks.chunk_jacobian_and_residual(params, index)
        if loss != "linear":
            jac = robust_jacobian_weights(residual, loss, f_scale)[:, None] * jac
        return jnp.linalg.qr(jnp.concatenate([r, jac]), mode="r"), None

    start = jnp.zeros((params.size, params.size), params.dtype)
    # Rematerialised when differentiated, so that reverse mode stores no chunk's Jacobian either.
    add_chunk = jax.checkpoint(add_chunk, prevent_cse=False)
    r, _ = lax.scan(add_chunk, start, jnp.arange(chunks.num_chunks))
    return r


def _covariance(jacobian, num_residuals, sum_of_squares, num_points, absolute_sigma, free):
    """scipy's pcov: (JᵀJ)⁻¹ from the SVD of J (or of R, J = QR, for `num_residuals` residuals),
    scaled by the reduced χ² unless absolute_sigma.

    Pinned or fixed parameters (not `free`) are held: their columns of J are dropped (zeroed),
    their entries are NaN, and they do not count as parameters in the degrees of freedom.
    """
    jacobian = jnp.where(free[None, :], jacobian, 0)
    num_free = jnp.sum(free)
    _, singular_values, vt = jnp.linalg.svd(jacobian, full_matrices=False)
    threshold = rank_tolerance(jacobian.dtype, max(num_residuals, jacobian.shape[1])) * singular_values[0]
    kept = singular_values > threshold
    rank_deficient = jnp.sum(kept) < num_free
    inverse_squares = jnp.where(kept, 1 / jnp.where(kept, singular_values, 1) ** 2, 0)
    pcov = (vt.T * inverse_squares) @ vt
    if not absolute_sigma:
        degrees_of_freedom = num_points - num_free
        pcov = pcov * sum_of_squares / jnp.where(degrees_of_freedom > 0, degrees_of_freedom, 1)
        rank_deficient = rank_deficient | (degrees_of_freedom <= 0)
    pcov = jnp.where(rank_deficient, jnp.inf, pcov)
    return jnp.where(free[:, None] & free[None, :], pcov, jnp.nan), rank_deficient


def unpack(params):
    return [params[i] for i in range(params.shape[0])]


def _box(bounds, fixed, p0, num_params, dtype):
    """(lower, upper, fixed) as arrays of length n, checked against p0; None if there are none."""
    unbounded = bounds is None or (
        isinstance(bounds, tuple | list)
        and len(bounds) == 2
        and all(isinstance(bound, float) for bound in bounds)
        and bounds[0] == -np.inf
        and bounds[1] == np.inf
    )
    if unbounded and fixed is None:  # scipy's default, (-inf, inf): nothing to build or check
        return None
    if fixed is not None:
        fixed = jnp.asarray(fixed)
        if fixed.dtype != bool or fixed.shape != (num_params,):
            raise ValueError(f"fixed must be {num_params} booleans (True: hold at p0), got {fixed!r}.")
    if bounds is None:
        bounds = (-np.inf, np.inf)
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise TypeError(f"bounds must be a pair (lower, upper), got {bounds!r}.")
    try:
        lower, upper = (jnp.broadcast_to(jnp.asarray(b, dtype), (num_params,)) for b in bounds)
    except ValueError:
        raise ValueError(
            f"bounds must be scalars or arrays of length {num_params} (one per parameter), got {bounds!r}."
        ) from None
    if check_box(lower, upper, p0, "p0") and fixed is None:
        return None
    return lower, upper, jnp.zeros(num_params, bool) if fixed is None else fixed


def _as_float(leaf, dtype):
    leaf = as_array(leaf)
    return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf


def _num_params(f, p0) -> int:
    if p0 is not None:
        shape = np.shape(p0)
        if len(shape) not in (1, 2) or shape[-1] == 0:
            raise ValueError(
                f"p0 must be a 1-D array of starting values (or 2-D for a batch), got shape {shape}."
            )
        return shape[-1]
    names = parameter_names_from_signature(f)
    if names is None:
        raise ValueError(
            "p0 is needed: the number of parameters cannot be read from f's signature (f takes *args); "
            "pass p0 with one starting value per parameter."
        )
    if not names:
        raise ValueError("f must take the independent variable and at least one parameter: f(x, p1, ...).")
    return len(names)


def parameter_names_from_signature(f) -> list[str] | None:
    """The names of f's positional parameters after x; None when the signature cannot tell
    (f takes *args, or has no signature)."""
    try:
        parameters = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[1:]


def _model_output(f, xdata, p0) -> jax.ShapeDtypeStruct:
    """The shape and dtype of f(xdata, *p0), cached by f and the arguments' shapes and dtypes:
    tracing f again on every call was half the time of an eager `curve_fit` of a small model
    (JAX's own jit caches the same way)."""
    leaves, treedef = jax.tree.flatten(xdata)
    specs = tuple((leaf.shape, leaf.dtype, getattr(leaf, "weak_type", False)) for leaf in leaves)
    arguments = (f, treedef, specs, (p0.shape, p0.dtype, getattr(p0, "weak_type", False)))
    try:
        hash(f)
    except TypeError:  # a callable that cannot be hashed: no cache
        return _traced_model_output(*arguments)
    return _cached_model_output(*arguments)


def _traced_model_output(f, treedef, specs, p_spec) -> jax.ShapeDtypeStruct:
    def abstract(shape, dtype, weak_type):
        return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak_type)

    xdata = jax.tree.unflatten(treedef, [abstract(*spec) for spec in specs])
    return jax.eval_shape(lambda x, p: f(x, *unpack(p)), xdata, abstract(*p_spec))


_cached_model_output = functools.lru_cache(maxsize=256)(_traced_model_output)


def _model_shape(f, xdata, p0) -> tuple[int, ...]:
    try:
        out = _model_output(f, xdata, p0)
    except TypeError as error:
        raise TypeError(
            f"calling f(xdata, *p0) with {p0.shape[0]} parameters failed ({error}); check that p0 has "
            "one value per parameter of f."
        ) from error
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"f must return one array, got {jax.tree.structure(out)}.")
    if out.shape == ():
        raise ValueError(
            "f returned a scalar; it must return one value per data point (an array like ydata)."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"f returned dtype {out.dtype}; it must return floating-point values.")
    return out.shape


def _points_first(xdata, num_points) -> tuple[Any, tuple[bool, ...]]:
    """xdata with the data points along the first axis of each of its arrays that has them, for
    chunking; arrays in scipy's (k, M) layout, the points along the last axis, get it moved to
    the front (and `_fit` moves it back before calling f). Returns the flags of which moved."""
    moved = tuple(
        bool(jnp.ndim(x) >= 2 and jnp.shape(x)[0] != num_points and jnp.shape(x)[-1] == num_points)
        for x in jax.tree.leaves(xdata)
    )
    return _move_axis(xdata, moved, -1, 0), moved


def _move_axis(xdata, which, source, destination):
    leaves, treedef = jax.tree.flatten(xdata)
    leaves = [jnp.moveaxis(x, source, destination) if m else x for x, m in zip(leaves, which, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def _check_model_on_a_chunk(f, xdata, points_last, p0, model_shape, residual_chunk_size) -> None:
    """An error unless f, given the first points of xdata, returns the model at those points."""
    num_points = model_shape[0]
    size = min(residual_chunk_size, num_points)
    data, rest = split_data((xdata,), num_points)  # as the chunked fit splits it

    def model_on_a_chunk(p):
        (x,) = chunk_of(data, rest, 0, size)
        return f(_move_axis(x, points_last, 0, -1), *unpack(p))

    expected = (size, *model_shape[1:])
    message = (
        f"with residual_chunk_size, f must compute the model at each data point from that point's x alone: "
        "put the points along the first axis of xdata's arrays (or the last, as in scipy's (k, M) xdata), "
        f"and pass all per-point data in xdata rather than closing over it. On {size} of the {num_points} "
        f"points, expecting shape {expected}, "
    )
    try:
        shape = jax.eval_shape(model_on_a_chunk, p0).shape
    except (TypeError, ValueError) as error:
        raise ValueError(message + f"f failed with: {error}") from error
    if shape != expected:
        raise ValueError(message + f"f returned shape {shape}.")


def _as_mask(mask, shape):
    mask = jnp.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be booleans (True: use the point), got dtype {mask.dtype}.")
    if mask.shape != shape:
        try:
            mask = jnp.broadcast_to(mask, shape)
        except ValueError:
            raise ValueError(
                f"mask has shape {mask.shape}; it must have the shape of ydata, {shape}."
            ) from None
    return mask


def _whitening(sigma, ydata, model_shape, batch, dtype) -> tuple[Array | None, Array | None]:
    """(weights 1/σ, None) for standard deviations, (None, L) for a covariance Σ = LLᵀ."""
    if sigma is None:
        return None, None
    sigma = jnp.asarray(sigma, dtype)
    is_concrete = not isinstance(sigma, jax.core.Tracer)
    if sigma.shape in (ydata.shape, model_shape):
        if is_concrete and not np.all(np.asarray(sigma) > 0):
            raise ValueError("sigma must be > 0 (standard deviations; inf leaves a point out, as does mask).")
        return jnp.broadcast_to(1 / sigma, ydata.shape), None
    m = int(np.prod(model_shape))
    covariance_shapes = [(m, m)] + ([(batch, m, m)] if batch is not None else [])
    if len(model_shape) == 1 and sigma.shape in covariance_shapes:
        factor = jnp.linalg.cholesky(sigma)
        if is_concrete and not np.all(np.isfinite(np.asarray(factor))):
            raise ValueError("sigma (a covariance matrix) must be symmetric positive definite.")
        return None, factor
    raise ValueError(
        f"sigma has shape {sigma.shape}; expected the shape of ydata {ydata.shape} (standard deviations)"
        + (f" or of one dataset {model_shape}" if batch is not None else "")
        + (f", or {covariance_shapes} (a covariance matrix)" if len(model_shape) == 1 else "")
        + "."
    )


def _batch_axis(value, batched_ndim):
    if value is None:
        return None
    return 0 if value.ndim == batched_ndim else None
