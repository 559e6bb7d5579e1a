"""SavedModel export: served outputs in a process without keras_hta, no HTA state inside."""

import os
import sys
import textwrap

import importlib.util

import numpy as np
import pytest

import keras
import keras_hta as hta
from keras_hta.experiments import cli
from conftest import BACKEND, dense_network, regression_data, run_bounded


@pytest.fixture(autouse=True)
def _needs_a_backend_that_exports():
    if BACKEND == "torch":
        pytest.skip("no SavedModel export on the torch backend: test_backends.py's export tests on torch")
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("SavedModel export needs TensorFlow installed")


def _trained():
    x, y = regression_data(n=32)
    model = hta.HomotopyModel.from_model(dense_network(hidden=6, batch_norm=True), homotopy_l=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    return model, x


def _serve_in_fresh_process(export_dir, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, json, numpy as np, tensorflow as tf
        served = tf.saved_model.load({str(export_dir)!r})
        x = tf.constant(np.load({str(tmp_path / 'x.npy')!r}))
        np.save({str(tmp_path / 'served.npy')!r}, served.serve(x).numpy())
        signature = served.signatures["serving_default"]
        names = list(signature.structured_input_signature[1].keys())
        assert "keras_hta" not in sys.modules
        print(json.dumps({{"variables": len(served.variables), "inputs": names}}))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = run_bounded([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    return np.load(tmp_path / "served.npy"), json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["theta", "average"])
def test_export_serves_the_merged_network_only(tmp_path, how):
    model, x = _trained()
    plain = hta.export_saved_model(model, tmp_path / "served", how=how)
    served, info = _serve_in_fresh_process(tmp_path / "served", x, tmp_path)
    np.testing.assert_allclose(served, plain.predict(x, verbose=0), atol=1e-5)
    if how == "theta":
        np.testing.assert_allclose(served, model.predict(x, verbose=0), atol=1e-5)
    assert info["variables"] == len(plain.weights) == len(model.network.weights)
    input_layer = next(l for l in model.network.layers if isinstance(l, keras.layers.InputLayer))
    assert info["inputs"] == [input_layer.name] and input_layer.name.startswith("input_layer")


def test_export_command_from_a_keras_file(tmp_path, capsys):
    model, x = _trained()
    model.save(tmp_path / "m.keras")
    cli.main(["export", str(tmp_path / "m.keras"), str(tmp_path / "served"), "--how", "eta"])
    assert "Exported" in capsys.readouterr().out
    served, _ = _serve_in_fresh_process(tmp_path / "served", x, tmp_path)
    np.testing.assert_allclose(served, model.twin(1).predict(x, verbose=0), atol=1e-5)
    with pytest.raises(SystemExit):
        cli.main(["export", str(tmp_path / "missing.keras"), str(tmp_path / "out")])


def test_export_command_refuses_a_file_a_full_folder_and_a_missing_twin_before_loading(tmp_path, capsys,
                                                                                       monkeypatch):
    model, x = _trained()
    model.save(tmp_path / "m.keras")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    load_model = keras.models.load_model
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    for path, flags, says in ((tmp_path / "a_file", [], "is a file"),
                              (tmp_path / "full", [], "pass --overwrite"),
                              (tmp_path / "new", ["--how", "2"], "--how 2"),  # twins 0 and 1
                              (tmp_path / "new", ["--how", "sideways"], "--how sideways")):
        with pytest.raises(SystemExit) as info:
            cli.main(["export", str(tmp_path / "m.keras"), str(path)] + flags)
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and says in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()
    monkeypatch.setattr(keras.models, "load_model", load_model)
    cli.main(["export", str(tmp_path / "m.keras"), str(tmp_path / "full"), "--overwrite"])
    assert sorted(os.listdir(tmp_path)) == ["a_file", "full", "m.keras"]  # no temporary folder left
    assert not (tmp_path / "full" / "notes.txt").exists()  # replaced whole, not written among old files
    served, _ = _serve_in_fresh_process(tmp_path / "full", x, tmp_path)
    np.testing.assert_allclose(served, model.predict(x, verbose=0), atol=1e-5)


def test_export_command_without_the_package_a_backend_needs_says_what_to_install_before_loading(
        tmp_path, capsys, monkeypatch):
    """On JAX without TensorFlow the SavedModel cannot be written: one line naming the package, nothing loaded."""
    from keras_hta import backend

    model, _ = _trained()
    model.save(tmp_path / "m.keras")
    monkeypatch.setattr(backend, "BACKEND", "jax")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else find_spec(
        name, *a))
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(SystemExit) as info:
        cli.main(["export", str(tmp_path / "m.keras"), str(tmp_path / "served")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "pip install tensorflow-cpu" in err, err
    assert not (tmp_path / "served").exists()


class _Unregistered(keras.layers.Layer):
    """A layer Keras does not know by name (not registered), as user code defines one."""

    def call(self, x):
        return x * 2.0


def test_export_command_names_a_class_keras_does_not_know_in_one_line(tmp_path, capsys):
    x, y = regression_data(n=16)
    inputs = keras.Input((4,))
    network = keras.Model(inputs, keras.layers.Dense(3)(_Unregistered()(inputs)))
    model = hta.HomotopyModel.from_model(network)
    model.compile(optimizer="sgd", loss="mse")
    model.save(tmp_path / "m.keras")
    with pytest.raises(SystemExit) as info:
        cli.main(["export", str(tmp_path / "m.keras"), str(tmp_path / "served")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "'_Unregistered'" in err, err
    assert "custom_objects" in err and not (tmp_path / "served").exists()


def test_export_command_loads_no_optimizer_and_prints_no_keras_warning(tmp_path, capsys, recwarn):
    """A model compiled but never trained (its optimizer unbuilt, as a tuner's best model) exports without Keras'
    'Skipping variable loading for optimizer' warning: export needs no optimizer."""
    model, x = _trained()
    fresh = hta.HomotopyModel.from_model(dense_network(hidden=6, batch_norm=True), homotopy_l=0.5)
    fresh.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    fresh.set_weights(model.get_weights())
    fresh.save(tmp_path / "m.keras")
    cli.main(["export", str(tmp_path / "m.keras"), str(tmp_path / "served")])
    captured = capsys.readouterr()
    said = captured.out + captured.err + " ".join(str(w.message) for w in recwarn)
    assert "Skipping variable loading" not in said and "Exported" in captured.out
    served, _ = _serve_in_fresh_process(tmp_path / "served", x, tmp_path)
    np.testing.assert_allclose(served, model.predict(x, verbose=0), atol=1e-5)
