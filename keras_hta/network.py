"""The wrapped network: what HomotopyModel can wrap and save, and what a saved model restores about it.

One network is wrapped as it is; these checks run before anything is built,
and say in one line what is wrong.
"""

import inspect
import warnings

import numpy as np

import keras
from keras_hta import compat


def training_setup(network):
    """What decides which of `network`'s weights train, beyond what its config restores, as flat lists.

    `lora_layers`: `[layer index, rank, alpha]` for each layer with LoRA
    enabled (keras-hub's `Backbone.enable_lora` is not in a backbone's
    config); `frozen_layers`: indices of the layers whose `trainable` is off;
    `frozen_weights`: positions in `network.variables` of weights created
    trainable whose own flag is off (LoRA's base kernels). Layer indices
    count every layer, sublayers included (`keras_hta.compat.all_layers`).
    """
    layers = compat.all_layers(network)
    created = compat.created_trainable(network)
    return {
        "lora_layers": [[i, int(layer.lora_rank), float(getattr(layer, "lora_alpha", None) or layer.lora_rank)]
                        for i, layer in enumerate(layers) if getattr(layer, "lora_enabled", False)],
        "frozen_layers": [i for i, layer in enumerate(layers) if not layer.trainable],
        "frozen_weights": [p for p, v in enumerate(network.variables) if id(v) in created and not v.trainable],
    }


def restore_training_setup(network, lora_layers=(), frozen_layers=(), frozen_weights=()):
    """Puts back what `training_setup` recorded, on a network rebuilt from its config (before it is wrapped)."""
    layers = compat.all_layers(network)
    for i, rank, alpha in lora_layers:
        if not getattr(layers[i], "lora_enabled", False):
            layers[i].enable_lora(int(rank), lora_alpha=alpha)
    if not frozen_layers and not frozen_weights:
        return
    frozen = set(frozen_layers)
    for i, layer in enumerate(layers):  # parents before children: a child's own flag wins
        layer.trainable = i not in frozen
    variables = network.variables
    for p in frozen_weights:
        variables[p].trainable = False


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
        raise ValueError(
            f"Argument `model` must have trainable weights. Received: model "
            f"'{network.name}' with none: HTA has nothing to split."
        )
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
    while its `__init__` takes no `**kwargs` or needs arguments: Keras' loader
    calls `cls(**config)`. Weights alone save (`save_weights`) whatever the class.
    """
    cls = type(network)
    if isinstance(network, keras.Sequential) or cls.get_config is not keras.Model.get_config:
        return
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters)
    needs = [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_kwargs or needs:
        raise ValueError(
            f"HomotopyModel.save: Keras cannot rebuild the network '{network.name}' when loading: its class "
            f"{cls.__name__} has no get_config() and its __init__ {'needs ' + ', '.join(needs) if needs else 'takes no **kwargs'}. "
            f"Give {cls.__name__} a get_config() returning its __init__ arguments, or save the weights alone with "
            "model.save_weights('m.weights.h5')."
        )


def refuse_h5(filepath, where="filepath"):
    path = str(filepath)
    if path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5"):
        raise ValueError(
            f"HomotopyModel saves whole models in the .keras format only (Keras' legacy HDF5 writer cannot hold "
            f"its anchors). Received: {where}={path!r}. Use a '.keras' path, or '.weights.h5' for weights alone."
        )
