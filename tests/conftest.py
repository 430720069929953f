import jax
import pytest

# Accuracy is checked in float64; float32 tests pass float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop the compiled functions of a test module when it is done.

    Every XLA:CPU executable keeps its code in memory mappings, and the whole suite compiles
    enough of them to exceed Linux's default limit of 65,530 mappings per process (the process
    then crashes inside the compiler). Compiled functions are shared within a module, where the
    tests that reuse them live.
    """
    yield
    jax.clear_caches()
