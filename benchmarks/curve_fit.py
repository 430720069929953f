"""`jaxlm.curve_fit` against `scipy.optimize.curve_fit` (and NLSQ): NIST standard deviations, one
call at three sizes, and batch speed.

1. NIST StRD: for each of the 27 problems, fit from start 2 and compare √diag(pcov) with the
   certified standard deviations (matching digits, the worst parameter), for jaxlm and scipy.
2. A batch of `--num-datasets` exponential decays y = a·e^(−bx) + c (40 points, σ = 0.05,
   random a, b, c), float64: one batched `curve_fit` call (best of three) against a loop of scipy calls (timed
   on the first `--scipy-datasets`), and the largest difference to scipy in units of the
   standard error; and the largest relative difference between the batched fit and single
   jaxlm fits of the first 1000 datasets, with the rate of those single fits called one by one
   from Python (after the first call compiled), each result converted to a NumPy array before
   the next call, as a scipy loop gets it.

3. One call: y = a·e^(−bx) + c with 100, 10⁴ and 10⁶ points (σ = 0.05, float64), fitted from
   (1, 1, 0) by `scipy.optimize.curve_fit`, `jaxlm.curve_fit` (called from Python, as a scipy
   user calls it, plain and with `residual_chunk_size`), and NLSQ (`nlsq.curve_fit`, and a
   `nlsq.CurveFit` object reused for every call) when it is installed, and `jaxlm.curve_fit`
   inside the caller's `jax.jit` with the data already on the device: the best and the median
   of at least `--repeats` calls (more, up to 500, while they take under a second) after
   five (the first compiles), each result converted to NumPy, and
   the largest difference of popt to scipy's in units of scipy's standard errors.

    python benchmarks/curve_fit.py                    # all three tables
    python benchmarks/curve_fit.py --tables single    # only the one-call table
    python benchmarks/curve_fit.py --tables single --sync-dispatch   # JAX's CPU work in the calling thread

NLSQ 0.7.6 declares Python >= 3.12 but runs on 3.11: `pip install --no-deps
--ignore-requires-python nlsq==0.7.6 && pip install psutil h5py xxhash pyyaml evosax optimistix`.
"""

import argparse
import logging
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from nist import MODELS, NAMES, load, matching_digits  # noqa: E402

import jaxlm  # noqa: E402


def nist_table():
    print("| problem | jaxlm std digits | scipy std digits |")
    print("|---|---|---|")
    worst = {"jaxlm": 99.0, "scipy": 99.0}
    for name in NAMES:
        problem = load(name)
        y = np.log(problem.y) if name == "Nelson" else problem.y

        def model(x, *b, name=name):
            return MODELS[name](jnp.stack(b), x)

        _, pcov = jaxlm.curve_fit(model, problem.x, y, p0=problem.starts[1], max_steps=5000)
        ours = matching_digits(np.sqrt(np.diag(pcov)), problem.certified_std).min()
        try:
            _, scipy_pcov = scipy.optimize.curve_fit(
                lambda x, *b: np.asarray(model(x, *b)), problem.x, y, p0=problem.starts[1], maxfev=100000
            )
            theirs = matching_digits(np.sqrt(np.diag(scipy_pcov)), problem.certified_std).min()
        except RuntimeError:
            theirs = float("nan")
        worst["jaxlm"] = min(worst["jaxlm"], ours)
        worst["scipy"] = np.nanmin([worst["scipy"], theirs])
        print(f"| {name} | {ours:.2f} | {theirs:.2f} |", flush=True)
    print(f"| worst | {worst['jaxlm']:.2f} | {worst['scipy']:.2f} |")


def decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def batch_table(num_datasets, scipy_datasets, loop_datasets=1000):
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 4.0, 40)
    truth = np.stack(
        [
            rng.uniform(1, 5, num_datasets),
            rng.uniform(0.5, 2, num_datasets),
            rng.uniform(-1, 1, num_datasets),
        ],
        1,
    )
    ys = (
        truth[:, :1] * np.exp(-truth[:, 1:2] * x)
        + truth[:, 2:]
        + 0.05 * rng.standard_normal((num_datasets, x.size))
    )
    p0 = np.array([1.0, 1.0, 0.0])

    fit = jax.jit(lambda ys: jaxlm.curve_fit(decay, x, ys, p0=p0, full_output=True))
    jax.block_until_ready(fit(ys))  # compile
    ours = float("inf")
    for _ in range(3):  # the best of three calls
        start = time.perf_counter()
        popt, pcov, info, _, _ = jax.block_until_ready(fit(ys))
        ours = min(ours, time.perf_counter() - start)

    start = time.perf_counter()
    reference = [
        scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, x, ys[i], p0=p0)
        for i in range(scipy_datasets)
    ]
    theirs = (time.perf_counter() - start) / scipy_datasets
    scipy_popt = np.stack([r[0] for r in reference])
    standard_errors = np.sqrt(np.diagonal(np.asarray(pcov[:scipy_datasets]), axis1=1, axis2=2))
    difference = np.max(np.abs(np.asarray(popt[:scipy_datasets]) - scipy_popt) / standard_errors)
    converged = float(np.mean(np.asarray(info["success"])))
    jax.block_until_ready(jaxlm.curve_fit(decay, x, ys[0], p0=p0))  # compile the single fit
    start = time.perf_counter()
    # Each result as a NumPy array before the next call, as scipy returns it (so no call overlaps the next).
    singles = np.stack([np.asarray(jaxlm.curve_fit(decay, x, ys[i], p0=p0)[0]) for i in range(loop_datasets)])
    ours_loop = (time.perf_counter() - start) / loop_datasets
    batch_against_loop = np.max(np.abs(np.asarray(popt[:loop_datasets]) - singles) / np.abs(singles))
    print(
        "| datasets | jaxlm batched fits/s | scipy loop fits/s | speed-up | jaxlm loop fits/s "
        "| max |Δ| to scipy (σ) | batch vs single fits (relative) | converged |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {num_datasets} | {num_datasets / ours:,.0f} | {1 / theirs:,.0f} "
        f"| {theirs * num_datasets / ours:.0f}× | {1 / ours_loop:,.0f} "
        f"| {difference:.1e} | {batch_against_loop:.1e} | {converged:.2%} |"
    )


def _timed(call, repeats, warmup=5, budget=1.0, most=500):
    """(best, median) seconds of at least `repeats` calls after `warmup` calls (the first
    compiles), more while they take less than `budget` seconds in all (at most `most`), and the
    last result."""
    for _ in range(warmup):
        result = call()
    times = []
    while len(times) < repeats or (sum(times) < budget and len(times) < most):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times)), result


def single_call_table(sizes, repeats, chunk_size=100_000):
    try:
        import nlsq

        logging.getLogger("nlsq").setLevel(logging.ERROR)  # it logs every iteration otherwise
    except ImportError:
        nlsq = None
        print("(NLSQ is not installed: its rows are left out)")
    p0 = np.array([1.0, 1.0, 0.0])

    def numpy_decay(x, a, b, c):
        return a * np.exp(-b * x) + c

    print("| points | library | best ms | median ms | max |Δpopt| to scipy (σ) |")
    print("|---|---|---|---|---|")
    for size in sizes:
        rng = np.random.default_rng(1)
        x = np.linspace(0.0, 4.0, size)
        y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(size)
        best, median, (reference, reference_pcov) = _timed(
            lambda x=x, y=y: scipy.optimize.curve_fit(numpy_decay, x, y, p0=p0), repeats
        )
        rows = [("scipy `curve_fit`", best, median, reference)]

        def as_numpy(popt_pcov):
            return tuple(np.asarray(a) for a in popt_pcov)

        calls = {"jaxlm `curve_fit`": lambda x=x, y=y: as_numpy(jaxlm.curve_fit(decay, x, y, p0=p0))}
        compiled = jax.jit(lambda x, y: jaxlm.curve_fit(decay, x, y, p0=p0))
        x_device, y_device = jnp.asarray(x), jnp.asarray(y)
        calls["jaxlm `curve_fit` in the caller's `jax.jit`, data on the device"] = (
            lambda c=compiled, x=x_device, y=y_device: as_numpy(c(x, y))
        )
        chunk = min(chunk_size, size)
        if size > chunk_size // 10:
            calls[f"jaxlm `curve_fit(residual_chunk_size={chunk:.0e})`"] = lambda x=x, y=y, chunk=chunk: (
                as_numpy(jaxlm.curve_fit(decay, x, y, p0=p0, residual_chunk_size=chunk))
            )
        if nlsq is not None:
            fitter = nlsq.CurveFit()
            calls["NLSQ `curve_fit`"] = lambda x=x, y=y: as_numpy(tuple(nlsq.curve_fit(decay, x, y, p0=p0)))
            calls["NLSQ `CurveFit` (reused)"] = lambda x=x, y=y, fitter=fitter: as_numpy(
                tuple(fitter.curve_fit(decay, x, y, p0=p0))
            )
        for name, call in calls.items():
            best, median, (popt, _) = _timed(call, repeats)
            rows.append((name, best, median, popt))
        standard_errors = np.sqrt(np.diag(reference_pcov))
        for name, best, median, popt in rows:
            difference = np.max(np.abs(popt - reference) / standard_errors)
            print(
                f"| {size:,} | {name} | {1e3 * best:.3g} | {1e3 * median:.3g} | {difference:.1e} |",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tables", nargs="+", choices=["nist", "single", "batch"], default=["nist", "single", "batch"]
    )
    parser.add_argument("--num-datasets", type=int, default=10_000)
    parser.add_argument("--scipy-datasets", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--sync-dispatch",
        action="store_true",
        help="run JAX's CPU computations in the calling thread (jax_cpu_enable_async_dispatch=False)",
    )
    args = parser.parse_args()
    if args.sync_dispatch:  # before the first computation, which creates the CPU client
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    if "nist" in args.tables:
        nist_table()
        print()
    if "single" in args.tables:
        single_call_table(args.sizes, args.repeats)
        print()
    if "batch" in args.tables:
        batch_table(args.num_datasets, args.scipy_datasets)


if __name__ == "__main__":
    main()
