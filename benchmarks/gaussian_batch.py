"""Batched 2-D Gaussian spot fits (the Gpufit benchmark) with jaxlm, optimistix, jaxopt and scipy.

Data as in Gpufit's CPU/GPU comparison example (see `jaxlm.demo`): 5 parameters, 5×5 (or
`--pixels`) pixels, truth (500, c, c, 1, 10)·U[0.9, 1.1], noise σ = 17.05, start = truth·U[0.9, 1.1].

Preset "tight" (the default): every solver gets the same relative tolerance (1e-10 in float64,
1e-5 in float32) on its own stopping tests, as close to each other as their APIs allow, and
max_steps 1000:
- jaxlm: `LevenbergMarquardt(ftol=tol, xtol=tol)`, gtol 0 (its default), both as
  `jit(vmap(least_squares))` and as `least_squares_batch` (chunks and rounds);
- optimistix: `LevenbergMarquardt(rtol=tol, atol=tol)` (its QR linear solver, the default);
- jaxopt: `LevenbergMarquardt(stop_criterion="madsen-nielsen", xtol=tol, gtol=0, solver="cholesky",
  materialize_jac=True)`
  (its default CG solver and absolute gradient-norm test are slower and scale-dependent);
- scipy: `least_squares(method="lm", ftol=tol, xtol=tol, gtol=tol)` with an analytic Jacobian,
  one fit at a time in a Python loop, on the first `--scipy-fits` fits.
In float32, optimistix at 1e-5 leaves about 1% of the fits running to max_steps (the batch then
takes minutes), so it runs at a 10× looser tolerance (row "optimistix (tol×10)"), its best
float32 setting; `--optimistix-float32-tight` adds the row at 1e-5.

Preset "gpufit": Gpufit's and Cpufit's own settings: float32, stop when the relative change of
χ² is below 1e-4, at most 10 iterations. jaxlm: `LevenbergMarquardt(ftol=1e-4, xtol=0)`
(its ftol test is the relative change of the cost, actual and predicted), max_steps 10;
optimistix: rtol = atol = 1e-4, max_steps 10; jaxopt: xtol = 1e-4, gtol 0, maxiter 10 (it
has no test on the change of the cost). scipy runs at the tight tolerance as the reference.

Reported: fits/s after compilation (best of `--repeats` runs), compile time (first call minus a
steady run), fraction converged (each library's own success flag), and agreement with scipy on
the fits scipy solved: |p − p_scipy| / σ_p, σ_p the standard error from scipy's Jacobian.

    python benchmarks/gaussian_batch.py                          # N = 1e5, 5×5 and 11×11, float32 and float64
    python benchmarks/gaussian_batch.py --preset gpufit --dtypes float32
    python benchmarks/gaussian_batch.py --sizes 10000 --pixels 5 # quicker
"""

import argparse
import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Each dtype runs in its own process: float64 with jax_enable_x64, float32 without it, as users
# of each run them (optimistix's LM also fails on float32 parameters when x64 is enabled).
jax.config.update("jax_enable_x64", "float64" in sys.argv)

import jaxopt  # noqa: E402
import optimistix as optx  # noqa: E402
import scipy.optimize  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.demo import gaussian_2d_residual, make_spots  # noqa: E402

MAX_STEPS = {"tight": 1000, "gpufit": 10}
VERSIONED = ("jax", "jaxlm", "optimistix", "jaxopt", "scipy")


def optimistix_residual(params, data):
    return gaussian_2d_residual(params, data)


def _jaxlm_lm(tol, preset):
    if preset == "gpufit":
        return jaxlm.LevenbergMarquardt(ftol=tol, xtol=0.0)
    return jaxlm.LevenbergMarquardt(ftol=tol, xtol=tol)


def jaxlm_solver(tol, preset):
    solver = _jaxlm_lm(tol, preset)
    return jax.jit(
        jax.vmap(
            lambda p, d: jaxlm.least_squares(
                gaussian_2d_residual, p, (d,), solver=solver, max_steps=MAX_STEPS[preset]
            )
        )
    )


def jaxlm_batch_solver(tol, preset, devices):
    solver = _jaxlm_lm(tol, preset)

    def solve(start, data):
        return jaxlm.least_squares_batch(
            gaussian_2d_residual,
            start,
            (data,),
            solver=solver,
            max_steps=MAX_STEPS[preset],
            devices=devices,
            progress=False,
        )

    return solve


def jaxlm_result(solution):
    return solution.params, solution.success


def optimistix_solver(tol, preset):
    solver = optx.LevenbergMarquardt(rtol=tol, atol=tol)

    def solve(p, d):
        # Its Solution holds the solver state (with jaxprs), which cannot leave vmap; keep the answer.
        solution = optx.least_squares(
            optimistix_residual, solver, p, args=d, max_steps=MAX_STEPS[preset], throw=False
        )
        return solution.value, solution.result == optx.RESULTS.successful

    return jax.jit(jax.vmap(solve))


def optimistix_result(output):
    return output


def flat_residual(params, data):
    return gaussian_2d_residual(params, data).ravel()  # jaxopt's materialised Jacobian needs 1-D


def jaxopt_solver(tol, preset):
    solver = jaxopt.LevenbergMarquardt(
        residual_fun=flat_residual,
        maxiter=MAX_STEPS[preset],
        stop_criterion="madsen-nielsen",
        xtol=tol,
        gtol=0.0,
        solver="cholesky",
        materialize_jac=True,
    )
    return jax.jit(jax.vmap(solver.run))


def jaxopt_result(output, max_steps):
    params, state = output
    converged = (state.iter_num < max_steps) & jnp.all(jnp.isfinite(params), axis=-1)
    return params, converged


def _numpy_model(p, size):
    amplitude, x0, y0, width, offset = p
    coordinates = np.arange(size, dtype=float)
    x, y = coordinates[None, :], coordinates[:, None]
    exponential = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * width**2))
    value = amplitude * exponential + offset
    jac = np.stack(
        [
            exponential,
            amplitude * exponential * (x - x0) / width**2 + 0 * y,
            amplitude * exponential * (y - y0) / width**2 + 0 * x,
            amplitude * exponential * ((x - x0) ** 2 + (y - y0) ** 2) / width**3,
            np.ones_like(exponential),
        ],
        axis=-1,
    )
    return value.ravel(), jac.reshape(-1, 5)


def scipy_fits(start, data, tol):
    size = data.shape[-1]
    params, errors, converged = [], [], []
    for p0, image in zip(start, data, strict=True):
        flat = image.ravel()
        result = scipy.optimize.least_squares(
            lambda p, flat=flat: _numpy_model(p, size)[0] - flat,
            p0,
            jac=lambda p: _numpy_model(p, size)[1],
            method="lm",
            ftol=tol,
            xtol=tol,
            gtol=tol,
            max_nfev=1000,
        )
        dof = flat.size - 5
        covariance = np.linalg.pinv(result.jac.T @ result.jac) * (2 * result.cost / dof)
        params.append(result.x)
        errors.append(np.sqrt(np.abs(np.diag(covariance))))
        converged.append(result.status > 0)
    return np.array(params), np.array(errors), np.array(converged)


def time_solver(make, result, tol, preset, start, data, repeats):
    solve = make(tol, preset)
    begin = time.perf_counter()
    output = jax.block_until_ready(solve(start, data))
    first_call = time.perf_counter() - begin
    runs = []
    for _ in range(repeats if first_call < 20 else 1):
        begin = time.perf_counter()
        output = jax.block_until_ready(solve(start, data))
        runs.append(time.perf_counter() - begin)
    params, converged = result(output)
    return np.asarray(params), np.asarray(converged), min(runs), max(first_call - min(runs), 0.0)


SOLVERS = {
    "jaxlm (vmap)": (jaxlm_solver, jaxlm_result),
    "jaxlm (least_squares_batch, 1 device)": (
        lambda tol, preset: jaxlm_batch_solver(tol, preset, jax.devices()[:1]),
        jaxlm_result,
    ),
    "jaxlm (least_squares_batch, all CPU cores)": (
        lambda tol, preset: jaxlm_batch_solver(tol, preset, jax.devices()),
        jaxlm_result,
    ),
    "optimistix": (optimistix_solver, optimistix_result),
    "jaxopt": (jaxopt_solver, jaxopt_result),
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--pixels", type=int, nargs="+", default=[5, 11])
    parser.add_argument("--preset", choices=["tight", "gpufit"], default="tight")
    parser.add_argument("--scipy-fits", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--optimistix-float32-tight",
        action="store_true",
        help="also run optimistix at the float32 tolerance 1e-5 (slow: ~1%% of its fits hit max_steps)",
    )
    args = parser.parse_args()

    if len(args.dtypes) > 1:
        for dtype_name in args.dtypes:
            options = ["--sizes", *map(str, args.sizes), "--pixels", *map(str, args.pixels)]
            options += ["--scipy-fits", str(args.scipy_fits), "--repeats", str(args.repeats)]
            options += ["--preset", args.preset, "--dtypes", dtype_name]
            options += ["--optimistix-float32-tight"] if args.optimistix_float32_tight else []
            # Every core an XLA device, for the row that shards over them; the others use one.
            environment = {
                **os.environ,
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={os.cpu_count()}",
            }
            subprocess.run([sys.executable, __file__, *options], check=True, env=environment)
        return
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in VERSIONED)
    devices = f"{jax.devices()[0].device_kind} ({len(jax.devices())} devices)"
    machine = f"{devices}, {os.cpu_count()} cores, {platform.machine()}"
    print(f"{versions}; {machine}")
    print(f"preset {args.preset}, max_steps {MAX_STEPS[args.preset]}")
    print(
        "| dtype | pixels | N | solver | fits/s | compile s | converged | median Δ/σ vs scipy "
        "| max Δ/σ vs scipy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    (dtype_name,) = args.dtypes
    dtype = jnp.dtype(dtype_name)
    reference_tol = 1e-10 if dtype == jnp.float64 else 1e-5
    tol = reference_tol if args.preset == "tight" else 1e-4
    max_steps = MAX_STEPS[args.preset]
    for pixels in args.pixels:
        for num_fits in args.sizes:
            data, _, start = make_spots(jax.random.key(0), num_fits, pixels, dtype)
            k = min(args.scipy_fits, num_fits)
            begin = time.perf_counter()
            reference, sigma, reference_ok = scipy_fits(
                np.asarray(start[:k], np.float64), np.asarray(data[:k], np.float64), reference_tol
            )
            scipy_rate = k / (time.perf_counter() - begin)
            print(
                f"| {dtype_name} | {pixels}×{pixels} | {num_fits} | scipy lm (loop, {k} fits, "
                f"tol {reference_tol:g}) | {scipy_rate:,.0f} | – | {reference_ok.mean():.4f} | – | – |"
            )
            runs = [(name, make, result, tol) for name, (make, result) in SOLVERS.items()]
            if dtype == jnp.float32 and args.preset == "tight" and not args.optimistix_float32_tight:
                # At 1e-5 about 1% of its fits run to max_steps and the batch takes minutes.
                runs[3] = ("optimistix (tol×10)", optimistix_solver, optimistix_result, 10 * tol)
            elif dtype == jnp.float32 and args.preset == "tight":
                runs.insert(4, ("optimistix (tol×10)", optimistix_solver, optimistix_result, 10 * tol))
            for name, make, result, solver_tol in runs:
                if result is jaxopt_result:
                    result = functools.partial(jaxopt_result, max_steps=max_steps)
                params, converged, seconds, compile_seconds = time_solver(
                    make, result, solver_tol, args.preset, start, data, args.repeats
                )
                # With 10 iterations at most, a fit stopped at the limit has a usable answer too.
                both = reference_ok & np.all(np.isfinite(params[:k]), axis=1)
                deviation = np.max(np.abs(params[:k] - reference) / sigma, axis=1)[both]
                rate = num_fits / seconds
                print(
                    f"| {dtype_name} | {pixels}×{pixels} | {num_fits} | {name} | {rate:,.0f} | "
                    f"{compile_seconds:.1f} | {converged.mean():.4f} | {np.median(deviation):.1e} | "
                    f"{deviation.max():.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
