"""Twins: structural copies of the wrapped network, paired weight by weight.

A twin is built once, at construction: Functional and Sequential networks
are cloned (`keras.models.clone_model`, layer names suffixed), subclassed
networks, and Functional subclasses whose clone does not pair (a layer shared
across nesting levels, as in keras-hub's causal LMs), are rebuilt from their
config (`from_config` + `build_from_config`, the path Keras itself takes when
it loads a model; `copy_of`), or built by a factory the user passes. Each
twin weight is paired with θ's weight of the same layer and name; which
weights take part in HTA at a step follows their `trainable` flag,
synchronised from θ, so freezing and unfreezing layers (fine-tuning) never
shifts the pairing. At each step a twin is fed its part
of the batch (`split_batch`) and scored by the compiled loss through a
weightless model of its own (`compiled_loss`), so only θ's values reach
Keras' loss metrics.
"""

import re
import warnings

import numpy as np

import keras

TWIN_BATCHES = ("full", "split")


def check_options(num_groups, twin_batch):
    """Raises a ValueError naming `num_groups` or `twin_batch` if it is not valid."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 2:
        raise ValueError(f"Argument `num_groups` must be an integer >= 2. Received: num_groups={num_groups!r}")
    if twin_batch not in TWIN_BATCHES:
        raise ValueError(f"Argument `twin_batch` must be one of {TWIN_BATCHES}. Received: twin_batch={twin_batch!r}")


def check_network(network, inputs=None, outputs=None):
    """The network to wrap: `network`, or `keras.Model(inputs, outputs)`.

    Raises unless it is a built Keras model with floating-point trainable
    weights, or unless exactly one of `network` and `inputs`/`outputs` is given.
    """
    if network is None:
        if inputs is None or outputs is None:
            raise ValueError(
                f"Pass `inputs` and `outputs`, or a built `network`. Received: inputs={inputs!r}, outputs={outputs!r}"
            )
        network = keras.Model(inputs, outputs)
    elif inputs is not None or outputs is not None:
        raise ValueError("Pass either `inputs`/`outputs` or `network`, not both.")
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
    return network


def warn_what_hta_does_not_run(network):
    """Warns of the parts of `network` that HTA does not run: its own `train_step`, `compute_loss`, `preprocessor`.

    keras-hub's tasks carry a `preprocessor`, which their own `fit` applies.
    """
    own = [name for name in ("train_step", "compute_loss")
           if getattr(type(network), name, None) is not getattr(keras.Model, name)]
    if own:
        warnings.warn(
            f"HomotopyModel: the network '{network.name}' defines its own {' and '.join(own)}, which HTA does not "
            "call: each twin's f is the loss passed to compile() plus its own losses (regularizers, add_loss), "
            "and HomotopyModel's step trains the twins. Compile HomotopyModel with that loss, or move a loss "
            "computed in train_step into the network's call() with self.add_loss().",
            UserWarning, stacklevel=4,
        )
    preprocessor = getattr(network, "preprocessor", None)
    if isinstance(preprocessor, keras.layers.Layer):
        warnings.warn(
            f"HomotopyModel: the network '{network.name}' has a preprocessor ({type(preprocessor).__name__}), "
            "which HomotopyModel's fit, evaluate and predict do not run: give them preprocessed inputs, e.g. "
            "`x, y, sample_weight = network.preprocessor(texts)` or `dataset.map(network.preprocessor)`.",
            UserWarning, stacklevel=4,
        )


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


def copy_of(network, clone, keep_class=False):
    """A copy of `network`, weight for weight: `clone(network)`, or the class rebuilt from its config.

    `keras.models.clone_model` raises on subclassed models, turns a Functional
    subclass with a `get_config` of its own (keras-hub's tasks, say) into a
    plain Functional model, and copies a layer that such a class calls both
    inside a nested model and directly into two layers: keras-hub's causal LM
    tasks call the backbone's token embedding again, reversed, for their
    logits, and the clone gets a second, untied embedding (a weight more than
    the network). Where the clone raises, or is built and does not pair with
    the network (or, with `keep_class`, is not of its class), the class is
    rebuilt from its config, as Keras' own `clone_model` does for such a
    subclass; that copy keeps the class and its shared layers. Where the
    rebuild fails or does not pair either, the clone is kept.

    Args:
        network: The built `keras.Model` to copy.
        clone: Callable `network -> copy`, the first choice.
        keep_class: Whether a copy of another class is rebuilt too (`merge`:
            the user's class back). Twins are not: a twin cloned as a plain
            Functional model keeps the checkpoint paths it was saved with.

    Returns:
        The copy, built where `clone` built it; the caller builds a subclassed
        copy and checks it with `pair_weights`.

    Raises:
        What rebuilding from the config raised, where `clone` raised too.
    """
    try:
        copy = clone(network)
    except (ValueError, TypeError, NotImplementedError):  # a subclassed model
        return network.__class__.from_config(network.get_config())
    if not copy.weights:  # an unbuilt copy of a subclassed model: the caller builds it
        return copy
    if (type(copy) is type(network) or not keep_class) and _pairs(network, copy):
        return copy
    try:
        rebuilt = network.__class__.from_config(network.get_config())
    except Exception:  # Keras raises TypeError, NotImplementedError, ...: the clone it is
        return copy
    return rebuilt if _pairs(network, rebuilt) else copy


def _pairs(network, copy):
    try:
        pair_weights(network, copy)
    except ValueError:
        return False
    return True


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
        named = dict(config, name=f"{layer.name}_{suffix}")
        try:
            return layer.__class__.from_config(named)
        except TypeError:  # a layer whose __init__ takes no `name` (Keras' guides write them so)
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
            twin = copy_of(network, lambda net: keras.models.clone_model(net, clone_function=clone_layer))
        except Exception as error:  # from_config: Keras raises TypeError, NotImplementedError, ...
            raise ValueError(f"{hint} ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    _build_like(twin, network)
    if not twin.weights:
        raise ValueError(hint)
    twin.built = True  # it has every weight (checked below); subclassed models built by a call may not say so
    twin.name = f"{network.name}_{suffix}"
    pair_weights(network, twin)  # raises on a mismatch
    twin.set_weights(network.get_weights())
    return twin


def make_twins(network, num_groups, factory=None):
    """The m − 1 twins of `network` and the weights HTA may train, paired.

    Those weights are θ's trainable ones and those of layers frozen now
    (they join when unfrozen), each paired with the twins' weight of the same
    layer and name.

    Returns:
        `(twins, paired)`: the twin models, and per net (θ first) the list
        of its eligible weights, aligned with θ's.
    """
    twins = [clone_twin(network, twin_suffix(k, num_groups), factory) for k in range(1, num_groups)]
    eligible = trainable_by_construction(network, twins[0])
    for twin in twins[1:]:
        sync_trainable(network, twin)
    paired = [[w for w, ok in zip(net.weights, eligible) if ok] for net in [network] + twins]
    return twins, paired


def _unnamed(weight):
    """A weight created without a name: Keras numbers it (`variable`, `variable_18`)."""
    return re.fullmatch(r"variable(_\d+)?", weight.name) is not None


def pair_weights(network, twin):
    """Pairs every weight of `network` with the twin's weight of the same layer and name.

    Weights are taken in order, layer by layer, so the pair is the weight at
    the same position in the same layer; its name must match too, except for
    weights created without a name, which Keras numbers differently in each
    copy.

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
    for u, v in zip(a, b):  # in order: layer by layer, each layer's weights in creation order
        same_name = u.name == v.name or (_unnamed(u) and _unnamed(v))
        if not same_name or tuple(u.shape) != tuple(v.shape) or u.dtype != v.dtype:
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


class _CompiledLoss(keras.Model):
    """A model with no layers: its `compute_loss` is the compiled loss alone."""

    def __init__(self, output_names):
        super().__init__(name="twin_loss")
        self.output_names = output_names  # as Functional sets it: matches dict losses and targets


def compiled_loss(output_names, loss, loss_weights=None):
    """A weightless model compiled with `loss`: f of a twin without θ's regularizers or metrics.

    Its `compute_loss(y=..., y_pred=..., sample_weight=...)` applies `loss`
    and `loss_weights` exactly as compiling a network with these
    `output_names` would; per-output loss trackers, if Keras makes them, are
    its own and reported nowhere. Returns None when `loss` is None.
    """
    if loss is None:
        return None
    model = _CompiledLoss(output_names)
    model.compile(optimizer=None, loss=loss, loss_weights=loss_weights)
    return model


def batch_size(data):
    """The number of examples in a batch: the first dimension of its first tensor."""
    return keras.ops.shape(next(t for t in keras.tree.flatten(data) if t is not None))[0]


def split_batch(data, m, how):
    """What each of m twins trains on: `data` for every twin, or (`how="split"`) examples k, k + m, ...

    A batch of fewer than m examples goes whole to every twin, so none is empty.
    """
    if how != "split":
        return [data] * m
    size = batch_size(data)
    if isinstance(size, int):  # known when traced (JAX, PyTorch, static TF shapes)
        enough = size >= m
        take = lambda t, k: None if t is None else (t[k::m] if enough else t)  # noqa: E731
    else:
        enough = size >= m
        take = lambda t, k: None if t is None else keras.ops.cond(enough, lambda: t[k::m], lambda: t)  # noqa: E731
    return [keras.tree.map_structure(lambda t: take(t, k), data) for k in range(m)]
