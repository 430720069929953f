"""The Moré–Garbow–Hillstrom least-squares problems (`tests/mgh.py`: 30 instances × the starts
x₀, 10·x₀, 100·x₀, float64) with jaxlm's `LevenbergMarquardt()` (the default, and three of
its rules alone: Nielsen's damping, with geodesic acceleration, and Moré's trust region),
optimistix's `LevenbergMarquardt(rtol=1e-8, atol=1e-8)`, and scipy's `least_squares` with method "lm"
(MINPACK's lmder, through scipy) and "trf", each at its default tolerances and at most 1000
iterations (scipy: `max_nfev=1000`, one evaluation of the residuals per iteration; "lm" counts
its Jacobians apart).

A run "reaches the minimum" when its final ‖r‖² is within 1e-4 (relative) or 1e-10 (absolute)
of the smallest value the 1981 paper reports; it is "as good as MINPACK" when it is within the
same margin of, or below, what MINPACK-1's own test reports for that start (53 runs,
`MINPACK_DOCUMENTED`), and "as good as scipy's lm" when it is so against MINPACK run through scipy
from the same start in the same run (all 90).

    python benchmarks/mgh.py          # ~4 min
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
from mgh import FACTORS, MINPACK_DOCUMENTED, PROBLEMS, as_good_as  # noqa: E402

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
            try:
                result = scipy.optimize.least_squares(
                    lambda x: np.asarray(residual(jnp.asarray(x))),
                    x0,
                    jac=lambda x: np.asarray(jacobian(jnp.asarray(x))),
                    method=method,
                    max_nfev=MAX_STEPS,
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

    scipy_lm = {key: square for key, (square, _) in results["scipy `lm` (MINPACK)"].items()}
    documented = {
        (name, factor): norm**2
        for name, norms in MINPACK_DOCUMENTED.items()
        for factor, norm in zip(FACTORS, norms, strict=False)
    }
    references = {"MINPACK's documented result": documented, "scipy's lm": scipy_lm}
    runs = len(scipy_lm)
    print(f"{len(PROBLEMS)} instances × {len(FACTORS)} starts = {runs} runs, float64, jax {jax.__version__}")
    print(
        f"| solver | runs at the paper's minimum | as good as MINPACK's documented result "
        f"({len(documented)} runs) | as good as scipy's `lm` | median iterations |"
    )
    print("|---|---|---|---|---|")
    worse = []
    for label, rows in results.items():
        at_minimum = sum(as_good_as(rows[key][0], PROBLEMS[key[0]].minimum) for key in rows)
        counts = []
        for against, reference in references.items():
            # (A reference that is not finite, where scipy's lm could not start, counts as met.)
            keys = [
                key
                for key in reference
                if np.isfinite(reference[key]) and not as_good_as(rows[key][0], reference[key])
            ]
            counts.append(f"{len(reference) - len(keys)}/{len(reference)}")
            if keys and not (label == "scipy `lm` (MINPACK)" and reference is scipy_lm):
                listed = ", ".join(
                    f"{name} ×{factor:g}: {rows[name, factor][0]:.6g} ({reference[name, factor]:.6g})"
                    for name, factor in keys
                )
                worse.append(f"- worse than {against}, {label}: {listed}")
        steps = np.median([step for _, step in rows.values()])
        print(f"| {label} | {at_minimum}/{runs} | {' | '.join(counts)} | {steps:.0f} |")
    print()
    print("\n".join(worse))


if __name__ == "__main__":
    main()
