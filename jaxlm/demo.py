"""The 2-D Gaussian spot: the standard batched benchmark of Gpufit, and jaxlm's main demo.

Data as in Gpufit's CPU/GPU comparison example: true parameters (amplitude 500, x0 = y0 = c,
width 1, offset 10) with c = size/2 − 0.5, each multiplied by a uniform random factor in
[0.9, 1.1]; additive Gaussian noise of standard deviation 17.05; starting values = truth ×
uniform [0.9, 1.1].
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

PARAMETER_NAMES = ("amplitude", "x0", "y0", "width", "offset")
NOISE_STD = 17.05


def gaussian_2d(params: Float[Array, " 5"], size: int) -> Float[Array, "size size"]:
    """The spot a·exp(−((x − x0)² + (y − y0)²) / (2w²)) + b on a size × size pixel grid."""
    amplitude, x0, y0, width, offset = params
    coordinates = jnp.arange(size, dtype=params.dtype)
    x, y = coordinates[None, :], coordinates[:, None]
    return amplitude * jnp.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * width**2)) + offset


def gaussian_2d_residual(params: Float[Array, " 5"], data: Float[Array, "size size"]) -> Array:
    """Residuals of the spot model against one image; the residual function of the demo."""
    return gaussian_2d(params, data.shape[-1]) - data


def make_spots(key: Array, num_fits: int, size: int = 5, dtype=jnp.float32):
    """A batch of noisy spots: returns (data, true parameters, starting values)."""
    truth_key, noise_key, start_key = jax.random.split(key, 3)
    center = size / 2 - 0.5
    nominal = jnp.array([500.0, center, center, 1.0, 10.0], dtype)
    truth = nominal * jax.random.uniform(truth_key, (num_fits, 5), dtype, 0.9, 1.1)
    clean = jax.vmap(gaussian_2d, in_axes=(0, None))(truth, size)
    data = clean + NOISE_STD * jax.random.normal(noise_key, clean.shape, dtype)
    start = truth * jax.random.uniform(start_key, (num_fits, 5), dtype, 0.9, 1.1)
    return data, truth, start
