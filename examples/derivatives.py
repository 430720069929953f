"""Three ways to use derivatives, on a problem whose residuals stay large at the minimum.

Brown and Dennis's function (Moré, Garbow & Hillstrom no. 16): 20 residuals, 4 parameters,
F = ½·85822.2 at the minimum. Large residuals are where Gauss–Newton-type models (JᵀJ) of the
Hessian are poor, so the three ways differ most:

1. residuals and their Jacobian: Levenberg–Marquardt, with a hand-written `jac=` or
   `jax.jacfwd` (the default); JᵀJ misses the curvature Σ rᵢ∇²rᵢ and LM converges linearly
   (unscaled damping, μI instead of Marquardt's μD², happens to do much better here).
2. residuals, a Jacobian now and then, and gradients: `LBFGSLM`, L-BFGS steps preconditioned
   by LM's model, which learn the missing curvature from gradients.
3. the exact Hessian of the cost: `DampedNewton` (or `NewtonRaphson`), from `jax.hessian`;
   `jaxlm.minimize` takes the scalar cost directly.

For each: iterations, evaluations of the residuals (num_fev) and of derivatives (num_jev:
Jacobians, or gradient-and-Hessian pairs for the Newton methods) and the time of one solve.

    python examples/derivatives.py         # JAXLM_NOTEBOOK_SIZE=small for a quick run
"""

import os
import time

import jax
import jax.numpy as jnp

import jaxlm

jax.config.update("jax_enable_x64", True)

T = jnp.arange(1.0, 21.0) / 5
START = jnp.array([25.0, 5.0, -5.0, -1.0])
MINIMUM = 0.5 * 85822.2016


def brown_dennis(x, t):
    return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2


def brown_dennis_jacobian(x, t):
    """∂rᵢ/∂xⱼ by hand: 20 × 4."""
    u = x[0] + t * x[1] - jnp.exp(t)
    v = x[2] + x[3] * jnp.sin(t) - jnp.cos(t)
    return jnp.stack([2 * u, 2 * u * t, 2 * v, 2 * v * jnp.sin(t)], axis=1)


def cost(x, t):
    return 0.5 * jnp.sum(brown_dennis(x, t) ** 2)


METHODS = {
    "LM, hand-written jac": lambda: jaxlm.least_squares(brown_dennis, START, (T,), jac=brown_dennis_jacobian),
    "LM, jax.jacfwd": lambda: jaxlm.least_squares(brown_dennis, START, (T,)),
    "LM unscaled, jax.jacfwd": lambda: jaxlm.least_squares(
        brown_dennis, START, (T,), solver=jaxlm.LevenbergMarquardt(scaled=False)
    ),
    "L-BFGS → LM": lambda: jaxlm.least_squares(brown_dennis, START, (T,), solver=jaxlm.LBFGSLM()),
    "damped Newton (exact Hessian)": lambda: jaxlm.least_squares(
        brown_dennis, START, (T,), solver=jaxlm.DampedNewton()
    ),
    "Newton–Raphson via minimize": lambda: jaxlm.minimize(cost, START, (T,), solver=jaxlm.NewtonRaphson()),
}


def best_time(solve, repeats):
    """Seconds for one solve after compilation: the best of `repeats`."""
    jax.block_until_ready(solve())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(solve())
        times.append(time.perf_counter() - start)
    return min(times)


def main(size=None):
    size = size or os.environ.get("JAXLM_NOTEBOOK_SIZE", "full")
    print(f"running on {jax.devices()}")
    repeats = 20 if size == "full" else 3
    rows = {}
    print(f"{'method':>30} | iterations | num_fev | num_jev |  F / F*  | status         | time ms")
    for name, solve in METHODS.items():
        solution = solve()
        seconds = best_time(solve, repeats)
        rows[name] = {
            "steps": int(solution.num_steps),
            "num_fev": int(solution.num_fev),
            "num_jev": int(solution.num_jev),
            "cost": float(solution.cost),
            "success": bool(solution.success),
            "ms": 1e3 * seconds,
        }
        print(
            f"{name:>30} | {rows[name]['steps']:10d} | {rows[name]['num_fev']:7d} | "
            f"{rows[name]['num_jev']:7d} | {rows[name]['cost'] / MINIMUM:8.6f} | "
            f"{jaxlm.Status(int(solution.status)).name:<14} | {rows[name]['ms']:.2f}"
        )
    return rows


if __name__ == "__main__":
    main()
