"""Which solver when: every solver of the family on the test registry's problems, near and far.

For each problem of `tests/registry.py` (classic MGH problems, the two-exponential reference
problem, a NaN region, a dict of parameters) and each solver, two starts: the standard one
("near") and ten times it ("far", the Moré–Garbow–Hillstrom convention). A run succeeds when the
solver reports success and its cost matches the problem's known minimum (to 1e-6 relative, or
1e-12 absolute). Also: gradient descent with a backtracking line search (optax), as the
baseline the family is measured against, on the cost ½‖r‖².

    python benchmarks/solver_family.py
"""

import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from registry import PROBLEMS, SOLVERS  # noqa: E402

import jaxlm  # noqa: E402

MAX_STEPS = 1000
GD_MAX_STEPS = 20_000


def known_costs(problem):
    if problem.cost is not None:
        return np.atleast_1d(problem.cost)
    if problem.solution is not None:
        return np.array([0.5 * float(jnp.sum(problem.fun(problem.solution, *problem.args) ** 2))])
    tight = jaxlm.LevenbergMarquardt(ftol=0.0, xtol=1e-15)
    return np.array([float(jaxlm.least_squares(problem.fun, problem.x0, problem.args, solver=tight).cost)])


def reached(cost, costs):
    return bool(np.any(np.isclose(cost, costs, rtol=1e-6, atol=1e-12)))


def gradient_descent(problem, x0):
    """Gradient descent with Armijo backtracking (optax), stopped when ‖g‖∞ ≤ 1e-8·(1 + F)."""
    flat0, unravel = ravel_pytree(x0)

    def cost(x):
        return 0.5 * jnp.sum(problem.fun(unravel(x), *problem.args) ** 2)

    optimizer = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(max_backtracking_steps=40))

    @jax.jit
    def solve(x):
        def not_done(carry):
            _, _, step, value, grad = carry
            return (step < GD_MAX_STEPS) & (jnp.max(jnp.abs(grad)) > 1e-8 * (1 + value)) & jnp.isfinite(value)

        def body(carry):
            x, state, step, value, grad = carry
            updates, state = optimizer.update(grad, state, x, value=value, grad=grad, value_fn=cost)
            x = optax.apply_updates(x, updates)
            value, grad = jax.value_and_grad(cost)(x)
            return x, state, step + 1, value, grad

        value, grad = jax.value_and_grad(cost)(x)
        return jax.lax.while_loop(not_done, body, (x, optimizer.init(x), 0, value, grad))

    _, _, steps, value, grad = solve(flat0)
    converged = bool(jnp.max(jnp.abs(grad)) <= 1e-8 * (1 + value))
    return converged, float(value), int(steps)


def main():
    names = [*SOLVERS, "gradient_descent"]
    results = {name: {"near": [], "far": []} for name in names}
    print("| problem | start | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for problem in PROBLEMS.values():
        costs = known_costs(problem)
        for label, x0 in (("near", problem.x0), ("far", jax.tree.map(lambda a: 10 * a, problem.x0))):
            cells = []
            for name in names:
                if name == "gradient_descent":
                    converged, cost, steps = gradient_descent(problem, x0)
                else:
                    solution = jaxlm.least_squares(
                        problem.fun, x0, problem.args, solver=SOLVERS[name], max_steps=MAX_STEPS
                    )
                    converged, cost, steps = (
                        bool(solution.success),
                        float(solution.cost),
                        int(solution.num_steps),
                    )
                ok = converged and reached(cost, costs)
                results[name][label].append((ok, steps))
                cells.append(f"{steps}" if ok else "✗")
            print(f"| {problem.name} | {label} | " + " | ".join(cells) + " |", flush=True)

    print()
    print("| solver | solved, near | solved, far | median steps of the solved, near | far |")
    print("|---|---|---|---|---|")
    for name in names:
        row = []
        for label in ("near", "far"):
            runs = results[name][label]
            row.append(f"{sum(ok for ok, _ in runs)}/{len(runs)}")
        for label in ("near", "far"):
            steps = [s for ok, s in results[name][label] if ok]
            row.append(f"{np.median(steps):.0f}" if steps else "–")
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
