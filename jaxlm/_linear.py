"""The damped Gauss–Newton system (JᵀJ + diag(d)) h = −Jᵀr, solved fast and without losing accuracy.

The fast path equilibrates the normal equations (scales them to a unit diagonal, which makes
them independent of the parameters' units) and factorises them by Cholesky; for a handful of
parameters the factorisation is unrolled into elementwise operations (in its square-root-free
form L·diag(p)·Lᵀ), which is an order of magnitude faster under `vmap` than a batched LAPACK
call. Forming JᵀJ squares the condition number, so when the factorisation breaks down or its
pivots show that it has lost more than half the digits, the step is recomputed as the
least-squares solution of the augmented system [J; diag(√d)] h ≈ −[r; 0] by SVD, whose
accuracy depends on cond(J) instead of cond(J)². A chunked problem
(`least_squares(residual_chunk_size=...)`) never forms J, so its fallback is the pseudo-inverse
of the equilibrated JᵀJ + diag(d) by an eigendecomposition: it gives a minimum-norm step where
Cholesky breaks down, but its accuracy depends on cond(J)² like the normal equations themselves.

Under `vmap` a `lax.cond` with a batched predicate evaluates both branches, which would make
every fit pay for the SVD. The batching rule below therefore factorises the whole batch and
runs the fallback only if some member of the batch needs it.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float

UNROLL_MAX_SIZE = 8


def solve_damped_normal_equations(
    jtj: Float[Array, "n n"],
    grad: Float[Array, " n"],
    damping: Float[Array, " n"],
    jac: Float[Array, "m n"] | None,
    residual: Float[Array, " m"] | None,
) -> Float[Array, " n"]:
    """The step h solving (JᵀJ + diag(damping)) h = −grad, where grad = Jᵀr; J and r are used by
    the fallback only, and may be None (a chunked problem)."""
    return _differentiable_solve(jtj, grad, damping, jac, residual)


def _equilibration(jtj, damping):
    diagonal = jnp.diagonal(jtj) + damping
    return jnp.where(diagonal > 0, lax.rsqrt(jnp.where(diagonal > 0, diagonal, 1)), 1)


def _cholesky_solve(jtj, grad, damping, jac, residual) -> tuple[Array, Bool[Array, ""]]:
    del jac, residual
    scale = _equilibration(jtj, damping)
    matrix = scale[:, None] * (jtj + jnp.diag(damping)) * scale[None, :]
    rhs = -scale * grad
    if matrix.shape[0] <= UNROLL_MAX_SIZE:
        solution, squared_pivots = _unrolled_ldlt_solve(matrix, rhs)
    else:
        factor = jnp.linalg.cholesky(matrix)
        solution = jax.scipy.linalg.cho_solve((factor, True), rhs)
        squared_pivots = jnp.diagonal(factor) ** 2
    # The equilibrated matrix has a unit diagonal, so each squared pivot is the fraction of its
    # column that is independent of the columns before it; below √eps half the digits are gone.
    # A non-finite entry of the solution counts as a zero pivot. (One reduction per test: XLA
    # compiles each reduction as a kernel of its own.)
    tolerance = jnp.sqrt(jnp.finfo(matrix.dtype).eps)
    broken = ~(jnp.min(jnp.where(jnp.isfinite(solution), squared_pivots, 0)) > tolerance)
    # Non-finite inputs (a fit with NaN in its data) cannot be rescued by the fallback; in a batch
    # they must not make every other fit pay for it.
    failed = broken & jnp.all(jnp.isfinite(jnp.column_stack([matrix, rhs])))
    return scale * solution, failed


def _unrolled_ldlt_solve(matrix, rhs):
    """The solution of A x = b by A = L·diag(p)·Lᵀ (L unit lower triangular), written out entry by
    entry, and p, the squared pivots of Cholesky's A = (L√p)(L√p)ᵀ. Without Cholesky's square
    roots XLA fuses the whole of it into a few kernels (Golub & Van Loan, "Matrix Computations",
    4th ed., §4.1.2)."""
    n = matrix.shape[0]
    lower = [[None] * n for _ in range(n)]
    pivots = [None] * n
    for j in range(n):
        scaled = [lower[j][k] * pivots[k] for k in range(j)]  # row j of L·diag(p)
        pivots[j] = matrix[j, j] - sum((lower[j][k] * scaled[k] for k in range(j)), 0.0)
        for i in range(j + 1, n):
            lower[i][j] = (matrix[i, j] - sum((lower[i][k] * scaled[k] for k in range(j)), 0.0)) / pivots[j]
    forward = []  # L y = b
    for i in range(n):
        forward.append(rhs[i] - sum((lower[i][k] * forward[k] for k in range(i)), 0.0))
    solution = [None] * n  # Lᵀ x = diag(p)⁻¹ y
    for i in reversed(range(n)):
        solution[i] = forward[i] / pivots[i] - sum((lower[k][i] * solution[k] for k in range(i + 1, n)), 0.0)
    return jnp.stack(solution), jnp.stack(pivots)


def _fallback_solve(jtj, grad, damping, jac, residual) -> Array:
    if jac is None:
        return _pseudo_inverse_solve(jtj, grad, damping)
    return _augmented_lstsq_solve(jtj, damping, jac, residual)


def _pseudo_inverse_solve(jtj, grad, damping) -> Array:
    scale = _equilibration(jtj, damping)
    matrix = scale[:, None] * (jtj + jnp.diag(damping)) * scale[None, :]
    eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
    # Eigenvalues below the rounding error of forming JᵀJ (about ε·max λ) carry no information.
    cutoff = matrix.shape[0] * jnp.finfo(matrix.dtype).eps * jnp.max(eigenvalues)
    kept = eigenvalues > cutoff
    inverse_eigenvalues = jnp.where(kept, 1 / jnp.where(kept, eigenvalues, 1), 0)
    solution = -(eigenvectors @ (inverse_eigenvalues * (eigenvectors.T @ (scale * grad))))
    return scale * solution


def _augmented_lstsq_solve(jtj, damping, jac, residual) -> Array:
    scale = _equilibration(jtj, damping)
    n = jac.shape[1]
    augmented = jnp.concatenate([jac * scale[None, :], jnp.diag(jnp.sqrt(damping) * scale)])
    target = -jnp.concatenate([residual, jnp.zeros(n, residual.dtype)])
    solution, *_ = jnp.linalg.lstsq(augmented, target)
    return scale * solution


@jax.custom_batching.custom_vmap
def _solve(jtj, grad, damping, jac, residual):
    step, failed = _cholesky_solve(jtj, grad, damping, jac, residual)
    return lax.cond(
        failed,
        lambda: _fallback_solve(jtj, grad, damping, jac, residual),
        lambda: step,
    )


@jax.custom_jvp
def _differentiable_solve(jtj, grad, damping, jac, residual):
    return _solve(jtj, grad, damping, jac, residual)


@_differentiable_solve.defjvp
def _differentiable_solve_jvp(primals, tangents):
    # JAX cannot transpose the batching rule's code path, so differentiating through the
    # iterations (UnrolledAdjoint) uses the derivative of the solution of A h = −g instead:
    # ḣ = −A⁻¹(Ȧ h + ġ), A = JᵀJ + diag(d), with a plain (transposable) dense solve.
    jtj, _, damping, _, _ = primals
    tangent_jtj, tangent_grad, tangent_damping, _, _ = tangents
    step = _solve(*primals)
    matrix = jtj + jnp.diag(damping)
    rhs = tangent_jtj @ step + tangent_damping * step + tangent_grad
    return step, -jnp.linalg.solve(matrix, rhs)


@_solve.def_vmap
def _solve_batched(axis_size, in_batched, *args):
    args = [
        arg if batched or arg is None else jnp.broadcast_to(arg, (axis_size, *arg.shape))
        for arg, batched in zip(args, in_batched, strict=True)
    ]
    in_axes = [None if arg is None else 0 for arg in args]
    step, failed = jax.vmap(_cholesky_solve, in_axes)(*args)

    def with_fallback():
        return jnp.where(failed[:, None], jax.vmap(_fallback_solve, in_axes)(*args), step)

    return lax.cond(jnp.any(failed), with_fallback, lambda: step), True
