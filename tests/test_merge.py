"""merge and recompute_batchnorm."""

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import dense_network, regression_data

_np = keras.ops.convert_to_numpy


def _trained(num_groups=2):
    x, y = regression_data(n=32)
    model = hta.HomotopyModel.from_model(
        dense_network(hidden=6, batch_norm=True), num_groups=num_groups, homotopy_l=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    return model, x


def test_merge_theta_eta_and_index():
    model, x = _trained(num_groups=3)
    plain = hta.merge(model)
    assert not isinstance(plain, hta.HomotopyModel)
    assert len(plain.weights) == len(model.network.weights)
    assert [l.name for l in plain.layers] == [l.name for l in model.network.layers]
    np.testing.assert_array_equal(plain.predict(x, verbose=0), model.predict(x, verbose=0))
    for how, net in (("eta", model.twin(1)), (2, model.twin(2))):
        for a, b in zip(hta.merge(model, how=how).get_weights(), net.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_merge_average_is_mean_of_twins():
    model, _ = _trained()
    avg = hta.merge(model, how="average")
    for got, a, b in zip(avg.get_weights(), model.network.get_weights(), model.twin(1).get_weights()):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-6)


def test_recompute_bn_sets_mean_of_batch_statistics():
    model, x = _trained()
    batches = [x[i : i + 8] for i in range(0, 32, 8)]
    plain = hta.merge(model, how="average", recompute_bn=[x[i : i + 8] for i in range(0, len(x), 8)])
    bn = plain.layers[2]
    dense = plain.layers[1]
    h = [_np(dense(b)) for b in batches]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([a.mean(0) for a in h], 0), atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([a.var(0) for a in h], 0), atol=1e-5)
    assert bn.momentum == 0.99  # restored


def test_merge_errors():
    model, x = _trained()
    with pytest.raises(ValueError, match="how='median'"):
        hta.merge(model, how="median")
    with pytest.raises(TypeError, match="HomotopyModel"):
        hta.merge(dense_network())
    with pytest.raises(ValueError, match="no batch"):
        hta.recompute_batchnorm(hta.merge(model), [])


@pytest.mark.parametrize("data", [None, "notdata", 5])
def test_recompute_batchnorm_refuses_what_is_not_data_in_one_line_even_without_batchnorm(data):
    without_bn = dense_network(hidden=4)  # no BatchNormalization: still checked
    for network in (without_bn, hta.merge(_trained()[0])):
        with pytest.raises(ValueError, match="Argument `data`") as raised:
            hta.recompute_batchnorm(network, data)
        assert "\n" not in str(raised.value)


def test_recompute_batchnorm_takes_the_inputs_in_batches_as_predict_does():
    model, x = _trained()
    plain = hta.merge(model, how="average")
    assert hta.recompute_batchnorm(plain, x, batch_size=10) == 4  # 32 examples: 10 + 10 + 10 + 2
    dense, bn = plain.layers[1], plain.layers[2]
    h = [_np(dense(x[i:i + 10])) for i in range(0, 32, 10)]
    np.testing.assert_allclose(_np(bn.moving_mean), np.mean([a.mean(0) for a in h], 0), atol=1e-5)
    np.testing.assert_allclose(_np(bn.moving_variance), np.mean([a.var(0) for a in h], 0), atol=1e-5)
    with pytest.raises(ValueError, match="batch_size=0"):
        hta.recompute_batchnorm(plain, x, batch_size=0)


def test_merge_returns_a_copy_and_leaves_the_model_as_it_was():
    model, x = _trained()
    theta, predicted = model.network.get_weights(), model.predict(x, verbose=0)
    for how in ("theta", "eta", "average"):
        plain = hta.merge(model, how=how, recompute_bn=[x[:16], x[16:]])
        assert plain is not model.network
    for now, before in zip(model.network.get_weights(), theta):
        np.testing.assert_array_equal(now, before)
    np.testing.assert_array_equal(model.predict(x, verbose=0), predicted)
    with pytest.raises(ValueError, match="in_place='yes'"):
        hta.merge(model, in_place="yes")
