"""HomotopyScheduler: L per epoch or batch, logging, resume, deepcopy, errors."""

import copy

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import dense_network, regression_data


class _RecordL(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_begin(self, batch, logs=None):
        self.values.append(float(self.model.homotopy_l.numpy()))


def _model():
    model = hta.HomotopyModel.from_model(dense_network(), homotopy_l=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def test_epoch_update_sets_and_logs_l():
    x, y = regression_data(n=32)
    schedule = hta.schedules.Linear(0.01, 0.005, -0.001, epochs_per_value=2)
    record = _RecordL()
    model = _model()
    history = model.fit(x, y, batch_size=8, epochs=6, verbose=0,
                        callbacks=[hta.HomotopyScheduler(schedule), record])
    want = [schedule(e) for e in range(6)]
    assert want == [0.01, 0.01, 0.009, 0.009, 0.008, 0.008]  # the values as written, no float64 tails
    assert history.history["homotopy_l"] == want  # logged as the schedule gave them, not as float32
    np.testing.assert_allclose(record.values, np.repeat(want, 4), rtol=1e-6)
    # anchor_penalty is L·‖·‖²: divide out L and it is the unweighted term.
    assert int(model.homotopy_epoch.numpy()) == 6


def test_batch_update_follows_global_step():
    x, y = regression_data(n=32)
    record = _RecordL()
    model = _model()
    scheduler = hta.HomotopyScheduler(lambda step: 1.0 / (step + 1), update="batch")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[scheduler, record])
    want = [1.0 / (s + 1) for s in range(8)]
    np.testing.assert_allclose(record.values, want, rtol=1e-6)
    # The steps used those values (on JAX too, where fit keeps the variables in its own state):
    # the logged homotopy_l is the mean of the L each step read.
    np.testing.assert_allclose(history.history["homotopy_l"], [np.mean(want[:4]), np.mean(want[4:])], rtol=1e-6)


def test_second_fit_continues_the_schedule_and_initial_epoch_is_respected():
    x, y = regression_data(n=16)
    schedule = hta.schedules.Piecewise([1, 2, 3], [0.4, 0.3, 0.2, 0.1])
    model = _model()
    h1 = model.fit(x, y, epochs=2, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)])
    h2 = model.fit(x, y, epochs=2, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)])
    np.testing.assert_allclose(h1.history["homotopy_l"] + h2.history["homotopy_l"], [0.4, 0.3, 0.2, 0.1], rtol=1e-6)
    fresh = _model()  # a fresh model started at initial_epoch=2 begins there
    h3 = fresh.fit(x, y, epochs=3, initial_epoch=2, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)])
    np.testing.assert_allclose(h3.history["homotopy_l"], [0.2], rtol=1e-6)


def test_backup_and_restore_resumes_schedule(tmp_path):
    x, y = regression_data(n=16)
    schedule = hta.schedules.Piecewise([1, 2, 3], [0.4, 0.3, 0.2, 0.1])

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("simulated crash")

    backup = str(tmp_path / "backup")
    model = _model()
    with pytest.raises(RuntimeError):
        model.fit(x, y, epochs=4, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(backup), hta.HomotopyScheduler(schedule), Crash()])
    model = _model()
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup), hta.HomotopyScheduler(schedule)])
    np.testing.assert_allclose(history.history["homotopy_l"], [0.2, 0.1], rtol=1e-6)


def test_deepcopy_copies_settings_not_model():
    x, y = regression_data(n=16)
    scheduler = hta.HomotopyScheduler(hta.schedules.Linear(0.5, 0.1, -0.1), update="batch", verbose=0)
    assert copy.deepcopy(scheduler).schedule == scheduler.schedule
    _model().fit(x, y, epochs=1, verbose=0, callbacks=[scheduler])
    clone = copy.deepcopy(scheduler)  # after set_model: the model is not copied
    assert clone.update == "batch" and clone.schedule == scheduler.schedule
    assert clone.schedule is not scheduler.schedule


def test_errors():
    x, y = regression_data(n=16)
    with pytest.raises(ValueError, match="update='step'"):
        hta.HomotopyScheduler(0.1, update="step")
    plain = dense_network()
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="HomotopyModel"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[hta.HomotopyScheduler(0.1)])
    model = _model()
    before = model.get_weights()
    with pytest.raises(ValueError, match="schedule=-0.5"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[hta.HomotopyScheduler(lambda e: -0.5)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # refused before any step
