"""least_squares under jax.jit: one compiled while_loop, no recompilation for new data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import PROBLEMS, SOLVERS

import jaxlm

TRACES = []


def traced_decay(params, t, y):
    TRACES.append(1)  # runs only while JAX traces the function
    return params[0] * jnp.exp(-params[1] * t) - y


def test_second_call_with_new_data_does_not_recompile():
    t, y = PROBLEMS["exponential_decay"].args
    first = jaxlm.least_squares(traced_decay, jnp.array([1.0, 0.5]), (t, y))
    traces_after_first = len(TRACES)
    second = jaxlm.least_squares(traced_decay, jnp.array([2.0, 1.0]), (t, 3.0 * y))
    assert len(TRACES) == traces_after_first
    np.testing.assert_allclose(first.params, [2.5, 1.3], rtol=1e-10)
    np.testing.assert_allclose(second.params, [7.5, 1.3], rtol=1e-10)


def test_an_equal_solver_made_anew_reuses_the_compiled_solve():
    """An eager call binds its options into a `jax.jit` kept per set of options: options equal
    in value (a solver built anew on every call) find it again."""
    t, y = PROBLEMS["exponential_decay"].args
    for scale in (1.0, 2.0):
        solver = jaxlm.LevenbergMarquardt(ftol=1e-9, xtol=1e-9)
        jaxlm.least_squares(
            traced_decay, np.array([1.0, 0.5]), (np.asarray(t), scale * np.asarray(y)), solver=solver
        )
        if scale == 1.0:
            traces_after_first = len(TRACES)
    assert len(TRACES) == traces_after_first


class _UnhashableResidual:
    __hash__ = None  # as for an instance of a (non-frozen) dataclass with __eq__

    def __call__(self, params, t, y):
        return params[0] * jnp.exp(-params[1] * t) - y


def test_eager_calls_with_arguments_that_cannot_be_compiled_in_the_fast_way():
    """Python numbers in args stay compile-time constants (here a shape), a residual object
    without a hash and a solver with an array field work, and all give the plain call's answer."""
    t, y = PROBLEMS["exponential_decay"].args
    x0 = jnp.array([1.0, 0.5])
    expected = jaxlm.least_squares(traced_decay, x0, (t, y)).params

    def residual_of_the_first(params, t, y, num_points):
        return traced_decay(params, t[:num_points], y[:num_points])

    cases = {
        "a Python int in args": jaxlm.least_squares(residual_of_the_first, x0, (t, y, t.size)),
        "an unhashable residual": jaxlm.least_squares(_UnhashableResidual(), x0, (t, y)),
        "a solver with an array field": jaxlm.least_squares(
            traced_decay, x0, (t, y), solver=jaxlm.LevenbergMarquardt(initial_damping=jnp.asarray(1e-3))
        ),
    }
    for name, solution in cases.items():
        np.testing.assert_allclose(solution.params, expected, rtol=1e-12, err_msg=name)


def test_an_eager_single_fit_compiles_with_the_single_fit_options(monkeypatch):
    """Called from Python, one fit compiles with `single_fit_compiler_options()` (XLA:CPU's older
    emitters, which compile small kernels faster); traced by a `jit` or `vmap` around it, it
    takes the options of the outermost `jit` (none here)."""
    from jaxlm import _dispatch

    used = []
    jit = jax.jit

    def recording_jit(fun, **kwargs):
        used.append(kwargs.get("compiler_options"))
        return jit(fun, **kwargs)

    monkeypatch.setattr(_dispatch.jax, "jit", recording_jit)
    _dispatch.clear_compiled()
    t, y = PROBLEMS["exponential_decay"].args
    x0 = np.array([1.0, 0.5])
    try:
        eager = jaxlm.least_squares(traced_decay, x0, (t, y))
        jax.vmap(lambda y: jaxlm.least_squares(traced_decay, x0, (t, y)))(jnp.stack([y, 2 * y]))
    finally:
        monkeypatch.undo()
        _dispatch.clear_compiled()
    expected = jaxlm._compiler_options.single_fit_compiler_options() or None
    assert used == [expected, None]
    np.testing.assert_allclose(eager.params, [2.5, 1.3], rtol=1e-10)


def test_inside_user_jit_matches_eager_call():
    problem = PROBLEMS["exponential_decay"]

    @jax.jit
    def fit(x0, t, y):
        return jaxlm.least_squares(problem.fun, x0, (t, y))

    jitted = fit(problem.x0, *problem.args)
    eager = jaxlm.least_squares(problem.fun, problem.x0, problem.args)
    np.testing.assert_array_equal(jitted.params, eager.params)
    assert int(jitted.num_steps) == int(eager.num_steps)


@pytest.mark.parametrize(
    "solver, loops",
    [(jaxlm.LevenbergMarquardt(fallback_after=None), 1), (jaxlm.LevenbergMarquardt(), 2)],
    ids=["one stage", "with the fallback stage"],
)
def test_the_solve_is_one_while_loop_per_stage(solver, loops):
    problem = PROBLEMS["exponential_decay"]
    jaxpr = jax.make_jaxpr(lambda x0: jaxlm.least_squares(problem.fun, x0, problem.args, solver=solver))(
        problem.x0
    )
    # (the trust region's fixed number of Newton iterations on its secular equation is a scan)
    assert str(jaxpr).count("while[") == loops


def test_throw_inside_user_jit():
    problem = PROBLEMS["exponential_decay"]

    @jax.jit
    def fit(x0, t, y):
        return jaxlm.least_squares(problem.fun, x0, (t, y), max_steps=1, throw=True)

    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(fit(problem.x0, *problem.args))


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_every_solver_is_one_while_loop_and_matches_under_jit(solver_name):
    problem = PROBLEMS["exponential_decay"]
    solver = SOLVERS[solver_name]

    def fit(x0):
        return jaxlm.least_squares(problem.fun, x0, problem.args, solver=solver)

    # One while loop per stage that is not inside another (LBFGSLM's line search is nested inside
    # it; LevenbergMarquardt's fallback is a stage of its own).
    stages = len(solver.stage_steps())
    assert _outermost_while_loops(jax.make_jaxpr(fit)(problem.x0).jaxpr) == stages
    np.testing.assert_array_equal(jax.jit(fit)(problem.x0).params, fit(problem.x0).params)


def _outermost_while_loops(jaxpr) -> int:
    count = 0
    for equation in jaxpr.eqns:
        if equation.primitive.name == "while":
            count += 1
            continue
        for value in equation.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _outermost_while_loops(inner)
    return count
