"""Compiled entry points that are cheap to call one fit at a time.

`eqx.filter_jit` splits its arguments into arrays (traced) and everything else (compiled in, and
part of the cache key) on every call. For an eager fit of a small model that bookkeeping cost as
much as the fit: 80 µs of a 156 µs `curve_fit`. Here the static arguments are bound once, into a
`jax.jit` kept per set of static arguments, so that a call costs JAX's dispatch alone. When a
static argument cannot be hashed (an Equinox module with an array field), or a dynamic one is not
an array (a Python number in `args`, which `eqx.filter_jit` compiles in as a constant), the call
goes through `eqx.filter_jit` instead, with the same result; there, a static value that cannot be
hashed at all (a model object without `__hash__`, such as an instance of a non-frozen dataclass)
is compared by identity.
"""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax


def call_compiled(function: Callable, static: tuple, dynamic: tuple, *, raises: bool = False):
    """`function(*static, *dynamic)`, compiled: traced in the arrays of `dynamic`, with `static`
    compiled in. `raises`: the function can raise at run time (`eqx.error_if`), and
    `eqx.filter_jit` is what turns that into a readable `EquinoxRuntimeError`."""
    compiled = None
    if not raises and all(eqx.is_array(leaf) for leaf in jax.tree.leaves(dynamic)):
        try:
            compiled = _jit_with(function, static)
        except TypeError:  # a static argument cannot be hashed
            pass
    if compiled is None:
        return _filter_jit(function)(jax.tree.map(_held_unless_hashable, static), *dynamic)
    return compiled(*dynamic)


@functools.lru_cache(maxsize=64)
def _jit_with(function, static):
    return jax.jit(functools.partial(function, *static))


@functools.cache
def _filter_jit(function):
    def with_held_values(held, *dynamic):
        static = jax.tree.map(_value_if_held, held, is_leaf=lambda leaf: isinstance(leaf, _Held))
        return function(*static, *dynamic)

    return eqx.filter_jit(with_held_values)


class _Held(eqx.Module):
    """A value that cannot be hashed, in a static field: part of the compiled function's cache
    key, compared by identity."""

    value: Any = eqx.field(static=True)


def _held_unless_hashable(leaf):
    if eqx.is_array(leaf):
        return leaf
    try:
        hash(leaf)
    except TypeError:
        return _Held(leaf)
    return leaf


def _value_if_held(leaf):
    return leaf.value if isinstance(leaf, _Held) else leaf
