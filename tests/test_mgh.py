"""The Moré–Garbow–Hillstrom problems (`tests/mgh.py`) as a registry: the default solver reaches
the 1981 paper's minimum from every standard start (float64, as the suite runs), as MINPACK
does, and from every start that MINPACK-1's own test makes it ends as well as MINPACK reports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mgh import FACTORS, MINPACK_DOCUMENTED, PROBLEMS, as_good_as

import jaxlm

# From the standard start, descent methods (MINPACK among them) end at Freudenstein–Roth's local
# minimum, not at its global one (‖r‖² = 0 at (5, 4)); Chebyquad (1, 8) starts at a stationary point.
LOCAL_MINIMA = {"Freudenstein–Roth": 48.9842, "Chebyquad (1, 8)": 3.55789}


def sum_of_squares(problem, factor, solver):
    solution = jaxlm.least_squares(problem.residual, jnp.asarray(problem.start(factor)), solver=solver)
    return 2 * float(solution.cost), bool(solution.success)


def test_minpacks_documented_runs_are_instances_and_starts_of_the_registry():
    assert sum(len(norms) for norms in MINPACK_DOCUMENTED.values()) == 53
    for name, norms in MINPACK_DOCUMENTED.items():
        assert name in PROBLEMS and 1 <= len(norms) <= len(FACTORS)


@pytest.mark.parametrize("name", PROBLEMS)
def test_the_default_solver_reaches_the_minimum_and_does_as_well_as_minpack(name):
    problem = PROBLEMS[name]
    documented = MINPACK_DOCUMENTED.get(name, ())
    starts = jnp.asarray(np.stack([problem.start(factor) for factor in FACTORS[: max(1, len(documented))]]))
    solution = jax.vmap(lambda x0: jaxlm.least_squares(problem.residual, x0))(starts)
    squares = 2 * np.asarray(solution.cost)
    # From the standard start: the paper's minimum, and not below it.
    expected = LOCAL_MINIMA.get(name, problem.minimum)
    assert bool(solution.success[0])
    assert as_good_as(squares[0], expected), (squares[0], expected)
    assert squares[0] >= expected * (1 - 1e-4) - 1e-10
    # From every start of MINPACK's test, as low as MINPACK ends.
    for factor, square, norm in zip(FACTORS, squares, documented, strict=False):
        assert as_good_as(square, norm**2), (factor, square, norm**2)


@pytest.mark.parametrize("name", ["Rosenbrock", "helical valley", "Bard", "Osborne 1"])
def test_the_trust_region_with_geodesic_acceleration_shrinks_its_radius_after_a_refused_step(name):
    # A step refused for its curvature used to leave the radius as it was, so that the same step
    # was tried and refused again until max_steps.
    problem = PROBLEMS[name]
    solver = jaxlm.LevenbergMarquardt(damping_rule="trust_region", geodesic_acceleration=0.75)
    squares, success = sum_of_squares(problem, 1.0, solver)
    assert success
    np.testing.assert_allclose(squares, problem.minimum, rtol=1e-4, atol=1e-10)
