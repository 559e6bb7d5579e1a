"""Networks written the way Keras' own guides write them, wrapped as they are, trained, merged, saved and exported.

From "Making new layers and models via subclassing" and "Customizing what
happens in fit()": a custom layer whose `__init__` takes no `**kwargs` and
whose weights have no names, a block holding its sublayers as attributes
(no `get_config`), a subclassed model whose layers are made in `__init__`
(no config either), a sublayer frozen inside a custom layer, a subclassed
model that takes a layer object, a model whose loss is an `add_loss`, and a
model with its own `train_step`.
"""

import importlib.util
import warnings

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import BACKEND
from keras import ops

_np = ops.convert_to_numpy


@keras.saving.register_keras_serializable(package="guide")
class CustomDense(keras.layers.Layer):
    """As in the subclassing guide: no `**kwargs`, no weight names, get_config returns `units` only."""

    def __init__(self, units=32):
        super().__init__()
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True)
        self.b = self.add_weight(shape=(self.units,), initializer="random_normal", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b

    def get_config(self):
        return {"units": self.units}


class Net(keras.Model):
    """A subclassed model that takes a layer object: its config cannot rebuild it."""

    def __init__(self, body):
        super().__init__()
        self.body = body
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(self.body(x))


@keras.saving.register_keras_serializable(package="guide")
class ActivityPenalty(keras.layers.Layer):
    """A layer whose loss is an add_loss of its activations (the guide's ActivityRegularizationLayer)."""

    def __init__(self, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * ops.mean(ops.square(inputs)))
        return inputs

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class OwnStep(keras.Model):
    """As in the 'customizing fit' guide: a Functional-style model with its own train_step."""

    def train_step(self, data):  # pragma: no cover - HTA replaces it (and says so)
        raise AssertionError("HTA must not call the network's train_step")


def _data(n=32, n_in=4, n_out=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)).astype("float32"), rng.normal(size=(n, n_out)).astype("float32")


def _fit(model, x, y, loss="mse"):
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    return model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)


def _export_if_possible(model, path, x):
    if BACKEND == "torch" or importlib.util.find_spec("tensorflow") is None:
        return  # tests/test_backends.py: what export says on torch
    plain = hta.export_saved_model(model, path)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_custom_layer_without_kwargs_and_unnamed_weights(tmp_path):
    x, y = _data()
    inputs = keras.Input((4,))
    network = keras.Model(inputs, CustomDense(2)(keras.layers.Activation("tanh")(CustomDense(5)(inputs))))
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1)
    assert [w.name for w in model.network.weights] != [w.name for w in model.twin(1).weights]  # numbered apart
    history = _fit(model, x, y)
    assert np.all(np.isfinite(history.history["loss"])) and float(model.penalties()[1]) > 0
    np.testing.assert_allclose(hta.merge(model).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(restored.twin(1).predict(x, verbose=0), model.twin(1).predict(x, verbose=0),
                               atol=1e-6)
    _export_if_possible(model, str(tmp_path / "served"), x)


class Linear(keras.layers.Layer):
    """The subclassing guide's `Linear`: no `**kwargs`, no `get_config`."""

    def __init__(self, units=32):
        super().__init__()
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True)
        self.b = self.add_weight(shape=(self.units,), initializer="random_normal", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


class MLPBlock(keras.layers.Layer):
    """The guide's block: sublayers kept as attributes, nothing to rebuild it from."""

    def __init__(self):
        super().__init__()
        self.linear_1 = Linear(8)
        self.linear_2 = Linear(8)
        self.linear_3 = Linear(2)

    def call(self, inputs):
        x = ops.relu(self.linear_1(inputs))
        x = ops.relu(self.linear_2(x))
        return self.linear_3(x)


class GuideModel(keras.Model):
    """A subclassed model whose layers are made in `__init__` (no `**kwargs`, no `get_config`)."""

    def __init__(self):
        super().__init__()
        self.block = MLPBlock()
        self.dropout = keras.layers.Dropout(0.25, seed=1)

    def call(self, inputs, training=False):
        return self.block(self.dropout(inputs, training=training))


def _twin_outputs_equal_the_network_carrying_their_weights(model, x):
    for k in range(model.num_groups):
        own = model.network.get_weights()
        model.network.set_weights(model.twin(k).get_weights())
        want = _np(model.network(x, training=False))
        model.network.set_weights(own)
        np.testing.assert_array_equal(_np(model.twin(k)(x)), want)


def test_guide_block_and_subclassed_model_wrap_as_they_are(tmp_path):
    x, y = _data()
    network = GuideModel()
    network(x[:1])
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1)
    assert len(model.trainable_variables) == 2 * 6  # θ's and η's weights of the three Linear layers
    history = _fit(model, x, y)
    assert np.all(np.isfinite(history.history["loss"])) and float(model.penalties()[1]) > 0
    _twin_outputs_equal_the_network_carrying_their_weights(model, x)
    # Keras cannot copy it: merge says so in one line and leaves θ as it was, unless asked to write into it.
    eta, theta = model.twin(1).predict(x), model.network.get_weights()
    with pytest.raises(ValueError, match="cannot copy the network.*in_place=True") as raised:
        hta.merge(model, how="eta")
    assert "\n" not in str(raised.value)
    for now, before in zip(model.network.get_weights(), theta):
        np.testing.assert_array_equal(now, before)
    _export_if_possible(model, str(tmp_path / "served"), x)  # θ: the network itself, which Keras exports as it is
    plain = hta.merge(model, how="eta", in_place=True)
    assert plain is model.network
    np.testing.assert_allclose(plain.predict(x, verbose=0), eta, atol=1e-6)
    with pytest.raises(ValueError, match="GuideModel has no get_config.*takes no \\*\\*kwargs.*save_weights"):
        model.save(tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()
    model.save_weights(tmp_path / "m.weights.h5")  # the weights save whatever the class
    again = GuideModel()
    again(x[:1])
    again = hta.HomotopyModel.from_model(again, homotopy_l=0.1)
    again.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(again.twin(1).predict(x), model.twin(1).predict(x))


def test_a_sublayer_frozen_inside_a_custom_layer_stays_unchanged_in_every_twin():
    x, y = _data()
    network = GuideModel()
    network(x[:1])
    network.block.linear_2.trainable = False
    frozen = [_np(v) for v in network.block.linear_2.weights]
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1, anchor="init")
    assert len(model.anchors) == 4 and len(model.twin_state.twinned()) == 4
    _fit(model, x, y)
    for k in range(2):
        for v, want in zip(network.block.linear_2.weights, frozen):
            assert model.twin(k).variable(v) is v  # one variable, shared
            np.testing.assert_array_equal(_np(v), want)
    assert np.abs(_np(model.twin(1).variable(network.block.linear_1.w)) - _np(network.block.linear_1.w)).max() > 0


def test_subclassed_model_taking_a_layer_object(tmp_path):
    x, y = _data()
    network = Net(keras.layers.Dense(6, activation="tanh"))
    network(x[:1])
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1)
    _fit(model, x, y)
    _twin_outputs_equal_the_network_carrying_their_weights(model, x)
    with pytest.raises(ValueError, match="Net has no get_config.*needs body"):
        model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    again = Net(keras.layers.Dense(6, activation="tanh"))
    again(x[:1])
    again = hta.HomotopyModel.from_model(again, homotopy_l=0.1)
    again.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_subclassed_network_rebuilt_from_config_exports(tmp_path):
    """The README's SmallNet shape: a subclassed model with a config; its merged copy is called before export."""

    @keras.saving.register_keras_serializable(package="guide")
    class SmallNet(keras.Model):
        def __init__(self, units=6, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.hidden = keras.layers.Dense(units, activation="relu")
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    x, y = _data()
    network = SmallNet()
    network(x[:1])
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1)
    _fit(model, x, y)
    np.testing.assert_allclose(hta.merge(model).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    _export_if_possible(model, str(tmp_path / "served"), x)


@pytest.mark.parametrize("loss", ["mse", None])
def test_add_loss_model_each_twin_takes_its_own_add_loss(loss):
    """f of each twin: the compiled loss (none: the add_loss term alone) plus that twin's own add_loss term."""
    x, y = _data()
    inputs = keras.Input((4,))
    network = keras.Model(inputs, keras.layers.Dense(2)(ActivityPenalty(0.5)(keras.layers.Dense(5)(inputs))))
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.5)
    model.twin(1).set_weights([w * 2.0 for w in model.twin(1).get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    history = model.fit(x, None if loss is None else y, batch_size=32, epochs=1, verbose=0)
    want = []
    for k, key in ((0, "f_theta"), (1, "f_eta")):
        hidden = _np(hta.merge(model, how=k).layers[1](x))
        want.append(0.5 * np.mean(hidden**2) + (np.mean((model.twin(k).predict(x) - y) ** 2) if loss else 0.0))
        np.testing.assert_allclose(history.history[key][0], want[k], rtol=1e-5, err_msg=key)
    assert abs(history.history["f_theta"][0] - history.history["f_eta"][0]) > 0.1
    evaluated = model.evaluate(x, None if loss is None else y, batch_size=32, verbose=0)  # θ's f
    np.testing.assert_allclose(evaluated, want[0], rtol=1e-5)


def test_a_network_with_its_own_train_step_is_wrapped_with_a_warning():
    x, y = _data()
    inputs = keras.Input((4,))
    network = OwnStep(inputs, keras.layers.Dense(2)(inputs))
    with pytest.warns(UserWarning, match="defines its own train_step"):
        model = hta.HomotopyModel.from_model(network, homotopy_l=0.5)
    model.twin(1).set_weights([w + 0.5 for w in model.twin(1).get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # HTA's step, not the network's (which raises)
    for k, key in ((0, "f_theta"), (1, "f_eta")):  # each twin's f: the compiled loss on its own weights
        want = np.mean((model.twin(k).predict(x, verbose=0) - y) ** 2)
        np.testing.assert_allclose(history.history[key][0], want, rtol=1e-5, err_msg=key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = keras.Input((4,))
        hta.HomotopyModel.from_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))  # a plain one: no warning
    assert not [w for w in caught if "defines its own" in str(w.message)]


def test_legacy_h5_is_refused_before_any_work_and_keras_files_work(tmp_path):
    x, y = _data()
    inputs = keras.Input((4,))
    model = hta.HomotopyModel.from_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)), anchor="init")
    model.compile(optimizer="sgd", loss="mse")
    start = [np.array(w) for w in model.weights]
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.h5"))
    with pytest.raises(ValueError, match=r"\.keras format only.*ModelCheckpoint\(filepath=...\)='.*best\.h5'"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[checkpoint])
    for a, b in zip(start, model.weights):  # refused before training
        np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(ValueError, match=r"Use a '\.keras' path"):
        model.save(tmp_path / "m.h5")
    assert not list(tmp_path.iterdir())
    model.fit(x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras")),
                                                   keras.callbacks.ModelCheckpoint(str(tmp_path / "w.weights.h5"),
                                                                                   save_weights_only=True)])
    restored = keras.models.load_model(tmp_path / "best.keras")
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
