"""The anchor and coupling terms against numpy, safe l2 gradients, the exact
proximal step against a numeric minimiser, and the stability bound."""

import numpy as np
import pytest
import tensorflow as tf

from keras_hta.penalties import homotopy_penalties, proximal_update


def _setup(seed=0, twins=3):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (4,)]
    ws = [[tf.Variable(rng.normal(size=s).astype("float32")) for s in shapes] for _ in range(twins)]
    anchors = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]
    masks = [[tf.constant((rng.random(s) < 0.5).astype("float32")) for s in shapes] for _ in range(twins)]
    return ws, anchors, masks


def test_values_match_numpy():
    ws, anchors, masks = _setup()
    for norm, f in (("squared", lambda s: s), ("l2", np.sqrt)):
        anchor, coupling = homotopy_penalties(ws, anchors, masks, norm)
        want_a = sum(f(sum(np.sum((m.numpy() * (w.numpy() - a.numpy())) ** 2) for w, a, m in zip(wk, anchors, mk)))
                     for wk, mk in zip(ws, masks))
        want_c = sum(f(sum(np.sum((u.numpy() - v.numpy()) ** 2) for u, v in zip(ws[j], ws[k])))
                     for j in range(3) for k in range(j + 1, 3))
        np.testing.assert_allclose(float(anchor), want_a, rtol=1e-5)
        np.testing.assert_allclose(float(coupling), want_c, rtol=1e-5)


def test_l2_gradient_is_finite_when_twins_are_equal():
    ws, anchors, masks = _setup(twins=2)
    for u, v in zip(ws[0], ws[1]):
        v.assign(u)
    for a, w in zip(anchors, ws[0]):
        pass
    anchors = [tf.identity(w) for w in ws[0]]
    with tf.GradientTape() as tape:
        anchor, coupling = homotopy_penalties(ws, anchors, masks, "l2")
        total = anchor + coupling
    grads = tape.gradient(total, [w for wk in ws for w in wk])
    for g in grads:
        np.testing.assert_array_equal(g.numpy(), 0.0)


def _objective(w, w_prime, free, gamma, L, anchor):
    """The per-element proximal objective of `proximal_update`'s docstring."""
    a = 1.0 - free
    m = len(w)
    coupling = sum((w[j] - w[k]) ** 2 for j in range(m) for k in range(j + 1, m))
    return 0.5 * np.sum((w - w_prime) ** 2) + gamma * (L * np.sum(a * (w - anchor) ** 2) + coupling / L)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("with_anchor", [False, True])
def test_proximal_update_equals_numeric_minimiser(m, with_anchor):
    from scipy.optimize import minimize

    rng = np.random.default_rng(m)
    shape = (5, 3)
    values = [rng.normal(size=shape) for _ in range(m)]
    group = rng.integers(0, m, size=shape)  # which twin is free, per element
    free = [(group == k).astype("float64") for k in range(m)]
    anchor = rng.normal(size=shape) if with_anchor else np.zeros(shape)
    gamma, L = 0.3, 0.7
    got = proximal_update(
        [tf.constant(v) for v in values], [tf.constant(e) for e in free], gamma, L,
        tf.constant(anchor) if with_anchor else None,
    )
    got = np.stack([g.numpy() for g in got])
    for index in np.ndindex(shape):
        w_prime = np.array([v[index] for v in values])
        e = np.array([f[index] for f in free])
        best = minimize(_objective, w_prime, args=(w_prime, e, gamma, L, anchor[index]),
                        method="BFGS", options={"gtol": 1e-12})
        np.testing.assert_allclose(got[(slice(None),) + index], best.x, atol=1e-6)


def test_proximal_update_limits_in_l():
    rng = np.random.default_rng(0)
    values = [tf.constant(rng.normal(size=(20,))) for _ in range(3)]
    group = rng.integers(0, 3, size=20)
    free = [tf.constant((group == k).astype("float64")) for k in range(3)]
    anchor = tf.constant(rng.normal(size=(20,)))
    mean = np.mean([v.numpy() for v in values], axis=0)
    for w in proximal_update(values, free, 1.0, 1e-9, anchor):  # L → 0: twins equal their mean
        np.testing.assert_allclose(w.numpy(), mean, atol=1e-6)
    for k, w in enumerate(proximal_update(values, free, 1.0, 1e9, anchor)):  # L → ∞
        anchored = group != k
        np.testing.assert_allclose(w.numpy()[anchored], anchor.numpy()[anchored], atol=1e-6)


def test_penalty_curvature_and_sgd_limit():
    from keras_hta.penalties import penalty_curvature, sgd_divergence_limit

    for L in (0.01, 0.3, 5.0):
        assert penalty_curvature(L) == pytest.approx(L + 2 / L + np.sqrt(L**2 + 4 / L**2), rel=1e-12)
    assert sgd_divergence_limit(0.9) == pytest.approx(3.8)
    assert sgd_divergence_limit(0.9, nesterov=True) == pytest.approx(3.8 / 2.8)
