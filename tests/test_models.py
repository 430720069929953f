"""`jaxlm.models`: Gpufit's models, their starting values from the data, and fits from those
starting values (least squares and the Poisson MLE), on batches of synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlm
from jaxlm import models

XY = models.pixel_grid(11)
X = jnp.linspace(0.0, 10.0, 41)
NUM = 16


def _spots(truth_of):
    rng = np.random.default_rng(0)
    return np.array([truth_of(rng) for _ in range(NUM)])


SPOT = {
    "gaussian_2d": lambda r: [r.uniform(200, 400), r.uniform(4, 6), r.uniform(4, 6), r.uniform(1, 1.6),
                              r.uniform(2, 10)],
    "gaussian_2d_elliptic": lambda r: [r.uniform(200, 400), r.uniform(4, 6), r.uniform(4, 6),
                                       r.uniform(1, 1.3), r.uniform(1.6, 2.0), r.uniform(2, 10)],
    "gaussian_2d_rotated": lambda r: [r.uniform(200, 400), r.uniform(4, 6), r.uniform(4, 6),
                                      r.uniform(1.8, 2.2), r.uniform(1.0, 1.2), r.uniform(2, 10),
                                      r.uniform(-0.6, 0.6)],
    "cauchy_2d_elliptic": lambda r: [r.uniform(200, 400), r.uniform(4, 6), r.uniform(4, 6),
                                     r.uniform(1, 1.3), r.uniform(1.3, 1.6), r.uniform(2, 10)],
}  # fmt: skip
CURVE = {
    "gaussian_1d": lambda r: [r.uniform(200, 400), r.uniform(4, 6), r.uniform(0.8, 1.5), r.uniform(2, 10)],
    "linear_1d": lambda r: [r.uniform(10, 20), r.uniform(-0.5, 3)],  # > 0 on [0, 10]: counts
    "exponential_decay": lambda r: [r.uniform(200, 400), r.uniform(0.3, 0.8), r.uniform(5, 20)],
}


@pytest.mark.parametrize("name", [*SPOT, *CURVE])
@pytest.mark.parametrize("estimator", ["least_squares", "poisson"])
def test_a_fit_from_the_initial_guess_recovers_the_truth(name, estimator):
    model = getattr(models, name)
    guess = getattr(models, f"{name}_initial_guess")
    truth = _spots(SPOT.get(name) or CURVE[name])
    x = XY if name in SPOT else X
    mean = np.asarray(jax.vmap(lambda p: model(x, *p))(jnp.asarray(truth)))
    rng = np.random.default_rng(1)  # counts for the MLE, Gaussian noise of σ = 3 for least squares
    noisy = rng.poisson(mean).astype(float) if estimator == "poisson" else None
    data = noisy if noisy is not None else mean + 3 * rng.normal(size=mean.shape)
    start = np.asarray(guess(data) if name in SPOT else guess(data, x))
    assert start.shape == truth.shape and np.all(np.isfinite(start))
    sigma = None if estimator == "poisson" else np.full(data.shape[1:], 3.0)
    popt, pcov, info, _, _ = jaxlm.curve_fit(
        model, x, data, p0=start, sigma=sigma, absolute_sigma=True, estimator=estimator, full_output=True
    )
    assert np.all(info["success"]), info["status"]
    stderr = np.sqrt(np.diagonal(np.asarray(pcov), axis1=1, axis2=2))
    error = np.abs(np.asarray(popt) - truth) / stderr
    if name == "gaussian_2d_rotated":  # an axis turned by π is the same ellipse
        turned = np.asarray(popt)[:, 6] - np.round((np.asarray(popt)[:, 6] - truth[:, 6]) / np.pi) * np.pi
        error[:, 6] = np.abs(turned - truth[:, 6]) / stderr[:, 6]
    assert np.median(error) < 1.5 and np.max(error) < 6  # a fit to the noise of its data


@pytest.mark.parametrize("name", list(SPOT))
def test_the_initial_guess_of_a_spot_is_close(name):
    truth = _spots(SPOT[name])
    clean = jax.vmap(lambda p: getattr(models, name)(XY, *p))(jnp.asarray(truth))
    start = np.asarray(getattr(models, f"{name}_initial_guess")(clean))
    np.testing.assert_allclose(start[:, 1:3], truth[:, 1:3], atol=0.3)  # the centre, in pixels
    # The peak above the background: the brightest pixel, up to half a pixel from the centre.
    np.testing.assert_allclose(start[:, 0], truth[:, 0], rtol=0.25)
    assert models.gaussian_2d_initial_guess(clean[0]).shape == (5,)  # one image: no batch axis


def test_pixel_grid_is_x_along_the_columns():
    xy = models.pixel_grid((3, 4))
    assert xy.shape == (2, 3, 4)
    assert xy[0, 2, 3] == 3 and xy[1, 2, 3] == 2
    spot = models.gaussian_2d(xy, 1.0, 3.0, 0.0, 0.5, 0.0)
    assert np.unravel_index(int(jnp.argmax(spot)), spot.shape) == (0, 3)
