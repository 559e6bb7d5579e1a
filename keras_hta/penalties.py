"""The penalty terms of the homotopy objective, their exact proximal step, and
the stability bound of a gradient step on them.

    H = Σ_k f(w_k) + L · Σ_k ‖a_k ⊙ (w_k − θ̃)‖² + (1/L) · Σ_{j<k} ‖w_j − w_k‖²

with twins w_0 = θ, w_1 = η, ..., anchor θ̃ and anchor masks a_k (1 where
twin k is anchored; exactly one twin is free at each weight element). With
`norm="l2"` each ‖·‖² is replaced by the plain Euclidean norm ‖·‖ (as the
authors' published code does); its gradient at 0 is taken as 0.

The two penalties are a known quadratic (for `norm="squared"`), so
`HomotopyModel` applies them exactly after the optimizer's step on Σ f
(`proximal_update`), the way Keras applies `weight_decay`: stable at any
learning rate. `penalty_curvature` and `sgd_divergence_limit` describe the
older explicit gradient step (`penalty_update="gradient"`), which diverges
once `learning_rate · curvature` crosses the limit.
"""

import numpy as np

import keras
from keras import ops
from keras_hta import backend

_HALF = ("float16", "bfloat16")


def add_n(tensors):
    """The sum of a non-empty list of tensors (of one shape, or scalars)."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def _safe_sqrt(x):
    # sqrt with gradient 0 at 0 instead of inf/NaN (twins start equal).
    positive = x > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), 0.0)


def _cast(x, dtype):
    """`x` in `dtype`, cast only where it is not (each cast is an operation of its own on an eager backend)."""
    return x if keras.backend.standardize_dtype(x.dtype) == dtype else ops.cast(x, dtype)


def _total(scalars):
    """The sum of a list of scalars in two operations, whatever its length."""
    return scalars[0] if len(scalars) == 1 else ops.sum(ops.stack(scalars))


def homotopy_penalties(twin_variables, anchors, masks, norm="squared"):
    """Computes the anchor and coupling terms, before weighting by L.

    Args:
        twin_variables: List over twins of lists of trainable variables,
            aligned across twins.
        anchors: List of anchor tensors aligned with each twin's variables,
            or `None` for θ̃ = 0.
        masks: List over twins of lists of 0/1 masks (1 = anchored), each
            of the variable's shape or broadcastable to it.
        norm: `"squared"` or `"l2"`.

    Returns:
        A tuple `(anchor, coupling)` of float32 scalars:
        `anchor = Σ_k ‖a_k ⊙ (w_k − θ̃)‖²` and
        `coupling = Σ_{j<k} ‖w_j − w_k‖²` (norms, not squares, for `"l2"`).
    """
    finish = (lambda s: s) if norm == "squared" else _safe_sqrt
    each = backend.elementwise  # one operation per list (PyTorch's foreach), or per tensor
    twin_variables = [[_cast(ops.convert_to_tensor(w), "float32") for w in ws] for ws in twin_variables]
    if anchors:
        anchors = [_cast(ops.convert_to_tensor(a), "float32") for a in anchors]
    anchor = _total([
        finish(each.sum_squares(each.mul(each.sub(ws, anchors) if anchors else ws,
                                         [_cast(m, "float32") for m in ms])))
        for ws, ms in zip(twin_variables, masks)
    ])
    pairs = []
    for j in range(len(twin_variables)):
        for k in range(j + 1, len(twin_variables)):
            pairs.append(finish(each.sum_squares(each.sub(twin_variables[j], twin_variables[k]))))
    return anchor, _total(pairs)


def proximal_update(values, free, gamma, homotopy_l, anchor=None, coefficients=None):
    """The exact minimiser of the penalties' proximal problem, elementwise.

    For twin values `w′_k` (after the optimizer's step on Σ f) returns the
    `w_k` that minimise, at every element,

        ½·Σ_k (w_k − w′_k)² + γ·[L·Σ_k a_k·(w_k − θ̃)² + (1/L)·Σ_{j<k} (w_j − w_k)²]

    where `a_k = 1 − free_k` and exactly one twin is free at each element.
    Setting the gradient to zero gives the m×m system
    `(D − c·11ᵀ) w = w′ + d·a·θ̃` with `c = 2γ/L`, `d = 2γL` and the diagonal
    `D_k = 1 + c·m + d·a_k` (`D_f` for the free twin, `D_a = D_f + d` for the
    anchored ones); Sherman–Morrison solves it in closed form:

        w_k = (r_k + u) / D_k,   r_k = w′_k + d·a_k·θ̃,
        u = c·(Σ_k r_k/D_k) / (1 − c·Σ_k 1/D_k)
          = c·D_a·(Σ_k r_k/D_k) / (1 + d·(1 + c·(m − 1))/D_f)

    The second form of `u` has no difference of nearly equal numbers, and
    `1/D_f − 1/D_a` is evaluated as `d/(D_f·D_a)`: every operation is a sum
    of terms of one sign, a product or a quotient, so the result is exact to
    a few float32 roundings for any γ > 0, L > 0 (the first form loses
    `log10(c)` digits). Weights stored in float16 or bfloat16 are updated in
    float32 and cast back. Every operation is elementwise, so the cost is a
    few passes over the weights, whatever m is.

    Args:
        values: List of m tensors of one shape, the twins' values `w′_k`.
        free: List of m 0/1 tensors broadcastable to that shape, 1 where
            twin k is free (exactly one 1 per element across the list).
        gamma: Scalar tensor or float, the step size γ (the optimizer's
            learning rate at this iteration).
        homotopy_l: Scalar tensor or float, L > 0.
        anchor: Tensor of the values' shape, or `None` for θ̃ = 0.
        coefficients: Optional `proximal_coefficients(gamma, homotopy_l, m,
            dtype)` of this step, computed once for all weights.

    Returns:
        The list of m updated tensors, in the values' dtype.
    """
    stored = keras.backend.standardize_dtype(values[0].dtype)
    if coefficients is None:
        coefficients = proximal_coefficients(gamma, homotopy_l, len(values), compute_dtype(stored))
    anchors = None if anchor is None else [anchor]
    return [w for (w,) in proximal_update_weights([[v] for v in values], [[e] for e in free], anchors, coefficients)]


def proximal_update_weights(values, free, anchors, coefficients):
    """`proximal_update` for many weights at once, each operation over all of them.

    Args:
        values: List over the m twins of lists over weights (aligned across
            twins) of the values `w′_k`.
        free: The twins' 0/1 free masks, aligned with `values`.
        anchors: List of anchor tensors aligned with each twin's weights,
            or `None` for θ̃ = 0.
        coefficients: `proximal_coefficients(γ, L, m, dtype)` of this step.

    Returns:
        The updated values, aligned with `values`, each in its stored dtype.
    """
    each = backend.elementwise  # one operation per list (PyTorch's foreach), or per tensor
    dtype = coefficients["dtype"]
    d, inv_anchored, gap, scale = (coefficients[k] for k in ("d", "inv_anchored", "gap", "scale"))
    stored = [keras.backend.standardize_dtype(v.dtype) for v in values[0]]
    values = [[_cast(ops.convert_to_tensor(v), dtype) for v in ws] for ws in values]
    free = [[_cast(e, dtype) for e in es] for es in free]
    total, free_value = values[0], each.mul(free[0], values[0])
    for es, ws in zip(free[1:], values[1:]):
        total, free_value = each.add(total, ws), each.add(free_value, each.mul(es, ws))
    weighted = each.add(each.mul(total, inv_anchored), each.mul(free_value, gap))
    if anchors is not None:
        anchors = [_cast(ops.convert_to_tensor(a), dtype) for a in anchors]
        weighted = each.add(weighted, each.mul(anchors, coefficients["anchor_weight"]))
        pulled = each.mul(anchors, d)
    u = each.mul(weighted, scale)
    result = []
    for es, ws in zip(free, values):
        inv = each.add(each.mul(es, gap), inv_anchored)  # 1/D of each element: 1/D_f where free, 1/D_a elsewhere
        r = each.add(ws, u)
        if anchors is not None:  # + d·a_k·θ̃, a_k = 1 − e_k
            r = each.add(r, each.mul(pulled, each.add(each.mul(es, -1.0), 1.0)))
        result.append([_cast(x, s) for x, s in zip(each.mul(r, inv), stored)])
    return result


def compute_dtype(dtype):
    """The dtype the proximal step computes in for weights stored in `dtype`: float32 for half precision."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in _HALF else dtype


def proximal_coefficients(gamma, homotopy_l, num_groups, dtype="float32"):
    """The scalars of `proximal_update`'s closed form for one step (the same for every weight of that dtype).

    Computed once per step and passed to `proximal_update_weights` for all weights, so
    that an eager backend does not repeat a dozen scalar operations per weight.

    Returns:
        A dict of scalar tensors `d`, `inv_anchored` (1/D_a), `gap`
        (1/D_f − 1/D_a), `scale` (c / (1 − c·Σ_k 1/D_k)), `anchor_weight`
        (d·(m − 1)/D_a), and the compute `dtype`.
    """
    m = int(num_groups)
    gamma = ops.cast(gamma, dtype)
    L = ops.cast(homotopy_l, dtype)
    c, d = 2.0 * gamma / L, 2.0 * gamma * L
    d_free = 1.0 + c * m                 # D for the free twin
    d_anchored = d_free + d              # D for an anchored twin
    inv_free, inv_anchored = 1.0 / d_free, 1.0 / d_anchored
    gap = d * inv_free * inv_anchored    # 1/D_f − 1/D_a, without the subtraction
    scale = c * d_anchored / (1.0 + d * (1.0 + c * (m - 1)) * inv_free)  # c / (1 − c·Σ_k 1/D_k)
    return {"d": d, "inv_anchored": inv_anchored, "gap": gap, "scale": scale,
            "anchor_weight": d * (m - 1) * inv_anchored, "dtype": dtype}


def penalty_curvature(homotopy_l, num_groups=2):
    """Largest eigenvalue of the penalty terms' Hessian per weight element.

    Per element the squared penalties are a quadratic in the m twins' values
    with Hessian `2L·diag(a) + (2/L)·(m·I − 11ᵀ)`, `a` marking the m − 1
    anchored twins. For two twins it is `L + 2/L + √(L² + 4/L²)`, about 4/L
    for small L.

    Args:
        homotopy_l: Float, L > 0.
        num_groups: Integer, the number of twins m.

    Returns:
        A float.
    """
    L, m = float(homotopy_l), int(num_groups)
    a = np.ones(m)
    a[0] = 0.0
    hessian = 2 * L * np.diag(a) + (2 / L) * (m * np.eye(m) - np.ones((m, m)))
    return float(np.linalg.eigvalsh(hessian)[-1])


def sgd_divergence_limit(momentum=0.0, nesterov=False):
    """The `learning_rate · curvature` at which SGD diverges on a quadratic.

    Heavy-ball SGD with momentum β is stable on a quadratic of curvature λ
    iff `learning_rate · λ < 2(1 + β)`; Nesterov's variant iff
    `learning_rate · λ < 2(1 + β)/(1 + 2β)`.

    Returns:
        A float.
    """
    beta = float(momentum)
    return 2 * (1 + beta) / (1 + 2 * beta) if nesterov else 2 * (1 + beta)


def sgd_stability_message(optimizer, homotopy_l, num_groups=2):
    """Why an explicit gradient step on the squared penalties diverges, or `None`.

    Looks through wrappers with an `inner_optimizer` (`LossScaleOptimizer`
    under mixed precision) to a `keras.optimizers.SGD`; other optimizers
    rescale the step and are not checked.

    Args:
        optimizer: A Keras optimizer or `None`.
        homotopy_l: Float, L.
        num_groups: Integer, the number of twins.

    Returns:
        A sentence for a warning, or `None` when no divergence is predicted.
    """
    import keras

    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    if not isinstance(optimizer, keras.optimizers.SGD):
        return None
    lr = float(np.asarray(optimizer.learning_rate))
    curvature = penalty_curvature(homotopy_l, num_groups)
    limit = sgd_divergence_limit(optimizer.momentum, optimizer.nesterov)
    if lr * curvature < limit:
        return None
    return (
        f"with SGD(learning_rate={lr:g}, momentum={optimizer.momentum:g}) L={homotopy_l:g} makes the "
        f"penalty terms diverge: learning_rate x curvature = {lr * curvature:.3g} >= {limit:.3g}. Use "
        "penalty_update='proximal', a larger L or a smaller learning rate."
    )
