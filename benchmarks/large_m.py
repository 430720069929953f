"""One fit with very many residuals and few parameters: the plain path against `residual_chunk_size`.

Problem: a decay on a flat background with a Gaussian peak, 6 parameters,

    y(t) = A·exp(−k·t) + B·exp(−(t − μ)²/(2w²)) + c,    t uniform in [0, 10],

truth (A, k, B, μ, w, c) = (5, 0.8, 2, 6, 0.7, 0.5), Gaussian noise σ = 0.1, start = truth ×
(0.5, 1.5, 0.5, 1.1, 1.5, 0.2); m = 10⁶ and 10⁷ data points, float64 and float32.

Each case runs in a fresh subprocess: `jaxlm.least_squares(residual, p0, (t, y))` under `jit`,
plainly (the whole m × 6 Jacobian) or with `residual_chunk_size` (JᵀJ and Jᵀr accumulated over chunks,
no Jacobian stored). Reported:
- compile time; wall time of one solve after compiling (best of `--repeats`); steps;
- XLA's temporary memory for the compiled solve (`compiled.memory_analysis().temp_size_in_bytes`:
  what it allocates besides its inputs and outputs), and the same for `jax.grad` of Σp² (p the
  fitted parameters) with respect to the data y through the default implicit adjoint (compiled
  only, not run);
- the peak RSS of the process during the solves (`ru_maxrss`, reset through
  /proc/self/clear_refs when they start) and how much it rose above the RSS before them (which
  holds Python, JAX, the data and the compiled code);
- the largest difference of the parameters from those of the float64 plain solve, relative to
  them and in units of their statistical standard error σ_p = σ·√diag((JᵀJ)⁻¹).
A case whose temporary memory would not fit into `--memory-limit-gib` is compiled but not run.

With `--api curve_fit` the same fits go through `jaxlm.curve_fit(model, t, y, p0,
residual_chunk_size=...)` instead, which also computes pcov (from J, or chunk by chunk from R of
J = QR); the table then also gives the largest relative difference of the standard errors
√diag(pcov) from those of the float64 plain fit.

    python benchmarks/large_m.py                      # m = 1e6 and 1e7, float64 and float32
    python benchmarks/large_m.py --sizes 1000000      # quicker
    python benchmarks/large_m.py --chunk-sizes 10000 100000 1000000
    python benchmarks/large_m.py --api curve_fit
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

TRUTH = (5.0, 0.8, 2.0, 6.0, 0.7, 0.5)
START_FACTORS = (0.5, 1.5, 0.5, 1.1, 1.5, 0.2)
NOISE = 0.1


def residual(params, t, y):
    import jax.numpy as jnp

    amplitude, rate, peak, center, width, background = params
    model = amplitude * jnp.exp(-rate * t) + peak * jnp.exp(-((t - center) ** 2) / (2 * width**2))
    return model + background - y


def model(t, amplitude, rate, peak, center, width, background):
    """The model of `residual`, as `curve_fit` takes it."""
    import jax.numpy as jnp

    params = jnp.stack([amplitude, rate, peak, center, width, background])
    return residual(params, t, 0.0)


def make_data(m, dtype):
    import numpy as np

    rng = np.random.default_rng(0)
    t = rng.uniform(0.0, 10.0, m)
    amplitude, rate, peak, center, width, background = TRUTH
    y = amplitude * np.exp(-rate * t) + peak * np.exp(-((t - center) ** 2) / (2 * width**2)) + background
    y += NOISE * rng.normal(size=m)
    return t.astype(dtype), y.astype(dtype)


def standard_errors(m, params):
    """σ_p = √diag((JᵀJ)⁻¹)·σ, the statistical uncertainty of the fitted parameters (numpy, float64)."""
    import numpy as np

    t, _ = make_data(m, np.float64)
    amplitude, rate, peak, center, width, _ = params
    jtj = np.zeros((6, 6))
    for part in np.array_split(t, max(1, m // 1_000_000)):
        decay = np.exp(-rate * part)
        bump = np.exp(-((part - center) ** 2) / (2 * width**2))
        columns = [
            decay,
            -amplitude * part * decay,
            bump,
            peak * bump * (part - center) / width**2,
            peak * bump * (part - center) ** 2 / width**3,
            np.ones_like(part),
        ]
        jac = np.stack(columns, axis=1)
        jtj += jac.T @ jac
    return np.sqrt(np.diag(np.linalg.inv(jtj))) * NOISE


def memory_kib(field):
    """A field of /proc/self/status, e.g. VmRSS (the resident memory now)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def run_case(m, dtype_name, residual_chunk_size, repeats, memory_limit_gib, api):
    """One case in this process; prints a JSON line."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import jaxlm

    dtype = jnp.dtype(dtype_name)
    t, y = map(jnp.asarray, make_data(m, dtype))
    start = jnp.asarray(np.array(TRUTH) * np.array(START_FACTORS), dtype)

    def solve(p0, t, y):
        if api == "least_squares":
            solution = jaxlm.least_squares(residual, p0, (t, y), residual_chunk_size=residual_chunk_size)
            return solution.params, None, solution.num_steps, solution.status
        popt, pcov, info, _, status = jaxlm.curve_fit(
            model, t, y, p0, full_output=True, residual_chunk_size=residual_chunk_size
        )
        return popt, pcov, info["num_steps"], status

    begin = time.perf_counter()
    compiled = jax.jit(solve).lower(start, t, y).compile()
    compile_s = time.perf_counter() - begin
    temp_bytes = compiled.memory_analysis().temp_size_in_bytes

    def loss(y, t):  # a loss of the fitted parameters, differentiated with respect to the data
        return jnp.sum(solve(start, t, y)[0] ** 2)

    gradient = jax.jit(jax.grad(loss)).lower(y, t).compile()
    grad_temp_bytes = gradient.memory_analysis().temp_size_in_bytes
    del gradient
    result = {"compile_s": compile_s, "temp_bytes": temp_bytes, "grad_temp_bytes": grad_temp_bytes}
    if temp_bytes > memory_limit_gib * 2**30:
        print(json.dumps(result | {"skipped": True}), flush=True)
        return
    # Reset the peak RSS to the current RSS, so that the peak read after the solves is theirs.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    rss_before = memory_kib("VmRSS") * 1024
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        params, pcov, steps, status = jax.block_until_ready(compiled(start, t, y))
        times.append(time.perf_counter() - begin)
        errors = None if pcov is None else np.sqrt(np.diag(np.asarray(pcov, np.float64))).tolist()
        steps, status, params = int(steps), int(status), params.tolist()
        del pcov  # so that the next solve's output is not allocated while this one is alive
    result |= {
        "solve_s": min(times),
        "steps": steps,
        "status": jaxlm.Status(status).name,
        "params": params,
        "standard_errors": errors,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(result), flush=True)


def run_in_subprocess(m, dtype_name, residual_chunk_size, args) -> dict:
    case = [str(m), dtype_name, "none" if residual_chunk_size is None else str(residual_chunk_size)]
    options = ["--repeats", str(args.repeats), "--memory-limit-gib", str(args.memory_limit_gib)]
    options += ["--api", args.api]
    command = [sys.executable, __file__, "--case", *case, *options]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        last_line = (process.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"exit code {process.returncode}: {last_line[:80]}"}
    return json.loads(process.stdout.strip().splitlines()[-1])


def table_row(m, dtype_name, path, result, reference, sigma, reference_errors) -> str:
    import numpy as np

    mib = 2**20
    if "failed" in result:
        return f"| {m:,} | {dtype_name} | {path} | {result['failed']} | | | | | | | | |"
    start = f"| {m:,} | {dtype_name} | {path} |"
    temp, grad_temp = result["temp_bytes"] / mib, result["grad_temp_bytes"] / mib
    if result.get("skipped"):
        return (
            f"{start} not run | {result['compile_s']:.1f} | – | {temp:,.0f} | – | – | {grad_temp:,.0f} | | |"
        )
    params = np.array(result["params"])
    relative, in_sigma = "–", "–"
    if reference is not None:
        relative = f"{np.max(np.abs(params - reference) / np.abs(reference)):.1e}"
        in_sigma = f"{np.max(np.abs(params - reference) / sigma):.1e}"
    peak, before = result["peak_rss_bytes"] / mib, result["rss_before_bytes"] / mib
    row = (
        f"{start} {result['solve_s']:.3g} | {result['compile_s']:.1f} | {result['steps']} "
        f"| {temp:,.1f} | {peak:,.0f} | {peak - before:,.0f} | {grad_temp:,.1f} | {relative} | {in_sigma} |"
    )
    if result["standard_errors"] is None:
        return row
    errors_relative = "–"
    if reference_errors is not None:
        errors = np.array(result["standard_errors"])
        errors_relative = f"{np.max(np.abs(errors - reference_errors) / reference_errors):.1e}"
    return f"{row} {errors_relative} |"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--api", choices=["least_squares", "curve_fit"], default="least_squares")
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)  # m, dtype, residual_chunk_size or "none"
    args = parser.parse_args()
    if args.case:
        m, dtype_name, chunk = args.case
        residual_chunk_size = None if chunk == "none" else int(chunk)
        run_case(int(m), dtype_name, residual_chunk_size, args.repeats, args.memory_limit_gib, args.api)
        return

    import jax
    import numpy as np

    print(f"jax {jax.__version__}; {platform.machine()}, {os.cpu_count()} cores")
    print(f"solve s: best of {args.repeats} after compiling; all cases converged unless marked")
    print(f"jaxlm.{args.api}")
    header = (
        "| m | dtype | path | solve s | compile s | steps | XLA temp MiB | peak RSS MiB "
        "| RSS rise in solve, MiB | grad XLA temp MiB | max rel. Δp | max Δp/σ_p |"
    )
    print(header + (" max rel. Δ√diag(pcov) |" if args.api == "curve_fit" else ""))
    print("|---" * (12 + (args.api == "curve_fit")) + "|")
    for m in args.sizes:
        reference = sigma = reference_errors = None
        for dtype_name in args.dtypes:
            for residual_chunk_size in (None, *args.chunk_sizes):
                result = run_in_subprocess(m, dtype_name, residual_chunk_size, args)
                if "params" in result and result["status"] not in ("CONVERGED_FTOL", "CONVERGED_XTOL"):
                    result["steps"] = f"{result['steps']} ({result['status']})"
                path = "plain" if residual_chunk_size is None else f"chunked ({residual_chunk_size:,})"
                print(table_row(m, dtype_name, path, result, reference, sigma, reference_errors), flush=True)
                if dtype_name == "float64" and residual_chunk_size is None and "params" in result:
                    reference = np.array(result["params"])
                    sigma = standard_errors(m, reference)
                    if result["standard_errors"] is not None:
                        reference_errors = np.array(result["standard_errors"])


if __name__ == "__main__":
    main()
