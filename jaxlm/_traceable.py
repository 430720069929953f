"""User functions that JAX cannot trace: how to recognise them, and an error that says what to do.

jaxlm compiles and differentiates the user's model, so the model must be written with jax.numpy
on JAX's traced values. Code written for NumPy fails while JAX traces it, in a few typical ways,
each of which `untraceable_error` turns into a message with the fix.
"""

import jax

_CONVERSIONS = (jax.errors.TracerArrayConversionError, jax.errors.TracerIntegerConversionError)
_BRANCHES = (jax.errors.ConcretizationTypeError,)  # TracerBoolConversionError is one too
_MASKS = (jax.errors.NonConcreteBooleanIndexError,)


def cannot_trace(error: BaseException) -> bool:
    """Whether `error`, raised while JAX traced a user function, says that the function cannot be
    traced at all (NumPy on traced values, Python branches on them, in-place assignment)."""
    return isinstance(error, _CONVERSIONS + _BRANCHES + _MASKS) or _is_assignment(error)


def _is_assignment(error: BaseException) -> bool:
    return isinstance(error, TypeError) and "immutable" in str(error)


def untraceable_error(name: str, error: BaseException) -> TypeError:
    """A TypeError for a user function `name` that JAX could not trace, saying how to write it."""
    if isinstance(error, _CONVERSIONS):
        advice = (
            "it turns JAX's traced values into NumPy arrays or Python numbers (NumPy functions such "
            "as np.exp or np.asarray, or float(), applied to the parameters). Write it with "
            "jax.numpy: `import jax.numpy as jnp` and jnp.exp(...) in place of np.exp(...)"
        )
    elif isinstance(error, _MASKS):
        advice = (
            "it indexes with a boolean mask that depends on the values (x[x > 0]), whose shape JAX "
            "cannot know: use jnp.where(mask, x, 0) instead"
        )
    elif isinstance(error, _BRANCHES):
        advice = (
            "it branches in Python on the values of its inputs (if/while/and/or on the parameters "
            "or the data): use jnp.where(condition, a, b), or jax.lax.cond"
        )
    else:
        advice = (
            "it assigns into an array in place (a[i] = v), but JAX arrays are immutable: write "
            "a = a.at[i].set(v), or build the array with jnp.stack/jnp.concatenate"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return TypeError(f"{name} cannot be traced by JAX: {advice}. (JAX said: {first_line})")
