"""What every backend's HTA step shares: the twins' batches, and the exact proximal update after the optimizer's step.

`keras_hta.step` holds the lines that differ per backend and calls these
around Keras' own `train_step`.
"""

import contextlib
import threading

import keras
from keras import ops
from keras_hta import penalties as penalties_lib
from keras_hta import step as step_lib

# The twins' parts of a split batch, kept by the step for `compute_loss`; per
# thread, as tf.distribute runs each replica's step in a thread of its own.
_SPLIT = threading.local()


def twin_parts(model):
    """The twins' `(x, y, sample_weight)` of the running step's split batch, or `None` (every twin: the whole batch)."""
    return getattr(_SPLIT, "parts", {}).get(id(model))


class TwinStep:
    """The split batch before Keras' step, and the proximal update after it (mixed into `HomotopyModel`)."""

    @contextlib.contextmanager
    def _twin_batches(self, data):
        """Yields θ's batch; with `twin_batch="split"` keeps the twins' parts for `compute_loss`."""
        if self.twin_batch != "split":
            yield data
            return
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        parts = split_batch((x, y, sample_weight), self.num_groups, "split")
        if not hasattr(_SPLIT, "parts"):
            _SPLIT.parts = {}
        _SPLIT.parts[id(self)] = parts
        try:
            yield keras.utils.pack_x_y_sample_weight(*parts[0])
        finally:
            del _SPLIT.parts[id(self)]

    def _before_step(self):
        """γ (the learning rate of the coming step) and, where a step may not move the weights, the iteration count.

        `None` for `penalty_update="gradient"`. Read before the optimizer's step.
        """
        if self.penalty_update != "proximal":
            return None
        gamma = ops.copy(ops.cast(self.optimizer.learning_rate, "float32"))
        # The optimizer's `iterations` advance only on a step that moves the weights.
        may_skip = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer) or bool(
            getattr(self.optimizer, "gradient_accumulation_steps", None))
        iterations = ops.copy(ops.convert_to_tensor(self.optimizer.iterations)) if may_skip else None
        return gamma, iterations

    def _proximal_step(self, gamma, iterations=None):
        """Applies the penalties exactly after the optimizer's step (see `keras_hta.penalties.proximal_update`).

        `iterations`: the optimizer's count before the step, or None; where
        it has not advanced (accumulating gradients, or a skipped loss-scaled
        step) the weights are left alone.
        """
        updated = None if iterations is None else ops.greater(ops.convert_to_tensor(self.optimizer.iterations), iterations)
        state = self.twin_state
        positions = state.active()
        per_twin = state.values(positions)
        anchors = state.anchors(positions)
        by_dtype = {}  # the weights of each compute dtype, stepped together (one coefficient set per dtype)
        for i, variable in enumerate(per_twin[0]):
            dtype = penalties_lib.compute_dtype(variable.dtype)
            by_dtype.setdefault(dtype, []).append(i)
        updates = []
        with step_lib.no_grad():
            for dtype, rows in by_dtype.items():
                coefficients = penalties_lib.proximal_coefficients(gamma, self.homotopy_l, self.num_groups, dtype)
                variables = [[ws[i] for i in rows] for ws in per_twin]
                free = state.masks([positions[i] for i in rows], dtype)
                new = penalties_lib.proximal_update_weights(
                    variables, free, None if anchors is None else [anchors[i] for i in rows], coefficients)
                for vs, ns in zip(variables, new):
                    if updated is not None:  # the optimizer skipped this step: leave the weights as they are
                        ns = [ops.where(updated, n, ops.cast(v, n.dtype)) for n, v in zip(ns, vs)]
                    updates += zip(vs, ns)
        step_lib.assign_all(updates)


def batch_size(data):
    """The number of examples in a batch: the first dimension of its first tensor."""
    return keras.ops.shape(next(t for t in keras.tree.flatten(data) if t is not None))[0]


def split_batch(data, m, how):
    """What each of m twins trains on: `data` for every twin, or (`how="split"`) examples k, k + m, ...

    A batch of fewer than m examples goes whole to every twin, so none is empty.
    """
    if how != "split":
        return [data] * m
    size = batch_size(data)
    enough = size >= m
    if isinstance(size, int):  # known when traced (JAX, PyTorch, static TF shapes)
        take = lambda t, k: None if t is None else (t[k::m] if enough else t)  # noqa: E731
    else:
        take = lambda t, k: None if t is None else keras.ops.cond(enough, lambda: t[k::m], lambda: t)  # noqa: E731
    return [keras.tree.map_structure(lambda t: take(t, k), data) for k in range(m)]
