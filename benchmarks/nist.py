"""Accuracy on the 27 NIST StRD nonlinear regression problems × 2 starting points (float64).

For each solver configuration: how many of the 54 runs match every certified parameter to more
than 4 significant digits (log relative error, the criterion Ceres uses), the mean over runs of
the smallest number of matching digits, and the steps taken.

    python benchmarks/nist.py
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import nist  # noqa: E402

import jaxlm  # noqa: E402

TIGHT = dict(ftol=0.0, xtol=1e-15)
CONFIGURATIONS = {
    "LM (defaults)": jaxlm.LevenbergMarquardt(),
    "LM, Nielsen's rule alone (fallback_after=None)": jaxlm.LevenbergMarquardt(fallback_after=None),
    "LM + geodesic acceleration 0.75, alone": jaxlm.LevenbergMarquardt(
        geodesic_acceleration=0.75, fallback_after=None
    ),
    "LM, Moré's trust region alone": jaxlm.LevenbergMarquardt(
        damping_rule="trust_region", fallback_after=None
    ),
    "LM, the fallback rule alone (trust region + geodesic 1.5)": jaxlm.LevenbergMarquardt(
        damping_rule="trust_region", geodesic_acceleration=1.5, fallback_after=None
    ),
    "HybridLMQN": jaxlm.HybridLMQN(),
    "DampedNewton": jaxlm.DampedNewton(),
    "LM (defaults), tight (ftol=0, xtol=1e-15)": jaxlm.LevenbergMarquardt(**TIGHT),
    "LM + geodesic 0.75 alone, tight": jaxlm.LevenbergMarquardt(
        geodesic_acceleration=0.75, fallback_after=None, **TIGHT
    ),
}
MAX_STEPS = 1000  # the default


def run(solver):
    rows = []
    for name in nist.NAMES:
        problem = nist.load(name)
        starts = jnp.asarray(np.stack(problem.starts))
        data = (jnp.asarray(problem.x), jnp.asarray(problem.y))

        def solve_one(x0, problem=problem, data=data):
            return jaxlm.least_squares(problem.residual, x0, data, solver=solver, max_steps=MAX_STEPS)

        solve = jax.vmap(solve_one)
        solution = solve(starts)
        digits = nist.matching_digits(solution.params, problem.certified).min(axis=1)
        for start in range(2):
            rows.append((name, start + 1, digits[start], int(solution.num_steps[start])))
    # Each problem compiles programs of its own; 9 configurations × 27 problems of them would
    # exhaust the process's memory maps (LLVM: "Cannot allocate memory").
    jax.clear_caches()
    return rows


def main():
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, max_steps={MAX_STEPS}")
    for label, solver in CONFIGURATIONS.items():
        start = time.perf_counter()
        rows = run(solver)
        digits = np.array([row[2] for row in rows])
        failed = [f"{name}/start {start}: {d:.1f}" for name, start, d, _ in rows if d <= 4]
        print(
            f"{label}: {int((digits > 4).sum())}/54 runs > 4 digits, mean {digits.mean():.2f} digits, "
            f"median steps {int(np.median([r[3] for r in rows]))}, "
            f"({time.perf_counter() - start:.0f} s with compilation); below 4 digits: {failed or 'none'}"
        )


if __name__ == "__main__":
    main()
