"""
Title: Searching the L schedule with keras-tuner
Description: Let keras-tuner choose HTA's schedule of L (start, stop, linear
or geometric, epochs per value), the weight split and the anchor.

`HomotopyHyperModel` wraps the model your build function returns in a
`HomotopyModel`; the tuner samples the schedule at fit time and appends the
`HomotopyScheduler` to its own callbacks. The best trial's hyperparameters
turn back into a schedule object with `schedule_from_hp`.

Run: python examples/tune_schedule.py
"""

import keras
import keras_tuner
import numpy as np

import keras_hta as hta
from keras_hta.experiments import data, models
from keras_hta.tuning import HomotopyHyperModel

# MNIST-1D: generated locally, no download. The tuner's objective is
# measured on a stratified validation split held out of the training data;
# the test set is read once, for the best model.
mnist = data.load_mnist1d()
val = data.stratified_indices(mnist["y_train"], 400, seed=0)
train = np.setdiff1d(np.arange(len(mnist["y_train"])), val)
x_train, y_train = mnist["x_train"][train, :, None], mnist["y_train"][train]
x_val, y_val = mnist["x_train"][val, :, None], mnist["y_train"][val]
x_test, y_test = mnist["x_test"][..., None], mnist["y_test"]


def build(hp):
    keras.utils.set_random_seed(0)
    network = models.cnn1d(width=hp.Choice("width", [0.5, 1.0]))
    network.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return network


# The search space: L from 0.05..1 down to 0.02..0.2, linear or geometric.
hypermodel = HomotopyHyperModel(build, l_start=(0.05, 1.0), l_stop=(0.02, 0.2), values=(2, 4),
                                epochs_per_value=(1, 3), anchor=["zeros", "init"])
tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=3,
                                 directory="tune_example", overwrite=True, seed=0)
tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=4, batch_size=128, verbose=0)

tuner.results_summary(num_trials=3)
best_hp = tuner.get_best_hyperparameters()[0]
print("Best schedule:", HomotopyHyperModel.schedule_from_hp(best_hp))
best = tuner.get_best_models(1)[0]  # a HomotopyModel with the trained weights
print("Best test accuracy: %.4f" % best.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])
plain = hta.merge(best)
