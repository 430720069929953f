"""The damped Gauss–Newton system (JᵀJ + diag(d)) h = −Jᵀr, d = μ·D², solved fast and without losing
accuracy.

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
    damping: Float[Array, ""],
    damping_scale: Float[Array, " n"],
    jac: Float[Array, "m n"] | None,
    residual: Float[Array, " m"] | None,
) -> Float[Array, " n"]:
    """The step h solving (JᵀJ + damping·diag(damping_scale)) h = −grad, where grad = Jᵀr; J and r
    are used by the fallback only, and may be None (a chunked problem)."""
    return _differentiable_solve(jtj, grad, damping, damping_scale, jac, residual)


def diagonal_of(matrix: Float[Array, "n n"]) -> Float[Array, " n"]:
    """The diagonal as every (n + 1)-th entry of the flattened matrix, a strided slice that XLA
    fuses into its consumers (`jnp.diagonal` builds its indices at run time, a kernel of its own,
    and constant index arrays would become operands of every `cond` and `custom_vmap` around)."""
    n = matrix.shape[-1]
    return matrix.reshape(n * n)[:: n + 1]


def diagonal_matrix(values: Float[Array, " n"]) -> Float[Array, "n n"]:
    """diag(values), built without index arrays (see `diagonal_of`): each value followed by n
    zeros, flattened and cut to n² entries, puts the values every n + 1 entries."""
    n = values.shape[0]
    padded = jnp.pad(values[:, None], ((0, 0), (0, n)))
    return padded.reshape(n * (n + 1))[: n * n].reshape(n, n)


def _equilibration(jtj, diagonal_damping):
    """S = diag(s), s = 1/√diag(JᵀJ + diag(d)) (1 where that diagonal is 0), and the diagonal of
    the equilibrated matrix S(JᵀJ + diag(d))S: 1, or 0 for a parameter that nothing depends on."""
    diagonal = diagonal_of(jtj) + diagonal_damping
    positive = diagonal > 0
    return jnp.where(positive, lax.rsqrt(jnp.where(positive, diagonal, 1)), 1), positive.astype(jtj.dtype)


def _cholesky_solve(jtj, grad, damping, damping_scale, jac, residual) -> tuple[Array, Bool[Array, ""], Array]:
    """(step, whether the fallback must recompute it, the equilibration scale)."""
    del jac, residual
    diagonal_damping = damping * damping_scale
    scale, unit_diagonal = _equilibration(jtj, diagonal_damping)
    matrix = scale[:, None] * jtj * scale[None, :]  # its diagonal is replaced by `unit_diagonal`
    rhs = -scale * grad
    if matrix.shape[0] <= UNROLL_MAX_SIZE:
        solution, squared_pivots = _unrolled_ldlt_solve(matrix, unit_diagonal, rhs)
    else:
        factor = jnp.linalg.cholesky(matrix + diagonal_matrix(unit_diagonal - diagonal_of(matrix)))
        solution = jax.scipy.linalg.cho_solve((factor, True), rhs)
        squared_pivots = diagonal_of(factor) ** 2
    # The equilibrated matrix has a unit diagonal, so each squared pivot is the fraction of its
    # column that is independent of the columns before it; below √eps half the digits are gone.
    # A non-finite entry of the solution counts as a zero pivot. (One reduction per test: XLA
    # compiles each reduction as a kernel of its own.)
    tolerance = jnp.sqrt(jnp.finfo(matrix.dtype).eps)
    broken = ~(jnp.min(jnp.where(jnp.isfinite(solution), squared_pivots, 0)) > tolerance)
    # Non-finite inputs (a fit with NaN in its data) cannot be rescued by the fallback; in a batch
    # they must not make every other fit pay for it.
    failed = broken & jnp.all(jnp.isfinite(jnp.column_stack([matrix, diagonal_damping, rhs])))
    return scale * solution, failed, scale


def _unrolled_ldlt_solve(matrix, unit_diagonal, rhs):
    """The solution of A x = b, A the matrix with its diagonal replaced by `unit_diagonal` (each
    entry 1, or 0 for a parameter that nothing depends on), by A = L·diag(p)·Lᵀ (L unit lower
    triangular), written out entry by entry, and p, the squared pivots of Cholesky's
    A = (L√p)(L√p)ᵀ. Without Cholesky's square roots XLA fuses the whole of it into a few kernels
    (Golub & Van Loan, "Matrix Computations", 4th ed., §4.1.2)."""
    n = matrix.shape[0]

    def divide_by_pivot(value, j):
        # The first pivot is the first diagonal entry, 1 or 0: multiplying by it saves a division
        # (a kernel), and for 0 the caller's test of the pivots rejects the solution anyway.
        return value * unit_diagonal[0] if j == 0 else value / pivots[j]

    lower = [[None] * n for _ in range(n)]
    pivots = [None] * n
    for j in range(n):
        scaled = [lower[j][k] * pivots[k] for k in range(j)]  # row j of L·diag(p)
        pivots[j] = unit_diagonal[j] - sum((lower[j][k] * scaled[k] for k in range(j)), 0.0)
        for i in range(j + 1, n):
            lower[i][j] = divide_by_pivot(
                matrix[i, j] - sum((lower[i][k] * scaled[k] for k in range(j)), 0.0), j
            )
    forward = []  # L y = b
    for i in range(n):
        forward.append(rhs[i] - sum((lower[i][k] * forward[k] for k in range(i)), 0.0))
    solution = [None] * n  # Lᵀ x = diag(p)⁻¹ y
    for i in reversed(range(n)):
        solution[i] = divide_by_pivot(forward[i], i) - sum(
            (lower[k][i] * solution[k] for k in range(i + 1, n)), 0.0
        )
    return jnp.stack(solution), jnp.stack(pivots)


def _fallback_solve(scale, jtj, grad, damping, damping_scale, jac, residual) -> Array:
    # The equilibration `scale` comes from the fast path, and the damping as μ and D² (state
    # fields): XLA must store what a `cond` branch receives, each value a kernel of its own.
    diagonal_damping = damping * damping_scale
    if jac is None:
        return _pseudo_inverse_solve(scale, jtj, grad, diagonal_damping)
    return _augmented_lstsq_solve(scale, diagonal_damping, jac, residual)


def _pseudo_inverse_solve(scale, jtj, grad, diagonal_damping) -> Array:
    matrix = scale[:, None] * (jtj + diagonal_matrix(diagonal_damping)) * scale[None, :]
    eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
    # Eigenvalues below the rounding error of forming JᵀJ (about ε·max λ) carry no information.
    cutoff = matrix.shape[0] * jnp.finfo(matrix.dtype).eps * jnp.max(eigenvalues)
    kept = eigenvalues > cutoff
    inverse_eigenvalues = jnp.where(kept, 1 / jnp.where(kept, eigenvalues, 1), 0)
    solution = -(eigenvectors @ (inverse_eigenvalues * (eigenvectors.T @ (scale * grad))))
    return scale * solution


def _augmented_lstsq_solve(scale, diagonal_damping, jac, residual) -> Array:
    """The minimum-norm least-squares solution of [J; diag(√d)] h ≈ −[r; 0] in the equilibrated
    variables, by SVD (singular values below `rank_tolerance` cut off)."""
    m, n = jac.shape
    # The square root of a diagonal matrix, not a diagonal of square roots, and sums of
    # elementwise products instead of matrix products: XLA fuses these into fewer kernels.
    damping_rows = jnp.sqrt(diagonal_matrix(diagonal_damping * scale**2))
    augmented = jnp.concatenate([jac * scale[None, :], damping_rows])
    u, singular_values, vt = jnp.linalg.svd(augmented, full_matrices=False)
    projected_target = -jnp.sum(u[:m] * residual[:, None], axis=0)
    kept = singular_values > rank_tolerance(jac.dtype, m + n) * singular_values[0]
    coefficients = jnp.where(kept, projected_target / jnp.where(kept, singular_values, 1), 0)
    return jnp.sum(vt * coefficients[:, None] * scale[None, :], axis=0)


def rank_tolerance(dtype, size: int) -> float:
    """The relative size below which a singular value of a matrix with `size` rows (or columns, the
    larger) counts as zero: eps·size, as `numpy.linalg.matrix_rank` and scipy's `curve_fit` take
    it, but at most √eps. In float32 eps·size reaches 0.1 at a million rows, where it would cut
    off well-determined directions; with the cap float64 keeps the plain rule up to 6.7·10⁷ rows."""
    eps = float(jnp.finfo(dtype).eps)
    return min(eps * size, eps**0.5)


@jax.custom_batching.custom_vmap
def _solve(jtj, grad, damping, damping_scale, jac, residual):
    step, failed, scale = _cholesky_solve(jtj, grad, damping, damping_scale, jac, residual)
    return lax.cond(
        failed,
        lambda: _fallback_solve(scale, jtj, grad, damping, damping_scale, jac, residual),
        lambda: step,
    )


@jax.custom_jvp
def _differentiable_solve(jtj, grad, damping, damping_scale, jac, residual):
    return _solve(jtj, grad, damping, damping_scale, jac, residual)


@_differentiable_solve.defjvp
def _differentiable_solve_jvp(primals, tangents):
    # JAX cannot transpose the batching rule's code path, so differentiating through the
    # iterations (UnrolledAdjoint) uses the derivative of the solution of A h = −g instead:
    # ḣ = −A⁻¹(Ȧ h + ġ), A = JᵀJ + μ·diag(D²), with a plain (transposable) dense solve.
    jtj, _, damping, damping_scale, _, _ = primals
    tangent_jtj, tangent_grad, tangent_damping, tangent_damping_scale, _, _ = tangents
    step = _solve(*primals)
    matrix = jtj + diagonal_matrix(damping * damping_scale)
    tangent_diagonal = tangent_damping * damping_scale + damping * tangent_damping_scale
    rhs = tangent_jtj @ step + tangent_diagonal * step + tangent_grad
    return step, -jnp.linalg.solve(matrix, rhs)


@_solve.def_vmap
def _solve_batched(axis_size, in_batched, *args):
    args = [
        arg if batched or arg is None else jnp.broadcast_to(arg, (axis_size, *arg.shape))
        for arg, batched in zip(args, in_batched, strict=True)
    ]
    in_axes = [None if arg is None else 0 for arg in args]
    step, failed, scale = jax.vmap(_cholesky_solve, in_axes)(*args)

    def with_fallback():
        return jnp.where(failed[:, None], jax.vmap(_fallback_solve, [0, *in_axes])(scale, *args), step)

    return lax.cond(jnp.any(failed), with_fallback, lambda: step), True
