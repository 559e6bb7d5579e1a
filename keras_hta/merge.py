"""Turning a trained `HomotopyModel` back into a plain Keras model."""

import numpy as np

import keras
from keras_hta import compat
from keras_hta import network as network_lib

HOWS = ("theta", "eta", "average")


class CannotCopyError(ValueError):
    """Keras cannot copy the network, and `merge` was not asked to write into it (`in_place=True`)."""


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


def named_inputs(network):
    """New `keras.Input`s in the structure of `network`'s inputs, with its input layers' names; None if unknown.

    Sequential and subclassed networks keep no such structure: None.
    """
    names = {id(layer.output): layer.name for layer in network.layers if isinstance(layer, keras.layers.InputLayer)}
    try:
        structure = network.input
    except (AttributeError, ValueError):  # never called: nothing to keep
        return None
    flat = keras.tree.flatten(structure)
    if not flat or any(id(t) not in names for t in flat):
        return None
    return keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=names[id(t)]), structure)


def _clone_with_input_names(network):
    """clone_model, keeping the input layers' names (the serving signature)."""
    inputs = named_inputs(network)
    return keras.models.clone_model(network) if inputs is None else keras.models.clone_model(network, input_tensors=inputs)


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


def plain_copy(network, custom_objects=None):
    """A copy of `network` of its class, with its own weights: `(copy, None)`, or `(None, why)` where Keras makes none.

    `keras.models.clone_model` first: it copies Functional and Sequential
    networks, and rebuilds a subclassed one from its config. Where the clone
    is of another class (a Functional subclass with a `get_config` of its own,
    as keras-hub's tasks, comes back a plain Functional) or does not pair with
    the network weight for weight (keras-hub's causal LMs call the backbone's
    token embedding again for their logits, and the clone unties it), the
    class is rebuilt from its config, as Keras itself does when it loads the
    model. Both run inside a custom-object scope holding the classes and
    functions the network's config names (`keras_hta.network.custom_objects`)
    and `custom_objects`, and the copy gets the network's LoRA and frozen
    layers (`keras_hta.network.training_setup`, what `save` records), which
    configs do not hold for sublayers. A subclassed copy is called once, so
    that it can be exported at once. `why` is Keras' reason, in one line.
    """
    objects = dict(network_lib.custom_objects(network), **(custom_objects or {}))
    setup = network_lib.training_setup(network)
    candidates, why = [], None
    with keras.saving.custom_object_scope(objects):
        try:
            candidates.append(_clone_with_input_names(network))
        except Exception as error:  # Keras raises TypeError, ValueError, NotImplementedError...: no clone
            why = error
        if not candidates or type(candidates[0]) is not type(network) or not _pairs(network, candidates[0]):
            try:
                candidates.insert(0, type(network).from_config(network.get_config()))
            except Exception as error:
                why = why or error
        for copy in candidates:
            try:
                _build_like(copy, network)
                network_lib.restore_training_setup(copy, **setup)
            except Exception as error:
                why = why or error
                continue
            if _pairs(network, copy):
                return copy, None
            why = why or ValueError(f"the copy has {len(copy.weights)} weights, the network {len(network.weights)}")
    return None, _one_line(why)


def _one_line(error):
    text = " ".join(str(error).split()) if error is not None else "no copy"
    return f"{type(error).__name__}: {text[:300]}" if error is not None else text


def merge(model, how="theta", recompute_bn=None, steps=None, in_place=False, custom_objects=None):
    """Returns a plain Keras model with one twin's (or the averaged) weights.

    The result is a copy of the wrapped network with no twin, anchor or L
    state: save it, `export` it, or fine-tune it as usual. The HomotopyModel
    and its network are left as they are. Keras copies the network as it
    rebuilds it when loading, so a network of custom classes and functions
    that Keras does not know by name is copied with them: those its layers
    hold are found by themselves; pass others in `custom_objects`, as to
    `keras.models.load_model`. Where no copy can be made (a subclassed model
    whose class Keras cannot rebuild), `merge` raises, in one line saying
    why, unless `in_place=True` asks to write the weights into the wrapped
    network itself.

    Args:
        model: A `keras_hta.HomotopyModel`.
        how: `"theta"` (default, the weights `predict` uses), `"eta"`, an
            integer twin index, or `"average"` (the mean of all twins,
            BatchNorm statistics included).
        recompute_bn: A dataset (or iterable) of batches `x` or `(x, y, ...)`
            to recompute BatchNorm moving statistics from, which averaged
            weights invalidate; see `keras_hta.recompute_batchnorm`.
        steps: Integer or `None`, batches to use from `recompute_bn`.
        in_place: Boolean. `False` (default): a copy, or a ValueError where
            none can be made. `True`: no copy; the chosen weights are written
            into the wrapped network, which is returned (the HomotopyModel's
            θ then holds them).
        custom_objects: Optional dict of name to class or function, for
            objects the network's config names that its layers do not hold.

    Returns:
        A `keras.Model` of the network's class, architecture and layer names.

    Raises:
        ValueError: a bad `how` or `in_place`, or no copy can be made and
            `in_place` is not True.

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
    if in_place not in (True, False, None):
        raise ValueError(f"Argument `in_place` must be True or False. Received: in_place={in_place!r}")
    weights = _select_weights(model, how)
    if in_place:
        plain = model.network
    else:
        plain, why = plain_copy(model.network, custom_objects)
        if plain is None:
            raise CannotCopyError(
                f"merge: Keras cannot copy the network '{model.network.name}' ({why}). Pass custom_objects= with "
                f"the classes and functions its config names, give {type(model.network).__name__} a get_config() "
                "returning its __init__ arguments, or pass in_place=True to write the merged weights into the "
                "wrapped network.")
    plain.set_weights(weights)
    if recompute_bn is not None:
        recompute_batchnorm(plain, recompute_bn, steps=steps)
    return plain


def recompute_batchnorm(model, data, steps=None, batch_size=32):
    """Sets every BatchNorm layer's moving statistics from data.

    Runs the model in training mode over the batches of `data` and sets
    each BatchNormalization layer's moving mean and variance to the mean
    of the per-batch statistics ("precise BN"). Nothing else changes.

    Args:
        model: A `keras.Model`.
        data: A `tf.data.Dataset` or iterable of batches `x` or `(x, y, ...)`,
            or the inputs themselves (a NumPy array or tensor, or a dict of
            them), cut into batches of `batch_size`.
        steps: Integer or `None` (all of `data`), batches to use.
        batch_size: Integer, examples per batch when `data` is the inputs
            themselves (default 32, as `predict`'s).

    Returns:
        The number of batches used.

    Raises:
        ValueError: `data` is None, a string, or gives no batch; a bad
            `steps` or `batch_size`.

    Example:

    ```python
    plain = keras_hta.merge(model, how="average")
    keras_hta.recompute_batchnorm(plain, x_train, steps=50)
    ```
    """
    batches = _batches(data, batch_size)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"Argument `steps` must be an integer >= 1 or None. Received: steps={steps!r}")
    layers = [l for l in compat.all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    saved = [(l.momentum, l.trainable) for l in layers]
    count = 0
    try:
        for layer in layers:
            layer.trainable = True  # a frozen BN would ignore training=True
        for batch in batches:
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


def _batches(data, batch_size):
    """The batches of `data`: a dataset or iterable of batches as it is; inputs (an array, a dict of arrays) cut."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Argument `batch_size` must be an integer >= 1. Received: batch_size={batch_size!r}")
    if data is None or isinstance(data, (str, bytes)):
        raise ValueError("Argument `data` must be a dataset, an iterable of batches, or inputs (an array or a dict "
                         f"of arrays). Received: data={data!r}")
    if isinstance(data, dict) or (hasattr(data, "shape") and hasattr(data, "dtype") and len(data.shape) > 0):
        n = int(keras.tree.flatten(data)[0].shape[0])
        return (keras.tree.map_structure(lambda t: t[start:start + batch_size], data)
                for start in range(0, n, batch_size))
    try:
        iter(data)
    except TypeError:
        raise ValueError("Argument `data` must be a dataset, an iterable of batches, or inputs (an array or a dict "
                         f"of arrays). Received: a {type(data).__name__}") from None
    return data
