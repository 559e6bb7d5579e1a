"""A run killed mid-epoch (SIGKILL) and restarted with BackupAndRestore ends
with the same weights, anchors, L and optimizer state as an uninterrupted run."""

import pytest
import json
import os
import pathlib
import signal
import sys

import numpy as np
from conftest import run_bounded

pytestmark = [pytest.mark.harness, pytest.mark.tensorflow_only]  # run once, in the TensorFlow pass (tests/conftest.py)


HERE = pathlib.Path(__file__).resolve().parent


def _worker(tmp_path, name, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(HERE.parent))
    out = run_bounded([sys.executable, str(HERE / "fit_worker.py"), str(tmp_path / name), *extra],
                         capture_output=True, text=True, env=env)
    return out


def _load(tmp_path, name):
    arrays = np.load(tmp_path / f"{name}.npz")
    return [arrays[k] for k in arrays.files], json.loads((tmp_path / f"{name}.json").read_text())


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    reference = _worker(tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    kill = ["--backup", str(tmp_path / "backup"), "--kill-epoch", "2", "--kill-batch", "3",
            "--marker", str(tmp_path / "killed")]
    first = _worker(tmp_path, "resumed", *kill)
    assert first.returncode == -signal.SIGKILL  # died in epoch 2, after epochs 0 and 1 were backed up
    assert not (tmp_path / "resumed.npz").exists()
    second = _worker(tmp_path, "resumed", *kill)
    assert second.returncode == 0, second.stderr[-2000:]

    want, ref_log = _load(tmp_path, "reference")
    got, log = _load(tmp_path, "resumed")
    assert log["epochs_ran"] == [2, 3, 4]  # resumed at the killed epoch; finished ones kept
    np.testing.assert_allclose(log["history"]["homotopy_l"], ref_log["history"]["homotopy_l"][2:], rtol=1e-6)
    assert len(got) == len(want)
    for a, b in zip(got, want):  # twins, anchors, masks, L, optimizer momenta
        np.testing.assert_allclose(a, b, atol=1e-6)
