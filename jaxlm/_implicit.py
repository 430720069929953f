"""Gradients through a solve: the implicit-function-theorem adjoint and the unrolled one.

At a minimum x*(θ) of F(x, θ) = ½‖r(x, θ)‖² the gradient vanishes, ∇ₓF(x*(θ), θ) = 0 for every
θ. Differentiating that identity in θ gives the tangent of the solution,

    H ẋ = −∂θ∇ₓF · θ̇,        H = ∇²ₓF = JᵀJ + Σᵢ rᵢ∇²rᵢ,

which depends only on the converged point, not on the iterations that reached it: the
backward pass costs one Hessian and one small linear solve, whatever the number of steps, and
its memory does not grow with them. The mixed derivative ∂θ∇ₓF·θ̇ is a Jacobian-vector
product of the gradient, and everything after it is linear in θ̇, so JAX transposes this rule
into reverse mode (`jax.grad`, `jax.vjp`) by itself.

The Hessian is exact by default. JᵀJ (the Gauss–Newton approximation) is exact only when the
residuals vanish at the solution; `hessian="gauss_newton"` is offered for speed where they
do, and is wrong by the relative size of Σᵢ rᵢ∇²rᵢ otherwise.

H is solved through its eigendecomposition. Eigenvalues with |λ| ≤ n·ε·max|λ| are dropped
(the pseudo-inverse, which gives the minimum-norm tangent when some parameters are not
identifiable), so a singular Hessian never produces NaN; when that happens, or when H has a
negative eigenvalue (the point is a saddle, not a minimum), the fit's status becomes
`Status.DERIVATIVE_REGULARISED`.

References:
    B. M. Bell and J. V. Burke, "Algorithmic differentiation of implicit functions and optimal
    values", Advances in Automatic Differentiation, 2008.
    M. Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022.
"""

import abc
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from ._loop import pinned_free
from ._solution import SUCCESS_CODES, Status

# A solve as the adjoints see it: `primal(inputs, loop_kind)` runs the solver and returns
# (x, residual, cost, state, num_steps, trace); `evaluate(x, inputs)` returns (cost, flat residual),
# the residual being empty for a scalar cost (`minimize`).
PrimalFn = Callable[[Any, str], tuple]
EvaluateFn = Callable[[Float[Array, " n"], Any], tuple[Float[Array, ""], Float[Array, " m"]]]


class AbstractAdjoint(eqx.Module):
    """How derivatives of a solution with respect to `args` are computed."""

    @abc.abstractmethod
    def apply(self, primal: PrimalFn, evaluate: EvaluateFn, inputs: Any, bounds=None) -> tuple:
        """Run `primal` with derivatives through it; `bounds` (flat lower, upper) or None."""


class ImplicitAdjoint(AbstractAdjoint):
    """Differentiate the converged point by the implicit function theorem (the default).

    Args:
        hessian: "exact" (JᵀJ + Σ rᵢ∇²rᵢ, from `jax.hessian`-style forward-over-reverse
            differentiation; the default) or "gauss_newton" (JᵀJ only: cheaper, and exact
            only when the residuals vanish at the solution).

    The derivative is that of the exact minimiser, so it is as accurate as the solve: tighten
    ftol/xtol if you compare it with finite differences. Derivatives with respect to the
    starting point `x0` are zero (the minimiser does not depend on where the solve started).
    """

    hessian: Literal["exact", "gauss_newton"] = eqx.field(default="exact", static=True)

    def __check_init__(self):
        if self.hessian not in ("exact", "gauss_newton"):
            raise ValueError(f"hessian must be 'exact' or 'gauss_newton', got {self.hessian!r}.")

    def apply(self, primal, evaluate, inputs, bounds=None):
        return _implicit_solve((inputs, bounds), primal=primal, evaluate=evaluate, hessian=self.hessian)


class UnrolledAdjoint(AbstractAdjoint):
    """Differentiate through the iterations themselves, as the solver took them.

    Useful to compare with the implicit derivative and for fits stopped early on purpose
    (where the result is not a minimiser and the implicit derivative does not apply). The
    loop becomes a bounded loop of `max_steps` iterations (Equinox's `bounded` while loop,
    which supports forward and reverse mode): time and memory grow with `max_steps`, so set
    it no larger than the fit needs.
    """

    def apply(self, primal, evaluate, inputs, bounds=None):
        del evaluate, bounds  # the projection onto the box is differentiated like every other step
        return primal(inputs, "bounded")


@eqx.filter_custom_jvp
def _implicit_solve(inputs_and_bounds, *, primal, evaluate, hessian):
    inputs, _ = inputs_and_bounds  # the bounds are read by the derivative rule only
    return primal(inputs, "lax")


@_implicit_solve.def_jvp
def _implicit_solve_jvp(primals, tangents, *, primal, evaluate, hessian):
    ((inputs, bounds),) = primals
    ((tangent_inputs, _),) = tangents  # the bounds are not differentiated
    x, r, cost, state, num_steps, trace = primal(inputs, "lax")

    # Split the inputs into those with a tangent (differentiated) and the rest.
    differentiated = jtu.tree_map(lambda t: t is not None, tangent_inputs, is_leaf=lambda t: t is None)
    diff_inputs, other_inputs = eqx.partition(inputs, differentiated)

    def evaluate_at(x, diff_inputs):
        return evaluate(x, eqx.combine(diff_inputs, other_inputs))

    def gradient(x, diff_inputs):
        return jax.grad(lambda x: evaluate_at(x, diff_inputs)[0])(x)

    if hessian == "exact":
        matrix = jax.jacfwd(gradient)(x, diff_inputs)
    else:
        if r.size == 0:
            raise ValueError(
                "ImplicitAdjoint(hessian='gauss_newton') needs residuals; with jaxlm.minimize use "
                "ImplicitAdjoint() (the exact Hessian)."
            )
        jac = jax.jacfwd(lambda x: evaluate_at(x, diff_inputs)[1])(x)
        matrix = jac.T @ jac
    matrix = 0.5 * (matrix + matrix.T)
    _, mixed = jax.jvp(lambda d: gradient(x, d), (diff_inputs,), (tangent_inputs,))
    if bounds is not None:
        # Parameters pinned at a bound stay there for small changes of θ: ẋᵢ = 0, and the free
        # ones solve the reduced system H_ff ẋ_f = −(∂θ∇ₓF·θ̇)_f.
        free = pinned_free(x, state.grad, *bounds)
        matrix = jnp.where(free[:, None] & free[None, :], matrix, 0) + jnp.diag(jnp.where(free, 0, 1))
        mixed = jnp.where(free, mixed, 0)
    eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
    cutoff = matrix.shape[0] * jnp.finfo(matrix.dtype).eps * jnp.max(jnp.abs(eigenvalues))
    kept = jnp.abs(eigenvalues) > cutoff
    inverse_eigenvalues = jnp.where(kept, 1 / jnp.where(kept, eigenvalues, 1), 0)

    # H ẋ = −∂θ∇ₓF · θ̇, then the tangents of the cost and the residuals at (x*, θ) follow.
    tangent_x = -(eigenvectors @ (inverse_eigenvalues * (eigenvectors.T @ mixed)))
    _, (tangent_cost, tangent_r) = jax.jvp(evaluate_at, (x, diff_inputs), (tangent_x, tangent_inputs))

    regularised = ~jnp.all(kept) | (jnp.min(eigenvalues) < 0)
    converged = jnp.isin(state.status, jnp.array(SUCCESS_CODES))
    status = jnp.where(converged & regularised, Status.DERIVATIVE_REGULARISED, state.status)
    state = eqx.tree_at(lambda s: s.status, state, status.astype(state.status.dtype))

    primal_out = (x, r, cost, state, num_steps, trace)
    tangent_state, tangent_trace = jtu.tree_map(lambda _: None, (state, trace))
    return primal_out, (tangent_x, tangent_r, tangent_cost, tangent_state, None, tangent_trace)
