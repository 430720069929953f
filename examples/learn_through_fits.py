"""Learn a parameter of the measurement model by gradient descent through a batch of fits.

A detector with dead time κ records m = s / (1 + κ s) when the true count rate is s, so bright
decay curves look flattened and their fitted lifetimes come out too long. With a set of
calibration samples whose lifetimes τ are known, κ can be learned: every calibration curve is
fitted by Levenberg–Marquardt with the detector model inside the residual, and κ is moved
by optax's Adam down the gradient of the mean squared lifetime error. The gradient flows
through all the vmapped fits by implicit differentiation (jaxlm's default adjoint): no
iteration of the fits is stored or replayed.

    python examples/learn_through_fits.py      # JAXLM_NOTEBOOK_SIZE=small: 30 optax steps instead of 80
"""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import jaxlm

TRUE_DEAD_TIME = 2e-4  # seconds per count: at 1000 counts/s the detector loses 17%


class Detector(eqx.Module):
    """The measurement model, with its dead time as a learnable (log-scaled) parameter."""

    log_dead_time: jax.Array

    def __call__(self, rate):
        return rate / (1 + jnp.exp(self.log_dead_time) * rate)


def residual(params, t, measured, detector):
    rate = params["amplitude"] * jnp.exp(-t / params["lifetime"]) + params["background"]
    return detector(rate) - measured


def fit_lifetimes(detector, t, measured):
    start = {"amplitude": measured[0] * 1.5, "lifetime": jnp.asarray(1.0), "background": jnp.asarray(0.0)}
    solution = jaxlm.least_squares(residual, start, (t, measured, detector))
    return solution.params["lifetime"], solution.success


@eqx.filter_jit
def loss_and_success(detector, t, measured, known_lifetimes):
    lifetimes, success = jax.vmap(fit_lifetimes, in_axes=(None, None, 0))(detector, t, measured)
    return jnp.mean((lifetimes / known_lifetimes - 1) ** 2), success


def calibration_data(key, num_samples=64):
    t = jnp.linspace(0.0, 8.0, 40)
    lifetime_key, amplitude_key, noise_key = jax.random.split(key, 3)
    lifetimes = jax.random.uniform(lifetime_key, (num_samples,), minval=0.8, maxval=3.0)
    amplitudes = jax.random.uniform(amplitude_key, (num_samples,), minval=500.0, maxval=2000.0)
    rates = amplitudes[:, None] * jnp.exp(-t / lifetimes[:, None]) + 20.0
    measured = Detector(jnp.log(jnp.asarray(TRUE_DEAD_TIME)))(rates)
    measured = measured + 2.0 * jax.random.normal(noise_key, measured.shape)
    return t, measured, lifetimes


def main(num_steps=None):
    if num_steps is None:
        num_steps = 80 if os.environ.get("JAXLM_NOTEBOOK_SIZE", "full") == "full" else 30
    t, measured, known_lifetimes = calibration_data(jax.random.key(0))
    detector = Detector(jnp.log(jnp.asarray(1e-5)))  # a poor first guess: almost no dead time
    optimizer = optax.adam(0.1)
    opt_state = optimizer.init(detector)
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(loss_and_success, has_aux=True))

    initial_loss, _ = loss_and_success(detector, t, measured, known_lifetimes)
    print(
        f"dead time {float(jnp.exp(detector.log_dead_time)):.2e} s: "
        f"rms lifetime error {initial_loss**0.5:.2%}"
    )
    for step in range(num_steps):
        (loss, success), grads = value_and_grad(detector, t, measured, known_lifetimes)
        updates, opt_state = optimizer.update(grads, opt_state)
        detector = optax.apply_updates(detector, updates)
        if step % 10 == 0 or step == num_steps - 1:
            print(
                f"step {step:3d}: loss {float(loss):.3e}, dead time "
                f"{float(jnp.exp(detector.log_dead_time)):.3e} s, "
                f"fits converged {int(success.sum())}/{success.size}"
            )
    final_loss, _ = loss_and_success(detector, t, measured, known_lifetimes)
    learned = float(jnp.exp(detector.log_dead_time))
    print(f"learned dead time {learned:.3e} s (true {TRUE_DEAD_TIME:.1e} s)")
    print(f"rms lifetime error: {initial_loss**0.5:.2%} before, {final_loss**0.5:.2%} after")
    return learned, float(initial_loss), float(final_loss)


if __name__ == "__main__":
    main()
