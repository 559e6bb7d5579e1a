"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train a
HomotopyModel; both finish with equal weights, equal to one process on the
same global batch. And a check that tells when Keras fixes the bug our
workaround covers (keras-team/keras#20585)."""

import pytest
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
from conftest import communicate_bounded, run_bounded

pytestmark = [pytest.mark.harness, pytest.mark.tensorflow_only]  # run once, in the TensorFlow pass (tests/conftest.py)


HERE = pathlib.Path(__file__).resolve().parent


def _free_ports(n):
    """n free ports on 127.0.0.1, as `examples/multi_process.py` finds them for its workers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("multi_process", HERE.parent / "examples" / "multi_process.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example._free_ports(n)


def _launch(argv_for):
    """Starts two workers of one cluster on 127.0.0.1; returns [(returncode, stderr)]."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(HERE.parent))
        procs.append(subprocess.Popen([sys.executable, *argv_for(index)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    results = []
    try:
        for proc in procs:
            # Two workers wait on each other: one that died leaves the other waiting for ever, so the bound
            # for a hang is shorter here than HANG_S (a run takes about a minute).
            _, err = communicate_bounded(proc, bound=1200)
            results.append((proc.returncode, err))
    finally:
        for p in procs:
            p.kill()  # no orphan left when one fails
    return results


def _run_workers(tmp_path, name, *extra):
    return _launch(lambda index: [str(HERE / "fit_worker.py"), str(tmp_path / f"{name}{index}"),
                                  "--multi-worker", "--epochs", "3", *extra])


def _weights(path):
    arrays = np.load(path)
    return [arrays[k] for k in arrays.files]


def test_two_workers_agree_and_equal_one_process(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(HERE.parent))
    single = run_bounded([sys.executable, str(HERE / "fit_worker.py"), str(tmp_path / "single"), "--epochs", "3"],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    for code, err in _run_workers(tmp_path, "worker"):
        assert code == 0, err[-3000:]
    w0, w1, one = (_weights(tmp_path / f"{n}.npz") for n in ("worker0", "worker1", "single"))
    assert len(w0) == len(one)
    for a, b, c in zip(w0, w1, one):
        np.testing.assert_allclose(a, b, atol=1e-6)  # the workers agree
        np.testing.assert_allclose(a, c, atol=1e-5)  # and equal one process, global batch 8
    history = json.loads((tmp_path / "worker0.json").read_text())["history"]
    np.testing.assert_allclose(history["homotopy_l"], [0.5, 0.4, 0.3], rtol=1e-6)


def test_upstream_keras_still_needs_the_workaround(tmp_path):
    results = _run_workers(tmp_path, "plain", "--plain", "--no-patch")
    if all(code == 0 for code, _ in results):
        raise AssertionError(
            "Plain Keras now trains under MultiWorkerMirroredStrategy without keras_hta's workaround: "
            "keras-team/keras#20585 is fixed in this Keras; remove the patch in keras_hta/compat.py."
        )
    assert any("PerReplica" in err or "reduction dimension" in err for _, err in results)


def test_compare_multi_worker_command(tmp_path):
    argv = ["-m", "keras_hta.experiments.cli", "compare", "--multi-worker", "--model", "mlp", "--epochs", "1", "--seeds", "0",
            "--train-size", "256", "--test-size", "128", "--verbose", "0", "--out", str(tmp_path)]
    for code, err in _launch(lambda index: argv):
        assert code == 0, err[-3000:]
    chief = json.loads((tmp_path / "results.json").read_text())
    other = json.loads((tmp_path / "worker1" / "results.json").read_text())
    assert [r["arm"] for r in chief["runs"]] == ["sgd", "hta"]
    for a, b in zip(chief["runs"], other["runs"]):
        assert a["test_error"] == b["test_error"]  # same model on both workers


def test_the_workaround_replaces_only_the_code_it_was_checked_against(monkeypatch):
    import warnings

    from keras.src.backend.tensorflow import trainer as tf_trainer

    from keras_hta import compat

    # The installed Keras is the one checked: every function has the recorded source.
    assert compat.changed_sources(tf_trainer) == []
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):  # the same name, other code: a Keras that changed it
        return original(values, strategy, reduction)

    monkeypatch.setattr(tf_trainer, "reduce_per_replica", reduce_per_replica)
    monkeypatch.setattr(compat, "_PATCHED", False)
    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compat.patch_keras() is False
    assert tf_trainer.reduce_per_replica is reduce_per_replica  # left as Keras has it
    assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is build
    assert [str(w.message) for w in caught] == [
        f"keras_hta.multi_worker_strategy: in Keras {keras.__version__}, reduce_per_replica is missing or not the code the "
        "workaround for keras-team/keras#20585 was checked against, so it is not installed; training runs with Keras "
        "as it is."]
    assert compat.source_hash(reduce_per_replica) != compat.CHECKED_SOURCES["reduce_per_replica"]
