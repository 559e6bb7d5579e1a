"""Weight groups: which elements of each weight each twin is free to move.

HTA splits every trainable weight into `num_groups` groups. Twin `k` is free
on group `(k + 1) % num_groups` and anchored on all the others, so for the
paper's two twins θ is anchored on group 0 (the paper's θ₁) and η on group 1
(θ₂). A split is computed once, at construction, as one integer array per
trainable variable whose entries are group indices.
"""

import numpy as np

SPLITS = ("channels", "layers", "random")


def free_group(twin, num_groups):
    """Returns the group that twin `twin` is free on."""
    return (twin + 1) % num_groups


def anchor_masks(groups, num_groups):
    """Turns group indices into one 0/1 float mask per twin and variable.

    Args:
        groups: List of integer arrays, one per trainable variable.
        num_groups: Integer, the number of twins and groups.

    Returns:
        A list over twins of lists over variables of float32 arrays, 1 where
        that twin is pulled towards the anchor.
    """
    return [
        [(g != free_group(k, num_groups)).astype("float32") for g in groups]
        for k in range(num_groups)
    ]


def layer_owners(model, variables):
    """Index of the (innermost) layer owning each variable, in model order."""
    owner = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for v in layer.trainable_weights:
            owner[id(v)] = id(layer)  # children come later: innermost wins
    order, result = {}, []
    for v in variables:
        key = owner.get(id(v), id(model))
        result.append(order.setdefault(key, len(order)))
    return result


def _split_channels(shape, num_groups):
    """Contiguous blocks along the last axis (output channels / units)."""
    if len(shape) == 0:
        return np.zeros(shape, "int32")
    if shape[-1] >= num_groups:
        blocks = np.array_split(np.arange(shape[-1]), num_groups)
        ids = np.zeros(shape[-1], "int32")
        for g, block in enumerate(blocks):
            ids[block] = g
        return np.broadcast_to(ids, shape).copy()
    # Fewer outputs than groups (e.g. a Dense(1) head): split the elements.
    size = int(np.prod(shape))
    ids = np.zeros(size, "int32")
    for g, block in enumerate(np.array_split(np.arange(size), num_groups)):
        ids[block] = g
    return ids.reshape(shape)


def _from_callable(split, variable, num_groups):
    mask = np.asarray(split(variable))
    shape = tuple(variable.shape)
    if mask.shape != shape:
        raise ValueError(
            "Argument `split` must return an array of the variable's shape. "
            f"Received: shape {mask.shape} for variable "
            f"'{variable.path}' of shape {shape}"
        )
    if mask.dtype == bool:
        if num_groups != 2:
            raise ValueError(
                "A boolean `split` mask (True = the paper's group θ₁) needs "
                f"num_groups=2. Received: num_groups={num_groups}"
            )
        return np.where(mask, 0, 1).astype("int32")
    if not np.issubdtype(mask.dtype, np.integer) or (
        mask.size and (mask.min() < 0 or mask.max() >= num_groups)
    ):
        raise ValueError(
            "Argument `split` must return booleans or group indices in "
            f"[0, {num_groups}). Received: dtype {mask.dtype}, values "
            f"{np.unique(mask)[:5]} for variable '{variable.path}'"
        )
    return mask.astype("int32")


def assign_groups(model, variables, split, num_groups, seed=None):
    """Assigns every element of every trainable variable to a group.

    Args:
        model: The Keras model owning `variables` (used by `"layers"`).
        variables: List of the model's trainable variables.
        split: `"channels"` (each weight's last axis, i.e. output channels
            or units, cut into `num_groups` contiguous blocks; biases go with
            their channels; a weight with fewer outputs than groups is cut
            element-wise), `"layers"` (the layers holding weights cut into
            `num_groups` contiguous runs, in model order), `"random"` (each
            element drawn uniformly from the groups with `seed`, fixed for
            the whole run: a dropout-style mask), or a callable
            `variable -> array` of the variable's shape holding group
            indices (or, for two groups, a boolean mask that is True on the
            paper's θ₁).
        num_groups: Integer >= 2.
        seed: Integer or `None`, for `"random"`.

    Returns:
        A list of int32 arrays of group indices, one per variable.

    Raises:
        ValueError: if `split` is unknown, returns a wrong shape or values,
            or leaves a group without any element.
    """
    if callable(split):
        groups = [_from_callable(split, v, num_groups) for v in variables]
    elif split == "channels":
        groups = [_split_channels(tuple(v.shape), num_groups) for v in variables]
    elif split == "layers":
        owners = layer_owners(model, variables)
        n_layers = max(owners) + 1
        layer_group = np.zeros(n_layers, "int32")
        for g, block in enumerate(np.array_split(np.arange(n_layers), num_groups)):
            layer_group[block] = g
        groups = [
            np.full(tuple(v.shape), layer_group[o], "int32")
            for v, o in zip(variables, owners)
        ]
    elif split == "random":
        rng = np.random.default_rng(seed)
        groups = [
            rng.integers(0, num_groups, size=tuple(v.shape)).astype("int32")
            for v in variables
        ]
    else:
        raise ValueError(
            f"Argument `split` must be one of {SPLITS} or a callable. "
            f"Received: split={split!r}"
        )
    counts = np.bincount(
        np.concatenate([g.ravel() for g in groups]), minlength=num_groups
    )
    if (counts == 0).any():
        raise ValueError(
            f"Argument `split`={split!r} leaves a group empty with "
            f"num_groups={num_groups}: elements per group {counts.tolist()}. "
            "Use fewer groups or another split."
        )
    return groups
