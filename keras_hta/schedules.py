"""Schedules for the homotopy parameter L.

A schedule maps a position (the epoch index for
`HomotopyScheduler(update="epoch")`, the global step for `update="batch"`)
to a value of L > 0. Every schedule here is a small serializable object with
a flat `get_config()`; any Python callable `position -> L` is accepted by the
callback as well.
"""

import keras
from keras_hta.checks import check_epochs_per_value as _check_epochs_per_value
from keras_hta.checks import check_linear
from keras_hta.checks import validate_l  # noqa: F401  (part of this module's API)

PACKAGE = "keras_hta"


def _check_position(position):
    position = int(position)
    if position < 0:
        raise ValueError(f"A schedule position must be >= 0. Received: {position}")
    return position


def _check_boundaries(boundaries, items, name):
    """Returns `boundaries` as ints if they are increasing, > 0, and one fewer than `items`."""
    result = [int(b) for b in boundaries]
    if len(items) != len(result) + 1:
        raise ValueError(
            f"Argument `{name}` must have one more element than `boundaries`. "
            f"Received: {len(result)} boundaries, {len(items)} {name}"
        )
    if any(b <= a for a, b in zip([0] + result, result)):
        raise ValueError(
            "Argument `boundaries` must be strictly increasing integers "
            f"> 0. Received: boundaries={list(boundaries)}"
        )
    return result


class HomotopySchedule:
    """Base class: subclasses implement `__call__(position)` and `get_config()`."""

    def __call__(self, position):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()


@keras.saving.register_keras_serializable(package=PACKAGE)
class Constant(HomotopySchedule):
    """L(p) = value.

    Args:
        value: Float > 0.

    Example:

    >>> keras_hta.schedules.Constant(0.01)(7)
    0.01
    """

    def __init__(self, value):
        self.value = validate_l(value, "value")

    def __call__(self, position):
        _check_position(position)
        return self.value

    def get_config(self):
        return {"value": self.value}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Linear(HomotopySchedule):
    """L(p) = start + step · ⌊p / epochs_per_value⌋, held at `stop` once reached.

    The paper's schedule (§4.2) is `Linear(0.01, 0.005, -0.001, 4)`: L goes
    0.01, 0.009, ..., 0.005, each value for 4 epochs, then stays at 0.005.

    Args:
        start: Float > 0, L at position 0.
        stop: Float > 0, the last value; L never passes it.
        step: Float, the change per value; its sign must point from
            `start` to `stop` (any sign when they are equal).
        epochs_per_value: Integer >= 1, positions spent on each value.

    Example:

    >>> s = keras_hta.schedules.Linear(0.01, 0.005, -0.001, 4)
    >>> [s(p) for p in (0, 3, 4, 20, 99)]
    [0.01, 0.01, 0.009, 0.005, 0.005]
    """

    def __init__(self, start, stop, step, epochs_per_value=1):
        self.start, self.stop, self.step = check_linear(start, stop, step)
        _check_epochs_per_value(epochs_per_value)
        self.epochs_per_value = epochs_per_value

    def __call__(self, position):
        k = _check_position(position) // self.epochs_per_value
        # As written: 0.1 - 2 * 0.02 is 0.06, not 0.060000000000000005 (15 significant digits: the float64 tail goes).
        value = float(f"{self.start + self.step * k:.15g}")
        return max(value, self.stop) if self.stop <= self.start else min(value, self.stop)

    def get_config(self):
        return {
            "start": self.start,
            "stop": self.stop,
            "step": self.step,
            "epochs_per_value": self.epochs_per_value,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class Geometric(HomotopySchedule):
    """L(p) = start · factor^⌊p / epochs_per_value⌋, held at `stop` once reached.

    Use it when L should sweep several orders of magnitude, e.g. from a
    decoupled 10 down to a coupled 0.01.

    Args:
        start: Float > 0, L at position 0.
        stop: Float > 0, the last value; L never passes it.
        factor: Float > 0, the ratio between consecutive values; below 1
            when `stop < start`, above 1 when `stop > start`.
        epochs_per_value: Integer >= 1, positions spent on each value.

    Example:

    >>> s = keras_hta.schedules.Geometric(1.0, 0.01, 0.1)
    >>> [round(s(p), 12) for p in (0, 1, 2, 3)]
    [1.0, 0.1, 0.01, 0.01]
    """

    def __init__(self, start, stop, factor, epochs_per_value=1):
        self.start = validate_l(start, "start")
        self.stop = validate_l(stop, "stop")
        self.factor = validate_l(factor, "factor")
        _check_epochs_per_value(epochs_per_value)
        self.epochs_per_value = epochs_per_value
        direction = self.stop - self.start
        if direction != 0 and (self.factor == 1 or (direction > 0) != (self.factor > 1)):
            raise ValueError(
                "Argument `factor` must move from `start` towards `stop`. "
                f"Received: start={start}, stop={stop}, factor={factor}"
            )

    def __call__(self, position):
        k = _check_position(position) // self.epochs_per_value
        value = self.start * self.factor**k
        return max(value, self.stop) if self.stop <= self.start else min(value, self.stop)

    def get_config(self):
        return {
            "start": self.start,
            "stop": self.stop,
            "factor": self.factor,
            "epochs_per_value": self.epochs_per_value,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class Piecewise(HomotopySchedule):
    """L(p) = values[i] for boundaries[i-1] <= p < boundaries[i].

    `values[0]` holds before `boundaries[0]`, `values[-1]` from
    `boundaries[-1]` on.

    Args:
        boundaries: List of strictly increasing integers > 0.
        values: List of floats > 0, one more than `boundaries`.

    Example:

    >>> s = keras_hta.schedules.Piecewise([2, 5], [1.0, 0.1, 0.01])
    >>> [s(p) for p in (0, 1, 2, 4, 5, 9)]
    [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    """

    def __init__(self, boundaries, values):
        self.values = [validate_l(v, "values") for v in values]
        self.boundaries = _check_boundaries(boundaries, self.values, "values")

    def __call__(self, position):
        position = _check_position(position)
        return self.values[sum(b <= position for b in self.boundaries)]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Join(HomotopySchedule):
    """Runs `schedules[i]` from `boundaries[i-1]`, each restarted at 0.

    L(p) = schedules[i](p − boundaries[i-1]) for boundaries[i-1] <= p <
    boundaries[i] (with boundaries[-1] taken as 0), as optax's
    `join_schedules`. Build it with `keras_hta.schedules.join`.

    Args:
        schedules: List of schedules, one more than `boundaries`.
        boundaries: List of strictly increasing integers > 0.
    """

    def __init__(self, schedules, boundaries):
        self.schedules = [get(s) for s in schedules]
        self.boundaries = _check_boundaries(boundaries, self.schedules, "schedules")

    def __call__(self, position):
        position = _check_position(position)
        i = sum(b <= position for b in self.boundaries)
        offset = self.boundaries[i - 1] if i else 0
        return self.schedules[i](position - offset)

    def get_config(self):
        return {
            "schedules": [keras.saving.serialize_keras_object(s) for s in self.schedules],
            "boundaries": list(self.boundaries),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedules"] = [
            keras.saving.deserialize_keras_object(s) for s in config["schedules"]
        ]
        return cls(**config)


def join(schedules, boundaries):
    """Chains schedules: `schedules[i]` runs from `boundaries[i-1]`, restarted at 0.

    Example:

    >>> warm = keras_hta.schedules.Constant(1.0)
    >>> anneal = keras_hta.schedules.Linear(0.01, 0.005, -0.001, 4)
    >>> s = keras_hta.schedules.join([warm, anneal], [3])
    >>> [round(s(p), 6) for p in (0, 2, 3, 7)]
    [1.0, 1.0, 0.01, 0.009]
    """
    return Join(schedules, boundaries)


def get(identifier):
    """Returns a schedule from a schedule, a callable, a number or a config dict."""
    if isinstance(identifier, (int, float)) and not isinstance(identifier, bool):
        return Constant(identifier)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(
        "Argument `schedule` must be a schedule, a callable `position -> L` "
        f"or a number. Received: schedule={identifier!r}"
    )
