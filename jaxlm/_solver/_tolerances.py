"""Default tolerances, chosen from the dtype of the parameters."""

import jax.numpy as jnp

# float64 stops close to machine precision; float32 stops where rounding noise in the cost
# (a few eps relative) would otherwise keep rejecting steps until max_steps. gtol defaults to 0
# as in MINPACK: ‖g‖∞ has the units of the problem, so any fixed threshold would stop problems
# with tiny residuals (NIST's Lanczos) long before they converge.
_DEFAULTS = {
    jnp.dtype(jnp.float64): {"ftol": 1e-12, "xtol": 1e-12, "gtol": 0.0},
    jnp.dtype(jnp.float32): {"ftol": 1e-5, "xtol": 1e-5, "gtol": 0.0},
    jnp.dtype(jnp.float16): {"ftol": 1e-2, "xtol": 1e-2, "gtol": 0.0},
    jnp.dtype(jnp.bfloat16): {"ftol": 1e-2, "xtol": 1e-2, "gtol": 0.0},
}


def resolve_tolerance(name: str, value: float | None, dtype) -> float:
    """`value` if it was given, else the default for `dtype`."""
    return _DEFAULTS[jnp.dtype(dtype)][name] if value is None else value
