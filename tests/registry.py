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
    "lm_trust_region": jaxlm.LevenbergMarquardt(damping_rule="trust_region"),
    "gauss_newton": jaxlm.GaussNewton(),
    "gauss_newton_backtracking": jaxlm.GaussNewton(backtracking=True),
    "newton_raphson": jaxlm.NewtonRaphson(),
    "damped_newton": jaxlm.DampedNewton(),
    "damped_newton_reuse": jaxlm.DampedNewton(reuse_hessian=True),
    "hybrid": jaxlm.HybridLMQN(),
    "lbfgs_lm": jaxlm.LBFGSLM(),
}

# The variants of LevenbergMarquardt whose steps differ (damping rule, scaling, acceleration).
LM_VARIANTS = {
    "nielsen": jaxlm.LevenbergMarquardt(),
    "classic": jaxlm.LevenbergMarquardt(damping_rule="classic"),
    "trust_region": jaxlm.LevenbergMarquardt(damping_rule="trust_region"),
    "geodesic": jaxlm.LevenbergMarquardt(geodesic_acceleration=0.75),
    "unscaled": jaxlm.LevenbergMarquardt(scaled=False),
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


def freudenstein_roth(x):
    """MGH 2. From (0.5, −2) descent methods reach the local minimum F = 24.4921 at (11.41, −0.897)."""
    return jnp.stack(
        [-13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1], -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1]]
    )


def powell_badly_scaled(x):
    """MGH 3: F = 0 at (1.098e-5, 9.106)."""
    return jnp.stack([1e4 * x[0] * x[1] - 1, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


_BARD_Y = np.array([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39])


def bard(x):
    """MGH 8: F = ½·8.21487e-3 at (0.0824, 1.133, 2.344)."""
    u = jnp.arange(1.0, 16.0)
    v = 16.0 - u
    w = jnp.minimum(u, v)
    return jnp.asarray(_BARD_Y) - (x[0] + u / (v * x[1] + w * x[2]))


def box_3d(x):
    """MGH 12: F = 0 at (1, 10, 1)."""
    t = 0.1 * jnp.arange(1.0, 11.0)
    return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (jnp.exp(-t) - jnp.exp(-10 * t))


def brown_dennis(x):
    """MGH 16: F = ½·85822.2 (large residuals)."""
    t = jnp.arange(1.0, 21.0) / 5
    return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2


REFERENCE_T = jnp.arange(0.0, 21.0, 2.0)
REFERENCE_Y = jnp.array([0.0, 3.55, 3.82, 2.98, 2.32, 1.48, 1.02, 0.81, 0.41, 0.42, 0.15])


def two_exponentials(x, t, y):
    """The solver-family issue's reference problem: F = 0.0255953 at (−0.4622, −0.2085, −13.62, 13.62)."""
    return y - (x[2] * jnp.exp(x[0] * t) + x[3] * jnp.exp(x[1] * t))


@dataclass(frozen=True)
class Problem:
    name: str
    fun: Any
    x0: Any
    args: tuple = ()
    solution: Any = None  # known minimiser, or None if checked by its gradient only
    atol: float = 1e-6
    cost: float | tuple | None = None  # the known minimum of F = ½‖r‖² (or the acceptable ones)
    solvers: tuple = field(default=tuple(SOLVERS))
    expected_failures: dict = field(default_factory=dict)  # solver name -> the reason


PROBLEMS = {
    "exponential_decay": Problem(
        "exponential_decay", exponential_decay, jnp.array([1.0, 0.5]), _decay_data(), jnp.array([2.5, 1.3])
    ),
    "rosenbrock": Problem("rosenbrock", rosenbrock, jnp.array([-1.2, 1.0]), (), jnp.array([1.0, 1.0])),
    "powell_singular": Problem(
        "powell_singular",
        powell_singular,
        jnp.array([3.0, -1.0, 0.0, 1.0]),
        (),
        jnp.zeros(4),
        atol=1e-3,
        expected_failures={
            "newton_raphson": "the Hessian is singular at the solution: Newton converges only linearly to "
            "x = 0, where the relative tests cannot be met, until H is numerically singular",
        },
    ),
    "gaussian_peak_dict": Problem(
        "gaussian_peak_dict",
        gaussian_peak,
        {"peak": jnp.array([2.0, 0.0, 1.0]), "background": jnp.array([0.0, 0.0])},
        _peak_data(),
        None,
        expected_failures={
            "newton_raphson": "NewtonRaphson is unstable far from a minimum: the Hessian is indefinite "
            "at the start and the iterates run to a point where it is singular",
        },
    ),
    "log_with_nan_region": Problem(
        "log_with_nan_region",
        log_residual,
        jnp.array([10.0, 0.2]),
        (),
        jnp.ones(2),
        expected_failures={
            "gauss_newton": "the undamped step lands where log is NaN; use backtracking",
            "newton_raphson": "the undamped Newton step overshoots into the region where log is NaN",
        },
    ),
    "freudenstein_roth": Problem(
        "freudenstein_roth",
        freudenstein_roth,
        jnp.array([0.5, -2.0]),
        cost=(24.492126863534953, 0.0),  # the local minimum descent methods reach, or the global one
        expected_failures={
            "gauss_newton_backtracking": "J is nearly rank-deficient along the valley, the Gauss–Newton "
            "direction is nearly orthogonal to the gradient, and no step length meets the Armijo test",
        },
    ),
    "powell_badly_scaled": Problem(
        "powell_badly_scaled",
        powell_badly_scaled,
        jnp.array([0.0, 1.0]),
        (),
        jnp.array([1.098159e-5, 9.106146]),
        expected_failures={
            "newton_raphson": "the Newton step heads to a stationary point that is not the minimum (F = 1)"
        },
    ),
    "bard": Problem("bard", bard, jnp.array([1.0, 1.0, 1.0]), cost=0.5 * 8.214877306578e-3),
    "box_3d": Problem("box_3d", box_3d, jnp.array([0.0, 10.0, 20.0]), (), jnp.array([1.0, 10.0, 1.0])),
    "brown_dennis": Problem(
        "brown_dennis",
        brown_dennis,
        jnp.array([25.0, 5.0, -5.0, -1.0]),
        cost=0.5 * 85822.2016,
        expected_failures={
            name: "large residuals at the solution: Gauss–Newton converges linearly at best (here not "
            "within 1000 steps); LM, damped Newton and the hybrid handle it"
            for name in ("gauss_newton", "gauss_newton_backtracking")
        },
    ),
    "two_exponentials": Problem(
        "two_exponentials",
        two_exponentials,
        jnp.array([-1.0, 1.0, -10.0, 10.0]),
        (REFERENCE_T, REFERENCE_Y),
        cost=0.0255953034846641,
        expected_failures={
            **{
                name: "stops far from the minimum (F ≈ 22.7), as scipy's MINPACK LM stops in a worse local "
                "minimum (F ≈ 0.644): the large-residual problem the hybrid is for"
                for name in ("lm", "lm_classic", "lm_geodesic")
            },
            "lm_trust_region": "stops at the local minimum F ≈ 0.644, exactly where scipy's MINPACK LM "
            "(the same trust-region form) stops",
            "gauss_newton": "the undamped step sends the rates to a plateau (F = 22.86)",
            "gauss_newton_backtracking": "stops at the local minimum F ≈ 0.644 where scipy's LM stops too",
            "newton_raphson": "from this start the Newton iterates go to a stationary point at F = 22.86",
        },
    ),
}
