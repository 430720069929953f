"""scipy's options, as jaxlm's solvers understand them.

`scipy.optimize.curve_fit` hands its `**kwargs` to `leastsq` (method "lm") or to `least_squares`
(methods "trf" and "dogbox"); `scipy.optimize.least_squares` takes most of them itself. Here they
are checked as scipy checks them and translated:

    method "lm"                    LevenbergMarquardt in MINPACK's trust-region form (Moré's),
                                   scaled by diag(JᵀJ), Δ₀ = factor·‖Dx₀‖ (factor 100)
    method "trf", "dogbox"         the same trust-region form, bounded (its steps cut at the
                                   box), unscaled unless x_scale="jac", Δ₀ = ‖Dx₀‖, as trf
    method None (curve_fit)        jaxlm's default LevenbergMarquardt (Nielsen's damping)
    maxfev, max_nfev               max_steps = evaluations − 1 (each LM step evaluates once)
    ftol, xtol, gtol               the solver's tolerances (None, which disables a test in
                                   scipy, is 0 in jaxlm; gtol is the absolute ‖g‖∞ test of trf)
    x_scale, diag                  "jac": Marquardt's scaling by diag(JᵀJ); an array: D =
                                   1/x_scale (diag = 1/x_scale)
    factor                         Δ₀ = factor·‖Dx₀‖ for method "lm"
    diff_step, epsfcn              checked; without effect: derivatives are exact (autodiff)
    tr_solver, tr_options          checked; the normal equations are solved directly
    jac_sparsity                   checked against the shape of the Jacobian; not needed
    workers                        accepted; no finite differences to spread over workers

and jaxlm's status is told back in scipy's codes (`minpack_code`, `least_squares_code`).
"""

import dataclasses

import numpy as np

from ._least_squares import default_instance
from ._solution import Status
from ._solver import LevenbergMarquardt

METHODS = (None, "lm", "trf", "dogbox")
FINITE_DIFFERENCES = ("2-point", "3-point", "cs")
LSMR_OPTIONS = ("damp", "atol", "btol", "conlim", "maxiter", "show", "x0", "regularize")
CURVE_FIT_OPTIONS = (
    # leastsq's
    "col_deriv",
    "ftol",
    "xtol",
    "gtol",
    "maxfev",
    "epsfcn",
    "factor",
    "diag",
    # least_squares's (loss, f_scale and verbose are curve_fit's own keywords)
    "x_scale",
    "diff_step",
    "tr_solver",
    "tr_options",
    "jac_sparsity",
    "max_nfev",
    "workers",
)


def check_method(method) -> None:
    if method not in METHODS:
        raise ValueError(
            f"method must be None, 'lm', 'trf' or 'dogbox' (as in scipy; all run jaxlm's "
            f"LevenbergMarquardt, see solver=), got {method!r}."
        )


def check_jac(jac, signature: str) -> None:
    if jac is None or callable(jac) or jac in FINITE_DIFFERENCES:
        return
    raise ValueError(
        f"jac must be '2-point', '3-point', 'cs' (all mean exact derivatives by JAX) or callable as "
        f"{signature}, got {jac!r}."
    )


def check_unknown(kwargs: dict, allowed, function: str) -> None:
    if not kwargs:
        return
    unknown = sorted(set(kwargs) - set(allowed))
    if "args" in unknown:
        raise ValueError(
            "'args' is not a supported keyword argument: f is called as f(xdata, *params); pass "
            "extra data in xdata (a tuple of arrays), or close over it."
        )
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}.")


def max_steps_from_evaluations(max_evaluations) -> int | None:
    """max_steps for at most `max_evaluations` evaluations of the residuals (scipy's maxfev or
    max_nfev): the start takes one, each step one more. None when not given."""
    if max_evaluations is None:
        return None
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int | np.integer):
        raise ValueError(f"max_nfev (maxfev) must be None or a positive integer, got {max_evaluations!r}.")
    if max_evaluations <= 0:
        raise ValueError("`max_nfev` must be None or positive integer.")
    return int(max_evaluations) - 1


def tolerances(options: dict) -> dict:
    """The solver fields for scipy's ftol, xtol, gtol among `options` (None disables a test: 0)."""
    chosen = {}
    for name in ("ftol", "xtol", "gtol"):
        if name not in options:
            continue
        value = options[name]
        value = 0.0 if value is None else value
        if np.iscomplexobj(value) or not np.ndim(value) == 0 or not float(value) >= 0:
            raise ValueError(f"{name} must be a number >= 0 or None, got {options[name]!r}.")
        chosen[name] = float(value)
    return chosen


def with_tolerances(solver, chosen: dict):
    """`solver` with the tolerances in `chosen` replaced."""
    if not chosen or all(getattr(solver, name, None) == value for name, value in chosen.items()):
        return solver
    missing = [name for name in chosen if not hasattr(solver, name)]
    if missing:
        raise ValueError(
            f"{type(solver).__name__} has no tolerance {missing[0]}; set it on the solver instead."
        )
    return dataclasses.replace(solver, **chosen)


def solver_for(method, num_params: int, x_scale=None, diag=None, factor=None, chosen_tolerances=None):
    """The LevenbergMarquardt that does the job of scipy's `method` (see the module docstring)."""
    if diag is not None:
        x_scale = 1 / np.asarray(diag, dtype=float)
    array_scale = None
    if x_scale is not None and not isinstance(x_scale, str):
        array_scale = np.broadcast_to(np.asarray(x_scale, dtype=float), (num_params,))
    if method is None:
        options = {}
    elif method == "lm":
        options = {
            "damping_rule": "trust_region",
            "initial_radius": 100.0 if factor is None else float(factor),
        }
    else:
        options = {"damping_rule": "trust_region", "initial_radius": 1.0}
    if method is not None:  # scipy's algorithm as it is, without jaxlm's fallback stage
        options.update(fallback_after=None)
    if array_scale is not None:
        options.update(scaled=False, x_scale=tuple(array_scale.tolist()))
    elif method in ("trf", "dogbox") and not (isinstance(x_scale, str) and x_scale == "jac"):
        options.update(scaled=False)  # scipy's default x_scale for trf and dogbox is 1
    # One instance per configuration, shared by every call (building an Equinox module costs tens of µs).
    return default_instance(LevenbergMarquardt, **options, **(chosen_tolerances or {}))


def check_x_scale(x_scale, num_params: int, name: str = "x_scale") -> None:
    if x_scale is None or (isinstance(x_scale, str) and x_scale == "jac"):
        return
    message = f"`{name}` must be 'jac' or array_like with positive numbers."
    if isinstance(x_scale, str) or np.iscomplexobj(x_scale):
        raise ValueError(message)
    try:
        values = np.asarray(x_scale, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(message)
    if values.ndim != 0 and values.shape != (num_params,):
        raise ValueError(f"Inconsistent shapes between `{name}` and the parameters ({num_params}).")


def check_tr_options(tr_solver, tr_options) -> None:
    if tr_solver not in (None, "exact", "lsmr"):
        raise ValueError("`tr_solver` must be None, 'exact' or 'lsmr'.")
    if tr_options is None:
        return
    if not isinstance(tr_options, dict):
        raise TypeError(f"tr_options must be a dict, got {type(tr_options).__name__}.")
    unknown = sorted(set(tr_options) - set(LSMR_OPTIONS))
    if tr_solver == "lsmr" and unknown:
        raise TypeError(f"lsmr() got an unexpected keyword argument {unknown[0]!r} (from tr_options).")


def check_numbers(options: dict, names) -> None:
    for name in names:
        value = options.get(name)
        if value is not None and (np.iscomplexobj(value) or not np.all(np.asarray(value, dtype=float) >= 0)):
            raise ValueError(f"{name} must be None or a number >= 0, got {value!r}.")


def check_verbose(verbose) -> None:
    if verbose not in (0, 1, 2):  # True and False are 1 and 0
        raise ValueError("`verbose` must be in [0, 1, 2] (or a bool).")


def check_jac_sparsity(jac_sparsity, num_residuals: int, num_params: int) -> None:
    if jac_sparsity is None:
        return
    shape = np.shape(jac_sparsity) if not hasattr(jac_sparsity, "shape") else tuple(jac_sparsity.shape)
    if tuple(shape) != (num_residuals, num_params):
        raise ValueError(
            f"`jac_sparsity` has wrong shape: expected {(num_residuals, num_params)}, got {tuple(shape)}."
        )


def curve_fit_max_steps(kwargs: dict, max_steps) -> int:
    """max_steps from curve_fit's max_steps, maxfev or max_nfev (one of them), default 1000."""
    if not kwargs:
        return 1000 if max_steps is None else max_steps
    given = [name for name in ("max_steps", "maxfev", "max_nfev") if name != "max_steps" and name in kwargs]
    if max_steps is not None:
        given.insert(0, "max_steps")
    if len(given) > 1:
        raise ValueError(f"pass one of {' and '.join(given)}: they all bound the number of steps.")
    if max_steps is not None:
        return max_steps
    from_evaluations = max_steps_from_evaluations(kwargs.get("maxfev", kwargs.get("max_nfev")))
    return 1000 if from_evaluations is None else from_evaluations


# jaxlm's status in scipy's codes. leastsq (MINPACK): 1 ftol, 2 xtol, 3 both, 4 gtol (success),
# 5 maxfev, 6–8 no further progress possible, 0 improper input.
_MINPACK = {
    Status.CONVERGED_FTOL: 1,
    Status.CONVERGED_XTOL: 2,
    Status.CONVERGED_GTOL: 4,
    Status.DERIVATIVE_REGULARISED: 1,
    Status.MAX_STEPS: 5,
    Status.NO_DESCENT: 6,
}
# least_squares: 1 gtol, 2 ftol, 3 xtol, 4 both (success), 0 max_nfev, -1 failure, -2 callback.
_LEAST_SQUARES = {
    Status.CONVERGED_GTOL: 1,
    Status.CONVERGED_FTOL: 2,
    Status.CONVERGED_XTOL: 3,
    Status.DERIVATIVE_REGULARISED: 2,
    Status.MAX_STEPS: 0,
    Status.STOPPED_BY_CALLBACK: -2,
}
MINPACK_CODES = np.array([_MINPACK.get(status, 0) for status in sorted(Status)], np.int32)
LEAST_SQUARES_CODES = np.array([_LEAST_SQUARES.get(status, -1) for status in sorted(Status)], np.int32)
STATUS_OFFSET = -min(Status)  # Status.RUNNING is -1: codes are looked up at status + 1

LEAST_SQUARES_MESSAGES = {
    -2: "Stopped because `callback` raised `StopIteration` or returned `True`.",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}
