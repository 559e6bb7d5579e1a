"""keras-tuner: RandomSearch, BayesianOptimization and Hyperband over HTA schedules."""

import numpy as np
import pytest

import keras
import keras_tuner
import keras_hta as hta
from keras_hta.tuning import HomotopyHyperModel


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] * x[:, 1] > 0).astype("int32")
    return x, y


def _build(hp):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(hp.Int("units", 4, 12, step=4), activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class _Seen(keras.callbacks.Callback):
    count = 0

    def on_train_begin(self, logs=None):
        type(self).count += 1


TUNERS = {
    "random": lambda hm, d, **k: keras_tuner.RandomSearch(hm, objective="val_accuracy", max_trials=2, directory=d, **k),
    "bayesian": lambda hm, d, **k: keras_tuner.BayesianOptimization(hm, objective="val_accuracy", max_trials=2, directory=d, **k),
    "hyperband": lambda hm, d, **k: keras_tuner.Hyperband(hm, objective="val_accuracy", max_epochs=3, factor=3, directory=d, **k),
}


@pytest.mark.parametrize("kind", sorted(TUNERS))
def test_search_completes_and_best_model_reloads(tmp_path, kind):
    x, y = _data()
    hypermodel = HomotopyHyperModel(_build, l_start=(0.1, 1.0), l_stop=(0.05, 0.5), values=(2, 3),
                                    epochs_per_value=1, split=["channels", "layers"])
    tuner = TUNERS[kind](hypermodel, str(tmp_path), seed=1, overwrite=True)
    _Seen.count = 0
    tuner.search(x, y, validation_split=0.25, epochs=2, verbose=0, callbacks=[_Seen()])
    trials = tuner.oracle.trials.values()
    assert trials and all(t.status == "COMPLETED" for t in trials), [t.status for t in trials]
    assert _Seen.count == len(trials)  # the tuner's own callbacks were kept
    best_hp = tuner.get_best_hyperparameters()[0]
    for name in ("homotopy_l_start", "homotopy_split", "homotopy_anchor", "homotopy_schedule"):
        assert name in best_hp.values
    schedule = HomotopyHyperModel.schedule_from_hp(best_hp)
    assert schedule(0) == pytest.approx(best_hp.get("homotopy_l_start"))
    best = tuner.get_best_models(1)[0]
    assert isinstance(best, hta.HomotopyModel)
    accuracy = best.evaluate(x[72:], y[72:], verbose=0, return_dict=True)["accuracy"]
    best_trial = tuner.oracle.get_best_trials(1)[0]
    assert accuracy == pytest.approx(best_trial.metrics.get_best_value("val_accuracy"), abs=1e-6)


def test_schedule_from_hp_formulas():
    hp = keras_tuner.HyperParameters()
    for name, value in (("homotopy_l_start", 0.8), ("homotopy_l_stop", 0.1), ("homotopy_values", 4),
                        ("homotopy_epochs_per_value", 2), ("homotopy_schedule", "geometric")):
        hp.Fixed(name, value)
    s = HomotopyHyperModel.schedule_from_hp(hp)
    np.testing.assert_allclose([s(p) for p in range(0, 8, 2)], [0.8, 0.4, 0.2, 0.1], rtol=1e-12)
    hp.values["homotopy_schedule"] = "linear"
    s = HomotopyHyperModel.schedule_from_hp(hp)
    np.testing.assert_allclose([s(p) for p in range(0, 10, 2)], [0.8, 0.8 - 0.7 / 3, 0.8 - 1.4 / 3, 0.1, 0.1], rtol=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        HomotopyHyperModel(_build, schedule="cosine")


def test_mirrored_strategy_search(tmp_path, mirrored):
    x, y = _data()
    tuner = TUNERS["random"](HomotopyHyperModel(_build, epochs_per_value=1), str(tmp_path),
                             distribution_strategy=mirrored, overwrite=True, seed=2)
    tuner.search(x, y, validation_split=0.25, epochs=2, verbose=0, batch_size=16)
    trials = list(tuner.oracle.trials.values())
    assert all(t.status == "COMPLETED" for t in trials), [(t.status, t.message) for t in trials]
    assert tuner.get_best_models(1)[0].distribute_strategy.num_replicas_in_sync == 2


def test_categorical_tuples_are_choices():
    hp = keras_tuner.HyperParameters()
    hypermodel = HomotopyHyperModel(_build, split=("channels", "layers"), anchor=("zeros", "init"))
    values = hypermodel.declare(hp)
    assert values["split"] == "channels" and hp.get("homotopy_split") == "channels"
    assert hp.space[[p.name for p in hp.space].index("homotopy_split")].values == ["channels", "layers"]
    assert values["schedule"] == "linear"  # the default ("linear", "geometric")
