"""HomotopyModel: the step's gradient in closed form, limits in L, equivalence
with plain Keras, separate twins, and bad input."""

import warnings

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import dense_network, regression_data, twin_views
from reference import proximal_solve, proximal_solve_twins

_np = keras.ops.convert_to_numpy


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
        num_groups=num_groups, homotopy_l=L, norm=norm, penalty_update="gradient",
    )
    rng = np.random.default_rng(1)
    for twin in twin_views(model)[1:]:  # make the twins differ so the coupling acts
        twin.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in twin.get_weights()])
    twins = [net.get_weights() for net in twin_views(model)]
    anchor = [_np(a) for a in model.anchors]
    masks = [[_np(m) for m in ms] for ms in model.anchor_masks]
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    history = model.fit(x, y, sample_weight=sw, batch_size=len(x), epochs=1, shuffle=False, verbose=0)

    new, fs, anchor_term, coupling = _closed_form_step(x, y, sw, twins, anchor, masks, L, lr, l2, norm)
    for net, expected in zip(twin_views(model), new):
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
    # The explicit step: the penalties' gradient is zero where every twin sits on the anchor.
    model = hta.HomotopyModel.from_model(
        dense_network(hidden=5), anchor="init", homotopy_l=0.3, penalty_update="gradient")
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    h_plain = plain.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    h_hta = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    for net in twin_views(model):
        for got, want in zip(net.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-7)
    np.testing.assert_allclose(h_hta.history["loss"][0], 2 * h_plain.history["loss"][0], rtol=1e-6)


class _NoPenalty(hta.HomotopyModel):  # with penalty_update="gradient"
    def penalties(self):
        return keras.ops.zeros(()), keras.ops.zeros(())


@pytest.mark.parametrize("num_groups", [2, 3])
def test_without_penalties_twins_train_exactly_like_plain_keras(num_groups):
    x, y = regression_data(n=48)
    plain = dense_network(hidden=6, batch_norm=True)
    model = _NoPenalty.from_model(
        dense_network(hidden=6, batch_norm=True), num_groups=num_groups, penalty_update="gradient")
    for m in (plain, model):
        m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    h_plain = plain.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    h_hta = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    for net in twin_views(model):  # BatchNorm statistics included
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
    start = [net.get_weights() for net in twin_views(model)]
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, batch_size=64, epochs=150, verbose=0)
    for k, net in enumerate(twin_views(model)):
        for w0, w, a, m in zip(start[k], net.trainable_weights, model.anchors, model.anchor_masks[k]):
            m = _np(m).astype(bool)
            drift = np.abs(w.numpy() - _np(a))[m].max()
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
        model.twin(1).set_weights([w + 0.5 for w in model.twin(1).get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(L / 10), loss="mse")
        gap0 = float(model.penalties()[1])
        model.fit(x, y, batch_size=32, epochs=150, verbose=0)
        gaps.append(float(model.penalties()[1]))
        assert gaps[-1] < 1e-3 * gap0
    assert gaps[1] < gaps[0] / 3 and gaps[2] < gaps[1] / 3


def test_twins_are_separate_weights_that_start_as_copies_and_inference_uses_theta():
    """(Each twin's BatchNorm statistics, exactly: test_twins.py.)"""
    x, y = regression_data(n=32)
    model = hta.HomotopyModel.from_model(dense_network(hidden=6, batch_norm=True), homotopy_l=0.5)
    paths = [v.path for v in model.weights]
    assert len(paths) == len(set(paths))
    theta_ids = {id(v) for v in model.network.weights}
    assert not theta_ids & {id(v) for v in model.twin(1).weights}
    for a, b in zip(model.network.get_weights(), model.twin(1).get_weights()):
        np.testing.assert_array_equal(a, b)  # η starts as an exact copy
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
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
    with pytest.raises(ValueError, match="penalty_update='newton'"):
        hta.HomotopyModel.from_model(dense_network(), penalty_update="newton")
    with pytest.raises(ValueError, match="norm='l2', penalty_update='proximal'"):
        hta.HomotopyModel.from_model(dense_network(), norm="l2")
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
    if keras.backend.backend() == "torch":
        pytest.skip("PyTorch itself refuses a trainable integer weight: the case cannot arise")
    inputs = keras.Input((2,))
    network = keras.Model(inputs, _IntWeight()(keras.layers.Dense(2)(inputs)))
    with pytest.raises(TypeError, match="int32"):
        hta.HomotopyModel.from_model(network)


def test_functional_construction_matches_from_model():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(inputs)
    model = hta.HomotopyModel(inputs, outputs, homotopy_l=0.2)
    assert float(model.homotopy_l.numpy()) == pytest.approx(0.2)
    assert model.num_groups == 2 and len(model.twin_state.twins) == 1 and model.built
    with pytest.raises(ValueError, match="inputs"):
        hta.HomotopyModel(inputs)


def test_penalty_curvature_closed_form_for_two_twins():
    model = hta.HomotopyModel.from_model(dense_network(), homotopy_l=0.01)
    for L in (0.01, 0.3, 5.0):
        want = L + 2 / L + np.sqrt(L**2 + 4 / L**2)  # eigenvalues of [[2L+2/L, -2/L], [-2/L, 2/L]]
        assert model.penalty_curvature(L) == pytest.approx(want, rel=1e-12)
    l2 = hta.HomotopyModel.from_model(dense_network(), norm="l2", penalty_update="gradient")
    assert l2.penalty_curvature() is None


def test_stability_warning_matches_real_divergence():
    # SGD(lr, β=0.9) on the penalties diverges iff lr·curvature >= 3.8.
    x, y = regression_data(n=32)
    lr = 0.01
    curv = lambda L: L + 2 / L + np.sqrt(L**2 + 4 / L**2)
    L_edge = 4 * lr / 3.8  # curvature ≈ 4/L at small L
    results = {}
    for factor in (0.8, 1.25):
        L = L_edge * factor
        model = hta.HomotopyModel.from_model(
            dense_network(), homotopy_l=L, split="random", seed=0, penalty_update="gradient")
        model.twin(1).set_weights([w + 0.01 for w in model.twin(1).get_weights()])
        stable = lr * curv(L) < 3.8
        if stable:
            model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
        else:
            with pytest.warns(RuntimeWarning, match="diverge"):
                model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
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
    model.twin(1).set_weights([w + 1.0 for w in model.twin(1).get_weights()])  # η predicts differently
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss={"a": "mse", "b": "mse"})
    targets = {"a": y[:, :2], "b": y[:, 2:]}
    history = model.fit(x, targets, batch_size=16, epochs=1, verbose=0)
    pred = model.network.predict(x, verbose=0)
    np.testing.assert_allclose(history.history["a_loss"][0], np.mean((pred["a"] - targets["a"]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(history.history["b_loss"][0], np.mean((pred["b"] - targets["b"]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(history.history["f_theta"][0], history.history["a_loss"][0] + history.history["b_loss"][0], rtol=1e-5)
    eta = model.twin(1).predict(x, verbose=0)  # η's f: the same dict loss, on η's outputs
    f_eta = sum(np.mean((eta[k] - targets[k]) ** 2) for k in ("a", "b"))
    np.testing.assert_allclose(history.history["f_eta"][0], f_eta, rtol=1e-5)
    assert abs(f_eta - history.history["f_theta"][0]) > 0.1  # so the check above tells θ from η


def test_list_outputs_with_dict_loss_weights_and_twin_regularizers():
    """Output names match the loss dict for every twin (their layers are renamed); each twin adds its own l2."""
    x, y = regression_data(n=16)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.1))(inputs)
    outputs = [keras.layers.Dense(2, name="a")(h), keras.layers.Dense(1, name="b")(h)]
    model = hta.HomotopyModel(inputs, outputs, homotopy_l=0.5)
    model.twin(1).set_weights([w * 2.0 for w in model.twin(1).get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss={"a": "mse", "b": "mae"}, loss_weights={"a": 1.0, "b": 3.0})
    history = model.fit(x, [y[:, :2], y[:, 2:]], batch_size=16, epochs=1, verbose=0)
    for net, key in ((model.twin(0), "f_theta"), (model.twin(1), "f_eta")):
        a, b = net.predict(x, verbose=0)
        kernel = net.variable(model.network.layers[1].kernel).numpy()
        want = np.mean((a - y[:, :2]) ** 2) + 3.0 * np.mean(np.abs(b - y[:, 2:])) + 0.1 * np.sum(kernel**2)
        np.testing.assert_allclose(history.history[key][0], want, rtol=1e-5, err_msg=key)


def test_split_batch_twins_train_like_plain_keras_on_their_slices():
    x, y = regression_data(n=48)
    model = _NoPenalty.from_model(dense_network(hidden=6), twin_batch="split", penalty_update="gradient")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for k, net in enumerate(twin_views(model)):
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


# --- penalty_update="proximal" (the default) --------------------------------


def _f_step(x, y, twins, lr):
    """One SGD step on f alone (MSE) for each linear twin y = xW + b."""
    n, n_out = y.shape
    new = []
    for W, b in twins:
        g_r = 2.0 * (x @ W + b - y) / (n * n_out)
        new.append([W - lr * (x.T @ g_r), b - lr * g_r.sum(0)])
    return new


@pytest.mark.parametrize("num_groups", [2, 3])
def test_proximal_fit_steps_equal_optimizer_step_then_closed_form(num_groups):
    x, y = regression_data(n=16)
    L = 0.2
    model = hta.HomotopyModel.from_model(
        dense_network(), anchor=lambda v: np.full(v.shape, 0.3), split="random", seed=4,
        num_groups=num_groups, homotopy_l=L,
    )
    rng = np.random.default_rng(2)
    for twin in twin_views(model)[1:]:
        twin.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in twin.get_weights()])
    twins = [net.get_weights() for net in twin_views(model)]
    anchor = [_np(a) for a in model.anchors]
    masks = [[_np(m) for m in ms] for ms in model.anchor_masks]
    # A learning-rate schedule: γ must follow it step by step.
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.5, 0.125])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for step, gamma in enumerate((0.5, 0.125)):
        batch = slice(8 * step, 8 * step + 8)
        twins = proximal_solve_twins(_f_step(x[batch], y[batch], twins, gamma), masks, anchor, gamma, L)
    for net, expected in zip(twin_views(model), twins):
        for got, want in zip(net.get_weights(), expected):
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_proximal_logs_h_at_the_step_start():
    x, y = regression_data(n=16)
    L = 0.3
    model = hta.HomotopyModel.from_model(dense_network(), homotopy_l=L)
    model.twin(1).set_weights([w + 0.2 for w in model.twin(1).get_weights()])
    anchor0, coupling0 = (float(t) for t in model.penalties())
    f0 = [float(np.mean((net.predict(x, verbose=0) - y) ** 2)) for net in twin_views(model)]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    logs = {k: v[0] for k, v in model.fit(x, y, batch_size=16, epochs=1, verbose=0).history.items()}
    np.testing.assert_allclose([logs["f_theta"], logs["f_eta"]], f0, rtol=1e-5)
    np.testing.assert_allclose(logs["anchor_penalty"], L * anchor0, rtol=1e-5)
    np.testing.assert_allclose(logs["coupling"], coupling0, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], sum(f0) + L * anchor0 + coupling0 / L, rtol=1e-5)
    np.testing.assert_allclose(logs["homotopy_l"], L, rtol=1e-6)


def test_proximal_is_stable_far_beyond_the_explicit_bound():
    # L = 1e-4: curvature ≈ 4e4, so lr 0.0095 is 100× the explicit step's bound
    # lr · curvature < 3.8 (momentum 0.9).
    x, y = regression_data(n=32)
    L, lr = 1e-4, 0.0095
    gaps = {}
    for update in ("proximal", "gradient"):
        model = hta.HomotopyModel.from_model(dense_network(hidden=6), homotopy_l=L, penalty_update=update)
        assert lr * model.penalty_curvature() > 100 * 3.8 * 0.99
        model.twin(1).set_weights([w + 0.01 for w in model.twin(1).get_weights()])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
            history = model.fit(x, y, batch_size=8, epochs=10, verbose=0)
        gaps[update] = (float(model.penalties()[1]), history.history["loss"])
    gap, losses = gaps["proximal"]
    assert np.all(np.isfinite(losses)) and gap < 1e-6
    assert losses[-1] < losses[0]
    assert not gaps["gradient"][0] < 1.0  # the explicit step blows up here


def test_proximal_and_gradient_updates_agree_to_second_order_in_lr():
    x, y = regression_data(n=16)
    gaps = []
    for lr in (0.02, 0.01, 0.005):
        nets = {}
        for update in ("proximal", "gradient"):
            model = hta.HomotopyModel.from_model(
                dense_network(), homotopy_l=0.5, anchor="init", split="random", seed=1, penalty_update=update)
            model.twin(1).set_weights([w + 0.3 for w in model.twin(1).get_weights()])
            model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
            model.fit(x, y, batch_size=16, epochs=1, verbose=0)
            nets[update] = np.concatenate([w.ravel() for net in twin_views(model) for w in net.get_weights()])
        gaps.append(np.abs(nets["proximal"] - nets["gradient"]).max())
    ratios = [gaps[0] / gaps[1], gaps[1] / gaps[2]]
    assert all(3.5 < r < 4.5 for r in ratios), ratios


def test_proximal_limits_of_l_in_one_step():
    x, y = regression_data(n=16)
    model = hta.HomotopyModel.from_model(dense_network(hidden=4), homotopy_l=1e-7, num_groups=3)
    for k, twin in enumerate(twin_views(model)[1:]):
        twin.set_weights([w + 0.2 * (k + 1) for w in twin.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for net in twin_views(model)[1:]:  # L → 0: every twin equals the others
        for a, b in zip(net.get_weights(), model.network.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-5)

    model = hta.HomotopyModel.from_model(dense_network(hidden=4), homotopy_l=1e7, anchor="zeros")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for net, masks in zip(twin_views(model), model.anchor_masks):  # L → ∞: anchored groups on θ̃ = 0
        for w, m in zip(net.trainable_weights, masks):
            np.testing.assert_allclose(w.numpy()[_np(m) == 1], 0.0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_split_batch_never_hands_a_twin_an_empty_batch(batch):
    # m = 3 twins with BatchNorm; batches of 1, m − 1, m, m + 1 examples.
    x, y = regression_data(n=batch)
    model = _NoPenalty.from_model(
        dense_network(hidden=4, batch_norm=True), num_groups=3, twin_batch="split", penalty_update="gradient")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    assert all(np.isfinite(v[0]) for v in history.history.values())
    for k, net in enumerate(twin_views(model)):
        assert all(np.all(np.isfinite(w)) for w in net.get_weights())
        # Fewer examples than twins: every twin trains on the whole batch.
        part = slice(None) if batch < 3 else slice(k, None, 3)
        plain = dense_network(hidden=4, batch_norm=True)
        plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        plain.fit(x[part], y[part], batch_size=batch, epochs=1, shuffle=False, verbose=0)
        for got, want in zip(net.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_stability_check_sees_through_the_loss_scale_optimizer():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = hta.HomotopyModel.from_model(dense_network(hidden=4), homotopy_l=0.01, penalty_update="gradient")
        with pytest.warns(RuntimeWarning, match="diverge"):
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        # The proximal update is stable there, and trains under mixed precision.
        x, y = regression_data(n=32)
        model = hta.HomotopyModel.from_model(dense_network(hidden=4), homotopy_l=0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        history = model.fit(x, y, batch_size=8, epochs=5, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert history.history["f_theta"][-1] < history.history["f_theta"][0]
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("scheduler_first", [True, False])
def test_restore_best_weights_keeps_l_and_the_schedule_position(scheduler_first):
    x, y = regression_data(n=32)
    keras.utils.set_random_seed(5)
    model = hta.HomotopyModel.from_model(dense_network(hidden=6), homotopy_l=0.2)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    best = {}

    class Keep(keras.callbacks.Callback):  # the weights at each epoch, to compare with the restored ones
        def on_epoch_end(self, epoch, logs=None):
            best[epoch] = [w.copy() for w in model.network.get_weights()]

    # Monitor what the schedule lowers: the best epoch is the first, so the weights rewind 5 epochs.
    stop = keras.callbacks.EarlyStopping(monitor="homotopy_l", mode="max", patience=100, restore_best_weights=True)
    scheduler = hta.HomotopyScheduler(hta.schedules.Linear(0.2, 0.05, -0.05))
    callbacks = [scheduler, stop, Keep()] if scheduler_first else [stop, scheduler, Keep()]
    model.fit(x, y, batch_size=8, epochs=6, verbose=0, callbacks=callbacks)
    assert float(model.homotopy_l.numpy()) == pytest.approx(0.05)  # where the schedule got to
    assert int(model.homotopy_epoch.numpy()) == 6
    for got, want, last in zip(model.network.get_weights(), best[0], best[5]):
        np.testing.assert_array_equal(got, want)  # the network weights are the best (first) epoch's
        assert got.shape == () or not np.array_equal(got, last) or np.all(got == 0)


def test_gradient_accumulation_equals_the_large_batch():
    """accumulate 2 batches of 8 = one batch of 16: the proximal step follows the optimizer's real steps."""
    x, y = regression_data(n=64)
    weights = []
    for batch, accumulate in ((16, None), (8, 2)):
        model = hta.HomotopyModel.from_model(dense_network(hidden=6), homotopy_l=0.05, anchor="init")
        model.twin(1).set_weights([w * 0.5 for w in model.twin(1).get_weights()])
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, gradient_accumulation_steps=accumulate)
        model.compile(optimizer=optimizer, loss="mse")
        start_gap = float(model.penalties()[1])
        model.fit(x, y, batch_size=batch, epochs=3, shuffle=False, verbose=0)
        assert int(_np(model.optimizer.iterations)) == 12
        weights.append([w.numpy() for w in model.weights])
        assert float(model.penalties()[1]) < 0.5 * start_gap  # the proximal step pulled the twins together
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_skipped_loss_scaled_step_moves_no_weight():
    """mixed_float16: a step whose scaled gradients overflow is skipped whole, the proximal step included."""
    x, y = regression_data(n=16)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = hta.HomotopyModel.from_model(dense_network(hidden=6), homotopy_l=0.05)
    finally:
        keras.config.set_dtype_policy("float32")
    model.twin(1).set_weights([w * 0.5 for w in model.twin(1).get_weights()])
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=2.0**60)
    model.compile(optimizer=optimizer, loss="mse")
    start = [w.numpy() for w in model.weights if w.trainable]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(_np(model.optimizer.iterations)) == 0  # the step overflowed and was skipped
    for a, w in zip(start, [w for w in model.weights if w.trainable]):
        np.testing.assert_array_equal(a, w.numpy())


def _proximal_drift_reference(weights, groups, steps, gamma, L):
    """`steps` exact proximal steps on two twins that start equal, zero anchors, in float64."""
    theta = [np.asarray(w, np.float64) for w in weights]
    eta = [t.copy() for t in theta]
    for _ in range(steps):
        for i, g in enumerate(groups):
            free = [np.broadcast_to(g == 1, theta[i].shape), np.broadcast_to(g == 0, theta[i].shape)]
            theta[i], eta[i] = proximal_solve([theta[i], eta[i]], free, gamma, L, None)
    return theta


def test_the_proximal_step_never_grows_the_weights_in_float32():
    """Only the penalties act (loss weight 0), zero anchors, L = 1e-4, lr 1 (c = 2e4), 1000 steps.

    The exact map can only shrink the weights, so the float32 step must not grow them either.
    """
    inputs = keras.Input((8,))
    init = keras.initializers.GlorotUniform(seed=0)
    h = keras.layers.Dense(16, activation="tanh", kernel_initializer=init, bias_initializer="ones")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(4, kernel_initializer=init, bias_initializer="ones")(h))
    model = hta.HomotopyModel.from_model(network, homotopy_l=1e-4, anchor="zeros")
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", loss_weights=0.0)
    before = [np.array(w) for w in model.network.get_weights()]
    groups = [np.asarray(keras.ops.convert_to_numpy(g)) for g in model.twin_state.groups(model.twin_state.active())]
    x, y = regression_data(n=4000, n_in=8, n_out=4)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 1000 steps
    after = model.network.get_weights()
    norm = lambda ws: np.sqrt(sum(np.sum(np.square(np.asarray(w, np.float64))) for w in ws))  # noqa: E731
    want = _proximal_drift_reference(before, groups, 1000, 1.0, float(np.float32(1e-4)))
    ratio, want_ratio = norm(after) / norm(before), norm(want) / norm(before)
    assert want_ratio < 1.0
    assert ratio <= 1.0, f"‖θ‖ grew by {ratio:.4f}"
    np.testing.assert_allclose(ratio, want_ratio, rtol=1e-4)


# --- a fit that raises ------------------------------------------------------


class _Batches(keras.utils.PyDataset):
    """Batches of 8 in order; raises on batch `fail_at` (never, for None)."""

    def __init__(self, x, y, fail_at=None):
        super().__init__()
        self.x, self.y, self.fail_at = x, y, fail_at

    def __len__(self):
        return len(self.x) // 8

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("bad batch")
        return self.x[8 * i:8 * i + 8], self.y[8 * i:8 * i + 8]


def _fresh_bn_model():
    keras.utils.set_random_seed(9)
    model = hta.HomotopyModel.from_model(dense_network(hidden=5, batch_norm=True), homotopy_l=0.3, anchor="init")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


def _state(model):
    """The trained values: every twin's weights and state, the anchors, the optimizer's slots."""
    return [np.array(v) for v in list(model.network.weights) + list(model.twin_state.weights)
            + list(model.optimizer.variables)]


class _RaiseBefore(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            raise RuntimeError("bad batch")


@pytest.mark.parametrize("fail_at,where", [(0, "data"), (2, "callback")])
def test_a_fit_that_raises_leaves_the_last_completed_step_and_the_next_fit_works(fail_at, where):
    """Batch `fail_at` of the second fit raises: the model holds the steps before it, counts one epoch, fits on.

    "data": the first batch cannot be read, inside the step on JAX (where plain Keras 3.15 is then left without
    its variables' values); "callback": a callback raises before the third step.
    """
    x, y = regression_data(n=32)
    schedule = hta.schedules.Linear(0.3, 0.1, -0.1)
    failed, reference = _fresh_bn_model(), _fresh_bn_model()
    for model in (failed, reference):
        model.fit(_Batches(x, y), epochs=1, shuffle=False, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)])
    data = _Batches(x, y, fail_at=fail_at) if where == "data" else _Batches(x, y)
    raising = [_RaiseBefore(fail_at)] if where == "callback" else []
    with pytest.raises(Exception, match="bad batch"):  # TensorFlow: raised through tf.data
        failed.fit(data, epochs=1, shuffle=False, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)] + raising)
    reference.homotopy_l.assign(0.2)  # the failed epoch's L, set at its start
    if fail_at:  # the steps that completed before the failure, taken by hand on the reference
        for i in range(fail_at):
            reference.train_on_batch(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
    assert int(failed.homotopy_epoch.numpy()) == 1  # completed epochs only
    for got, want in zip(_state(failed), _state(reference)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    history = failed.fit(_Batches(x, y), epochs=1, shuffle=False, verbose=0,
                         callbacks=[hta.HomotopyScheduler(schedule)])  # and the next fit goes on from there
    assert np.isfinite(history.history["loss"][0]) and int(failed.homotopy_epoch.numpy()) == 2
    np.testing.assert_allclose(history.history["homotopy_l"], [0.2], rtol=1e-6)


@pytest.mark.parametrize("num_groups, anchor", [(2, "init"), (3, "zeros")])
def test_the_public_proximal_step_is_the_float64_solve_for_a_custom_training_loop(num_groups, anchor):
    """`model.proximal_step(γ)`, called after a custom loop's own optimizer step, sets every twin to the exact
    minimiser of ½‖w − w′‖² + γ·penalties(w) at the current L."""
    from reference import proximal_solve_twins

    model = hta.HomotopyModel.from_model(dense_network(hidden=5), num_groups=num_groups, anchor=anchor,
                                         homotopy_l=0.3)
    rng = np.random.default_rng(2)
    for k in range(num_groups):  # twins apart, and off the anchor
        model.twin(k).set_weights([w + rng.normal(scale=0.5, size=w.shape) for w in model.twin(k).get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [[_np(v) for v in model.twin(k).trainable_weights] for k in range(num_groups)]
    anchors = None if anchor == "zeros" else [_np(a) for a in model.anchors]
    want = proximal_solve_twins(before, [[_np(m) for m in ms] for ms in model.anchor_masks], anchors, 0.07, 0.3)
    model.proximal_step(0.07)
    for k in range(num_groups):
        for got, expected in zip(model.twin(k).trainable_weights, want[k]):
            np.testing.assert_allclose(_np(got), expected, rtol=1e-5, atol=1e-6)
