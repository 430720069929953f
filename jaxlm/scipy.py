"""`jaxlm.scipy`: `scipy.optimize`'s `curve_fit` and `least_squares`, on jaxlm's solvers.

A script written for scipy switches by changing its import::

    from jaxlm.scipy import curve_fit, least_squares   # was: from scipy.optimize import ...

`curve_fit` is `jaxlm.curve_fit`. `least_squares` takes scipy's arguments and returns scipy's
`OptimizeResult` (x, cost, fun, jac, grad, optimality, active_mask, nfev, njev, status, message,
success) with scipy's status codes, computed in float64 as scipy computes (whatever
`jax_enable_x64` says). It is called from Python, as scipy's is; inside `jit`, `vmap` or `grad`,
use `jaxlm.least_squares`, which returns a `jaxlm.Solution`.

How it solves: every method ("trf", "dogbox", "lm") runs jaxlm's LevenbergMarquardt in one
compiled loop, with bounds for "trf" and "dogbox" (its steps cut at the box). A `fun` written
with jax.numpy is compiled and differentiated exactly: then `jac="2-point"`, `"3-point"` and
`"cs"` all mean JAX's derivatives. A `fun` that JAX cannot trace (NumPy code that assigns into
arrays, calls SciPy, keeps state) is called on the host with NumPy arrays through
`jax.pure_callback`, and its Jacobian is the user's `jac` (dense, sparse or a `LinearOperator`,
made dense) or scipy's finite differences; the loop stays jaxlm's. Other differences from scipy:
`x_scale` scales the damping as scipy's scales the trust region ("jac": by diag(JᵀJ); an array:
D = 1/x_scale; "trf" and "dogbox" are unscaled by default, as in scipy), `tr_solver` and
`tr_options` are checked but the normal equations are always solved directly, `max_nfev=None` means 1000
steps, `nfev` counts the evaluations of the loop (not the Jacobian's finite differences), and a
function object that counts its own calls sees the calls of JAX's tracing, not of the loop.
"""

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.sparse.linalg
from jax import lax
from jax.experimental import io_callback

from . import _scipy_options as scipy_options
from ._curve_fit import curve_fit as curve_fit
from ._dispatch import call_compiled, called_from_python, fetch
from ._implicit import ImplicitAdjoint
from ._least_squares import _least_squares, default_instance
from ._loss import LOSSES
from ._solution import Status
from ._traceable import cannot_trace

OptimizeResult = scipy.optimize.OptimizeResult
EPS = np.finfo(float).eps

__all__ = ["OptimizeResult", "curve_fit", "least_squares"]


def least_squares(
    fun: Callable,
    x0,
    jac="2-point",
    bounds=(-np.inf, np.inf),
    method: str = "trf",
    ftol: float | None = 1e-8,
    xtol: float | None = 1e-8,
    gtol: float | None = 1e-8,
    x_scale=None,
    loss="linear",
    f_scale: float = 1.0,
    diff_step=None,
    tr_solver: str | None = None,
    tr_options: dict | None = None,
    jac_sparsity=None,
    max_nfev: int | None = None,
    verbose: int = 0,
    args: tuple = (),
    kwargs: dict | None = None,
    callback: Callable | None = None,
    workers=None,
) -> OptimizeResult:
    """Minimise ½·Σ ρ(fᵢ(x)²) over x ∈ [lb, ub], with the signature and the result of
    `scipy.optimize.least_squares`.

    Args:
        fun: the residuals `fun(x, *args, **kwargs)`, a 1-D array (or a scalar) for a 1-D x.
        x0: the start: a scalar or a 1-D array, real.
        jac: "2-point", "3-point" or "cs" (JAX's exact derivatives of a traceable `fun`, scipy's
            finite differences of one that is not), or `jac(x, *args, **kwargs)` returning the
            (m, n) Jacobian (an array, a scipy sparse matrix or a LinearOperator).
        bounds: `(lb, ub)`, each a scalar or an array of n, or a `scipy.optimize.Bounds`;
            lb < ub as in scipy. Not with method "lm".
        method: "trf" (the default), "dogbox" or "lm": all jaxlm's LevenbergMarquardt, bounded
            for the first two; they differ in the codes and checks that scipy gives them.
        ftol, xtol, gtol: the solver's tests: the relative reduction of the cost, the relative
            step and ‖g‖∞ (None turns a test off; at least one must be above machine epsilon,
            all of them for "lm").
        x_scale: "jac" or the characteristic size of each parameter (scales the damping; see
            the module docstring).
        diff_step, tr_solver, tr_options, jac_sparsity, workers: checked as scipy checks them
            (see the module docstring for what they do here).
        loss, f_scale: "linear", "soft_l1", "huber", "cauchy", "arctan" or a callable
            `loss(z)` returning the (3, m) array ρ, ρ', ρ''; "lm" takes "linear" only.
        max_nfev: the most evaluations of `fun` (None: 1000 steps).
        verbose: 0 silent, 1 a report at the end, 2 a line per iteration.
        args, kwargs: extra arguments of `fun` and `jac`.
        callback: called after every accepted step with an `OptimizeResult` (x, cost, nit,
            nfev) when its only parameter is named `intermediate_result`, else with x; raising
            StopIteration or returning True stops the solve (status −2). Not with "lm" (a
            warning, as in scipy).

    Returns:
        scipy's `OptimizeResult`: `x`, `cost` (½Σρ), `fun`, `jac` (scaled for a robust loss
        as scipy scales it), `grad`, `optimality`, `active_mask`, `nfev`, `njev` (None for
        "lm"), `status` (−2 callback, −1 failed, 0 max_nfev, 1 gtol, 2 ftol, 3 xtol), `message`
        and `success`, and jaxlm's `jaxlm_status` (a `jaxlm.Status`).

    Example:
        >>> import numpy as np
        >>> from jaxlm.scipy import least_squares
        >>> t = np.linspace(0.0, 3.0, 20)
        >>> y = 2.0 * np.exp(-1.3 * t)
        >>> res = least_squares(lambda p: p[0] * np.exp(-p[1] * t) - y, [1.0, 1.0])
        >>> bool(res.success), np.round(res.x, 4).tolist()
        (True, [2.0, 1.3])
    """
    if not called_from_python() or any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x0)):
        raise TypeError(
            "jaxlm.scipy.least_squares returns NumPy arrays and text, as scipy does, so it is called "
            "from Python; inside jax.jit, jax.vmap or jax.grad use jaxlm.least_squares."
        )
    kwargs = {} if kwargs is None else dict(kwargs)
    _check_arguments(method, jac, tr_solver, loss, verbose, max_nfev)
    if np.iscomplexobj(x0):
        raise ValueError("`x0` must be real.")
    x0 = np.atleast_1d(np.asarray(x0, dtype=float))
    if x0.ndim > 1:
        raise ValueError("`x0` must have at most 1 dimension.")
    lower, upper = _prepare_bounds(bounds, x0)
    bounded = bool(np.any(np.isfinite(lower)) or np.any(np.isfinite(upper)))
    if method == "lm" and bounded:
        raise ValueError("Method 'lm' doesn't support bounds.")
    if np.any(lower >= upper):
        raise ValueError("Each lower bound must be strictly less than each upper bound.")
    if np.any(x0 < lower) or np.any(x0 > upper):
        raise ValueError("Initial guess is outside of provided bounds")
    scipy_options.check_x_scale(x_scale, x0.size)
    ftol, xtol, gtol = _check_tolerances(ftol, xtol, gtol, method)
    scipy_options.check_tr_options(tr_solver, tr_options)
    scipy_options.check_numbers({"diff_step": diff_step}, ("diff_step",))
    with jax.enable_x64(True):
        return _solve(
            fun, x0, jac, (lower, upper) if bounded else None, method, (ftol, xtol, gtol), x_scale,
            loss, f_scale, diff_step, tr_solver, jac_sparsity, max_nfev, verbose, args, kwargs, callback,
        )  # fmt: skip


def _check_arguments(method, jac, tr_solver, loss, verbose, max_nfev) -> None:
    if method not in ("trf", "dogbox", "lm"):
        raise ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")
    if not (callable(jac) or (isinstance(jac, str) and jac in scipy_options.FINITE_DIFFERENCES)):
        raise ValueError("`jac` must be '2-point', '3-point', 'cs' or callable.")
    if tr_solver not in (None, "exact", "lsmr"):
        raise ValueError("`tr_solver` must be None, 'exact' or 'lsmr'.")
    if not (callable(loss) or loss in LOSSES):
        raise ValueError(f"`loss` must be one of {LOSSES} or a callable.")
    if method == "lm" and loss != "linear":
        raise ValueError("method='lm' supports only 'linear' loss function.")
    if verbose not in (0, 1, 2):
        raise ValueError("`verbose` must be in [0, 1, 2].")
    if max_nfev is not None and max_nfev <= 0:
        raise ValueError("`max_nfev` must be None or positive integer.")


def _prepare_bounds(bounds, x0) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(bounds, scipy.optimize.Bounds):
        lower, upper = bounds.lb, bounds.ub
    elif len(bounds) == 2:
        lower, upper = bounds
    else:
        raise ValueError("`bounds` must contain 2 elements.")
    lower, upper = (np.asarray(b, dtype=float) for b in (lower, upper))
    lower, upper = (np.resize(b, x0.shape) if b.ndim == 0 else b for b in (lower, upper))
    if lower.shape != x0.shape or upper.shape != x0.shape:
        raise ValueError("Inconsistent shapes between bounds and `x0`.")
    return lower, upper


def _check_tolerances(ftol, xtol, gtol, method) -> tuple[float, float, float]:
    """scipy's rules: None turns a test off (0), one below eps warns, and all of them below eps
    (any of them, for "lm") is an error."""

    def check(value, name):
        if value is None:
            return 0.0
        if value < EPS:
            warnings.warn(
                f"Setting `{name}` below the machine epsilon ({EPS:.2e}) effectively disables the "
                "corresponding termination condition.",
                stacklevel=4,
            )
        return float(value)

    ftol, xtol, gtol = check(ftol, "ftol"), check(xtol, "xtol"), check(gtol, "gtol")
    if method == "lm" and min(ftol, xtol, gtol) < EPS:
        raise ValueError(f"All tolerances must be higher than machine epsilon ({EPS:.2e}) for method 'lm'.")
    if max(ftol, xtol, gtol) < EPS:
        raise ValueError(f"At least one of the tolerances must be higher than machine epsilon ({EPS:.2e}).")
    return ftol, xtol, gtol


def _solve(
    fun, x0, jac, bounds, method, tolerances, x_scale, loss, f_scale, diff_step, tr_solver,
    jac_sparsity, max_nfev, verbose, args, kwargs, callback,
) -> OptimizeResult:  # fmt: skip
    """The solve, in float64: the model and its Jacobian as JAX sees them, then the loop."""
    arguments, dynamic = _Arguments.of(args, kwargs)
    residual = _residual_function(fun, x0, arguments, dynamic)
    m, n = residual.num_residuals, x0.size
    if method == "lm" and m < n:
        raise ValueError(
            "Method 'lm' doesn't work when the number of residuals is less than the number of variables."
        )
    jacobian, jacobian_kind = _jacobian_function(jac, residual, x0, arguments, dynamic, bounds, diff_step)
    if not callable(jac):
        if method == "lm" and jac_sparsity is not None:
            raise ValueError("method='lm' does not support `jac_sparsity`.")
        scipy_options.check_jac_sparsity(jac_sparsity, m, n)
        if jac_sparsity is not None and tr_solver == "exact":
            raise ValueError("tr_solver='exact' is incompatible with `jac_sparsity`.")
    if jacobian_kind != "dense":
        if method == "lm":
            raise ValueError("method='lm' works only with dense Jacobian matrices.")
        if tr_solver == "exact":
            raise ValueError("tr_solver='exact' works only with dense Jacobian matrices.")
    if jacobian_kind == "operator" and isinstance(x_scale, str) and x_scale == "jac":
        raise ValueError("x_scale='jac' can't be used when `jac` returns LinearOperator.")
    if callback is not None and method == "lm":
        warnings.warn("Callback function specified, but not supported with `lm` method.", stacklevel=4)
        callback = None

    ftol, xtol, gtol = tolerances
    solver = scipy_options.solver_for(
        method, n, x_scale, chosen_tolerances={"ftol": ftol, "xtol": xtol, "gtol": gtol}
    )
    max_steps = 1000 if max_nfev is None else scipy_options.max_steps_from_evaluations(max_nfev)
    on_step = (
        None if callback is None else _Callback(callback, "intermediate_result" in _parameters(callback))
    )
    static = (residual, jacobian, solver, max_steps, loss, verbose == 2, on_step)
    lower, upper = (None, None) if bounds is None else (jnp.asarray(b) for b in bounds)
    solution, jacobian_at_x = call_compiled(
        _compiled_solve,
        static,
        (jnp.asarray(x0), dynamic, jnp.asarray(f_scale, float), lower, upper),
        single_fit=True,
    )
    jacobian_at_x = fetch(jacobian_at_x)  # the solve done
    status = Status(int(solution.status))
    if status == Status.NONFINITE_START:
        raise ValueError("Residuals are not finite in the initial point.")
    result = _result(
        solution, jacobian_at_x, status, bounds, method, loss, float(f_scale), xtol, jacobian_kind
    )
    if verbose >= 1:
        print(result.message)
        print(
            f"Function evaluations {result.nfev}, final cost {result.cost:.4e}, "
            f"first-order optimality {result.optimality:.2e}."
        )
    return result


def _compiled_solve(
    residual, jacobian, solver, max_steps, loss, verbose, on_step, x0, dynamic, f_scale, lower, upper
):
    bounds = None if lower is None else (lower, upper)
    solution = _least_squares(
        residual,
        solver,
        max_steps,
        jacobian,
        False,
        default_instance(ImplicitAdjoint, linear_solver="eigh"),
        0,
        loss,
        verbose,
        None,
        x0,
        (dynamic,),
        f_scale,
        bounds,
        on_step=on_step,
    )
    # The Jacobian of the model at the solution, for the result (scipy's res.jac).
    if jacobian is None:
        jacobian_at_x = jax.jacfwd(lambda x: residual(x, dynamic))(solution.params)
    else:
        jacobian_at_x = jacobian(solution.params, dynamic)
    return solution, jacobian_at_x


class _Arguments(eqx.Module):
    """How `args` and `kwargs` of `fun` are passed: their arrays are traced (the `dynamic` list
    returned by `of`), everything else (numbers, strings, objects) is compiled in, so that calls
    with new data of the same shapes reuse the compiled solve."""

    treedef: Any = eqx.field(static=True)
    static: tuple = eqx.field(static=True)

    @classmethod
    def of(cls, args, kwargs) -> tuple["_Arguments", list]:
        leaves, treedef = jax.tree.flatten((tuple(args), kwargs))
        arrays = [eqx.is_array(leaf) for leaf in leaves]
        static = tuple(None if is_array else leaf for leaf, is_array in zip(leaves, arrays, strict=True))
        dynamic = [leaf if is_array else None for leaf, is_array in zip(leaves, arrays, strict=True)]
        return cls(treedef, static), dynamic

    def unpack(self, dynamic) -> tuple[tuple, dict]:
        leaves = [s if d is None else d for s, d in zip(self.static, dynamic, strict=True)]
        return jax.tree.unflatten(self.treedef, leaves)


class _TracedResidual(eqx.Module):
    """`fun(x, *args, **kwargs)` as a JAX function of x and the arrays of the arguments."""

    fun: Callable = eqx.field(static=True)
    arguments: _Arguments = eqx.field(static=True)
    num_residuals: int = eqx.field(static=True)

    def __call__(self, x, dynamic):
        args, kwargs = self.arguments.unpack(dynamic)
        return jnp.ravel(jnp.asarray(self.fun(x, *args, **kwargs))).astype(x.dtype)


class _HostResidual(eqx.Module):
    """`fun` called on the host with NumPy arrays (a `fun` that JAX cannot trace)."""

    fun: Callable = eqx.field(static=True)
    arguments: _Arguments = eqx.field(static=True)
    num_residuals: int = eqx.field(static=True)

    def host(self, x, dynamic):
        args, kwargs = self.arguments.unpack(jax.tree.map(np.asarray, dynamic))
        return np.ravel(np.asarray(self.fun(np.asarray(x), *args, **kwargs), dtype=float))

    def __call__(self, x, dynamic):
        shape = jax.ShapeDtypeStruct((self.num_residuals,), x.dtype)
        return jax.pure_callback(self.host, shape, x, dynamic, vmap_method="sequential")


def _residual_function(fun, x0, arguments, dynamic):
    """The residuals as a function of (x, dynamic arguments): traced where JAX can trace `fun`, on
    the host where it cannot; with scipy's checks of what `fun` returns."""
    args, kwargs = arguments.unpack(dynamic)
    try:
        out = jax.eval_shape(lambda x: jnp.asarray(fun(x, *args, **kwargs)), jnp.asarray(x0))
        residual_type = _TracedResidual
    except Exception as error:
        if not cannot_trace(error):
            raise
        out = np.asarray(fun(x0.copy(), *args, **kwargs))
        residual_type = _HostResidual
    if out.ndim > 1:
        raise ValueError(f"`fun` must return at most 1-d array_like. f0.shape: {tuple(out.shape)}")
    if np.issubdtype(out.dtype, np.complexfloating):
        raise ValueError(
            "`fun` returned complex residuals: return the real and imaginary parts as separate residuals."
        )
    return residual_type(fun, arguments, int(np.prod(out.shape)))


class _FiniteDifferences(eqx.Module):
    """The Jacobian of a host residual function by scipy's finite differences: "2-point"
    (forward), "3-point" (central) or "cs" (complex step), with relative steps eps^½, eps^⅓ and
    eps^½ (or diff_step), and a step that would leave the box taken the other way."""

    residual: _HostResidual = eqx.field(static=True)
    scheme: str = eqx.field(static=True)
    lower: tuple | None = eqx.field(static=True)
    upper: tuple | None = eqx.field(static=True)
    diff_step: float | None = eqx.field(static=True)

    def host(self, x, dynamic):
        x = np.asarray(x, dtype=float)
        f0 = self.residual.host(x, dynamic)
        relative = {"2-point": EPS**0.5, "3-point": EPS ** (1 / 3), "cs": EPS**0.5}[self.scheme]
        relative = relative if self.diff_step is None else self.diff_step
        h = relative * np.where(x >= 0, 1.0, -1.0) * np.maximum(1.0, np.abs(x))
        if self.lower is not None:
            h = np.where((x + h > np.asarray(self.upper)) | (x + h < np.asarray(self.lower)), -h, h)
        columns = []
        for j in range(x.size):
            e = np.zeros_like(x)
            e[j] = h[j]
            if self.scheme == "2-point":
                columns.append((self.residual.host(x + e, dynamic) - f0) / h[j])
            elif self.scheme == "3-point":
                forward, backward = self.residual.host(x + e, dynamic), self.residual.host(x - e, dynamic)
                columns.append((forward - backward) / (2 * h[j]))
            else:
                args, kwargs = self.residual.arguments.unpack(jax.tree.map(np.asarray, dynamic))
                columns.append(np.ravel(self.residual.fun(x + 1j * e, *args, **kwargs)).imag / h[j])
        return np.stack(columns, axis=1)

    def __call__(self, x, dynamic):
        shape = jax.ShapeDtypeStruct((self.residual.num_residuals, x.size), x.dtype)
        return jax.pure_callback(self.host, shape, x, dynamic, vmap_method="sequential")


class _TracedJacobian(eqx.Module):
    jac: Callable = eqx.field(static=True)
    arguments: _Arguments = eqx.field(static=True)

    def __call__(self, x, dynamic):
        args, kwargs = self.arguments.unpack(dynamic)
        return jnp.atleast_2d(jnp.asarray(self.jac(x, *args, **kwargs))).astype(x.dtype)


class _HostJacobian(eqx.Module):
    """The user's `jac` called on the host; a sparse matrix or a LinearOperator is made dense."""

    jac: Callable = eqx.field(static=True)
    arguments: _Arguments = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)

    def host(self, x, dynamic):
        args, kwargs = self.arguments.unpack(jax.tree.map(np.asarray, dynamic))
        return _dense(self.jac(np.asarray(x), *args, **kwargs), self.shape[1])

    def __call__(self, x, dynamic):
        return jax.pure_callback(
            self.host, jax.ShapeDtypeStruct(self.shape, x.dtype), x, dynamic, vmap_method="sequential"
        )


def _dense(matrix, num_params) -> np.ndarray:
    if scipy.sparse.issparse(matrix):
        return matrix.toarray().astype(float)
    if isinstance(matrix, scipy.sparse.linalg.LinearOperator):
        return matrix.matmat(np.eye(num_params)).astype(float)
    return np.atleast_2d(np.asarray(matrix, dtype=float))


def _jacobian_function(jac, residual, x0, arguments, dynamic, bounds, diff_step):
    """(the Jacobian as a function of (x, dynamic arguments), or None for JAX's own; its kind:
    "dense", "sparse" or "operator"), with scipy's check of its shape."""
    m, n = residual.num_residuals, x0.size
    if not callable(jac):
        if isinstance(residual, _TracedResidual):
            return None, "dense"
        lower, upper = (
            (None, None) if bounds is None else (tuple(bounds[0].tolist()), tuple(bounds[1].tolist()))
        )
        step = None if diff_step is None else float(np.max(diff_step))
        return _FiniteDifferences(residual, jac, lower, upper, step), "dense"
    args, kwargs = arguments.unpack(dynamic)
    try:
        shape = jax.eval_shape(
            lambda x: jnp.atleast_2d(jnp.asarray(jac(x, *args, **kwargs))), jnp.asarray(x0)
        ).shape
        function, kind = _TracedJacobian(jac, arguments), "dense"
    except Exception as error:
        if not cannot_trace(error):
            raise
        value = jac(x0.copy(), *args, **kwargs)
        kind = "sparse" if scipy.sparse.issparse(value) else "dense"
        kind = "operator" if isinstance(value, scipy.sparse.linalg.LinearOperator) else kind
        shape = value.shape if kind != "dense" else np.atleast_2d(np.asarray(value)).shape
        function = _HostJacobian(jac, arguments, (m, n))
    if tuple(shape) != (m, n):
        raise ValueError(
            f"The return value of `jac` has wrong shape: expected {(m, n)}, actual {tuple(shape)}."
        )
    return function, kind


class _Callback(eqx.Module):
    """scipy's callback, called on the host after every accepted step; True stops the solve."""

    callback: Callable = eqx.field(static=True)
    wants_result: bool = eqx.field(static=True)

    def host(self, x, cost, nit, nfev):
        try:
            if self.wants_result:
                intermediate = OptimizeResult(x=np.array(x), cost=float(cost), nit=int(nit), nfev=int(nfev))
                stop = self.callback(intermediate_result=intermediate)
            else:
                stop = self.callback(np.array(x))
        except StopIteration:
            return np.bool_(True)
        return np.bool_(stop is True)

    def __call__(self, state, num_steps):
        def call():
            arguments = (state.x, state.cost, state.num_jev - 1, state.num_fev)
            return io_callback(self.host, jax.ShapeDtypeStruct((), bool), *arguments, ordered=True)

        return lax.cond(state.accepted, call, lambda: jnp.array(False))


def _parameters(function) -> set:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def _result(solution, jac, status, bounds, method, loss, f_scale, xtol, jacobian_kind) -> OptimizeResult:
    """scipy's OptimizeResult from jaxlm's solution, with scipy's formulas for the robust
    rescaling of the Jacobian and residuals, the gradient and the first-order optimality."""
    x = np.asarray(solution.params, dtype=float)
    f = np.asarray(solution.residual, dtype=float).ravel()
    if loss == "linear":
        cost = 0.5 * np.dot(f, f)
        gradient = jac.T.dot(f)
    else:
        rho = _scipy_rho(loss, f, f_scale)
        cost = 0.5 * np.sum(rho[0])
        scale = rho[1] + 2 * rho[2] * f**2
        scale[scale < EPS] = EPS
        scale **= 0.5
        jac = jac * scale[:, None]
        gradient = jac.T.dot(f * rho[1] / scale)
    if bounds is None:
        active_mask = np.zeros(x.size, int)
        optimality = np.linalg.norm(gradient, ord=np.inf)
    else:
        lower, upper = bounds
        active_mask = _active_constraints(x, lower, upper, xtol if method == "trf" else 0.0)
        if method == "trf":
            optimality = np.linalg.norm(gradient * _coleman_li_scaling(x, gradient, lower, upper), ord=np.inf)
        else:
            pushed = ((active_mask == -1) & (gradient > 0)) | ((active_mask == 1) & (gradient < 0))
            optimality = np.linalg.norm(np.where(pushed, 0.0, gradient), ord=np.inf)
    code = int(scipy_options.LEAST_SQUARES_CODES[int(status) + scipy_options.STATUS_OFFSET])
    message = scipy_options.LEAST_SQUARES_MESSAGES.get(code, status.message)
    if jacobian_kind == "sparse":
        jac = scipy.sparse.csr_array(jac)
    elif jacobian_kind == "operator":
        jac = scipy.sparse.linalg.aslinearoperator(jac)
    return OptimizeResult(
        x=x,
        cost=float(cost),
        fun=f,
        jac=jac,
        grad=gradient,
        optimality=float(optimality),
        active_mask=active_mask,
        nfev=int(solution.num_fev),
        njev=None if method == "lm" else int(solution.num_jev),
        status=code,
        message=message,
        success=code > 0,
        jaxlm_status=status,
    )


def _scipy_rho(loss, f, f_scale) -> np.ndarray:
    """(ρ, ρ', ρ'') of scipy's losses at z = (f/f_scale)², with scipy's scaling by f_scale."""
    z = (f / f_scale) ** 2
    if callable(loss):
        rho = np.array(loss(z), dtype=float)
    else:
        rho = np.empty((3, z.size))
        if loss == "soft_l1":
            t = 1 + z
            rho[0], rho[1], rho[2] = 2 * (t**0.5 - 1), t**-0.5, -0.5 * t**-1.5
        elif loss == "huber":
            inlier = z <= 1
            safe = np.where(inlier, 1.0, z)
            rho[0] = np.where(inlier, z, 2 * safe**0.5 - 1)
            rho[1] = np.where(inlier, 1.0, safe**-0.5)
            rho[2] = np.where(inlier, 0.0, -0.5 * safe**-1.5)
        elif loss == "cauchy":
            t = 1 + z
            rho[0], rho[1], rho[2] = np.log1p(z), 1 / t, -1 / t**2
        else:  # arctan
            t = 1 + z**2
            rho[0], rho[1], rho[2] = np.arctan(z), 1 / t, -2 * z / t**2
    rho[0] *= f_scale**2
    rho[2] /= f_scale**2
    return rho


def _active_constraints(x, lower, upper, rtol) -> np.ndarray:
    """-1 where x is at its lower bound, 1 at its upper, 0 otherwise; "at" within rtol·max(1, |bound|)
    (for rtol > 0: scipy's rule for trf)."""
    active = np.zeros(x.size, int)
    if rtol == 0:
        active[x <= lower] = -1
        active[x >= upper] = 1
        return active
    lower_distance, upper_distance = x - lower, upper - x
    with np.errstate(invalid="ignore"):
        at_lower = np.isfinite(lower) & (
            lower_distance <= np.minimum(upper_distance, rtol * np.maximum(1, np.abs(lower)))
        )
        at_upper = np.isfinite(upper) & (
            upper_distance <= np.minimum(lower_distance, rtol * np.maximum(1, np.abs(upper)))
        )
    active[at_lower] = -1
    active[at_upper] = 1
    return active


def _coleman_li_scaling(x, gradient, lower, upper) -> np.ndarray:
    """v of Coleman & Li (1996): the distance to the bound the gradient points to (1 where that
    bound is infinite); ‖v·g‖∞ is trf's first-order optimality with bounds."""
    v = np.ones_like(x)
    towards_upper = (gradient < 0) & np.isfinite(upper)
    towards_lower = (gradient > 0) & np.isfinite(lower)
    v[towards_upper] = (upper - x)[towards_upper]
    v[towards_lower] = (x - lower)[towards_lower]
    return v
