"""`verbose=True`: one line per iteration from inside jit, one aggregated line per iteration
under vmap."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from registry import PROBLEMS, REFERENCE_T, REFERENCE_Y, two_exponentials

import jaxlm

LINE = re.compile(
    r"iter +(\d+)  cost (\S+)  \|g\| (\S+)(  mu \S+)?(  Delta \S+)?  step (start|LM|GN|Newton|QN|L-BFGS)"
    r" *(  (accepted|rejected))?(  [A-Z_]+)?$"
)
BATCH_LINE = re.compile(r"iter +(\d+)  running (\d+)  converged (\d+)  failed (\d+)  worst cost (\S+)$")


def _lines(capsys):
    jax.effects_barrier()
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("iter")]


def test_one_line_per_iteration_matching_the_trace(capsys):
    problem = PROBLEMS["exponential_decay"]
    solution = jaxlm.least_squares(problem.fun, problem.x0, problem.args, verbose=True, trace=50)
    lines = _lines(capsys)
    assert len(lines) == int(solution.num_steps) + 1
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == list(range(len(lines)))
    np.testing.assert_allclose(
        [float(m.group(2)) for m in matches], solution.trace.cost[: len(lines)], rtol=1e-6
    )
    assert matches[0].group(6) == "start" and matches[1].group(6) == "LM"
    assert lines[-1].endswith(jaxlm.Status(int(solution.status)).name)
    assert "mu" in lines[1]


def test_the_hybrid_shows_its_quasi_newton_steps_and_radius(capsys):
    jaxlm.least_squares(
        two_exponentials,
        jnp.array([-4.0, 1.0, 2.0, -3.0]),
        (REFERENCE_T, REFERENCE_Y),
        solver=jaxlm.HybridLMQN(),
        verbose=True,
    )
    lines = _lines(capsys)
    kinds = {LINE.match(line).group(6) for line in lines}
    assert kinds == {"start", "LM", "QN"}
    assert all("Delta" in line for line in lines)


def test_under_vmap_one_aggregated_line_per_iteration(capsys):
    problem = PROBLEMS["exponential_decay"]
    starts = jnp.stack([problem.x0, 3 * problem.x0, jnp.array([jnp.nan, 1.0])])
    fit = jax.jit(jax.vmap(lambda x0: jaxlm.least_squares(problem.fun, x0, problem.args, verbose=True)))
    solutions = fit(starts)
    lines = _lines(capsys)
    assert len(lines) == int(jnp.max(solutions.num_steps)) + 1  # never one line per fit
    matches = [BATCH_LINE.match(line) for line in lines]
    assert all(matches), lines
    first, last = matches[0], matches[-1]
    assert (int(first.group(2)), int(first.group(4))) == (2, 1)  # the NaN start failed at once
    assert (int(last.group(2)), int(last.group(3)), int(last.group(4))) == (0, 2, 1)
    for m in matches:
        assert int(m.group(2)) + int(m.group(3)) + int(m.group(4)) == 3


def test_quiet_by_default_and_from_minimize_and_curve_fit(capsys):
    problem = PROBLEMS["exponential_decay"]
    jaxlm.least_squares(problem.fun, problem.x0, problem.args)
    assert _lines(capsys) == []
    jaxlm.minimize(lambda p: jnp.sum((p - 1.0) ** 4 + p**2), jnp.zeros(2), verbose=True)
    assert any("step Newton" in line for line in _lines(capsys))
    t, y = problem.args
    jaxlm.curve_fit(lambda t, a, k: a * jnp.exp(-k * t), t, y, p0=[1.0, 1.0], verbose=True)
    assert len(_lines(capsys)) > 2


def test_printing_does_not_stop_gradients(capsys):
    problem = PROBLEMS["exponential_decay"]
    t, y = problem.args

    def rate(y, adjoint, verbose):
        return jaxlm.least_squares(
            problem.fun, problem.x0, (t, y), verbose=verbose, max_steps=20, adjoint=adjoint
        ).params[1]

    for adjoint in (jaxlm.ImplicitAdjoint(), jaxlm.UnrolledAdjoint()):
        loud = jax.grad(rate)(y, adjoint, True)
        quiet = jax.grad(rate)(y, adjoint, False)
        np.testing.assert_allclose(loud, quiet, rtol=1e-10)
    assert len(_lines(capsys)) > 0
