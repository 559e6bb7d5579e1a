"""HomotopyModel under MirroredStrategy on two logical CPUs."""

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import dense_network, regression_data

pytestmark = pytest.mark.tensorflow_only
tf = pytest.importorskip("tensorflow")


def _train(strategy, x, y, steps_epochs=3):
    with strategy.scope():
        keras.utils.set_random_seed(11)
        model = hta.HomotopyModel.from_model(
            dense_network(hidden=8), anchor="zeros", split="random", seed=2, homotopy_l=0.5
        )
        model.twin(1).set_weights([w * 1.1 for w in model.twin(1).get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(
        x, y, batch_size=16, epochs=steps_epochs, shuffle=False, verbose=0,
        callbacks=[hta.HomotopyScheduler(hta.schedules.Geometric(0.5, 0.1, 0.5))],
    )
    return model, history.history


def test_two_replicas_equal_one_device(mirrored):
    x, y = regression_data(n=64)
    single, h1 = _train(tf.distribute.OneDeviceStrategy("CPU:0"), x, y)
    model, h2 = _train(mirrored, x, y)
    assert model.distribute_strategy.num_replicas_in_sync == 2
    for a, b in zip(single.weights, model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    for key in ("loss", "f_theta", "f_eta", "anchor_penalty", "coupling", "homotopy_l"):
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-5, err_msg=key)


def _train_multi_output(strategy, x, y):
    with strategy.scope():
        keras.utils.set_random_seed(5)
        inputs = keras.Input((4,))
        h = keras.layers.Dense(6, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01))(inputs)
        outputs = {"a": keras.layers.Dense(2, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)}
        model = hta.HomotopyModel(inputs, outputs, homotopy_l=0.5)
        model.twin(1).set_weights([w * 1.1 for w in model.twin(1).get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss={"a": "mse", "b": "mae"}, loss_weights={"a": 1.0, "b": 2.0})
    history = model.fit(x, {"a": y[:, :2], "b": y[:, 2:]}, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model, history.history


def test_multi_output_two_replicas_equal_one_device(mirrored):
    """The twins' compiled loss (per-output trackers made inside the replicas' first step) under MirroredStrategy."""
    x, y = regression_data(n=64)
    single, h1 = _train_multi_output(tf.distribute.OneDeviceStrategy("CPU:0"), x, y)
    model, h2 = _train_multi_output(mirrored, x, y)
    for a, b in zip(single.weights, model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    for key in ("loss", "a_loss", "b_loss", "f_theta", "f_eta"):
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-5, err_msg=key)
