"""Test setup: two logical CPU devices for MirroredStrategy tests, quiet TF."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# keras_hta.experiments.data's cache: never the user's ~/.keras during tests.
os.environ.setdefault("KERAS_HTA_CACHE", __import__("tempfile").mkdtemp(prefix="keras_hta_cache_"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised by another import
    pass

import keras  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


def dense_network(n_in=4, n_out=3, hidden=None, l2=0.0, batch_norm=False, seed=0):
    """A tiny Functional network with deterministic initial weights."""
    init = keras.initializers.GlorotUniform(seed=seed)
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((n_in,))
    h = inputs
    if hidden:
        h = keras.layers.Dense(hidden, kernel_initializer=init, kernel_regularizer=reg)(h)
        if batch_norm:
            h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Activation("tanh")(h)
    outputs = keras.layers.Dense(
        n_out, kernel_initializer=init, bias_initializer=keras.initializers.RandomNormal(seed=seed + 1),
        kernel_regularizer=reg,
    )(h)
    return keras.Model(inputs, outputs)


def regression_data(n=16, n_in=4, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    y = rng.normal(size=(n, n_out)).astype("float32")
    return x, y


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the two logical CPUs for the whole session:
    two strategy instances in one process issue collective ops whose instance
    keys collide ("Shape mismatch in the collective instance")."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
