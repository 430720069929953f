"""Every plot renders to a non-empty PNG with the artists it promises."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.collections import FillBetweenPolyCollection, PolyCollection
from matplotlib.patches import Rectangle
from registry import REFERENCE_T, REFERENCE_Y, exponential_decay, two_exponentials

import jaxlm

T = jnp.linspace(0.0, 4.0, 25)
Y = 2.5 * jnp.exp(-1.3 * T) + 0.05 * jax.random.normal(jax.random.key(2), (25,))


def _saved(figure, tmp_path, name="plot.png"):
    path = tmp_path / name
    figure.savefig(path)
    assert path.stat().st_size > 5000
    return path


def test_convergence_plot_shades_the_quasi_newton_phases(tmp_path):
    solution = jaxlm.least_squares(
        two_exponentials,
        jnp.array([-4.0, 1.0, 2.0, -3.0]),
        (REFERENCE_T, REFERENCE_Y),
        solver=jaxlm.HybridLMQN(),
        trace=300,
    )
    figure = jaxlm.plot.convergence(solution)
    _saved(figure, tmp_path)
    ax = figure.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert {"cost F", "‖g‖∞"} <= set(labels)
    shaded = [patch for patch in ax.patches if isinstance(patch, Rectangle)] + [
        c for c in ax.collections if isinstance(c, PolyCollection)
    ]
    kinds = np.asarray(solution.trace.step_kind)
    quasi_newton_runs = np.count_nonzero(np.diff((kinds == jaxlm.StepKind.QUASI_NEWTON).astype(int)) == 1)
    assert len(shaded) == quasi_newton_runs > 0
    assert "quasi-Newton" in [text.get_text() for text in ax.get_legend().get_texts()]


def test_convergence_needs_a_trace():
    solution = jaxlm.least_squares(exponential_decay, jnp.array([1.0, 1.0]), (T, Y))
    with pytest.raises(ValueError, match="trace=K"):
        jaxlm.plot.convergence(solution)


def test_fit_plot_with_error_bars_band_and_residuals(tmp_path):
    def decay(x, amplitude, rate):
        return amplitude * jnp.exp(-rate * x)

    result = jaxlm.fit(decay, T, Y, p0=[1.0, 1.0], sigma=jnp.full(25, 0.05))
    figure = jaxlm.plot.fit(result, T, Y, sigma=0.05)
    _saved(figure, tmp_path)
    data_ax, residual_ax = figure.axes
    assert any(isinstance(c, FillBetweenPolyCollection) for c in data_ax.collections)  # the band
    assert len(data_ax.containers) == 1  # the error bars
    assert residual_ax.get_ylabel() == "residual"
    np.testing.assert_allclose(residual_ax.get_lines()[-1].get_ydata(), Y - result.eval(T), atol=1e-12)


def test_path_over_the_contours_of_the_cost(tmp_path):
    solution = jaxlm.least_squares(exponential_decay, jnp.array([1.0, 0.3]), (T, Y), trace=100)
    figure = jaxlm.plot.path(lambda p: 0.5 * jnp.sum(exponential_decay(p, T, Y) ** 2), solution)
    _saved(figure, tmp_path)
    ax = figure.axes[0]
    iterates = next(line for line in ax.get_lines() if line.get_label() == "iterates")
    assert len(iterates.get_xdata()) == int(solution.trace.length)
    assert len(figure.axes) == 2  # with its colour bar


def test_animation_is_saved_as_gif(tmp_path):
    solution = jaxlm.least_squares(exponential_decay, jnp.array([1.0, 0.3]), (T, Y), trace=100)

    def model(x, params):
        return params[0] * jnp.exp(-params[1] * x)

    path = tmp_path / "fit.gif"
    animation = jaxlm.plot.animate_fit(model, T, Y, solution, filename=str(path))
    assert path.stat().st_size > 5000
    frames = list(animation.new_saved_frame_seq())
    assert len(frames) == int(np.sum(np.asarray(solution.trace.accepted[: int(solution.trace.length)])))
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        jaxlm.plot.animate_fit(model, T, Y, solution, filename=str(tmp_path / "fit.avi"))


def test_batch_summary(tmp_path):
    ys = Y[None, :] * jnp.linspace(0.5, 2.0, 40)[:, None]
    starts = jnp.array([1.0, 1.0])
    solutions = jax.vmap(lambda y: jaxlm.least_squares(exponential_decay, starts, (T, y), max_steps=8))(ys)
    figure = jaxlm.plot.batch_summary(solutions, names=["amplitude", "rate"])
    _saved(figure, tmp_path)
    assert [ax.get_title() for ax in figure.axes] == ["amplitude", "rate", "iterations", "status"]
    bars = figure.axes[-1].patches
    assert sum(bar.get_height() for bar in bars) == 40
    statuses = {tick.get_text() for tick in figure.axes[-1].get_xticklabels()}
    assert statuses == {jaxlm.Status(int(s)).name for s in np.unique(np.asarray(solutions.status))}
