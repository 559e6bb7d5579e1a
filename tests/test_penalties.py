"""The anchor and coupling terms against numpy, and safe l2 gradients."""

import numpy as np
import tensorflow as tf

from keras_hta.penalties import homotopy_penalties


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
