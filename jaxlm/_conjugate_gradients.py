"""Conjugate gradients for a symmetric positive definite system given by its products A·v only:
the inner solver of `MatrixFreeLM` and of the matrix-free implicit derivative.

Reference:
    J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., Springer 2006, Algorithm 5.3.
"""

import equinox.internal as eqxi
import jax.numpy as jnp


def conjugate_gradients(matrix_times, rhs, apply_preconditioner, tolerance, max_iterations):
    """h ≈ A⁻¹·rhs for a symmetric positive definite A, by preconditioned conjugate gradients
    from h = 0 (Nocedal & Wright, Algorithm 5.3), until ‖rhs − A h‖ ≤ tolerance·‖rhs‖ or after
    `max_iterations`. Returns h, the number of iterations and whether the tolerance was met."""
    target = (tolerance * jnp.linalg.norm(rhs)) ** 2

    def keep_going(carry):
        _, residual, _, _, iterations, curvature_ok = carry
        return (jnp.sum(residual**2) > target) & (iterations < max_iterations) & curvature_ok

    def iteration(carry):
        h, residual, direction, residual_dot_z, iterations, _ = carry
        a_direction = matrix_times(direction)
        curvature = jnp.dot(direction, a_direction)
        # > 0 in exact arithmetic (A is positive definite); rounding can break that once μ underflows.
        curvature_ok = curvature > 0
        alpha = jnp.where(curvature_ok, residual_dot_z / jnp.where(curvature_ok, curvature, 1), 0)
        h = h + alpha * direction
        residual = residual - alpha * a_direction
        z = apply_preconditioner(residual)
        new_residual_dot_z = jnp.dot(residual, z)
        direction = z + (new_residual_dot_z / residual_dot_z) * direction
        return h, residual, direction, new_residual_dot_z, iterations + 1, curvature_ok

    z = apply_preconditioner(rhs)
    init = (jnp.zeros_like(rhs), rhs, z, jnp.dot(rhs, z), jnp.array(0, jnp.int32), jnp.array(True))
    h, residual, _, _, iterations, _ = eqxi.while_loop(
        keep_going, iteration, init, max_steps=max_iterations, kind="checkpointed"
    )
    return h, iterations, jnp.sum(residual**2) <= target
