"""`least_squares_batch`: millions of independent fits, in chunks, on every device, without
waiting for stragglers.

`jax.vmap(least_squares)` turns the solver's `lax.while_loop` into one loop over the whole
batch that runs until its slowest member stops, and every iteration costs the whole batch: one
hard fit among a thousand easy ones makes the batch as slow as a thousand hard ones. Here the
loop over iterations is written for the batch instead, and it stops early:

    round on a batch of B fits:  step every running fit (the others are left as they are)
                                 until at most B/8 of them are still running
    then:                        gather the running fits, with their whole solver state (damping,
                                 scaling, Jacobian), into a batch of their own, of the next power
                                 of two in size so that few shapes are compiled, go on with a
                                 round on it, and put the results back

Each fit therefore takes exactly the steps of its own solve (the state travels with it), with
its own status, while the time spent on fits that have already stopped is bounded by an eighth
of the work. Below `MIN_ROUND_SIZE` fits the loop runs to the end.

A batch larger than memory is cut into chunks of `chunk_size` fits that are solved one after
the other, the next one dispatched while the host collects the last; the results are gathered
on the host (numpy arrays). Each chunk is sharded over the devices along the fit axis
(`jax.sharding`), and within a round every device runs its own loop on its own fits
(`jax.shard_map`), without waiting for the others at each iteration; so a machine with several
GPUs, or a CPU run with `XLA_FLAGS=--xla_force_host_platform_device_count=4`, uses all of them.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import ArrayLike, PyTree
from tqdm import tqdm

from ._compiler_options import compiler_options
from ._distributed import check_local, gather_blocks, process_block
from ._least_squares import build_problem, check_loss_and_bounds, check_options, check_residuals, flat_bounds
from ._loop import AbstractSolver, first_state, next_state
from ._loss import Loss, with_loss, with_loss_jacobian
from ._poisson import check_estimator, poisson_fun
from ._solution import Solution, Status, make_solution
from ._solver import LevenbergMarquardt

MIN_ROUND_SIZE = 64
ROUND_STOP_FRACTION = 8  # a round ends when at most 1/8 of its fits are still running


def least_squares_batch(
    fun: Callable[..., ArrayLike],
    x0: PyTree[ArrayLike],
    args: tuple = (),
    *,
    in_axes: int | Sequence[int | None] | None = 0,
    solver: AbstractSolver | None = None,
    max_steps: int = 1000,
    jac: Callable[..., Any] | None = None,
    loss: Loss = "linear",
    f_scale: float = 1.0,
    bounds: tuple[Any, Any] | None = None,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
    return_residuals: bool = False,
    distributed: bool = False,
    gather: bool = True,
    estimator: str = "least_squares",
) -> Solution:
    """Solve many independent fits `least_squares(fun, x0[i], args[i])`, i = 0, …, N − 1.

    Args:
        fun: the residual function `fun(params, *args)` of one fit, as for `least_squares`.
        x0: the starting points: the structure of one fit's parameters with a leading axis of
            N fits (an array of shape (N, n), a dict of such arrays, ...), numpy or JAX.
        args: extra arguments of `fun`; by default each has a leading axis of N fits (the
            data of each fit). See `in_axes` for arguments shared by all fits.
        in_axes: for each argument in `args`, 0 if it has the leading fit axis or None if it is
            the same for every fit (as in `jax.vmap`); one value applies to all of them.
        solver, max_steps, jac, loss, f_scale, bounds: as for `least_squares` (the bounds are
            the same for every fit).
        chunk_size: the number of fits solved at once, split over the devices. `None`
            chooses a power of two of fits per device whose solver states (about residuals ×
            parameters floats per fit) take 16 MiB on a CPU, where a chunk that stays in cache
            is fastest (8192 fits of a 5×5 Gaussian in float64), and 1 GiB on a GPU or TPU,
            where large batches are fastest. Lower it if a chunk does not fit in the device's
            memory.
        devices: the devices to shard every chunk over, along the fit axis; `None` means all
            of `jax.local_devices()` (with `distributed`, local devices only).
        progress: show a tqdm progress bar: `True` always, `False` never, `None` (the
            default) when the solve takes longer than two seconds.
        return_residuals: keep every fit's residuals in `Solution.residual` (N × the shape
            `fun` returns); by default it is None, to save host memory on large batches.
        distributed: solve the batch over the processes of a `jax.distributed` job (several
            hosts, or several processes on one): call it in every process, after
            `jax.distributed.initialize()`, with the same whole batch (x0 and args may be
            memory-mapped files: each process reads only its own block). Process i of P solves
            the fits `np.array_split(range(N), P)[i]` on its local devices (chunks, rounds and
            progress as on one process), and the blocks are gathered, so that every process
            returns the `Solution` of the whole batch. A process that dies makes JAX terminate
            the others once it misses its heartbeats (see `_distributed.py`).
        gather: with `distributed`, False returns only this process's block (the fits
            `jaxlm.process_block(N)`), for batches too large to gather into one host's memory.
        estimator: "least_squares", or "poisson" for counts (Gpufit's MLE): `fun` returns the
            pair (model values, counts) of one fit, as for `least_squares`.

    Returns:
        A `jaxlm.Solution` of numpy arrays with a leading axis of N fits, each fit with its own
        status. It is the same solution as `jax.vmap(least_squares)` gives (every fit takes
        the same steps), computed without making the batch wait for its slowest fits.

    This is a host-level driver (it synchronises between rounds): call it from Python, not
    inside `jit`, and use `jax.vmap(jaxlm.least_squares)` to differentiate through fits.
    """
    solver, _ = check_options(fun, args, solver, LevenbergMarquardt, max_steps, None, 0)
    check_estimator(estimator, loss, jac)
    axes = _argument_axes(in_axes, args)
    num_fits = _num_fits(x0, args, axes)
    if distributed:
        block = process_block(num_fits)
        if devices is not None:
            check_local(devices)
        x0 = jax.tree.map(lambda leaf: _rows(leaf, block), x0)
        args = tuple(
            arg if axis is None else jax.tree.map(lambda leaf: _rows(leaf, block), arg)
            for arg, axis in zip(args, axes, strict=True)
        )
        options = dict(
            in_axes=in_axes, solver=solver, max_steps=max_steps, jac=jac, loss=loss, f_scale=f_scale,
            bounds=bounds, chunk_size=chunk_size, devices=devices, progress=progress,
            return_residuals=return_residuals, estimator=estimator,
        )  # fmt: skip
        solution = least_squares_batch(fun, x0, args, **options)
        return gather_blocks(solution, num_fits) if gather else solution
    fun = poisson_fun(fun) if estimator == "poisson" else fun
    starts = jax.tree.map(_float_array, x0)
    one_start = jax.tree.map(lambda leaf: leaf[0], starts)
    one_args = tuple(
        arg if axis is None else jax.tree.map(lambda a: a[0], arg)
        for arg, axis in zip(args, axes, strict=True)
    )
    residual_shape = check_residuals(fun, one_start, one_args).shape
    flat_lower_upper = flat_bounds(bounds, one_start)
    check_loss_and_bounds(loss, f_scale, jac, flat_lower_upper, solver)
    if flat_lower_upper is not None:
        _check_starts_in_box(starts, flat_lower_upper)

    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty: pass at least one device, or None for all local devices.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")

    batch = _BatchSolve(
        fun=fun,
        jac=jac,
        solver=solver,
        template=jax.tree.map(jnp.asarray, one_start),
        bounds=flat_lower_upper,
        loss=loss,
        f_scale=jnp.asarray(f_scale, ravel_pytree(one_start)[0].dtype),
        residual_shape=tuple(residual_shape),
        max_steps=int(max_steps),
        axes=axes,
    )
    if chunk_size is None:
        chunk_size = _default_chunk_size(batch, starts, args, devices[0].platform) * len(devices)
    # Chunks of equal size (the last one padded), each divided evenly over the devices.
    num_chunks = math.ceil(num_fits / int(chunk_size))
    chunk_size = _round_up(math.ceil(num_fits / num_chunks), len(devices))
    mesh = Mesh(np.array(devices), ("fits",))
    placement = _Placement(
        batched=NamedSharding(mesh, PartitionSpec("fits")),
        shared=NamedSharding(mesh, PartitionSpec()),
    )

    bar = tqdm(total=num_fits, unit="fits", disable=progress is False, delay=0 if progress else 2.0)
    pieces = []
    pending = None
    for begin in range(0, num_fits, chunk_size):
        chunk = _take_chunk(starts, args, axes, begin, chunk_size, num_fits)
        started = _dispatch(batch, placement, *chunk)  # runs on the devices while the last one finishes
        if pending is not None:
            pieces.append(_finish(batch, placement, *pending, return_residuals))
            bar.update(pending[-1])
        pending = (*started, min(chunk_size, num_fits - begin))
    pieces.append(_finish(batch, placement, *pending, return_residuals))
    bar.update(pending[-1])
    bar.close()
    return jax.tree.map(lambda *parts: np.concatenate(parts), *pieces)


def _rows(leaf, block: slice):
    """Rows `block` of one argument of the batch, read from it alone (a memory-mapped file stays
    unread elsewhere)."""
    return leaf[block] if hasattr(leaf, "shape") else np.asarray(leaf)[block]


class _Placement(eqx.Module):
    batched: NamedSharding  # arrays with the fit axis, split over the devices
    shared: NamedSharding  # arrays every fit uses, copied to every device


def _jit(method):
    """`eqx.filter_jit` with `compiler_options()`, made on the first call (finding the options
    compiles a probe, which must not happen at import)."""
    jitted = None

    @functools.wraps(method)
    def call(*args, **kwargs):
        nonlocal jitted
        if jitted is None:
            jitted = eqx.filter_jit(method, compiler_options=compiler_options() or None)
        return jitted(*args, **kwargs)

    return call


class _BatchSolve(eqx.Module):
    """One fit's problem and solver, and the batched, jitted pieces of the batch solve."""

    fun: Callable = eqx.field(static=True)
    jac: Callable | None = eqx.field(static=True)
    solver: AbstractSolver
    template: PyTree  # one fit's parameters: the structure to unflatten into
    bounds: tuple | None
    loss: Loss = eqx.field(static=True)
    f_scale: jax.Array
    residual_shape: tuple = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    axes: tuple = eqx.field(static=True)

    def problem(self, args):
        fun = with_loss(self.fun, self.loss, self.f_scale)
        jac = with_loss_jacobian(self.fun, self.jac, self.loss, self.f_scale)
        return build_problem(
            fun, jac, args, self.template, self.residual_shape, self.bounds, elementwise_sums=True
        )

    def initial_states(self, starts, args):
        def one(x0, args):
            problem = self.problem(args)
            return first_state(self.solver, problem, problem.project(ravel_pytree(x0)[0]))

        states = jax.vmap(one, in_axes=(0, self.axes))(starts, args)
        return states, jnp.zeros(states.status.shape, jnp.int32)

    start = _jit(initial_states)
    # Jitted without options, for `jax.eval_shape` (which nests it, where options are refused),
    # so that repeated calls reuse the traced program instead of tracing `init` every time.
    start_shapes = eqx.filter_jit(initial_states)

    @_jit
    def round(self, states, num_steps, args, last_round: bool, mesh: Mesh, stage: int):
        """Step the fits running in `stage` (one of the solver's `stage_steps`) until at most 1/8
        of them still are (none, in the last round); a fit that moves on to the next stage stops
        here. Each device runs its own loop on its own fits (`shard_map`), so the devices never
        wait for each other within a round."""

        def step(state, num_steps, args):
            stage_step = self.solver.stage_steps()[stage]
            return next_state(self.solver, self.problem(args), state, num_steps, self.max_steps, stage_step)

        def local_round(states, num_steps, args):
            stop_running = 0 if last_round else states.status.shape[0] // ROUND_STOP_FRACTION

            def some_running(carry):
                states, _ = carry
                return jnp.sum(self.running_in(states, stage)) > stop_running

            def body(carry):
                states, num_steps = carry
                running = self.running_in(states, stage)
                new_states, new_num_steps = jax.vmap(step, in_axes=(0, 0, self.axes))(states, num_steps, args)

                def keep_stopped(new, old):
                    return jnp.where(running.reshape(running.shape + (1,) * (new.ndim - 1)), new, old)

                return jax.tree.map(keep_stopped, (new_states, new_num_steps), (states, num_steps))

            return jax.lax.while_loop(some_running, body, (states, num_steps))

        fits = PartitionSpec("fits")
        args_specs = tuple(PartitionSpec() if axis is None else fits for axis in self.axes)
        return jax.shard_map(
            local_round, mesh=mesh, in_specs=(fits, fits, args_specs), out_specs=(fits, fits), check_vma=False
        )(states, num_steps, args)

    def running_in(self, states, stage: int):
        """Which fits are running in `stage`."""
        return (states.status == Status.RUNNING) & (jax.vmap(self.solver.stage)(states) == stage)

    @_jit
    def solution(self, states, num_steps, args, return_residuals):
        def one(state, num_steps, args):
            residual = state.residual
            if self.loss != "linear":  # the model's residuals, not the solver's rescaled ones
                residual = self.fun(self.unflatten(state.x), *args)
            solution = make_solution(
                self.unflatten(state.x),
                state.cost,
                jnp.reshape(residual, self.residual_shape),
                state,
                num_steps,
                False,
                "least_squares_batch",
            )
            return solution if return_residuals else eqx.tree_at(lambda s: s.residual, solution, None)

        return jax.vmap(one, in_axes=(0, 0, self.axes))(states, num_steps, args)

    def unflatten(self, x):
        return ravel_pytree(self.template)[1](x)


@jax.jit
def _gather(tree, indices):
    return jax.tree.map(lambda leaf: jnp.take(leaf, indices, axis=0), tree)


@jax.jit
def _scatter(tree, indices, part):
    return jax.tree.map(lambda leaf, new: leaf.at[indices].set(new), tree, part)


def _round(batch, placement, states, num_steps, args, stage):
    """One round of `stage` on a batch: until at most 1/8 of its fits run in it, or to the end of
    the stage on a small batch."""
    last_round = states.status.shape[0] <= MIN_ROUND_SIZE
    return batch.round(states, num_steps, args, last_round, placement.batched.mesh, stage)


def _stage(batch, placement, states, num_steps, args, stage):
    """The rounds of a later `stage` (the fits that reach it are few): on the whole batch if it
    is small, else on the fits running in it, gathered."""
    if states.status.shape[0] <= MIN_ROUND_SIZE:
        return _round(batch, placement, states, num_steps, args, stage)
    return _after_round(batch, placement, states, num_steps, args, stage)


def _after_round(batch, placement, states, num_steps, args, stage):
    """The rounds of `stage` that follow a round on `states`, until no fit runs in it."""
    if states.status.shape[0] <= MIN_ROUND_SIZE:
        return states, num_steps
    running_in_stage = np.asarray(_running_in(batch, states, stage))
    running = np.flatnonzero(running_in_stage)
    if running.size == 0:
        return states, num_steps
    # The next round's batch: the running fits, padded to a power of two that the devices divide
    # with copies of one that the round leaves as it is (or, if every fit runs in the stage, of a
    # running one, whose copies come out the same).
    others = np.flatnonzero(~running_in_stage)
    stopped = int(others[0]) if others.size else int(running[0])
    round_size = _round_up(
        max(MIN_ROUND_SIZE, 1 << (running.size - 1).bit_length()), placement.batched.mesh.size
    )
    indices = np.full(round_size, stopped)
    indices[: running.size] = running
    indices = jax.device_put(indices, placement.shared)
    part_args = tuple(
        arg if axis is None else _gather(arg, indices) for arg, axis in zip(args, batch.axes, strict=True)
    )
    part = jax.device_put(_gather((states, num_steps), indices), placement.batched)
    part_args = _place(part_args, batch.axes, placement)
    part = _after_round(
        batch, placement, *_round(batch, placement, *part, part_args, stage), part_args, stage
    )
    return _scatter((states, num_steps), indices, part)


@eqx.filter_jit
def _running_in(batch, states, stage):
    return batch.running_in(states, stage)


def _dispatch(batch, placement, starts, args):
    """Put a chunk on the devices and start its first round (without waiting for it)."""
    starts = jax.device_put(starts, placement.batched)
    args = _place(args, batch.axes, placement)
    states, num_steps = batch.start(starts, args)
    return (*_round(batch, placement, states, num_steps, args, 0), args)


def _finish(batch, placement, states, num_steps, args, num_real, return_residuals):
    """The remaining rounds of a chunk, and its solution on the host without the padding."""
    states, num_steps = _after_round(batch, placement, states, num_steps, args, 0)
    for stage in range(1, len(batch.solver.stage_steps())):
        states, num_steps = _stage(batch, placement, states, num_steps, args, stage)
    solution = batch.solution(states, num_steps, args, return_residuals)
    return jax.tree.map(lambda leaf: np.asarray(leaf)[:num_real], solution)


def _place(args, axes, placement):
    return tuple(
        jax.device_put(arg, placement.shared if axis is None else placement.batched)
        for arg, axis in zip(args, axes, strict=True)
    )


def _take_chunk(starts, args, axes, begin, chunk_size, num_fits):
    """Fits begin, …, begin + chunk_size − 1; past the end, copies of the chunk's first fit."""
    end = min(begin + chunk_size, num_fits)

    def take(leaf):
        part = leaf[begin:end]
        if end - begin < chunk_size:
            padding = (leaf[begin : begin + 1],) * (chunk_size - (end - begin))
            part = (np if isinstance(leaf, np.ndarray) else jnp).concatenate((part, *padding))
        return part

    chunk_args = tuple(
        arg if axis is None else jax.tree.map(take, arg) for arg, axis in zip(args, axes, strict=True)
    )
    return jax.tree.map(take, starts), chunk_args


def _argument_axes(in_axes, args) -> tuple:
    axes = tuple(in_axes) if isinstance(in_axes, Sequence) else (in_axes,) * len(args)
    if len(axes) != len(args) or any(axis not in (0, None) or isinstance(axis, bool) for axis in axes):
        raise ValueError(
            f"in_axes must be 0 or None, or one of them for each of the {len(args)} arguments in args "
            f"(0: the argument has a leading axis of fits; None: all fits share it), got {in_axes!r}."
        )
    return axes


def _num_fits(x0, args, axes) -> int:
    batched_leaves = jax.tree.leaves(x0) + [
        leaf for arg, axis in zip(args, axes, strict=True) if axis == 0 for leaf in jax.tree.leaves(arg)
    ]
    if not jax.tree.leaves(x0):
        raise ValueError(
            "x0 has no parameters: pass an array of shape (number of fits, number of parameters)."
        )
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) > 0 else None for leaf in batched_leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "x0 and every argument with in_axes 0 need the same leading axis, the number of fits; "
            f"got leading sizes {sorted(s for s in sizes if s is not None)}"
            f"{' and scalars' if None in sizes else ''}. "
            "Mark arguments that every fit shares with in_axes=None."
        )
    (num_fits,) = sizes
    if num_fits == 0:
        raise ValueError("the batch is empty: x0 has 0 fits along its leading axis.")
    return int(num_fits)


def _float_array(leaf):
    if not isinstance(leaf, jax.Array):
        leaf = np.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
        raise TypeError("x0 is complex; split it into real and imaginary parts.")
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        leaf = leaf.astype(jnp.result_type(float))
    return leaf


def _check_starts_in_box(starts, bounds):
    leaves = jax.tree.leaves(starts)
    flat = np.concatenate([np.asarray(leaf).reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)
    lower, upper = (np.asarray(b) for b in bounds)
    if np.any(flat < lower) or np.any(flat > upper):
        bad = int(np.flatnonzero(np.any((flat < lower) | (flat > upper), axis=1))[0])
        raise ValueError(
            f"x0 of fit {bad} is outside the bounds: start every fit inside lower <= x0 <= upper."
        )


CHUNK_BYTES = {"cpu": 2**24, "other": 2**30}  # the solver states of one chunk: cache-sized on a CPU


def _default_chunk_size(batch, starts, args, platform) -> int:
    """The power of two (2⁸ to 2²²) of fits whose solver states take about CHUNK_BYTES."""

    def one_fit(leaf):
        return jax.ShapeDtypeStruct((1, *np.shape(leaf)[1:]), leaf.dtype)

    one_args = tuple(
        arg if axis is None else jax.tree.map(one_fit, arg)
        for arg, axis in zip(args, batch.axes, strict=True)
    )
    states = jax.eval_shape(batch.start_shapes, jax.tree.map(one_fit, starts), one_args)
    bytes_per_fit = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(states))
    fits = CHUNK_BYTES["cpu" if platform == "cpu" else "other"] // max(bytes_per_fit, 1)
    return 1 << int(np.clip(int(fits).bit_length() - 1, 8, 22))


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple
