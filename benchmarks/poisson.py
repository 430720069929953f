"""Photon counts: the Poisson maximum-likelihood estimator (`estimator="poisson"`) against least
squares, for accuracy (against the Cramér–Rao lower bound) and for speed.

Accuracy (float64): 2-D Gaussian spots on 9×9 pixels, width 1.2 px, the centre uniform within
±0.5 px of the middle, N photons in the spot (amplitude N/(2πw²)) on a background of b photons
per pixel, Poisson noise; `--fits` spots per (N, b), fitted by one batched `jaxlm.curve_fit` per
estimator from the truth × uniform[0.9, 1.1]. Reported for x₀: the standard deviation of
x̂₀ − x₀ over the root-mean-square CRLB (the CRLB of each spot computed from its truth: the
inverse Fisher information (Σ (1/fᵢ)∇fᵢ∇fᵢᵀ)⁻¹), the bias over the CRLB, and for the MLE the
median of its pcov's standard error over the observed standard deviation.

Speed (float32): `least_squares_batch` on 10⁵ spots of 5×5 and 11×11 pixels (`jaxlm.demo`'s
spots: amplitude 500, background 10, width 1, each ×uniform[0.9, 1.1], with Poisson noise in
place of Gaussian), least squares and Poisson MLE on the same counts in the same run, with
Gpufit's settings (stop when the relative change of the cost is below 1e-4, at most 10
iterations: `LevenbergMarquardt(ftol=1e-4, xtol=0)`, max_steps 10) and tight ones
(ftol = xtol = 1e-5, max_steps 1000); the best of `--repeats` runs after compiling, the two
estimators in turn.

Starts (float32): the same 10⁵ spots of 5×5 and 11×11 pixels, fitted by the MLE
(`least_squares_batch`, tight settings) from the truth × uniform[0.9, 1.1] and from
`jaxlm.models.gaussian_2d_initial_guess` of the data: the fraction converged, the mean number of
steps, and the median |x̂₀ − x₀|.

Curvature (float32): the three curvatures an LM step on the MLE objective can take, compared
with everything else equal, in one small Levenberg–Marquardt written here (jaxlm's rules:
Nielsen's damping, Marquardt's scaling, ftol = xtol = 1e-5, at most 100 iterations): the
objective F and its gradient Σ(1 − zᵢ/fᵢ)∇fᵢ are the same, the curvature Σ wᵢ∇fᵢ∇fᵢᵀ has
wᵢ = zᵢ/fᵢ² (Gpufit's), 1/fᵢ (the Fisher information) or (1 − zᵢ/fᵢ)²/r̂ᵢ² (Gauss–Newton on the
deviance residuals r̂, what jaxlm's solvers do with `estimator="poisson"`), on 10⁵ 5×5 spots
bright (`jaxlm.demo`'s: 500 photons/amplitude on 10 per pixel) and dim (amplitude 20 on 1 per
pixel, where most pixels count 0 to 3), from three starts: the truth × U[0.9, 1.1],
`gaussian_2d_initial_guess`, and the truth × U[0.7, 1.3]. Reported: the fraction converged,
the mean number of iterations, the fraction that end at the lowest F of the three (within
1e-4 relative), and the fraction whose fitted background is negative (the model then nears 0
at the border pixels, the edge of the likelihood's domain, where every curvature converges
slowly).

    python benchmarks/poisson.py --table accuracy     # ~1 min
    python benchmarks/poisson.py --table speed        # ~2.5 min
    python benchmarks/poisson.py --table starts       # ~1 min
    python benchmarks/poisson.py --table curvature    # ~4 min
"""

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", "accuracy" in sys.argv)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.demo import gaussian_2d  # noqa: E402

WIDTH = 1.2
SIZE = 9


def accuracy_table(num_fits, photons, backgrounds):
    pixels = jaxlm.models.pixel_grid(SIZE)
    spot = jaxlm.models.gaussian_2d
    fisher = jax.jit(
        jax.vmap(
            lambda p: (lambda jac, model: jnp.linalg.inv(jac.T @ (jac / model[:, None])))(
                jax.jacfwd(lambda q: spot(pixels, *q).ravel())(p), spot(pixels, *p).ravel()
            )
        )
    )
    print(f"{num_fits} spots per row, {SIZE}×{SIZE} pixels, width {WIDTH} px, float64")
    print(
        "| photons | background /px | CRLB x₀ (px) | MLE sd/CRLB | LS sd/CRLB | MLE bias/CRLB | "
        "LS bias/CRLB | MLE pcov sd / observed sd | converged MLE, LS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in photons:
        for b in backgrounds:
            centre = (SIZE - 1) / 2 + rng.uniform(-0.5, 0.5, (num_fits, 2))
            amplitude = n / (2 * np.pi * WIDTH**2)
            truth = np.column_stack(
                [np.full(num_fits, amplitude), centre, np.full(num_fits, WIDTH), np.full(num_fits, float(b))]
            )
            mean = np.asarray(jax.vmap(lambda p: spot(pixels, *p))(jnp.asarray(truth)))
            counts = rng.poisson(mean).astype(float)
            start = truth * rng.uniform(0.9, 1.1, truth.shape)
            crlb = np.sqrt(np.asarray(fisher(jnp.asarray(truth)))[:, 1, 1])
            rms_crlb = np.sqrt(np.mean(crlb**2))
            rows = {}
            for estimator in ("poisson", "least_squares"):
                popt, pcov, info, _, _ = jaxlm.curve_fit(
                    spot, pixels, counts, p0=start, estimator=estimator, full_output=True, max_steps=200
                )
                ok = np.asarray(info["success"])
                error = np.asarray(popt)[ok, 1] - truth[ok, 1]
                rows[estimator] = (
                    error.std() / rms_crlb,
                    error.mean() / rms_crlb,
                    np.median(np.sqrt(np.asarray(pcov)[ok, 1, 1])) / error.std(),
                    ok.mean(),
                )
            mle, ls = rows["poisson"], rows["least_squares"]
            print(
                f"| {n} | {b} | {rms_crlb:.4f} | {mle[0]:.3f} | {ls[0]:.3f} | {mle[1]:+.3f} | {ls[1]:+.3f} | "
                f"{mle[2]:.3f} | {mle[3]:.4f}, {ls[3]:.4f} |",
                flush=True,
            )


def demo_spots(num_fits, size):
    """(truth, counts, starts near the truth) of `jaxlm.demo`'s spots with Poisson noise, float32."""
    truth_key, start_key = jax.random.split(jax.random.key(size))
    centre = size / 2 - 0.5
    nominal = jnp.array([500.0, centre, centre, 1.0, 10.0], jnp.float32)
    truth = nominal * jax.random.uniform(truth_key, (num_fits, 5), jnp.float32, 0.9, 1.1)
    mean = np.asarray(jax.vmap(gaussian_2d, (0, None))(truth, size))
    counts = np.random.default_rng(size).poisson(mean).astype(np.float32)
    near = np.asarray(truth * jax.random.uniform(start_key, (num_fits, 5), jnp.float32, 0.9, 1.1))
    return truth, counts, near


def speed_table(num_fits, pixel_sizes, repeats):
    print(f"{num_fits} spots, float32, least_squares_batch, best of {repeats}")
    print("| pixels | settings | estimator | fits/s | MLE / LS | converged | mean steps |")
    print("|---|---|---|---|---|---|---|")
    settings = {
        "Gpufit's": (jaxlm.LevenbergMarquardt(ftol=1e-4, xtol=0.0), 10),
        "tight": (jaxlm.LevenbergMarquardt(ftol=1e-5, xtol=1e-5), 1000),
    }
    for size in pixel_sizes:
        _, counts, start = demo_spots(num_fits, size)

        def least_squares(p, z, size=size):
            return gaussian_2d(p, size) - z

        def poisson(p, z, size=size):
            return gaussian_2d(p, size), z

        for name, (solver, max_steps) in settings.items():
            funs = {"least_squares": least_squares, "poisson": poisson}
            options = {
                estimator: dict(solver=solver, max_steps=max_steps, estimator=estimator, progress=False)
                for estimator in funs
            }
            solutions = {  # the first call compiles
                estimator: jaxlm.least_squares_batch(fun, start, (counts,), **options[estimator])
                for estimator, fun in funs.items()
            }
            best = dict.fromkeys(funs, np.inf)
            for _ in range(repeats):  # the estimators in turn, so that both see the same machine
                for estimator, fun in funs.items():
                    began = time.perf_counter()
                    solution = jaxlm.least_squares_batch(fun, start, (counts,), **options[estimator])
                    solutions[estimator] = solution
                    best[estimator] = min(best[estimator], time.perf_counter() - began)
            for estimator, solution in solutions.items():
                ratio = best["least_squares"] / best["poisson"]
                ratio = "" if estimator == "least_squares" else f"{ratio:.2f}"
                print(
                    f"| {size}×{size} | {name} | {estimator} | {num_fits / best[estimator]:,.0f} | {ratio} | "
                    f"{np.mean(solution.success):.4f} | {np.mean(solution.num_steps):.2f} |",
                    flush=True,
                )


def starts_table(num_fits, pixel_sizes):
    print(f"{num_fits} spots, float32, least_squares_batch (Poisson MLE, ftol = xtol = 1e-5)")
    print("| pixels | start | converged | mean steps | median abs x₀ error (px) |")
    print("|---|---|---|---|---|")
    solver = jaxlm.LevenbergMarquardt(ftol=1e-5, xtol=1e-5)
    for size in pixel_sizes:
        truth, counts, near = demo_spots(num_fits, size)
        starts = {
            "truth × U[0.9, 1.1]": near,
            "`gaussian_2d_initial_guess`": jaxlm.models.gaussian_2d_initial_guess(counts),
        }
        xy = jaxlm.models.pixel_grid(size, np.float32)

        def poisson(p, z, xy=xy):
            return jaxlm.models.gaussian_2d(xy, *p), z

        for name, start in starts.items():
            solution = jaxlm.least_squares_batch(
                poisson, np.asarray(start), (counts,), solver=solver, estimator="poisson", progress=False
            )
            error = np.median(np.abs(solution.params[:, 1] - np.asarray(truth)[:, 1]))
            print(
                f"| {size}×{size} | {name} | {np.mean(solution.success):.5f} | "
                f"{np.mean(solution.num_steps):.2f} | {error:.4f} |",
                flush=True,
            )


def _deviance_slope_squared(f, z, r):
    """(dr̂/df)² = (1 − z/f)²/r̂², and its limit 1/f where r̂ = 0."""
    nonzero = r != 0
    return jnp.where(nonzero, (1 - z / f) ** 2 / jnp.where(nonzero, r, 1) ** 2, 1 / f)


CURVATURES = {
    "Gpufit's z/f²": lambda f, z, r: z / f**2,
    "Fisher 1/f": lambda f, z, r: 1 / f,
    "deviance GN (jaxlm)": lambda f, z, r: _deviance_slope_squared(f, z, r),
}


def poisson_levenberg_marquardt(model, weight, x0, counts, tol=1e-5, max_iterations=100):
    """One fit of the Poisson MLE by Levenberg–Marquardt with the curvature Σ wᵢ∇fᵢ∇fᵢᵀ,
    wᵢ = weight(f, z, r̂): (x, converged, iterations, F)."""

    def objective(x):
        f = model(x)
        r = jaxlm.poisson_residual(f, counts)
        return 0.5 * jnp.sum(r**2), f, r

    def derivatives(x):
        _, f, r = objective(x)
        jac = jax.jacfwd(model)(x)
        w = weight(f, counts, r)
        return jac.T @ (1 - counts / f), (jac * w[:, None]).T @ jac

    def body(state):
        x, cost, grad, curvature, scale, mu, nu, iteration, _ = state
        step = jnp.linalg.solve(curvature + jnp.diag(mu * scale), -grad)
        predicted = 0.5 * jnp.dot(step, mu * scale * step - grad)
        trial_cost = objective(x + step)[0]
        gain = (cost - trial_cost) / predicted
        accepted = gain > 0
        x_new = jnp.where(accepted, x + step, x)
        grad_new, curvature_new = derivatives(x_new)
        converged = (  # MINPACK's tests, as jaxlm's
            (jnp.abs(cost - trial_cost) <= tol * cost) & (predicted <= tol * cost) & (gain <= 2)
        ) | (jnp.linalg.norm(jnp.sqrt(scale) * step) <= tol * (jnp.linalg.norm(jnp.sqrt(scale) * x) + tol))
        return (
            x_new,
            jnp.where(accepted, trial_cost, cost),
            grad_new,
            curvature_new,
            jnp.maximum(scale, jnp.diag(curvature_new)),
            jnp.where(accepted, mu * jnp.maximum(1 / 3, 1 - (2 * gain - 1) ** 3), mu * nu),
            jnp.where(accepted, 2.0, 2 * nu),
            iteration + 1,
            converged,
        )

    grad, curvature = derivatives(x0)
    one = jnp.ones((), x0.dtype)
    state = (x0, objective(x0)[0], grad, curvature, jnp.diag(curvature), 1e-3 * one, 2 * one, 0, False)
    state = jax.lax.while_loop(lambda s: ~s[8] & (s[7] < max_iterations) & jnp.isfinite(s[5]), body, state)
    return state[0], state[8], state[7], state[1]


def curvature_table(num_fits):
    print(f"{num_fits} spots of 5×5 pixels, float32, ftol = xtol = 1e-5, at most 100 iterations")
    print("| spots | start | curvature | converged | mean iterations | at the lowest F | background < 0 |")
    print("|---|---|---|---|---|---|---|")
    size = 5
    xy = jaxlm.models.pixel_grid(size, np.float32)

    def spot_model(params):
        return jaxlm.models.gaussian_2d(xy, *params).ravel()

    model = jax.vmap(spot_model)
    rng = np.random.default_rng(1)
    for spots, scale in (("bright (500 on 10 /px)", 1.0), ("dim (20 on 1 /px)", 0.04)):
        centre = size / 2 - 0.5
        nominal = np.array([500.0 * scale, centre, centre, 1.0, 10.0 * scale], np.float32)
        truth = (nominal * rng.uniform(0.9, 1.1, (num_fits, 5))).astype(np.float32)
        counts = rng.poisson(np.asarray(model(jnp.asarray(truth)))).astype(np.float32)
        starts = {
            "truth × U[0.9, 1.1]": truth * rng.uniform(0.9, 1.1, truth.shape).astype(np.float32),
            "`gaussian_2d_initial_guess`": np.asarray(
                jaxlm.models.gaussian_2d_initial_guess(counts.reshape(-1, size, size))
            ),
            "truth × U[0.7, 1.3]": truth * rng.uniform(0.7, 1.3, truth.shape).astype(np.float32),
        }
        for start_name, start in starts.items():
            results = {}
            for name, weight in CURVATURES.items():
                fit = jax.jit(
                    jax.vmap(
                        lambda x0, z, weight=weight: poisson_levenberg_marquardt(spot_model, weight, x0, z)
                    )
                )
                results[name] = [np.asarray(v) for v in fit(jnp.asarray(start), jnp.asarray(counts))]
            lowest = np.min([np.where(np.isfinite(r[3]), r[3], np.inf) for r in results.values()], axis=0)
            for name, (params, converged, iterations, cost) in results.items():
                at_lowest = np.mean(cost <= lowest + 1e-4 * np.abs(lowest) + 1e-6)
                print(
                    f"| {spots} | {start_name} | {name} | {converged.mean():.4f} | {iterations.mean():.2f} | "
                    f"{at_lowest:.4f} | {np.mean(params[:, 4] < 0):.4f} |",
                    flush=True,
                )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", choices=["accuracy", "speed", "starts", "curvature"], required=True)
    parser.add_argument("--fits", type=int, default=None)
    parser.add_argument("--photons", type=int, nargs="+", default=[100, 200, 500, 1000, 3000, 10000])
    parser.add_argument("--backgrounds", type=float, nargs="+", default=[1, 10, 50])
    parser.add_argument("--pixels", type=int, nargs="+", default=[5, 11])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.table == "accuracy":
        accuracy_table(args.fits or 2000, args.photons, args.backgrounds)
    elif args.table == "speed":
        speed_table(args.fits or 100_000, args.pixels, args.repeats)
    elif args.table == "starts":
        starts_table(args.fits or 100_000, args.pixels)
    else:
        curvature_table(args.fits or 100_000)


if __name__ == "__main__":
    main()
