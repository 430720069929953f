"""Recorded traces (`trace=K`): the rows match a step-by-step run, and survive jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import PROBLEMS, REFERENCE_T, REFERENCE_Y, SOLVERS, exponential_decay, two_exponentials

import jaxlm
from jaxlm import StepKind

TRACED_SOLVERS = ["lm", "lm_trust_region", "gauss_newton", "damped_newton", "hybrid", "lbfgs_lm"]
EXPECTED_KINDS = {
    "lm": {StepKind.LEVENBERG_MARQUARDT},
    "lm_trust_region": {StepKind.LEVENBERG_MARQUARDT},
    "gauss_newton": {StepKind.GAUSS_NEWTON},
    "damped_newton": {StepKind.NEWTON},
    "hybrid": {StepKind.LEVENBERG_MARQUARDT, StepKind.QUASI_NEWTON},
    "lbfgs_lm": {StepKind.LBFGS, StepKind.LEVENBERG_MARQUARDT, StepKind.QUASI_NEWTON},
}
REFERENCE_START_2 = jnp.array([-4.0, 1.0, 2.0, -3.0])


def _stepwise_rows(solver, x0, num_steps):
    """(cost, params, step_info) after each step of a Stepper run, the start first."""
    stepper = jaxlm.Stepper(two_exponentials, x0, (REFERENCE_T, REFERENCE_Y), solver=solver)
    state = stepper.init()
    rows = [(state.solver_state.cost, state.solver_state.x, None)]
    while not stepper.terminate(state) and len(rows) <= num_steps:
        state = stepper.step(state)
        rows.append((state.solver_state.cost, state.solver_state.x, solver.step_info(state.solver_state)))
    return rows


@pytest.mark.parametrize("name", TRACED_SOLVERS)
def test_trace_matches_a_step_by_step_run(name):
    solver = SOLVERS[name]
    solution = jaxlm.least_squares(
        two_exponentials, REFERENCE_START_2, (REFERENCE_T, REFERENCE_Y), solver=solver, trace=60
    )
    trace = solution.trace
    length = int(trace.length)
    assert length == min(int(solution.num_steps), 60) + 1
    rows = _stepwise_rows(solver, REFERENCE_START_2, length - 1)
    assert len(rows) == length
    # The two runs are compiled separately (one fused loop, one jitted step) and could round
    # differently; on the test machine they agree to the last bit. (When the Stepper compiled
    # without the eager solve's compiler options, the difference from this start, F ≈ 1e18,
    # grew to 3e-6 of a parameter at step 45 of the trust-region LM.)
    np.testing.assert_allclose(trace.cost[:length], [float(cost) for cost, _, _ in rows], rtol=1e-6)
    np.testing.assert_allclose(trace.params[:length], np.stack([x for _, x, _ in rows]), rtol=1e-6)
    assert int(trace.step_kind[0]) == StepKind.START
    for k, (_, _, info) in enumerate(rows[1:], start=1):
        assert int(trace.step_kind[k]) == int(info.step_kind)
        assert bool(trace.accepted[k]) == bool(info.accepted)
        np.testing.assert_allclose(trace.damping[k], info.damping, rtol=1e-6)
    assert {StepKind(int(kind)) for kind in trace.step_kind[1:length]} <= EXPECTED_KINDS[name]
    # A rejected step leaves the point where it was.
    for k in range(1, length):
        if not bool(trace.accepted[k]):
            np.testing.assert_array_equal(trace.params[k], trace.params[k - 1])
    # The rows after the end are padding.
    assert np.all(np.asarray(trace.step_kind[length:]) == StepKind.NONE)
    assert np.all(np.isnan(np.asarray(trace.cost[length:])))


def test_hybrid_trace_shows_the_switches_between_lm_and_quasi_newton():
    solution = jaxlm.least_squares(
        two_exponentials,
        REFERENCE_START_2,
        (REFERENCE_T, REFERENCE_Y),
        solver=jaxlm.HybridLMQN(),
        trace=300,
    )
    kinds = np.asarray(solution.trace.step_kind[1 : int(solution.trace.length)])
    assert np.count_nonzero(kinds == StepKind.QUASI_NEWTON) > 0
    assert np.count_nonzero(np.diff(kinds) != 0) >= 2  # LM → QN and back
    # The trust radius is recorded for the hybrid, not for Nielsen-damped LM.
    assert np.all(np.isfinite(np.asarray(solution.trace.radius[: int(solution.trace.length)])))
    plain = jaxlm.least_squares(two_exponentials, REFERENCE_START_2, (REFERENCE_T, REFERENCE_Y), trace=2)
    assert np.all(np.isnan(np.asarray(plain.trace.radius)))


def test_a_short_trace_keeps_the_first_steps():
    problem = PROBLEMS["exponential_decay"]
    full = jaxlm.least_squares(problem.fun, problem.x0, problem.args, trace=100)
    short = jaxlm.least_squares(problem.fun, problem.x0, problem.args, trace=3)
    assert int(full.num_steps) > 3
    assert int(short.trace.length) == 4 and short.trace.cost.shape == (4,)
    np.testing.assert_allclose(short.trace.cost, full.trace.cost[:4], rtol=1e-12)
    np.testing.assert_allclose(short.params, full.params, rtol=1e-12)
    # The last filled row of a full trace is the solution.
    last = int(full.trace.length) - 1
    np.testing.assert_allclose(full.trace.params[last], full.params, rtol=1e-12)
    np.testing.assert_allclose(full.trace.cost[last], full.cost, rtol=1e-12)
    np.testing.assert_allclose(full.trace.grad_norm[last], full.grad_norm, rtol=1e-12)


def test_trace_keeps_the_structure_of_the_parameters():
    problem = PROBLEMS["gaussian_peak_dict"]
    solution = jaxlm.least_squares(problem.fun, problem.x0, problem.args, trace=5)
    assert set(solution.trace.params) == {"peak", "background"}
    assert solution.trace.params["peak"].shape == (6, 3)
    np.testing.assert_allclose(solution.trace.params["peak"][0], problem.x0["peak"])


def test_trace_under_vmap_gives_every_fit_its_own_rows():
    t = jnp.linspace(0.0, 4.0, 20)
    amplitudes = jnp.array([1.0, 3.0, 5.0])
    ys = amplitudes[:, None] * jnp.exp(-0.7 * t)[None, :]
    x0 = jnp.array([1.0, 1.0])

    def fit(y):
        return jaxlm.least_squares(exponential_decay, x0, (t, y), trace=30)

    batched = jax.jit(jax.vmap(fit))(ys)
    assert batched.trace.cost.shape == (3, 31)
    assert batched.trace.params.shape == (3, 31, 2)
    for i in range(3):
        single = fit(ys[i])
        length = int(single.trace.length)
        assert int(batched.trace.length[i]) == length
        np.testing.assert_allclose(batched.trace.cost[i, :length], single.trace.cost[:length], rtol=1e-9)
        np.testing.assert_array_equal(batched.trace.step_kind[i], single.trace.step_kind)


def test_trace_from_minimize_and_through_gradients():
    def cost(params, target):
        return jnp.sum((params - target) ** 4 + (params - target) ** 2)

    target = jnp.array([0.5, -1.0])
    solution = jaxlm.minimize(cost, jnp.zeros(2), (target,), trace=10)
    assert int(solution.trace.step_kind[1]) == StepKind.NEWTON
    assert float(solution.trace.cost[0]) > float(solution.trace.cost[int(solution.trace.length) - 1])
    # Recording a trace does not change the derivative of the solution.
    gradient = jax.grad(lambda target: jaxlm.minimize(cost, jnp.zeros(2), (target,), trace=10).params[0])
    np.testing.assert_allclose(gradient(target), [1.0, 0.0], atol=1e-8)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_trace_must_be_a_number_of_steps(bad):
    with pytest.raises(ValueError, match="trace must be a number of steps"):
        jaxlm.least_squares(exponential_decay, jnp.ones(2), (REFERENCE_T, REFERENCE_Y), trace=bad)
