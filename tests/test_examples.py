"""The main demo and the example scripts run and report what they claim."""

import importlib.util
import pathlib
import re

from jaxlm.__main__ import main as demo_main

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_main_demo(capsys):
    demo_main(["--num-fits", "300", "--scipy-fits", "20", "--no-progress"])
    out = capsys.readouterr().out
    assert "300 noisy 2-D Gaussian spots" in out
    assert re.search(r"least_squares_batch: [\d.]+ s, [\d,]+ fits/s", out)
    assert "converged: 100.00%" in out
    for name in ("amplitude", "x0", "y0", "width", "offset"):
        assert name in out
    assert re.search(r"method='lm'\), one spot at a time: 20 spots in [\d.]+ s, [\d,]+ fits/s", out)
    # The two fits agree to a small fraction of each parameter's spread across the spots.
    agreement = re.search(r"agreement with scipy.*: (.*)", out).group(1)
    differences = [float(part.split()[1]) for part in agreement.split(", ")]
    assert len(differences) == 5 and max(differences) < 0.05, agreement


def test_decay_curves_example(capsys):
    spec = importlib.util.spec_from_file_location("decay_curves", EXAMPLES / "decay_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    out = capsys.readouterr().out
    assert "999 of 1000 converged" in out
    assert "NaN" in out  # the corrupted curve explains itself


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learn_through_fits_example(capsys):
    module = _load_example("learn_through_fits")
    learned, initial_loss, final_loss = module.main(num_steps=80)
    assert abs(learned / module.TRUE_DEAD_TIME - 1) < 0.1
    assert final_loss < initial_loss / 20
    assert "fits converged 64/64" in capsys.readouterr().out


def test_plots_example_writes_every_image(tmp_path):
    module = _load_example("plots")
    names = module.main(str(tmp_path))
    assert names == ["batch_summary.png", "convergence.png", "fit.gif", "fit.png", "path.png"]
    assert all((tmp_path / name).stat().st_size > 5000 for name in names)
