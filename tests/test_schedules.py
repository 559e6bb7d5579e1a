"""Schedules: values against their formulas, validation, serialization."""

import math

import numpy as np
import pytest

import keras
from keras_hta import schedules


def test_linear_matches_formula_and_holds_at_stop():
    s = schedules.Linear(0.01, 0.005, -0.001, epochs_per_value=4)
    for p in range(40):
        want = max(0.01 - 0.001 * (p // 4), 0.005)
        assert s(p) == pytest.approx(want, abs=1e-15)
    # The paper: 0.01 .. 0.005, 4 epochs each = 24 epochs of distinct values.
    assert sorted({round(s(p), 9) for p in range(24)}) == [0.005, 0.006, 0.007, 0.008, 0.009, 0.01]
    up = schedules.Linear(0.1, 0.35, 0.1)
    assert [round(up(p), 12) for p in range(5)] == [0.1, 0.2, 0.3, 0.35, 0.35]


def test_geometric_matches_formula():
    s = schedules.Geometric(2.0, 0.01, 0.5, epochs_per_value=3)
    for p in range(60):
        assert s(p) == pytest.approx(max(2.0 * 0.5 ** (p // 3), 0.01), rel=1e-15)


def test_piecewise_and_constant():
    s = schedules.Piecewise([2, 5], [1.0, 0.1, 0.01])
    assert [s(p) for p in range(7)] == [1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert schedules.Constant(0.3)(1000) == 0.3


def test_join_restarts_each_schedule_at_its_boundary():
    a = schedules.Linear(1.0, 0.5, -0.25)
    b = schedules.Geometric(0.1, 0.001, 0.1)
    s = schedules.join([a, b], [3])
    assert [s(p) for p in range(3)] == [a(0), a(1), a(2)]
    assert [s(p) for p in range(3, 7)] == [b(0), b(1), b(2), b(3)]


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.Constant(0.2),
        schedules.Linear(0.01, 0.005, -0.001, 4),
        schedules.Geometric(1.0, 0.01, 0.1, 2),
        schedules.Piecewise([3], [0.1, 0.05]),
        schedules.join([schedules.Constant(1.0), schedules.Linear(0.5, 0.1, -0.1)], [2]),
    ],
)
def test_serialization_round_trip(schedule):
    config = schedule.get_config()
    assert type(schedule).from_config(config) == schedule
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule
    assert [restored(p) for p in range(12)] == [schedule(p) for p in range(12)]
    assert schedules.get(keras.saving.serialize_keras_object(schedule)) == schedule


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: schedules.Constant(0.0), "value=0.0"),
        (lambda: schedules.Constant(float("nan")), "value=nan"),
        (lambda: schedules.Linear(0.01, 0.005, 0.001), "step"),
        (lambda: schedules.Linear(0.01, -0.005, -0.001), "stop=-0.005"),
        (lambda: schedules.Linear(0.01, 0.005, -0.001, 0), "epochs_per_value=0"),
        (lambda: schedules.Geometric(1.0, 0.1, 2.0), "factor"),
        (lambda: schedules.Piecewise([3, 2], [1.0, 0.5, 0.1]), "boundaries"),
        (lambda: schedules.Piecewise([3], [1.0]), "values"),
        (lambda: schedules.join([schedules.Constant(1.0)], [3]), "schedules"),
    ],
)
def test_bad_arguments_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_get_and_negative_position():
    assert schedules.get(0.5) == schedules.Constant(0.5)
    fn = lambda p: 1.0 / (p + 1)
    assert schedules.get(fn) is fn
    with pytest.raises(TypeError, match="schedule"):
        schedules.get("fast")
    with pytest.raises(ValueError, match="-1"):
        schedules.Constant(1.0)(-1)
    assert math.isclose(schedules.validate_l(np.float32(0.25)), 0.25)
