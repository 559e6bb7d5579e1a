"""Anchor resolution."""

import numpy as np
import pytest

from keras_hta.anchors import resolve_anchor
from conftest import dense_network


def test_zeros_init_callable_and_list():
    variables = dense_network(hidden=3).trainable_variables
    assert resolve_anchor("zeros", variables) is None  # θ̃ = 0 is not stored
    for a, v in zip(resolve_anchor("init", variables), variables):
        np.testing.assert_array_equal(a, v.numpy())
    twice = resolve_anchor(lambda v: 2 * v.numpy(), variables)
    np.testing.assert_array_equal(twice[0], 2 * variables[0].numpy())
    given = [np.full(v.shape, 3.0) for v in variables]
    np.testing.assert_array_equal(resolve_anchor(given, variables)[1], given[1])


def test_errors_name_the_argument():
    variables = dense_network().trainable_variables
    with pytest.raises(ValueError, match="anchor='ones'"):
        resolve_anchor("ones", variables)
    with pytest.raises(ValueError, match="Received: 1 arrays"):
        resolve_anchor([np.zeros(1)], variables)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        resolve_anchor(lambda v: np.zeros(7), variables)
    with pytest.raises(TypeError, match="anchor=3"):
        resolve_anchor(3, variables)


def test_a_nan_or_inf_anchor_is_refused_at_construction():
    import keras_hta as hta

    network = dense_network(hidden=3)
    nan_kernel = lambda v: np.full(v.shape, np.nan) if len(v.shape) == 2 else np.zeros(v.shape)  # noqa: E731
    with pytest.raises(ValueError, match=r"must be finite.*Received: \d+ NaN or inf values for variable '.*kernel'"):
        hta.HomotopyModel.from_model(network, anchor=nan_kernel)
    values = [np.zeros(v.shape) for v in network.trainable_variables]
    values[-1][0] = np.inf
    with pytest.raises(ValueError, match="1 NaN or inf values"):
        hta.HomotopyModel.from_model(network, anchor=values)
