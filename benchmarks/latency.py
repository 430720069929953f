"""Latency of one small fit after compiling, and compile time: jaxlm, optimistix, scipy.

Problem: NIST Misra1a (14 points, 2 parameters, y = b1·(1 − exp(−b2·x))) from its start 1,
float64. For each solver: the compile time (first call minus a steady call), and the median and
best wall time of one jitted solve over `--repeats` calls (with `block_until_ready`), against scipy's
MINPACK (`least_squares(method="lm")`) called from Python. Each JAX solver runs in a process of
its own, after a warm-up compile of a trivial function (so that neither pays for starting the
backend or for the other's first compilations), and reports its tracing and lowering time and
XLA's compile time separately (`jax.jit(...).lower(...)`, `.compile()`, in a third process).

A second table says where XLA's compile time goes, from XLA:CPU's own timers (logged at
`TF_CPP_MAX_VLOG_LEVEL=1`, in a fourth process per solver): its HLO passes, and the number of
kernels and the CPU time spent emitting them (MLIR) and compiling them (LLVM), summed over
XLA's compile threads.

A third table gives the compile time and the time of one call of `least_squares` from Python
without a `jit` of the user's own (each library's internal jit compiles the solve on the first
call and finds it in its cache after; the time of a call is its Python overhead: checks,
flattening, dispatch, plus the fit). This is the only place where jaxlm's own `jit` is the
outermost one, so it compiles a single fit with XLA:CPU's older emitters
(`jaxlm/_compiler_options.py`).

A fourth table gives the compile time of a process that finds the program in JAX's persistent
compilation cache (`jax_compilation_cache_dir`, with `jax_persistent_cache_min_compile_time_secs`
= 0 so that programs that compile in under a second are kept too): one process per solver
fills a fresh cache, then three more each time a first call, and the median is reported.

    python benchmarks/latency.py
"""

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
import scipy.optimize  # noqa: E402
from nist import load  # noqa: E402

import jaxlm  # noqa: E402

TOL = 1e-10


def residual(b, x, y):
    return b[0] * (1 - jnp.exp(-b[1] * x)) - y


def jaxlm_solve(x0, x, y):
    solver = jaxlm.LevenbergMarquardt(ftol=TOL, xtol=TOL)
    return jaxlm.least_squares(residual, x0, (x, y), solver=solver).params


def optimistix_residual(b, args):  # one function object, so that optimistix's own jit finds it cached
    return residual(b, *args)


def optimistix_solve(x0, x, y):
    solver = optx.LevenbergMarquardt(rtol=TOL, atol=TOL)
    return optx.least_squares(optimistix_residual, solver, x0, args=(x, y), throw=False).value


SOLVERS = {
    "jaxlm LevenbergMarquardt": jaxlm_solve,
    "optimistix LevenbergMarquardt": optimistix_solve,
}


def timed(call, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


XLA_TIMERS = {
    "hlo": r"Running HLO passes on \[jit_",
    "mlir": r"Compiled MLIR module",
    "llvm": r"Compiled LLVM module",
}


def xla_timers(log):
    """(count, seconds) of each of XLA:CPU's timers in `XLA_TIMERS`, from its VLOG(1) lines
    "<what> time: <value> <unit> (...)"."""
    units = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
    totals = {}
    for key, pattern in XLA_TIMERS.items():
        times = [
            float(value) * units[unit]
            for value, unit in re.findall(pattern + r".*? time: ([0-9.]+) (s|ms|us|µs) ", log)
        ]
        totals[key] = (len(times), sum(times))
    return totals


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--solver", choices=list(SOLVERS), help=argparse.SUPPRESS)
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    problem = load("Misra1a")
    x, y, x0 = jnp.asarray(problem.x), jnp.asarray(problem.y), jnp.asarray(problem.starts[0])
    jax.block_until_ready(jax.jit(lambda a: a + 1)(x0))  # start the backend

    if args.solver is not None and args.eager:  # a child process: one solver, called without a jit
        solve = SOLVERS[args.solver]
        start = time.perf_counter()
        jax.block_until_ready(solve(x0, x, y))
        first = time.perf_counter() - start
        steady, best = timed(lambda: solve(x0, x, y), args.repeats)
        print(f"{first - steady:.3f} {steady * 1e6:.1f} {best * 1e6:.1f}")
        return
    if args.solver is not None:  # a child process: one solver
        solve = jax.jit(SOLVERS[args.solver])
        if args.phases:
            print("=== solve ===", file=sys.stderr, flush=True)  # XLA's log lines after this are the solve's
            start = time.perf_counter()
            lowered = solve.lower(x0, x, y)
            middle = time.perf_counter()
            lowered.compile()
            print(f"{middle - start:.3f} {time.perf_counter() - middle:.3f}")
            return
        start = time.perf_counter()
        params = jax.block_until_ready(solve(x0, x, y))
        first = time.perf_counter() - start
        steady, best = timed(lambda: solve(x0, x, y), args.repeats)
        print(f"{first - steady:.3f} {steady * 1e6:.1f} {best * 1e6:.1f} {params[0]:.6g} {params[1]:.6g}")
        return

    print(
        "| solver | compile s (first call − steady call) | trace + lower s | XLA compile s "
        "| one fit after compiling, µs: median | best | b1, b2 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in SOLVERS:

        def child(*options, name=name):
            command = [sys.executable, __file__, "--solver", name, "--repeats", str(args.repeats), *options]
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()

        compile_s, median, best, b1, b2 = child()
        lower_s, xla_s = child("--phases")
        print(
            f"| {name} | {float(compile_s):.2f} | {float(lower_s):.2f} | {float(xla_s):.2f} "
            f"| {float(median):.0f} | {float(best):.0f} | {b1}, {b2} |",
            flush=True,
        )

    x_np, y_np, x0_np = np.asarray(x), np.asarray(y), np.asarray(x0)

    def scipy_solve():
        return scipy.optimize.least_squares(
            lambda b: b[0] * (1 - np.exp(-b[1] * x_np)) - y_np, x0_np, method="lm", ftol=TOL, xtol=TOL
        ).x

    steady, best = timed(scipy_solve, args.repeats // 4)
    params = scipy_solve()
    print(
        f"| scipy least_squares(method='lm') | – | – | – | {steady * 1e6:.0f} | {best * 1e6:.0f} "
        f"| {params[0]:.6g}, {params[1]:.6g} |"
    )

    print()
    print(
        "| solver | XLA: HLO passes s | kernels emitted (MLIR) | their CPU s "
        "| modules compiled (LLVM) | their CPU s |"
    )
    print("|---|---|---|---|---|---|")
    for name in SOLVERS:
        command = [sys.executable, __file__, "--solver", name, "--phases"]
        verbose = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_MAX_VLOG_LEVEL": "1"}
        log = subprocess.run(command, capture_output=True, text=True, check=True, env=verbose).stderr
        timers = xla_timers(log.split("=== solve ===")[-1])
        print(
            f"| {name} | {timers['hlo'][1]:.3f} | {timers['mlir'][0]} | {timers['mlir'][1]:.3f} "
            f"| {timers['llvm'][0]} | {timers['llvm'][1]:.3f} |",
            flush=True,
        )

    print()
    print(
        "| solver | called from Python without a `jit` of one's own: compile s (first call − steady call) "
        "| one call, µs: median | best |"
    )
    print("|---|---|---|---|")
    for name in SOLVERS:
        command = [sys.executable, __file__, "--solver", name, "--repeats", str(args.repeats), "--eager"]
        compile_s, median, best = subprocess.run(
            command, capture_output=True, text=True, check=True
        ).stdout.split()
        print(f"| {name} | {float(compile_s):.2f} | {float(median):.0f} | {float(best):.0f} |", flush=True)

    print()
    print("| solver | compile s, cache filled by an earlier process (median of 3 processes) |")
    print("|---|---|")
    for name in SOLVERS:
        with tempfile.TemporaryDirectory() as cache:
            command = [sys.executable, __file__, "--solver", name, "--repeats", "10", "--cache-dir", cache]
            runs = [subprocess.run(command, capture_output=True, text=True, check=True) for _ in range(4)]
        compile_s = statistics.median(float(run.stdout.split()[0]) for run in runs[1:])
        print(f"| {name} | {compile_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
