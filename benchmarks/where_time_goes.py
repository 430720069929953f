"""Where the time of a batched LM iteration goes: the 2-D Gaussian benchmark taken apart.

Each piece of one Levenberg–Marquardt iteration is timed alone, vmapped over N fits and
jitted, as the solver runs it: the residuals at a trial point, the Jacobian (`jax.jacfwd`),
the normal equations JᵀJ and Jᵀr, the damped 5×5 solve, and a whole `LevenbergMarquardt.step`.
Each is repeated `--inner` times inside one `lax.fori_loop` (with the data perturbed so that
XLA cannot hoist it) and reported per fit and iteration, in nanoseconds. The normal equations
are timed as one call on the batch's Jacobians (written out beforehand), three ways: as `vmap`
makes them of `jac.T @ jac` (a batch of tiny matrix products), as sums of elementwise products
with XLA's default compiler options (which hand the sums to YNNPACK), and as those sums with
`jaxlm._compiler_options.compiler_options()` (XLA:CPU's own loops). The whole step is timed as
`jit(vmap(least_squares))` compiles it and as `least_squares_batch` does (those sums for up to
32 residuals, and those options). Then the wasted lanes: under `jax.vmap` the loop runs until
the slowest fit stops, so a batch costs max(steps) iterations per fit while the fits need
mean(steps); `least_squares_batch` stops a round when at most 1/8 of the fits run and goes on
with those alone.

    python benchmarks/where_time_goes.py                     # float32 and float64, 5×5 and 11×11
    python benchmarks/where_time_goes.py --dtypes float64 --pixels 5
"""

import argparse
import functools
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", "float64" in sys.argv)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm._compiler_options import compiler_options  # noqa: E402
from jaxlm._least_squares import build_problem  # noqa: E402
from jaxlm._linear import solve_damped_normal_equations  # noqa: E402
from jaxlm.demo import gaussian_2d_residual, make_spots  # noqa: E402


def best_time(compiled, *inputs, repeats=3):
    jax.block_until_ready(compiled(*inputs))
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - begin)
    return min(times)


def per_fit_ns(piece, start, data, inner, options=None):
    """Nanoseconds per fit and call of `piece(params, data)`, vmapped and looped `inner` times."""

    def looped(start, data):
        def body(i, total):
            # A different input each time, so that the loop body cannot be hoisted out.
            out = jax.vmap(piece)(start * (1 + 1e-7 * i), data)
            return total + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out))

        return jax.lax.fori_loop(0, inner, body, jnp.zeros((), start.dtype))

    compiled = jax.jit(looped, compiler_options=options).lower(start, data).compile()
    return best_time(compiled, start, data) / inner / start.shape[0] * 1e9


def call_ns(piece, inputs, options=None, repeats=20):
    """Nanoseconds per fit of one call of `jit(vmap(piece))` on `inputs`, best of `repeats`."""
    compiled = jax.jit(jax.vmap(piece), compiler_options=options).lower(*inputs).compile()
    return best_time(compiled, *inputs, repeats=repeats) / inputs[0].shape[0] * 1e9


def step_ns(solver, problem, start, data, inner, options=None):
    """Nanoseconds per fit of one whole LM step (`inner` steps from the start, vmapped)."""
    states = jax.jit(jax.vmap(lambda p, d: solver.init(problem(d), p)))(start, data)

    def looped(states, data):
        def body(_, states):
            return jax.vmap(lambda state, d: solver.step(problem(d), state))(states, data)

        return jax.lax.fori_loop(0, inner, body, states)

    compiled = jax.jit(looped, compiler_options=options).lower(states, data).compile()
    return best_time(compiled, states, data) / inner / start.shape[0] * 1e9


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--pixels", type=int, nargs="+", default=[5, 11])
    parser.add_argument("--fits", type=int, default=8192)
    parser.add_argument("--inner", type=int, default=20)
    args = parser.parse_args()
    if len(args.dtypes) > 1:
        for dtype_name in args.dtypes:
            options = [
                "--pixels",
                *map(str, args.pixels),
                "--fits",
                str(args.fits),
                "--inner",
                str(args.inner),
            ]
            subprocess.run([sys.executable, __file__, *options, "--dtypes", dtype_name], check=True)
        return
    (dtype_name,) = args.dtypes
    dtype = jnp.dtype(dtype_name)
    tol = 1e-10 if dtype == jnp.float64 else 1e-5
    solver = jaxlm.LevenbergMarquardt(ftol=tol, xtol=tol)
    print(f"{dtype_name}, N = {args.fits} fits, ns per fit and iteration")
    print(
        "| dtype | pixels | residuals | Jacobian (`jacfwd`) | JᵀJ, Jᵀr: `vmap` of `jac.T @ jac` "
        "| JᵀJ, Jᵀr: sums, YNNPACK | JᵀJ, Jᵀr: sums, XLA | damped solve "
        "| LM step as `jit(vmap(least_squares))` | LM step as `least_squares_batch` |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    options = compiler_options()
    steps_rows = []
    for pixels in args.pixels:
        data, _, start = make_spots(jax.random.key(0), args.fits, pixels, dtype)

        def problem(data, template=start[0], elementwise_sums=False):
            return build_problem(
                gaussian_2d_residual, None, (data,), template, data.shape, elementwise_sums=elementwise_sums
            )

        def residuals(p, d):
            return problem(d).residual(p)

        def jacobian(p, d):
            return problem(d).jacobian(p)

        def stand_in_jacobian(p, d):  # the Jacobian's shape, from the inputs
            return jnp.outer(jnp.ravel(d), p)

        def matrix_products(jac, d):
            return jac.T @ jac, jac.T @ jnp.ravel(d)

        def elementwise_sums(jac, d):
            gram = jnp.sum(jac[:, :, None] * jac[:, None, :], axis=0)
            return gram, jnp.sum(jac * jnp.ravel(d)[:, None], axis=0)

        def stand_in_products(p, d):
            jac = stand_in_jacobian(p, d) + jnp.eye(d.size, p.size, dtype=p.dtype)
            return jac.T @ jac, jac.T @ jnp.ravel(d)

        def damped_solve(p, d):
            jac = stand_in_jacobian(p, d) + jnp.eye(d.size, p.size, dtype=p.dtype)
            jtj = jac.T @ jac
            return solve_damped_normal_equations(
                jtj, jac.T @ jnp.ravel(d), jnp.asarray(1e-3, p.dtype), jnp.diagonal(jtj), jac, jnp.ravel(d)
            )

        jacobians = jax.jit(jax.vmap(jacobian))(start, data)  # the pieces below start from J
        row = [
            per_fit_ns(residuals, start, data, args.inner),
            per_fit_ns(jacobian, start, data, args.inner),
            call_ns(matrix_products, (jacobians, data)),
            call_ns(elementwise_sums, (jacobians, data)),
            call_ns(elementwise_sums, (jacobians, data), options),
            per_fit_ns(damped_solve, start, data, args.inner)
            - per_fit_ns(stand_in_products, start, data, args.inner),
            step_ns(solver, problem, start, data, args.inner),
            step_ns(
                solver, functools.partial(problem, elementwise_sums=True), start, data, args.inner, options
            ),
        ]
        print(
            f"| {dtype_name} | {pixels}×{pixels} | " + " | ".join(f"{v:,.0f}" for v in row) + " |", flush=True
        )

        vmapped = jax.jit(
            jax.vmap(lambda p, d: jaxlm.least_squares(gaussian_2d_residual, p, (d,), solver=solver))
        )
        steps = np.asarray(vmapped(start, data).num_steps)
        steps_rows.append((pixels, steps))

    print()
    print("| dtype | pixels | mean steps | max steps | lanes used under vmap (mean/max) |")
    print("|---|---|---|---|---|")
    for pixels, steps in steps_rows:
        print(
            f"| {dtype_name} | {pixels}×{pixels} | {steps.mean():.2f} | {steps.max()} | "
            f"{steps.mean() / steps.max():.0%} |"
        )


if __name__ == "__main__":
    main()
