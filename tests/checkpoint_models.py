"""The networks of the checkpoints in tests/checkpoints/ (written by its write.py, read by
test_checkpoint_compat.py): what each checkpoint holds and how it was trained.

Registered under their own package, so the files name them whatever module
defines them. Changing a class here changes what the committed files mean:
write new files under new names instead.
"""

import numpy as np

import keras
import keras_hta as hta


@keras.saving.register_keras_serializable(package="keras_hta_checkpoints")
class Tagger(keras.Model):
    """A Functional subclass with its own `get_config`, as keras-hub's tasks are."""

    def __init__(self, width=5, **kwargs):
        inputs = keras.Input((4,), name="features")
        h = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
        outputs = keras.layers.Dense(3, name="head")(h)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.width = width

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable}


@keras.saving.register_keras_serializable(package="keras_hta_checkpoints")
class Residual(keras.Model):
    """A subclassed model with a `get_config`, rebuilt from it."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units, activation="tanh")
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(x + self.inner(x))

    def get_config(self):
        return {"units": self.units, "name": self.name, "trainable": self.trainable}


@keras.saving.register_keras_serializable(package="keras_hta_checkpoints")
class Trunk(keras.Model):
    """A Functional subclass that builds its graph in `__init__`, as keras-hub's backbones do."""

    def __init__(self, width=6, **kwargs):
        inputs = keras.Input((4,), name="features")
        h = keras.layers.Dense(width, name="mix")(inputs)
        outputs = keras.layers.Dense(5, activation="tanh", name="frozen")(h)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.width = width

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable}


def data(n=24):
    rng = np.random.default_rng(5)
    return rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


def schedule():
    """The L schedule every checkpoint was trained with: 0.5, 0.4, 0.3, ... per epoch."""
    return hta.HomotopyScheduler(hta.schedules.Linear(0.5, 0.1, -0.1))


def _sequential():
    return keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(6), keras.layers.BatchNormalization(),
        keras.layers.Activation("tanh"), keras.layers.Dense(3),
    ], name="mlp")


def _lora_block():
    """Keras' LoRA on a hidden layer, BatchNorm after it, a frozen layer, a head: each kind of variable a twin
    has or shares (written by keras-hta 0.3, the one-network layout)."""
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, use_bias=False, name="hidden")  # a bias before BatchNorm gets only rounding
    h = keras.layers.BatchNormalization(name="bn")(hidden(inputs))
    frozen = keras.layers.Dense(5, activation="tanh", name="frozen")
    outputs = keras.layers.Dense(3, name="head")(frozen(h))
    network = keras.Model(inputs, outputs, name="lora_net")
    hidden.enable_lora(2)
    frozen.trainable = False
    return network


def _head_on_trunk_inputs():
    """A head built on a trunk's own inputs, as on a keras-hub backbone's; LoRA inside the trunk and on the head, a
    frozen layer in the trunk (written by keras-hta 0.4, which saves LoRA and frozen layers by path: the rebuilt
    network lists the trunk's input layer once more, before the head)."""
    trunk = Trunk(name="trunk")
    trunk.get_layer("mix").enable_lora(2)
    trunk.get_layer("frozen").trainable = False
    head = keras.layers.Dense(3, name="head")
    network = keras.Model(trunk.input, head(trunk(trunk.input)), name="head_on_trunk")
    head.enable_lora(2)
    return network


def _residual():
    net = Residual(name="residual")
    net(np.zeros((1, 4), "float32"))
    return net


# name -> (network builder, HomotopyModel arguments, optimizer builder)
CHECKPOINTS = {
    "sequential_bn_channels": (
        _sequential, dict(split="channels", anchor="init"),
        lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
    "functional_subclass_channels_3twins": (
        lambda: Tagger(name="tagger"), dict(split="channels", num_groups=3, anchor="zeros"),
        lambda: keras.optimizers.Adam(0.01)),
    "subclassed_random_split_batch": (
        _residual, dict(split="random", seed=3, anchor="init", twin_batch="split"),
        lambda: keras.optimizers.SGD(0.05)),
    "lora_bn_frozen_random_3twins": (
        _lora_block, dict(split="random", seed=5, num_groups=3, anchor="init"),
        lambda: keras.optimizers.Adam(0.02)),
    "head_on_trunk_inputs_lora_frozen_layers": (
        _head_on_trunk_inputs, dict(split="layers", anchor="init"),
        lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
}


def stem(name, backend):
    """The file stem of checkpoint `name` written on `backend`: TensorFlow's, the first written, carry no backend."""
    return name if backend == "tensorflow" else f"{name}.{backend}"


def build(name):
    """The compiled HomotopyModel of checkpoint `name`, before training."""
    network, arguments, optimizer = CHECKPOINTS[name]
    model = hta.HomotopyModel.from_model(network(), homotopy_l=0.5, **arguments)
    model.compile(optimizer=optimizer(), loss="mse")
    return model


def fit(model, epochs):
    """Training as the checkpoints were trained: batches of 8 in order, with the schedule."""
    x, y = data()
    return model.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0, callbacks=[schedule()])


def twin_outputs(model):
    """Each twin's inference outputs on the checkpoints' inputs."""
    x, _ = data()
    return [keras.ops.convert_to_numpy(model.twin(k)(x, training=False)) for k in range(model.num_groups)]
