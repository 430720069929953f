"""Large n: the matrix-free LM (`MatrixFreeLM`) against the dense one (`LevenbergMarquardt`).

Problem: recover an N×N image x (n = N² parameters) from m = 2n measurements of a nonlinear
response s(x) = tanh(x) + 0.1·x³ through a sparse operator: r = A·s(x) − b, where the first n
rows of A blur s(x) with a periodic 5-point stencil (`--blur-centre` c = 0.6 at the centre,
(1 − c)/4 at each neighbour) and the last n take its horizontal differences (times
`--difference-weight`, 1); the smaller both are, the worse conditioned J is. It is the tanh
problem of benchmarks/lbfgs_lm.py with a stencil instead of a dense random matrix, so that r
costs O(n) and n = 10⁵ is feasible.
b comes from x* with entries uniform in [−2, 2], so F = 0 at the solution; x₀ = 0; float64.

Each case runs in its own subprocess, so that its peak memory is its own. Reported: compile
time; wall time of one solve after compiling (best of 3, or a single run when one takes over
10 s); steps; CG iterations in all (matrix-free); final cost; status; the temporary memory XLA
plans for the compiled solve (`compiled.memory_analysis().temp_size_in_bytes`), and the peak
resident memory of the subprocess (`ru_maxrss`, which includes about 0.4 GB for Python, JAX and
the data). The dense solver is not run where XLA's plan exceeds 80% of the machine's memory,
and above `--dense-max-n` parameters it runs one step only (`max_steps=1`: two Jacobians).

    python benchmarks/large_n.py             # n = 1024, 4096, 10000, 99856: about 4 minutes
    python benchmarks/large_n.py --sides 10 32 --blur-centre 0.2 --difference-weight 0.01  # harder
    python benchmarks/large_n.py --gradient  # the implicit derivative of MatrixFreeLM: CG against eigh
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm._loop import Problem, run  # noqa: E402
from jaxlm._solver import MatrixFreeLM  # noqa: E402

SOLVERS = {"LevenbergMarquardt()": jaxlm.LevenbergMarquardt(), "MatrixFreeLM()": MatrixFreeLM()}
# The implicit derivative of a MatrixFreeLM solve (`--gradient`): H by CG on Hessian–vector
# products (the default for MatrixFreeLM) against H formed and eigendecomposed.
ADJOINTS = {
    'ImplicitAdjoint(linear_solver="cg")': jaxlm.ImplicitAdjoint(linear_solver="cg"),
    'ImplicitAdjoint(linear_solver="eigh")': jaxlm.ImplicitAdjoint(linear_solver="eigh"),
}


def residual(x, b, centre, difference_weight):
    u = jnp.tanh(x) + 0.1 * x**3
    neighbours = jnp.roll(u, 1, 0) + jnp.roll(u, -1, 0) + jnp.roll(u, 1, 1) + jnp.roll(u, -1, 1)
    blurred = centre * u + (1 - centre) / 4 * neighbours
    differences = difference_weight * (u - jnp.roll(u, 1, axis=1))
    return jnp.concatenate([blurred.ravel(), differences.ravel()]) - b


def problem(side, centre, difference_weight):
    """x₀ and the arguments of `residual`."""
    x_true = jax.random.uniform(jax.random.key(0), (side, side), minval=-2.0, maxval=2.0)
    b = residual(x_true, 0.0, centre, difference_weight)
    return jnp.zeros((side, side)), (b, centre, difference_weight)


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(solver_name, side, max_steps, centre, difference_weight, repeats=3):
    """One case, in this process: a dict of what the table shows."""
    solver = SOLVERS[solver_name]
    x0, args = problem(side, centre, difference_weight)
    solve = jax.jit(
        lambda x0, args: jaxlm.least_squares(residual, x0, args, solver=solver, max_steps=max_steps)
    )
    start = time.perf_counter()
    compiled = solve.lower(x0, args).compile()
    result = {"compile_s": time.perf_counter() - start}
    result["xla_temp_bytes"] = compiled.memory_analysis().temp_size_in_bytes
    physical_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if result["xla_temp_bytes"] > 0.8 * physical_memory:
        return result | {"skipped": "out of memory"}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        solution = jax.block_until_ready(compiled(x0, args))
        best = min(best, time.perf_counter() - start)
        if best > 10:
            break
    result |= {
        "solve_s": best,
        "steps": int(solution.num_steps),
        "cost": float(solution.cost),
        "status": jaxlm.Status(int(solution.status)).name,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if isinstance(solver, MatrixFreeLM):  # the CG count lives in the solver state
        flat_problem = Problem(lambda x: residual(x.reshape(side, side), *args), None)
        state, _, _ = jax.jit(lambda x0: run(solver, flat_problem, x0, max_steps))(x0.ravel())
        result["cg_iterations"] = int(state.total_cg_iterations)
    return result


def measure_gradient(adjoint_name, side, centre, difference_weight, repeats=3):
    """d(½‖x*‖²)/db through a MatrixFreeLM solve, in this process: compile time, the time of the
    solve alone and of the solve with its gradient, the gradient's norm, XLA's temporaries and the
    peak RSS."""
    x0, (b, *rest) = problem(side, centre, difference_weight)

    def fitted(b):
        solution = jaxlm.least_squares(
            residual, x0, (b, *rest), solver=MatrixFreeLM(), adjoint=ADJOINTS[adjoint_name]
        )
        return 0.5 * jnp.sum(solution.params**2)

    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(fitted)).lower(b).compile()
    result = {"compile_s": time.perf_counter() - start}
    result["xla_temp_bytes"] = compiled.memory_analysis().temp_size_in_bytes
    physical_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if result["xla_temp_bytes"] > 0.8 * physical_memory:
        return result | {"skipped": "out of memory"}
    solve_only = jax.jit(fitted).lower(b).compile()
    timings = {}
    for name, function in (("solve_s", solve_only), ("solve_and_gradient_s", compiled)):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            output = jax.block_until_ready(function(b))
            best = min(best, time.perf_counter() - start)
            if best > 10:
                break
        timings[name] = best
    gradient = output[1]
    return (
        result
        | timings
        | {
            "gradient_norm": float(jnp.linalg.norm(gradient)),
            "finite": bool(jnp.all(jnp.isfinite(gradient))),
            "peak_rss_bytes": peak_rss_bytes(),
        }
    )


def in_subprocess(solver_name, side, max_steps, centre, difference_weight, gradient=False):
    case = [solver_name, str(side), str(max_steps), str(centre), str(difference_weight)]
    command = [sys.executable, __file__, "--gradient-case" if gradient else "--case", *case]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def memory(num_bytes):
    return f"{num_bytes / 1e9:.3g} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.3g} MB"


def row(n, solver_name, max_steps, result):
    cells = [f"{n:,}", f"{2 * n:,}", solver_name, f"{result['compile_s']:.1f}"]
    if "skipped" in result:
        cells += [f"{result['skipped']}: J alone is {memory(2 * n * n * 8)}", "–", "–", "–", "–"]
        cells += [memory(result["xla_temp_bytes"]), "–"]
    else:
        one_step = " (1 step only)" if max_steps == 1 else ""
        cells += [
            f"{result['solve_s']:.3g}{one_step}",
            str(result["steps"]),
            str(result.get("cg_iterations", "–")),
        ]
        cells += [f"{result['cost']:.2g}", result["status"]]
        cells += [memory(result["xla_temp_bytes"]), memory(result["peak_rss_bytes"])]
    return "| " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 100, 316], help="N, for n = N²")
    parser.add_argument("--dense-max-n", type=int, default=5000, help="larger dense solves run one step")
    parser.add_argument("--blur-centre", type=float, default=0.6, help="the stencil's centre weight")
    parser.add_argument("--difference-weight", type=float, default=1.0, help="of the difference rows")
    parser.add_argument(
        "--gradient",
        action="store_true",
        help="time the implicit derivative of MatrixFreeLM: CG against eigh",
    )
    parser.add_argument("--eigh-max-n", type=int, default=5000, help="larger eigh derivatives are not run")
    parser.add_argument("--case", nargs=5, help=argparse.SUPPRESS)  # one case, in a subprocess
    parser.add_argument("--gradient-case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gradient_case:
        adjoint_name, side, _, centre, difference_weight = args.gradient_case
        print(json.dumps(measure_gradient(adjoint_name, int(side), float(centre), float(difference_weight))))
        return
    if args.gradient:
        gradient_table(args)
        return
    if args.case:
        solver_name, side, max_steps, centre, difference_weight = args.case
        result = measure(solver_name, int(side), int(max_steps), float(centre), float(difference_weight))
        print(json.dumps(result))
        return
    print(
        "| n | m | solver | compile s | solve s | steps | CG iterations | final cost | status "
        "| XLA temp | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for side in args.sides:
        n = side * side
        for solver_name in SOLVERS:
            dense = solver_name == "LevenbergMarquardt()"
            max_steps = 1 if dense and n > args.dense_max_n else 1000
            result = in_subprocess(solver_name, side, max_steps, args.blur_centre, args.difference_weight)
            print(row(n, solver_name, max_steps, result), flush=True)


def gradient_table(args):
    print(
        "| n | derivative | compile s | solve s | solve + gradient s | gradient / solve | ‖gradient‖ "
        "| XLA temp | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for side in args.sides:
        n = side * side
        for adjoint_name in ADJOINTS:
            if "eigh" in adjoint_name and n > args.eigh_max_n:
                cells = [f"{n:,}", adjoint_name, "–", f"not run: H alone is {memory(n * n * 8)}"]
                print("| " + " | ".join(cells + ["–"] * 5) + " |", flush=True)
                continue
            result = in_subprocess(
                adjoint_name, side, 0, args.blur_centre, args.difference_weight, gradient=True
            )
            cells = [f"{n:,}", adjoint_name, f"{result['compile_s']:.1f}"]
            if "skipped" in result:
                cells += [result["skipped"], "–", "–", "–", memory(result["xla_temp_bytes"]), "–"]
            else:
                ratio = result["solve_and_gradient_s"] / result["solve_s"]
                norm = f"{result['gradient_norm']:.6g}" if result["finite"] else "NaN"
                cells += [
                    f"{result['solve_s']:.3g}",
                    f"{result['solve_and_gradient_s']:.3g}",
                    f"{ratio:.2g}×",
                    norm,
                ]
                cells += [memory(result["xla_temp_bytes"]), memory(result["peak_rss_bytes"])]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
