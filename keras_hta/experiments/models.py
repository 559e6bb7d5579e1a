"""The paper's networks: CIFAR VGG-BN, and small MNIST-1D models (a 1-D CNN
and the fully connected case of paper §2.2)."""

import keras
from keras import layers

VGG_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _check_width(width):
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"Argument `width` must be a number > 0. Received: width={width!r}")


def _scaled(channels, width):
    return max(1, int(round(channels * width)))


def vgg(depth=11, batch_norm=True, width=1.0, num_classes=10, input_shape=(32, 32, 3), name=None):
    """VGG for CIFAR: 3x3 conv blocks, five max-pools, a 512 -> classes classifier.

    The CIFAR variant used by the paper (as in the widely used
    pytorch-cifar VGGs): no 4096-unit layers, one Dense head on the final
    1x1x512 feature map.

    Args:
        depth: Integer, 11, 13, 16 or 19.
        batch_norm: Boolean, BatchNormalization after every conv (the
            paper's -BN models).
        width: Float > 0, multiplies every layer's channels (1/8 for quick
            runs on a CPU).
        num_classes: Integer.
        input_shape: Tuple, the image shape.
        name: String, default `vgg{depth}` (+ `_bn`).

    Returns:
        A Functional `keras.Model` returning logits.

    Example:

    >>> model = keras_hta.experiments.models.vgg(11, width=0.125)
    >>> model.output_shape
    (None, 10)
    """
    if depth not in VGG_CONFIGS:
        raise ValueError(f"Argument `depth` must be one of {sorted(VGG_CONFIGS)}. Received: depth={depth!r}")
    _check_width(width)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, item in enumerate(VGG_CONFIGS[depth]):
        if item == "M":
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
            continue
        x = layers.Conv2D(_scaled(item, width), 3, padding="same", use_bias=not batch_norm, name=f"conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name or f"vgg{depth}{'_bn' if batch_norm else ''}")


def cnn1d(num_classes=10, length=40, width=1.0, name="cnn1d"):
    """The MNIST-1D convolutional baseline: three Conv1D(25, 5, stride 2) + Dense.

    Args:
        num_classes: Integer.
        length: Integer, the signal length (40 for MNIST-1D).
        width: Float > 0, multiplies the 25 channels.
        name: String.
    """
    _check_width(width)
    inputs = keras.Input((length, 1), name="signal")
    x = inputs
    for i in range(3):
        x = layers.Conv1D(_scaled(25, width), 5, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def mlp(num_classes=10, input_dim=40, hidden=100, depth=2, width=1.0, name="mlp"):
    """A fully connected ReLU network (paper §2.2), `depth` hidden layers.

    Args:
        num_classes: Integer.
        input_dim: Integer, the input size (40 for MNIST-1D).
        hidden: Integer, units per hidden layer (times `width`).
        depth: Integer >= 1.
        width: Float > 0.
        name: String.
    """
    _check_width(width)
    inputs = keras.Input((input_dim,), name="signal")
    x = inputs
    for i in range(depth):
        x = layers.Dense(_scaled(hidden, width), activation="relu", name=f"dense{i}")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


MODELS = {
    "vgg11": lambda width, classes, shape: vgg(11, width=width, num_classes=classes, input_shape=shape),
    "vgg13": lambda width, classes, shape: vgg(13, width=width, num_classes=classes, input_shape=shape),
    "vgg16": lambda width, classes, shape: vgg(16, width=width, num_classes=classes, input_shape=shape),
    "vgg19": lambda width, classes, shape: vgg(19, width=width, num_classes=classes, input_shape=shape),
    "cnn1d": lambda width, classes, shape: cnn1d(classes, shape[0], width),
    "mlp": lambda width, classes, shape: mlp(classes, shape[0], width=width),
}


def get(name, width=1.0, num_classes=10, input_shape=(32, 32, 3)):
    """Builds a model by name: vgg11/13/16/19, cnn1d or mlp."""
    if name not in MODELS:
        raise ValueError(f"Argument `model` must be one of {sorted(MODELS)}. Received: model={name!r}")
    return MODELS[name](width, num_classes, tuple(input_shape))
