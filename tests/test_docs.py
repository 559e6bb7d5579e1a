"""The examples run as written (the README's blocks: tests/test_readme.py)."""

import os
import pathlib
import sys

import pytest
from conftest import run_bounded

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code_or_file, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    args = [sys.executable, str(code_or_file)] if isinstance(code_or_file, pathlib.Path) else [sys.executable, "-c", code_or_file]
    out = run_bounded(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _line(out, prefix):
    """The rest of the one line of `out` that starts with `prefix`."""
    lines = [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, out[-2000:])
    return lines[0].strip()


def test_quickstart_example_runs(tmp_path):
    import keras_hta as hta

    out = _run(ROOT / "examples" / "quickstart.py", tmp_path)
    # The schedule it states: L from 0.1 to 0.02 in steps of 0.02, 4 epochs each, over 24 epochs.
    schedule = hta.schedules.Linear(start=0.1, stop=0.02, step=-0.02, epochs_per_value=4)
    want = [round(schedule(epoch), 4) for epoch in range(24)]
    assert want[:5] == [0.1, 0.1, 0.1, 0.1, 0.08] and want[-1] == 0.02
    assert eval(_line(out, "L per epoch:")) == want
    last = eval(_line(out, "last epoch:"))  # H's parts as logged, the epoch's means: the mean of sums is the sum
    assert float(_line(out, "final coupling ||theta - eta||^2:")) == last["coupling"]
    assert last["loss"] == pytest.approx(last["f_theta"] + last["f_eta"] + last["anchor_penalty"]
                                         + last["coupling"] / last["homotopy_l"], rel=1e-5)
    sgd, hta_accuracy = (float(v) for v in _line(out, "validation accuracy  SGD:").split("HTA:"))
    assert min(sgd, hta_accuracy) > 1 / 3  # both learn the three spirals beyond chance


def test_nonconvex_example_runs(tmp_path):
    from keras_hta.experiments import nonconvex

    out = _run(ROOT / "examples" / "nonconvex.py", tmp_path)
    assert float(_line(out, "gradient check, max error:")) < 1e-6  # the analytic gradient, against differences
    assert _line(out, "n=2 starts:") == "36"
    # The n = 2 counts of Table 1 (README, RESULTS §1, tests/test_nonconvex.py).
    assert _line(out, "  BFGS reaches x = 1 from") == "24"
    assert _line(out, "  homotopy, anchor='init':") == "24"
    assert _line(out, "  homotopy, anchor='zeros':") == "25"
    assert _line(out, "  homotopy, anchor='zeros', decoupled solves first:") == "36"
    assert _line(out, "  control, BFGS with the first half at 0:") == "36"
    assert eval(_line(out, "  the paper reports")) == nonconvex.PAPER_TABLE1[2]


def test_cifar10_example_runs_on_a_small_folder(tmp_path):
    from test_data import make_folder

    make_folder(tmp_path / "images", per_class=4, size=32)
    env_args = ["--data-dir", str(tmp_path / "images"), "--epochs", "1", "--width", "0.0625", "--batch-size", "4"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, str(ROOT / "examples" / "cifar10_vgg.py")] + env_args,
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    accuracies = _line(out.stdout, "VGG11-BN width 0.0625, 1 epochs: test accuracy SGD").split(", HTA ")
    for accuracy in map(float, accuracies):  # an accuracy over the 12 test images: a count of them, / 12
        assert abs(accuracy * 12 - round(accuracy * 12)) < 1e-3, accuracy


def test_tune_schedule_example_runs(tmp_path):
    out = _run(ROOT / "examples" / "tune_schedule.py", tmp_path)
    schedule = _line(out, "Best schedule:")
    accuracy = float(_line(out, "Best test accuracy:"))
    assert 0.1 < accuracy <= 1  # ten classes: above chance
    import keras_hta as hta

    # Within the search space it states: L from 0.05..1 down to 0.02..0.2, 1 to 3 epochs per value.
    best = eval(schedule, {k: getattr(hta.schedules, k) for k in ("Constant", "Linear", "Geometric")})
    config = best.get_config()
    if "value" in config:  # a start equal to the stop
        assert 0.05 <= config["value"] <= 0.2, config
    else:
        assert 0.05 <= config["start"] <= 1.0 and 0.02 <= config["stop"] <= 0.2, config
        assert 1 <= config["epochs_per_value"] <= 3, config
