"""The 27 NIST StRD nonlinear regression problems, read from `tests/data/nist_strd/` (NIST's
files, public domain, copied into the repository so that a clone runs its tests).

Data, starting points and certified values come from the files themselves; the models below are
the formulas printed in each file, written in jax.numpy (`Nelson` fits log y).
"""

import os
import pathlib
import re
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

DATA_DIR = pathlib.Path(
    os.environ.get("JAXLM_NIST_DIR", pathlib.Path(__file__).resolve().parent / "data" / "nist_strd")
)


def _rational3(b, x):
    return (b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3) / (1 + b[4] * x + b[5] * x**2 + b[6] * x**3)


def _gauss(b, x):
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
        + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2)
    )


def _lanczos(b, x):
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def _enso(b, x):
    two_pi = 2 * jnp.pi
    return (
        b[0]
        + b[1] * jnp.cos(two_pi * x / 12)
        + b[2] * jnp.sin(two_pi * x / 12)
        + b[4] * jnp.cos(two_pi * x / b[3])
        + b[5] * jnp.sin(two_pi * x / b[3])
        + b[7] * jnp.cos(two_pi * x / b[6])
        + b[8] * jnp.sin(two_pi * x / b[6])
    )


MODELS = {
    "Bennett5": lambda b, x: b[0] * (b[1] + x) ** (-1 / b[2]),
    "BoxBOD": lambda b, x: b[0] * (1 - jnp.exp(-b[1] * x)),
    "Chwirut1": lambda b, x: jnp.exp(-b[0] * x) / (b[1] + b[2] * x),
    "Chwirut2": lambda b, x: jnp.exp(-b[0] * x) / (b[1] + b[2] * x),
    "DanWood": lambda b, x: b[0] * x ** b[1],
    "ENSO": _enso,
    "Eckerle4": lambda b, x: (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "Gauss3": _gauss,
    "Hahn1": _rational3,
    "Kirby2": lambda b, x: (b[0] + b[1] * x + b[2] * x**2) / (1 + b[3] * x + b[4] * x**2),
    "Lanczos1": _lanczos,
    "Lanczos2": _lanczos,
    "Lanczos3": _lanczos,
    "MGH09": lambda b, x: b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3]),
    "MGH10": lambda b, x: b[0] * jnp.exp(b[1] / (x + b[2])),
    "MGH17": lambda b, x: b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4]),
    "Misra1a": lambda b, x: b[0] * (1 - jnp.exp(-b[1] * x)),
    "Misra1b": lambda b, x: b[0] * (1 - (1 + b[1] * x / 2) ** (-2)),
    "Misra1c": lambda b, x: b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5)),
    "Misra1d": lambda b, x: b[0] * b[1] * x * ((1 + b[1] * x) ** (-1)),
    "Nelson": lambda b, x: b[0] - b[1] * x[:, 0] * jnp.exp(-b[2] * x[:, 1]),
    "Rat42": lambda b, x: b[0] / (1 + jnp.exp(b[1] - b[2] * x)),
    "Rat43": lambda b, x: b[0] / ((1 + jnp.exp(b[1] - b[2] * x)) ** (1 / b[3])),
    "Roszman1": lambda b, x: b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / jnp.pi,
    "Thurber": _rational3,
}


@dataclass(frozen=True)
class NistProblem:
    name: str
    x: np.ndarray
    y: np.ndarray
    starts: tuple[np.ndarray, np.ndarray]
    certified: np.ndarray
    certified_std: np.ndarray
    certified_rss: float

    def residual(self, b, x, y):
        """Residuals of this problem's model; x and y are passed as arguments."""
        prediction = MODELS[self.name](b, x)
        return (prediction - jnp.log(y)) if self.name == "Nelson" else (prediction - y)


def _line_range(text: str, label: str) -> tuple[int, int]:
    match = re.search(label + r"\s*\(lines\s+(\d+)\s+to\s+(\d+)\)", text)
    return int(match.group(1)), int(match.group(2))


def load(name: str) -> NistProblem:
    text = (DATA_DIR / f"{name}.dat").read_text()
    lines = text.splitlines()
    first, last = _line_range(text, "Starting Values")
    table = np.array([[float(v) for v in lines[i - 1].split("=")[1].split()] for i in range(first, last + 1)])
    data_first, data_last = _line_range(text, "Data")
    data = np.array([[float(v) for v in lines[i - 1].split()] for i in range(data_first, data_last + 1)])
    rss = float(re.search(r"Residual Sum of Squares:\s+(\S+)", text).group(1))
    x = data[:, 1:] if data.shape[1] > 2 else data[:, 1]
    return NistProblem(
        name=name,
        x=x,
        y=data[:, 0],
        starts=(table[:, 0], table[:, 1]),
        certified=table[:, 2],
        certified_std=table[:, 3],
        certified_rss=rss,
    )


NAMES = tuple(sorted(MODELS))


def matching_digits(estimate, certified) -> np.ndarray:
    """The log relative error −log10(|estimate − certified| / |certified|), capped at 15 digits."""
    estimate, certified = np.asarray(estimate, np.float64), np.asarray(certified, np.float64)
    relative = np.abs(estimate - certified) / np.abs(certified)
    return np.minimum(-np.log10(np.maximum(relative, 1e-15)), 15.0)
