"""Cost of the backward pass through a batch of 2-D Gaussian fits: implicit against unrolled.

The loss is the mean squared error of the fitted parameters against the truth, differentiated
with respect to the data of every fit (N × 25 pixels). For each adjoint:

- time: the forward solve alone (`jit(vmap(least_squares))`), and `value_and_grad` of the loss
  (forward + backward); backward = their difference. Best of `--repeats` runs after compiling.
- memory: the temporary buffers XLA allocates for the compiled computation
  (`compiled.memory_analysis().temp_size_in_bytes`), a deterministic figure that, unlike the
  process's resident size, does not depend on the allocator.

The unrolled adjoint runs a bounded loop of max_steps iterations (every fit pays for all of
them under vmap), so it is measured at several max_steps; the implicit adjoint does not depend
on the iterations at all.

    python benchmarks/implicit_gradient.py
    python benchmarks/implicit_gradient.py --num-fits 1000 --dtype float64
"""

import argparse
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", "float64" in sys.argv)

import jax.numpy as jnp  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.demo import gaussian_2d_residual, make_spots  # noqa: E402


def make_loss(adjoint, max_steps):
    def fit(start, data):
        return jaxlm.least_squares(gaussian_2d_residual, start, (data,), adjoint=adjoint, max_steps=max_steps)

    def loss(data, start, truth):
        solution = jax.vmap(fit)(start, data)
        return jnp.mean((solution.params - truth) ** 2), solution.num_steps

    return loss


def best_time(fun, args, repeats):
    jax.block_until_ready(fun(*args))
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        jax.block_until_ready(fun(*args))
        times.append(time.perf_counter() - begin)
    return min(times)


def temp_megabytes(fun, args):
    analysis = fun.lower(*args).compile().memory_analysis()
    return analysis.temp_size_in_bytes / 2**20


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-fits", type=int, default=10_000)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--unrolled-steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    data, truth, start = make_spots(jax.random.key(0), args.num_fits, 5, dtype)
    inputs = (data, start, truth)

    print(
        f"jax {jax.__version__}, jaxlm {jaxlm.__version__}; {jax.default_backend()}, "
        f"{platform.machine()}; {args.num_fits} fits of 5x5 pixels, {args.dtype}"
    )
    print(
        "| adjoint | max_steps | forward s | forward+backward s | backward s | backward / forward "
        "| temp MiB forward | temp MiB forward+backward |"
    )
    print("|---|---|---|---|---|---|---|---|")
    configurations = [("implicit (exact Hessian)", jaxlm.ImplicitAdjoint(), 1000)]
    configurations.append(("implicit (Gauss–Newton)", jaxlm.ImplicitAdjoint(hessian="gauss_newton"), 1000))
    configurations += [("unrolled", jaxlm.UnrolledAdjoint(), steps) for steps in args.unrolled_steps]
    steps = None
    for name, adjoint, max_steps in configurations:
        loss = make_loss(adjoint, max_steps)
        forward = jax.jit(loss)
        if steps is None:
            steps = forward(*inputs)[1]
        both = jax.jit(jax.value_and_grad(loss, has_aux=True))
        forward_time = best_time(forward, inputs, args.repeats)
        both_time = best_time(both, inputs, args.repeats)
        backward = both_time - forward_time
        print(
            f"| {name} | {max_steps} | {forward_time:.3f} | {both_time:.3f} | {backward:.3f} | "
            f"{backward / forward_time:.2f} | {temp_megabytes(forward, inputs):.1f} | "
            f"{temp_megabytes(both, inputs):.1f} |",
            flush=True,
        )
    print(
        f"steps taken by the implicit-adjoint solves: median {int(jnp.median(steps))}, max {int(steps.max())}"
    )


if __name__ == "__main__":
    main()
