"""Group splits: channels, layers, random, callables, anchor masks."""

import numpy as np
import pytest

import keras
from keras_hta import splits
from conftest import dense_network


def _vars(model):
    return model.trainable_variables


def test_channels_halves_output_axis_with_biases():
    model = dense_network(n_in=4, n_out=3, hidden=6)
    groups = splits.assign_groups(model, _vars(model), "channels", 2)
    for v, g in zip(_vars(model), groups):
        assert g.shape == tuple(v.shape)
        n = v.shape[-1]
        want = (np.arange(n) >= (n + 1) // 2).astype(int)  # array_split puts the extra one first
        np.testing.assert_array_equal(g.reshape(-1, n), np.broadcast_to(want, g.reshape(-1, n).shape))


def test_channels_conv_kernel_and_single_output_head():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3)(inputs)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, out)
    kernel, bias, head, head_bias = _vars(model)
    g = splits.assign_groups(model, _vars(model), "channels", 2)
    np.testing.assert_array_equal(g[0][..., :2], 0)
    np.testing.assert_array_equal(g[0][..., 2:], 1)
    np.testing.assert_array_equal(g[1], [0, 0, 1, 1])
    assert g[2].mean() == pytest.approx(0.5, abs=0.01)  # Dense(1): split element-wise


def test_layers_split_first_half_against_second():
    model = dense_network(hidden=5, batch_norm=True)  # dense, bn, dense: 3 layers
    g = splits.assign_groups(model, _vars(model), "layers", 2)
    owner_group = [int(x.flat[0]) for x in g]
    assert [v.path.split("/")[0] for v in _vars(model)][0].startswith("dense")
    assert owner_group == [0, 0, 0, 0, 1, 1]


def test_random_is_seeded_and_balanced():
    model = dense_network(n_in=40, n_out=50)
    a = splits.assign_groups(model, _vars(model), "random", 2, seed=5)
    b = splits.assign_groups(model, _vars(model), "random", 2, seed=5)
    c = splits.assign_groups(model, _vars(model), "random", 2, seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert abs(a[0].mean() - 0.5) < 0.05  # 2000 Bernoulli(1/2) draws: 4.5 sigma


def test_callable_bool_mask_is_group_theta_1():
    model = dense_network()
    g = splits.assign_groups(model, _vars(model), lambda v: np.ones(v.shape, bool) if len(v.shape) == 2 else np.zeros(v.shape, bool), 2)
    np.testing.assert_array_equal(g[0], 0)
    np.testing.assert_array_equal(g[1], 1)
    with pytest.raises(ValueError, match="group indices"):
        splits.assign_groups(model, _vars(model), lambda v: np.full(v.shape, 5), 2)


def test_anchor_masks_twin_k_free_on_group_k_plus_1():
    groups = [np.array([0, 1, 2, 0])]
    masks = splits.anchor_masks(groups, 3)
    np.testing.assert_array_equal(masks[0][0], [1, 0, 1, 1])  # θ free on group 1
    np.testing.assert_array_equal(masks[1][0], [1, 1, 0, 1])
    np.testing.assert_array_equal(masks[2][0], [0, 1, 1, 0])
    two = splits.anchor_masks([np.array([0, 1])], 2)
    np.testing.assert_array_equal(two[0][0], [1, 0])  # paper: θ anchored on θ₁
    np.testing.assert_array_equal(two[1][0], [0, 1])  # η anchored on θ₂
