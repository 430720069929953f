"""NIST StRD: 27 problems × 2 starting points, float64, against the files' certified values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nist import DATA_DIR, MODELS, NAMES, load, matching_digits

import jaxlm

pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"NIST data not found at {DATA_DIR}")

MAX_STEPS = 5000  # MGH10 from start 1 crawls along a curved valley: 1808 steps with acceleration alone.
GEODESIC = jaxlm.LevenbergMarquardt(geodesic_acceleration=0.75, fallback_after=None)
# The default solver at its default max_steps: Nielsen's rule alone lands on BoxBOD's plateau
# (b₂ → ∞) from start 1 and needs 7686 steps for MGH10 from start 1; its fallback stage solves both.
DEFAULT = jaxlm.LevenbergMarquardt()

_digits = {}
_default_digits = {}


def solve_both_starts(name, solver, max_steps=MAX_STEPS):
    problem = load(name)
    data = (jnp.asarray(problem.x), jnp.asarray(problem.y))
    starts = jnp.asarray(np.stack(problem.starts))
    solve = jax.vmap(
        lambda x0: jaxlm.least_squares(problem.residual, x0, data, solver=solver, max_steps=max_steps)
    )
    return problem, solve(starts)


@pytest.mark.parametrize("name", NAMES)
def test_certified_values_geodesic_lm(name):
    problem, solution = solve_both_starts(name, GEODESIC)
    digits = matching_digits(solution.params, problem.certified)
    for start in range(2):
        _digits[(name, start)] = digits[start].min()
        assert bool(solution.success[start]), solution.message[start]
        assert digits[start].min() > 4, f"start {start + 1}: digits {digits[start]}"
        # The certified residual sum of squares too, where double precision can resolve it
        # (Lanczos1's is 1.4e-25: residuals of 1e-13 carry rounding errors of 1e-16 each).
        rss = 2 * float(solution.cost[start])
        assert matching_digits(rss, problem.certified_rss) > 4 or abs(rss - problem.certified_rss) < 1e-20


@pytest.mark.parametrize("name", NAMES)
def test_certified_values_default_lm(name):
    problem, solution = solve_both_starts(name, DEFAULT, max_steps=1000)
    digits = matching_digits(solution.params, problem.certified)
    for start in range(2):
        _default_digits[(name, start)] = digits[start].min()
        assert bool(solution.success[start]), solution.message[start]
        assert digits[start].min() > 4, f"start {start + 1}: digits {digits[start]}"


# Small residuals, whose cost F changes by less than its rounding over the last steps: without the
# gradient test for such steps, the damping grows on them and a run stops with 6.7 (Lanczos3/2),
# 7.1 (ENSO/2) or 7.8 (Lanczos2/2) digits, whichever runs the rounding of the machine picks.
@pytest.mark.parametrize("name", ["Lanczos2", "Lanczos3", "ENSO"])
def test_tight_tolerances_reach_the_last_digits(name):
    problem, solution = solve_both_starts(name, jaxlm.LevenbergMarquardt(ftol=0.0, xtol=1e-15), 1000)
    digits = matching_digits(solution.params, problem.certified).min(axis=1)
    assert bool(jnp.all(solution.success)), solution.message
    assert np.all(digits > 9.5), digits


@pytest.mark.parametrize(
    "digits, label, least", [(_digits, "geodesic acceleration", 7.5), (_default_digits, "default", 8.0)]
)
def test_mean_matching_digits(digits, label, least):
    if len(digits) < 2 * len(NAMES):
        pytest.skip("needs every case of the solver's test_certified_values_* to have run first")
    mean = float(np.mean(list(digits.values())))
    print(f"NIST StRD, LM ({label}), default tolerances: mean {mean:.2f} digits over 54 runs")
    assert mean > least


# Lanczos1's residuals are ~1e-13 of y, so each carries a float64 rounding error of ~1e-16
# (≈1e-3 of itself): the residual sum of squares, and the standard deviations ∝ √RSS, are
# resolved to about 3 digits by any double-precision evaluation of the model (scipy: 3.1).
STD_DIGITS = {"Lanczos1": 2.5}


@pytest.mark.parametrize("name", NAMES)
def test_certified_standard_deviations_from_curve_fit(name):
    problem = load(name)
    model = nist_model(name)
    y = np.log(problem.y) if name == "Nelson" else problem.y
    popt, pcov, info, _, _ = jaxlm.curve_fit(
        model, problem.x, y, p0=problem.starts[1], max_steps=MAX_STEPS, full_output=True
    )
    assert bool(info["success"]), info["solution"].message
    assert matching_digits(popt, problem.certified).min() > 4
    digits = matching_digits(np.sqrt(np.diag(pcov)), problem.certified_std)
    assert digits.min() > STD_DIGITS.get(name, 4), f"digits of the standard deviations: {digits}"


def nist_model(name):
    """The problem's model as curve_fit takes it: f(x, b1, b2, ...)."""
    return lambda x, *b: MODELS[name](jnp.stack(b), x)
