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

With many parameters (`MatrixFreeLM`) H cannot be formed: the n × n matrix and its O(n³)
eigendecomposition are what the solver avoided. There H ẋ = −∂θ∇ₓF·θ̇ is solved by conjugate
gradients on Hessian–vector products instead (`jax.linearize` of ∇ₓF, forward over reverse, or
Jᵀ(J·v) for the Gauss–Newton H), each costing a few evaluations of r, inside
`lax.custom_linear_solve`, which makes reverse mode solve with H again rather than transpose the
CG loop. CG cannot take a pseudo-inverse, nor tell a singular or indefinite H from a slow
solve, so where it meets non-positive curvature or does not reach its tolerance the tangent is
NaN (a loud failure, never a silent wrong derivative); the eigendecomposition is the one to use
there. From 0, CG stays in the range of H, so with a singular H it still finds the minimum-norm
tangent when the right-hand side lies in that range (a change of the data that moves the
solution within it, in forward mode); a reverse-mode cotangent generally does not, and the
gradient is NaN.

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
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from ._conjugate_gradients import conjugate_gradients
from ._loop import pinned_free
from ._solution import Status, succeeded

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
        linear_solver: how H ẋ = −∂θ∇ₓF·θ̇ is solved: "eigh" (H formed, its pseudo-inverse by
            an eigendecomposition: for up to a few thousand parameters), "cg" (conjugate
            gradients on Hessian–vector products, H never formed: memory O(n); NaN tangents
            where H is singular or indefinite along the solve), or "auto" (the default): "cg"
            for `MatrixFreeLM`, "eigh" for every other solver.
        cg_tolerance: CG stops at ‖H ẋ + b‖ ≤ cg_tolerance·‖b‖; None means √ε of the dtype
            (1.5e-8 in float64, 3.5e-4 in float32).
        max_cg_iterations: the most CG iterations; None means 2n (n in exact arithmetic, more
            for rounding). Each costs one Hessian–vector product.

    The derivative is that of the exact minimiser, so it is as accurate as the solve: tighten
    ftol/xtol if you compare it with finite differences. Derivatives with respect to the
    starting point `x0` are zero (the minimiser does not depend on where the solve started).
    """

    hessian: Literal["exact", "gauss_newton"] = eqx.field(default="exact", static=True)
    linear_solver: Literal["auto", "eigh", "cg"] = eqx.field(default="auto", static=True)
    cg_tolerance: float | None = eqx.field(default=None, static=True)
    max_cg_iterations: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.hessian not in ("exact", "gauss_newton"):
            raise ValueError(f"hessian must be 'exact' or 'gauss_newton', got {self.hessian!r}.")
        if self.linear_solver not in ("auto", "eigh", "cg"):
            raise ValueError(f"linear_solver must be 'auto', 'eigh' or 'cg', got {self.linear_solver!r}.")
        if self.cg_tolerance is not None and not 0 < self.cg_tolerance < 1:
            raise ValueError(f"cg_tolerance must be None or in (0, 1), got {self.cg_tolerance!r}.")
        iterations = self.max_cg_iterations
        valid = isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1
        if iterations is not None and not valid:
            raise ValueError(f"max_cg_iterations must be None or an int >= 1, got {iterations!r}.")

    def apply(self, primal, evaluate, inputs, bounds=None):
        if self.linear_solver == "auto":
            raise ValueError("linear_solver='auto' is resolved by least_squares: pass 'eigh' or 'cg' here.")
        return _implicit_solve(
            (inputs, bounds),
            primal=primal,
            evaluate=evaluate,
            hessian=self.hessian,
            linear_solver=self.linear_solver,
            cg_options=(self.cg_tolerance, self.max_cg_iterations),
        )


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
def _implicit_solve(inputs_and_bounds, *, primal, evaluate, hessian, linear_solver, cg_options):
    inputs, _ = inputs_and_bounds  # the bounds are read by the derivative rule only
    return primal(inputs, "lax")


@_implicit_solve.def_jvp
def _implicit_solve_jvp(primals, tangents, *, primal, evaluate, hessian, linear_solver, cg_options):
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

    if hessian == "gauss_newton" and r.size == 0:
        raise ValueError(
            "ImplicitAdjoint(hessian='gauss_newton') needs residuals; with jaxlm.minimize use "
            "ImplicitAdjoint() (the exact Hessian)."
        )
    _, mixed = jax.jvp(lambda d: gradient(x, d), (diff_inputs,), (tangent_inputs,))
    # Parameters pinned at a bound stay there for small changes of θ: ẋᵢ = 0, and the free ones
    # solve the reduced system H_ff ẋ_f = −(∂θ∇ₓF·θ̇)_f.
    free = None if bounds is None else pinned_free(x, state.grad, *bounds)
    if free is not None:
        mixed = jnp.where(free, mixed, 0)

    def residual(x):
        return evaluate_at(x, diff_inputs)[1]

    operator = (hessian, lambda x: gradient(x, diff_inputs), residual, x, free)
    if linear_solver == "cg":
        tangent_x = -_conjugate_gradient_solve(_hessian_times(*operator), mixed, cg_options)
        regularised = False  # CG gives NaN instead (see the module docstring)
    else:
        solution, regularised = _eigh_solve(_hessian(*operator), mixed)
        tangent_x = -solution

    _, (tangent_cost, tangent_r) = jax.jvp(evaluate_at, (x, diff_inputs), (tangent_x, tangent_inputs))

    converged = succeeded(state.status)
    status = jnp.where(converged & regularised, Status.DERIVATIVE_REGULARISED, state.status)
    state = eqx.tree_at(lambda s: s.status, state, status.astype(state.status.dtype))

    primal_out = (x, r, cost, state, num_steps, trace)
    tangent_state, tangent_trace = jtu.tree_map(lambda _: None, (state, trace))
    return primal_out, (tangent_x, tangent_r, tangent_cost, tangent_state, None, tangent_trace)


def _hessian(kind, gradient, residual, x, free) -> Float[Array, "n n"]:
    """H at x, formed: the exact ∇²F or JᵀJ, symmetrised, with the identity for pinned parameters."""
    if kind == "exact":
        matrix = jax.jacfwd(gradient)(x)
    else:
        jac = jax.jacfwd(residual)(x)
        matrix = jac.T @ jac
    matrix = 0.5 * (matrix + matrix.T)
    if free is not None:
        matrix = jnp.where(free[:, None] & free[None, :], matrix, 0) + jnp.diag(jnp.where(free, 0, 1))
    return matrix


def _eigh_solve(matrix, rhs) -> tuple[Float[Array, " n"], Array]:
    """H⁺·rhs by the eigendecomposition, and whether H was singular or indefinite."""
    eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
    cutoff = matrix.shape[0] * jnp.finfo(matrix.dtype).eps * jnp.max(jnp.abs(eigenvalues))
    kept = jnp.abs(eigenvalues) > cutoff
    inverse_eigenvalues = jnp.where(kept, 1 / jnp.where(kept, eigenvalues, 1), 0)
    regularised = ~jnp.all(kept) | (jnp.min(eigenvalues) < 0)
    return eigenvectors @ (inverse_eigenvalues * (eigenvectors.T @ rhs)), regularised


def _hessian_times(kind, gradient, residual, x, free):
    """v ↦ H·v at x without forming H: a Jacobian–vector product of ∇F (forward over reverse) or
    Jᵀ(J·v), with the identity for pinned parameters."""
    if kind == "exact":
        _, product = jax.linearize(gradient, x)
    else:
        _, jvp = jax.linearize(residual, x)
        transpose = jax.linear_transpose(jvp, x)

        def product(v):
            return transpose(jvp(v))[0]

    if free is None:
        return product
    return lambda v: jnp.where(free, product(jnp.where(free, v, 0)), v)


def _identity(v):
    return v


def _conjugate_gradient_solve(matrix_times, rhs, cg_options) -> Float[Array, " n"]:
    """H⁻¹·rhs by CG, NaN where CG does not reach its tolerance. In `lax.custom_linear_solve`, so that
    JAX transposes the solve (H is symmetric: the transpose is the same solve) instead of the loop."""
    tolerance, max_iterations = cg_options
    tolerance = float(np.sqrt(np.finfo(rhs.dtype).eps)) if tolerance is None else tolerance
    max_iterations = 2 * rhs.shape[0] if max_iterations is None else max_iterations

    def solve(matrix_times, rhs):
        solution, _, converged = conjugate_gradients(matrix_times, rhs, _identity, tolerance, max_iterations)
        return jnp.where(converged, solution, jnp.nan)

    return lax.custom_linear_solve(matrix_times, rhs, solve, symmetric=True)
