"""Turning a trained `HomotopyModel` back into a plain Keras model."""

import warnings

import numpy as np

import keras
from keras_hta import compat

HOWS = ("theta", "eta", "average")


def _select_weights(model, how):
    m = model.num_groups
    if how == "average":
        per_twin = [model.twin(k).get_weights() for k in range(m)]
        return [np.mean(ws, axis=0).astype(ws[0].dtype) for ws in zip(*per_twin)]
    k = {"theta": 0, "eta": 1}.get(how, how) if isinstance(how, str) else how
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < m:
        raise ValueError(
            f"Argument `how` must be one of {HOWS} or a twin index in [0, {m}). Received: how={how!r}"
        )
    return model.twin(int(k)).get_weights()


def _pairs(network, copy):
    """Whether `copy` has `network`'s weights, one for one (the same count, shapes and dtypes, in order)."""
    a, b = network.weights, copy.weights
    return len(a) == len(b) and all(
        tuple(u.shape) == tuple(v.shape) and u.dtype == v.dtype for u, v in zip(a, b))


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


def _build_like(copy, network):
    """Builds a copy of a subclassed network as the network was built, and calls it once (Keras exports only
    models that were called)."""
    if getattr(copy, "inputs", None):  # Functional and Sequential: built and callable
        return
    build_config = network.get_build_config() or {}
    if not copy.weights and build_config:
        copy.build_from_config(build_config)
    shape = build_config.get("input_shape")
    if shape and not isinstance(shape[0], (list, tuple, dict)):
        copy(np.zeros([1 if d is None else d for d in shape], "float32"), training=False)


def plain_copy(network):
    """A copy of `network` of its class, with its own weights, or `None` where Keras cannot make one.

    `keras.models.clone_model` first: it copies Functional and Sequential
    networks, and rebuilds a subclassed one from its config. Where the clone
    is of another class (a Functional subclass with a `get_config` of its own,
    as keras-hub's tasks, comes back a plain Functional) or does not pair with
    the network weight for weight (keras-hub's causal LMs call the backbone's
    token embedding again for their logits, and the clone unties it), the
    class is rebuilt from its config, as Keras itself does when it loads the
    model. A subclassed copy is called once, so that it can be exported at once.
    """
    candidates = []
    try:
        candidates.append(_clone_with_input_names(network))
    except Exception:  # Keras raises TypeError, ValueError, NotImplementedError...: no clone
        pass
    if not candidates or type(candidates[0]) is not type(network) or not _pairs(network, candidates[0]):
        try:
            candidates.insert(0, type(network).from_config(network.get_config()))
        except Exception:
            pass
    for copy in candidates:
        try:
            _build_like(copy, network)
        except Exception:
            continue
        if _pairs(network, copy):
            return copy
    return None


def merge(model, how="theta", recompute_bn=None, steps=None, in_place=None):
    """Returns a plain Keras model with one twin's (or the averaged) weights.

    The result is a copy of the wrapped network with no twin, anchor or L
    state: save it, `export` it, or fine-tune it as usual. Where Keras cannot
    copy the network (a subclassed model without a `get_config` that rebuilds
    it), the chosen weights are written into the wrapped network itself,
    which is returned, with a warning: the HomotopyModel's θ then holds them.

    Args:
        model: A `keras_hta.HomotopyModel`.
        how: `"theta"` (default, the weights `predict` uses), `"eta"`, an
            integer twin index, or `"average"` (the mean of all twins,
            BatchNorm statistics included).
        recompute_bn: A dataset (or iterable) of batches `x` or `(x, y, ...)`
            to recompute BatchNorm moving statistics from, which averaged
            weights invalidate; see `keras_hta.recompute_batchnorm`.
        steps: Integer or `None`, batches to use from `recompute_bn`.
        in_place: `None` (default): a copy where Keras can make one, else the
            wrapped network; `True`: always the wrapped network, no copy;
            `False`: a copy, or a ValueError where none can be made.

    Returns:
        A `keras.Model` of the network's class, architecture and layer names.

    Example:

    ```python
    plain = keras_hta.merge(model)
    plain.export("served_model")  # TF SavedModel with a `serve` endpoint
    ```
    """
    if not hasattr(model, "twin_state"):
        raise TypeError(
            "Argument `model` must be a keras_hta.HomotopyModel. "
            f"Received: model of type {type(model).__name__}"
        )
    if in_place not in (None, True, False):
        raise ValueError(f"Argument `in_place` must be None, True or False. Received: in_place={in_place!r}")
    weights = _select_weights(model, how)
    plain = None if in_place else plain_copy(model.network)
    if plain is None:
        if in_place is False:
            raise ValueError(
                f"Keras cannot copy the network '{model.network.name}' (give its class a get_config that rebuilds "
                "it). Pass in_place=True to write the merged weights into the wrapped network instead."
            )
        if in_place is None:
            warnings.warn(
                f"merge: Keras cannot copy the network '{model.network.name}' (its class has no get_config that "
                f"rebuilds it): the {how!r} weights are written into the wrapped network itself, which is returned; "
                "the HomotopyModel's θ holds them now.", UserWarning, stacklevel=2,
            )
        plain = model.network
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
    layers = [l for l in compat.all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
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
