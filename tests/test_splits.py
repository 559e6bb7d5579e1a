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
        n = v.shape[-1]
        assert g.shape == (n,)  # one entry per output channel: it broadcasts against the weight
        want = (np.arange(n) >= (n + 1) // 2).astype(int)  # array_split puts the extra one first
        np.testing.assert_array_equal(g, want)
    sizes = splits.group_sizes(groups, [tuple(v.shape) for v in _vars(model)], 2)
    assert sizes == [4 * 3 + 3 + 6 * 2 + 2, 4 * 3 + 3 + 6 * 1 + 1]  # hidden 6 = 3 + 3, output 3 = 2 + 1


def test_channels_conv_kernel_and_single_output_head():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3)(inputs)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, out)
    kernel, bias, head, head_bias = _vars(model)
    g = splits.assign_groups(model, _vars(model), "channels", 2)
    np.testing.assert_array_equal(g[0], [0, 0, 1, 1])  # broadcasts over the kernel's (3, 3, 3, 4)
    np.testing.assert_array_equal(g[1], [0, 0, 1, 1])
    assert g[2].shape == tuple(head.shape)  # Dense(1): split element-wise, full size
    assert g[2].mean() == pytest.approx(0.5, abs=0.01)


def test_layers_split_balances_elements_at_layer_boundaries():
    model = dense_network(hidden=5, batch_norm=True)  # dense 25, bn 10, dense 18 elements
    g = splits.assign_groups(model, _vars(model), "layers", 2)
    assert all(x.shape == () for x in g)  # one integer per weight
    assert [v.path.split("/")[0] for v in _vars(model)][0].startswith("dense")
    # Cut after the first layer: 25 / 28 elements (after the second: 35 / 18).
    assert [int(x) for x in g] == [0, 0, 1, 1, 1, 1]


def test_layers_split_on_an_unbalanced_network():
    inputs = keras.Input((100,))
    h = keras.layers.Dense(50)(inputs)  # 5050 elements
    for _ in range(3):
        h = keras.layers.Dense(4)(h)  # 204, 20, 20
    model = keras.Model(inputs, h)
    variables = _vars(model)
    g = splits.assign_groups(model, variables, "layers", 2)
    # By layer count the cut would be 2 + 2 layers (5254 / 40 elements); by
    # elements the big layer stands alone: 5050 / 244, as balanced as layer
    # boundaries allow.
    assert [int(x) for x in g] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert splits.group_sizes(g, [tuple(v.shape) for v in variables], 2) == [5050, 244]
    three = splits.assign_groups(model, variables, "layers", 3)
    assert sorted(set(int(x) for x in three)) == [0, 1, 2]  # no group left empty


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
