"""`HomotopyModel`'s training step: the backend-specific lines in one place, and the proximal update.

Everything else in keras-hta is written once in `keras.ops`. Each backend's
own `train_step` (Keras' trainer) runs the forward pass, differentiates the
loss (`HomotopyModel.compute_loss`, which adds the twins' f), applies the
optimizer, scales losses under mixed precision and distribution, and
updates the metrics. What differs per backend, and lives here:

- the step's signature and state: TensorFlow and PyTorch step on the
  variables (`train_step(data) -> logs`); JAX steps on explicit state
  (`train_step(state, data) -> (logs, state)`), so the proximal update runs
  inside a `keras.StatelessScope` mapped to the state Keras' step returned,
  and its results go back into that state;
- how a twin's forward pass yields its losses (on JAX through
  `stateless_call`, which returns the `add_loss` terms a stateless scope
  would otherwise drop);
- the replica count Keras divides each replica's loss by (TensorFlow's
  `tf.distribute`; 1 elsewhere: JAX's `keras.distribution` computes the
  global loss);
- how the proximal step's values are assigned: under a `tf.distribute`
  strategy once per device in the cross-replica context, on PyTorch
  outside autograd.

TensorFlow and PyTorch are imported only on their own backend.
"""

import contextlib
import inspect
import threading

import keras
from keras import ops
from keras_hta import penalties as penalties_lib
from keras_hta import splits as splits_lib
from keras_hta import twins as twins_lib

BACKEND = keras.backend.backend()


def replicas():
    """Replicas the current step runs on (Keras divides each one's loss by it)."""
    if BACKEND != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def no_grad():
    """A context outside autograd for PyTorch; nothing elsewhere."""
    if BACKEND == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def forward(net, x):
    """Calls `net` on `x` in training mode; returns `(y_pred, losses)`.

    `losses` are the net's regularization and `add_loss` terms of this call.
    On JAX the call goes through `stateless_call` with the variables' current
    values (the traced ones inside Keras' step), and the updated
    non-trainable values (BatchNorm statistics, seeds) are assigned back, so
    that Keras' step returns them in its state.
    """
    if BACKEND != "jax":
        y_pred = net(x, training=True)
        return y_pred, net.losses
    trainable = [v.value for v in net.trainable_variables]
    non_trainable = [v.value for v in net.non_trainable_variables]
    kwargs = {"training": True} if "training" in inspect.signature(net.call).parameters else {}
    y_pred, non_trainable, losses = net.stateless_call(trainable, non_trainable, x, return_losses=True, **kwargs)
    for variable, value in zip(net.non_trainable_variables, non_trainable):
        variable.assign(value)
    return y_pred, losses


def assign_all(updates):
    """Assigns `(variable, value)` pairs computed from the same step's weights.

    Under a `tf.distribute` strategy every replica computed the same values
    from the same mirrored weights; as Keras' optimizers do, the assignment
    happens in the cross-replica context through `strategy.extended.update`.
    """
    if BACKEND != "tensorflow":
        with no_grad():
            for variable, value in updates:
                variable.assign(value)
        return
    import tensorflow as tf

    def assign(strategy, updates):
        for variable, value in updates:
            variable = getattr(variable, "value", variable)  # the tf.Variable of a Keras variable
            strategy.extended.update(variable, lambda v, x: v.assign(x), args=(value,), group=False)

    context = tf.distribute.get_replica_context()
    if context is None:
        assign(tf.distribute.get_strategy(), updates)
    else:
        context.merge_call(assign, args=(updates,))


# The twins' parts of a split batch, kept by the step for `compute_loss`; per
# thread, as tf.distribute runs each replica's step in a thread of its own.
_SPLIT = threading.local()


def twin_parts(model):
    """The twins' `(x, y, sample_weight)` of the running step's split batch, or `None` (every twin: the whole batch)."""
    return getattr(_SPLIT, "parts", {}).get(id(model))


class _ProximalStep:
    """What every backend's step shares: the split batch, and the proximal update after the optimizer's step."""

    @contextlib.contextmanager
    def _twin_batches(self, data):
        """Yields θ's batch; with `twin_batch="split"` keeps the twins' parts for `compute_loss`."""
        if self.twin_batch != "split":
            yield data
            return
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        parts = twins_lib.split_batch((x, y, sample_weight), self.num_groups, "split")
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
        updates = []
        with no_grad():
            for i in self._active():
                values = [ops.convert_to_tensor(ws[i]) for ws in self._paired]
                free = [e for (e,) in splits_lib.free_masks([self._groups[i]], self.num_groups, values[0].dtype)]
                anchor = None if self._anchor_weights is None else ops.convert_to_tensor(self._anchor_weights[i])
                new = penalties_lib.proximal_update(values, free, gamma, self.homotopy_l, anchor)
                if updated is not None:
                    new = [ops.where(updated, n, v) for n, v in zip(new, values)]
                updates += zip([ws[i] for ws in self._paired], new)
        assign_all(updates)


def _state_mapping(model, state):
    trainable, non_trainable, optimizer_variables, _ = state
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += zip(model.non_trainable_variables, non_trainable)
    if model.optimizer is not None:
        mapping += zip(model.optimizer.variables, optimizer_variables)
    return mapping


if BACKEND == "jax":

    class HomotopyStep(_ProximalStep):
        """`train_step(state, data)`: Keras' JAX step, then the proximal update on its state."""

        def train_step(self, state, data):
            with keras.StatelessScope(state_mapping=_state_mapping(self, state)):
                before = self._before_step()  # γ and the iteration count before the step
            with self._twin_batches(data) as theta_data:
                logs, state = super().train_step(state, theta_data)
            if before is None:
                return logs, state
            trainable, non_trainable, optimizer_variables, metrics_variables = state
            with keras.StatelessScope(state_mapping=_state_mapping(self, state)) as scope:
                self._proximal_step(*before)
                trainable = [scope.get_current_value(v) for v in self.trainable_variables]
            return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

else:

    class HomotopyStep(_ProximalStep):
        """`train_step(data)`: Keras' TensorFlow or PyTorch step, then the proximal update."""

        def train_step(self, data):
            before = self._before_step()  # γ and the iteration count before the step
            with self._twin_batches(data) as theta_data:
                logs = super().train_step(theta_data)
            if before is not None:
                self._proximal_step(*before)
            return logs
