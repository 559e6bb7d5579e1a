"""Twins: structural copies of the wrapped network, paired weight by weight.

A twin is built once, at construction: Functional and Sequential networks
are cloned (`keras.models.clone_model`, layer names suffixed), subclassed
networks are rebuilt from their config (`from_config` + `build_from_config`,
the path Keras itself takes when it loads a model), or built by a factory the
user passes. Each twin weight is paired with θ's weight of the same layer
and name; which weights take part in HTA at a step follows their
`trainable` flag, synchronised from θ, so freezing and unfreezing layers
(fine-tuning) never shifts the pairing.
"""

import numpy as np

import keras


def check_network(network):
    """Raises unless `network` is a built Keras model with floating-point trainable weights."""
    if not isinstance(network, keras.Model):
        raise TypeError(
            f"Argument `model` must be a keras.Model. Received: model={network!r} of type {type(network).__name__}"
        )
    if not network.built:
        raise ValueError(
            f"Argument `model` must be built. Received: model '{network.name}' "
            "with no weights yet: call it on data or give it an Input first."
        )
    if not network.trainable_variables:
        raise ValueError(
            f"Argument `model` must have trainable weights. Received: model "
            f"'{network.name}' with none: HTA has nothing to split."
        )
    for v in network.trainable_variables:
        if not np.issubdtype(np.dtype(v.dtype), np.floating):
            raise TypeError(f"Every trainable weight must be floating point. Received: '{v.path}' of dtype {v.dtype}")


def twin_suffix(k, num_groups):
    """The name suffix of twin k (1 .. m − 1): `eta`, or `eta1`, `eta2`, ..."""
    return "eta" if num_groups == 2 else f"eta{k}"


def _build_like(twin, network):
    """Builds `twin` as `network` was built (Keras' own reload path)."""
    if not twin.built or not twin.weights:
        build_config = network.get_build_config()
        if build_config is None:
            return
        twin.build_from_config(build_config)
        if not twin.weights and build_config.get("input_shape"):
            shape = [1 if d is None else d for d in build_config["input_shape"]]
            twin(np.zeros(shape, "float32"))


def clone_twin(network, suffix, factory=None):
    """A structural copy of `network` with its own weights, equal to θ's.

    Args:
        network: The built `keras.Model` to copy.
        suffix: String appended to the twin's (and, for cloned networks, its
            layers') names.
        factory: Optional callable `() -> keras.Model` that builds a twin
            (for subclassed networks whose config cannot rebuild them).

    Raises:
        ValueError: the twin cannot be built, or its weights do not match
            θ's (named in the message).
    """

    def clone_layer(layer):
        config = dict(layer.get_config())
        config["name"] = f"{layer.name}_{suffix}"
        return layer.__class__.from_config(config)

    hint = (
        f"Could not build a twin of the network '{network.name}'. For a subclassed model, pass "
        "`twin_factory=lambda: MyModel(...)` to HomotopyModel (each twin is built by calling it), or "
        "give the class a `get_config` that returns its constructor arguments and an `__init__` that "
        "accepts `**kwargs` (see the README, 'Fine-tuning and subclassed models')."
    )
    if factory is not None:
        twin = factory()
        if not isinstance(twin, keras.Model):
            raise TypeError(f"Argument `twin_factory` must return a keras.Model. Received: {twin!r}")
    else:
        try:
            twin = keras.models.clone_model(network, clone_function=clone_layer)
        except ValueError:  # subclassed networks: rebuilt from their config
            try:
                twin = network.__class__.from_config(network.get_config())
            except Exception as error:  # Keras raises TypeError, NotImplementedError, ...
                raise ValueError(f"{hint} ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    _build_like(twin, network)
    if not twin.weights:
        raise ValueError(hint)
    twin.name = f"{network.name}_{suffix}"
    pair_weights(network, twin)  # raises on a mismatch
    twin.set_weights(network.get_weights())
    return twin


def pair_weights(network, twin):
    """Pairs every weight of `network` with the twin's weight of the same layer and name.

    Returns:
        A list of `(network_weight, twin_weight)` pairs.

    Raises:
        ValueError: naming the first weight without a counterpart.
    """
    a, b = network.weights, twin.weights
    if len(a) != len(b):
        raise ValueError(
            f"The twin of '{network.name}' has {len(b)} weights, the network {len(a)}: "
            "HTA needs an exact structural copy."
        )
    for u, v in zip(a, b):
        if u.name != v.name or tuple(u.shape) != tuple(v.shape) or u.dtype != v.dtype:
            raise ValueError(
                f"The twin of '{network.name}' does not match weight '{u.path}' {tuple(u.shape)} "
                f"(found '{v.path}' {tuple(v.shape)}): HTA needs an exact structural copy."
            )
    return list(zip(a, b))


def layer_tree(model):
    """Every layer below `model` that Keras lists, parents before children."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model) or hasattr(layer, "layers"):
            yield from layer_tree(layer)


def sync_trainable(source, target):
    """Gives every layer of `target` the `trainable` flag of its counterpart in `source`."""
    if target.trainable != source.trainable:
        target.trainable = source.trainable
    for a, b in zip(layer_tree(source), layer_tree(target)):
        if b.trainable != a.trainable:
            b.trainable = a.trainable  # parents first: a child's own flag wins


def trainable_by_construction(network, twin):
    """Which of `network`'s weights are trainable when nothing is frozen.

    Found on the twin (all its layers set trainable, then the network's
    flags copied back), so that weights of a layer frozen now can join HTA
    when it is unfrozen.
    """
    twin.trainable = True
    for layer in layer_tree(twin):  # Keras does not always reach nested models' layers
        layer.trainable = True
    possible = {id(v) for v in twin.trainable_weights}
    sync_trainable(network, twin)
    return [id(v) in possible for v in twin.weights]
