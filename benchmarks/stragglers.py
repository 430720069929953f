"""Stragglers: how much a few hard fits slow down a batch.

The 2-D Gaussian batch of `gaussian_batch.py` (5×5 pixels, float64, tolerance 1e-10), once
with every fit started near its answer ("easy") and once with some fits started far away
("hard": amplitude ×0.01, width ×4, offset ×10 of the truth, which LM needs 27–74 steps to
come back from instead of 4–9). Under `jax.vmap` a `lax.while_loop` runs until its slowest
member stops, so those few fits set the time of the whole batch; `least_squares_batch` goes on
with them alone. Reported: fits/s (best of `--repeats` after compiling) and the time of the
batch with hard fits over the time without them.

    python benchmarks/stragglers.py
"""

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.demo import gaussian_2d_residual, make_spots  # noqa: E402

TOL = 1e-10
HARD_START_FACTORS = np.array([0.01, 1.0, 1.0, 4.0, 10.0])


def jaxlm_vmap():
    solver = jaxlm.LevenbergMarquardt(ftol=TOL, xtol=TOL)
    solve = jax.jit(jax.vmap(lambda p, d: jaxlm.least_squares(gaussian_2d_residual, p, (d,), solver=solver)))

    def run(start, data):
        solution = solve(start, data)
        return np.asarray(solution.success), np.asarray(solution.num_steps)

    return run


def jaxlm_batch():
    solver = jaxlm.LevenbergMarquardt(ftol=TOL, xtol=TOL)

    def run(start, data):
        solution = jaxlm.least_squares_batch(
            gaussian_2d_residual, start, (data,), solver=solver, progress=False
        )
        return solution.success, solution.num_steps

    return run


def optimistix_vmap():
    solver = optx.LevenbergMarquardt(rtol=TOL, atol=TOL)

    def one(p, d):
        solution = optx.least_squares(gaussian_2d_residual, solver, p, args=d, max_steps=1000, throw=False)
        return solution.result == optx.RESULTS.successful, solution.stats["num_steps"]

    solve = jax.jit(jax.vmap(one))

    def run(start, data):
        success, steps = solve(start, data)
        return np.asarray(success), np.asarray(steps)

    return run


def best_time(run, start, data, repeats):
    output = run(start, data)  # compiles
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        output = run(start, data)
        times.append(time.perf_counter() - begin)
    return min(times), output


SOLVERS = {
    "jaxlm vmap": jaxlm_vmap,
    "jaxlm least_squares_batch": jaxlm_batch,
    "optimistix vmap": optimistix_vmap,
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--solvers",
        nargs="+",
        choices=list(SOLVERS),
        default=list(SOLVERS),
        help="the rows to run (optimistix with hard fits takes most of the time)",
    )
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; {' '.join(sys.argv[1:])}")
    print(
        "| N | hard fits | solver | fits/s | time / time without hard fits | converged | steps: median, max |"
    )
    print("|---|---|---|---|---|---|---|")
    for num_fits in args.sizes:
        data, truth, start = make_spots(jax.random.key(0), num_fits, 5, jnp.float64)
        data, truth, start = (np.asarray(a) for a in (data, truth, start))
        rng = np.random.default_rng(0)
        cases = [("none", start)]
        for count in sorted({1, num_fits // 100}):
            hard = rng.choice(num_fits, count, replace=False)
            hard_start = start.copy()
            hard_start[hard] = truth[hard] * HARD_START_FACTORS
            cases.append((f"{count} ({count / num_fits:.1%})", hard_start))
        for name in args.solvers:
            run = SOLVERS[name]()
            baseline = None
            for label, case_start in cases:
                seconds, (success, steps) = best_time(run, case_start, data, args.repeats)
                baseline = baseline or seconds
                print(
                    f"| {num_fits} | {label} | {name} | {num_fits / seconds:,.0f} | "
                    f"{seconds / baseline:.2f} | {np.mean(success):.4f} | "
                    f"{np.median(steps):.0f}, {np.max(steps)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
