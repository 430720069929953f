"""XLA options under which batches of small fits run fast on a CPU.

Recent XLA:CPU versions hand reductions to the YNNPACK library. Under `vmap`, every fit's small
sums (JᵀJ and Jᵀr over its residuals, the norms of its step) become reductions over a batch of
short rows, which YNNPACK runs an order of magnitude slower than XLA's own loops: the JᵀJ of a
batch of 5 × 25 Jacobians, as sums of elementwise products, takes 400 ns per fit through YNNPACK
and 32 ns without it (float32; "Where the time goes" in benchmarks/README.md). The option below
keeps YNNPACK for matrix products only, as XLA did by default before it took reductions too.
`least_squares_batch` compiles with it; JAX accepts compiler options only on the outermost
`jit`, so a solve inside a user's `jit` cannot set them.
"""

import functools

import jax

CPU_BATCH_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict[str, str]:
    """The options for `jax.jit(..., compiler_options=...)`, or an empty dict where the installed
    jaxlib does not know them (found by compiling a probe once). Other backends ignore them."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_BATCH_OPTIONS).lower(1.0).compile()
    except Exception:  # an older or newer jaxlib without this option
        return {}
    return dict(CPU_BATCH_OPTIONS)
