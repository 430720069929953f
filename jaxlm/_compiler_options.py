"""XLA options under which batches of small fits run fast on a CPU.

Recent XLA:CPU versions hand reductions to the YNNPACK library. Under `vmap`, every fit's small
sums (JᵀJ and Jᵀr over its residuals, the norms of its step) become reductions over a batch of
short rows, which YNNPACK runs an order of magnitude slower than XLA's own loops: the JᵀJ of a
batch of 5 × 25 Jacobians takes 349 ns per fit through YNNPACK and 15 ns without it, and a whole
Levenberg–Marquardt step 700 ns against 150 ns (see benchmarks/README.md). The option below
keeps YNNPACK for matrix products only, as XLA did by default before it took reductions too.
"""

import functools

import jax

CPU_BATCH_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict[str, str]:
    """Options for `jax.jit(..., compiler_options=...)` that make batched (vmapped) fits fast on
    a CPU; an empty dict where the installed jaxlib does not know them. Other backends ignore
    them.

    Example:
        >>> import jax, jaxlm
        >>> fit_all = jax.jit(jax.vmap(fit_one), compiler_options=jaxlm.compiler_options())  # doctest: +SKIP
    """
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_BATCH_OPTIONS).lower(1.0).compile()
    except Exception:  # an older or newer jaxlib without this option
        return {}
    return dict(CPU_BATCH_OPTIONS)
