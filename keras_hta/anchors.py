"""The anchor θ̃: the fixed point each twin's anchored group is pulled to."""

import numpy as np

ANCHORS = ("zeros", "init")


def resolve_anchor(anchor, variables):
    """Computes the anchor value of every trainable variable.

    Args:
        anchor: `"zeros"` (θ̃ = 0, the paper's dropout reading and the
            authors' code), `"init"` (θ̃ = the weights at construction),
            a callable `variable -> array` of the variable's shape, or a
            list of arrays, one per trainable variable, in order
            (`"custom"`, what a saved callable or list is recorded as: zeros
            of each shape, for the saved anchor to fill).
        variables: The model's trainable variables.

    Returns:
        A list of float arrays of the variables' shapes, or `None` for
        `"zeros"` (a zero anchor is not stored).

    Raises:
        ValueError: for an unknown string, a wrong length, a wrong shape,
            or a NaN or inf value.
    """
    if isinstance(anchor, str):
        if anchor == "zeros":
            return None
        if anchor == "custom":  # a saved callable or list: shape-only, filled by the saved weights
            return [np.zeros(tuple(v.shape), v.dtype) for v in variables]
        if anchor == "init":
            return [np.array(v.numpy()) for v in variables]
        raise ValueError(
            f"Argument `anchor` must be one of {ANCHORS}, a callable or a "
            f"list of arrays. Received: anchor={anchor!r}"
        )
    if callable(anchor):
        values = [anchor(v) for v in variables]
    elif isinstance(anchor, (list, tuple)):
        if len(anchor) != len(variables):
            raise ValueError(
                "Argument `anchor` must hold one array per trainable "
                f"variable ({len(variables)}). Received: {len(anchor)} arrays"
            )
        values = list(anchor)
    else:
        raise TypeError(
            f"Argument `anchor` must be one of {ANCHORS}, a callable or a "
            f"list of arrays. Received: anchor={anchor!r} of type "
            f"{type(anchor).__name__}"
        )
    result = []
    for v, a in zip(variables, values):
        a = np.asarray(a, dtype=v.dtype)
        if a.shape != tuple(v.shape):
            raise ValueError(
                "Argument `anchor` must match each variable's shape. "
                f"Received: shape {a.shape} for variable '{v.path}' of shape "
                f"{tuple(v.shape)}"
            )
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(
                "Argument `anchor` must be finite: the penalty pulls the twins to it. "
                f"Received: {int(np.sum(~np.isfinite(a)))} NaN or inf values for variable '{v.path}'"
            )
        result.append(a)
    return result
