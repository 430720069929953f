"""ruff lint and format, as configured in pyproject.toml."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff") or shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent))


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (pip install '.[test]')")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    result = subprocess.run([RUFF, *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
