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


def test_quickstart_example_runs(tmp_path):
    out = _run(ROOT / "examples" / "quickstart.py", tmp_path)
    assert "validation accuracy" in out


def test_nonconvex_example_runs(tmp_path):
    out = _run(ROOT / "examples" / "nonconvex.py", tmp_path)
    assert "BFGS reaches x = 1 from 24" in out


def test_cifar10_example_runs_on_a_small_folder(tmp_path):
    from test_data import make_folder

    make_folder(tmp_path / "images", per_class=4, size=32)
    env_args = ["--data-dir", str(tmp_path / "images"), "--epochs", "1", "--width", "0.0625", "--batch-size", "4"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, str(ROOT / "examples" / "cifar10_vgg.py")] + env_args,
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy SGD" in out.stdout


def test_tune_schedule_example_runs(tmp_path):
    out = _run(ROOT / "examples" / "tune_schedule.py", tmp_path)
    assert "Best schedule:" in out and "Best test accuracy" in out
