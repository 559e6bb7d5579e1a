"""The wrapped network: what HomotopyModel can wrap and save, and what a saved model restores about it.

One network is wrapped as it is; these checks run before anything is built,
and say in one line what is wrong.
"""

import inspect
import warnings

import numpy as np

import keras
from keras_hta import compat


def _weight_keys(paths):
    """`{id(variable): "layer path:i"}` for every weight a layer created trainable: its i-th such weight."""
    return {id(v): f"{path}:{i}" for path, layer in paths
            for i, v in enumerate(compat.created_trainable_of(layer))}


def training_setup(network):
    """What decides which of `network`'s weights train, beyond what its config restores, as flat lists.

    `lora_layers`: `[layer path, rank, alpha]` for each layer with LoRA
    enabled (keras-hub's `Backbone.enable_lora` is not in a backbone's
    config); `frozen_layers`: the paths of the layers whose `trainable` is
    off; `frozen_weights`: `"layer path:i"` for each weight created trainable
    whose own flag is off (LoRA's base kernels), the i-th that layer created
    trainable. A layer's path names it by class and place
    (`keras_hta.compat.layer_paths`), so it finds the same layer in the
    network rebuilt from its config, whatever the order of its layer list.
    """
    paths = compat.layer_paths(network)
    keys = _weight_keys(paths)
    return {
        "lora_layers": [[path, int(layer.lora_rank), float(getattr(layer, "lora_alpha", None) or layer.lora_rank)]
                        for path, layer in paths if getattr(layer, "lora_enabled", False)],
        "frozen_layers": [path for path, layer in paths if not layer.trainable],
        "frozen_weights": [keys[id(v)] for v in network.variables if id(v) in keys and not v.trainable],
    }


def restore_training_setup(network, lora_layers=(), frozen_layers=(), frozen_weights=()):
    """Puts back what `training_setup` recorded, on a network rebuilt from its config (before it is wrapped).

    Files of keras-hta 0.3 recorded layers and weights by position in the
    flattened layer list and in `network.variables`; they load as before.
    """
    if any(isinstance(entry, int) for entry in [*frozen_layers, *frozen_weights, *(e[0] for e in lora_layers)]):
        layers = compat.all_layers(network)  # parents first
        at = dict(enumerate(layers))
        weights = [network.variables[p] for p in frozen_weights]
    else:
        paths = compat.layer_paths(network)  # parents first
        layers, at = [layer for _, layer in paths], dict(paths)
        missing = [path for path in [*(e[0] for e in lora_layers), *frozen_layers] if path not in at]
        if missing:
            raise ValueError(f"The saved model names layers its network '{network.name}' does not have: "
                             f"{', '.join(map(repr, missing[:3]))}. Rebuild it with the code it was saved with.")
        keys = _weight_keys(paths)
        by_key = {keys[id(v)]: v for v in network.variables if id(v) in keys}
        weights = [by_key[key] for key in frozen_weights]
    for where, rank, alpha in lora_layers:
        if not getattr(at[where], "lora_enabled", False):
            at[where].enable_lora(int(rank), lora_alpha=alpha)
    if not frozen_layers and not frozen_weights:
        return
    frozen = {id(at[where]) for where in frozen_layers}
    for layer in layers:  # parents before children: a child's own flag wins
        layer.trainable = id(layer) not in frozen
    for variable in weights:
        variable.trainable = False


def custom_objects(network):
    """The classes and functions outside Keras that `network`'s config names, by the names Keras looks them up by.

    The classes of its layers (a keras-io `TransformerBlock`, the layers of a
    nested `Sequential`), the functions its layers hold (a `Lambda`'s, an
    activation) and the classes of their initializers, regularizers and
    constraints: what `keras.models.clone_model` and `from_config` must find
    to copy it, as `load_model` needs them in `custom_objects`.
    """
    found = {}

    def add(obj):
        for name in (getattr(obj, "__name__", None), keras.saving.get_registered_name(obj)):
            if name and not name.startswith("<"):
                found.setdefault(name, obj)

    def outside_keras(obj):
        return not (getattr(obj, "__module__", None) or "keras.").startswith("keras.")

    kinds = (keras.initializers.Initializer, keras.regularizers.Regularizer, keras.constraints.Constraint)
    for layer in compat.all_layers(network):
        if outside_keras(type(layer)):
            add(type(layer))
        for value in vars(layer).values():
            if inspect.isfunction(value) and outside_keras(value):
                add(value)
            elif isinstance(value, kinds) and outside_keras(type(value)):
                add(type(value))
    return found


def check_network(network, inputs=None, outputs=None):
    """The network to wrap: `network`, or `keras.Model(inputs, outputs)`.

    Raises unless it is a built Keras model with floating-point trainable
    weights whose layers Keras can run on other variables, or unless exactly
    one of `network` and `inputs`/`outputs` is given.
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
        raise nothing_to_split(network)
    for v in network.trainable_variables:
        if not np.issubdtype(np.dtype(v.dtype), np.floating):
            raise TypeError(f"Every trainable weight must be floating point. Received: '{v.path}' of dtype {v.dtype}")
    for layer in compat.all_layers(network):
        if type(layer).__name__ == "TorchModuleWrapper":
            raise ValueError(
                f"HomotopyModel cannot train the layer '{layer.name}' (TorchModuleWrapper): it calls its torch "
                "module with the module's own parameters, so its twins could not compute with their weights. "
                "Rewrite it as a Keras layer."
            )
    return network


def nothing_to_split(network):
    """The error for a network with no weight to twin (none trainable, or only float8 scales)."""
    return ValueError(f"Argument `model` must have trainable weights. Received: model '{network.name}' with none: "
                      "HTA has nothing to split.")


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


def refuse_unloadable(network):
    """Raises, in one line, where Keras could save `network` but not rebuild it when loading.

    That is a subclassed network whose class keeps Keras' default `get_config`
    while its `__init__` takes no `**kwargs` or needs arguments, or a layer
    whose config does not fit its `__init__` (`_config_mismatch`; keras-io's
    examples write such layers): Keras' loader calls `cls(**config)`. Weights
    alone save (`save_weights`) whatever the classes.
    """
    cls = type(network)
    if isinstance(network, keras.Sequential) or cls.get_config is not keras.Model.get_config:
        needs, takes_kwargs = [], True
    else:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters)
        needs = [p.name for p in parameters
                 if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_kwargs or needs:
        raise ValueError(
            f"HomotopyModel.save: Keras cannot rebuild the network '{network.name}' when loading: its class "
            f"{cls.__name__} has no get_config() and its __init__ {'needs ' + ', '.join(needs) if needs else 'takes no **kwargs'}. "
            f"Give {cls.__name__} a get_config() returning its __init__ arguments, or save the weights alone with "
            "model.save_weights('m.weights.h5')."
        )
    for path, layer in compat.layer_paths(network)[1:]:
        problem = _config_mismatch(layer)
        if problem:
            raise ValueError(
                f"HomotopyModel.save: Keras cannot rebuild the layer '{layer.name}' ({type(layer).__name__}, at "
                f"{path}) when loading: {problem}. Take **kwargs in its __init__ (passed to super().__init__) and "
                "return every __init__ argument from get_config(), or save the weights alone with "
                "model.save_weights('m.weights.h5')."
            )


def _config_mismatch(layer):
    """Why `type(layer).from_config(layer.get_config())` must fail, in words, or None.

    Checked for a layer class outside Keras that keeps Keras' `from_config`
    (`cls(**config)`): the config (its own `get_config`'s, or the one Keras
    makes from the `__init__` arguments, which adds `trainable` and `dtype`)
    gives an argument its `__init__` does not take, or lacks one it needs.
    """
    cls = type(layer)
    if (cls.__module__ or "").startswith("keras.") or not isinstance(layer, keras.layers.Layer):
        return None
    if getattr(cls.from_config, "__func__", None) is not getattr(keras.layers.Layer.from_config, "__func__", None):
        return None  # its own from_config: it says what it takes
    try:
        config = layer.get_config()
    except Exception as error:
        return f"its get_config() raises {type(error).__name__}: {' '.join(str(error).split())[:200]}"
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters)
    extra = [] if takes_kwargs else [key for key in config if key not in names]
    missing = [p.name for p in parameters if p.default is p.empty and p.name not in config
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    words = []
    if extra:
        words.append(f"its get_config() gives {', '.join(extra)}, which its __init__ does not take")
    if missing:
        words.append(f"its get_config() lacks {', '.join(missing)}, which its __init__ needs")
    return " and ".join(words) or None


def refuse_h5(filepath, where="filepath"):
    path = str(filepath)
    if path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5"):
        raise ValueError(
            f"HomotopyModel saves whole models in the .keras format only (Keras' legacy HDF5 writer cannot hold "
            f"its anchors). Received: {where}={path!r}. Use a '.keras' path, or '.weights.h5' for weights alone."
        )
