"""HomotopyModel persistence: .keras round trips and resumed fit (SavedModel: test_export.py)."""


import numpy as np
import pytest

import keras
import keras_hta as hta
from keras_hta import compat
from conftest import dense_network, regression_data


def _build(split="channels"):
    keras.utils.set_random_seed(7)
    model = hta.HomotopyModel.from_model(
        dense_network(hidden=6, batch_norm=True), split=split, anchor="init", homotopy_l=0.5
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse", metrics=["mae"])
    return model


def _schedule():
    return hta.HomotopyScheduler(hta.schedules.Linear(0.5, 0.1, -0.1))


def _all_weights(model):
    return [w.numpy() for w in model.weights]


def test_fit_continued_after_reload_equals_uninterrupted_run(tmp_path):
    x, y = regression_data(n=48)
    fit = dict(batch_size=16, shuffle=False, verbose=0)
    reference = _build()
    ref_history = reference.fit(x, y, epochs=4, callbacks=[_schedule()], **fit)

    model = _build()
    model.fit(x, y, epochs=2, callbacks=[_schedule()], **fit)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert int(restored.homotopy_epoch.numpy()) == 2
    history = restored.fit(x, y, epochs=2, callbacks=[_schedule()], **fit)

    np.testing.assert_allclose(history.history["homotopy_l"], ref_history.history["homotopy_l"][2:], rtol=1e-6)
    assert len(restored.weights) == len(reference.weights)
    for got, want in zip(_all_weights(restored), _all_weights(reference)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    for got, want in zip(restored.optimizer.variables, reference.optimizer.variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def test_save_right_after_fit_keeps_every_weight(tmp_path):
    x, y = regression_data()
    model = _build(split=lambda v: np.arange(np.prod(v.shape)).reshape(v.shape) % 2 == 0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.split == "custom" and restored.num_groups == 2
    for got, want in zip(_all_weights(restored), _all_weights(model)):
        np.testing.assert_array_equal(got, want)  # masks and anchors included
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    config = restored.get_config()
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(restored)
    ).get_config() == config


@pytest.mark.parametrize("scheduler_first", [True, False])
def test_checkpoint_weights_bring_back_their_l_and_schedule_position(tmp_path, scheduler_first):
    # A weights file is a full snapshot: load_weights restores L and the
    # schedule position saved with it (what BackupAndRestore relies on), in
    # either callback order.
    x, y = regression_data(n=48)
    model = _build()
    path = str(tmp_path / "best.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(path, monitor="homotopy_l", mode="max", save_best_only=True,
                                                 save_weights_only=True)
    callbacks = [_schedule(), checkpoint] if scheduler_first else [checkpoint, _schedule()]
    model.fit(x, y, epochs=4, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks)
    assert float(model.homotopy_l.numpy()) == pytest.approx(0.2)  # epochs 0..3: L 0.5 0.4 0.3 0.2
    model.load_weights(path)  # the best epoch by the monitor: the first
    assert float(model.homotopy_l.numpy()) == pytest.approx(0.5)
    assert int(model.homotopy_epoch.numpy()) == 1  # saved at the end of epoch 0


@keras.saving.register_keras_serializable(package="keras_hta_tests")
class Trunk(keras.Model):
    """A Functional subclass that builds its graph in `__init__`, as keras-hub's backbones do."""

    def __init__(self, units=6, **kwargs):
        inputs = {"a": keras.Input((4,), name="a"), "b": keras.Input((4,), name="b")}
        hidden = keras.layers.Dense(units, name="mix")(keras.layers.Concatenate()([inputs["a"], inputs["b"]]))
        super().__init__(inputs=inputs, outputs=keras.layers.Dense(5, name="trunk_out")(hidden), **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_lora_and_frozen_layers_of_a_head_on_another_models_inputs_reload_on_the_same_layers(tmp_path):
    """A head built on a trunk's own inputs (`keras.Model(trunk.input, head(trunk(trunk.input)))`, as keras-hub's
    guides build one on a backbone): the reloaded network lists the trunk's input layers once more, so layers
    saved by position would shift; saved by path, LoRA and the frozen flags land where they were."""
    keras.utils.set_random_seed(3)
    trunk = Trunk(name="trunk")
    trunk.get_layer("mix").enable_lora(2)
    trunk.get_layer("trunk_out").trainable = False
    head = keras.layers.Dense(3, name="head")
    network = keras.Model(trunk.input, keras.layers.Softmax()(head(trunk(trunk.input))))
    head.enable_lora(2)  # after the trunk's input layers in the flattened list: by position, it would shift
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(16, 4)).astype("float32"), "b": rng.normal(size=(16, 4)).astype("float32")}
    y = rng.integers(0, 3, 16)
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.2)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    # The trunk's input layers, listed once more: every position after them would shift.
    assert len(compat.all_layers(restored.network)) > len(compat.all_layers(network))
    flags = lambda net: [(v.path.split("/")[-1], v.trainable) for v in net.variables]  # noqa: E731
    assert flags(restored.network) == flags(network)
    lora = lambda net: [layer.name for layer in compat.all_layers(net) if getattr(layer, "lora_enabled", 0)]  # noqa: E731
    assert lora(restored.network) == lora(network) == ["mix", "head"]
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(restored.twin(1).predict(x), model.twin(1).predict(x), atol=1e-6)
