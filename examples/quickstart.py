"""
Title: Quickstart: training a classifier with the Homotopy Training Algorithm
Description: Wrap a Keras network in `HomotopyModel`, anneal L with
`HomotopyScheduler`, compare with plain SGD, and merge back to a plain model.

HTA trains two twin copies of the weights, θ and η. Each twin is free on one
half of every layer's output channels and pulled towards an anchor on the
other half; a coupling term (1/L)·‖θ − η‖² ties the twins together as L
shrinks. Everything else is ordinary `model.fit`.

Run: python examples/quickstart.py
"""

import numpy as np

import keras
import keras_hta as hta

# A small non-linear task that needs no download: three interleaved spirals.
rng = np.random.default_rng(0)
n, classes = 900, 3
t = rng.uniform(0.2, 1.0, n)
label = rng.integers(0, classes, n)
angle = 4.0 * t + 2.0 * np.pi * label / classes
x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + rng.normal(0, 0.03, (n, 2))
x, label = x.astype("float32"), label.astype("int32")
x_train, y_train, x_val, y_val = x[:700], label[:700], x[700:], label[700:]


def network():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((2,), name="point")
    h = keras.layers.Dense(64, activation="relu")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(classes)(h))


def compile_args():
    return dict(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


# The baseline: plain SGD.
plain = network()
plain.compile(**compile_args())
plain.fit(x_train, y_train, epochs=24, batch_size=28, verbose=0)  # 700 examples: 25 equal batches

# HTA: the same network, optimizer and epochs. Half of every layer's units
# are pulled towards their initial values in θ, the other half in η. L falls
# from 0.1 to 0.02 in steps of 0.02, 4 epochs each. (SGD can only be stable
# on the coupling term (1/L)·‖θ − η‖² while learning_rate · 4/L < 2·(1 +
# momentum): the paper's L = 0.01 would need learning_rate < 0.0095 here, and
# HomotopyModel warns when a value of L breaks that bound.)
model = hta.HomotopyModel.from_model(network(), split="channels", anchor="init")
model.compile(**compile_args())
schedule = hta.schedules.Linear(start=0.1, stop=0.02, step=-0.02, epochs_per_value=4)
history = model.fit(
    x_train, y_train, validation_data=(x_val, y_val), epochs=24, batch_size=28,
    callbacks=[hta.HomotopyScheduler(schedule)], verbose=0,
)
print("L per epoch:", [round(v, 4) for v in history.history["homotopy_l"]])
print("final coupling ||theta - eta||^2:", history.history["coupling"][-1])
# The logs add up, batch by batch: H = f(θ) + f(η) + L·anchor penalty + coupling / L.
print("last epoch:", {key: history.history[key][-1]
                      for key in ("loss", "f_theta", "f_eta", "anchor_penalty", "coupling", "homotopy_l")})

# Back to a plain Keras model with θ's weights: same predictions, no twins.
merged = hta.merge(model)
assert np.allclose(merged.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-6)
merged.compile(**compile_args())
sgd_accuracy = plain.evaluate(x_val, y_val, verbose=0)[1]
hta_accuracy = merged.evaluate(x_val, y_val, verbose=0)[1]
print(f"validation accuracy  SGD: {sgd_accuracy:.3f}  HTA: {hta_accuracy:.3f}")
