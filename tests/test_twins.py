"""Twins: pairing by layer and name, trainable flags that follow θ, fine-tuning, subclassed networks."""

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import regression_data

_np = keras.ops.convert_to_numpy


def _deep(n_in=16):
    i = keras.Input((n_in,))
    h = i
    for _ in range(3):
        h = keras.layers.Dense(16, activation="relu")(h)
    return keras.Model(i, keras.layers.Dense(1)(h))


def test_freezing_a_layer_in_every_twin_keeps_the_pairing():
    # The reproducer of issue #10: penalties were 101.76 with anchors paired by position.
    m = hta.HomotopyModel.from_model(_deep(), anchor="init")
    for n in m.nets:
        n.layers[1].trainable = False
    anchor, coupling = m.penalties()
    assert float(anchor) == 0.0 and float(coupling) == 0.0
    assert len(m.anchors) == 6  # the four trainable Dense layers' kernels and biases, less the frozen one's


def test_trainable_set_on_the_wrapped_model_reaches_every_twin_at_compile():
    network = _deep()
    m = hta.HomotopyModel.from_model(network, num_groups=3)
    network.layers[2].trainable = False
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    for twin in m.twins:
        assert not twin.layers[2].trainable and twin.layers[1].trainable
    assert len(m.trainable_variables) == 3 * 6


def _backbone_model():
    """A keras.applications-style model: a nested backbone (conv + BatchNorm) and a head."""
    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    backbone = keras.Model(image, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Dense(3)(backbone(inputs))), backbone


def test_two_phase_fine_tuning_recipe():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=32)
    network, backbone = _backbone_model()
    backbone.trainable = False  # phase 1: train the head only
    model = hta.HomotopyModel.from_model(network, anchor="init", homotopy_l=0.1)
    assert float(model.penalties()[0]) == 0.0 and float(model.penalties()[1]) == 0.0
    start = [net.layers[1].get_weights() for net in model.nets]
    head_start = model.network.layers[-1].get_weights()[0]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for net, before in zip(model.nets, start):  # frozen backbone: bit-identical, statistics included
        for got, want in zip(net.layers[1].get_weights(), before):
            np.testing.assert_array_equal(got, want)
    head = [net.layers[-1].get_weights()[0] for net in model.nets]
    assert np.abs(head[0] - head_start).max() > 1e-3 and np.abs(head[0] - head[1]).max() > 0  # the head trains

    backbone.trainable = True  # phase 2: unfreeze, recompile, train everything
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss)
    assert len(model.trainable_variables) == 2 * 6  # conv 2, BN gamma/beta 2, head 2: per twin
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for net, before in zip(model.nets, start):
        kernel = net.layers[1].trainable_weights[0].numpy()
        assert np.abs(kernel - before[0]).max() > 1e-4
    # The backbone joined with its anchor at construction (its initial weights).
    assert len(model.anchors) == 6
    np.testing.assert_array_equal(_np(model.anchors[0]), start[0][0])


@keras.saving.register_keras_serializable(package="test_twins")
class SmallCNN(keras.Model):
    """A subclassed CNN with BatchNorm, written the usual way."""

    def __init__(self, filters=4, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.classes = filters, classes
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")
        self.bn = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.out = keras.layers.Dense(classes)

    def call(self, x, training=False):
        return self.out(self.pool(keras.ops.relu(self.bn(self.conv(x), training=training))))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "classes": self.classes}


class NoConfigCNN(keras.Model):
    """Subclassed without **kwargs or get_config: Keras cannot rebuild it from its config."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3)
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(keras.ops.mean(self.conv(x), axis=(1, 2)))


@pytest.mark.parametrize("how", ["config", "factory"])
def test_subclassed_cnn_with_batchnorm(how, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=16)
    network = SmallCNN()
    network(x[:1])
    factory = (lambda: SmallCNN()) if how == "factory" else None
    model = hta.HomotopyModel.from_model(network, twin_factory=factory, homotopy_l=0.5)
    for a, b in zip(model.network.get_weights(), model.twins[0].get_weights()):
        np.testing.assert_array_equal(a, b)  # η starts as θ
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(model.network.bn.moving_mean.numpy() - model.twins[0].bn.moving_mean.numpy()).max() > 0
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    plain = hta.merge(model)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_subclassed_model_without_config_points_to_twin_factory():
    network = NoConfigCNN()
    network(np.zeros((1, 5, 5, 3), "float32"))
    with pytest.raises(ValueError, match="twin_factory"):
        hta.HomotopyModel.from_model(network)
    model = hta.HomotopyModel.from_model(network, twin_factory=NoConfigCNN)
    assert len(model.twins[0].weights) == len(network.weights)


def test_a_twin_that_does_not_match_names_the_weight():
    network = _deep()
    with pytest.raises(ValueError, match="dense.*kernel"):
        hta.HomotopyModel.from_model(network, twin_factory=lambda: _deep(n_in=8))
