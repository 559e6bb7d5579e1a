"""
Title: VGG-BN on CIFAR-10: SGD against HTA
Description: The paper's §4.2 experiment at a size a CPU can run: the same
VGG, optimizer, schedule of L and augmentation, trained with and without HTA.

The paper trains VGG11/13/16/19 with batch normalisation with SGD, then the
same with HTA, varying L from 0.01 to 0.005 in steps of 0.001 with 4 epochs
per value, everything else equal. Here a narrower VGG11 (width 1/8) trains
for a few epochs on part of the data; pass larger values to go further, or
use `keras-hta compare` for seeds, tables and plots.

Run: python examples/cifar10_vgg.py [--data-dir PATH] [--epochs 2] [--width 0.125]
(the default data is ../shared/datasets/cifar10-jpeg.tar.gz beside this repo;
 without it, CIFAR-10 comes from tensorflow_datasets)
"""

import argparse
import os

import keras

import keras_hta as hta
from keras_hta.experiments import data, models

here = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", default=os.path.join(here, "..", "..", "shared", "datasets", "cifar10-jpeg.tar.gz"))
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--width", type=float, default=0.125)
parser.add_argument("--train-size", type=int, default=10000)
parser.add_argument("--batch-size", type=int, default=128)
args = parser.parse_args()

# Data: the paper's preprocessing (flip, crop with padding 4, per-channel
# normalisation; the test set is only normalised).
cifar = data.load_image_folder(args.data_dir) if os.path.exists(args.data_dir) else data.load_cifar10_tfds()
# A stratified, seeded subset: the folder is sorted by class, so its first
# examples would all be airplanes.
subset = data.stratified_indices(cifar["y_train"], min(args.train_size, len(cifar["y_train"])), seed=0)
x_train, y_train = cifar["x_train"][subset], cifar["y_train"][subset]
mean, std = data.channel_stats(x_train)


def train_vgg(use_hta):
    keras.utils.set_random_seed(0)  # the same initial weights and batches for both runs
    train = data.image_pipeline(x_train, y_train, args.batch_size, True, mean, std, seed=0)
    test = data.image_pipeline(cifar["x_test"], cifar["y_test"], args.batch_size, False, mean, std)
    network = models.vgg(11, width=args.width, num_classes=len(cifar["class_names"]))
    model, callbacks = network, []
    if use_hta:
        # The paper's squared norms; the penalties are applied exactly after
        # each SGD step (penalty_update="proximal", the default), so the
        # paper's small L is stable at this learning rate (see the README).
        model = hta.HomotopyModel.from_model(network, split="channels", anchor="zeros")
        schedule = hta.schedules.Linear(0.01, 0.005, -0.001, epochs_per_value=4)
        callbacks = [hta.HomotopyScheduler(schedule)]
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # shuffle=False: the pipeline shuffles by its seed (Keras's own reshuffle of a
    # PyDataset's batches follows Python's global random, which HTA's build draws from).
    model.fit(train, epochs=args.epochs, callbacks=callbacks, verbose=2, shuffle=False)
    return model.evaluate(test, verbose=0, return_dict=True)["accuracy"]  # read once, at the end


sgd_accuracy = train_vgg(use_hta=False)
hta_accuracy = train_vgg(use_hta=True)
print(f"VGG11-BN width {args.width:g}, {args.epochs} epochs: test accuracy SGD {sgd_accuracy:.4f}, HTA {hta_accuracy:.4f}")
