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

A callable loss is scipy's too: `loss(z)` returns an array of shape (3, m) with ρ(z), ρ'(z) and
ρ''(z) (written with jax.numpy it is traced; otherwise it is called on the host with NumPy
arrays through `jax.pure_callback`). Its residuals r̂ᵢ = f_scale·sign(uᵢ)·√ρ(uᵢ²), u = r/f_scale,
are differentiated with the ρ' it returns: dr̂/dr = ρ'(u²)·|u|/√ρ(u²), and √ρ'(0) at u = 0.
"""

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._traceable import cannot_trace

Loss = Literal["linear", "soft_l1", "huber", "cauchy", "arctan"] | Callable[[Array], Array]
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


def callable_rho(loss: Callable, z: Array) -> Array:
    """(ρ(z), ρ'(z), ρ''(z)) of a callable loss, shape (3, *z.shape): traced when `loss` is written
    with jax.numpy, else computed on the host from NumPy arrays."""
    flat = jnp.ravel(z)
    expected = jax.ShapeDtypeStruct((3, flat.size), flat.dtype)
    try:
        rho = jnp.asarray(loss(flat))
    except Exception as error:
        if not cannot_trace(error):
            raise
        rho = jax.pure_callback(
            lambda z: np.asarray(loss(np.asarray(z)), expected.dtype),
            expected,
            flat,
            vmap_method="sequential",
        )
    if rho.shape != expected.shape:
        raise ValueError(
            f"loss(z) must return an array of shape (3, m) = {expected.shape}: rows ρ(z), ρ'(z), ρ''(z) "
            f"(as in scipy.optimize.least_squares), got shape {rho.shape}."
        )
    return rho.astype(flat.dtype).reshape((3, *jnp.shape(z)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _callable_unit_residual(loss, u):
    """sign(u)·√ρ(u²), for residuals u in units of f_scale."""
    return jnp.sign(u) * jnp.sqrt(jnp.maximum(callable_rho(loss, u**2)[0], 0))


@_callable_unit_residual.defjvp
def _callable_unit_residual_jvp(loss, primals, tangents):
    (u,), (du,) = primals, tangents
    rho = callable_rho(loss, u**2)
    root = jnp.sqrt(jnp.maximum(rho[0], 0))
    derivative = jnp.where(
        root > 0, rho[1] * jnp.abs(u) / jnp.where(root > 0, root, 1), jnp.sqrt(jnp.maximum(rho[1], 0))
    )
    return jnp.sign(u) * root, derivative * du


def check_loss(loss, f_scale) -> None:
    if not (callable(loss) or loss in LOSSES):
        raise ValueError(
            f"loss must be one of {', '.join(map(repr, LOSSES))} or a callable loss(z) -> (3, m) array "
            f"(as in scipy), got {loss!r}."
        )
    if not (isinstance(f_scale, jax.core.Tracer) or float(f_scale) > 0):
        raise ValueError(
            f"f_scale must be > 0 (the residual size where the loss turns robust), got {f_scale}."
        )


def robust_residual(residual: Float[Array, "..."], loss, f_scale) -> Float[Array, "..."]:
    """r̂ = r·√(ρ(z)/z), z = (r/f_scale)²: residuals whose ½‖r̂‖² is the robust cost."""
    if callable(loss):
        return f_scale * _callable_unit_residual(loss, residual / f_scale)
    if loss == "linear":
        return residual
    z = (residual / f_scale) ** 2
    return residual * jnp.sqrt(_rho_over_z(loss, z))


def robust_jacobian_weights(residual: Float[Array, " m"], loss, f_scale) -> Float[Array, " m"]:
    """√max(ρ'(z) + 2ρ''(z)·z, eps): the row weights of scipy's rescaled Jacobian J̃."""
    z = (residual / f_scale) ** 2
    if callable(loss):
        _, first, second = callable_rho(loss, z)
    else:
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


def with_loss_jacobian(fun, jac, loss: Loss, f_scale):
    """For a user's Jacobian `jac` of `fun`: itself for least squares, or the Jacobian of the
    robust residuals, diag(dr̂/dr)·J, as an (m, n) matrix (`jac` may return the matrix or the pytree
    of `jax.jacfwd(fun)`)."""
    if jac is None or loss == "linear":
        return jac

    def robust_jac(params, *args):
        residual = jnp.ravel(fun(params, *args))
        slope = jax.jvp(lambda r: robust_residual(r, loss, f_scale), (residual,), (jnp.ones_like(residual),))[
            1
        ]
        out = jac(params, *args)
        leaves = jax.tree.leaves(out)
        if isinstance(out, jax.Array | np.ndarray) and jnp.ndim(out) == 2:
            matrix = jnp.asarray(out)
        else:
            matrix = jnp.concatenate([jnp.reshape(leaf, (residual.size, -1)) for leaf in leaves], axis=1)
        return slope[:, None] * matrix

    return robust_jac
