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

A call from Python is also the one place where jaxlm's `jit` is the outermost, the only one to
which JAX passes compiler options: a single fit called this way compiles with
`single_fit_compiler_options()`, which compile its small kernels faster (`_compiler_options.py`).
"""

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._compiler_options import single_fit_compiler_options


def call_compiled(
    function: Callable, static: tuple, dynamic: tuple, *, raises: bool = False, single_fit: bool = False
):
    """`function(*static, *dynamic)`, compiled: traced in the arrays of `dynamic`, with `static`
    compiled in. `raises`: the function can raise at run time (`eqx.error_if`), and
    `eqx.filter_jit` is what turns that into a readable `EquinoxRuntimeError`. `single_fit`: the
    function solves one fit; called from Python (not traced by a `jit`, `vmap` or `grad`
    around it), it compiles with `single_fit_compiler_options()`."""
    return compiled(function, static, dynamic, raises=raises, single_fit=single_fit)(*dynamic)


def compiled(
    function: Callable, static: tuple, dynamic: tuple, *, raises: bool = False, single_fit: bool = False
) -> Callable:
    """The compiled function that `call_compiled` calls with `*dynamic`. A caller that calls it
    many times with the same static arguments, from the same place (see `called_from_python`),
    can keep it and save the lookup."""
    leaves = jax.tree.leaves(dynamic)
    options = ()
    if single_fit and called_from_python():
        options = tuple(single_fit_compiler_options().items())
    if not raises and all(eqx.is_array(leaf) for leaf in leaves):
        key = (function, _identities(static), options)
        known = _BY_IDENTITY.get(key)
        if known is not None:
            return known[0]
        try:
            jitted = _jit_with(function, static, options)
        except TypeError:  # a static argument cannot be hashed
            pass
        else:
            if len(_BY_IDENTITY) >= _BY_IDENTITY_SIZE:
                _BY_IDENTITY.clear()
            _BY_IDENTITY[key] = (jitted, static)  # static kept alive: its ids stay its own
            return jitted
    return functools.partial(_filter_jit(function, options), jax.tree.map(_held_unless_hashable, static))


def fetch(array) -> Any:
    """`np.asarray(array)`, waiting for a JAX array by polling it for up to `POLL_SECONDS` before
    blocking. On a CPU JAX runs a compiled fit in a worker thread (unless it is smaller than about
    a thousand floating-point operations); a caller that blocks is put to sleep, and being woken
    when the result is there cost 100 µs of a 250 µs `curve_fit` of 100 points on two cores
    (median; polling: 110 µs against 250). Between polls the thread yields its core, so that the
    worker is not kept from one it needs; past `POLL_SECONDS` it blocks as before."""
    if isinstance(array, jax.Array):
        end = time.perf_counter() + POLL_SECONDS
        while not array.is_ready() and time.perf_counter() < end:
            _yield()
    return np.asarray(array)


POLL_SECONDS = 1e-3
_yield = getattr(os, "sched_yield", functools.partial(time.sleep, 0))  # Windows has no sched_yield


def called_from_python() -> bool:
    """Whether no `jit`, `vmap` or `grad` is tracing the caller: only then is the `jit` about to
    be called the outermost one, which alone may take compiler options. (The arguments do not
    tell: they can all be concrete while the residual function closes over a tracer.) JAX has no
    public test for it; without its private one, the answer is False: no options, the same fit."""
    return _trace_state_clean is not None and _trace_state_clean()


try:
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover - a JAX without it: never called from Python
    _trace_state_clean = None


# The compiled functions by the identities of their static arguments: comparing and hashing
# Equinox modules (the solver, the adjoint) took 20 µs of an eager fit's 180; the same objects,
# passed again (the default solver is one shared instance), are found here without either.
_BY_IDENTITY: dict = {}
_BY_IDENTITY_SIZE = 256


_PLAIN = frozenset({type(None), bool, int, float, str})


def _identities(value):
    """`value` with every object but a tuple, None, bool, int, float or str replaced by its id."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, tuple):
        return tuple([item if type(item) in _PLAIN else _identities(item) for item in value])
    return id(value)


# What `curve_fit` called from Python worked out before its fit, by the call's signature
# (`_curve_fit._EagerPlan`): it holds a compiled function, so it is forgotten with them.
EAGER_PLANS: dict = {}


def clear_compiled() -> None:
    """Forget the compiled functions kept here (for tests that watch them being made)."""
    _BY_IDENTITY.clear()
    EAGER_PLANS.clear()
    _jit_with.cache_clear()


@functools.lru_cache(maxsize=64)
def _jit_with(function, static, options):
    return jax.jit(functools.partial(function, *static), compiler_options=dict(options) or None)


@functools.cache
def _filter_jit(function, options):
    def with_held_values(held, *dynamic):
        static = jax.tree.map(_value_if_held, held, is_leaf=lambda leaf: isinstance(leaf, _Held))
        return function(*static, *dynamic)

    return eqx.filter_jit(with_held_values, compiler_options=dict(options) or None)


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
