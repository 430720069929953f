"""Fit a batch of decay curves at once, with a dict of parameters, and read each fit's status.

python examples/decay_curves.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlm


def residual(params, t, y):
    model = params["amplitude"] * jnp.exp(-t / params["lifetime"]) + params["background"]
    return model - y


def main():
    key = jax.random.key(0)
    num_curves = 1000
    t = jnp.linspace(0.0, 10.0, 60)
    lifetime = jax.random.uniform(key, (num_curves,), minval=0.5, maxval=4.0)
    clean = 100.0 * jnp.exp(-t / lifetime[:, None]) + 5.0
    y = clean + jax.random.normal(jax.random.fold_in(key, 1), clean.shape)
    y = y.at[7, 3].set(jnp.nan)  # one corrupted curve: it fails alone, with its own status

    start = {
        "amplitude": jnp.full(num_curves, 50.0),
        "lifetime": jnp.ones(num_curves),
        "background": jnp.zeros(num_curves),
    }
    fit = jax.jit(jax.vmap(lambda p, y: jaxlm.least_squares(residual, p, (t, y)), in_axes=(0, 0)))
    solution = fit(start, y)

    print(solution)  # a summary of the statuses in the batch
    print("curve 7:", solution.message[7])
    ok = np.asarray(solution.success)
    error = np.asarray(solution.params["lifetime"] - lifetime)[ok]
    print(
        f"{ok.sum()} of {num_curves} converged; lifetime error: mean {error.mean():.2e}, sd {error.std():.2e}"
    )


if __name__ == "__main__":
    main()
