"""Several processes on one CPU machine, through the example users run
(`examples/multi_process.py`): on JAX, Keras' `keras.distribution.initialize`
(a coordinator on 127.0.0.1, Gloo collectives) with `DataParallel`; on
TensorFlow, `MultiWorkerMirroredStrategy` with two workers on 127.0.0.1. The
processes agree with each other and with one process on the same global
batches (BatchNormalization statistics, masks, twins, anchors, optimizer
slots: every variable), for full and split-batch twins; `split="random"`
without a seed is refused; a run stopped mid-epoch resumes from
BackupAndRestore to the uninterrupted result. On PyTorch the example refuses
more than one process in one line.

The example's launcher bounds each run (`--timeout`) and stops every process
when one fails, so no test leaves a process behind."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest
from conftest import BACKEND, HANG_S, run_bounded

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "multi_process.py"

# TensorFlow's run in the TensorFlow pass, JAX's in the JAX pass.
pytestmark = pytest.mark.slow  # processes that start TensorFlow or JAX and train together: about 3 minutes
needs_engine = pytest.mark.skipif(BACKEND == "torch", reason="no multi-process fit on PyTorch in Keras 3.15")


def _run(tmp_path, name, *argv):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    # The launcher's own bound ends before run_bounded's, so that it stops its processes first.
    return run_bounded([sys.executable, str(EXAMPLE), "--out", str(tmp_path / name),
                        "--timeout", str(HANG_S - 60), *argv], capture_output=True, text=True, env=env, cwd=tmp_path)


def _ok(tmp_path, name, *argv):
    out = _run(tmp_path, name, *argv)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _variables(tmp_path, name, process=0):
    with np.load(tmp_path / f"{name}.process{process}.npz") as arrays:
        return {k: arrays[k] for k in arrays.files}


def _assert_same(a, b, atol):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


@needs_engine
@pytest.mark.parametrize("twin_batch,devices", [("full", 1), ("split", 2)])
def test_two_processes_equal_one_process(tmp_path, twin_batch, devices):
    # (--devices: JAX's CPU devices per process; a TensorFlow worker here has one.)
    _ok(tmp_path, "one", "--twin-batch", twin_batch)
    _ok(tmp_path, "two", "--local", "2", "--devices", str(devices), "--twin-batch", twin_batch)
    one, two0, two1 = _variables(tmp_path, "one"), _variables(tmp_path, "two", 0), _variables(tmp_path, "two", 1)
    assert any(k.endswith("moving_variance_eta") for k in one)  # η's own BatchNormalization statistics
    assert any(k.endswith("_groups") for k in one)  # the random split's masks
    assert any(k.endswith("momentum") for k in one)  # the optimizer's slots
    _assert_same(two0, two1, atol=1e-6)  # the processes hold the same model (JAX: bit for bit)
    _assert_same(one, two0, atol=1e-5)  # and equal one process on the same global batches
    for k in one:
        if k.endswith("_groups"):
            np.testing.assert_array_equal(two0[k], two1[k])  # the same masks on both
    record = json.loads((tmp_path / "two.process0.json").read_text())
    assert (record["processes"], record["backend"]) == (2, BACKEND)
    np.testing.assert_allclose(record["history"]["homotopy_l"], [0.5, 0.25, 0.125], rtol=1e-6)
    kernel = next(k for k in one if k.endswith("kernel") and "/" in k)
    assert abs(one[kernel] - one[kernel.replace("/", "_") + "_eta"]).max() > 1e-3  # the twins differ


@needs_engine
def test_random_split_without_a_seed_is_refused_on_two_processes(tmp_path):
    out = _run(tmp_path, "none", "--local", "2", "--seed", "-1")
    assert out.returncode != 0
    assert ("ValueError: HomotopyModel: split='random' with seed=None would draw a different mask on each of the 2 "
            "processes; pass the same integer `seed` on every process.") in out.stderr
    assert not list(tmp_path.glob("none.*"))  # refused before training


@needs_engine
def test_two_processes_resume_from_backup_to_the_uninterrupted_run(tmp_path):
    _ok(tmp_path, "whole", "--local", "2")
    stopped = _run(tmp_path, "resumed", "--local", "2", "--backup", str(tmp_path / "backup"), "--stop-after", "6")
    assert stopped.returncode == 3, stopped.stderr[-3000:]  # step 6 is in the second of the three epochs
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["process0", "process1"]
    _ok(tmp_path, "resumed", "--local", "2", "--backup", str(tmp_path / "backup"))
    history = json.loads((tmp_path / "resumed.process0.json").read_text())["history"]
    np.testing.assert_allclose(history["homotopy_l"], [0.25, 0.125], rtol=1e-6)  # epochs 1 and 2 only, L resumed
    whole = _variables(tmp_path, "whole")
    for process in (0, 1):
        _assert_same(whole, _variables(tmp_path, "resumed", process), atol=1e-6)
    assert int(next(v for k, v in whole.items() if k.endswith("homotopy_epoch"))) == 3


def test_pytorch_refuses_more_than_one_process_in_one_line(tmp_path):
    if BACKEND != "torch":
        pytest.skip("PyTorch's refusal")
    out = _run(tmp_path, "torch", "--addresses", "127.0.0.1:1,127.0.0.1:2", "--process-id", "0")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "multi_process: KERAS_BACKEND=torch: Keras' fit runs on one device on PyTorch; use jax or tensorflow for this "
        "run (a .keras file moves between backends)"]


def _processes_running(marker):
    """Pids of the processes whose command line contains `marker` (Linux's /proc)."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:  # ended meanwhile
            pass
    return pids


@needs_engine
def test_stopping_the_launcher_stops_every_process(tmp_path):
    import signal
    import subprocess
    import time

    if not pathlib.Path("/proc/self/cmdline").exists():
        pytest.skip("reads /proc")
    marker = str(tmp_path / "long")
    backups = [tmp_path / "backup" / f"process{i}" for i in range(2)]
    env = dict(os.environ, KERAS_BACKEND=BACKEND, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    launcher = subprocess.Popen([sys.executable, str(EXAMPLE), "--local", "2", "--epochs", "100000", "--out", marker,
                                 "--backup", str(tmp_path / "backup")],
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG_S
        # Training: both processes have written their first epoch's backup.
        while not all(folder.is_dir() and any(folder.iterdir()) for folder in backups):
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-2000:]
            time.sleep(0.2)
        assert len(_processes_running(marker)) == 3  # the launcher and its two processes
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(HANG_S) == 130
        assert "multi_process: interrupted" in launcher.stderr.read()
        assert _processes_running(marker) == []  # none left behind
    finally:
        for pid in _processes_running(marker):
            os.kill(pid, signal.SIGKILL)
