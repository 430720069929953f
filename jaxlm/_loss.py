"""Robust losses, with the definitions of `scipy.optimize.least_squares`.

With z = (r/f_scale)² the cost is F = ½·f_scale²·Σ ρ(zᵢ), where

    linear    ρ(z) = z
    soft_l1   ρ(z) = 2(√(1 + z) − 1)
    huber     ρ(z) = z if z ≤ 1 else 2√z − 1
    cauchy    ρ(z) = ln(1 + z)
    arctan    ρ(z) = arctan(z)

All behave like z for small residuals and grow more slowly for large ones, so that outliers
pull less on the fit; f_scale is the residual size where that starts.

How the solvers see it (our choice): as the ordinary least-squares problem on the residuals

    r̂ᵢ = rᵢ·√(ρ(zᵢ)/zᵢ),    so that ½‖r̂‖² = ½·f_scale²·Σ ρ(zᵢ) exactly,

which every solver, `vmap`, and the implicit gradients (whose Hessian is that of F itself)
handle unchanged. ρ(z)/z is written in closed forms that stay smooth at z = 0.

scipy instead keeps r and rescales the Gauss–Newton model (Triggs et al., "Bundle adjustment —
a modern synthesis", 2000): J̃ = diag(√(ρ' + 2ρ''z))·J. Both minimise the same F; the
covariance of a robust fit in `curve_fit` uses scipy's J̃ (`robust_jacobian_weights`), so that
it agrees with scipy's.
"""

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Loss = Literal["linear", "soft_l1", "huber", "cauchy", "arctan"]
LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def _rho(loss: str, z):
    if loss == "linear":
        return z
    if loss == "soft_l1":
        return 2 * (jnp.sqrt(1 + z) - 1)
    if loss == "huber":
        return jnp.where(z <= 1, z, 2 * jnp.sqrt(jnp.where(z <= 1, 1, z)) - 1)
    if loss == "cauchy":
        return jnp.log1p(z)
    return jnp.arctan(z)


def _rho_over_z(loss: str, z):
    """ρ(z)/z, equal to 1 at z = 0 and smooth there."""
    if loss == "linear":
        return jnp.ones_like(z)
    if loss == "soft_l1":
        return 2 / (jnp.sqrt(1 + z) + 1)
    if loss == "huber":
        large = jnp.where(z <= 1, 1, z)
        return jnp.where(z <= 1, 1, (2 * jnp.sqrt(large) - 1) / large)
    # Below the cut the Taylor series is exact to rounding (its next term is < z³ resp. z⁶/7).
    small = z < 1e-3
    safe = jnp.where(small, 1, z)
    if loss == "cauchy":
        return jnp.where(small, 1 - z / 2 + z**2 / 3, jnp.log1p(safe) / safe)
    return jnp.where(small, 1 - z**2 / 3 + z**4 / 5, jnp.arctan(safe) / safe)


def check_loss(loss, f_scale) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))} (as in scipy), got {loss!r}.")
    if not (isinstance(f_scale, jax.core.Tracer) or float(f_scale) > 0):
        raise ValueError(
            f"f_scale must be > 0 (the residual size where the loss turns robust), got {f_scale}."
        )


def robust_residual(residual: Float[Array, "..."], loss: str, f_scale) -> Float[Array, "..."]:
    """r̂ = r·√(ρ(z)/z), z = (r/f_scale)²: residuals whose ½‖r̂‖² is the robust cost."""
    if loss == "linear":
        return residual
    z = (residual / f_scale) ** 2
    return residual * jnp.sqrt(_rho_over_z(loss, z))


def robust_cost(residual: Float[Array, "..."], loss: str, f_scale) -> Float[Array, ""]:
    """½·f_scale²·Σ ρ((r/f_scale)²), scipy's `cost` for this loss."""
    return 0.5 * f_scale**2 * jnp.sum(_rho(loss, (residual / f_scale) ** 2))


def robust_jacobian_weights(residual: Float[Array, " m"], loss: str, f_scale) -> Float[Array, " m"]:
    """√max(ρ'(z) + 2ρ''(z)·z, eps): the row weights of scipy's rescaled Jacobian J̃."""
    z = (residual / f_scale) ** 2
    first = jax.vmap(jax.grad(lambda z: _rho(loss, z)))(z)
    second = jax.vmap(jax.grad(jax.grad(lambda z: _rho(loss, z))))(z)
    return jnp.sqrt(jnp.maximum(first + 2 * second * z, jnp.finfo(residual.dtype).eps))


def with_loss(fun, loss: Loss, f_scale):
    """`fun` itself for least squares, or, for a robust loss, the residual function the solver
    sees: rᵢ·√(ρ(zᵢ)/zᵢ) of `fun`'s residuals (see `robust_residual`)."""
    if loss == "linear":
        return fun

    def robust_fun(params, *args):
        return robust_residual(fun(params, *args), loss, f_scale)

    return robust_fun
