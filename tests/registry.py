"""The registries the tests are built from: solvers × problems.

Problems and residual functions are defined once at module level, so that every test that
solves the same problem with the same solver reuses one compiled solve.
"""

from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import numpy as np

import jaxlm

SOLVERS = {
    "lm": jaxlm.LevenbergMarquardt(),
    "lm_classic": jaxlm.LevenbergMarquardt(damping_rule="classic"),
    "lm_unscaled": jaxlm.LevenbergMarquardt(scaled=False),
    "lm_geodesic": jaxlm.LevenbergMarquardt(geodesic_acceleration=0.75),
}


def exponential_decay(params, t, y):
    return params[0] * jnp.exp(-params[1] * t) - y


def rosenbrock(params):
    return jnp.stack([10 * (params[1] - params[0] ** 2), 1 - params[0]])


def powell_singular(x):
    """Moré, Garbow & Hillstrom problem 13: zero residual at 0 with a singular Jacobian there."""
    return jnp.stack(
        [
            x[0] + 10 * x[1],
            jnp.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2 * x[2]) ** 2,
            jnp.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]
    )


def gaussian_peak(params, x, y):
    """A dict of parameters: one peak on a linear background."""
    peak = params["peak"]
    background = params["background"]
    model = peak[0] * jnp.exp(-0.5 * ((x - peak[1]) / peak[2]) ** 2) + background[0] + background[1] * x
    return model - y


def log_residual(params):
    """A Gauss–Newton step from p = 10 lands at p < 0, where the residual is NaN."""
    return jnp.log(params) - jnp.array([0.0, 0.0])


def _decay_data():
    t = np.linspace(0, 3, 25)
    return (jnp.asarray(t), jnp.asarray(2.5 * np.exp(-1.3 * t)))


def _peak_data():
    x = np.linspace(-5, 5, 41)
    noise = 0.01 * np.sin(7 * x)  # deterministic, so the solution is fixed
    y = 3.0 * np.exp(-0.5 * ((x - 0.7) / 1.2) ** 2) + 0.5 + 0.1 * x + noise
    return (jnp.asarray(x), jnp.asarray(y))


@dataclass(frozen=True)
class Problem:
    name: str
    fun: Any
    x0: Any
    args: tuple = ()
    solution: Any = None  # known minimiser, or None if checked by its gradient only
    atol: float = 1e-6
    solvers: tuple = field(default=tuple(SOLVERS))


PROBLEMS = {
    "exponential_decay": Problem(
        "exponential_decay", exponential_decay, jnp.array([1.0, 0.5]), _decay_data(), jnp.array([2.5, 1.3])
    ),
    "rosenbrock": Problem("rosenbrock", rosenbrock, jnp.array([-1.2, 1.0]), (), jnp.array([1.0, 1.0])),
    "powell_singular": Problem(
        "powell_singular", powell_singular, jnp.array([3.0, -1.0, 0.0, 1.0]), (), jnp.zeros(4), atol=1e-3
    ),
    "gaussian_peak_dict": Problem(
        "gaussian_peak_dict",
        gaussian_peak,
        {"peak": jnp.array([2.0, 0.0, 1.0]), "background": jnp.array([0.0, 0.0])},
        _peak_data(),
        None,
    ),
    "log_with_nan_region": Problem(
        "log_with_nan_region", log_residual, jnp.array([10.0, 0.2]), (), jnp.ones(2)
    ),
}
