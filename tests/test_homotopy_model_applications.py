"""HomotopyModel on models nobody here wrote: keras.applications at minimal size.

Wrap, train two steps, merge, save/load, export, for MobileNetV2, ResNet50
and EfficientNetB0 (`weights=None`, 32x32 inputs).
"""

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import BACKEND

_np = keras.ops.convert_to_numpy

APPLICATIONS = {
    "MobileNetV2": keras.applications.MobileNetV2,
    "ResNet50": keras.applications.ResNet50,
    "EfficientNetB0": keras.applications.EfficientNetB0,
}


@pytest.mark.slow  # 1-2 minutes each on 2 cores
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_wrap_train_merge_save_and_export(name, tmp_path):
    keras.utils.set_random_seed(0)
    network = APPLICATIONS[name](weights=None, input_shape=(32, 32, 3), classes=4)
    model = hta.HomotopyModel.from_model(network, split="layers", homotopy_l=0.05)
    sizes = model.group_sizes()
    total = sum(int(np.prod(v.shape)) for v in network.trainable_weights)
    assert sum(sizes) == total and min(sizes) > 0.3 * total  # balanced at layer boundaries
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 4, size=8)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert float(model.penalties()[1]) > 0  # the twins moved apart
    expected = _np(model(x, training=False))  # eager calls: no more tracing than needed

    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(_np(restored(x, training=False)), expected, atol=1e-5)
    if BACKEND != "tensorflow":  # SavedModel export and serving: tests/test_export.py on JAX
        np.testing.assert_allclose(hta.merge(model).predict(x, verbose=0), expected, atol=1e-5)
        return
    import tensorflow as tf

    hta.export_saved_model(model, str(tmp_path / "served"))  # merges θ into a plain model
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(x).numpy(), expected, atol=1e-4)


def test_a_frozen_trunk_under_a_new_head_trains_only_the_head_in_every_twin(tmp_path):
    """keras.applications' transfer-learning recipe: the trunk exists once and stays as it was in every twin."""
    keras.utils.set_random_seed(1)
    trunk = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                           pooling="avg")
    trunk.trainable = False
    inputs = keras.Input((32, 32, 3))
    network = keras.Model(inputs, keras.layers.Dense(4, name="head")(trunk(inputs, training=False)))
    frozen = [_np(v) for v in trunk.variables]
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1, anchor="init")
    head = network.get_layer("head")
    assert [network.variables[p].path for p in model.twin_state.twinned()] == [v.path for v in head.weights]
    assert model.twin_state.copied_state() == []  # a frozen BatchNormalization's statistics do not move
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 4, size=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    for k in range(2):
        for v, want in zip(trunk.variables, frozen):
            assert model.twin(k).variable(v) is v
            np.testing.assert_array_equal(_np(v), want)
    assert np.abs(_np(model.twin(1).variable(head.kernel)) - _np(head.kernel)).max() > 0  # the heads train apart
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    for k in range(2):
        np.testing.assert_allclose(restored.twin(k).predict(x), model.twin(k).predict(x), atol=1e-5)
