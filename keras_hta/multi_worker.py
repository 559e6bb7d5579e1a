"""Multi-worker training: TensorFlow's MultiWorkerMirroredStrategy, with the
smallest workaround for a Keras bug that breaks it (`keras_hta.compat`:
keras-team/keras#20585). TensorFlow only.
"""

import tensorflow as tf

from keras_hta.compat import patch_keras


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
