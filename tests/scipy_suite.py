"""scipy's own tests of `curve_fit` and `least_squares`, run against jaxlm.

`load(name, replacements)` executes a fresh copy of the test module `scipy/optimize/tests/<name>.py`
from the installed scipy, with some of its global names rebound: the functions under test become
jaxlm's, and `np` becomes `TracingNumPy()`, which is NumPy in the test code and jax.numpy inside
the models while JAX traces them. So every model that a test hands to jaxlm is the test's own code,
compiled and differentiated by JAX, and the test's assertions are scipy's, unchanged.
"""

import importlib.util
import pathlib
import types

import jax.numpy as jnp
import numpy
import scipy.optimize


def tracing() -> bool:
    """Whether JAX is tracing the caller (inside `jit`, `vmap`, `grad`, `eval_shape`)."""
    from jax._src.core import trace_state_clean

    return not trace_state_clean()


class TracingNumPy:
    """A stand-in for `numpy`: its functions are jax.numpy's while JAX traces the caller and
    NumPy's otherwise. Types, constants and submodules without a jax.numpy twin stay NumPy's."""

    def __init__(self, numpy_module=numpy, jax_module=jnp):
        self._numpy = numpy_module
        self._jax = jax_module

    def __getattr__(self, name):
        value = getattr(self._numpy, name)
        twin = getattr(self._jax, name, None)
        if twin is None or isinstance(value, type):
            return value
        if isinstance(value, types.ModuleType):
            return TracingNumPy(value, twin)
        if not callable(value):
            return value

        def dispatch(*args, **kwargs):
            return (twin if tracing() else value)(*args, **kwargs)

        return dispatch


def load(name: str, replacements: dict) -> types.ModuleType:
    """A fresh copy of scipy's test module `name`, with `replacements` of its global names made
    after it has run (and `np` made a `TracingNumPy`)."""
    path = pathlib.Path(scipy.optimize.__file__).parent / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scipy_suite_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.np = TracingNumPy()
    for attribute, value in replacements.items():
        setattr(module, attribute, value)
    return module


def optimize_namespace(**overrides) -> types.SimpleNamespace:
    """`scipy.optimize` as the tests see it through `optimize.<name>`, with `overrides`."""
    names = {name: getattr(scipy.optimize, name) for name in dir(scipy.optimize) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, **overrides})
