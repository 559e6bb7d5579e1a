"""`HomotopyModel`: a Keras model trained with the Homotopy Training Algorithm."""

import warnings

import numpy as np
import tensorflow as tf

import keras
from keras_hta import anchors as anchors_lib
from keras_hta import distribute_utils
from keras_hta import penalties as penalties_lib
from keras_hta import schedules as schedules_lib
from keras_hta import splits as splits_lib
from keras_hta import twins as twins_lib


@keras.saving.register_keras_serializable(package="keras_hta")
class HomotopyModel(keras.Model):
    """A model trained by the Homotopy Training Algorithm (HTA) in `fit`.

    HTA keeps `num_groups` twin copies of the trainable weights (θ, η, ...)
    and a fixed anchor θ̃. Twin k is free on one group of weights and pulled
    towards the anchor on the others; each step of `fit` minimises

        H = Σ_k f(w_k) + L · Σ_k ‖a_k ⊙ (w_k − θ̃)‖² + (1/L) · Σ_{j<k} ‖w_j − w_k‖²

    f being the compiled loss plus the twin's own regularization losses,
    w_0 = θ the wrapped network, a_k the mask of the groups twin k is
    anchored on. For two twins this is the paper's `f(θ) + L‖θ₁ − θ̃₁‖² +
    f(η) + L‖η₂ − θ̃₂‖² + (1/L)‖θ − η‖²`. Large L decouples the twins; small
    L forces them together and recovers f. Anneal L with
    `keras_hta.HomotopyScheduler`.

    Twins start as exact copies of θ (BatchNorm statistics included) and
    follow θ's `trainable` flags at each `compile`, so freezing and
    unfreezing layers works as in plain Keras. `predict`, `evaluate` and
    `call` use θ; `keras_hta.merge` returns a plain Keras model. Build it
    like a Functional model, `HomotopyModel(inputs, outputs)`, or around a
    built model, `HomotopyModel.from_model(model)`.

    Args:
        inputs, outputs: Input and output tensors of a Functional network.
        network: A built `keras.Model` to wrap instead (what `from_model`
            passes); its weights become θ.
        split: `"channels"` (default, paper §2.1: each weight's output
            channels cut into groups, biases with them), `"layers"` (paper
            §2.2: consecutive layers, balanced by size), `"random"` (a fixed
            mask drawn with `seed`), or a callable `variable -> array` of
            group indices (a boolean mask, True on θ₁, for two groups).
        anchor: `"zeros"` (default, the authors' code), `"init"` (the
            weights at construction), a callable `variable -> array`, or a
            list of arrays.
        num_groups: Integer >= 2 (default 2), the number of twins and
            groups; twin k is free on group `(k + 1) % num_groups`.
        homotopy_l: Float > 0, L before a scheduler changes it (default
            0.01, the start of the paper's schedule).
        norm: `"squared"` (default, the paper's formula) or `"l2"` (plain
            norms, the authors' code; needs `penalty_update="gradient"`).
        penalty_update: `"proximal"` (default): the optimizer steps on
            Σ_k f(w_k) only, then every weight is set to the exact minimiser
            of `½‖w − w′‖² + γ·penalties(w)`, γ the learning rate of that
            step (`keras_hta.penalties.proximal_update`): stable at any
            learning rate and L. It follows the optimizer's steps (none while
            gradients accumulate or a loss-scaled step is skipped); an
            optimizer's `use_ema` average is taken before it. `"gradient"`:
            the penalties' gradient joins f's (the paper's explicit step; SGD
            diverges once `learning_rate · penalty_curvature() >= 2(1 +
            momentum)`, and `compile` warns).
        twin_batch: `"full"` (default: every twin sees the whole batch) or
            `"split"` (twin k sees examples k, k + m, ...; a step costs about
            one plain step).
        twin_factory: Optional callable `() -> keras.Model` building one
            more copy of a subclassed network; by default twins are cloned
            or rebuilt from the network's config.
        seed: Integer or `None`, for `split="random"`.
        name: String, the model's name.

    Raises:
        TypeError: `network` is not a Keras model, or a trainable weight is
            not floating point.
        ValueError: no trainable weights, an unbuilt network, an unknown or
            empty split, a mask or anchor of the wrong shape, a bad
            `num_groups`, `norm`, `penalty_update` or `twin_batch`, or L <= 0,
            NaN or inf.

    Example:

    ```python
    import numpy as np, keras, keras_hta as hta
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(1)(keras.layers.Dense(16, activation="relu")(inputs))
    model = hta.HomotopyModel(inputs, outputs, split="channels", anchor="zeros")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = np.random.rand(64, 8), np.random.rand(64, 1)
    schedule = hta.schedules.Linear(start=0.01, stop=0.005, step=-0.001)
    model.fit(x, y, epochs=2, callbacks=[hta.HomotopyScheduler(schedule)], verbose=0)
    plain = hta.merge(model)
    ```
    """

    def __init__(
        self,
        inputs=None,
        outputs=None,
        *,
        network=None,
        split="channels",
        anchor="zeros",
        num_groups=2,
        homotopy_l=0.01,
        norm="squared",
        penalty_update="proximal",
        twin_batch="full",
        twin_factory=None,
        seed=None,
        name=None,
        **kwargs,
    ):
        network = twins_lib.check_network(network, inputs, outputs)
        penalties_lib.check_options(norm, penalty_update)
        twins_lib.check_options(num_groups, twin_batch)
        homotopy_l = schedules_lib.validate_l(homotopy_l, "homotopy_l")
        twins, paired = twins_lib.make_twins(network, num_groups, twin_factory)
        variables = paired[0]
        groups = splits_lib.assign_groups(network, variables, split, num_groups, seed)
        anchor_values = anchors_lib.resolve_anchor(anchor, variables)

        super().__init__(name=name or f"homotopy_{network.name}", **kwargs)
        self.network = network
        self.twins = twins
        self.num_groups = num_groups
        self.norm = norm
        self.penalty_update = penalty_update
        self.twin_batch = twin_batch
        self.split = split if isinstance(split, str) else "custom"
        self.anchor = anchor if isinstance(anchor, str) else "custom"
        self.seed = seed
        self._initial_l = homotopy_l
        self._paired = paired  # per net, aligned with θ's eligible weights
        self._shapes = [tuple(v.shape) for v in variables]

        # L and the schedule position (what callbacks assign to), anchors unless
        # θ̃ = 0, and random or custom groups are weights; channel and layer
        # groups are derived from the network (a vector per weight, an integer).
        self.homotopy_l = self._state(np.float32(homotopy_l), "homotopy_l")
        self.homotopy_epoch = self._state(np.int64(0), "homotopy_epoch")
        self._anchor_weights = None if anchor_values is None else [
            self._state(value, f"anchor_{i}") for i, value in enumerate(anchor_values)
        ]
        if self.split in ("channels", "layers"):
            self._groups = [tf.constant(g, "int32") for g in groups]
        else:  # int32: collectives take no int8
            self._groups = [self._state(g.astype("int32"), f"groups_{i}") for i, g in enumerate(groups)]
        names = ["theta"] + [twins_lib.twin_suffix(k, num_groups) for k in range(1, num_groups)]
        self.twin_loss_trackers = [keras.metrics.Mean(name=f"f_{n}") for n in names]
        self.anchor_tracker = keras.metrics.Mean(name="anchor_penalty")
        self.coupling_tracker = keras.metrics.Mean(name="coupling")
        self.l_tracker = keras.metrics.Mean(name="homotopy_l")
        self._homotopy_metric_names = {m.name for m in self.twin_loss_trackers} | {
            "anchor_penalty", "coupling", "homotopy_l"}
        self.built = True  # every weight exists now: save() right after fit() is safe

    @classmethod
    def from_model(cls, model, **kwargs):
        """Wraps a built `keras.Model` (Functional, Sequential or subclassed); its weights become θ.

        `kwargs` are the other arguments of `HomotopyModel`.
        """
        return cls(network=model, **kwargs)

    def _state(self, value, name):
        """A non-trainable weight holding `value`, the same on every replica."""
        value = np.asarray(value)
        weight = self.add_weight(shape=value.shape, initializer="zeros", trainable=False, name=name,
                                 dtype=value.dtype, aggregation="only_first_replica")
        weight.assign(value)
        return weight

    @property
    def output_names(self):
        """θ's output names, which dict losses, metrics and targets are keyed by."""
        return getattr(self.network, "output_names", None)

    @property
    def nets(self):
        """The twins as a list of Keras models: `[θ, η, ...]`."""
        return [self.network] + list(self.twins)

    def _active(self):
        """Indices of the paired weights that are trainable now (θ's flags)."""
        return [i for i, v in enumerate(self._paired[0]) if v.trainable]

    @property
    def anchors(self):
        """The anchor θ̃ of each trainable weight, as tensors (zeros for `anchor="zeros"`)."""
        if self._anchor_weights is None:
            return [tf.zeros(self._shapes[i], self._paired[0][i].dtype) for i in self._active()]
        return [tf.convert_to_tensor(self._anchor_weights[i]) for i in self._active()]

    @property
    def anchor_masks(self):
        """Full-size 0/1 masks per twin and trainable weight, 1 where the twin is anchored.

        Computed on demand (the model stores only the groups).
        """
        active = self._active()
        masks = splits_lib.anchor_masks([self._groups[i] for i in active], self.num_groups)
        return [[tf.broadcast_to(a, self._shapes[i]) for a, i in zip(ms, active)] for ms in masks]

    def group_sizes(self):
        """Number of trainable weight elements in each group (twin g − 1 is free on group g)."""
        active = self._active()
        groups = [np.asarray(self._groups[i]) for i in active]
        return splits_lib.group_sizes(groups, [self._shapes[i] for i in active], self.num_groups)

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def penalties(self):
        """Returns `(anchor, coupling)`: Σ_k ‖a_k ⊙ (w_k − θ̃)‖² and Σ_{j<k} ‖w_j − w_k‖².

        Over the weights trainable now; unweighted by L (plain norms for
        `norm="l2"`). Subclasses may override it to change the penalty
        terms (with `penalty_update="gradient"`: the proximal step assumes
        these).
        """
        active = self._active()
        masks = splits_lib.anchor_masks([self._groups[i] for i in active], self.num_groups)
        anchors = None if self._anchor_weights is None else [self._anchor_weights[i] for i in active]
        return penalties_lib.homotopy_penalties(
            [[ws[i] for i in active] for ws in self._paired], anchors, masks, self.norm,
        )

    def penalty_curvature(self, homotopy_l=None):
        """Largest eigenvalue of the penalties' Hessian per element at L (None for `norm="l2"`).

        See `keras_hta.penalties.penalty_curvature`; `homotopy_l=None` means the current L.
        """
        L = float(self.homotopy_l.numpy()) if homotopy_l is None else float(homotopy_l)
        return penalties_lib.penalty_curvature(L, self.num_groups) if self.norm == "squared" else None

    def check_stability(self, homotopy_l=None):
        """Warns (RuntimeWarning) and returns False when SGD must diverge on the penalties at this L.

        Only `penalty_update="gradient"` with squared norms can (see
        `keras_hta.penalties.sgd_stability_message`). Called at `compile` and
        by `HomotopyScheduler` for each L it sets.
        """
        if self.penalty_update != "gradient" or self.norm != "squared":
            return True
        L = float(self.homotopy_l.numpy()) if homotopy_l is None else float(homotopy_l)
        message = penalties_lib.sgd_stability_message(getattr(self, "optimizer", None), L, self.num_groups)
        if message:
            warnings.warn(f"HomotopyModel: {message}", RuntimeWarning, stacklevel=3)
        return message is None

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, *args, **kwargs):
        for twin in self.twins:  # trainable flags follow θ, as a recompile expects
            twins_lib.sync_trainable(self.network, twin)
        super().compile(optimizer, loss, loss_weights, *args, **kwargs)
        # The twins' f: the same loss, its own (unreported) trackers; kept out
        # of Keras' tracking, so it is neither a layer nor saved.
        object.__setattr__(self, "_twin_loss", twins_lib.compiled_loss(self.output_names, loss, loss_weights))
        self.check_stability()

    def compile_from_config(self, config):
        # Keras skips a custom compile() when loading; this one is safe to run.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def set_weights(self, weights):
        """Sets every weight except L and the schedule position.

        So EarlyStopping(`restore_best_weights=True`) restores the networks
        and leaves L where training brought it; `load_weights` and
        `BackupAndRestore` restore L and the position with the rest.
        """
        kept = [(v, v.numpy()) for v in (self.homotopy_l, self.homotopy_epoch)]  # training state, not network weights
        super().set_weights(weights)
        for v, value in kept:
            v.assign(value)

    @property
    def losses(self):
        """θ's own losses (regularizers, `add_loss`): those in f(θ), `fit`'s and `evaluate`'s loss."""
        return self.network.losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Keras calls this once before the first step, across replicas, to
        # build its compiled loss: the twins' compiled loss is built there too.
        twin_loss = getattr(self, "_twin_loss", None)
        if twin_loss is not None and not getattr(twin_loss, "ready", False):
            twin_loss.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)
            twin_loss.ready = True
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def _f(self, k, x, y, y_pred, sample_weight):
        """f of twin k: the compiled loss plus that twin's own losses, as Keras' `compute_loss` gives θ's.

        Like every replica's loss, the twin's losses are divided by the number of replicas.
        """
        if k == 0:
            return self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        twin_loss = getattr(self, "_twin_loss", None)
        losses = [] if twin_loss is None else [twin_loss.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)]
        for extra in self.nets[k].losses:  # regularizers and add_loss
            extra = extra if tf.as_dtype(extra.dtype).is_floating else tf.cast(extra, keras.config.floatx())
            losses.append(tf.reduce_sum(extra) / distribute_utils.replicas())
        if not losses:
            raise ValueError("No loss to compute. Provide a `loss` argument in `compile()`.")
        return tf.add_n(losses) if len(losses) > 1 else losses[0]

    def _proximal_step(self, gamma, active, updated=None):
        """Applies the penalties exactly after the optimizer's step (see `penalties.proximal_update`).

        `updated`: a boolean tensor, False where the optimizer left the
        weights alone (accumulating gradients, or a skipped loss-scaled step).
        """
        updates = []
        for i in active:
            values = [ws[i] for ws in self._paired]
            dtype = values[0].dtype
            free = [e for (e,) in splits_lib.free_masks([self._groups[i]], self.num_groups, dtype)]
            anchor = None if self._anchor_weights is None else tf.cast(self._anchor_weights[i], dtype)
            new = penalties_lib.proximal_update(
                [tf.convert_to_tensor(v) for v in values], free,
                tf.cast(gamma, dtype), tf.cast(self.homotopy_l, dtype), anchor,
            )
            if updated is not None:
                new = [tf.where(updated, n, v) for n, v in zip(new, values)]
            updates += zip(values, new)
        distribute_utils.assign_all(updates)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        parts = twins_lib.split_batch((x, y, sample_weight), self.num_groups, self.twin_batch)
        proximal = self.penalty_update == "proximal"
        l_value = tf.cast(self.homotopy_l, "float32")
        replicas = distribute_utils.replicas()
        with tf.GradientTape() as tape:
            twin_losses, predictions = [], []
            for k, (net, (x_k, y_k, sw_k)) in enumerate(zip(self.nets, parts)):
                y_pred = net(x_k, training=True)
                twin_losses.append(self._f(k, x_k, y_k, y_pred, sw_k))
                predictions.append(y_pred)
            f_total = tf.add_n(twin_losses)
            objective = f_total
            if not proximal:  # the explicit step: the penalties' gradient joins f's
                anchor, coupling = self.penalties()
                penalty = l_value * anchor + coupling / l_value
                # Keras scales f by 1/replicas and sums gradients over replicas:
                # the penalty, identical on every replica, must be scaled alike.
                objective = f_total + tf.cast(penalty, f_total.dtype) / replicas
            scaled = self.optimizer.scale_loss(objective) if self.optimizer else objective
        gradients = tape.gradient(scaled, variables)
        if proximal:  # H's penalties at the weights f was evaluated at, for the logs
            anchor, coupling = self.penalties()
            penalty = l_value * anchor + coupling / l_value
            gamma = tf.identity(tf.cast(self.optimizer.learning_rate, "float32"))  # before the step
            # The optimizer's `iterations` advance only on a step that moves the weights.
            may_skip = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer) or bool(
                getattr(self.optimizer, "gradient_accumulation_steps", None))
            iterations = tf.identity(self.optimizer.iterations) if may_skip else None
        self.optimizer.apply(gradients, variables)
        if proximal:
            updated = None if iterations is None else self.optimizer.iterations > iterations
            self._proximal_step(gamma, self._active(), updated)

        x, y, sample_weight = parts[0]  # θ's examples: its metrics and loss weights
        batch = twins_lib.batch_size(x)
        loss_metric = next(m for m in self.metrics if m.name == "loss")
        loss_metric.update_state(tf.cast(f_total, "float32") * replicas + tf.cast(penalty, "float32"),
                                 sample_weight=batch)
        for tracker, value in zip(self.twin_loss_trackers, twin_losses):
            tracker.update_state(tf.cast(value, "float32") * replicas, sample_weight=batch)
        self.anchor_tracker.update_state(l_value * anchor)
        self.coupling_tracker.update_state(coupling)
        self.l_tracker.update_state(l_value)
        return self.compute_metrics(x, y, predictions[0], sample_weight=sample_weight)

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if k not in self._homotopy_metric_names}

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network), split=self.split, anchor=self.anchor,
            num_groups=self.num_groups, homotopy_l=self._initial_l, norm=self.norm,
            penalty_update=self.penalty_update, twin_batch=self.twin_batch, seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)  # a callable split or anchor comes back as "custom", filled by the weights
        network = keras.saving.deserialize_keras_object(config.pop("network"), custom_objects=custom_objects)
        return cls(network=network, **config)
