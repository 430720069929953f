"""The damped normal-equation solve: fast path, fallback, and its batching rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm._linear import _cholesky_solve, diagonal_matrix, diagonal_of, solve_damped_normal_equations


def _system(key, m, n, collinear=False):
    jac = jax.random.normal(key, (m, n))
    if collinear:
        jac = jac.at[:, -1].set(jac[:, -2] * (1 + 1e-11))
    residual = jax.random.normal(jax.random.fold_in(key, 1), (m,))
    return jac.T @ jac, jac.T @ residual, jac, residual


def _augmented(jac, residual, damping):
    matrix = np.concatenate([np.asarray(jac), np.diag(np.sqrt(np.asarray(damping)))])
    target = -np.concatenate([np.asarray(residual), np.zeros(jac.shape[1])])
    return matrix, target


def _check(step, jac, residual, damping, well_conditioned):
    """The step minimises ‖[J; √d]h + [r; 0]‖ as well as LAPACK's SVD least squares does."""
    matrix, target = _augmented(jac, residual, damping)
    expected = np.linalg.lstsq(matrix, target, rcond=None)[0]
    objective = np.linalg.norm(matrix @ np.asarray(step) - target)
    best = np.linalg.norm(matrix @ expected - target)
    assert objective <= best * (1 + 1e-12)
    if well_conditioned:
        np.testing.assert_allclose(step, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [3, 12])  # unrolled LDLᵀ and LAPACK Cholesky
@pytest.mark.parametrize("collinear", [False, True])  # fast path and fallback
def test_solve_minimises_the_augmented_least_squares_problem(n, collinear):
    jtj, grad, jac, residual = _system(jax.random.key(n), 30, n, collinear)
    mu, scale = jnp.asarray(1e-12), jnp.diagonal(jtj)
    _, fast_path_failed, _ = _cholesky_solve(jtj, grad, mu, scale, jac, residual)
    assert bool(fast_path_failed) == collinear
    step = solve_damped_normal_equations(jtj, grad, mu, scale, jac, residual)
    _check(step, jac, residual, mu * scale, well_conditioned=not collinear)


def test_batched_solve_with_one_ill_conditioned_member():
    systems = [_system(jax.random.key(i), 30, 5, collinear=(i == 2)) for i in range(4)]
    jtj, grad, jac, residual = (jnp.stack(parts) for parts in zip(*systems, strict=True))
    mu, scale = jnp.full(4, 1e-12), jax.vmap(jnp.diagonal)(jtj)
    batched = jax.jit(jax.vmap(solve_damped_normal_equations))(jtj, grad, mu, scale, jac, residual)
    for i in range(4):
        _check(batched[i], jac[i], residual[i], mu[i] * scale[i], well_conditioned=(i != 2))


def test_nonfinite_member_does_not_trigger_the_fallback():
    jtj, grad, jac, residual = _system(jax.random.key(0), 30, 5)
    _, failed, _ = _cholesky_solve(jtj * jnp.nan, grad, jnp.asarray(1.0), jnp.ones(5), jac, residual)
    assert not bool(failed)


def test_batched_solve_with_unbatched_arguments():
    jtj, grad, jac, residual = _system(jax.random.key(0), 30, 5)
    mus, scale = jnp.array([1e-3, 1e3]), jnp.diagonal(jtj)
    steps = jax.vmap(solve_damped_normal_equations, in_axes=(None, None, 0, None, None, None))(
        jtj, grad, mus, scale, jac, residual
    )
    for i in range(2):
        _check(steps[i], jac, residual, mus[i] * scale, well_conditioned=True)


@pytest.mark.parametrize("n", [1, 3, 12])
def test_diagonal_helpers(n):
    matrix = jax.random.normal(jax.random.key(n), (n, n))
    values = jnp.arange(1.0, n + 1)
    np.testing.assert_array_equal(diagonal_of(matrix), jnp.diagonal(matrix))
    np.testing.assert_array_equal(diagonal_matrix(values), jnp.diag(values))
