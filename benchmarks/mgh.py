"""The Moré–Garbow–Hillstrom least-squares problems (`tests/mgh.py`: 29 instances × the starts
x₀, 10·x₀, 100·x₀, float64) with jaxlm's `LevenbergMarquardt()` (the default, and three of
its rules alone: Nielsen's damping, with geodesic acceleration, and Moré's trust region),
optimistix's `LevenbergMarquardt(rtol=1e-8, atol=1e-8)`, and scipy's `least_squares` with method "lm"
(MINPACK's lmder, through scipy) and "trf", each at its default tolerances and at most 1000
iterations (scipy: 1000·n evaluations for "lm", 1000 for "trf").

A run "reaches the minimum" when its final ‖r‖² is within 1e-4 (relative) or 1e-10 (absolute)
of the smallest value the 1981 paper reports; "as good as MINPACK" when it is within the same
margin of, or below, what MINPACK reached from the same start in the same run.

    python benchmarks/mgh.py          # ~3 min
"""

import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
import scipy.optimize  # noqa: E402
from mgh import FACTORS, PROBLEMS  # noqa: E402

import jaxlm  # noqa: E402

MAX_STEPS = 1000


def jaxlm_runs(solver):
    def run(problem, starts):
        solve = jax.vmap(lambda x0: jaxlm.least_squares(lambda x: problem.residual(x), x0, solver=solver))
        solution = solve(starts)
        return 2 * np.asarray(solution.cost), np.asarray(solution.num_steps)

    return run


def optimistix_run(problem, starts):
    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)

    def one(x0):
        solution = optx.least_squares(
            lambda x, _: problem.residual(x), solver, x0, max_steps=MAX_STEPS, throw=False
        )
        residual = problem.residual(solution.value)
        return jnp.sum(residual**2), solution.stats["num_steps"]

    squares, steps = jax.vmap(one)(starts)
    return np.asarray(squares), np.asarray(steps)


def scipy_run(method):
    def run(problem, starts):
        residual = jax.jit(problem.residual)
        jacobian = jax.jit(jax.jacfwd(problem.residual))
        squares, steps = [], []
        for x0 in np.asarray(starts):
            max_nfev = MAX_STEPS * (problem.num_params + 1) if method == "lm" else MAX_STEPS
            try:
                result = scipy.optimize.least_squares(
                    lambda x: np.asarray(residual(jnp.asarray(x))),
                    x0,
                    jac=lambda x: np.asarray(jacobian(jnp.asarray(x))),
                    method=method,
                    max_nfev=max_nfev,
                )
                squares.append(2 * result.cost)
                steps.append(result.njev if result.njev is not None else result.nfev)
            except (ValueError, np.linalg.LinAlgError):  # a start where the residuals are not finite
                squares.append(np.nan)
                steps.append(0)
        return np.array(squares), np.array(steps)

    return run


SOLVERS = {
    "jaxlm `LevenbergMarquardt()`": jaxlm_runs(jaxlm.LevenbergMarquardt()),
    "jaxlm `LevenbergMarquardt(fallback_after=None)` (Nielsen's rule alone)": jaxlm_runs(
        jaxlm.LevenbergMarquardt(fallback_after=None)
    ),
    "jaxlm `LevenbergMarquardt(geodesic_acceleration=0.75, fallback_after=None)`": jaxlm_runs(
        jaxlm.LevenbergMarquardt(geodesic_acceleration=0.75, fallback_after=None)
    ),
    'jaxlm `LevenbergMarquardt(damping_rule="trust_region", fallback_after=None)`': jaxlm_runs(
        jaxlm.LevenbergMarquardt(damping_rule="trust_region", fallback_after=None)
    ),
    "optimistix `LevenbergMarquardt(1e-8, 1e-8)`": optimistix_run,
    "scipy `trf`": scipy_run("trf"),
    "scipy `lm` (MINPACK)": scipy_run("lm"),
}


def close_to(value, reference):
    return np.isfinite(value) & (value <= reference + 1e-4 * abs(reference) + 1e-10)


def main():
    results = {}  # solver -> {(problem, factor): (‖r‖², steps)}
    for label, run in SOLVERS.items():
        began = time.perf_counter()
        results[label] = {}
        for name, problem in PROBLEMS.items():
            starts = jnp.asarray(np.stack([problem.start(factor) for factor in FACTORS]))
            squares, steps = run(problem, starts)
            for factor, square, step in zip(FACTORS, squares, steps, strict=True):
                results[label][name, factor] = (float(square), int(step))
        print(f"{label}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)

    minpack = results["scipy `lm` (MINPACK)"]
    runs = len(minpack)
    print(f"{len(PROBLEMS)} instances × {len(FACTORS)} starts = {runs} runs, float64, jax {jax.__version__}")
    print("| solver | runs at the paper's minimum | runs as good as MINPACK | median iterations |")
    print("|---|---|---|---|")
    worse = {}
    for label, rows in results.items():
        at_minimum = sum(close_to(rows[key][0], PROBLEMS[key[0]].minimum) for key in rows)
        as_good = [
            key for key in rows if close_to(rows[key][0], minpack[key][0]) or not np.isfinite(minpack[key][0])
        ]
        worse[label] = [key for key in rows if key not in as_good]
        steps = np.median([step for _, step in rows.values()])
        print(f"| {label} | {at_minimum}/{runs} | {len(as_good)}/{runs} | {steps:.0f} |")
    print()
    for label, keys in worse.items():
        if label != "scipy `lm` (MINPACK)" and keys:
            listed = ", ".join(
                f"{name} ×{factor:g}: {results[label][name, factor][0]:.6g} "
                f"(MINPACK {minpack[name, factor][0]:.6g})"
                for name, factor in keys
            )
            print(f"- worse than MINPACK, {label}: {listed}")


if __name__ == "__main__":
    main()
