"""Batched 2-D Gaussian spot fits (the Gpufit benchmark) with jaxlm, optimistix, jaxopt and scipy.

Data as in Gpufit's CPU/GPU comparison example (see `jaxlm.demo`): 5 parameters, 5×5 pixels,
truth (500, c, c, 1, 10)·U[0.9, 1.1], noise σ = 17.05, start = truth·U[0.9, 1.1].

Every solver gets the same relative tolerance (1e-10 in float64, 1e-5 in float32) on its own
stopping tests, as close to each other as their APIs allow:
- jaxlm: `LevenbergMarquardt(ftol=tol, xtol=tol)`, gtol 0 (its default);
- optimistix: `LevenbergMarquardt(rtol=tol, atol=tol)` (its QR linear solver, the default);
- jaxopt: `LevenbergMarquardt(stop_criterion="madsen-nielsen", xtol=tol, gtol=0, solver="cholesky",
  materialize_jac=True)`
  (its default CG solver and absolute gradient-norm test are slower and scale-dependent);
- scipy: `least_squares(method="lm", ftol=tol, xtol=tol, gtol=tol)` with an analytic Jacobian,
  one fit at a time in a Python loop, on the first `--scipy-fits` fits.
In float32, optimistix at 1e-5 leaves about 1% of the fits running to max_steps, so it is also
run at a 10× looser tolerance (row "optimistix (tol×10)") to compare with it at its best.

Reported: fits/s after compilation (best of `--repeats` runs), compile time (first call minus a
steady run), fraction converged (each library's own success flag), and agreement with scipy on
the fits scipy solved: |p − p_scipy| / σ_p, σ_p the standard error from scipy's Jacobian.

    python benchmarks/gaussian_batch.py                 # N = 1e4 and 1e5, float32 and float64
    python benchmarks/gaussian_batch.py --sizes 10000   # quicker
"""

import argparse
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

MAX_STEPS = 1000
VERSIONED = ("jax", "jaxlm", "optimistix", "jaxopt", "scipy")


def optimistix_residual(params, data):
    return gaussian_2d_residual(params, data)


def jaxlm_solver(tol):
    solver = jaxlm.LevenbergMarquardt(ftol=tol, xtol=tol)
    return jax.jit(
        jax.vmap(
            lambda p, d: jaxlm.least_squares(
                gaussian_2d_residual, p, (d,), solver=solver, max_steps=MAX_STEPS
            )
        )
    )


def jaxlm_result(solution):
    return solution.params, solution.success


def optimistix_solver(tol):
    solver = optx.LevenbergMarquardt(rtol=tol, atol=tol)

    def solve(p, d):
        # Its Solution holds the solver state (with jaxprs), which cannot leave vmap; keep the answer.
        solution = optx.least_squares(
            optimistix_residual, solver, p, args=d, max_steps=MAX_STEPS, throw=False
        )
        return solution.value, solution.result == optx.RESULTS.successful

    return jax.jit(jax.vmap(solve))


def optimistix_result(output):
    return output


def flat_residual(params, data):
    return gaussian_2d_residual(params, data).ravel()  # jaxopt's materialised Jacobian needs 1-D


def jaxopt_solver(tol):
    solver = jaxopt.LevenbergMarquardt(
        residual_fun=flat_residual,
        maxiter=MAX_STEPS,
        stop_criterion="madsen-nielsen",
        xtol=tol,
        gtol=0.0,
        solver="cholesky",
        materialize_jac=True,
    )
    return jax.jit(jax.vmap(solver.run))


def jaxopt_result(output):
    params, state = output
    converged = (state.iter_num < MAX_STEPS) & jnp.all(jnp.isfinite(params), axis=-1)
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
            max_nfev=MAX_STEPS,
        )
        dof = flat.size - 5
        covariance = np.linalg.pinv(result.jac.T @ result.jac) * (2 * result.cost / dof)
        params.append(result.x)
        errors.append(np.sqrt(np.abs(np.diag(covariance))))
        converged.append(result.status > 0)
    return np.array(params), np.array(errors), np.array(converged)


def time_solver(make, result, tol, start, data, repeats):
    solve = make(tol)
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
    "jaxlm": (jaxlm_solver, jaxlm_result),
    "optimistix": (optimistix_solver, optimistix_result),
    "jaxopt": (jaxopt_solver, jaxopt_result),
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--pixels", type=int, default=5)
    parser.add_argument("--scipy-fits", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if len(args.dtypes) > 1:
        for dtype_name in args.dtypes:
            options = ["--sizes", *map(str, args.sizes), "--pixels", str(args.pixels)]
            options += ["--scipy-fits", str(args.scipy_fits), "--repeats", str(args.repeats)]
            subprocess.run([sys.executable, __file__, *options, "--dtypes", dtype_name], check=True)
        return
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in VERSIONED)
    machine = f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, {platform.machine()}"
    print(f"{versions}; {machine}")
    print(f"{args.pixels}x{args.pixels} pixels, max_steps {MAX_STEPS}")
    print("| dtype | N | solver | fits/s | compile s | converged | median Δ/σ vs scipy | max Δ/σ vs scipy |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes:
        dtype = jnp.dtype(dtype_name)
        tol = 1e-10 if dtype == jnp.float64 else 1e-5
        for num_fits in args.sizes:
            data, _, start = make_spots(jax.random.key(0), num_fits, args.pixels, dtype)
            k = min(args.scipy_fits, num_fits)
            begin = time.perf_counter()
            reference, sigma, reference_ok = scipy_fits(
                np.asarray(start[:k], np.float64), np.asarray(data[:k], np.float64), tol
            )
            scipy_rate = k / (time.perf_counter() - begin)
            print(
                f"| {dtype_name} | {num_fits} | scipy lm (loop, {k} fits) | {scipy_rate:,.0f} | – | "
                f"{reference_ok.mean():.4f} | – | – |"
            )
            runs = [(name, make, result, tol) for name, (make, result) in SOLVERS.items()]
            if dtype == jnp.float32:
                runs.insert(2, ("optimistix (tol×10)", optimistix_solver, optimistix_result, 10 * tol))
            for name, make, result, solver_tol in runs:
                params, converged, seconds, compile_seconds = time_solver(
                    make, result, solver_tol, start, data, args.repeats
                )
                both = reference_ok & converged[:k]
                deviation = np.max(np.abs(params[:k] - reference) / sigma, axis=1)[both]
                rate = num_fits / seconds
                print(
                    f"| {dtype_name} | {num_fits} | {name} | {rate:,.0f} | {compile_seconds:.1f} | "
                    f"{converged.mean():.4f} | {np.median(deviation):.1e} | {deviation.max():.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
