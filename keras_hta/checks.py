"""Argument checks that need no Keras backend: L values, a linear L schedule, the penalties' options.

The library uses them, and so does the `keras-hta` command, which checks its
flags with them before Keras (and TensorFlow) is imported.
"""

import math

NORMS = ("squared", "l2")
PENALTY_UPDATES = ("proximal", "gradient")


def validate_l(value, name="homotopy_l"):
    """Returns `value` as a float, or raises if it is not a finite L > 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"Argument `{name}` must be a positive finite number. "
            f"Received: {name}={value!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a positive finite number. "
            f"Received: {name}={value}"
        )
    return value


def check_epochs_per_value(epochs_per_value):
    """Raises unless `epochs_per_value` is an integer >= 1."""
    if (
        isinstance(epochs_per_value, bool)
        or not isinstance(epochs_per_value, int)
        or epochs_per_value < 1
    ):
        raise ValueError(
            "Argument `epochs_per_value` must be an integer >= 1. "
            f"Received: epochs_per_value={epochs_per_value!r}"
        )


def check_linear(start, stop, step):
    """`(start, stop, step)` as floats for a linear L schedule, or raises naming the argument."""
    start_value, stop_value = validate_l(start, "start"), validate_l(stop, "stop")
    step_value = float(step)
    direction = stop_value - start_value
    if direction != 0 and (step_value == 0 or not math.isfinite(step_value) or (direction > 0) != (step_value > 0)):
        raise ValueError(
            "Argument `step` must move from `start` towards `stop`. "
            f"Received: start={start}, stop={stop}, step={step}"
        )
    return start_value, stop_value, step_value


def check_options(norm, penalty_update, names=None):
    """Raises for an unknown `norm` or `penalty_update`, or the inexact pair l2 + proximal.

    `names` maps `"norm"` and `"penalty_update"` to what the message calls
    them: the command line passes its flags (`--norm`, `--penalty-update`).
    """
    def called(key):
        return names[key] if names else key

    def said(key, value):
        return f"{names[key]} {value}" if names else f"{key}={value!r}"

    if norm not in NORMS:
        raise ValueError(f"Argument `{called('norm')}` must be one of {NORMS}. Received: {said('norm', norm)}")
    if penalty_update not in PENALTY_UPDATES:
        raise ValueError(f"Argument `{called('penalty_update')}` must be one of {PENALTY_UPDATES}. "
                         f"Received: {said('penalty_update', penalty_update)}")
    if norm == "l2" and penalty_update == "proximal":
        raise ValueError(
            f"Argument {said('penalty_update', 'proximal')} needs {said('norm', 'squared')} (the proximal step is "
            f"exact for the squared norms only). Received: {said('norm', 'l2')}, "
            f"{said('penalty_update', 'proximal')}. Pass {said('penalty_update', 'gradient')} for the l2 form."
        )
