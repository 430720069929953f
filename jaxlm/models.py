"""The models of Gpufit's model library that its users fit most, with starting values.

Each model is a plain JAX function in `curve_fit`'s form, `model(x, *params)`, so that it works
with `jaxlm.curve_fit` (one dataset or a batch), with `jaxlm.least_squares_batch`
(`lambda p, data: model(x, *p) - data`, or `(model(x, *p), data)` with `estimator="poisson"`),
and under `jit`, `vmap` and `grad`. The parameters are in Gpufit's order (Gpufit's
documentation, "Fit model functions"); the 2-D models take the pixel grid `xy = pixel_grid(size)`
(x along the columns, y along the rows, in pixels from 0, as Gpufit's models without user info).

Each has an `initial_guess(data, ...)`, vectorised over a leading batch axis of the data, that
Gpufit's users would otherwise write themselves: the background from the data's low values
(the lowest of the border pixels, for spots), the amplitude as the peak above it, and the
centre and widths from the first and second moments of the data above the background.

    xy = jaxlm.models.pixel_grid(11)
    p0 = jaxlm.models.gaussian_2d_initial_guess(spots)               # (N, 5)
    popt, pcov = jaxlm.curve_fit(jaxlm.models.gaussian_2d, xy, spots, p0=p0, estimator="poisson")
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def pixel_grid(size: int | tuple[int, int], dtype=float) -> Array:
    """The coordinates (x, y) of the pixels of a `size` image (or (rows, columns)): an array of
    shape (2, rows, columns), x the column index and y the row index."""
    rows, columns = (size, size) if isinstance(size, int) else size
    y, x = jnp.meshgrid(jnp.arange(rows, dtype=dtype), jnp.arange(columns, dtype=dtype), indexing="ij")
    return jnp.stack([x, y])


# The models.


def gaussian_1d(x, amplitude, x0, width, offset):
    """Gpufit's GAUSS_1D: a·exp(−(x − x₀)²/(2σ²)) + b."""
    return amplitude * jnp.exp(-((x - x0) ** 2) / (2 * width**2)) + offset


def gaussian_2d(xy, amplitude, x0, y0, width, offset):
    """Gpufit's GAUSS_2D: a·exp(−((x − x₀)² + (y − y₀)²)/(2σ²)) + b."""
    x, y = xy[0], xy[1]
    return amplitude * jnp.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * width**2)) + offset


def gaussian_2d_elliptic(xy, amplitude, x0, y0, width_x, width_y, offset):
    """Gpufit's GAUSS_2D_ELLIPTIC: a·exp(−½((x − x₀)²/σx² + (y − y₀)²/σy²)) + b."""
    x, y = xy[0], xy[1]
    return amplitude * jnp.exp(-0.5 * ((x - x0) ** 2 / width_x**2 + (y - y0) ** 2 / width_y**2)) + offset


def gaussian_2d_rotated(xy, amplitude, x0, y0, width_x, width_y, offset, angle):
    """Gpufit's GAUSS_2D_ROTATED: the elliptic Gaussian with its axes turned by `angle` (radians):
    a·exp(−½(u²/σx² + v²/σy²)) + b, u = (x − x₀)cos θ − (y − y₀)sin θ, v = (x − x₀)sin θ + (y − y₀)cos θ."""
    x, y = xy[0] - x0, xy[1] - y0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    u, v = x * cos - y * sin, x * sin + y * cos
    return amplitude * jnp.exp(-0.5 * (u**2 / width_x**2 + v**2 / width_y**2)) + offset


def cauchy_2d_elliptic(xy, amplitude, x0, y0, width_x, width_y, offset):
    """Gpufit's CAUCHY_2D_ELLIPTIC: a / ((1 + (x − x₀)²/γx²)(1 + (y − y₀)²/γy²)) + b."""
    x, y = xy[0], xy[1]
    return amplitude / ((1 + (x - x0) ** 2 / width_x**2) * (1 + (y - y0) ** 2 / width_y**2)) + offset


def linear_1d(x, offset, slope):
    """Gpufit's LINEAR_1D: a + b·x."""
    return offset + slope * x


def exponential_decay(x, amplitude, rate, offset):
    """a·exp(−k·x) + b (a lifetime τ = 1/k)."""
    return amplitude * jnp.exp(-rate * x) + offset


# Starting values.


def gaussian_1d_initial_guess(data: ArrayLike, x: ArrayLike) -> Array:
    """(a, x₀, σ, b) for `gaussian_1d` from data (..., m) at points x (m,): b the lower of the
    two end values, a the peak above it, x₀ and σ the mean and spread of the data above b."""
    data, x = jnp.asarray(data), jnp.asarray(x)
    offset = jnp.minimum(data[..., 0], data[..., -1])
    weights = jnp.clip(data - offset[..., None], 0)
    total = jnp.maximum(jnp.sum(weights, axis=-1), jnp.finfo(weights.dtype).tiny)
    x0 = jnp.sum(weights * x, axis=-1) / total
    width = jnp.sqrt(jnp.sum(weights * (x - x0[..., None]) ** 2, axis=-1) / total)
    amplitude = jnp.max(data, axis=-1) - offset
    return jnp.stack([amplitude, x0, _positive(width, x), offset], axis=-1)


def gaussian_2d_initial_guess(data: ArrayLike) -> Array:
    """(a, x₀, y₀, σ, b) for `gaussian_2d` from images (..., rows, columns)."""
    amplitude, x0, y0, width_x, width_y, offset, _ = _spot_moments(data)
    return jnp.stack([amplitude, x0, y0, jnp.sqrt(width_x * width_y), offset], axis=-1)


def gaussian_2d_elliptic_initial_guess(data: ArrayLike) -> Array:
    """(a, x₀, y₀, σx, σy, b) for `gaussian_2d_elliptic` from images (..., rows, columns)."""
    amplitude, x0, y0, width_x, width_y, offset, _ = _spot_moments(data)
    return jnp.stack([amplitude, x0, y0, width_x, width_y, offset], axis=-1)


def gaussian_2d_rotated_initial_guess(data: ArrayLike) -> Array:
    """(a, x₀, y₀, σx, σy, b, θ) for `gaussian_2d_rotated` from images (..., rows, columns):
    the widths along the principal axes of the second moments and θ the angle of those axes."""
    amplitude, x0, y0, _, _, offset, (xx, yy, xy) = _spot_moments(data)
    angle = -0.5 * jnp.arctan2(2 * xy, xx - yy)  # u = x cos θ − y sin θ along the first axis
    mean, spread = (xx + yy) / 2, jnp.sqrt(((xx - yy) / 2) ** 2 + xy**2)
    floor = jnp.full_like(mean, 0.3)
    width_x = jnp.sqrt(jnp.maximum(mean + spread, floor**2))
    width_y = jnp.sqrt(jnp.maximum(mean - spread, floor**2))
    return jnp.stack([amplitude, x0, y0, width_x, width_y, offset, angle], axis=-1)


def cauchy_2d_elliptic_initial_guess(data: ArrayLike) -> Array:
    """(a, x₀, y₀, γx, γy, b) for `cauchy_2d_elliptic` from images (..., rows, columns): the
    half widths at half maximum from the moments (γ = σ·√(2 ln 2), as for a Gaussian)."""
    amplitude, x0, y0, width_x, width_y, offset, _ = _spot_moments(data)
    scale = jnp.sqrt(2 * jnp.log(2.0))
    return jnp.stack([amplitude, x0, y0, scale * width_x, scale * width_y, offset], axis=-1)


def linear_1d_initial_guess(data: ArrayLike, x: ArrayLike) -> Array:
    """(a, b) for `linear_1d`: the least-squares line through data (..., m) at x (m,)."""
    data, x = jnp.asarray(data), jnp.asarray(x)
    x_mean, y_mean = jnp.mean(x), jnp.mean(data, axis=-1)
    slope = jnp.sum((x - x_mean) * (data - y_mean[..., None]), axis=-1) / jnp.sum((x - x_mean) ** 2)
    return jnp.stack([y_mean - slope * x_mean, slope], axis=-1)


def exponential_decay_initial_guess(data: ArrayLike, x: ArrayLike) -> Array:
    """(a, k, b) for `exponential_decay` from data (..., m) at increasing x (m,): b a little
    below the last value, then a and k from the line through ln(y − b) (weighted by y − b)."""
    data, x = jnp.asarray(data), jnp.asarray(x)
    span = jnp.max(data, axis=-1) - jnp.min(data, axis=-1)
    offset = jnp.min(data, axis=-1) - 0.01 * span
    above = jnp.maximum(data - offset[..., None], jnp.finfo(data.dtype).tiny)
    log_above = jnp.log(above)  # a line through ln(y − b), weighted by y − b

    def mean(values):
        return jnp.sum(above * values, axis=-1) / jnp.sum(above, axis=-1)

    x_mean, log_mean = mean(x), mean(log_above)
    dx = x - x_mean[..., None]
    slope = mean(dx * (log_above - log_mean[..., None])) / mean(dx**2)
    amplitude = jnp.exp(log_mean - slope * x_mean)
    return jnp.stack([amplitude, -slope, offset], axis=-1)


def _spot_moments(data):
    """(a, x₀, y₀, σx, σy, b, (σxx², σyy², σxy)) of images (..., rows, columns): b the lowest
    border pixel, a the peak above b, and the moments of the image above b."""
    data = jnp.asarray(data)
    dtype = data.dtype if jnp.issubdtype(data.dtype, jnp.floating) else jnp.result_type(float)
    data = data.astype(dtype)
    border = jnp.concatenate(
        [data[..., 0, :], data[..., -1, :], data[..., 1:-1, 0], data[..., 1:-1, -1]], axis=-1
    )
    offset = jnp.min(border, axis=-1)
    weights = jnp.clip(data - offset[..., None, None], 0)
    x, y = pixel_grid(data.shape[-2:], dtype)
    total = jnp.maximum(jnp.sum(weights, axis=(-2, -1)), jnp.finfo(dtype).tiny)

    def mean(values):
        return jnp.sum(weights * values, axis=(-2, -1)) / total

    x0, y0 = mean(x), mean(y)
    dx, dy = x - x0[..., None, None], y - y0[..., None, None]
    xx, yy, xy = mean(dx**2), mean(dy**2), mean(dx * dy)
    amplitude = jnp.max(data, axis=(-2, -1)) - offset
    floor = 0.3  # a width below a third of a pixel is no start for a spot model
    width_x, width_y = jnp.sqrt(jnp.maximum(xx, floor**2)), jnp.sqrt(jnp.maximum(yy, floor**2))
    return amplitude, x0, y0, width_x, width_y, offset, (xx, yy, xy)


def _positive(width, x):
    """A width that is at least the spacing of x (a start of 0 would stop the fit at once)."""
    spacing = (jnp.max(x) - jnp.min(x)) / jnp.maximum(x.shape[-1] - 1, 1)
    return jnp.maximum(width, spacing)
