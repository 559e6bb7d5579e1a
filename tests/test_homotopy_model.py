"""HomotopyModel: the step's gradient in closed form, limits in L, equivalence
with plain Keras, separate twins, and bad input."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hta as hta
from conftest import dense_network, regression_data


def _closed_form_step(x, y, sw, twins, anchor, masks, L, lr, l2, norm):
    """One SGD step on H for a linear model y = xW + b with weighted MSE + L2."""
    n, n_out = y.shape
    grads, fs = [], []
    for (W, b) in twins:
        r = x @ W + b - y
        fs.append(np.sum(sw * np.mean(r**2, axis=1)) / n + l2 * np.sum(W**2))
        g_r = 2.0 * sw[:, None] * r / (n * n_out)
        grads.append([x.T @ g_r + 2 * l2 * W, g_r.sum(0)])
    anchor_sq, coupling_sq = [], []
    for k, (w, g) in enumerate(zip(twins, grads)):
        d = [masks[k][i] * (w[i] - anchor[i]) for i in range(2)]
        s = sum(np.sum(di**2) for di in d)
        anchor_sq.append(s)
        for i in range(2):
            g[i] += L * (2 * d[i] if norm == "squared" else (d[i] / np.sqrt(s) if s > 0 else 0))
    for j in range(len(twins)):
        for k in range(j + 1, len(twins)):
            d = [twins[j][i] - twins[k][i] for i in range(2)]
            s = sum(np.sum(di**2) for di in d)
            coupling_sq.append(s)
            for i in range(2):
                c = 2 * d[i] if norm == "squared" else (d[i] / np.sqrt(s) if s > 0 else 0)
                grads[j][i] += c / L
                grads[k][i] -= c / L
    finish = (lambda s: s) if norm == "squared" else np.sqrt
    anchor_term = sum(finish(s) for s in anchor_sq)
    coupling = sum(finish(s) for s in coupling_sq)
    new = [[w[i] - lr * g[i] for i in range(2)] for w, g in zip(twins, grads)]
    return new, fs, anchor_term, coupling


@pytest.mark.parametrize("norm,num_groups", [("squared", 2), ("l2", 2), ("squared", 3), ("l2", 3)])
def test_one_step_equals_closed_form_gradient(norm, num_groups):
    L, lr, l2 = 0.5, 0.1, 0.01
    x, y = regression_data()
    sw = np.linspace(0.5, 1.5, len(x)).astype("float32")
    model = hta.HomotopyModel.from_model(
        dense_network(l2=l2), anchor="zeros", split="random", seed=3,
        num_groups=num_groups, homotopy_l=L, norm=norm,
    )
    rng = np.random.default_rng(1)
    for twin in model.twins:  # make the twins differ so the coupling acts
        twin.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in twin.get_weights()])
    twins = [net.get_weights() for net in model.nets]
    anchor = [a.numpy() for a in model.anchors]
    masks = [[m.numpy() for m in ms] for ms in model.anchor_masks]
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    history = model.fit(x, y, sample_weight=sw, batch_size=len(x), epochs=1, shuffle=False, verbose=0)

    new, fs, anchor_term, coupling = _closed_form_step(x, y, sw, twins, anchor, masks, L, lr, l2, norm)
    for net, expected in zip(model.nets, new):
        for got, want in zip(net.get_weights(), expected):
            np.testing.assert_allclose(got, want, atol=1e-6)
    logs = {k: v[0] for k, v in history.history.items()}
    np.testing.assert_allclose(logs["f_theta"], fs[0], rtol=1e-5)
    np.testing.assert_allclose(logs["anchor_penalty"], L * anchor_term, rtol=1e-5)
    np.testing.assert_allclose(logs["coupling"], coupling, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], sum(fs) + L * anchor_term + coupling / L, rtol=1e-5)


def test_first_step_with_init_anchor_is_plain_sgd_step():
    x, y = regression_data()
    plain = dense_network(hidden=5)
    model = hta.HomotopyModel.from_model(dense_network(hidden=5), anchor="init", homotopy_l=0.3)
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    h_plain = plain.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    h_hta = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    for net in model.nets:
        for got, want in zip(net.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-7)
    np.testing.assert_allclose(h_hta.history["loss"][0], 2 * h_plain.history["loss"][0], rtol=1e-6)


class _NoPenalty(hta.HomotopyModel):
    def penalties(self):
        return tf.constant(0.0), tf.constant(0.0)


@pytest.mark.parametrize("num_groups", [2, 3])
def test_without_penalties_twins_train_exactly_like_plain_keras(num_groups):
    x, y = regression_data(n=48)
    plain = dense_network(hidden=6, batch_norm=True)
    model = _NoPenalty.from_model(dense_network(hidden=6, batch_norm=True), num_groups=num_groups)
    for m in (plain, model):
        m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    h_plain = plain.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    h_hta = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    for net in model.nets:  # BatchNorm statistics included
        for got, want in zip(net.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(
        h_hta.history["loss"], num_groups * np.array(h_plain.history["loss"]), rtol=1e-5
    )
    np.testing.assert_allclose(h_hta.history["f_theta"], h_plain.history["loss"], rtol=1e-5)


def test_large_l_decouples_each_twin_into_its_free_group():
    # With SGD, lr·2L = 0.8: the anchored group is pulled back to θ̃ each
    # step and can sit off it by at most |∇f| / 2L; the free group trains.
    x, y = regression_data(n=64)
    L, lr = 100.0, 0.004
    model = hta.HomotopyModel.from_model(dense_network(hidden=8), anchor="init", homotopy_l=L)
    start = [net.get_weights() for net in model.nets]
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, batch_size=64, epochs=150, verbose=0)
    for k, net in enumerate(model.nets):
        for w0, w, a, m in zip(start[k], net.trainable_weights, model.anchors, model.anchor_masks[k]):
            m = m.numpy().astype(bool)
            drift = np.abs(w.numpy() - a.numpy())[m].max()
            assert drift < 5e-3
        moved = max(np.abs(w.numpy() - w0_).max() for w0_, w in zip(start[k], net.trainable_weights))
        assert moved > 0.05
    before = dense_network(hidden=8)
    before.set_weights(start[0])
    f_after = np.mean((model.network.predict(x, verbose=0) - y) ** 2)
    assert f_after < np.mean((before.predict(x, verbose=0) - y) ** 2)


def test_small_l_pulls_the_twins_together():
    # Anchored on different groups and pulled by different gradients, the
    # twins keep a gap where the coupling force (2/L)(θ − η) balances O(1)
    # forces: ‖θ − η‖ = O(L), so the squared coupling shrinks at least 4×
    # per halving of L and vanishes as L → 0.
    x, y = regression_data(n=32)
    gaps = []
    for L in (0.1, 0.05, 0.025):
        keras.utils.set_random_seed(0)
        model = hta.HomotopyModel.from_model(dense_network(), homotopy_l=L)
        model.twins[0].set_weights([w + 0.5 for w in model.twins[0].get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(L / 10), loss="mse")
        gap0 = float(model.penalties()[1])
        model.fit(x, y, batch_size=32, epochs=150, verbose=0)
        gaps.append(float(model.penalties()[1]))
        assert gaps[-1] < 1e-3 * gap0
    assert gaps[1] < gaps[0] / 3 and gaps[2] < gaps[1] / 3


def test_twins_are_separate_weights_and_batchnorm_statistics():
    x, y = regression_data(n=32)
    model = hta.HomotopyModel.from_model(dense_network(hidden=6, batch_norm=True), homotopy_l=0.5)
    paths = [v.path for v in model.weights]
    assert len(paths) == len(set(paths))
    theta_ids = {id(v) for v in model.network.weights}
    assert not theta_ids & {id(v) for v in model.twins[0].weights}
    for a, b in zip(model.network.get_weights(), model.twins[0].get_weights()):
        np.testing.assert_array_equal(a, b)  # η starts as an exact copy
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    bn_theta = model.network.layers[2].moving_mean.numpy()
    bn_eta = model.twins[0].layers[2].moving_mean.numpy()
    assert np.abs(bn_theta - bn_eta).max() > 1e-4
    # Inference uses θ.
    np.testing.assert_allclose(model.predict(x, verbose=0), model.network.predict(x, verbose=0), atol=1e-6)


def test_l_variable_is_read_at_run_time_without_retracing():
    x, y = regression_data()
    model = hta.HomotopyModel.from_model(dense_network(), homotopy_l=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    h1 = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    train_function = model.train_function
    model.homotopy_l.assign(4.0)
    h2 = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.train_function is train_function
    np.testing.assert_allclose(h2.history["anchor_penalty"][0], 4 * h1.history["anchor_penalty"][0], rtol=1e-6)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_homotopy_l_is_refused(value):
    with pytest.raises(ValueError, match=f"homotopy_l={value}"):
        hta.HomotopyModel.from_model(dense_network(), homotopy_l=value)


def test_bad_input_is_refused_before_training():
    with pytest.raises(ValueError, match="num_groups"):
        hta.HomotopyModel.from_model(dense_network(), num_groups=1)
    with pytest.raises(ValueError, match="norm"):
        hta.HomotopyModel.from_model(dense_network(), norm="l1")
    with pytest.raises(TypeError, match="model"):
        hta.HomotopyModel.from_model("not a model")
    frozen = dense_network()
    frozen.trainable = False
    with pytest.raises(ValueError, match="trainable weights"):
        hta.HomotopyModel.from_model(frozen)
    with pytest.raises(ValueError, match="must be built"):
        hta.HomotopyModel.from_model(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="leaves a group empty"):
        hta.HomotopyModel.from_model(dense_network(), split="layers", num_groups=3)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        hta.HomotopyModel.from_model(dense_network(), split=lambda v: np.zeros(2, bool))
    with pytest.raises(ValueError, match="split"):
        hta.HomotopyModel.from_model(dense_network(), split="halves")
    with pytest.raises(ValueError, match="anchor"):
        hta.HomotopyModel.from_model(dense_network(), anchor="ones")


class _IntWeight(keras.layers.Layer):
    def build(self, input_shape):
        self.k = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=True)

    def call(self, x):
        return x


def test_non_float_weight_is_refused():
    inputs = keras.Input((2,))
    network = keras.Model(inputs, _IntWeight()(keras.layers.Dense(2)(inputs)))
    with pytest.raises(TypeError, match="int32"):
        hta.HomotopyModel.from_model(network)


def test_functional_construction_matches_from_model():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(inputs)
    model = hta.HomotopyModel(inputs, outputs, homotopy_l=0.2)
    assert float(model.homotopy_l.numpy()) == pytest.approx(0.2)
    assert len(model.twins) == 1 and model.built
    with pytest.raises(ValueError, match="inputs"):
        hta.HomotopyModel(inputs)


def test_penalty_curvature_closed_form_for_two_twins():
    model = hta.HomotopyModel.from_model(dense_network(), homotopy_l=0.01)
    for L in (0.01, 0.3, 5.0):
        want = L + 2 / L + np.sqrt(L**2 + 4 / L**2)  # eigenvalues of [[2L+2/L, -2/L], [-2/L, 2/L]]
        assert model.penalty_curvature(L) == pytest.approx(want, rel=1e-12)
    assert hta.HomotopyModel.from_model(dense_network(), norm="l2").penalty_curvature() is None


def test_stability_warning_matches_real_divergence():
    # SGD(lr, β=0.9) on the penalties diverges iff lr·curvature >= 3.8.
    x, y = regression_data(n=32)
    lr = 0.01
    curv = lambda L: L + 2 / L + np.sqrt(L**2 + 4 / L**2)
    L_edge = 4 * lr / 3.8  # curvature ≈ 4/L at small L
    results = {}
    for factor in (0.8, 1.25):
        L = L_edge * factor
        model = hta.HomotopyModel.from_model(dense_network(), homotopy_l=L, split="random", seed=0)
        model.twins[0].set_weights([w + 0.01 for w in model.twins[0].get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
        stable = lr * curv(L) < 3.8
        if stable:
            model.fit(x, y, batch_size=32, epochs=60, verbose=0)
        else:
            with pytest.warns(RuntimeWarning, match="diverge"):
                model.fit(x, y, batch_size=32, epochs=60, verbose=0)
        gap = float(model.penalties()[1])
        results[stable] = gap
    assert results[True] < 1e-4      # contracted
    assert not results[False] < 1.0  # grew (or overflowed to inf/nan)


def test_per_output_loss_metrics_report_theta_only():
    x, y = regression_data(n=16)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh")(inputs)
    outputs = {"a": keras.layers.Dense(2, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)}
    model = hta.HomotopyModel(inputs, outputs, homotopy_l=0.5)
    model.twins[0].set_weights([w + 1.0 for w in model.twins[0].get_weights()])  # η predicts differently
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss={"a": "mse", "b": "mse"})
    targets = {"a": y[:, :2], "b": y[:, 2:]}
    history = model.fit(x, targets, batch_size=16, epochs=1, verbose=0)
    pred = model.network.predict(x, verbose=0)
    np.testing.assert_allclose(history.history["a_loss"][0], np.mean((pred["a"] - targets["a"]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(history.history["b_loss"][0], np.mean((pred["b"] - targets["b"]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(history.history["f_theta"][0], history.history["a_loss"][0] + history.history["b_loss"][0], rtol=1e-5)


def test_split_batch_twins_train_like_plain_keras_on_their_slices():
    x, y = regression_data(n=48)
    model = _NoPenalty.from_model(dense_network(hidden=6), twin_batch="split")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for k, net in enumerate(model.nets):
        plain = dense_network(hidden=6)
        plain.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        # Batches of 16 split by parity = batches of 8 from the strided slices.
        xs = np.concatenate([x[i : i + 16][k::2] for i in range(0, 48, 16)])
        ys = np.concatenate([y[i : i + 16][k::2] for i in range(0, 48, 16)])
        h = plain.fit(xs, ys, batch_size=8, epochs=2, shuffle=False, verbose=0)
        for got, want in zip(net.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-6)
        if k == 0:
            np.testing.assert_allclose(history.history["f_theta"], h.history["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="twin_batch='half'"):
        hta.HomotopyModel.from_model(dense_network(), twin_batch="half")
