"""Photon counts: localising single-molecule spots with the Poisson MLE and with least squares,
against the Cramér–Rao lower bound.

A stack of simulated 2-D Gaussian spots on 9×9 pixels (width 1.2 px, the centre within half a
pixel of the middle, N photons in the spot on 10 photons per pixel of background, Poisson
noise), for a range of N. Each stack is localised twice by one batched `jaxlm.curve_fit`, from
starting values taken from the data (`jaxlm.models.gaussian_2d_initial_guess`): with
`estimator="poisson"` (Gpufit's MLE) and with least squares. For x₀ we compare the spread of
x̂₀ − x₀ with the CRLB (the inverse Fisher information of each spot at its truth), and the
MLE's pcov with that spread, and plot the precision against N.

    python examples/photon_counts.py [output folder]      # JAXLM_NOTEBOOK_SIZE=small for a quick run
"""

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxlm
from jaxlm.models import gaussian_2d, gaussian_2d_initial_guess, pixel_grid

jax.config.update("jax_enable_x64", True)

PIXELS, WIDTH, BACKGROUND = 9, 1.2, 10.0
SPOTS = {"full": 2000, "small": 300}
PHOTONS = {"full": [200, 500, 1000, 3000, 10000], "small": [300, 3000]}
XY = pixel_grid(PIXELS)


def simulate(rng, num_spots, photons):
    """(truth (num_spots, 5), counts (num_spots, 9, 9)) of spots with `photons` photons each."""
    centre = (PIXELS - 1) / 2 + rng.uniform(-0.5, 0.5, (num_spots, 2))
    amplitude = photons / (2 * np.pi * WIDTH**2)
    truth = np.column_stack(
        [np.full(num_spots, amplitude), centre, np.full(num_spots, WIDTH), np.full(num_spots, BACKGROUND)]
    )
    expected = np.asarray(jax.vmap(lambda p: gaussian_2d(XY, *p))(jnp.asarray(truth)))
    return truth, rng.poisson(expected).astype(float)


@jax.jit
def cramer_rao_x0(truth):
    """The CRLB of x₀ for each spot: √[(Σ (1/fᵢ)∇fᵢ∇fᵢᵀ)⁻¹]₁₁ at its true parameters."""

    def one(p):
        jacobian = jax.jacfwd(lambda q: gaussian_2d(XY, *q).ravel())(p)
        fisher = jacobian.T @ (jacobian / gaussian_2d(XY, *p).ravel()[:, None])
        return jnp.sqrt(jnp.linalg.inv(fisher)[1, 1])

    return jax.vmap(one)(truth)


def localise(counts, estimator):
    """x̂₀, its standard error and the success of each spot, from starts taken from the data."""
    start = gaussian_2d_initial_guess(counts)
    popt, pcov, info, _, _ = jaxlm.curve_fit(
        gaussian_2d, XY, counts, p0=start, estimator=estimator, full_output=True
    )
    return np.asarray(popt)[:, 1], np.sqrt(np.asarray(pcov)[:, 1, 1]), np.asarray(info["success"])


def main(size=None, out_dir=None):
    size = size or os.environ.get("JAXLM_NOTEBOOK_SIZE", "full")
    rng = np.random.default_rng(0)
    rows = []
    print(f"{SPOTS[size]} spots per row, {PIXELS}×{PIXELS} pixels, background {BACKGROUND:g} photons/pixel")
    print(f"{'photons':>8} {'CRLB x0 (px)':>13} {'MLE sd/CRLB':>12} {'LS sd/CRLB':>11} {'MLE pcov/sd':>12}")
    for photons in PHOTONS[size]:
        truth, counts = simulate(rng, SPOTS[size], photons)
        crlb = float(np.sqrt(np.mean(np.asarray(cramer_rao_x0(jnp.asarray(truth))) ** 2)))
        row = {"photons": photons, "crlb": crlb}
        for estimator, name in (("poisson", "mle"), ("least_squares", "ls")):
            x0, stderr, success = localise(counts, estimator)
            spread = float(np.std(x0[success] - truth[success, 1]))
            row[name] = spread / crlb
            row[f"{name}_converged"] = float(np.mean(success))
            if estimator == "poisson":
                row["pcov_over_spread"] = float(np.median(stderr[success])) / spread
        rows.append(row)
        mle, ls, pcov = row["mle"], row["ls"], row["pcov_over_spread"]
        print(f"{photons:>8} {crlb:>13.4f} {mle:>12.3f} {ls:>11.3f} {pcov:>12.3f}")

    figure = plot(rows)
    if out_dir is not None:
        figure.savefig(pathlib.Path(out_dir) / "photon_counts.png", dpi=100)
    return {"rows": rows}


def plot(rows):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    photons = np.array([row["photons"] for row in rows])
    crlb = np.array([row["crlb"] for row in rows])
    axes.loglog(photons, crlb, "k-", label="Cramér–Rao lower bound")
    axes.loglog(photons, crlb * np.array([row["mle"] for row in rows]), "o", label="Poisson MLE")
    axes.loglog(photons, crlb * np.array([row["ls"] for row in rows]), "s", label="least squares")
    axes.set(xlabel="photons in the spot", ylabel="precision of x₀ (px)", title="Localisation precision")
    axes.legend()
    return figure


if __name__ == "__main__":
    main(out_dir=sys.argv[1] if len(sys.argv) > 1 else ".")
