"""`HomotopyScheduler`: the callback that anneals L during `fit`."""

import copy

import keras
import numpy as np

from keras_hta import schedules as schedules_lib

UPDATES = ("epoch", "batch")


class HomotopyScheduler(keras.callbacks.Callback):
    """Sets a `HomotopyModel`'s homotopy parameter L from a schedule.

    With `update="epoch"` (default) L is set at the start of every epoch to
    `schedule(position)`, where `position` is the number of HTA epochs the
    model has completed (`model.homotopy_epoch`, saved with it; or `fit`'s
    epoch index, if that is larger, as with `initial_epoch`), so a run
    resumed from a saved model or a `BackupAndRestore` checkpoint goes on
    with the schedule instead of restarting it. With `update="batch"`
    L is set before every batch to `schedule(optimizer.iterations)`.

    L is written to the model's variable `model.homotopy_l` (nothing is
    retraced). The model logs it as the metric `homotopy_l` (its mean over
    the epoch's steps: the epoch's value for `update="epoch"`), so it lands
    in `History` and TensorBoard whatever the order of the callbacks. With
    `update="epoch"` the epoch's log holds the schedule's value as the
    schedule gave it (`0.08`, not its float32 `0.07999999821186066`), where
    it is the float32 value the variable held.

    Args:
        schedule: A `keras_hta.schedules` object, any callable
            `position -> L`, or a number (a constant L).
        update: String, `"epoch"` or `"batch"`.
        verbose: Integer. 0: quiet, 1: print L when it changes.

    Raises:
        ValueError: for an unknown `update`, or when the schedule gives
            L <= 0, NaN or inf (checked before the epoch or batch it
            would apply to, so the first value is checked before training).
        TypeError: when used on a model that is not a `HomotopyModel`.

    Example:

    ```python
    schedule = keras_hta.schedules.Linear(0.01, 0.005, -0.001, epochs_per_value=4)
    model.fit(x, y, epochs=24, callbacks=[keras_hta.HomotopyScheduler(schedule)])
    ```
    """

    def __init__(self, schedule, update="epoch", verbose=0):
        super().__init__()
        if update not in UPDATES:
            raise ValueError(
                f"Argument `update` must be one of {UPDATES}. Received: update={update!r}"
            )
        self.schedule = schedules_lib.get(schedule)
        self.update = update
        self.verbose = verbose

    def __deepcopy__(self, memo):
        # keras-tuner deep-copies callbacks per trial: copy the settings,
        # never the model this instance may be attached to.
        return type(self)(copy.deepcopy(self.schedule, memo), self.update, self.verbose)

    def _set_l(self, position, where):
        value = self.schedule(position)
        try:
            value = schedules_lib.validate_l(value, "schedule")
        except (TypeError, ValueError) as error:
            raise type(error)(f"{error} (at {where} {position})") from None
        if self.verbose and value != float(self.model.homotopy_l.numpy()):
            print(f"\n{where.capitalize()} {position}: HomotopyScheduler setting L to {value:g}.")
        if value != float(self.model.homotopy_l.numpy()):
            self.model.check_stability(value)
        self.model.homotopy_l.assign(value)
        self._value = value

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "homotopy_l"):
            raise TypeError(
                "HomotopyScheduler needs a keras_hta.HomotopyModel. Received: "
                f"model of type {type(self.model).__name__}"
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self.update == "epoch":
            self._set_l(position(self.model, epoch), "epoch")

    def on_train_batch_begin(self, batch, logs=None):
        if self.update == "batch":
            self._set_l(int(self.model.optimizer.iterations.numpy()), "step")

    def on_epoch_end(self, epoch, logs=None):
        # The logged mean of a float32 L; when it is the value set (L unchanged during the epoch), log that value.
        if self.update == "epoch" and logs and "homotopy_l" in logs:
            logged = float(logs["homotopy_l"])
            if logged == float(np.float32(self._value)) or abs(logged - self._value) <= 1e-6 * self._value:
                logs["homotopy_l"] = self._value


def position(model, epoch):
    """The schedule position of `fit`'s epoch `epoch`: the HTA epochs completed, or `epoch` if larger.

    Larger when `fit` starts at an `initial_epoch` the model never ran; a
    model fitted again, reloaded or resumed has completed at least as many.
    """
    return max(int(model.homotopy_epoch.numpy()), int(epoch))


class EpochCounter(keras.callbacks.Callback):
    """Counts a `HomotopyModel`'s completed epochs in `model.homotopy_epoch`; `fit` puts it before every callback."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.homotopy_epoch.assign(position(self.model, epoch) + 1)
