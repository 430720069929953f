"""XLA options under which fits compile and run fast on a CPU.

Batches: recent XLA:CPU versions hand reductions to the YNNPACK library. Under `vmap`, every
fit's small sums (JᵀJ and Jᵀr over its residuals, the norms of its step) become reductions over
a batch of short rows, which YNNPACK runs an order of magnitude slower than XLA's own loops: the
JᵀJ of a batch of 5 × 25 Jacobians, as sums of elementwise products, takes 400 ns per fit
through YNNPACK and 32 ns without it (float32; "Where the time goes" in benchmarks/README.md).
`CPU_BATCH_OPTIONS` keeps YNNPACK for matrix products only, as XLA did by default before it took
reductions too; `least_squares_batch` compiles with it.

One fit: its program is a few dozen tiny kernels, and compiling them is most of the time of a
first call. XLA:CPU's older kernel emitters compile them in two thirds of the time of its
fusion emitters, and the fit runs as fast (NIST Misra1a on one core: 0.32 s against 0.48 s to
compile, 55 µs per call either way; "Latency and compile time" in benchmarks/README.md).
A vmapped batch ran 8–12% slower with them, so only a single fit called from Python compiles
with `CPU_SINGLE_FIT_OPTIONS`.

JAX accepts compiler options only on the outermost `jit`, so a solve inside a user's `jit`
cannot set them (the user can: `jax.jit(fit, compiler_options=...)`).
"""

import functools

import jax

CPU_BATCH_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
CPU_SINGLE_FIT_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def compiler_options() -> dict:
    """The options for a batch of fits (`jax.jit(..., compiler_options=...)`)."""
    return _if_supported(CPU_BATCH_OPTIONS)


@functools.cache
def single_fit_compiler_options() -> dict:
    """The options for one fit called from Python."""
    return _if_supported(CPU_SINGLE_FIT_OPTIONS)


def _if_supported(options: dict) -> dict:
    """`options`, or an empty dict where the installed jaxlib does not know them (found by
    compiling a probe once). Other backends ignore them."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # an older or newer jaxlib without these options
        return {}
    return dict(options)
