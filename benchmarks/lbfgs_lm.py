"""Where L-BFGS → LM pays off: many parameters (expensive Jacobians) and a far start.

Problem: m = 2n residuals r = A·(tanh(x) + 0.1·x³) − b with a fixed random A (m × n) and b made
from a known x*, so F = 0 at the solution; x₀ = 0 and the Jacobian costs n forward passes. For
n in `--sizes`: steps, residual/gradient evaluations, Jacobian evaluations, final cost and wall
time (best of 3 after compiling) for `LevenbergMarquardt()`, `LBFGSLM()` and `LBFGSLM` without
the LM-preconditioned L-BFGS steps; plus the registry's small problems, where the Jacobian is
cheap, and Brown–Dennis, whose residuals are large at the solution.

    python benchmarks/lbfgs_lm.py
"""

import argparse
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import jax.flatten_util  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from registry import PROBLEMS  # noqa: E402

import jaxlm  # noqa: E402


def residual(x, a, b):
    return a @ (jnp.tanh(x) + 0.1 * x**3) - b


def problem(n):
    key_a, key_x = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (2 * n, n)) / jnp.sqrt(n)
    x_true = jax.random.uniform(key_x, (n,), minval=-2.0, maxval=2.0)
    return jnp.zeros(n), (a, residual(x_true, a, jnp.zeros(2 * n)))


def measure(fun, x0, args, solver, repeats=3):
    solve = jax.jit(lambda x0, args: jaxlm.least_squares(fun, x0, args, solver=solver))
    solution = jax.block_until_ready(solve(x0, args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(solve(x0, args))
        best = min(best, time.perf_counter() - start)
    return solution, best


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    args = parser.parse_args()
    solvers = {
        "LevenbergMarquardt()": jaxlm.LevenbergMarquardt(),
        "LBFGSLM()": jaxlm.LBFGSLM(),
        "LBFGSLM(max_preconditioned_steps=0)": jaxlm.LBFGSLM(max_preconditioned_steps=0),
    }
    print("| problem | n | solver | steps | fev | Jacobians | final cost | status | time s |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = [("tanh, m = 2n", residual, *problem(n), n) for n in args.sizes]
    cases += [
        (name, PROBLEMS[name].fun, PROBLEMS[name].x0, PROBLEMS[name].args, None)
        for name in ("exponential_decay", "brown_dennis", "two_exponentials")
    ]
    for label, fun, x0, fun_args, n in cases:
        for name, solver in solvers.items():
            solution, seconds = measure(fun, x0, fun_args, solver)
            size = n if n is not None else jax.flatten_util.ravel_pytree(x0)[0].size
            print(
                f"| {label} | {size} | {name} | {int(solution.num_steps)} | {int(solution.num_fev)} | "
                f"{int(solution.num_jev)} | {float(solution.cost):.3g} | "
                f"{jaxlm.Status(int(solution.status)).name} | {seconds:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
