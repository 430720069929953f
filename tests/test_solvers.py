"""Every solver of the registry on every problem of the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from registry import PROBLEMS, SOLVERS

import jaxlm


def _case(solver_name, problem_name):
    reason = PROBLEMS[problem_name].expected_failures.get(solver_name)
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
    return pytest.param(solver_name, problem_name, marks=marks, id=f"{solver_name}-{problem_name}")


CASES = [_case(s, p) for p in PROBLEMS for s in PROBLEMS[p].solvers]


@pytest.mark.parametrize("solver_name,problem_name", CASES)
def test_solver_converges(solver_name, problem_name):
    problem = PROBLEMS[problem_name]
    solution = jaxlm.least_squares(problem.fun, problem.x0, problem.args, solver=SOLVERS[solver_name])
    assert bool(solution.success), solution.message
    assert jax.tree.structure(solution.params) == jax.tree.structure(problem.x0)
    if problem.solution is not None:
        np.testing.assert_allclose(solution.params, problem.solution, atol=problem.atol)
    if problem.cost is not None:
        known = np.atleast_1d(problem.cost)
        assert np.any(np.isclose(float(solution.cost), known, rtol=1e-6, atol=1e-12)), float(solution.cost)
    # At a minimum the gradient Jᵀr vanishes (relative to the size of J and r).
    flat, unravel = ravel_pytree(solution.params)
    jac = jax.jacfwd(lambda x: problem.fun(unravel(x), *problem.args).ravel())(flat)
    residual = problem.fun(solution.params, *problem.args).ravel()
    scale = jnp.linalg.norm(jac) * jnp.maximum(jnp.linalg.norm(residual), 1e-8)
    assert float(jnp.max(jnp.abs(jac.T @ residual))) <= 1e-6 * float(scale) + 1e-12
    # The Solution's own fields agree with the residuals at its params.
    np.testing.assert_allclose(solution.residual, residual.reshape(solution.residual.shape), atol=1e-12)
    np.testing.assert_allclose(solution.cost, 0.5 * jnp.sum(residual**2), rtol=1e-12, atol=1e-20)
    # One residual evaluation per step, plus the start (and the line searches of LBFGSLM).
    assert 1 <= int(solution.num_jev) <= int(solution.num_fev)
    assert int(solution.num_fev) >= int(solution.num_steps) + 1
    if solver_name != "lbfgs_lm":
        assert int(solution.num_fev) == int(solution.num_steps) + 1
    assert int(solution.num_steps) < 1000


def test_solvers_agree_on_the_minimiser():
    problem = PROBLEMS["gaussian_peak_dict"]
    solutions = [
        ravel_pytree(jaxlm.least_squares(problem.fun, problem.x0, problem.args, solver=s).params)[0]
        for name, s in SOLVERS.items()
        if name not in problem.expected_failures
    ]
    for other in solutions[1:]:
        np.testing.assert_allclose(other, solutions[0], rtol=1e-8)
