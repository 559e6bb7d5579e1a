"""Float64 references that every test shares: the exact proximal step as a linear solve, element by element."""

import numpy as np


def proximal_solve(values, free, gamma, L, anchor=None):
    """The proximal step of one weight by a float64 linear solve of its stationarity system, element by element.

    (D − c·11ᵀ) w = w′ + d·a·θ̃ with D_k = 1 + c·m + d·a_k, c = 2γ/L, d = 2γL, a_k = 1 − free_k.

    Args:
        values: The m twins' values w′ of the weight (arrays of one shape).
        free: m 0/1 arrays broadcastable to that shape, 1 where twin k is free.
        gamma, L: Floats.
        anchor: An array of the weight's shape, or `None` for θ̃ = 0.

    Returns:
        A float64 array of shape `(m,) + shape`.
    """
    m = len(values)
    c, d = 2.0 * gamma / L, 2.0 * gamma * L
    values = np.stack([np.asarray(v, np.float64) for v in values])
    free = np.stack([np.broadcast_to(np.asarray(e, np.float64), values.shape[1:]) for e in free])
    anchor = np.zeros(values.shape[1:]) if anchor is None else np.asarray(anchor, np.float64)
    out = np.empty_like(values)
    for index in np.ndindex(values.shape[1:]):
        a = 1.0 - free[(slice(None),) + index]
        system = np.diag(1.0 + c * m + d * a) - c * np.ones((m, m))
        out[(slice(None),) + index] = np.linalg.solve(system, values[(slice(None),) + index] + d * a * anchor[index])
    return out


def proximal_solve_twins(twins, anchor_masks, anchors, gamma, L):
    """`proximal_solve` for every weight of every twin: `twins[k][i]` → the new values, as float64 arrays.

    `anchor_masks[k][i]` is 1 where twin k is anchored on weight i; `anchors[i]`
    its anchor (or `anchors` is None for θ̃ = 0).
    """
    m = len(twins)
    out = [[None] * len(twins[0]) for _ in range(m)]
    for i in range(len(twins[0])):
        free = [1.0 - np.asarray(anchor_masks[k][i], np.float64) for k in range(m)]
        new = proximal_solve([twins[k][i] for k in range(m)], free, gamma, L, None if anchors is None else anchors[i])
        for k in range(m):
            out[k][i] = new[k]
    return out
