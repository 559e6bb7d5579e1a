"""The one place keras-hta touches Keras' private internals, each behind a guard.

1. `forward_losses(model)`: on JAX, Keras' step hands the losses of the
   forward pass (`add_loss` terms, which a stateless scope does not keep on
   the layers) to `compute_loss` through the model's private
   `_losses_override`. `HomotopyModel.losses` reads them there, so that f(θ)
   keeps its `add_loss` terms on JAX; where the attribute is gone, the
   public `network.losses` is used (and `tests/test_guide_models.py` fails,
   saying so).

2. `portable_compile_config(config)`: a saved optimizer's class is recorded
   under its backend-specific module, which another backend cannot train
   with; the entry is pointed at the public `keras.optimizers` (no private
   attribute is read; it rewrites Keras' private module paths).

3. `patch_keras()`: the workaround for keras-team/keras#20585, which breaks
   `fit` under TensorFlow's `MultiWorkerMirroredStrategy` even for a plain
   model (seen on Keras 3.15.1, TF 2.21):

   a. `TensorFlowTrainer._maybe_symbolic_build` all-reduces the first
      distributed batch, only to learn its shapes, and the collective reduce
      cannot convert the `PerReplica` value ("Attempt to convert a value
      (PerReplica...)"). The workaround takes the first local replica's
      batch, which has the same shapes.
   b. `reduce_per_replica` reduces scalar metric results with `axis=0`
      ("Invalid reduction dimension 0"). The workaround reduces scalars with
      `axis=None`.

   `keras_hta.multi_worker_strategy()` installs it, once, and only where
   each function it replaces or calls has the source it was checked against
   (a hash of `inspect.getsource`, `CHECKED_SOURCES`): a Keras that changed
   one of them keeps its own code, and a one-line warning says which. The
   replaced functions are module-level, so Keras allows no narrower scope
   than the process; inside them, every strategy but a multi-worker
   collective one goes to Keras' own code unchanged.
   `tests/test_multi_worker.py` checks that unpatched Keras still fails, so
   the workaround can go when upstream is fixed.

4. `all_layers`, `layer_paths`, `created_trainable`, `seed_states`: what a
   twin needs a copy of. Every layer below a model, custom layers' sublayers
   included, and each one's path by class and place (`Layer._flatten_layers`); the variables each layer created trainable
   (`Layer._trainable_variables`, which Keras' `trainable` setter walks: a
   frozen layer's weights and LoRA's base kernel are there, BatchNorm's
   statistics are not); the seed generators' state variables
   (`Layer._seed_generators`).

5. `load_into(network, store, path)`, `legacy_twin_paths(store, network)`: a
   `.keras` file of keras-hta 0.2 saved each twin as a copy of the network
   beside it (`layers/<class>_<n>`); Keras' own loader
   (`saving_lib._load_state`) reads one such copy into the network, so that
   its state (BatchNorm statistics) can be moved into the twin's.

6. `restorable_fit(model)`: on JAX, Keras' `fit` takes the variables' values
   out of them for the duration of training and puts back the last step's
   state at the end; when the first step of a `fit` raises, there is no
   such state yet, and the model is left without values ("a fit after a fit
   that raised fails", seen on Keras 3.15.1 for plain models too). Setting
   the trainer's `_jax_state` to the values before `fit` gives Keras' own
   `finally` clause something to put back.

7. `merged_lora(network)`: Keras' `Dense` and `EinsumDense` save a LoRA
   layer's kernel with θ's LoRA update merged into it, and not the LoRA
   weights; a twin, which shares the base kernel and has its own LoRA
   weights, would then count θ's update as well as its own. The twin state
   saves θ's LoRA weights and, after loading, takes their update back out of
   the base kernel (`Layer._kernel`).

8. `variable_index(optimizer, variable)`: the index of `variable` among an
   optimizer's variables as its `update_step` receives it (on TensorFlow the
   `tf.Variable` under the Keras one), by which Keras' own optimizers find a
   slot (`BaseOptimizer._get_variable_index`); benchmarks/study.py's control
   optimizers keep a slot per weight. The library never uses it.

9. `channels_last_conversion_off()`: Keras' PyTorch backend converts a
   convolution's input to channels-last memory
   (`keras.src.backend.torch.nn._maybe_convert_to_channels_last`);
   `benchmarks/torch_profile.py` measures what that costs by replacing it
   with the identity inside this context. The library never uses it.

Each function checks that the private attribute it reads exists and says in
one line, naming the Keras version, when it does not.
"""

import contextlib
import re
import warnings


def forward_losses(model):
    """The losses Keras' JAX step collected in the forward pass, or an empty list."""
    return list(getattr(model, "_losses_override", None) or [])


def portable_compile_config(config):
    """The saved compile config with backend-specific optimizer classes made public.

    On PyTorch (and TensorFlow) Keras serializes an optimizer under its
    backend class's module (`keras.src.backend.torch.optimizers.torch_sgd`),
    so a model saved there and loaded on another backend gets that backend's
    optimizer class and fails in its first step (seen on Keras 3.15.1 for
    plain Keras models too). Each such entry is pointed at
    `keras.optimizers`, which holds every built-in optimizer under the same
    class name; other entries are left as they are.
    """
    if isinstance(config, dict):
        config = {k: portable_compile_config(v) for k, v in config.items()}
        module = config.get("module")
        if isinstance(module, str) and module.startswith("keras.src.backend.") and ".optimizers" in module:
            config["module"] = "keras.optimizers"
        return config
    if isinstance(config, list):
        return [portable_compile_config(v) for v in config]
    return config


_TESTED = "3.15"  # setup.py's floor: the Keras CI installs


def _private(owner, name, what):
    """`getattr(owner, name)`, or a RuntimeError naming the Keras version when Keras no longer has it."""
    try:
        return getattr(owner, name)
    except AttributeError:
        import keras

        raise RuntimeError(
            f"keras-hta needs Keras' private {what} (`{name}`), which Keras {keras.__version__} does not have "
            f"(keras-hta is tested with Keras {_TESTED}): install that Keras, or report this."
        ) from None


def all_layers(model):
    """Every layer of `model` (itself first), sublayers of custom layers included."""
    return list(_private(model, "_flatten_layers", "Layer._flatten_layers")(include_self=True, recursive=True))


def _snake(name):
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()


def layer_paths(model):
    """`[(path, layer)]` for `model` (path `""`) and every layer below it, parents before children.

    A layer's path names it by its class and its place among its parent's
    sublayers of that class (`"bert_backbone/transformer_encoder/einsum_dense_1"`),
    as Keras' own saver addresses layers, not by the layers' names, which are
    generated and differ between two builds of one network. So the same layer
    has the same path in the network, in a network rebuilt from its config
    (`load_model`) and in a clone. Input layers, which a Functional model that
    reuses another model's inputs lists once more when rebuilt, hold no
    weights and are left out. Sublayers come from `Layer._flatten_layers`.
    """
    import keras

    paths, seen = [("", model)], {id(model)}

    def visit(layer, prefix):
        used = {}
        children = _private(layer, "_flatten_layers", "Layer._flatten_layers")(include_self=False, recursive=False)
        for child in children:
            if id(child) in seen or isinstance(child, keras.layers.InputLayer):
                continue
            seen.add(id(child))
            base = _snake(type(child).__name__)
            count = used.get(base, 0)
            used[base] = count + 1
            path = f"{prefix}/{base}" if prefix else base
            path = path if count == 0 else f"{path}_{count}"
            paths.append((path, child))
            visit(child, path)

    visit(model, "")
    return paths


def created_trainable(model):
    """Ids of the variables `model`'s layers created trainable, whether trainable now or frozen."""
    return {id(v) for layer in all_layers(model) for v in created_trainable_of(layer)}


def created_trainable_of(layer):
    """The variables `layer` itself created trainable (not its sublayers'), trainable now or frozen, in order."""
    return list(_private(layer, "_trainable_variables", "Layer._trainable_variables"))


def seed_states(model):
    """Ids of the state variables of `model`'s seed generators (dropout, noise, random augmentation)."""
    return {id(generator.state) for layer in all_layers(model)
            for generator in _private(layer, "_seed_generators", "Layer._seed_generators")}


def merged_lora(network):
    """`(layer, base kernel, LoRA variables)` of each layer whose LoRA update Keras merges into the kernel it saves.

    Keras' `Dense` and `EinsumDense` save `kernel` (the property: the base
    kernel plus the LoRA update) in the kernel's place and not the LoRA
    weights; the base kernel is the layer's private `_kernel`.
    """
    return [(layer, _private(layer, "_kernel", "Dense._kernel"), [layer.lora_kernel_a, layer.lora_kernel_b])
            for layer in all_layers(network)
            if getattr(layer, "lora_enabled", False) and hasattr(layer, "lora_kernel_a")]


def legacy_twin_paths(store, network):
    """The paths of the twin models in a keras-hta 0.2 weights store, in the twins' order.

    They were saved beside the network under the model's `layers`, each under
    its class name in snake case, numbered when repeated (`sequential`,
    `sequential_1`, ...), the network first.
    """
    h5 = _private(store, "h5_file", "H5IOStore.h5_file")
    from keras.src.utils import naming

    own = _private(naming, "to_snake_case", "naming.to_snake_case")(type(network).__name__)

    def order(name):
        base, _, number = name.rpartition("_")
        return (base, int(number)) if number.isdigit() else (name, 0)

    names = sorted((name for name in h5.get("layers", {}).keys() if name != own), key=order)
    return [f"layers/{name}" for name in names]


def load_into(network, store, path):
    """Loads the weights saved under `path` of a weights store into `network`, with Keras' own loader."""
    from keras.src.saving import saving_lib

    _private(saving_lib, "_load_state", "saving_lib._load_state")(network, store, None, inner_path=path)


@contextlib.contextmanager
def restorable_fit(model):
    """Around Keras' `fit` on JAX: a failed first step leaves the model with the values it had (see 6. above)."""
    import keras

    if keras.backend.backend() != "jax":
        yield
        return
    _private(model, "jax_state_sync", "JAXTrainer.jax_state_sync")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # as fit would, so that its state can be kept too
    # Metrics are built inside fit (their count changes): they are reset at each epoch anyway.
    model._jax_state = {
        "trainable_variables": [v.value for v in model.trainable_variables],
        "non_trainable_variables": [v.value for v in model.non_trainable_variables],
    }
    if model.optimizer is not None and model.optimizer.built:
        model._jax_state["optimizer_variables"] = [v.value for v in model.optimizer.variables]
    try:
        yield
    finally:
        model.jax_state_sync()
        model._jax_state = None


_PATCHED = False


def _first_local(strategy, value):
    import tensorflow as tf

    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


# The first 16 hex digits of the SHA-256 of `inspect.getsource` of each function of Keras' TensorFlow trainer
# that the workaround replaces or calls, as checked (Keras 3.15.1).
CHECKED_SOURCES = {
    "reduce_per_replica": "2e7d54b1e6edc29a",
    "TensorFlowTrainer._maybe_symbolic_build": "92a504f5eba9b29f",
    "_collective_all_reduce_multi_worker": "0302369d850e6694",
}


def source_hash(function):
    """The first 16 hex digits of the SHA-256 of `function`'s source (`inspect.getsource`)."""
    import hashlib
    import inspect

    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def changed_sources(tf_trainer):
    """The names in `CHECKED_SOURCES` that `tf_trainer` lacks or whose source differs from the one checked."""
    changed = []
    for qualname, digest in CHECKED_SOURCES.items():
        owner = tf_trainer
        for part in qualname.split("."):
            owner = getattr(owner, part, None)
        if owner is None or source_hash(owner) != digest:
            changed.append(qualname)
    return changed


def patch_keras():
    """Installs the workaround in Keras' TensorFlow trainer; returns True if it did now."""
    global _PATCHED
    if _PATCHED:
        return False
    import keras
    from keras import tree

    # The guard: the workaround replaces private functions of Keras 3's TensorFlow trainer; where one is gone
    # or its code is not the code it was checked against, it is not installed.
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        tf_trainer = None
    changed = ["keras.src.backend.tensorflow.trainer"] if tf_trainer is None else changed_sources(tf_trainer)
    if changed:
        warnings.warn(f"keras_hta.multi_worker_strategy: in Keras {keras.__version__}, {', '.join(changed)} is missing or not "
                      "the code the workaround for keras-team/keras#20585 was checked against, so it is not installed; "
                      "training runs with Keras as it is.", RuntimeWarning)
        return False

    original_reduce = tf_trainer.reduce_per_replica
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            def reduce(v):
                rank = _first_local(strategy, v).shape.rank
                return strategy.reduce("MEAN", v, axis=None if rank == 0 else 0)

            return tree.map_structure(reduce, values)
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or not tf_trainer._collective_all_reduce_multi_worker(strategy) or iterator is None:
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tree.map_structure(lambda v: _first_local(strategy, v), next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _PATCHED = True
    return True


def variable_index(optimizer, variable):
    """The index of `variable` (as `update_step` receives it) among the variables `optimizer` was built with (see 8.)."""
    return _private(optimizer, "_get_variable_index", "BaseOptimizer._get_variable_index")(variable)


@contextlib.contextmanager
def channels_last_conversion_off():
    """Inside: Keras' PyTorch conversion of a convolution's input to channels-last memory is the identity (see 9.)."""
    from keras.src.backend.torch import nn as torch_nn

    original = _private(torch_nn, "_maybe_convert_to_channels_last", "torch nn._maybe_convert_to_channels_last")
    torch_nn._maybe_convert_to_channels_last = lambda tensor: tensor
    try:
        yield
    finally:
        torch_nn._maybe_convert_to_channels_last = original
