"""Plots of what a solver did and of what it fitted (matplotlib).

Every function returns a `matplotlib.figure.Figure` (or an animation) built without pyplot, so
it works in scripts, tests and notebooks alike: `fig.savefig("fit.png")`, or let the notebook
show it.

- `convergence(solution)`: cost and ‖g‖∞ against the iteration, from a recorded trace
  (`least_squares(..., trace=K)`), with quasi-Newton and L-BFGS phases shaded and rejected
  steps marked.
- `fit(result, xdata, ydata)`: the data with error bars, the fitted model with its confidence
  band, and the residuals underneath (for a `jaxlm.FitResult`).
- `path(cost, solution)`: the path of a two-parameter solve over the contours of its cost.
- `animate_fit(model, xdata, ydata, solution)`: the fitted curve improving over the
  iterations, saved as GIF (or MP4 where ffmpeg exists).
- `batch_summary(solution)`: histograms of the fitted parameters and of the iterations, and
  the count of each status, for a batch of fits.
"""

import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._solution import Solution, Status
from ._trace import StepKind, Trace

SHADED_KINDS = {
    StepKind.QUASI_NEWTON: ("quasi-Newton", "tab:orange"),
    StepKind.LBFGS: ("L-BFGS", "tab:green"),
}


def _figure(**options) -> Figure:
    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def _trace_of(solution_or_trace) -> Trace:
    trace = solution_or_trace.trace if isinstance(solution_or_trace, Solution) else solution_or_trace
    if trace is None:
        raise ValueError("this solution has no trace: solve with trace=K (e.g. trace=500) to record one.")
    if np.ndim(trace.length) != 0:
        raise ValueError("this is a batch of traces; plot one fit: jax.tree.map(lambda a: a[i], solution).")
    return trace


def _flat_params(trace: Trace, length: int) -> np.ndarray:
    rows = [ravel_pytree(_row(trace.params, i))[0] for i in range(length)]
    return np.stack([np.asarray(row) for row in rows])


def _row(tree, i):
    return jax.tree.map(lambda leaf: leaf[i], tree)


def convergence(solution_or_trace, title: str | None = None) -> Figure:
    """Cost and gradient norm against the iteration, with the step kinds of the solver."""
    trace = _trace_of(solution_or_trace)
    length = int(trace.length)
    iterations = np.arange(length)
    cost = np.asarray(trace.cost[:length])
    grad_norm = np.asarray(trace.grad_norm[:length])
    kinds = np.asarray(trace.step_kind[:length])
    accepted = np.asarray(trace.accepted[:length])

    figure = _figure(figsize=(7, 4))
    ax = figure.add_subplot()
    ax.semilogy(iterations, np.abs(cost), label="cost F", color="tab:blue")
    ax.semilogy(iterations, grad_norm, label="‖g‖∞", color="tab:red")
    rejected = (~accepted) & (kinds != StepKind.START)
    if np.any(rejected):
        ax.semilogy(iterations[rejected], np.abs(cost[rejected]), "x", color="0.3", label="rejected step")
    for kind, (label, color) in SHADED_KINDS.items():
        for number, (start, stop) in enumerate(_runs(kinds == kind)):
            ax.axvspan(start - 0.5, stop - 0.5, color=color, alpha=0.2, label=label if number == 0 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("value")
    ax.set_title(title or "convergence")
    ax.legend()
    return figure


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) index ranges where `mask` is True."""
    runs, start = [], None
    for i, value in enumerate(mask):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def fit(result, xdata, ydata, sigma=None, level: float = 0.95, num_points: int = 200) -> Figure:
    """The data (with error bars when `sigma` is given), the fitted model with its `level`
    confidence band, and the residuals underneath, for a one-dimensional `jaxlm.FitResult`."""
    xdata, ydata = np.asarray(xdata), np.asarray(ydata)
    if xdata.ndim != 1:
        raise ValueError("plot.fit draws models of one variable: xdata must be 1-D.")
    x = np.linspace(xdata.min(), xdata.max(), num_points)
    model = np.asarray(result.eval(x))
    band = np.asarray(result.confidence_band(x, level))

    figure = _figure(figsize=(7, 5))
    data_ax, residual_ax = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if sigma is None:
        data_ax.plot(xdata, ydata, "o", color="tab:blue", label="data")
    else:
        data_ax.errorbar(
            xdata, ydata, yerr=np.broadcast_to(sigma, ydata.shape), fmt="o", color="tab:blue", label="data"
        )
    data_ax.plot(x, model, color="tab:red", label="fit")
    data_ax.fill_between(
        x, model - band, model + band, color="tab:red", alpha=0.25, label=f"{level:.0%} confidence"
    )
    data_ax.set_ylabel("y")
    data_ax.legend()
    residual = ydata - np.asarray(result.eval(xdata))
    residual_ax.axhline(0, color="0.5", linewidth=1)
    residual_ax.plot(xdata, residual, "o", color="tab:blue")
    residual_ax.set_xlabel("x")
    residual_ax.set_ylabel("residual")
    return figure


def path(cost, solution_or_trace, margin: float = 0.5, num: int = 101, levels: int = 30) -> Figure:
    """The parameters' path of a two-parameter solve over the contours of `cost(params)`.

    `cost` takes the parameters in the structure of `x0` (e.g.
    `lambda p: 0.5 * jnp.sum(residual(p, *args) ** 2)`); the window extends the path's range by
    `margin` of it on each side. Contours are of log10(cost) when the cost is positive.
    """
    trace = _trace_of(solution_or_trace)
    length = int(trace.length)
    points = _flat_params(trace, length)
    if points.shape[1] != 2:
        raise ValueError(f"plot.path is for two parameters; this solve has {points.shape[1]}.")
    unravel = ravel_pytree(_row(trace.params, 0))[1]
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    grid = [np.linspace(low[i] - margin * span[i], high[i] + margin * span[i], num) for i in range(2)]
    mesh = np.stack(np.meshgrid(*grid), axis=-1).reshape(-1, 2)
    values = np.asarray(jax.vmap(lambda p: cost(unravel(p)))(mesh)).reshape(num, num)
    positive = np.all(values[np.isfinite(values)] > 0)
    shown = np.log10(values) if positive else values

    figure = _figure(figsize=(6, 5))
    ax = figure.add_subplot()
    contours = ax.contourf(grid[0], grid[1], shown, levels=levels, cmap="viridis")
    figure.colorbar(contours, ax=ax, label="log10 cost" if positive else "cost")
    ax.plot(points[:, 0], points[:, 1], "-o", color="white", markersize=3, linewidth=1, label="iterates")
    ax.plot(points[0, 0], points[0, 1], "s", color="tab:orange", label="start")
    ax.plot(points[-1, 0], points[-1, 1], "*", color="tab:red", markersize=12, label="end")
    ax.set_xlabel("parameter 1")
    ax.set_ylabel("parameter 2")
    ax.legend()
    return figure


def animate_fit(
    model, xdata, ydata, solution_or_trace, filename: str | None = None, fps: int = 5
) -> FuncAnimation:
    """The model `model(x, params)` over the data at every recorded iteration (accepted steps).

    With `filename` ending in .gif (Pillow) or .mp4 (where ffmpeg is installed) the animation
    is saved there; it is returned either way (a notebook can show `anim.to_jshtml()`).
    """
    if filename is not None and not filename.endswith((".gif", ".mp4")):
        raise ValueError(f"filename must end in .gif or .mp4, got {filename!r}.")
    if filename is not None and filename.endswith(".mp4") and not FFMpegWriter.isAvailable():
        raise RuntimeError("saving MP4 needs ffmpeg on the PATH; save a .gif instead.")
    trace = _trace_of(solution_or_trace)
    length = int(trace.length)
    frames = [i for i in range(length) if bool(trace.accepted[i]) or i == 0]
    xdata, ydata = np.asarray(xdata), np.asarray(ydata)
    x = np.linspace(xdata.min(), xdata.max(), 200)

    figure = _figure(figsize=(6, 4))
    ax = figure.add_subplot()
    ax.plot(xdata, ydata, "o", color="tab:blue", label="data")
    first = np.asarray(model(x, _row(trace.params, 0)))
    (curve,) = ax.plot(x, first, color="tab:red", label="model")
    ax.set_ylim(*_limits(ydata))
    ax.legend()

    def draw(frame):
        curve.set_ydata(np.asarray(model(x, _row(trace.params, frame))))
        ax.set_title(f"iteration {frame}, cost {float(trace.cost[frame]):.4g}")
        return (curve,)

    animation = FuncAnimation(figure, draw, frames=frames, blit=False)
    if filename is not None:
        writer = PillowWriter(fps=fps) if filename.endswith(".gif") else FFMpegWriter(fps=fps)
        animation.save(filename, writer=writer)
    return animation


def _limits(y):
    low, high = float(np.min(y)), float(np.max(y))
    pad = 0.2 * (high - low if high > low else 1.0)
    return low - pad, high + pad


def batch_summary(solution: Solution, names: list[str] | None = None, bins: int = 30) -> Figure:
    """Histograms of each fitted parameter (converged fits) and of the iterations, and the
    number of fits with each status, for a batch of solutions (or of `FitResult`s)."""
    if np.ndim(solution.status) != 1:
        raise ValueError("batch_summary needs a batch of fits (one leading batch axis).")
    if isinstance(solution, Solution):
        params = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(solution.params))
        steps = np.asarray(solution.num_steps)
    else:  # a FitResult
        params, steps = np.asarray(solution.params), np.asarray(solution.solution.num_steps)
        names = solution.names if names is None else names
    status, success = np.asarray(solution.status), np.asarray(solution.success)
    num_params = params.shape[1]
    names = [f"p{i}" for i in range(num_params)] if names is None else list(names)

    columns = num_params + 2
    figure = _figure(figsize=(3 * columns, 3))
    axes = figure.subplots(1, columns)
    for i in range(num_params):
        axes[i].hist(params[success, i], bins=bins, color="tab:blue")
        axes[i].set_title(names[i])
    axes[num_params].hist(steps, bins=bins, color="tab:gray")
    axes[num_params].set_title("iterations")
    values, counts = np.unique(status, return_counts=True)
    labels = [Status(int(v)).name for v in values]
    colors = ["tab:green" if Status(int(v)).success else "tab:red" for v in values]
    axes[num_params + 1].bar(range(len(values)), counts, color=colors)
    axes[num_params + 1].set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=7)
    axes[num_params + 1].set_title("status")
    figure.tight_layout()
    return figure
