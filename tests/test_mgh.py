"""The Moré–Garbow–Hillstrom problems (`tests/mgh.py`) as a registry: the default solver reaches
the 1981 paper's minimum from every standard start (float64, as the suite runs), as MINPACK
does."""

import jax.numpy as jnp
import numpy as np
import pytest
from mgh import PROBLEMS

import jaxlm

# From the standard start, descent methods (MINPACK among them) end at Freudenstein–Roth's local
# minimum, not at its global one (‖r‖² = 0 at (5, 4)).
LOCAL_MINIMA = {"Freudenstein–Roth": 48.9842}


def sum_of_squares(problem, factor, solver):
    solution = jaxlm.least_squares(problem.residual, jnp.asarray(problem.start(factor)), solver=solver)
    return 2 * float(solution.cost), bool(solution.success)


@pytest.mark.parametrize("name", PROBLEMS)
def test_the_default_solver_reaches_the_minimum_from_the_standard_start(name):
    problem = PROBLEMS[name]
    squares, success = sum_of_squares(problem, 1.0, jaxlm.LevenbergMarquardt())
    expected = LOCAL_MINIMA.get(name, problem.minimum)
    assert success
    assert squares <= expected * (1 + 1e-4) + 1e-10, (squares, expected)
    assert squares >= expected * (1 - 1e-4) - 1e-10  # and not below what the paper reports


@pytest.mark.parametrize("name", ["Rosenbrock", "helical valley", "Bard", "Osborne 1"])
def test_the_trust_region_with_geodesic_acceleration_shrinks_its_radius_after_a_refused_step(name):
    # A step refused for its curvature used to leave the radius as it was, so that the same step
    # was tried and refused again until max_steps.
    problem = PROBLEMS[name]
    solver = jaxlm.LevenbergMarquardt(damping_rule="trust_region", geodesic_acceleration=0.75)
    squares, success = sum_of_squares(problem, 1.0, solver)
    assert success
    np.testing.assert_allclose(squares, problem.minimum, rtol=1e-4, atol=1e-10)
