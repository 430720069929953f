"""Madsen's LM / quasi-Newton hybrid on the two-exponential reference problem.

    y = x₃·exp(x₁·t) + x₄·exp(x₂·t),   t = 0, 2, …, 20

The residuals stay large at the minimum (F = 0.0255953), where JᵀJ is a poor model of the
Hessian and Levenberg–Marquardt crawls or stops early. `jaxlm.HybridLMQN` takes LM steps while
they make good progress and switches to BFGS quasi-Newton steps, which learn the missing
curvature, when the residuals are large. It reproduces Madsen's published runs: 83 iterations
from (−1, 1, −10, 10) and 139 from (−4, 1, 2, −3) (published: 81 and 139). From the symmetric
start (0, 0, 0, 0) no local method can tell x₁ from x₂; `jaxlm.multistart` breaks the tie.

    python examples/madsen_hybrid.py [output folder]     # JAXLM_NOTEBOOK_SIZE=small for a quick run
"""

import math
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxlm

jax.config.update("jax_enable_x64", True)

T = jnp.arange(0.0, 21.0, 2.0)
Y = jnp.array([0.0, 3.55, 3.82, 2.98, 2.32, 1.48, 1.02, 0.81, 0.41, 0.42, 0.15])
MINIMUM = 0.0255953  # F = ½‖r‖² at (−0.4622, −0.2085, −13.6218, 13.6189)
STARTS = {"(−1, 1, −10, 10)": [-1.0, 1.0, -10.0, 10.0], "(−4, 1, 2, −3)": [-4.0, 1.0, 2.0, -3.0]}
SYMMETRIC = [0.0, 0.0, 0.0, 0.0]
PUBLISHED = {"(−1, 1, −10, 10)": 81, "(−4, 1, 2, −3)": 139}


def model(t, x):
    return x[2] * jnp.exp(x[0] * t) + x[3] * jnp.exp(x[1] * t)


def residual(x, t, y):
    return y - model(t, x)


def every_kth_row(trace, num_frames):
    """A shorter trace for an animation: about num_frames rows, always the first and the last."""
    length = int(trace.length)
    rows = np.unique(np.r_[np.arange(0, length, math.ceil(length / num_frames)), length - 1])
    return jax.tree.map(lambda a: a[rows] if np.ndim(a) else jnp.asarray(len(rows)), trace)


def main(size=None, out_dir=None):
    size = size or os.environ.get("JAXLM_NOTEBOOK_SIZE", "full")
    print(f"running on {jax.devices()}")
    solver = jaxlm.HybridLMQN()
    solutions = {}
    for name, start in [*STARTS.items(), ("(0, 0, 0, 0)", SYMMETRIC)]:
        solution = jaxlm.least_squares(residual, jnp.array(start), (T, Y), solver=solver, trace=300)
        kinds = np.asarray(solution.trace.step_kind[: int(solution.trace.length)])
        solutions[name] = solution
        print(
            f"from {name:>18}: {int(solution.num_steps):3d} iterations "
            f"(published {PUBLISHED.get(name, '–')}), F = {float(solution.cost):.7f}, "
            f"{int(np.sum(kinds == jaxlm.StepKind.QUASI_NEWTON))} quasi-Newton steps"
        )

    # From the symmetric start x₁ = x₂ forever; 64 starts near it, solved at once, find the minimum.
    starts = jnp.array(SYMMETRIC) + 0.1 * jax.random.normal(jax.random.key(0), (64, 4))
    best, everything = jaxlm.multistart(residual, starts, (T, Y), solver=solver)
    num_found = int(jnp.sum(jnp.isclose(everything.cost, MINIMUM, rtol=1e-5)))
    print(f"multistart: best F = {float(best.cost):.7f} at {np.round(np.asarray(best.params), 4)}")
    print(f"            {num_found} of {starts.shape[0]} starts reach the minimum")

    second = solutions["(−4, 1, 2, −3)"]
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        jaxlm.plot.convergence(second, title="HybridLMQN from (−4, 1, 2, −3)").savefig(out / "hybrid.png")
        short = every_kth_row(second.trace, 60 if size == "full" else 8)
        jaxlm.plot.animate_fit(model, T, Y, short, filename=str(out / "hybrid_fit.gif"))
    return {
        "steps": {name: int(solution.num_steps) for name, solution in solutions.items()},
        "costs": {name: float(solution.cost) for name, solution in solutions.items()},
        "quasi_newton_steps": {
            name: int(np.sum(np.asarray(s.trace.step_kind) == jaxlm.StepKind.QUASI_NEWTON))
            for name, s in solutions.items()
        },
        "multistart_cost": float(best.cost),
        "multistart_found": num_found,
    }


if __name__ == "__main__":
    main(out_dir=sys.argv[1] if len(sys.argv) > 1 else None)
