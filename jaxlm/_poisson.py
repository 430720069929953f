"""Poisson maximum likelihood: fitting counts (photons, events) with Gpufit's MLE estimator.

For counts zₙ ≥ 0 and model values fₙ > 0, the negative log-likelihood of Poisson data, less
the terms without the parameters, is half of Gpufit's χ²_MLE (Laurence & Chromy, "Efficient
maximum likelihood estimator fitting of histograms", Nature Methods 7, 338–339, 2010; Gpufit's
documentation, "fit estimator functions"):

    F = Σₙ (fₙ − zₙ) − Σ_{zₙ>0} zₙ ln(fₙ/zₙ)  ≥ 0,    F = 0 where f = z.

jaxlm fits it as a least-squares problem, on the deviance residuals

    r̂ₙ = sign(fₙ − zₙ)·√(2(fₙ − zₙ − zₙ ln(fₙ/zₙ))),    so that ½‖r̂‖² = F exactly,

as it fits robust losses (`_loss.py`): every solver, bounds, `vmap`, the batch driver and the
implicit gradients (whose Hessian is then that of F, so that the adjoint is the MLE's) take it
unchanged. The Gauss–Newton curvature of ½‖r̂‖² is Σ (dr̂ₙ/dfₙ)²∇fₙ∇fₙᵀ with
(dr̂/df)² = (1 − z/f)²/r̂², which is 1/z where f = z: at the solution it is the Fisher
information Σ (1/fₙ)∇fₙ∇fₙᵀ, and Gpufit's Σ (zₙ/fₙ²)∇fₙ∇fₙᵀ, to the size of the residuals.
In the same Levenberg–Marquardt it takes as few iterations as the Fisher curvature and fewer
than Gpufit's (benchmarks/README.md, "Curvature").

Written so that it is exact and smooth at f = z: with d = f/z − 1,

    r̂ = (f − z)·√(h(d)/z),    h(d) = 2(d − ln(1 + d))/d²  (h(0) = 1; its series for small |d|),

and r̂ = √(2f) where z = 0. A model value ≤ 0 where the count is > 0, or < 0 anywhere, has no
likelihood: r̂ is NaN there, so that a trial step there is rejected and a start there stops
with `NONFINITE_START`. (A model exactly 0 where the count is 0 is allowed, but √(2f) has an
infinite derivative there: keep the model > 0, e.g. with a background.)

The covariance of the parameters is the inverse of the Fisher information at the solution,
(Σ (1/fₙ)∇fₙ∇fₙᵀ)⁻¹: the Cramér–Rao lower bound (`curve_fit` returns it as pcov).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

ESTIMATORS = ("least_squares", "poisson")

# h(d) = 2 Σ_{n≥2} (−1)ⁿ dⁿ⁻²/n, through d⁸; below these |d| the series is used (its first
# term left out is < 2e-19 in float64, < 1e-7 in float32), above them the closed form, whose
# cancellation costs a relative 2·eps/|d|.
_SERIES = tuple(2 * (-1) ** n / n for n in range(2, 11))
_SERIES_BELOW = {64: 0.01, 32: 0.2}


def poisson_residual(model: ArrayLike, counts: ArrayLike) -> Array:
    """The deviance residuals r̂ of Poisson counts under the model (see the module docstring):
    ½‖r̂‖² is Gpufit's MLE objective χ²_MLE/2. Use it in a residual function to fit counts with
    any jaxlm solver, e.g. `fun = lambda p, x, z: jaxlm.poisson_residual(model(p, x), z)`."""
    model, counts = jnp.asarray(model), jnp.asarray(counts)
    return flat_poisson_residual(model, counts).reshape(jnp.broadcast_shapes(model.shape, counts.shape))


def flat_poisson_residual(model: ArrayLike, counts: ArrayLike) -> Array:
    """`poisson_residual`, raveled: what the solvers take. On flat arrays XLA:CPU vectorises the
    logarithm over a batch of (N, 25) spots, and not over one of (N, 5, 5), where the residuals
    of a 5×5 batch took 5× as long (also when only reshaped back at the end)."""
    model, counts = jnp.asarray(model), jnp.asarray(counts)
    dtype = jnp.result_type(model, counts)
    model, counts = jnp.broadcast_arrays(model.astype(dtype), counts.astype(dtype))
    return _deviance_residual(model.ravel(), counts.ravel())


@jax.custom_jvp
def _deviance_residual(model, counts):
    return _with_derivatives(model, counts)[0]


def _deviance_residual_jvp(primals, tangents):
    # r̂ is elementwise: its Jacobian is a diagonal scaling of the model's (J_r̂ = diag(∂r̂/∂f)·J_f),
    # which costs one product per tangent instead of pushing every tangent through h; counts
    # that are not differentiated (the usual case) cost nothing.
    residual, by_model, by_counts = _with_derivatives(*primals)
    tangent = jnp.zeros_like(residual)
    for derivative, direction in zip((by_model, by_counts), tangents, strict=True):
        if not isinstance(direction, jax.custom_derivatives.SymbolicZero):
            tangent = tangent + derivative * direction
    return residual, tangent


_deviance_residual.defjvp(_deviance_residual_jvp, symbolic_zeros=True)


def _with_derivatives(model, counts):
    """(r̂, ∂r̂/∂f, ∂r̂/∂z). With d = f/z − 1, h = h(d) and s = √(h/z): r̂ = (f − z)·s,
    ∂r̂/∂f = (1 − z/f)/r̂ = 1/(f·s), ∂r̂/∂z = −ln(f/z)/r̂ = −(1 − h·d/2)/(z·s) (as
    ln(1 + d) = d − h·d²/2). Where z = 0, r̂ = √(2f): the same with s = √(2/f), and ∂r̂/∂z
    (infinite) taken as 0."""
    counted = counts > 0
    z = jnp.where(counted, counts, 1)
    d = jnp.where(counted, model / z - 1, 0)
    h = _h(d)
    positive = jnp.where(model > 0, model, 1)
    scale = jnp.sqrt(jnp.where(counted, h, 2) / jnp.where(counted, z, positive))
    invalid = (model < 0) | ((model == 0) & counted) | (counts < 0)
    residual = jnp.where(invalid, jnp.nan, (model - counts) * scale)
    # The division last, so that XLA computes ∂r̂/∂f once rather than repeating these selects in
    # every sum of JᵀJ that reads the Jacobian (which took a 5×5 batch's steps to 1.5× as long).
    # √(2f) at f = 0 has an infinite derivative: 1/0.
    by_model = 1 / jnp.where(invalid, jnp.nan, jnp.where(model > 0, model * scale, 0))
    by_counts = jnp.where(invalid, jnp.nan, jnp.where(counted, -(1 - h * d / 2) / (z * scale), 0))
    return residual, by_model, by_counts


def _h(d):
    """2(d − ln(1 + d))/d² for d > −1, smooth (and differentiable) at d = 0."""
    below = _SERIES_BELOW[32 if jnp.finfo(d.dtype).bits <= 32 else 64]
    small = jnp.abs(d) < below
    safe = jnp.where(small, 1, d)  # the closed form away from 0
    closed = 2 * (safe - jnp.log1p(safe)) / safe**2
    series = jnp.zeros_like(d)
    for coefficient in reversed(_SERIES):  # Horner
        series = series * d + coefficient
    return jnp.where(small, series, closed)


def check_estimator(estimator: str, loss, jac) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"estimator must be 'least_squares' (the default) or 'poisson' (counts: Gpufit's MLE), "
            f"got {estimator!r}."
        )
    if estimator == "poisson" and not (isinstance(loss, str) and loss == "linear"):
        raise ValueError(
            f"estimator='poisson' is a likelihood of its own: leave loss='linear', got {loss!r}."
        )
    if estimator == "poisson" and jac is not None:
        raise ValueError(
            "estimator='poisson' differentiates the model with JAX (its deviance residuals are not "
            "the model): leave jac=None."
        )


def poisson_fun(fun):
    """The deviance residuals of `fun(params, *args) -> (model, counts)`, one function per `fun`
    (kept, so that the compiled solve for it is found again on the next call)."""
    try:
        return _POISSON_FUNS[fun]
    except (KeyError, TypeError):  # not yet, or fun cannot be a key
        pass

    def residual(params, *args):
        out = fun(params, *args)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(
                "with estimator='poisson', fun(params, *args) returns the pair (model values, counts), "
                f"got {type(out).__name__}."
            )
        model, counts = out
        return flat_poisson_residual(model, jnp.broadcast_to(counts, jnp.shape(model)))

    try:
        if len(_POISSON_FUNS) >= 64:
            _POISSON_FUNS.clear()
        _POISSON_FUNS[fun] = residual
    except TypeError:  # fun cannot be a key
        pass
    return residual


_POISSON_FUNS: dict = {}
