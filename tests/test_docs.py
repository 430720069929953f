"""The documentation: the site builds with `mkdocs build --strict` (a broken link or reference
fails it), the Python examples of the README and of the pages run, and the examples in the
docstrings pass as doctests."""

import doctest
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

import jaxlm

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The modules whose docstrings have examples (`>>>`).
DOCTEST_MODULES = [
    "jaxlm._fit_result",
    "jaxlm._solver._levenberg_marquardt",
    "jaxlm._solver._matrix_free_lm",
    "jaxlm._stepwise",
    "jaxlm.scipy",
]


def nav_pages() -> list[pathlib.Path]:
    """The pages of mkdocs.yml's nav, in its order."""
    config = (ROOT / "mkdocs.yml").read_text()
    return [ROOT / "docs" / name for name in re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", config, flags=re.M)]


def test_the_site_builds_with_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("least_squares_batch", "curve_fit", "LevenbergMarquardt", "poisson_residual"):
        assert name in api
    statuses = (site / "status" / "index.html").read_text()
    assert all(status.name in statuses for status in jaxlm.Status)
    assert "Algorithm 3.16" in (site / "solvers" / "index.html").read_text()  # the module docstrings


def test_every_page_is_in_the_nav_and_every_nav_page_exists():
    pages = nav_pages()
    assert all(page.exists() for page in pages)
    assert sorted(pages) == sorted((ROOT / "docs").glob("*.md"))


def test_the_examples_of_the_readme_and_the_pages_run():
    namespace = {}  # later blocks continue earlier ones, as a reader would run them
    ran = 0
    for path in [ROOT / "README.md", *nav_pages()]:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL):
            exec(compile(block, str(path), "exec"), namespace)
            ran += 1
    assert ran >= 6
    assert namespace["sensitivity"].shape == namespace["y"].shape


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_the_docstring_examples(module):
    result = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0


def test_every_module_with_examples_is_doctested():
    with_examples = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "jaxlm").rglob("*.py")
        if ">>>" in path.read_text()
    }
    assert with_examples == set(DOCTEST_MODULES)


def section(text: str, heading: str) -> str:
    """The text of a `## heading` section, up to the next `## `."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


RATE = r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d.])"  # 12,345 or 1,234,567


def test_the_readme_quotes_the_benchmark_page():
    """The README's figures are the benchmark page's: its counts and decimals verbatim, the
    rates of its table as the page's, rounded."""
    quoted = section((ROOT / "README.md").read_text(), "Accuracy and speed")
    page = (ROOT / "benchmarks" / "README.md").read_text()
    for figure in re.findall(r"(?<![\w.,/])\d+/\d+(?![\w/])|(?<![\w.,])\d+\.\d+(?![\w.])", quoted):
        assert figure in page, f"the README quotes {figure}, which benchmarks/README.md does not have"
    speed = section(page, "Batched 2-D Gaussian fits (the Gpufit benchmark)")
    page_rates = [float(rate.replace(",", "")) for rate in re.findall(RATE, speed)]
    table = [line for line in quoted.splitlines() if line.startswith("| ") and "fits/s" not in line]
    rates = [float(rate.replace(",", "")) for rate in re.findall(RATE, "\n".join(table))]
    assert rates
    for rate in rates:  # rounded to three significant figures
        assert any(abs(rate - page_rate) <= 0.005 * page_rate for page_rate in page_rates), (
            f"the README's {rate:,.0f} fits/s is not a rate of the Gaussian batch in benchmarks/README.md"
        )
