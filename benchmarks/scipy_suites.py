"""scipy's own tests of `curve_fit` and `least_squares`, run against jaxlm, scipy itself and NLSQ.

The harness is the test suite's (`tests/scipy_suite.py`): each test module of the installed scipy
is executed afresh with `curve_fit` / `least_squares` rebound to the implementation under test
and `np` rebound to jax.numpy inside the models while JAX traces them (NumPy elsewhere). Prints
how many of `test_minpack.py::TestCurveFit` and `test_least_squares.py` pass for each.

    python benchmarks/scipy_suites.py                  # jaxlm, scipy, NLSQ (if installed)
    python benchmarks/scipy_suites.py --implementations jaxlm scipy
"""

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"

HEADER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import jax
jax.config.update("jax_enable_x64", True)
import scipy.optimize
import scipy_suite
"""
CURVE_FIT = {
    "jaxlm": "import jaxlm\ncurve_fit = jaxlm.curve_fit\n",
    "scipy": "curve_fit = scipy.optimize.curve_fit\n",
    "nlsq": "import nlsq\ncurve_fit = nlsq.curve_fit\n",
}
LEAST_SQUARES = {
    "jaxlm": "import jaxlm.scipy\nleast_squares = jaxlm.scipy.least_squares\n",
    "scipy": "least_squares = scipy.optimize.least_squares\n",
}
CURVE_FIT_TESTS = """
minpack = scipy_suite.load(
    "test_minpack", {"curve_fit": curve_fit, "optimize": scipy_suite.optimize_namespace(curve_fit=curve_fit)}
)
TestCurveFit = minpack.TestCurveFit
"""
LEAST_SQUARES_TESTS = """
module = scipy_suite.load("test_least_squares", {"least_squares": least_squares})
globals().update({name: getattr(module, name) for name in dir(module) if name.startswith(("test_", "Test"))})
"""


def run(source: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "test_suite.py"
        path.write_text(source)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(path)],
            capture_output=True,
            text=True,
            cwd=folder,
        )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    passed = re.search(r"(\d+) passed", summary)
    total = sum(int(n) for n in re.findall(r"(\d+) (?:passed|failed|error|errors)", summary))
    return f"{int(passed.group(1)) if passed else 0}/{total}"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--implementations", nargs="+", default=["jaxlm", "scipy", "nlsq"])
    args = parser.parse_args()
    print("| implementation | TestCurveFit | test_least_squares.py |")
    print("|---|---|---|")
    for name in args.implementations:
        if name == "nlsq":
            try:
                import nlsq  # noqa: F401
            except ImportError:
                print("| NLSQ | not installed | |")
                continue
        curve_fit = run(HEADER + CURVE_FIT[name] + CURVE_FIT_TESTS)
        least_squares = "no least_squares"
        if name in LEAST_SQUARES:
            least_squares = run(HEADER + LEAST_SQUARES[name] + LEAST_SQUARES_TESTS)
        print(f"| {name} | {curve_fit} | {least_squares} |", flush=True)


if __name__ == "__main__":
    main()
