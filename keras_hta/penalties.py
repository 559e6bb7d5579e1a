"""The two penalty terms of the homotopy objective.

    H = Σ_k f(w_k) + L · Σ_k ‖a_k ⊙ (w_k − θ̃)‖² + (1/L) · Σ_{j<k} ‖w_j − w_k‖²

with twins w_0 = θ, w_1 = η, ..., anchor θ̃ and anchor masks a_k. With
`norm="l2"` each ‖·‖² is replaced by the plain Euclidean norm ‖·‖ (as the
authors' published code does); its gradient at 0 is taken as 0.
"""

import tensorflow as tf

NORMS = ("squared", "l2")


def _safe_sqrt(x):
    # sqrt with gradient 0 at 0 instead of inf/NaN (twins start equal).
    positive = x > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), 0.0)


def _sum_sq(tensors):
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(t, "float32"))) for t in tensors])


def homotopy_penalties(twin_variables, anchors, masks, norm="squared"):
    """Computes the anchor and coupling terms, before weighting by L.

    Args:
        twin_variables: List over twins of lists of trainable variables,
            aligned across twins.
        anchors: List of anchor tensors, aligned with each twin's variables.
        masks: List over twins of lists of 0/1 masks (1 = anchored).
        norm: `"squared"` or `"l2"`.

    Returns:
        A tuple `(anchor, coupling)` of float32 scalars:
        `anchor = Σ_k ‖a_k ⊙ (w_k − θ̃)‖²` and
        `coupling = Σ_{j<k} ‖w_j − w_k‖²` (norms, not squares, for `"l2"`).
    """
    finish = (lambda s: s) if norm == "squared" else _safe_sqrt
    anchor = tf.add_n(
        [
            finish(_sum_sq([m * (w - a) for w, a, m in zip(ws, anchors, ms)]))
            for ws, ms in zip(twin_variables, masks)
        ]
    )
    pairs = []
    for j in range(len(twin_variables)):
        for k in range(j + 1, len(twin_variables)):
            diffs = [u - v for u, v in zip(twin_variables[j], twin_variables[k])]
            pairs.append(finish(_sum_sq(diffs)))
    return anchor, tf.add_n(pairs)
