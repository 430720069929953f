"""The least-squares test problems of Moré, Garbow & Hillstrom, "Testing unconstrained
optimization software", ACM TOMS 7(1), 17–41, 1981 ("MGH"): the 28 instances (function, n, m)
with which MINPACK-1 tests its Levenberg–Marquardt code (Moré, Garbow & Hillstrom, "User guide for
MINPACK-1", ANL-80-74, 1980), and Chebyquad with n = m = 1 and 7 from the paper's table: 18
functions in 30 instances, each from the standard start x₀ and from 10·x₀ and 100·x₀ (x₀ = 0 is
scaled as 10·1 and 100·1).

Each instance has the residual function r(x) (m values for n parameters), its standard start,
and the smallest sum of squares ‖r‖² the 1981 paper reports (`minimum`). Freudenstein–Roth
also has a local minimum, ‖r‖² = 48.9842, where MINPACK ends from the standard start.
`MINPACK_DOCUMENTED` holds what MINPACK-1's own test of lmder1 reports for the 53 runs it makes
(a subset of these starts). Written from the paper's definitions (six of them are the
registry's, `tests/registry.py`); used by `tests/test_mgh.py` and `benchmarks/mgh.py`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

# The functions the solver registry already has, with the same m (Box 3-D 10, Brown–Dennis 20).
from registry import bard, box_3d, brown_dennis, freudenstein_roth, powell_singular, rosenbrock


@dataclass(frozen=True)
class MGHProblem:
    name: str
    residual: Callable  # r(x) -> (m,)
    x0: tuple[float, ...]
    num_residuals: int
    minimum: float  # the smallest ‖r‖² reported in the 1981 paper

    @property
    def num_params(self) -> int:
        return len(self.x0)

    def start(self, factor: float) -> np.ndarray:
        """factor·x₀, or factor·1 where x₀ = 0 (MINPACK's rule)."""
        x0 = np.asarray(self.x0, float)
        return factor * x0 if np.any(x0 != 0) or factor == 1 else np.full_like(x0, factor)


# 32, 33, 34: linear functions.


def linear_full_rank(m):
    def residual(x):
        total = jnp.sum(x)
        inside = x - 2 * total / m - 1
        return jnp.concatenate([inside, jnp.full((m - x.shape[0],), -2 * total / m - 1)])

    return residual


def linear_rank_1(m):
    def residual(x):
        weighted = jnp.sum(jnp.arange(1, x.shape[0] + 1) * x)
        return jnp.arange(1, m + 1) * weighted - 1

    return residual


def linear_rank_1_zero_columns_and_rows(m):
    def residual(x):
        n = x.shape[0]
        weighted = jnp.sum(jnp.arange(2, n) * x[1 : n - 1])
        middle = jnp.arange(1, m - 1) * weighted - 1
        return jnp.concatenate([jnp.array([-1.0]), middle, jnp.array([-1.0])])

    return residual


def helical_valley(x):
    theta = jnp.arctan(x[1] / x[0]) / (2 * jnp.pi) + jnp.where(x[0] < 0, 0.5, 0.0)
    return jnp.stack([10 * (x[2] - 10 * theta), 10 * (jnp.sqrt(x[0] ** 2 + x[1] ** 2) - 1), x[2]])


_KOWALIK_Y = np.array(
    [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246]
)
_KOWALIK_U = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])


def kowalik_osborne(x):
    u = _KOWALIK_U
    return _KOWALIK_Y - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


_MEYER_Y = np.array(
    [34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744, 8261, 7030, 6005, 5147, 4427, 3820, 3307, 2872],
    float,
)


def meyer(x):
    t = 45 + 5 * jnp.arange(1.0, 17.0)
    return x[0] * jnp.exp(x[1] / (t + x[2])) - _MEYER_Y


def watson(x):
    n = x.shape[0]
    t = jnp.arange(1.0, 30.0) / 29
    j = jnp.arange(n)
    derivative_sum = jnp.sum(j[1:] * x[1:] * t[:, None] ** (j[1:] - 1), axis=1)
    value_sum = jnp.sum(x * t[:, None] ** j, axis=1)
    return jnp.concatenate([derivative_sum - value_sum**2 - 1, jnp.stack([x[0], x[1] - x[0] ** 2 - 1])])


def jennrich_sampson(m):
    def residual(x):
        i = jnp.arange(1.0, m + 1)
        return 2 + 2 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))

    return residual


def chebyquad(m):
    def residual(x):
        n = x.shape[0]
        # The shifted Chebyshev polynomials T_i(2x − 1), i = 1..m, by their recurrence.
        y = 2 * x - 1
        previous, current = jnp.ones_like(y), y
        values = [current]
        for _ in range(m - 1):
            previous, current = current, 2 * y * current - previous
            values.append(current)
        means = jnp.stack(values).sum(axis=1) / n
        i = np.arange(1, m + 1, dtype=float)
        integrals = np.where(i % 2 == 0, -1.0 / np.where(i % 2 == 0, i**2 - 1, 1), 0.0)
        return means - integrals

    return residual


def brown_almost_linear(x):
    n = x.shape[0]
    return jnp.concatenate([x[:-1] + jnp.sum(x) - (n + 1), jnp.prod(x)[None] - 1])


_OSBORNE_1_Y = np.array(
    [
        0.844,
        0.908,
        0.932,
        0.936,
        0.925,
        0.908,
        0.881,
        0.850,
        0.818,
        0.784,
        0.751,
        0.718,
        0.685,
        0.658,
        0.628,
        0.603,
        0.580,
        0.558,
        0.538,
        0.522,
        0.506,
        0.490,
        0.478,
        0.467,
        0.457,
        0.448,
        0.438,
        0.431,
        0.424,
        0.420,
        0.414,
        0.411,
        0.406,
    ]
)


def osborne_1(x):
    t = 10 * jnp.arange(33.0)
    return _OSBORNE_1_Y - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


_OSBORNE_2_Y = np.array(
    [
        1.366,
        1.191,
        1.112,
        1.013,
        0.991,
        0.885,
        0.831,
        0.847,
        0.786,
        0.725,
        0.746,
        0.679,
        0.608,
        0.655,
        0.616,
        0.606,
        0.602,
        0.626,
        0.651,
        0.724,
        0.649,
        0.649,
        0.694,
        0.644,
        0.624,
        0.661,
        0.612,
        0.558,
        0.533,
        0.495,
        0.500,
        0.423,
        0.395,
        0.375,
        0.372,
        0.391,
        0.396,
        0.405,
        0.428,
        0.429,
        0.523,
        0.562,
        0.607,
        0.653,
        0.672,
        0.708,
        0.633,
        0.668,
        0.645,
        0.632,
        0.591,
        0.559,
        0.597,
        0.625,
        0.739,
        0.710,
        0.729,
        0.720,
        0.636,
        0.581,
        0.428,
        0.292,
        0.162,
        0.098,
        0.054,
    ]
)


def osborne_2(x):
    t = jnp.arange(65.0) / 10
    model = (
        x[0] * jnp.exp(-t * x[4])
        + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
        + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
        + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7])
    )
    return _OSBORNE_2_Y - model


def _instances():
    def linear_start(n):
        return (1.0,) * n

    rows = [
        # (name, residual, x0, m, the paper's minimum ‖r‖²)
        ("linear full rank (5, 10)", linear_full_rank(10), linear_start(5), 10, 5.0),
        ("linear full rank (5, 50)", linear_full_rank(50), linear_start(5), 50, 45.0),
        ("linear rank 1 (5, 10)", linear_rank_1(10), linear_start(5), 10, 10 * 9 / (2 * 21)),
        ("linear rank 1 (5, 50)", linear_rank_1(50), linear_start(5), 50, 50 * 49 / (2 * 101)),
        (
            "linear rank 1, zero columns and rows (5, 10)",
            linear_rank_1_zero_columns_and_rows(10),
            linear_start(5),
            10,
            (100 + 30 - 6) / (2 * 17),
        ),
        (
            "linear rank 1, zero columns and rows (5, 50)",
            linear_rank_1_zero_columns_and_rows(50),
            linear_start(5),
            50,
            (2500 + 150 - 6) / (2 * 97),
        ),
        ("Rosenbrock", rosenbrock, (-1.2, 1.0), 2, 0.0),
        ("helical valley", helical_valley, (-1.0, 0.0, 0.0), 3, 0.0),
        ("Powell singular", powell_singular, (3.0, -1.0, 0.0, 1.0), 4, 0.0),
        ("Freudenstein–Roth", freudenstein_roth, (0.5, -2.0), 2, 0.0),
        ("Bard", bard, (1.0, 1.0, 1.0), 15, 8.21487e-3),
        ("Kowalik–Osborne", kowalik_osborne, (0.25, 0.39, 0.415, 0.39), 11, 3.07505e-4),
        ("Meyer", meyer, (0.02, 4000.0, 250.0), 16, 87.9458),
        ("Watson (6)", watson, (0.0,) * 6, 31, 2.28767e-3),
        ("Watson (9)", watson, (0.0,) * 9, 31, 1.39976e-6),
        ("Watson (12)", watson, (0.0,) * 12, 31, 4.72238e-10),
        ("Box 3-D", box_3d, (0.0, 10.0, 20.0), 10, 0.0),
        ("Jennrich–Sampson", jennrich_sampson(10), (0.3, 0.4), 10, 124.362),
        ("Brown–Dennis", brown_dennis, (25.0, 5.0, -5.0, -1.0), 20, 85822.2),
        ("Chebyquad (1)", chebyquad(1), (0.5,), 1, 0.0),
        # MINPACK's instance (m = 8 > n): its smallest ‖r‖² is the one MINPACK reaches from 10·x₀
        # and 100·x₀ (1.8842482²); x₀ = 0.5 itself is a stationary point (‖r‖² = 3.55789).
        ("Chebyquad (1, 8)", chebyquad(8), (0.5,), 8, 3.55039),
        ("Chebyquad (7)", chebyquad(7), tuple(np.arange(1, 8) / 8), 7, 0.0),
        ("Chebyquad (8)", chebyquad(8), tuple(np.arange(1, 9) / 9), 8, 3.51687e-3),
        ("Chebyquad (9)", chebyquad(9), tuple(np.arange(1, 10) / 10), 9, 0.0),
        ("Chebyquad (10)", chebyquad(10), tuple(np.arange(1, 11) / 11), 10, 6.50395e-3),
        ("Brown almost-linear (10)", brown_almost_linear, (0.5,) * 10, 10, 0.0),
        ("Brown almost-linear (30)", brown_almost_linear, (0.5,) * 30, 30, 0.0),
        ("Brown almost-linear (40)", brown_almost_linear, (0.5,) * 40, 40, 0.0),
        ("Osborne 1", osborne_1, (0.5, 1.5, -1.0, 0.01, 0.02), 33, 5.46489e-5),
        ("Osborne 2", osborne_2, (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), 65, 4.01377e-2),
    ]
    return {
        name: MGHProblem(name, residual, tuple(float(v) for v in x0), m, minimum)
        for name, residual, x0, m, minimum in rows
    }


PROBLEMS = _instances()
FACTORS = (1.0, 10.0, 100.0)


# What MINPACK-1's test of lmder1 reports, the final ‖r‖ of each run (tol = √ε, at most 100·(n + 1)
# evaluations): 53 runs, each instance from x₀, 10·x₀ and 100·x₀ in that order as far as the list
# goes. From the output of its test driver, distributed with MINPACK-1 (netlib.org/minpack, and as
# examples/ref/lmddrv.fortran.ref in C/MINPACK). Where it stopped at its evaluation limit (Powell
# singular from x₀, Kowalik–Osborne from 100·x₀, Meyer from 10·x₀) this is where it stopped.
MINPACK_DOCUMENTED = {
    "linear full rank (5, 10)": (2.2360680,),
    "linear full rank (5, 50)": (6.7082039,),
    "linear rank 1 (5, 10)": (1.4638501,),
    "linear rank 1 (5, 50)": (3.4826302,),
    "linear rank 1, zero columns and rows (5, 10)": (1.9097274,),
    "linear rank 1, zero columns and rows (5, 50)": (3.6917294,),
    "Rosenbrock": (0.0, 0.0, 0.0),
    "helical valley": (9.9365231e-17, 1.0446727e-19, 3.4526556e-29),
    "Powell singular": (3.3916607e-167, 3.6588477e-37, 9.3192613e-35),
    "Freudenstein–Roth": (6.9988752, 6.9988752, 6.9988752),
    "Bard": (9.0635960e-02, 4.1747687, 4.1747687),
    "Kowalik–Osborne": (1.7535838e-02, 3.2052193e-02, 1.7535838e-02),
    "Meyer": (9.3779451, 7.9509584e02),
    "Watson (6)": (4.7829594e-02, 4.7829594e-02, 4.7829594e-02),
    "Watson (9)": (1.1831146e-03, 1.1831146e-03, 1.1831146e-03),
    "Watson (12)": (2.1731040e-05, 2.1731040e-05, 2.1731040e-05),
    "Box 3-D": (2.8529818e-16,),
    "Jennrich–Sampson": (1.1151779e01,),
    "Brown–Dennis": (2.9295429e02, 2.9295427e02, 2.9295431e02),
    "Chebyquad (1, 8)": (1.8862380, 1.8842482, 1.8842482),
    "Chebyquad (8)": (5.9303236e-02,),
    "Chebyquad (9)": (1.2137434e-16,),
    "Chebyquad (10)": (8.0647100e-02,),
    "Brown almost-linear (10)": (8.6625859e-15, 5.0009355e-15, 5.3290705e-15),
    "Brown almost-linear (30)": (1.4827859e-13,),
    "Brown almost-linear (40)": (2.0245354e-13,),
    "Osborne 1": (7.3924926e-03,),
    "Osborne 2": (2.0034404e-01,),
}


def as_good_as(sum_of_squares: float, reference: float) -> bool:
    """Whether ‖r‖² is within 1e-4 (relative) or 1e-10 (absolute) of `reference`, or below it."""
    return bool(np.isfinite(sum_of_squares) and sum_of_squares <= reference * (1 + 1e-4) + 1e-10)
