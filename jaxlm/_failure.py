"""How a fit that failed reaches a caller in Python, as scipy's `curve_fit` tells it.

Called from Python (no `jit`, `vmap` or `grad` tracing the call), `curve_fit` raises
`RuntimeError` for a fit that did not converge and warns with `OptimizeWarning` when the
covariance cannot be estimated; for a batch of datasets it warns once with the counts instead
(the other fits are good). Under tracing nothing can be raised: failure is the per-fit status.
`jaxlm.fit` and `least_squares` report failure as a status only (`reporting_off`).

`OptimizeWarning` is a subclass of scipy's `OptimizeWarning` when scipy is installed, so that
code which filters scipy's warning filters jaxlm's too. It is made on first use: importing
scipy.optimize takes a third of a second.
"""

import contextlib
import contextvars
import functools
import warnings

import numpy as np

from ._solution import SUCCESS_CODES, Status

_REPORTING = contextvars.ContextVar("jaxlm_failure_reporting", default=True)


@contextlib.contextmanager
def reporting_off():
    """Within this context `curve_fit` neither raises nor warns about the outcome of a fit."""
    token = _REPORTING.set(False)
    try:
        yield
    finally:
        _REPORTING.reset(token)


def reporting() -> bool:
    return _REPORTING.get()


@functools.cache
def optimize_warning() -> type:
    """jaxlm.OptimizeWarning: the covariance of the parameters cannot be estimated, or fits of a
    batch failed."""
    try:
        from scipy.optimize import OptimizeWarning as base
    except ImportError:  # pragma: no cover - scipy comes with jax
        base = UserWarning
    return type(
        "OptimizeWarning",
        (base,),
        {"__module__": "jaxlm", "__doc__": optimize_warning.__doc__.replace("jaxlm.OptimizeWarning: t", "T")},
    )


def raise_if_failed(status: int, caller: str) -> None:
    if status in SUCCESS_CODES:
        return
    status = Status(int(status))
    if not status.success:
        raise RuntimeError(
            f"Optimal parameters not found: {caller} stopped with status {status.name}: {status.message} "
            "(jaxlm.fit returns the status instead of raising, and so does curve_fit under jax.jit.)"
        )


def warn_covariance(singular, stacklevel: int) -> None:
    if singular is False:
        return
    singular = np.asarray(singular)
    if singular.ndim == 0:
        if singular:
            warnings.warn(
                "Covariance of the parameters could not be estimated: the Jacobian at the solution is "
                "rank-deficient (a parameter the data do not determine), or there are no more data "
                "points than parameters; pcov is inf.",
                optimize_warning(),
                stacklevel=stacklevel,
            )
        return
    count = int(np.sum(singular))
    if count:
        warnings.warn(
            f"Covariance of the parameters could not be estimated for {count} of {singular.size} fits "
            "(their pcov is inf): infodict['covariance_singular'] (full_output=True) says which.",
            optimize_warning(),
            stacklevel=stacklevel,
        )


def warn_batch_failures(status, caller: str, stacklevel: int) -> None:
    """One warning with the number of failed fits of a batch, by status."""
    status = np.asarray(status).ravel()
    failed = ~np.isin(status, [int(s) for s in Status if s.success])
    if not np.any(failed):
        return
    values, counts = np.unique(status[failed], return_counts=True)
    by_status = ", ".join(f"{Status(int(v)).name}: {c}" for v, c in zip(values, counts, strict=True))
    warnings.warn(
        f"{caller}: {int(failed.sum())} of {status.size} fits did not converge ({by_status}). Their popt "
        "is the last iterate and their pcov is NaN; infodict['success'] and infodict['status'] "
        "(full_output=True) say which, and jaxlm.Status(code).message says what to do.",
        optimize_warning(),
        stacklevel=stacklevel,
    )
