"""Step-by-step use: Stepper (init/step/terminate from Python) and AskTell (reverse communication)."""

import jax.numpy as jnp
import numpy as np
import pytest
from registry import PROBLEMS, exponential_decay

import jaxlm

T, Y = (np.asarray(a) for a in PROBLEMS["exponential_decay"].args)


def numpy_residual(x):
    """A model JAX never sees: plain numpy."""
    return x[0] * np.exp(-x[1] * T) - Y


def numpy_jacobian(x):
    return np.stack([np.exp(-x[1] * T), -x[0] * T * np.exp(-x[1] * T)], axis=1)


def test_stepper_reproduces_least_squares_and_exposes_the_state():
    args = PROBLEMS["exponential_decay"].args
    stepper = jaxlm.Stepper(exponential_decay, jnp.array([1.0, 0.5]), args)
    state = stepper.init()
    dampings = []
    while not stepper.terminate(state):
        state = stepper.step(state)
        dampings.append(float(state.solver_state.damping))
    solution = stepper.solution(state)
    reference = jaxlm.least_squares(exponential_decay, jnp.array([1.0, 0.5]), args)
    np.testing.assert_array_equal(solution.params, reference.params)
    assert int(solution.num_steps) == int(reference.num_steps) == len(dampings)
    assert int(solution.status) == int(reference.status)
    assert len(set(dampings)) > 1  # λ is a field of the state, updated every step
    np.testing.assert_array_equal(stepper.params(state), solution.params)


def test_a_stepper_for_new_data_compiles_nothing(backend_compiles):
    """Steppers of one residual function and solver share their compiled init and step: a loop
    that builds a Stepper per dataset compiles once (it had compiled both again, 0.4 s, for each)."""

    def run(y):
        stepper = jaxlm.Stepper(exponential_decay, np.array([1.0, 0.5]), (T, y))
        state = stepper.init()
        while not stepper.terminate(state):
            state = stepper.step(state)
        return stepper.solution(state)

    first = run(2.5 * np.exp(-1.3 * T))
    compiled = backend_compiles()
    second = run(4.0 * np.exp(-0.7 * T))
    assert backend_compiles() == compiled
    np.testing.assert_allclose(first.params, [2.5, 1.3], rtol=1e-8)
    np.testing.assert_allclose(second.params, [4.0, 0.7], rtol=1e-8)


@pytest.mark.parametrize("jacobian", ["finite_differences", "tell"])
@pytest.mark.parametrize("solver", [jaxlm.LevenbergMarquardt(), jaxlm.HybridLMQN()], ids=["lm", "hybrid"])
def test_ask_tell_solves_a_model_jax_cannot_see(jacobian, solver):
    ask_tell = jaxlm.AskTell(np.array([1.0, 0.5]), solver=solver, jacobian=jacobian)
    requests = 0
    while not ask_tell.done:
        request = ask_tell.ask()
        requests += 1
        if request.jacobian:
            assert jacobian == "tell"
            ask_tell.tell(jacobian=numpy_jacobian(request.x))
        else:
            ask_tell.tell(numpy_residual(request.x))
    solution = ask_tell.solution
    assert bool(solution.success), solution.message
    np.testing.assert_allclose(solution.params, [2.5, 1.3], rtol=1e-8)
    assert requests == int(solution.num_fev) + int(solution.num_jev) * (
        3 if jacobian == "finite_differences" else 1
    )


def test_ask_tell_errors_say_what_to_do():
    with pytest.raises(ValueError, match="residuals and Jacobians"):
        jaxlm.AskTell(np.array([1.0, 0.5]), solver=jaxlm.DampedNewton())
    with pytest.raises(ValueError, match="1-D float array"):
        jaxlm.AskTell(np.array([[1.0, 0.5]]))
    ask_tell = jaxlm.AskTell(np.array([1.0, 0.5]), jacobian="tell")
    with pytest.raises(ValueError, match="residuals"):
        ask_tell.tell(jacobian=np.zeros((25, 2)))  # the first request is for residuals
    ask_tell.tell(numpy_residual(ask_tell.ask().x))
    with pytest.raises(ValueError, match="Jacobian"):
        ask_tell.tell(np.zeros(25))  # the second is for the Jacobian
