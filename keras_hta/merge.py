"""Turning a trained `HomotopyModel` back into a plain Keras model."""

import numpy as np

import keras
from keras_hta import twins as twins_lib

HOWS = ("theta", "eta", "average")


def _select_weights(model, how):
    nets = model.nets
    if how == "theta":
        return nets[0].get_weights()
    if how == "eta":
        return nets[1].get_weights()
    if how == "average":
        per_net = [net.get_weights() for net in nets]
        return [np.mean(ws, axis=0).astype(ws[0].dtype) for ws in zip(*per_net)]
    if isinstance(how, int) and not isinstance(how, bool) and 0 <= how < len(nets):
        return nets[how].get_weights()
    raise ValueError(
        f"Argument `how` must be one of {HOWS} or a twin index in "
        f"[0, {len(nets)}). Received: how={how!r}"
    )


def _plain_copy(model):
    """A plain copy of θ's architecture and class: from `twin_factory` if the model has one, else `twins.copy_of`.

    A subclassed copy is called once on zeros of its build shape, so that it
    can be exported at once (Keras exports only models that were called).
    """
    factory = getattr(model, "twin_factory", None)
    if factory is not None:
        plain = factory()
    else:
        plain = twins_lib.copy_of(model.network, _clone_with_input_names, keep_class=True)
    if not getattr(plain, "inputs", None):  # subclassed: build it as θ was built, by a call
        shape = (model.network.get_build_config() or {}).get("input_shape")
        if shape and not isinstance(shape[0], (list, tuple, dict)):
            plain(np.zeros([1 if d is None else d for d in shape], "float32"), training=False)
    return plain


def _clone_with_input_names(network):
    """clone_model, keeping the input layers' names (the serving signature)."""
    names = {id(layer.output): layer.name for layer in network.layers if isinstance(layer, keras.layers.InputLayer)}
    try:
        structure = network.input
    except (AttributeError, ValueError):  # never called: nothing to keep
        structure = None
    flat = [] if structure is None else keras.tree.flatten(structure)
    if not flat or any(id(t) not in names for t in flat):  # Sequential keeps its own; subclassed have none
        return keras.models.clone_model(network)
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=names[id(t)]), structure)
    return keras.models.clone_model(network, input_tensors=inputs)


def merge(model, how="theta", recompute_bn=None, steps=None):
    """Returns a plain Keras model with one twin's (or the averaged) weights.

    The result is a clone of the wrapped network with no twin, anchor or L
    state: save it, `export` it as a SavedModel, or fine-tune it as usual.

    Args:
        model: A `keras_hta.HomotopyModel`.
        how: `"theta"` (default, the weights `predict` uses), `"eta"`, an
            integer twin index, or `"average"` (the mean of all twins,
            BatchNorm statistics included).
        recompute_bn: A dataset (or iterable) of batches `x` or `(x, y, ...)`
            to recompute BatchNorm moving statistics from, which averaged
            weights invalidate; see `keras_hta.recompute_batchnorm`.
        steps: Integer or `None`, batches to use from `recompute_bn`.

    Returns:
        A `keras.Model` of the same architecture and layer names.

    Example:

    ```python
    plain = keras_hta.merge(model)
    plain.export("served_model")  # TF SavedModel with a `serve` endpoint
    ```
    """
    if not hasattr(model, "nets"):
        raise TypeError(
            "Argument `model` must be a keras_hta.HomotopyModel. "
            f"Received: model of type {type(model).__name__}"
        )
    weights = _select_weights(model, how)
    plain = _plain_copy(model)
    plain.set_weights(weights)
    if recompute_bn is not None:
        recompute_batchnorm(plain, recompute_bn, steps=steps)
    return plain


def recompute_batchnorm(model, data, steps=None):
    """Sets every BatchNorm layer's moving statistics from data.

    Runs the model in training mode over the batches of `data` and sets
    each BatchNormalization layer's moving mean and variance to the mean
    of the per-batch statistics ("precise BN"). Nothing else changes.

    Args:
        model: A `keras.Model`.
        data: A `tf.data.Dataset` or iterable of `x` or `(x, y, ...)`.
        steps: Integer or `None` (all of `data`), batches to use.

    Returns:
        The number of batches used.
    """
    layers = [l for l in twins_lib.layer_tree(model) if isinstance(l, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    saved = [(l.momentum, l.trainable) for l in layers]
    count = 0
    try:
        for layer in layers:
            layer.trainable = True  # a frozen BN would ignore training=True
        for batch in data:
            if steps is not None and count >= steps:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            count += 1
            for layer in layers:  # running mean: moving = mean of batches 1..count
                layer.momentum = 1.0 - 1.0 / count
            model(x, training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    if count == 0:
        raise ValueError("Argument `data` of recompute_batchnorm gave no batch.")
    return count
