"""HTA's training step, top to bottom: what one batch goes through in `fit`.

`HomotopyModel` trains with Keras' own `train_step`, each backend's trainer:
the forward pass, the gradient, the optimizer, loss scaling, distribution and
metrics. `TrainStep` puts HTA around it, in this order:

1. `_step_start`: γ, the learning rate of the coming step, and, where the
   optimizer may not move the weights (gradient accumulation, a loss-scaled
   step that overflowed), its iteration count; read before the step.
2. `_theta_batch`: the data Keras' step gets. With `twin_batch="split"` twin k
   trains on examples k, k + m, k + 2m, ...: θ's part goes where Keras reads
   the inputs, and the other twins' parts ride inside those inputs, a dict
   under the keys `THETA` and `TWINS` (`call` runs the network on θ's part,
   `theta_inputs`). They travel there because Keras' trainers call
   `compute_loss(x, y, y_pred, sample_weight)` and pass it nothing else from
   the step: the inputs are the one value that goes unchanged from the step's
   start to `compute_loss`, read on the way by `call` alone (the metrics take
   `y` and `y_pred`, the loss tracker the inputs' first tensor, θ's).
3. Keras' step, which differentiates `compute_loss`: Σ_k f(w_k), θ's f as Keras
   computes it and twin k's f the network run on twin k's variables
   (`_twin_f`), plus L·anchor + coupling/L, whose gradient joins f's only with
   `penalty_update="gradient"` (with `"proximal"`, the default, their value goes
   to the logs alone); the trackers of the logs.
4. `proximal_step`: the penalties applied exactly after the optimizer's step.

`test_step` is Keras' with HTA's training logs left out. What differs per
backend (JAX's explicit state, assignment under `tf.distribute`, PyTorch's
autograd, elementwise arithmetic over many weights) is `keras_hta.backend`'s:
this module calls it with values and callables.

The step reads the model's `twin_state`, `num_groups`, `twin_batch`,
`penalty_update`, `homotopy_l`, `optimizer` and `_twin_loss` (the compiled
loss of the twins' f, made at `compile`), and owns the trackers it makes in
`_make_trackers`.
"""

import keras
from keras import ops
from keras_hta import backend
from keras_hta import losses as losses_lib
from keras_hta import penalties as penalties_lib
from keras_hta.twin_variables import twin_name

THETA, TWINS = "keras_hta_theta", "keras_hta_twins"  # the inputs' keys in a split batch (see 2. above)


class TrainStep:
    """HTA's step around Keras' `train_step`, mixed into `HomotopyModel` before `keras.Model`."""

    def _make_trackers(self):
        """The trackers of HTA's logs: each twin's f, the weighted anchor penalty, the coupling and L."""
        self.twin_loss_trackers = [keras.metrics.Mean(name=f"f_{twin_name(k, self.num_groups)}")
                                   for k in range(self.num_groups)]
        self.anchor_tracker = keras.metrics.Mean(name="anchor_penalty")
        self.coupling_tracker = keras.metrics.Mean(name="coupling")
        self.l_tracker = keras.metrics.Mean(name="homotopy_l")
        self._homotopy_metric_names = {m.name for m in self.twin_loss_trackers} | {
            "anchor_penalty", "coupling", "homotopy_l"}

    def train_step(self, *args):
        """Keras' `train_step` with HTA's steps 1-4 around it: `(data)` on TensorFlow and PyTorch, `(state, data)` on JAX."""
        state, data = backend.step_arguments(args)
        start = backend.at_state(self, state, self._step_start)
        result = super().train_step(*backend.keras_step_arguments(state, self._theta_batch(data)))
        if start is None:
            return result
        return backend.update_state(self, result, lambda: self.proximal_step(*start))

    def test_step(self, *args):
        """Keras' `test_step`; its logs without HTA's training trackers."""
        return backend.map_logs(super().test_step(*args), self._without_training_logs)

    # 1. before Keras' step ----------------------------------------------------------------------------------

    def _step_start(self):
        """γ (the learning rate of the coming step) and, where a step may not move the weights, the iteration count.

        `None` for `penalty_update="gradient"`, which has no proximal step.
        """
        if self.penalty_update != "proximal":
            return None
        gamma = ops.copy(ops.cast(self.optimizer.learning_rate, "float32"))
        # The optimizer's `iterations` advance only on a step that moves the weights.
        may_skip = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer) or bool(
            getattr(self.optimizer, "gradient_accumulation_steps", None))
        iterations = ops.copy(ops.convert_to_tensor(self.optimizer.iterations)) if may_skip else None
        return gamma, iterations

    # 2. the batch -------------------------------------------------------------------------------------------

    def _theta_batch(self, data):
        """The data of Keras' step: `data`; with `twin_batch="split"`, θ's part, the other twins' inside its inputs."""
        if self.twin_batch != "split":
            return data
        parts = split_batch(keras.utils.unpack_x_y_sample_weight(data), self.num_groups)
        x, y, sample_weight = parts[0]
        return keras.utils.pack_x_y_sample_weight({THETA: x, TWINS: parts[1:]}, y, sample_weight)

    # 3. the loss Keras' step differentiates -------------------------------------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """H's value in training: Σ_k f(w_k) plus the penalties; f(θ) otherwise.

        With `penalty_update="proximal"` the penalties join the value only
        (their gradient is not taken: the proximal step applies them after
        the optimizer's); with `"gradient"` their gradient joins f's. Keras
        divides each replica's loss by the number of replicas and sums the
        gradients; the penalties, the same on every replica, are divided
        alike.
        """
        x, twin_parts = _theta_and_twins(x)
        twin_loss = getattr(self, "_twin_loss", None)
        if twin_loss is not None and not getattr(twin_loss, "ready", False):
            # Keras calls this once before the first step, across replicas, to
            # build its compiled loss: the twins' compiled loss is built there too.
            twin_loss.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)
            twin_loss.ready = True
        f_theta = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not training:
            return f_theta
        twin_parts = twin_parts or [(x, y, sample_weight)] * (self.num_groups - 1)
        twin_losses = [f_theta] + [self._twin_f(k, *twin_parts[k - 1]) for k in range(1, self.num_groups)]
        f_total = penalties_lib.add_n(twin_losses)
        l_value = ops.cast(self.homotopy_l, "float32")
        if self.penalty_update == "proximal":  # H's penalties at the step's start weights, for the logs only
            with backend.no_grad():
                anchor, coupling = self.penalties()
            penalty = ops.stop_gradient(l_value * anchor + coupling / l_value)
        else:
            anchor, coupling = self.penalties()
            penalty = l_value * anchor + coupling / l_value
        replicas = backend.replicas()
        batch = batch_size(x)
        for tracker, value in zip(self.twin_loss_trackers, twin_losses):
            tracker.update_state(ops.cast(value, "float32") * replicas, sample_weight=batch)
        self.anchor_tracker.update_state(l_value * anchor)
        self.coupling_tracker.update_state(coupling)
        self.l_tracker.update_state(l_value)
        return f_total + ops.cast(penalty, f_total.dtype) / replicas

    def _twin_f(self, k, x, y, sample_weight):
        """f of twin k ≥ 1: the compiled loss plus that twin's own losses, as Keras' `compute_loss` gives θ's.

        Like every replica's loss, the twin's losses are divided by the number of replicas.
        """
        y_pred, extras = self.twin_state.forward(k, x, training=True)
        return losses_lib.twin_f(getattr(self, "_twin_loss", None), y, y_pred, sample_weight, extras,
                                 backend.replicas())

    # 4. after Keras' step -------------------------------------------------------------------------------------

    def proximal_step(self, gamma, iterations=None):
        """Applies the penalties exactly, as `fit` does after each optimizer step (`keras_hta.penalties.proximal_update`).

        Every twin's weights become the minimiser of `½‖w − w′‖² + γ·penalties(w)`
        at the current L. A custom training loop calls it after its own
        optimizer step, with that step's learning rate.

        Args:
            gamma: Float or scalar tensor, the learning rate of the step just taken.
            iterations: The optimizer's iteration count before the step, or
                None; where it has not advanced since (gradients being
                accumulated, a skipped loss-scaled step) the weights are left
                alone.
        """
        updated = None if iterations is None else ops.greater(ops.convert_to_tensor(self.optimizer.iterations), iterations)
        state = self.twin_state
        positions = state.active()
        per_twin = state.per_twin_variables(positions)
        anchors = state.anchors(positions)
        by_dtype = {}  # the weights of each compute dtype, stepped together (one coefficient set per dtype)
        for i, variable in enumerate(per_twin[0]):
            dtype = penalties_lib.compute_dtype(variable.dtype)
            by_dtype.setdefault(dtype, []).append(i)
        updates = []
        with backend.no_grad():
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
        backend.assign_all(updates)

    def _without_training_logs(self, logs):
        """`evaluate`'s logs without HTA's training trackers (f of each twin, the penalties, L)."""
        return {k: v for k, v in logs.items() if k not in self._homotopy_metric_names}


def theta_inputs(inputs):
    """θ's inputs: `inputs`, or θ's part of a split batch's (see 2. in the module's docstring)."""
    return _theta_and_twins(inputs)[0]


def _theta_and_twins(x):
    """θ's inputs and the other twins' `(x, y, sample_weight)` of a split batch (None: every twin has the batch)."""
    if isinstance(x, dict) and TWINS in x:
        return x[THETA], list(x[TWINS])
    return x, None


def batch_size(data):
    """The number of examples in a batch: the first dimension of its first tensor."""
    return keras.ops.shape(next(t for t in keras.tree.flatten(data) if t is not None))[0]


def split_batch(data, m):
    """What each of m twins trains on: examples k, k + m, k + 2m, ... of `data` for twin k.

    A batch of fewer than m examples goes whole to every twin, so none is empty.
    """
    size = batch_size(data)
    enough = size >= m
    if isinstance(size, int):  # known when traced (JAX, PyTorch, static TF shapes)
        take = lambda t, k: None if t is None else (t[k::m] if enough else t)  # noqa: E731
    else:
        take = lambda t, k: None if t is None else keras.ops.cond(enough, lambda: t[k::m], lambda: t)  # noqa: E731
    return [keras.tree.map_structure(lambda t: take(t, k), data) for k in range(m)]
