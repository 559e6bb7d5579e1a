"""A training process for the fault-tolerance and multi-worker tests.

python fit_worker.py OUT_PREFIX [--backup DIR] [--kill-epoch E --kill-batch B --marker FILE]
                                [--multi-worker] [--epochs N]
Writes OUT_PREFIX.npz (every model and optimizer variable) and OUT_PREFIX.json
(the epochs this process ran and its History).
"""

import argparse
import json
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--backup")
parser.add_argument("--kill-epoch", type=int, default=-1)
parser.add_argument("--kill-batch", type=int, default=-1)
parser.add_argument("--marker")
parser.add_argument("--multi-worker", action="store_true")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--global-batch", type=int, default=8)
parser.add_argument("--no-patch", action="store_true", help="multi-worker without keras_hta's Keras workaround")
parser.add_argument("--plain", action="store_true", help="a plain Keras model instead of a HomotopyModel")
args = parser.parse_args()

if args.multi_worker and args.no_patch:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
elif args.multi_worker:
    from keras_hta import multi_worker_strategy

    strategy = multi_worker_strategy()
else:
    strategy = tf.distribute.get_strategy()

import keras  # noqa: E402

import keras_hta as hta  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32")
y = rng.normal(size=(64, 3)).astype("float32")


class Kill(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == (args.kill_epoch, args.kill_batch) and not os.path.exists(args.marker):
            open(args.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ran = []

    def on_epoch_begin(self, epoch, logs=None):
        self.ran.append(epoch)


with strategy.scope():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(3)(h))
    model = network if args.plain else hta.HomotopyModel.from_model(
        network, anchor="zeros", split="random", seed=1, homotopy_l=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")

epochs = Epochs()
callbacks = [epochs, Kill()]
if not args.plain:
    callbacks.insert(0, hta.HomotopyScheduler(hta.schedules.Linear(0.5, 0.1, -0.1)))
if args.backup:
    callbacks.insert(0, keras.callbacks.BackupAndRestore(args.backup))
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.global_batch)
history = model.fit(data, epochs=args.epochs, verbose=0, callbacks=callbacks)
np.savez(args.out + ".npz", *[w.numpy() for w in model.weights], *[v.numpy() for v in model.optimizer.variables])
with open(args.out + ".json", "w") as f:
    json.dump({"epochs_ran": epochs.ran, "history": history.history}, f)
