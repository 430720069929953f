import jax
import pytest

# Accuracy is checked in float64; float32 tests pass float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)

_BACKEND_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: (
        _BACKEND_COMPILES.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    )
)


@pytest.fixture
def backend_compiles():
    """A function that returns how many programs XLA has compiled since the test began."""
    start = len(_BACKEND_COMPILES)
    return lambda: len(_BACKEND_COMPILES) - start


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


def pytest_configure(config):
    # Marks that scipy's own tests use (test_scipy_conformance.py runs them).
    config.addinivalue_line("markers", "fail_slow(seconds): scipy's mark for a slow test")
    config.addinivalue_line("markers", "parallel_threads_limit(n): scipy's mark for thread-parallel runs")


def pytest_collection_modifyitems(items):
    """Tests listed in their module's KNOWN_FAILURES ("Class::test" -> reason) are strict
    expected failures: the reason is reported, and a test that starts to pass fails the run."""
    for item in items:
        known = getattr(item.module, "KNOWN_FAILURES", None)
        if known is None:
            continue
        name = item.nodeid.split("::", 1)[1].split("[", 1)[0]
        if name in known:
            item.add_marker(pytest.mark.xfail(reason=known[name], strict=True))
