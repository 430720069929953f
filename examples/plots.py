"""The plots of `jaxlm.plot`, written as the PNG and GIF files that the documentation shows
(docs/images/, on the page docs/plots.md).

python examples/plots.py [output folder, default docs/images]
"""

import pathlib
import sys

import jax
import jax.numpy as jnp

import jaxlm

jax.config.update("jax_enable_x64", True)

T = jnp.arange(0.0, 21.0, 2.0)  # the two-exponential reference problem of the solver family
Y = jnp.array([0.0, 3.55, 3.82, 2.98, 2.32, 1.48, 1.02, 0.81, 0.41, 0.42, 0.15])


def two_exponentials(x, t, y):
    return y - (x[2] * jnp.exp(x[0] * t) + x[3] * jnp.exp(x[1] * t))


def decay(x, amplitude, rate, offset):
    return amplitude * jnp.exp(-rate * x) + offset


def main(out_dir="docs/images"):
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Madsen's hybrid: LM steps, then quasi-Newton steps (shaded) where the residuals are large.
    hybrid = jaxlm.least_squares(
        two_exponentials, jnp.array([-4.0, 1.0, 2.0, -3.0]), (T, Y), solver=jaxlm.HybridLMQN(), trace=300
    )
    jaxlm.plot.convergence(hybrid, title="HybridLMQN on the two-exponential problem").savefig(
        out / "convergence.png"
    )

    # A fit with error bars, its 95% confidence band and the residuals.
    key = jax.random.key(0)
    x = jnp.linspace(0.0, 4.0, 30)
    y = decay(x, 2.5, 1.3, 0.5) + 0.08 * jax.random.normal(key, x.shape)
    result = jaxlm.fit(decay, x, y, p0=[1.0, 1.0, 0.0], sigma=jnp.full(30, 0.08))
    jaxlm.plot.fit(result, x, y, sigma=0.08).savefig(out / "fit.png")

    # The path of a two-parameter fit over the contours of its cost, and its animation.
    def residual(params, x, y):
        return decay(x, params[0], params[1], 0.5) - y

    path_solution = jaxlm.least_squares(residual, jnp.array([0.5, 4.0]), (x, y), trace=100)

    def cost(params):
        return 0.5 * jnp.sum(residual(params, x, y) ** 2)

    jaxlm.plot.path(cost, path_solution).savefig(out / "path.png")
    jaxlm.plot.animate_fit(
        lambda x, p: decay(x, p[0], p[1], 0.5), x, y, path_solution, filename=str(out / "fit.gif")
    )

    # A batch of 2,000 noisy decays, some from far starts that fail.
    keys = jax.random.split(jax.random.fold_in(key, 1), 2)
    rates = jax.random.uniform(keys[0], (2000,), minval=0.5, maxval=2.0)
    ys = decay(x[None, :], 2.5, rates[:, None], 0.5) + 0.08 * jax.random.normal(keys[1], (2000, 30))
    batch = jaxlm.fit(decay, x, ys, p0=[1.0, 1.0, 0.0], max_steps=12)
    jaxlm.plot.batch_summary(batch).savefig(out / "batch_summary.png")
    return sorted(path.name for path in out.iterdir())


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
