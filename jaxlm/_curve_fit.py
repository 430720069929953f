"""`curve_fit`: scipy's interface for fitting a model to data, batched, jittable and differentiable.

The fit minimises ½‖W(f(x, p) − y)‖², where W whitens the data: W = diag(1/σ) for standard
deviations σ, W = L⁻¹ for a covariance matrix Σ = LLᵀ (its Cholesky factor), W = I without
sigma. The covariance of the parameters is the one scipy reports (`scipy.optimize.curve_fit`):

    pcov = (JᵀJ)⁻¹ · s²,    s² = Σ r̂ᵢ² / (m − n)    (s² = 1 with absolute_sigma=True),

with J the Jacobian of the whitened residuals at the solution (for a robust loss, scipy's
rescaled J̃ = diag(√(ρ' + 2ρ''z))·J and Σ r̂ᵢ² = 2·cost), computed from the SVD of J. When J is
rank-deficient (a singular value below min(eps·max(m, n), √eps)·s_max: scipy's threshold, capped
so that float32 fits of 10⁶ points and more are not all called singular), pcov is inf in every
entry, as scipy's method "lm" gives it (its "trf" and "dogbox", and jaxlm's methods of those
names, use the pseudo-inverse instead, the small singular values dropped); when m ≤ n and the
variance is estimated from the data, pcov is inf.
Parameters held fixed, or pinned at a bound that the data push against, are held in J (their
columns dropped): their rows and columns of pcov are NaN and n counts only the varied ones.

Points can be left out without changing shapes (which `vmap` needs): `mask=False`, `sigma=inf`
and `nan_policy="omit"` give them weight 0, and m counts only the points that remain. With a
covariance matrix, a point left out gets its row and column of Σ replaced by those of the
identity and a residual of 0: Σ is then block diagonal between the points kept and those left
out, so is its Cholesky factor, and the fit is that of the kept points with their covariance.

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
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, ArrayLike

from . import _scipy_options as scipy_options
from ._chunked import ChunkedResiduals, chunk_of, split_data
from ._dispatch import EAGER_PLANS as _EAGER_PLANS, called_from_python, compiled, fetch
from ._failure import raise_if_failed, reporting, warn_batch_failures, warn_covariance
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
from ._poisson import check_estimator, flat_poisson_residual
from ._solution import Status
from ._solver import LevenbergMarquardt
from ._traceable import cannot_trace, untraceable_error

_NO_BOUNDS = (-np.inf, np.inf)  # scipy's default bounds, one object: a call without bounds passes this one


def curve_fit(
    f: Callable[..., ArrayLike],
    xdata: Any,
    ydata: ArrayLike,
    p0: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds=_NO_BOUNDS,
    method: str | None = None,
    jac: Callable[..., ArrayLike] | str | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    mask: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    fixed: ArrayLike | None = None,
    loss: Loss = "linear",
    f_scale: float = 1.0,
    solver: AbstractSolver | None = None,
    max_steps: int | None = None,
    verbose: bool | int = False,
    residual_chunk_size: int | None = None,
    estimator: str = "least_squares",
    **kwargs,
):
    """Fit `f(xdata, *params)` to `ydata`, with the semantics of `scipy.optimize.curve_fit`.

    Every argument of scipy's `curve_fit` is accepted with scipy's meaning and default; the
    keywords from `mask` on are jaxlm's own.

    Args:
        f: the model `f(x, p1, p2, ...)`, written with jax.numpy; returns an array of the
            shape of one dataset. A model written with NumPy (np.exp on JAX's traced values),
            or one that branches in Python on the parameters, gets an error that says how to
            write it.
        xdata: the independent variable: an array, or anything `f` accepts (a tuple of arrays,
            None).
        ydata: the data, of the shape `f` returns (or a scalar, broadcast to it, as scipy
            allows); or a batch of datasets with a leading batch axis, fitted all at once (one
            compiled, vmapped solve). Complex data are refused: fit the real and imaginary
            parts as separate points.
        p0: the starting values: a scalar or a sequence of n (or one row per dataset of a
            batch). Without it, scipy's start: all ones, with n taken from `f`'s signature,
            and within bounds the midpoint of finite ones (lower + 1 or upper − 1 for a
            one-sided bound).
        sigma: the uncertainties of `ydata`: a scalar or standard deviations of the shape of
            `ydata` (or of one dataset, shared by the batch), or for 1-D data an m × m
            covariance matrix (or one per dataset). inf gives a point weight 0.
        absolute_sigma: if True, sigma is in absolute units and pcov is (JᵀJ)⁻¹; if False
            (scipy's default) only the relative sizes of sigma matter and pcov is scaled by the
            reduced χ².
        check_finite: raise if the data contain NaN or inf (default: True unless nan_policy is
            given). Only checked for concrete data (outside `jit`/`vmap`).
        bounds: box constraints `(lower, upper)`, each a scalar or an array of length n, or a
            `scipy.optimize.Bounds`, as in scipy (LevenbergMarquardt only; a step that would
            cross a bound stops short of it, and one pushed against it again goes onto it). A
            parameter that ends at a bound the data push against is pinned there: its row and
            column of pcov are NaN (it has no covariance), the others are those of the free
            parameters with the pinned ones held, and its derivative is 0.
        method: scipy's name of the algorithm: None (scipy's choice: "lm" without bounds,
            "trf" with them), "lm", "trf" or "dogbox". All of them run jaxlm's
            LevenbergMarquardt (or `solver`): "lm" refuses bounds, as in scipy; "trf" and
            "dogbox", scipy's bounded trust-region methods, are LM with its steps projected
            onto the box. The method decides which of scipy's codes `ier` reports and which
            keys `infodict` has.
        jac: the Jacobian of `f`: `jac(x, *params)` of shape (m, n), as in scipy; "2-point",
            "3-point" and "cs" (scipy's finite differences) mean JAX's exact derivatives, as
            does None.
        full_output: also return `infodict`, `mesg` and `ier`, as scipy does.
        nan_policy: None or "raise" (an error for NaN in the data), "omit" (leave those points
            out: weight 0; a data point of an `xdata` array is a position along its last axis,
            as in scipy, or along its first when only that one matches). "propagate" is an
            error, as in scipy: a fit to NaN data cannot succeed.
        mask: booleans of the shape of `ydata`: False leaves a point out (datasets of different
            lengths in one batch). A fit left with no point, or (for method "lm", and None
            without bounds, as scipy's check) with fewer points than varied parameters, fails
            with status `TOO_FEW_POINTS`, whichever way its points were left out.
        weights: instead of sigma, lmfit's weights wᵢ = 1/σᵢ that multiply the residuals
            (0 leaves a point out); pcov is scaled by the reduced χ² unless absolute_sigma.
        fixed: booleans of length n: True holds that parameter at its value in p0 (lmfit's
            `vary=False`); it is left out of pcov (NaN) and of the degrees of freedom.
        loss, f_scale: a robust loss ("soft_l1", "huber", "cauchy", "arctan", or scipy's
            callable `loss(z)` returning the (3, m) array ρ, ρ', ρ''), as in
            `scipy.optimize.least_squares`; with any method.
        solver: a jaxlm solver instead of the one `method` names (then leave method None).
        max_steps: the most iterations (default 1000); scipy's `maxfev` or `max_nfev`, the
            most evaluations of f, set it to that number − 1 instead.
        verbose: True or 2: one line per iteration (also under `jit`); 1: scipy's report at
            the end (the message and the number of evaluations).
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
        estimator: "least_squares" (scipy's fit, the default), or "poisson" for counts
            (photons, events): the fit maximises the Poisson likelihood, Gpufit's MLE estimator
            (see `jaxlm.poisson_residual`), `ydata` are the counts (≥ 0; non-integer counts, such
            as photon numbers converted from camera units, are taken as they are), `f` must be
            > 0 wherever a count is > 0 (a start where it is not fails with NONFINITE_START),
            and pcov is the inverse of the Fisher information at the solution,
            (Σ (1/fᵢ)∇fᵢ∇fᵢᵀ)⁻¹: the Cramér–Rao lower bound, in absolute units. `mask` and
            `nan_policy` leave points out as usual; sigma, weights, a robust loss, `jac` and
            `residual_chunk_size` do not apply. `infodict["fvec"]` holds the deviance
            residuals, and `r_squared` is the fraction of the deviance of the mean explained.
        **kwargs: scipy's options for `leastsq` and `least_squares`: `ftol`, `xtol`, `gtol`
            (the solver's tolerances; None turns a test off), `maxfev`/`max_nfev` (see
            max_steps), `col_deriv` (jac returns the transpose), `x_scale` ("jac": damping
            scaled by diag(JᵀJ), the default for methods None and "lm"; an array: by
            1/x_scale²) and leastsq's `diag` (= 1/x_scale), `factor` (the initial trust radius
            of "lm", factor·‖Dx₀‖), and, checked as scipy checks them but without effect,
            `diff_step` and `epsfcn` (the derivatives are exact), `tr_solver` and `tr_options`
            (the normal equations are solved directly), `jac_sparsity` and `workers`. Without
            jaxlm's own `ftol`/`xtol`/`gtol`, the solver's defaults hold, which are tighter than
            scipy's (1e-12 in float64).

    Returns:
        `(popt, pcov)`, with a leading batch axis for a batch (called from Python, one fit's are
        NumPy arrays, as scipy's; under tracing and for a batch, JAX arrays); with `full_output`,
        `(popt, pcov, infodict, mesg, ier)` as in scipy: `ier` is scipy's code (for "lm" and
        method None without bounds MINPACK's: 1–4 converged, 5 too many evaluations, 6 no
        step reduced the cost, 0 bad input; for "trf"/"dogbox" and None with bounds
        `least_squares`'s status: 1–4 converged, 0 too many evaluations, −1 failed), `mesg`
        the message (None under `jit`: use `jaxlm.Status(int(infodict["status"])).message`
        outside). `infodict` has scipy's `fvec` (the whitened residuals) and `nfev`, for
        MINPACK's codes also `fjac`, `ipvt` and `qtf` (the pivoted QR factorisation J·P = Q·R
        of the whitened Jacobian: fjac.T[:n] = R, ipvt the 0-based column order, qtf = Qᵀ·fvec),
        and jaxlm's `njev`, `num_steps`, `status` (the `jaxlm.Status`), `success`,
        `covariance_singular` (True where pcov is inf), `num_points` and `num_varied` (the
        points and parameters that count in the degrees of freedom), `r_squared` and
        `solution` (the `jaxlm.Solution`).

    Failure. Called from Python (no `jit`, `vmap` or `grad` tracing the call), a fit that does
    not converge raises `RuntimeError("Optimal parameters not found: ...")` with its status and
    what to do, and a covariance that cannot be estimated warns with `jaxlm.OptimizeWarning`
    (a subclass of scipy's), as scipy does. A batch of datasets raises nothing: a failed fit's
    popt is its last iterate and its pcov is NaN, `infodict["success"]` and
    `infodict["status"]` say which fits failed, and one `jaxlm.OptimizeWarning` gives the
    counts. Under tracing failure is the per-fit status only (so one bad fit never stops a
    compiled batch). `jaxlm.fit` never raises for a failed fit: its result has the status.
    """
    eager_key, p0_given = None, p0
    plain = not (kwargs or full_output or mask is not None or weights is not None or fixed is not None)
    if plain and estimator == "least_squares":
        eager_key = _eager_key(
            f, xdata, ydata, p0, sigma, absolute_sigma, check_finite, bounds, method, jac, nan_policy,
            loss, f_scale, solver, max_steps, verbose, residual_chunk_size,
        )  # fmt: skip
        plan = _EAGER_PLANS.get(eager_key) if eager_key is not None else None
        if plan is not None and called_from_python():
            outputs = _eager_fit(plan, xdata, ydata, p0, sigma, check_finite)
            if outputs is not None:
                return outputs
    scipy_options.check_method(method)
    scipy_options.check_unknown(kwargs, scipy_options.CURVE_FIT_OPTIONS, "curve_fit")
    if nan_policy == "propagate":
        raise ValueError(
            "`nan_policy='propagate'` is not supported by this function: a fit to NaN data cannot "
            "succeed. Pass nan_policy='omit' to leave those points out, or remove them."
        )
    if nan_policy not in (None, "raise", "omit"):
        raise ValueError(f"nan_policy must be one of {{None, 'raise', 'omit'}}, got {nan_policy!r}.")
    check_loss(loss, f_scale)
    scipy_options.check_jac(jac, "jac(x, *params)")
    jac = jac if callable(jac) else None
    check_estimator(estimator, loss, jac)
    if jac is not None and kwargs.get("col_deriv"):
        jac = _transposed(jac)
    scipy_options.check_verbose(verbose)
    tolerances = {}
    if kwargs:
        scipy_options.check_tr_options(kwargs.get("tr_solver"), kwargs.get("tr_options"))
        scipy_options.check_numbers(kwargs, ("diff_step", "epsfcn", "factor"))
        tolerances = scipy_options.tolerances(kwargs)
    max_steps = scipy_options.curve_fit_max_steps(kwargs, max_steps)

    ydata = _real(as_array(ydata), "ydata")
    if ydata.dtype.kind != "f" and not jnp.issubdtype(ydata.dtype, jnp.floating):
        ydata = ydata.astype(jnp.result_type(float))
    dtype = ydata.dtype
    if ydata.size == 0:
        raise ValueError("ydata is empty: there is nothing to fit; check how the data were loaded.")
    if isinstance(xdata, list):  # scipy's array_like: [0.0, 0.5, 1.0, ...] is one array, not a pytree
        try:
            xdata = np.asarray(xdata)
        except ValueError:  # ragged: leave it a list of arrays
            pass
    if type(xdata) is np.ndarray:  # the common case, without the cost of a tree map
        xdata = _as_float(xdata, dtype)
    else:
        xdata = jax.tree.map(lambda leaf: _as_float(leaf, dtype), xdata)
    num_params = _num_params(f, p0)
    if kwargs:
        scipy_options.check_x_scale(kwargs.get("x_scale"), num_params)
        scipy_options.check_x_scale(kwargs.get("diag"), num_params, "diag")
    lower, upper = _bounds_pair(bounds)
    bounded = _is_bounded(lower, upper)
    if method == "lm" and bounded:
        raise ValueError("Method 'lm' only works for unconstrained problems. Use 'trf' or 'dogbox' instead.")
    minpack_codes = method == "lm" or (method is None and not bounded)
    if p0 is None:
        p0 = _feasible_start(lower, upper, num_params, dtype)
    elif not (type(p0) is np.ndarray and p0.dtype == dtype and p0.ndim >= 1):
        p0 = _real(as_array(p0, None), "p0")
        p0 = as_array(np.atleast_1d(p0) if not isinstance(p0, jax.Array) else jnp.atleast_1d(p0), dtype)

    single_p0 = p0 if p0.ndim == 1 else p0[0]
    model_shape = _model_shape(f, xdata, single_p0)
    if ydata.shape == model_shape:
        batch = None
    elif ydata.ndim > len(model_shape) and ydata.shape[1:] == model_shape:
        batch = ydata.shape[0]
    elif ydata.ndim <= len(model_shape) and _broadcasts(ydata.shape, model_shape):
        batch, ydata = None, jnp.broadcast_to(ydata, model_shape)  # a scalar ydata, as scipy allows
    else:
        raise ValueError(
            f"f(xdata, *p0) has shape {model_shape} but ydata has shape {ydata.shape}: they must match "
            "(or ydata may have one extra leading axis, a batch of datasets)."
        )
    if p0.ndim != 1 and not (batch is not None and p0.shape == (batch, num_params)):
        raise ValueError(
            f"p0 must have shape ({num_params},), or ({batch}, {num_params}) for a batch; got {p0.shape}."
        )
    num_points = math.prod(model_shape)
    num_varied = num_params if fixed is None else num_params - int(np.sum(np.asarray(fixed)))
    if minpack_codes and num_points != 1 and num_varied > num_points:
        raise TypeError(
            f"The number of func parameters={num_varied} must not exceed the number of data "
            f"points={num_points}: fix some parameters (fixed=), or add data."
        )

    _check_finite(xdata, ydata, check_finite, nan_policy)

    if estimator == "poisson":
        _check_counts(ydata, sigma, weights, residual_chunk_size)
    if weights is not None:
        if sigma is not None:
            raise ValueError("pass sigma or weights (= 1/sigma), not both.")
        weights = jnp.asarray(weights, dtype)
        if not isinstance(weights, jax.core.Tracer) and not np.all(np.asarray(weights) >= 0):
            raise ValueError("weights must be >= 0 (1/sigma; 0 leaves a point out).")
        sigma = jnp.where(weights > 0, 1 / jnp.where(weights > 0, weights, 1), jnp.inf)
    keep = None if mask is None else _as_mask(mask, ydata.shape)
    if nan_policy == "omit":
        keep = jnp.ones(ydata.shape, bool) if keep is None else keep
        keep = keep & jnp.isfinite(ydata) & _finite_points(xdata, model_shape)
    weights, factor = _whitening(sigma, ydata, model_shape, batch, dtype, keep)
    if keep is not None:  # a mask or nan_policy="omit": the points left out get weight 0
        ydata = jnp.where(keep, ydata, 0)
        if factor is None:
            weights, keep = jnp.where(keep, 1 if weights is None else weights, 0).astype(dtype), None

    if solver is not None and method is not None:
        raise ValueError(
            f"pass method (scipy's names) or solver (a jaxlm solver), not both; got method={method!r}."
        )
    scaling = {name: kwargs[name] for name in ("x_scale", "diag", "factor") if name in kwargs}
    if solver is None:
        solver = scipy_options.solver_for(method, num_params, **scaling, chosen_tolerances=tolerances)
    elif any(value is not None for value in scaling.values()):
        raise ValueError(
            "x_scale, diag and factor configure the solver that method names; with solver= set them on it."
        )
    solver, adjoint = check_options(f, (), solver, LevenbergMarquardt, max_steps, None, 0)
    solver = scipy_options.with_tolerances(solver, tolerances)
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
    box = _box(lower, upper, fixed, p0, num_params, dtype)
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
        verbose is True or verbose == 2,
        residual_chunk_size,
        points_last,
        minpack_codes,
        bool(full_output),
        verbose == 1 and verbose is not True,
        estimator,
    )
    f_scale = as_array(f_scale, dtype)
    axes = None
    if batch is not None:
        axes = (
            0,
            _batch_axis(weights, ydata.ndim),
            _batch_axis(factor, 3),
            _batch_axis(keep, ydata.ndim),
            0 if p0.ndim == 2 else None,
        )
    called_eagerly = called_from_python()
    # Called from Python, one fit comes back as one array, popt, pcov and the outcome together, and
    # popt and pcov are NumPy arrays, as scipy's: the outcome must be looked at before returning.
    packed = called_eagerly and batch is None and not full_output
    dynamic = (xdata, ydata, weights, factor, keep, p0, f_scale, box)
    fit = compiled(_fit_outputs, (options, axes, packed), dynamic, single_fit=batch is None)
    if eager_key is not None and packed and box is None and factor is None and keep is None:
        start = p0 if p0_given is None else None  # p0 from f's signature: the same every call
        plan = _EagerPlan(fit, dtype, num_params, model_shape, start, f_scale)
        if len(_EAGER_PLANS) >= _EAGER_PLANS_SIZE:
            _EAGER_PLANS.clear()
        _EAGER_PLANS[eager_key] = plan
    popt, pcov, outcome, extras = fit(*dynamic)
    if packed:
        popt, pcov, outcome = _unpack_outputs(fetch(popt), num_params)
    elif called_eagerly:
        outcome = fetch(outcome)  # one transfer for the three
        if batch is None:
            popt, pcov = np.asarray(popt), np.asarray(pcov)
    status, covariance_singular, code = outcome[..., 0], outcome[..., 1], outcome[..., 2]
    if called_eagerly:
        if batch is None:
            status, covariance_singular, code = int(status), bool(covariance_singular), int(code)
        if reporting():
            _report(status, covariance_singular, verbose, extras, batch is not None)
    if not full_output:
        return popt, pcov
    solution, statistics, infodict = extras
    infodict = {**infodict, "njev": solution.num_jev, "num_steps": solution.num_steps, **statistics}
    infodict["solution"] = solution
    message = solution.message if called_eagerly else None
    return popt, pcov, infodict, message, code


_EAGER_PLANS_SIZE = 64


class _EagerPlan(NamedTuple):
    """What a plain call from Python worked out before its compiled fit (one dataset of NumPy
    arrays, no bounds, mask, weights or scipy options): kept under the call's signature
    (`_eager_key`), it lets the next such call skip to converting and checking its data. The
    checks of a first call took 150 µs of a 270 µs fit of 100 points."""

    fit: Callable  # `_fit_outputs` compiled, with `packed` outputs
    dtype: np.dtype
    num_params: int
    model_shape: tuple[int, ...]
    start: np.ndarray | None  # p0 when none is given
    f_scale: np.ndarray


def _eager_key(
    f, xdata, ydata, p0, sigma, absolute_sigma, check_finite, bounds, method, jac, nan_policy,
    loss, f_scale, solver, max_steps, verbose, residual_chunk_size,
) -> tuple | None:  # fmt: skip
    """The signature of a call that an `_EagerPlan` can make, or None: what decides every check
    and conversion before the fit (f, the shapes and dtypes of the data, the options), not the
    values, which `_eager_fit` checks."""
    if not (
        type(xdata) is np.ndarray
        and type(ydata) is np.ndarray
        and bounds is _NO_BOUNDS
        and jac is None
        and nan_policy is None
        and type(loss) is str
        and type(f_scale) is float
        and solver is None
        and residual_chunk_size is None
        and type(verbose) is bool
        and not verbose
        and type(absolute_sigma) is bool
        and (check_finite is None or type(check_finite) is bool)
        and (max_steps is None or type(max_steps) is int)
        and (method is None or type(method) is str)
    ):
        return None
    if p0 is None:
        start = None
    elif type(p0) is np.ndarray:
        start = (p0.shape, p0.dtype)
    elif type(p0) in (list, tuple):
        start = len(p0)
    else:
        return None
    if sigma is not None and type(sigma) is not np.ndarray:
        return None
    key = (
        f, xdata.shape, xdata.dtype, ydata.shape, ydata.dtype, start,
        None if sigma is None else (sigma.shape, sigma.dtype),
        absolute_sigma, check_finite, method, loss, f_scale, max_steps, jax.config.jax_enable_x64,
    )  # fmt: skip
    try:
        hash(key)
    except TypeError:  # f cannot be hashed
        return None
    return key


def _eager_fit(plan: _EagerPlan, xdata, ydata, p0, sigma, check_finite):
    """`curve_fit`'s (popt, pcov) for a call of the signature `plan` was made for, or None for
    one it cannot make (a p0 of another length or kind; `curve_fit` then takes its full path)."""
    dtype = plan.dtype
    if p0 is None:
        p0 = plan.start
    else:
        p0 = np.asarray(p0) if type(p0) is not np.ndarray else p0
        if p0.shape != (plan.num_params,) or p0.dtype.kind not in "fiu":
            return None
        p0 = p0.astype(dtype, copy=False)
    xdata = xdata.astype(dtype, copy=False) if xdata.dtype.kind == "f" else _as_float(xdata, dtype)
    ydata = ydata.astype(dtype, copy=False)
    if check_finite is not False and not (_all_finite(ydata) and _all_finite(xdata)):
        _check_finite(xdata, ydata, check_finite, None)  # raises, naming the array
    weights, _ = _whitening(sigma, ydata, plan.model_shape, None, dtype, None)
    packed = plan.fit(xdata, ydata, weights, None, None, p0, plan.f_scale, None)[0]
    popt, pcov, outcome = _unpack_outputs(fetch(packed), plan.num_params)
    if reporting():
        raise_if_failed(int(outcome[0]), "curve_fit")
        warn_covariance(bool(outcome[1]), stacklevel=4)
    return popt, pcov


def _check_finite(xdata, ydata, check_finite, nan_policy) -> None:
    """scipy's check: an error if concrete data hold NaN or inf (with `check_finite`, by default
    unless `nan_policy` is given, or with nan_policy="raise")."""
    if check_finite is None:
        check_finite = nan_policy is None
    if not (check_finite or nan_policy == "raise"):
        return
    for name, value in (("ydata", ydata), *(("xdata", leaf) for leaf in jax.tree.leaves(xdata))):
        if not _all_finite(value):
            prefix = "The input contains nan values: " if nan_policy == "raise" else ""
            raise ValueError(
                f"{prefix}{name} contains NaN or inf: remove those points, or pass nan_policy='omit' "
                "to leave them out of the fit."
            )


def _report(status, covariance_singular, verbose, extras, batched: bool) -> None:
    """What a caller in Python hears of the outcome: an error or warnings (see `_failure.py`),
    and with verbose=1 scipy's report at the end."""
    if batched:
        warn_batch_failures(status, "curve_fit", stacklevel=4)
        success = np.isin(np.asarray(status), [int(s) for s in Status if s.success])
        warn_covariance(np.asarray(covariance_singular) & success, stacklevel=4)
    else:
        raise_if_failed(status, "curve_fit")
        warn_covariance(covariance_singular, stacklevel=4)
    if verbose == 1 and verbose is not True:
        solution = extras[0]
        print(
            f"{Status(int(status)).message if not batched else solution.message}\n"
            f"Function evaluations {np.asarray(solution.num_fev)}, final cost {np.asarray(solution.cost)}, "
            f"first-order optimality {np.asarray(solution.grad_norm)}."
        )


class _FitOptions(NamedTuple):
    """What `_fit` compiles in (a tuple, not an Equinox module: it is built on every call, and a
    module took 30 µs to build)."""

    f: Callable
    jac: Callable | None
    loss: Loss
    absolute_sigma: bool
    solver: AbstractSolver
    adjoint: AbstractAdjoint
    max_steps: int
    verbose: bool
    residual_chunk_size: int | None
    # For each leaf of xdata, whether `_points_first` moved its last axis (the points) to the front.
    points_last: tuple[bool, ...] | None
    minpack_codes: bool  # scipy's leastsq codes and infodict (method "lm"), else least_squares's
    full_output: bool
    summary: bool  # verbose=1: scipy's report at the end, for which the solution comes back
    estimator: str  # "least_squares" or "poisson"


def _fit_outputs(options, axes, packed, xdata, ydata, weights, factor, keep, p0, f_scale, box):
    """`_fit`, vmapped over `axes` for a batch of datasets: (popt, pcov, [status, covariance
    singular, scipy's code], extras), with extras None unless `full_output` or verbose (fewer
    arrays to hand back to Python after an eager call); `packed`: popt, pcov and the outcome in
    one flat array, in place of popt (see `_unpack_outputs`)."""

    def one(ydata, weights, factor, keep, p0):
        return _fit(options, xdata, ydata, weights, factor, keep, p0, f_scale, box)

    if axes is not None:
        one = jax.vmap(one, axes)
    popt, pcov, outcome, extras = one(ydata, weights, factor, keep, p0)
    if packed:
        return jnp.concatenate([popt, pcov.ravel(), outcome.astype(popt.dtype)]), None, None, extras
    return popt, pcov, outcome, extras


def _unpack_outputs(packed, num_params):
    """(popt, pcov, outcome) from `_fit_outputs(packed=True)`, as NumPy arrays."""
    n = num_params
    return packed[:n], packed[n : n + n * n].reshape(n, n), packed[n + n * n :].astype(np.int32)


def _fit(options, xdata, ydata, weights, factor, keep, p0, f_scale, box):
    f, model_jac, chunk_size = options.f, options.jac, options.residual_chunk_size

    def whiten(difference, weights):
        if factor is not None:
            if keep is not None:  # points left out have a residual of 0 (and Σ = I there)
                difference = jnp.where(keep.reshape(keep.shape + (1,) * (difference.ndim - 1)), difference, 0)
            return solve_triangular(factor, difference, lower=True)
        if weights is not None:
            return jnp.where(weights > 0, weights * difference, 0)
        return difference

    def model_x(xdata):  # xdata as f takes it (with chunks: one chunk's points)
        return xdata if options.points_last is None else _move_axis(xdata, options.points_last, 0, -1)

    poisson = options.estimator == "poisson"

    def deviance(model, ydata, weights):  # flat; a point left out (weight 0) is 0, its gradient too
        if weights is None:
            return flat_poisson_residual(model, ydata)
        kept = jnp.ravel(weights > 0)
        model, ydata = jnp.ravel(model), jnp.ravel(ydata)
        return jnp.where(kept, flat_poisson_residual(jnp.where(kept, model, 1), jnp.where(kept, ydata, 1)), 0)

    # The data are arguments, not closed over, so that a chunked fit can split them into chunks.
    def residual(params, xdata, ydata, weights):
        model = f(model_x(xdata), *unpack(params))
        return deviance(model, ydata, weights) if poisson else whiten(model - ydata, weights)

    jac = None
    if model_jac is not None:

        def jac(params, xdata, ydata, weights):
            matrix = jnp.asarray(model_jac(model_x(xdata), *unpack(params))).reshape(ydata.size, params.size)
            if factor is not None:
                return whiten(matrix, weights)
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
    if keep is not None:
        num_points = jnp.sum(keep)
    else:
        num_points = whitened.size if weights is None else jnp.sum(weights > 0)
    free = jnp.ones(popt.shape, bool)
    if bounds is not None:
        free = pinned_free(popt, jax.grad(cost)(popt), *bounds)
    pcov, singular = _covariance(
        jacobian if not poisson else _fisher_jacobian(f, model_x(xdata), popt, weights),
        whitened.size,
        2 * solution.cost,
        num_points,
        options.absolute_sigma or poisson,  # the inverse Fisher information is absolute
        free,
        pseudo_inverse=not options.minpack_codes,
    )
    # Points left out can leave a fit with nothing to determine its parameters: that is a failure,
    # as scipy's error for it ("must not exceed the number of data points") is, not a fit at p0.
    too_few = num_points == 0
    if options.minpack_codes and whitened.size != 1:
        too_few = too_few | (num_points < jnp.sum(free))
    if keep is not None or weights is not None:
        solution = eqx.tree_at(
            lambda s: (s.status, s.success),
            solution,
            (jnp.where(too_few, Status.TOO_FEW_POINTS, solution.status), solution.success & ~too_few),
        )
    pcov = jnp.where(solution.success, pcov, jnp.nan)  # a failed fit has no covariance
    codes = scipy_options.MINPACK_CODES if options.minpack_codes else scipy_options.LEAST_SQUARES_CODES
    code = jnp.asarray(codes)[solution.status + scipy_options.STATUS_OFFSET]
    outcome = jnp.stack([solution.status, singular.astype(jnp.int32), code])  # (status, singular, ier)
    if not options.full_output:
        return popt, pcov, outcome, (solution, None, None) if options.summary else None
    solution = eqx.tree_at(lambda s: s.residual, solution, whitened)
    # R² = 1 − χ²/χ²₀ with χ²₀ that of the (weighted) mean of the data as the model.
    if weights is not None:
        mean = jnp.sum(weights**2 * ydata) / jnp.sum(weights**2)
    elif keep is not None:
        mean = jnp.sum(jnp.where(keep, ydata, 0)) / num_points
    else:
        mean = jnp.mean(ydata)
    if poisson:  # the deviance of the mean as the model
        total = jnp.sum(deviance(jnp.full_like(ydata, mean), ydata, weights) ** 2)
    else:
        total = jnp.sum(whiten(ydata - mean, weights) ** 2)
    statistics = {
        "status": solution.status,
        "success": solution.success,
        "covariance_singular": singular,
        "num_points": num_points,
        "num_varied": jnp.sum(free),
        "r_squared": 1 - jnp.sum(whitened**2) / total,
    }
    if poisson:
        statistics["log_likelihood"] = _poisson_log_likelihood(solution.cost, ydata, weights)
    infodict = {"fvec": whitened, "nfev": solution.num_fev}
    if options.minpack_codes:
        infodict.update(
            _minpack_factorisation(jacobian, whitened, chunk_size is not None, jax.grad(cost)(popt))
        )
    return popt, pcov, outcome, (solution, statistics, infodict)


def _fisher_jacobian(f, xdata, popt, weights):
    """diag(1/√f)·J_f at popt, whose JᵀJ is the Fisher information of Poisson counts,
    Σ (1/fᵢ)∇fᵢ∇fᵢᵀ (points left out: rows of 0)."""
    jacobian = jax.jacfwd(lambda p: f(xdata, *unpack(p)).ravel())(popt)
    fitted = f(xdata, *unpack(popt)).ravel()
    kept = jnp.ones(fitted.shape, bool) if weights is None else weights.ravel() > 0
    scale = jnp.where(kept & (fitted > 0), 1 / jnp.sqrt(jnp.where(kept & (fitted > 0), fitted, 1)), 0)
    return scale[:, None] * jacobian


def _poisson_log_likelihood(cost, counts, weights):
    """ln L = Σ (zᵢ ln fᵢ − fᵢ − ln zᵢ!) over the points kept, from F = cost, the deviance's half:
    F = Σ (f − z − z ln(f/z)), so ln L = −F + Σ (z ln z − z − ln Γ(z + 1))."""
    kept = jnp.ones(counts.shape, bool) if weights is None else weights > 0
    z = jnp.where(kept, counts, 0)
    z_log_z = jnp.where(z > 0, z * jnp.log(jnp.where(z > 0, z, 1)), 0)
    return -cost + jnp.sum(z_log_z - z - jax.scipy.special.gammaln(z + 1))


def _check_counts(ydata, sigma, weights, residual_chunk_size) -> None:
    """The checks of estimator='poisson': counts ≥ 0 (concrete data), and no weighting."""
    if sigma is not None or weights is not None:
        raise ValueError(
            "estimator='poisson' weighs each count by its own Poisson variance: leave sigma and "
            "weights out (mask=False leaves a point out)."
        )
    if residual_chunk_size is not None:
        raise ValueError("estimator='poisson' fits without residual_chunk_size: leave it out.")
    if not isinstance(ydata, jax.core.Tracer) and np.any(np.asarray(ydata) < 0):
        raise ValueError(
            "estimator='poisson' fits counts, which are >= 0: ydata has negative values. Subtract no "
            "background from the data (fit it in the model instead), or use estimator='least_squares'."
        )


def _minpack_factorisation(jacobian, fvec, is_r_factor: bool, gradient) -> dict:
    """MINPACK's `fjac`, `ipvt` and `qtf`: J·P = Q·R with column pivoting, fjac (n × m) with
    fjac.T[:n] = R, ipvt the 0-based order of the columns, qtf = Qᵀ·fvec. With chunks J is known
    only through its R factor (`jacobian`), and Qᵀ·fvec = R⁻ᵀ·Pᵀ·Jᵀfvec, Jᵀfvec the gradient."""
    r, order, qtf = pivoted_qr(
        jacobian, fvec if not is_r_factor else jnp.zeros(jacobian.shape[0], fvec.dtype)
    )
    n, m = r.shape[1], fvec.size
    if is_r_factor:
        qtf = solve_triangular(r, gradient[order], trans="T", lower=False)
    fjac = jnp.zeros((m, n), r.dtype).at[: r.shape[0]].set(r).T
    return {"fjac": fjac, "ipvt": order.astype(jnp.int32), "qtf": qtf}


def pivoted_qr(a, b):
    """(R, the column order p, (Qᵀb)[:n]) of A·P = Q·R by Householder reflections with column
    pivoting (Businger & Golub, "Linear least squares solutions by Householder transformations",
    Numer. Math. 7, 1965; MINPACK's qrfac): at step j the remaining column of largest norm moves
    to position j, and a reflection zeroes it below the diagonal. Written in JAX rather than
    through LAPACK's geqp3, which hung XLA:CPU inside large vmapped fits."""
    m, n = a.shape
    rows = jnp.arange(m)

    def step(j, carry):
        a, order, b = carry
        below = rows >= j
        norms = jnp.sum(jnp.where(below[:, None], a, 0) ** 2, axis=0)
        pivot = jnp.argmax(jnp.where(jnp.arange(n) >= j, norms, -1))
        columns = jnp.arange(n)
        swapped = jnp.where(columns == j, pivot, jnp.where(columns == pivot, j, columns))
        a, order = a[:, swapped], order[swapped]
        x = jnp.where(below, a[:, j], 0)
        norm = jnp.linalg.norm(x)
        alpha = -jnp.where(a[j, j] >= 0, 1, -1) * norm
        v = x - jnp.where(rows == j, alpha, 0)
        v_norm = jnp.linalg.norm(v)
        v = jnp.where(v_norm > 0, v / jnp.where(v_norm > 0, v_norm, 1), 0)
        a = a - 2 * v[:, None] * (v @ a)[None, :]
        b = b - 2 * v * (v @ b)
        return a, order, b

    a, order, b = lax.fori_loop(0, min(m, n), step, (a, jnp.arange(n), b))
    r = jnp.triu(a[: min(m, n)])
    return r, order, b[:n]


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


QR_FIRST_ROWS = 10_000  # below, a (batched) SVD of J itself is faster than QR then SVD


def _covariance(jacobian, num_residuals, sum_of_squares, num_points, absolute_sigma, free, pseudo_inverse):
    """scipy's pcov: (JᵀJ)⁻¹ from the SVD of J (or of R, J = QR, for `num_residuals` residuals),
    scaled by the reduced χ² unless absolute_sigma.

    A rank-deficient J gives inf in every entry (scipy's method "lm"), or with `pseudo_inverse`
    the pseudo-inverse, its small singular values dropped (scipy's "trf" and "dogbox"). Pinned or
    fixed parameters (not `free`) are held: their columns of J are dropped (zeroed), their
    entries are NaN, and they do not count as parameters in the degrees of freedom.
    """
    if jacobian.shape[0] >= QR_FIRST_ROWS:  # the SVD of R from J = QR: 4× faster at 10⁶ rows
        jacobian = jnp.linalg.qr(jacobian, mode="r")
    jacobian = jnp.where(free[None, :], jacobian, 0)
    num_free = jnp.sum(free)
    _, singular_values, vt = jnp.linalg.svd(jacobian, full_matrices=False)
    threshold = rank_tolerance(jacobian.dtype, max(num_residuals, jacobian.shape[1])) * singular_values[0]
    kept = singular_values > threshold
    rank_deficient = jnp.sum(kept) < num_free
    if pseudo_inverse:
        rank_deficient = jnp.zeros((), bool)
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


def _bounds_pair(bounds) -> tuple[Any, Any]:
    """(lower, upper) from scipy's `bounds`: a pair, or a `scipy.optimize.Bounds` (anything with
    `lb` and `ub`); None means no bounds."""
    if bounds is None:
        return -np.inf, np.inf
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        return bounds.lb, bounds.ub
    if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
        raise ValueError(f"bounds must be a pair (lower, upper) or a scipy.optimize.Bounds, got {bounds!r}.")
    return bounds[0], bounds[1]


def _is_bounded(lower, upper) -> bool:
    """Whether any bound is finite (True for traced bounds, which cannot be looked at)."""
    if lower == -np.inf and upper == np.inf if _is_scalar(lower) and _is_scalar(upper) else False:
        return False  # scipy's default, (-inf, inf): nothing to build or check
    if isinstance(lower, jax.core.Tracer) or isinstance(upper, jax.core.Tracer):
        return True
    return bool(np.any(np.asarray(lower) > -np.inf) or np.any(np.asarray(upper) < np.inf))


def _is_scalar(value) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def _feasible_start(lower, upper, num_params, dtype):
    """scipy's start without p0: ones, the midpoint of finite bounds, lower + 1 or upper − 1 for
    one-sided ones."""
    if not _is_bounded(lower, upper):
        return np.ones(num_params, dtype)
    lower = np.broadcast_to(np.asarray(lower, dtype), (num_params,))
    upper = np.broadcast_to(np.asarray(upper, dtype), (num_params,))
    both, only_lower, only_upper = (
        np.isfinite(lower) & np.isfinite(upper),
        np.isfinite(lower) & ~np.isfinite(upper),
        ~np.isfinite(lower) & np.isfinite(upper),
    )
    start = np.where(both, 0.5 * (lower + upper), 1.0)
    start = np.where(only_lower, lower + 1, start)
    return np.where(only_upper, upper - 1, start).astype(dtype)


def _box(lower, upper, fixed, p0, num_params, dtype):
    """(lower, upper, fixed) as arrays of length n, checked against p0; None if there are none."""
    if fixed is None and not _is_bounded(lower, upper):
        return None
    if fixed is not None:
        fixed = jnp.asarray(fixed)
        if fixed.dtype != bool or fixed.shape != (num_params,):
            raise ValueError(f"fixed must be {num_params} booleans (True: hold at p0), got {fixed!r}.")
    try:
        lower, upper = (jnp.broadcast_to(jnp.asarray(b, dtype), (num_params,)) for b in (lower, upper))
    except ValueError:
        raise ValueError(
            f"bounds must be scalars or arrays of length {num_params} (one per parameter), got "
            f"({lower!r}, {upper!r})."
        ) from None
    if check_box(lower, upper, p0, "p0") and fixed is None:
        return None
    return lower, upper, jnp.zeros(num_params, bool) if fixed is None else fixed


def _real(value, name: str):
    """`value`, with an error if it is complex."""
    dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
    if np.dtype(dtype).kind == "c":
        raise ValueError(
            f"{name} is complex; jaxlm fits real data: fit the real and imaginary parts as separate "
            "points (ydata = concatenate([y.real, y.imag]) and a model that returns both)."
        )
    return value


def _broadcasts(shape, target) -> bool:
    try:
        np.broadcast_shapes(shape, target)
    except ValueError:
        return False
    return np.broadcast_shapes(shape, target) == tuple(target)


def _transposed(jac):
    """scipy's `col_deriv=True`: `jac` returns the transpose of the Jacobian, (n, m)."""

    def transposed(x, *params):
        return jnp.transpose(jnp.asarray(jac(x, *params)))

    return transposed


def _finite_points(xdata, model_shape):
    """Booleans of `model_shape`: whether every xdata value of each data point is finite. For an
    array of the model's shape, elementwise; for one with the points along its last axis
    (scipy's (k, M) xdata), all over the other axes; else along its first axis."""
    finite = jnp.ones(model_shape, bool)
    num_points = math.prod(model_shape)
    for leaf in jax.tree.leaves(xdata):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            continue
        shape = jnp.shape(leaf)
        if shape == model_shape:
            finite = finite & jnp.isfinite(leaf)
        elif len(model_shape) == 1 and len(shape) > 1 and shape[-1] == num_points:
            finite = finite & jnp.all(jnp.isfinite(leaf), axis=tuple(range(len(shape) - 1)))
        elif len(model_shape) == 1 and len(shape) > 1 and shape[0] == num_points:
            finite = finite & jnp.all(jnp.isfinite(leaf), axis=tuple(range(1, len(shape))))
    return finite


def _as_float(leaf, dtype):
    leaf = as_array(leaf)
    if type(leaf) is np.ndarray:
        floating = leaf.dtype.kind == "f" or jnp.issubdtype(leaf.dtype, jnp.floating)
        return leaf.astype(dtype, copy=False) if floating else leaf
    return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf


def _all_finite(value) -> bool:
    """Whether concrete data hold no NaN or inf (True for traced data, which cannot be looked at)."""
    if type(value) is np.ndarray:
        return bool(np.isfinite(value).all())
    return isinstance(value, jax.core.Tracer) or bool(np.all(np.isfinite(np.asarray(value))))


def _num_params(f, p0) -> int:
    if p0 is not None:
        shape = np.shape(p0)
        if shape == ():  # a scalar: one parameter, as in scipy
            return 1
        if len(shape) not in (1, 2) or shape[-1] == 0:
            raise ValueError(
                f"p0 must be a 1-D array of starting values (or 2-D for a batch), got shape {shape}."
            )
        return shape[-1]
    names = parameter_names_from_signature(f)
    if names is None:
        raise ValueError(
            "Unable to determine number of fit parameters: p0 is needed, as f's signature does not "
            "say (f takes *args); pass p0 with one starting value per parameter."
        )
    if not names:
        raise ValueError(
            "Unable to determine number of fit parameters: f must take the independent variable and "
            "at least one parameter, f(x, p1, ...)."
        )
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
    except Exception as error:
        if cannot_trace(error):
            raise untraceable_error("the model f", error) from error
        if not isinstance(error, TypeError):
            raise
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
    _real(np.empty(0, out.dtype), "the model f(xdata, *p0)")
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


def _whitening(sigma, ydata, model_shape, batch, dtype, keep) -> tuple[Array | None, Array | None]:
    """(weights 1/σ, None) for standard deviations, (None, L) for a covariance Σ = LLᵀ; with
    points left out (`keep` False), Σ has their rows and columns of the identity."""
    if sigma is None:
        return None, None
    sigma = _real(sigma, "sigma")
    on_host = type(sigma) is np.ndarray  # stays a NumPy array: no eager JAX operations
    sigma = sigma.astype(dtype, copy=False) if on_host else jnp.asarray(sigma, dtype)
    is_concrete = not isinstance(sigma, jax.core.Tracer)
    if sigma.shape in (ydata.shape, model_shape, ()):
        if is_concrete and not np.all(np.asarray(sigma) > 0):
            raise ValueError("sigma must be > 0 (standard deviations; inf leaves a point out, as does mask).")
        return (np if on_host else jnp).broadcast_to(1 / sigma, ydata.shape), None
    m = int(np.prod(model_shape))
    covariance_shapes = [(m, m)] + ([(batch, m, m)] if batch is not None else [])
    if len(model_shape) == 1 and sigma.shape in covariance_shapes:
        if keep is not None:
            kept = keep[..., :, None] & keep[..., None, :]
            sigma = jnp.where(kept, sigma, jnp.eye(m, dtype=dtype))
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
