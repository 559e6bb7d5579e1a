"""Multi-worker training: TensorFlow's MultiWorkerMirroredStrategy, and the
smallest workaround for a Keras bug that breaks it.

With Keras 3 on TensorFlow (seen on Keras 3.15.1, TF 2.21), `fit` under
`MultiWorkerMirroredStrategy` fails even for a plain model
(https://github.com/keras-team/keras/issues/20585):

1. `TensorFlowTrainer._maybe_symbolic_build` all-reduces the first
   distributed batch, only to learn its shapes, and the collective reduce
   cannot convert the `PerReplica` value ("Attempt to convert a value
   (PerReplica...)"). The workaround takes the first local replica's batch,
   which has the same shapes.
2. `reduce_per_replica` reduces scalar metric results with `axis=0`
   ("Invalid reduction dimension 0"). The workaround reduces scalars with
   `axis=None`.

`patch_keras()` installs both, once; `multi_worker_strategy()` creates the
strategy and calls it. `tests/test_multi_worker.py` checks that unpatched
Keras still fails, so the workaround can go when upstream is fixed.
"""

import warnings

import tensorflow as tf

_PATCHED = False


def _first_local(strategy, value):
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


def multi_worker_strategy(**kwargs):
    """`tf.distribute.MultiWorkerMirroredStrategy(**kwargs)` with the Keras workaround.

    The cluster comes from the `TF_CONFIG` environment variable, as usual.
    Create it at program start, before other TensorFlow work, on every worker.

    Example:

    ```python
    # on each worker, with TF_CONFIG set:
    strategy = keras_hta.multi_worker_strategy()
    with strategy.scope():
        model = keras_hta.HomotopyModel.from_model(build_network())
        model.compile(...)
    model.fit(dataset, epochs=10, callbacks=[keras_hta.HomotopyScheduler(schedule)])
    ```
    """
    strategy = tf.distribute.MultiWorkerMirroredStrategy(**kwargs)
    patch_keras()
    return strategy
