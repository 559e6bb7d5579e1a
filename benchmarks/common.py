"""What the benchmark scripts share: the timed models, a step timer, the versions a results file records, and the
Markdown table their `render` functions write.

The scripts beside this file import it as `common` (a script's own folder is on its import path; the tests that
import a script put this folder there too).
"""

import importlib.util
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODELS = {  # name: (builder args, input shape, batch size)
    "vgg11/8": (("vgg11", 0.125), (32, 32, 3), 128),
    "vgg11/4": (("vgg11", 0.25), (32, 32, 3), 128),
    "vgg11/2": (("vgg11", 0.5), (32, 32, 3), 128),
    "cnn1d": (("cnn1d", 1.0), (40, 1), 128),
}


def build(model_name, variant):
    """The compiled model of a step-time variant: `plain*` a plain network, else a HomotopyModel of it."""
    import keras

    import keras_hta as hta
    from keras_hta.experiments import models

    (arch, width), shape, _ = MODELS[model_name]
    keras.utils.set_random_seed(0)
    network = models.get(arch, width, 10, shape)
    # L = 0.5 keeps the explicit step stable at this learning rate; L does not change the cost.
    model = network if variant.startswith("plain") else hta.HomotopyModel.from_model(
        network, homotopy_l=0.5, twin_batch="split" if variant == "hta_split" else "full",
        penalty_update="gradient" if variant == "hta_gradient" else "proximal")
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def dataset(model_name, steps, half=False):
    """Four fixed batches, repeated: tf.data on TensorFlow, a PyDataset elsewhere."""
    import keras

    _, shape, batch = MODELS[model_name]
    batch = batch // 2 if half else batch
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 4,) + shape).astype("float32")
    y = rng.integers(0, 10, size=batch * 4).astype("int32")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat().prefetch(2)

    from keras_hta.experiments.data import RepeatedBatches

    return RepeatedBatches(x, y, batch)


class StepTimes:
    """Each training step's wall time, from a callback's batch begin to its end."""

    def __init__(self):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(cb, batch, logs=None):
                cb.start = time.perf_counter()

            def on_train_batch_end(cb, batch, logs=None):
                self.times.append(time.perf_counter() - cb.start)

        self.times = []
        self.callback = Callback()


def _provenance():
    """keras_hta.experiments.provenance, loaded from its file: it imports nothing of keras-hta's, and importing
    the package would start Keras (the GPU check's driver must not)."""
    path = os.path.join(ROOT, "keras_hta", "experiments", "provenance.py")
    spec = importlib.util.spec_from_file_location("_keras_hta_provenance", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def provenance(command):
    """The provenance block of a results file (`keras_hta.experiments.provenance.record`): commit, versions, CPU."""
    return _provenance().record(command)


def thread_env():
    """The thread and kernel variables `keras-hta compare --threads` sets (`provenance.THREAD_ENV`)."""
    return _provenance().THREAD_ENV


def package_versions(names=("keras", "tensorflow-cpu", "jax", "torch", "numpy")):
    """The installed versions of `names` (default: Keras, the three backends and NumPy), as a results file records."""
    return _provenance().package_versions(names)


def table(head, rows):
    """A Markdown table's lines: the header, the separator, and one line per row (cells already formatted)."""
    line = lambda cells: "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"  # noqa: E731
    return [line(head), "|" + "---|" * len(head)] + [line(row) for row in rows]
