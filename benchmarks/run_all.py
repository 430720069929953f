"""Run every benchmark of benchmarks/README.md, in the page's order, with the arguments its
tables were measured with, and keep each one's output in benchmarks/results/<name>.txt.

    pip install ".[benchmark]"
    python benchmarks/run_all.py                 # all of them: about 1½ hours on a 2-core CPU
    python benchmarks/run_all.py --list          # the commands, without running them
    python benchmarks/run_all.py --only nist mgh # some of them, by name

`scipy_suites` and the NLSQ columns of `curve_fit_single` also need NLSQ (see the page). A
benchmark that fails is reported and the others still run; the exit status says whether any
failed.
"""

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

# (name, arguments of the script, extra environment)
BENCHMARKS = [
    ("gaussian_batch", ["gaussian_batch.py"], {}),
    ("where_time_goes", ["where_time_goes.py"], {}),
    ("nist", ["nist.py"], {}),
    ("mgh", ["mgh.py"], {}),
    ("default_speed_float32", ["default_speed.py", "--dtype", "float32"], {}),
    ("default_speed_float64", ["default_speed.py", "--dtype", "float64"], {}),
    ("implicit_gradient_float32", ["implicit_gradient.py"], {}),
    ("implicit_gradient_float64", ["implicit_gradient.py", "--dtype", "float64"], {}),
    ("solver_family", ["solver_family.py"], {}),
    ("lbfgs_lm", ["lbfgs_lm.py"], {}),
    ("curve_fit_nist_batch", ["curve_fit.py", "--tables", "nist", "batch"], {}),
    ("scipy_suites", ["scipy_suites.py"], {}),
    ("curve_fit_single", ["curve_fit.py", "--tables", "single"], {}),
    ("curve_fit_single_sync", ["curve_fit.py", "--tables", "single", "--sync-dispatch"], {}),
    ("batch_solvers", ["batch_solvers.py"], {}),
    ("latency", ["latency.py"], {}),
    ("stepper", ["stepper.py"], {}),
    ("large_m", ["large_m.py", "--chunk-sizes", "10000", "100000", "--repeats", "3"], {}),
    (
        "large_m_curve_fit",
        ["large_m.py", "--api", "curve_fit", "--chunk-sizes", "10000", "100000", "--repeats", "3"],
        {},
    ),
    ("large_n", ["large_n.py"], {}),
    (
        "large_n_harder",
        ["large_n.py", "--sides", "10", "32", "--blur-centre", "0.2", "--difference-weight", "0.01"],
        {},
    ),
    ("large_n_gradient", ["large_n.py", "--gradient"], {}),
    ("gpufit_settings", ["gaussian_batch.py", "--preset", "gpufit", "--dtypes", "float32"], TWO_DEVICES),
    (
        "stragglers",
        ["stragglers.py", "--repeats", "2", "--solvers", "jaxlm vmap", "jaxlm least_squares_batch"],
        {},
    ),
    # optimistix's vmapped batch of 10⁵ with hard fits alone takes 10–30 minutes; 1024 fits show it.
    (
        "stragglers_optimistix",
        ["stragglers.py", "--repeats", "2", "--sizes", "1024", "--solvers", "optimistix vmap"],
        {},
    ),
    ("large_batch", ["large_batch.py"], {}),
    ("distributed", ["distributed.py"], {}),
    ("poisson_accuracy", ["poisson.py", "--table", "accuracy"], {}),
    ("poisson_speed", ["poisson.py", "--table", "speed", "--repeats", "7"], {}),
    ("poisson_starts", ["poisson.py", "--table", "starts"], {}),
    ("poisson_curvature", ["poisson.py", "--table", "curvature"], {}),
]


def command_line(arguments, environment) -> str:
    prefix = " ".join(f"{key}={value}" for key, value in environment.items())
    return f"{prefix} python benchmarks/{shlex.join(arguments)}".strip()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these benchmarks only")
    parser.add_argument("--results", default=str(HERE / "results"), help="folder for the outputs")
    args = parser.parse_args()
    names = [name for name, _, _ in BENCHMARKS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; the names are {names}")
    chosen = [entry for entry in BENCHMARKS if not args.only or entry[0] in args.only]
    if args.list:
        for name, arguments, environment in chosen:
            print(f"{name:28s} {command_line(arguments, environment)}")
        return
    results = pathlib.Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, arguments, environment in chosen:
        print(f"== {name}: {command_line(arguments, environment)}", flush=True)
        began = time.perf_counter()
        with open(results / f"{name}.txt", "w") as output:
            returncode = subprocess.call(
                [sys.executable, str(HERE / arguments[0]), *arguments[1:]],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **environment},
                cwd=HERE.parent,
            )
        outcome = "ok" if returncode == 0 else f"FAILED ({returncode})"
        print(f"   {outcome} in {time.perf_counter() - began:.0f} s", flush=True)
        if returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed} (their outputs are in {results})")
        sys.exit(1)


if __name__ == "__main__":
    main()
