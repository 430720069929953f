"""A `Stepper` per dataset: compile once, then the cost of each step from Python.

Problem: NIST Misra1a (14 points, 2 parameters) from its start 1, float64, and `--datasets`
copies of its data with the response scaled by 1 + k/100 (k = 0, 1, ...), each fitted by a new
`jaxlm.Stepper(residual, x0, (x, y))` driven to the end (`init`, then `step` until
`terminate`), as a loop over datasets does. Reported: the wall time of the first dataset
(compiling `init` and `step`) and the median of the others; the median time of one `step`
over `--repeats` calls on one state (with `block_until_ready`); and, for comparison, the median
time of one whole `jaxlm.least_squares` call from Python on the same data (median).

    python benchmarks/stepper.py
"""

import argparse
import pathlib
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from latency import timed  # noqa: E402  (median and best of repeated calls)
from nist import load  # noqa: E402

import jaxlm  # noqa: E402


def residual(b, x, y):
    return b[0] * (1 - jnp.exp(-b[1] * x)) - y


def fit_with_a_new_stepper(x0, x, y):
    stepper = jaxlm.Stepper(residual, x0, (x, y))
    state = stepper.init()
    while not stepper.terminate(state):
        state = stepper.step(state)
    return np.asarray(stepper.params(state)), int(state.num_steps)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2000)
    options = parser.parse_args()
    problem = load("Misra1a")
    x, y, x0 = problem.x, problem.y, np.asarray(problem.starts[0])

    per_dataset, steps = [], []
    for k in range(options.datasets):
        start = time.perf_counter()
        params, num_steps = fit_with_a_new_stepper(x0, x, y * (1 + k / 100))
        per_dataset.append(time.perf_counter() - start)
        steps.append(num_steps)
    np.testing.assert_allclose(
        params[0] / (1 + (options.datasets - 1) / 100), problem.certified[0], rtol=1e-6
    )

    stepper = jaxlm.Stepper(residual, x0, (x, y))
    state = stepper.init()
    one_step, _ = timed(lambda: stepper.step(state), options.repeats)
    solve, _ = timed(lambda: jaxlm.least_squares(residual, x0, (x, y)).params, options.repeats)

    steps_range = f"{min(steps)}–{max(steps)}"
    print(f"jax {jax.__version__}; {options.datasets} datasets of NIST Misra1a, {steps_range} steps each")
    print("| first dataset (compiles) | each later dataset, median | one step, median | least_squares call |")
    print("|---|---|---|---|")
    print(
        f"| {per_dataset[0]:.3f} s | {1e3 * statistics.median(per_dataset[1:]):.2f} ms "
        f"| {1e6 * one_step:.0f} µs | {1e6 * solve:.0f} µs |"
    )


if __name__ == "__main__":
    main()
