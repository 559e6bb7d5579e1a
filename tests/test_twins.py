"""Twins: one network, and per twin a variable for each weight it trains and for each piece of state.

The rule (keras_hta/twins.py): a twin has its own variable for every weight
the network trains (at construction or a later compile) and for every
variable the network's layers create non-trainable (BatchNorm statistics,
seed states); frozen weights exist once. Each twin's forward pass is the
network carrying that twin's weights.
"""

import warnings

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import BACKEND, regression_data, twin_views

_np = keras.ops.convert_to_numpy


def _deep(n_in=16):
    i = keras.Input((n_in,))
    h = i
    for _ in range(3):
        h = keras.layers.Dense(16, activation="relu")(h)
    return keras.Model(i, keras.layers.Dense(1)(h))


def _values(model, k):
    """Every variable twin k computes with (weights, statistics, seed states), as arrays."""
    return [_np(v) for v in model.twin_state.twin_variables(k, model.network.variables)]


def _set_values(model, k, values):
    for v, value in zip(model.twin_state.twin_variables(k, model.network.variables), values):
        v.assign(value)


def _carrying(model, k, fn):
    """`fn()` with the network carrying all of twin k's variables, then its own back."""
    own = _values(model, 0)
    _set_values(model, 0, _values(model, k))
    try:
        return fn()
    finally:
        _set_values(model, 0, own)


def _mixed_network():
    """Dense → BatchNorm → Dropout → a frozen Dense → Dense: every kind of variable a twin may or may not copy."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(6, name="d1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.5, seed=3, name="drop")(h)  # seeded: the seed-generator path on every backend
    frozen = keras.layers.Dense(4, activation="tanh", name="frozen")
    h = frozen(h)
    frozen.trainable = False
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(h))


def test_the_rule_twinned_weights_and_state_per_twin_frozen_weights_once():
    network = _mixed_network()
    model = hta.HomotopyModel.from_model(network, num_groups=3, anchor="init")
    eta = model.twin(1)
    by_path = {v.path: v for v in network.variables}
    own = {path for path, v in by_path.items() if eta.variable(v) is not v}
    seed = [v for v in network.variables if "seed_generator" in v.path]
    assert len(seed) == 1
    assert own == {"d1/kernel", "d1/bias", "bn/gamma", "bn/beta", "out/kernel", "out/bias",  # trained
                   "bn/moving_mean", "bn/moving_variance", seed[0].path}  # state
    for path in ("frozen/kernel", "frozen/bias"):  # frozen: shared, the network's own variable
        assert eta.variable(by_path[path]) is by_path[path]
    # Twins and anchors of trained weights, state per twin; nothing for the frozen Dense.
    trained = sum(int(np.prod(v.shape)) for v in network.trainable_variables)
    state = sum(int(np.prod(v.shape)) for v in network.non_trainable_variables if not v.path.startswith("frozen"))
    extra = sum(int(np.prod(v.shape)) for v in model.twin_state.weights)
    assert extra == 2 * trained + 2 * state + trained  # two twins, two copies of the state, one anchor each
    # The seed state is folded with the twin's index: each twin its own stream.
    seeds = [_np(model.twin(k).variable(seed[0])) for k in range(3)]
    assert len({tuple(s.tolist()) for s in seeds}) == 3 and all(s[1] == seeds[0][1] for s in seeds)


@pytest.mark.parametrize("training", [False, True])
def test_each_twin_computes_as_the_network_carrying_its_weights(training):
    network = _mixed_network()
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.5)
    rng = np.random.default_rng(0)
    model.twin(1).set_weights([w + rng.normal(scale=0.1, size=w.shape).astype(w.dtype)
                               if w.dtype.kind == "f" else w for w in model.twin(1).get_weights()])
    x = rng.normal(size=(8, 5)).astype("float32")
    for k in range(2):
        state_before = _values(model, k)
        got = _np(model.twin(k)(x, training=training))
        state_after = _values(model, k)
        _set_values(model, k, state_before)  # the same state (BN, seeds) for the network's own call
        want = _carrying(model, k, lambda: (_np(network(x, training=training)), _values(model, 0)))
        np.testing.assert_array_equal(got, want[0])
        for a, b in zip(state_after, want[1]):  # and the same updated state
            np.testing.assert_array_equal(a, b)


def test_batchnorm_statistics_move_per_twin():
    x, y = regression_data(n=16, n_in=5, n_out=2)
    model = hta.HomotopyModel.from_model(_mixed_network(), homotopy_l=0.5)
    model.twin(1).set_weights([w * 1.5 if w.dtype.kind == "f" else w for w in model.twin(1).get_weights()])
    bn = model.network.get_layer("bn")
    pre_bn = keras.Model(model.network.input, model.network.get_layer("d1").output)
    want = []
    for k in range(2):
        h = _carrying(model, k, lambda: _np(pre_bn(x)))
        old = _np(model.twin(k).variable(bn.moving_mean))
        want.append(bn.momentum * old + (1 - bn.momentum) * h.mean(0))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # weights still; statistics move
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for k in range(2):
        np.testing.assert_allclose(_np(model.twin(k).variable(bn.moving_mean)), want[k], rtol=1e-5, atol=1e-6)
    assert np.abs(want[0] - want[1]).max() > 1e-3  # the twins' statistics differ


def test_dropout_masks_differ_between_twins_and_repeat_for_a_seed():
    x = np.ones((64, 5), "float32")
    outputs = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        inputs = keras.Input((5,))
        network = keras.Model(inputs, keras.layers.Dropout(0.5)(keras.layers.Dense(5, kernel_initializer="ones")(inputs)))
        model = hta.HomotopyModel.from_model(network)
        outputs.append([_np(model.twin(k)(x, training=True)) for k in range(2)])
    dropped = [out == 0 for out in outputs[0]]
    assert 0.3 < dropped[0].mean() < 0.7 and 0.3 < dropped[1].mean() < 0.7
    assert (dropped[0] != dropped[1]).mean() > 0.3  # their own masks
    for a, b in zip(*outputs):  # the same masks from the same seed
        np.testing.assert_array_equal(a, b)


def test_freezing_a_layer_after_wrapping_keeps_its_twins_out_of_training():
    m = hta.HomotopyModel.from_model(_deep(), anchor="init")
    m.network.layers[1].trainable = False
    anchor, coupling = m.penalties()
    assert float(anchor) == 0.0 and float(coupling) == 0.0
    assert len(m.anchors) == 6  # the four Dense layers' kernels and biases, less the frozen one's
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    assert len(m.trainable_variables) == 2 * 6  # θ's and η's: the frozen layer's twin does not train
    x, y = regression_data(n=16, n_in=16, n_out=1)
    before = m.twin(1).get_weights()[:2]
    m.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(before, m.twin(1).get_weights()[:2]):
        np.testing.assert_array_equal(a, b)


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
    assert model.twin_state.twinned() == [len(backbone.variables), len(backbone.variables) + 1]  # the head only
    start = [_np(v) for v in backbone.variables]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for k in range(2):  # frozen backbone (inference-mode BatchNorm): every twin's, statistics included
        for v, want in zip(backbone.variables, start):
            np.testing.assert_array_equal(_np(model.twin(k).variable(v)), want)
    head = [model.twin(k).get_weights()[-2] for k in range(2)]
    assert np.abs(head[0] - head[1]).max() > 0  # the head trains, twin by twin
    statistics = backbone.layers[2].moving_mean
    assert model.twin(1).variable(statistics) is statistics  # a frozen layer's state: shared

    backbone.trainable = True  # phase 2: unfreeze, recompile, train everything
    unfrozen = [_np(v) for v in backbone.trainable_variables]
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss)
    assert len(model.trainable_variables) == 2 * 6  # conv 2, BN gamma/beta 2, head 2: per twin
    assert len(model.anchors) == 6
    assert model.twin(1).variable(statistics) is not statistics  # its state is each twin's now
    for a, want in zip(model.anchors, unfrozen):  # joined with its value at this compile ("init")
        np.testing.assert_array_equal(_np(a), want)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for k in range(2):
        kernel = _np(model.twin(k).variable(backbone.trainable_variables[0]))
        assert np.abs(kernel - start[0]).max() > 1e-4


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


def test_subclassed_cnn_with_batchnorm(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=16)
    network = SmallCNN()
    network(x[:1])
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.5)
    for a, b in zip(model.network.get_weights(), model.twin(1).get_weights()):
        np.testing.assert_array_equal(a, b)  # η starts as θ
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(_np(model.network.bn.moving_mean) - _np(model.twin(1).variable(model.network.bn.moving_mean))).max() > 0
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(restored.twin(1).predict(x), model.twin(1).predict(x), atol=1e-6)
    plain = hta.merge(model, how="eta")
    assert isinstance(plain, SmallCNN)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.twin(1).predict(x), atol=1e-6)


def test_twin_factory_is_ignored_with_a_deprecation_warning():
    network = SmallCNN()
    network(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.warns(DeprecationWarning, match="twin_factory.*ignored"):
        model = hta.HomotopyModel.from_model(network, twin_factory=lambda: SmallCNN())
    assert len(model.twin_state.twins) == 1


def test_weights_unfrozen_later_join_with_their_value_then():
    x, y = regression_data(n=16, n_in=16, n_out=1)
    network = _deep()
    network.layers[1].trainable = False
    model = hta.HomotopyModel.from_model(network, anchor="init", split="random", seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    network.layers[1].set_weights([w + 1.0 for w in network.layers[1].get_weights()])  # moved since construction
    value = [_np(v) for v in network.layers[1].weights]
    network.layers[1].trainable = True
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    kernel = network.layers[1].kernel
    np.testing.assert_array_equal(_np(model.twin(1).variable(kernel)), value[0])
    np.testing.assert_array_equal(_np(model.anchors[0]), value[0])
    group = _np(model.twin_state.groups([0])[0])
    assert group.shape == tuple(kernel.shape) and set(np.unique(group)) == {0, 1}
    model.fit(x, y, epochs=1, verbose=0)
    assert np.abs(_np(model.twin(1).variable(kernel)) - value[0]).max() > 0


def test_a_network_changed_after_wrapping_is_refused_at_compile():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3)
    model = hta.HomotopyModel(inputs, dense(inputs))
    dense.enable_lora(2)
    with pytest.raises(ValueError, match="enable_lora.*before wrapping"):
        model.compile(optimizer="sgd", loss="mse")


def test_torch_module_wrapper_is_refused_naming_the_layer():
    if BACKEND != "torch":
        pytest.skip("TorchModuleWrapper: the torch backend")
    import torch

    network = keras.Sequential([keras.layers.TorchModuleWrapper(torch.nn.Linear(4, 2), name="linear")])
    network(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="'linear' \\(TorchModuleWrapper\\)"):
        hta.HomotopyModel.from_model(network)


def test_views_read_like_models():
    model = hta.HomotopyModel.from_model(_deep(), num_groups=3)
    views = twin_views(model)
    assert [v.name for v in views] == ["theta", "eta1", "eta2"]
    with pytest.raises(ValueError, match="k=3"):
        model.twin(3)
    with pytest.raises(ValueError, match="3 arrays"):
        model.twin(1).set_weights([np.zeros(1)] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from reading a view
        assert len(views[2].trainable_weights) == len(model.network.trainable_weights)


def _lora_mlp(layer):
    """Keras' own LoRA on a small stack: `Dense.enable_lora` or `EinsumDense.enable_lora`, then a new head."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((6,))
    make = {"Dense": lambda: keras.layers.Dense(8, activation="tanh"),
            "EinsumDense": lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=8, bias_axes="c",
                                                            activation="tanh")}[layer]
    body = [make(), make()]
    h = inputs
    for dense in body:
        h = dense(h)
    network = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    for dense in body:
        dense.enable_lora(2)
    return network


@pytest.mark.parametrize("layer", ["Dense", "EinsumDense"])
def test_keras_lora_trains_only_lora_weights_and_the_head_in_every_twin(layer, tmp_path):
    x, y = regression_data(n=16, n_in=6, n_out=2)
    network = _lora_mlp(layer)
    trained = [v.path for v in network.trainable_variables]
    assert sum("lora" in p for p in trained) == 4
    base = {v.path: _np(v) for v in network.variables if v.path not in trained}
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1, anchor="init")
    # Twins and anchors for the trained weights only: the base kernels exist once.
    assert [network.variables[p].path for p in model.twin_state.twinned()] == trained
    assert sum(int(np.prod(v.shape)) for v in model.twin_state.weights) == 2 * sum(
        int(np.prod(v.shape)) for v in network.trainable_variables)
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for k in range(2):
        for v in network.variables:
            if v.path in base:
                assert model.twin(k).variable(v) is v  # one variable
                np.testing.assert_array_equal(_np(v), base[v.path])
    moved = [np.abs(_np(model.twin(k).variable(v)) - _np(a)).max()
             for k in range(2) for v, a in zip(network.trainable_variables, model.anchors)]
    assert min(moved) > 0  # every LoRA weight and the head moved in θ and in η
    model.save(tmp_path / "lora.keras")
    restored = keras.models.load_model(tmp_path / "lora.keras")
    # Keras saves each LoRA kernel with θ's update merged into it; the twin state saves the base kernel as it is,
    # so every variable loads to the bit and every twin computes exactly as before.
    for v, w in zip(restored.network.variables, network.variables):
        np.testing.assert_array_equal(_np(v), _np(w), err_msg=v.path)
    for k in range(2):
        np.testing.assert_array_equal(restored.twin(k).predict(x), model.twin(k).predict(x))
        for v, w in zip(restored.network.trainable_variables, network.trainable_variables):
            np.testing.assert_array_equal(_np(restored.twin(k).variable(v)), _np(model.twin(k).variable(w)))
    assert [v.path for v in restored.network.trainable_variables] == trained


def test_float8_scales_stay_thetas_and_every_twin_computes_with_them():
    """`quantize("float8")`: the scales Keras overwrites with their gradient exist once (θ's step sets them)."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras: "InputLayer does not have a `quantize` method"
        network.quantize("float8")
    scales = [v for v in network.variables if getattr(v, "overwrite_with_gradient", False)]
    assert scales
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.5)
    twinned = [network.variables[p] for p in model.twin_state.twinned()]
    shared = {id(v) for v in scales}
    assert [v.path for v in twinned] == [v.path for v in network.trainable_variables if id(v) not in shared]
    assert all(model.twin(1).variable(v) is v for v in scales)
    x, y = regression_data(n=16, n_in=8, n_out=4)
    before = [_np(v) for v in scales]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert any(not np.array_equal(_np(v), b) for v, b in zip(scales, before))  # θ's amax history moved
    for k in range(2):  # each twin is the network carrying its weights, with θ's scales
        got = _np(model.twin(k)(x, training=False))
        np.testing.assert_array_equal(got, _carrying(model, k, lambda: _np(network(x, training=False))))


def test_masking_holds_in_every_twin():
    """An Embedding with `mask_zero` under a pooling that honours the mask: padding changes no twin's output."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(20, 6, mask_zero=True)(inputs)
    network = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h)))
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.5)
    model.twin(1).set_weights([w * 1.5 for w in model.twin(1).get_weights()])
    tokens = np.array([[3, 7, 5, 0, 0, 0], [9, 2, 0, 0, 0, 0]], "int32")
    outputs = []
    for k in range(2):
        padded = _np(model.twin(k)(tokens, training=True))
        np.testing.assert_allclose(padded[0], _np(model.twin(k)(tokens[:1, :3]))[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(padded[1], _np(model.twin(k)(tokens[1:, :2]))[0], rtol=1e-6, atol=1e-7)
        outputs.append(padded)
    assert np.abs(outputs[1] - outputs[0]).max() > 1e-3  # twin 1 computes with its own weights
