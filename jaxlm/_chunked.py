"""Residuals in chunks of data points: the normal equations of a large problem without its Jacobian.

With m residuals and n parameters the Jacobian J has m·n entries, but Levenberg–Marquardt needs
only the n×n matrix JᵀJ, the gradient Jᵀr and the cost ½‖r‖². Each is a sum over the rows of
J and r, so they can be accumulated over chunks of c data points,

    JᵀJ = Σ_chunks J_cᵀJ_c,    Jᵀr = Σ_chunks J_cᵀr_c,    ‖r‖² = Σ_chunks ‖r_c‖²,

in a `lax.scan` whose body evaluates one chunk's residuals and its c×n Jacobian: nothing larger
than one chunk exists at any time.

A chunk is a slice of c rows of the per-point data in `args`. When c does not divide m, the
last chunk is the last c rows, and its rows that the chunk before already counted are masked
to zero, so that no data are padded or copied.

Adding thousands of chunk totals one after another would lose digits in float32, so they are
added by Kahan's compensated summation (N. J. Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., SIAM 2002, §4.3), whose error does not grow with the number of chunks.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PyTree


def split_data(args: tuple, num_rows: int) -> tuple[PyTree, PyTree]:
    """(data, rest): the arrays of `args` whose leading axis has length `num_rows`, which are
    split into chunks, and everything else, which every chunk sees whole."""

    def is_data(leaf):
        return eqx.is_array(leaf) and leaf.ndim >= 1 and leaf.shape[0] == num_rows

    return eqx.partition(args, is_data)


def chunk_of(data: PyTree, rest: PyTree, start: Int[Array, ""] | int, size: int) -> tuple:
    """The arguments of one chunk: `size` rows of the data from row `start`, and the rest."""
    rows = jax.tree.map(lambda leaf: lax.dynamic_slice_in_dim(leaf, start, size), data)
    return eqx.combine(rows, rest)


class ChunkedResiduals(eqx.Module):
    """The residuals of a problem whose data come in `num_rows` rows, evaluated `size` rows at a time.

    `rows(x, start)` returns the residuals of rows `start` to `start + size`, of shape
    (size, ...); `rows_jacobian(x, start)`, if given, their Jacobian as a (residuals, n) matrix
    (else JAX differentiates `rows`).
    """

    rows: Callable[[Float[Array, " n"], Int[Array, ""]], Array]
    rows_jacobian: Callable[[Float[Array, " n"], Int[Array, ""]], Float[Array, "c n"]] | None
    num_rows: int = eqx.field(static=True)
    size: int = eqx.field(static=True)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_rows // self.size)

    def _start(self, index):
        return jnp.minimum(index * self.size, self.num_rows - self.size)

    def _counted_before(self, index):
        """Which rows of chunk `index` an earlier chunk has counted (only in an overlapping last chunk)."""
        return self._start(index) + jnp.arange(self.size) < index * self.size

    def rows_are_independent(self, x: Float[Array, " n"]) -> Bool[Array, ""]:
        """Whether each data point's residuals depend on that point alone, as chunks require:
        the rows that the first chunk shares with a chunk half a chunk further on must have the
        same residuals in both (to √eps of the largest). A model that normalises by the data's
        mean or takes a cumulative sum fails this. True for one chunk, which is all the data."""
        if self.num_rows <= self.size:
            return jnp.array(True)
        shift = min(-(-self.size // 2), self.num_rows - self.size)
        in_first = self.rows(x, 0)[shift:]
        in_shifted = self.rows(x, shift)[: self.size - shift]
        # One reduction over both (max |difference|, max |residual|), which XLA fuses with the
        # evaluations: nothing of chunk size is stored.
        largest_difference, largest = jnp.max(
            jnp.abs(jnp.stack([in_first - in_shifted, in_first])).reshape(2, -1), axis=1
        )
        tolerance = jnp.sqrt(jnp.finfo(x.dtype).eps) * largest
        return ~(largest_difference > tolerance)  # NaN: left to NONFINITE_START

    def chunk_residual(self, x: Float[Array, " n"], index: Int[Array, ""]) -> Float[Array, " c"]:
        """The residuals of chunk `index`, flat, with the rows counted by an earlier chunk set to 0."""
        rows = self.rows(x, self._start(index))
        if self.num_rows % self.size:
            counted = self._counted_before(index).reshape((-1,) + (1,) * (rows.ndim - 1))
            rows = jnp.where(counted, 0, rows)
        return jnp.ravel(rows)

    def chunk_jacobian_and_residual(self, x, index) -> tuple[Float[Array, "c n"], Float[Array, " c"]]:
        """J_c and r_c of chunk `index` (the rows counted by an earlier chunk are 0 in both)."""
        if self.rows_jacobian is None:

            def residual_twice(x):
                residual = self.chunk_residual(x, index)
                return residual, residual

            num_residuals = jax.eval_shape(self.chunk_residual, x, index).size
            differentiate = jax.jacfwd if num_residuals >= x.size else jax.jacrev
            return differentiate(residual_twice, has_aux=True)(x)
        jac = self.rows_jacobian(x, self._start(index))
        if self.num_rows % self.size:
            counted = jnp.repeat(self._counted_before(index), jac.shape[0] // self.size)
            jac = jnp.where(counted[:, None], 0, jac)
        return jac, self.chunk_residual(x, index)

    def sum_over_chunks(self, chunk_total: Callable[[Int[Array, ""]], PyTree[Array]]) -> PyTree[Array]:
        """Σ over the chunks of `chunk_total(index)` (a pytree of arrays), by compensated summation.

        The chunk's computation is rematerialised when differentiated (`jax.checkpoint`), so that
        reverse mode stores no chunk intermediates either.
        """
        chunk_total = jax.checkpoint(chunk_total, prevent_cse=False)

        def add(carry, index):
            total, compensation = carry
            corrected = jax.tree.map(jnp.subtract, chunk_total(index), compensation)
            new_total = jax.tree.map(jnp.add, total, corrected)
            # What the addition rounded away, to be added back with the next chunk.
            compensation = jax.tree.map(
                lambda new, old, term: (new - old) - term, new_total, total, corrected
            )
            return (new_total, compensation), None

        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(chunk_total, 0))
        (total, _), _ = lax.scan(add, (zero, zero), jnp.arange(self.num_chunks))
        return total

    def cost(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """½‖r(x)‖²."""
        return 0.5 * self.sum_over_chunks(lambda index: jnp.sum(self.chunk_residual(x, index) ** 2))

    def normal_equations(self, x: Float[Array, " n"]) -> tuple[Float[Array, "n n"], Float[Array, " n"]]:
        """(JᵀJ, Jᵀr) at x."""

        def chunk_products(index):
            jac, residual = self.chunk_jacobian_and_residual(x, index)
            return jac.T @ jac, jac.T @ residual

        return self.sum_over_chunks(chunk_products)

    def curvature_gradient(self, x: Float[Array, " n"], v: Float[Array, " n"]) -> Float[Array, " n"]:
        """Jᵀr''(x)[v, v], with r'' the second directional derivative of the residuals along v
        (geodesic acceleration), by a nested `jvp` and a `vjp` on each chunk."""

        def chunk_product(index):
            def residual(x):
                return self.chunk_residual(x, index)

            def directional_derivative(x):
                return jax.jvp(residual, (x,), (v,))[1]

            second_derivative = jax.jvp(directional_derivative, (x,), (v,))[1]
            return jax.vjp(residual, x)[1](second_derivative)[0]

        return self.sum_over_chunks(chunk_product)

    def residual(self, x: Float[Array, " n"]) -> Array:
        """r(x), all `num_rows` rows, evaluated chunk by chunk into one buffer."""

        def write_chunk(index, residual):
            start = self._start(index)
            # An overlapping last chunk rewrites rows with the values they already have.
            return lax.dynamic_update_slice_in_dim(residual, self.rows(x, start), start, axis=0)

        rows_shape = jax.eval_shape(self.rows, x, 0)
        residual = jnp.zeros((self.num_rows, *rows_shape.shape[1:]), rows_shape.dtype)
        return lax.fori_loop(0, self.num_chunks, write_chunk, residual)
