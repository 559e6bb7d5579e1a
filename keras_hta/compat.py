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

   `keras_hta.multi_worker_strategy()` installs it, once, behind a
   Keras-version guard. `tests/test_multi_worker.py` checks that unpatched
   Keras still fails, so the workaround can go when upstream is fixed.
"""

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


_PATCHED = False


def _first_local(strategy, value):
    import tensorflow as tf

    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def patch_keras():
    """Installs the workaround in Keras' TensorFlow trainer; returns True if it did now."""
    global _PATCHED
    if _PATCHED:
        return False
    import keras
    from keras import tree

    # The Keras-version guard: the workaround replaces private functions of
    # Keras 3's TensorFlow trainer; where they are gone, it is not installed.
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        tf_trainer = None
    if tf_trainer is None or not all(
        hasattr(owner, name) for owner, name in (
            (tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build"), (tf_trainer, "reduce_per_replica"),
            (tf_trainer, "_collective_all_reduce_multi_worker"))
    ):
        warnings.warn(f"keras_hta.multi_worker: Keras {keras.__version__} lacks a function the workaround for "
                      "keras-team/keras#20585 replaces, so it is not installed; training runs with Keras as it is.", RuntimeWarning)
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
