"""Weight groups: which elements of each weight each twin is free to move.

HTA splits every trainable weight into `num_groups` groups. Twin `k` is free
on group `(k + 1) % num_groups` and anchored on all the others, so for the
paper's two twins θ is anchored on group 0 (the paper's θ₁) and η on group 1
(θ₂). A split is computed once, at construction, as one integer array per
trainable variable whose entries are group indices.
"""

import numpy as np

import keras
from keras import ops

SPLITS = ("channels", "layers", "random")


def free_group(twin, num_groups):
    """Returns the group that twin `twin` is free on."""
    return (twin + 1) % num_groups


def free_masks(groups, num_groups, dtype="float32"):
    """One 0/1 mask per twin and variable, 1 where that twin is free.

    Args:
        groups: List of integer arrays, tensors or variables of group
            indices, one per trainable variable (each of the variable's
            shape or broadcastable to it).
        num_groups: Integer, the number of twins and groups.
        dtype: The masks' dtype.

    Returns:
        A list over twins of lists over variables of tensors of the groups'
        shapes (what `HomotopyModel` trains with).
    """
    return [
        [ops.cast(ops.equal(ops.cast(g, "int32"), free_group(k, num_groups)), dtype) for g in groups]
        for k in range(num_groups)
    ]


def anchor_masks(groups, num_groups, dtype="float32"):
    """One 0/1 mask per twin and variable, 1 where that twin is anchored.

    The complement of `free_masks`, with the same arguments and shapes.
    """
    return [[1 - e for e in masks] for masks in free_masks(groups, num_groups, dtype)]


def group_sizes(groups, shapes, num_groups):
    """Number of weight elements in each group.

    Args:
        groups: List of integer arrays broadcastable to `shapes`.
        shapes: List of the variables' shapes.
        num_groups: Integer.

    Returns:
        A list of `num_groups` integers.
    """
    counts = np.zeros(num_groups, "int64")
    for g, shape in zip(groups, shapes):
        g = np.asarray(g)
        repeats = int(np.prod(shape)) // max(g.size, 1)
        counts += repeats * np.bincount(g.ravel(), minlength=num_groups)[:num_groups]
    return counts.tolist()


def layer_tree(model):
    """Every layer below `model` that Keras lists in `.layers`, parents before children."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model) or hasattr(layer, "layers"):
            yield from layer_tree(layer)


def layer_owners(model, variables):
    """Index of the (innermost) layer listed in `.layers` owning each variable, in model order."""
    owner = {}
    for layer in layer_tree(model):
        for v in layer.weights:
            owner[id(v)] = id(layer)  # children come later: innermost wins
    order, result = {}, []
    for v in variables:
        key = owner.get(id(v), id(model))
        result.append(order.setdefault(key, len(order)))
    return result


def split_channels(shape, num_groups):
    """Contiguous blocks along the last axis (output channels / units).

    Returns a vector over the last axis (it broadcasts against the weight),
    or, for a weight with fewer outputs than groups (e.g. a Dense(1) head),
    a full-size array that cuts its elements instead.
    """
    if len(shape) == 0:
        return np.zeros((), "int32")
    if shape[-1] >= num_groups:
        ids = np.zeros(shape[-1], "int32")
        for g, block in enumerate(np.array_split(np.arange(shape[-1]), num_groups)):
            ids[block] = g
        return ids
    size = int(np.prod(shape))
    ids = np.zeros(size, "int32")
    for g, block in enumerate(np.array_split(np.arange(size), num_groups)):
        ids[block] = g
    return ids.reshape(shape)


def _balanced_cuts(sizes, num_groups):
    """Group of each item when cut into contiguous runs of near-equal total size."""
    cumulative = np.cumsum(sizes)
    total, n = cumulative[-1], len(sizes)
    groups = np.zeros(n, "int32")
    start = 0  # first item of the current run
    for j in range(1, num_groups):
        # The run ends after item b: at least one item per remaining group.
        candidates = np.arange(start, n - (num_groups - j))
        if len(candidates) == 0:
            break
        b = candidates[np.argmin(np.abs(cumulative[candidates] - j * total / num_groups))]
        groups[b + 1:] = j
        start = b + 1
    return groups


def group_of(split, variable, num_groups):
    """The groups a callable `split` gives `variable`, checked (see `assign_groups`)."""
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


def layer_groups(model, variables, num_groups):
    """`"layers"`: the group of each variable, its layer's run among the layers cut into near-equal runs."""
    owners = layer_owners(model, variables)
    sizes = np.zeros(max(owners) + 1, "int64")
    for o, v in zip(owners, variables):
        sizes[o] += int(np.prod(v.shape))
    layer_group = _balanced_cuts(sizes, num_groups)
    return [int(layer_group[o]) for o in owners]


def random_groups(shapes, num_groups, seed=None, keep=None):
    """`"random"`: each element drawn uniformly from the groups, variable after variable, from one stream.

    Args:
        shapes: The variables' shapes, in the order drawn.
        num_groups: Integer >= 2.
        seed: Integer or `None`.
        keep: Optional set of indices to return; the others are drawn (the
            stream advances the same) and dropped, so no full-size mask is
            kept for a weight that needs none.

    Returns:
        A list aligned with `shapes`: int32 arrays, `None` where not kept.
    """
    rng = np.random.default_rng(seed)
    groups = []
    for i, shape in enumerate(shapes):
        g = rng.integers(0, num_groups, size=shape).astype("int32")
        groups.append(g if keep is None or i in keep else None)
    return groups


def assign_groups(model, variables, split, num_groups, seed=None, check=True):
    """Assigns every element of every trainable variable to a group.

    What each split does, also on an unbalanced network:

    - `"channels"`: each weight's last axis (output channels or units) is
      cut into `num_groups` contiguous blocks; biases go with their
      channels; a weight with fewer outputs than groups is cut element-wise.
      Every layer is shared about equally, whatever its size. Stored as one
      small vector per weight, not a full-size mask.
    - `"layers"`: the layers holding weights, in model order, are cut into
      `num_groups` contiguous runs holding about equal numbers of weight
      elements (cuts only at layer boundaries). On a network whose weights
      sit mostly in a few layers the groups can only be as balanced as
      those layers allow: see `HomotopyModel.group_sizes()`. Stored as one
      integer per weight.
    - `"random"`: each element drawn uniformly from the groups with `seed`,
      fixed for the whole run (a dropout-style mask). Stored full-size.
    - a callable `variable -> array` of the variable's shape holding group
      indices (or, for two groups, a boolean mask that is True on the
      paper's θ₁). Stored full-size.

    Args:
        model: The Keras model owning `variables` (used by `"layers"`).
        variables: List of the model's trainable variables.
        split: `"channels"`, `"layers"`, `"random"` or a callable
            (`"custom"`, what a saved callable split is recorded as: zeros of
            each shape, for the saved groups to fill).
        num_groups: Integer >= 2.
        seed: Integer or `None`, for `"random"`.
        check: Whether to raise when a group is left empty.

    Returns:
        A list of int32 arrays of group indices, one per variable, each of
        the variable's shape or broadcastable to it.

    Raises:
        ValueError: if `split` is unknown, returns a wrong shape or values,
            or leaves a group without any element.
    """
    shapes = [tuple(v.shape) for v in variables]
    if split == "custom":  # a saved callable split: shape-only, filled by the saved weights
        return [np.zeros(shape, "int32") for shape in shapes]
    if callable(split):
        groups = [group_of(split, v, num_groups) for v in variables]
    elif split == "channels":
        groups = [split_channels(shape, num_groups) for shape in shapes]
    elif split == "layers":
        groups = [np.array(g, "int32") for g in layer_groups(model, variables, num_groups)]
    elif split == "random":
        groups = random_groups(shapes, num_groups, seed)
    else:
        raise ValueError(
            f"Argument `split` must be one of {SPLITS} or a callable. "
            f"Received: split={split!r}"
        )
    counts = group_sizes(groups, shapes, num_groups)
    if check and 0 in counts:
        raise ValueError(
            f"Argument `split`={split!r} leaves a group empty with "
            f"num_groups={num_groups}: elements per group {counts}. "
            "Use fewer groups or another split."
        )
    return groups
