"""`HomotopyModel`: a Keras model trained with the Homotopy Training Algorithm."""

import contextlib
import warnings

import numpy as np
import tensorflow as tf

import keras
from keras_hta import anchors as anchors_lib
from keras_hta import penalties as penalties_lib
from keras_hta import schedules as schedules_lib
from keras_hta import splits as splits_lib


TWIN_BATCHES = ("full", "split")


def _twin_suffix(k, num_groups):
    return "eta" if num_groups == 2 else f"eta{k}"


def _replicas():
    """Replicas the current step runs on (Keras divides each one's loss by it)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _assign_all(updates):
    """Assigns `(variable, value)` pairs, in the cross-replica context under a strategy.

    Every replica computed the same values from the same mirrored weights;
    as Keras' optimizers do, the assignment happens once per device through
    `strategy.extended.update`.
    """

    def assign(strategy, updates):
        for variable, value in updates:
            variable = getattr(variable, "value", variable)  # the tf.Variable
            strategy.extended.update(variable, lambda v, x: v.assign(x), args=(value,), group=False)

    context = tf.distribute.get_replica_context()
    if context is None:
        assign(tf.distribute.get_strategy(), updates)
    else:
        context.merge_call(assign, args=(updates,))


@contextlib.contextmanager
def _silenced(trackers):
    """Keeps Keras' per-output loss trackers from recording a twin's loss."""
    for tracker in trackers:
        tracker.update_state = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for tracker in trackers:
            del tracker.update_state


def _clone_twin(network, suffix):
    """A structural copy of `network` with its own weights and layer names."""

    def clone_layer(layer):
        config = dict(layer.get_config())
        config["name"] = f"{layer.name}_{suffix}"
        return layer.__class__.from_config(config)

    try:
        twin = keras.models.clone_model(network, clone_function=clone_layer)
    except ValueError:  # subclassed networks: cloned from their config
        twin = network.__class__.from_config(network.get_config())
    if not twin.built:
        raise ValueError(
            "Could not build a twin of the network "
            f"'{network.name}': use a Functional or Sequential model, or a "
            "subclassed model whose `from_config` builds its weights."
        )
    twin.name = f"{network.name}_{suffix}"
    shapes = [tuple(v.shape) for v in network.trainable_variables]
    if [tuple(v.shape) for v in twin.trainable_variables] != shapes:
        raise ValueError(
            f"The twin of network '{network.name}' does not list its trainable weights in the "
            "network's order; HTA pairs them by position. Use a Functional or Sequential model."
        )
    twin.set_weights(network.get_weights())
    return twin


@keras.saving.register_keras_serializable(package="keras_hta")
class HomotopyModel(keras.Model):
    """A model trained by the Homotopy Training Algorithm (HTA) in `fit`.

    HTA keeps `num_groups` twin copies of all trainable weights (θ, η, ...)
    and a fixed anchor θ̃. Each twin is free on one group of weights and
    pulled towards the anchor on the others; every step of `fit` minimises

        H = Σ_k f(w_k) + L · Σ_k ‖a_k ⊙ (w_k − θ̃)‖² + (1/L) · Σ_{j<k} ‖w_j − w_k‖²

    where f is the compiled loss (with sample weights and the twin's own
    regularization losses), w_0 = θ is the wrapped network, and a_k is 1 on
    the groups twin k is anchored on. For two twins this is the paper's
    `f(θ) + L‖θ₁ − θ̃₁‖² + f(η) + L‖η₂ − θ̃₂‖² + (1/L)‖θ − η‖²`. Large L
    decouples the twins into low-dimensional problems; small L forces them
    together and recovers f. Anneal L with `keras_hta.HomotopyScheduler`.

    At construction every twin is an exact copy of θ (BatchNorm statistics
    included), so with `anchor="init"` the first step is a plain step on f.
    `predict`, `evaluate` and `call` use θ; `keras_hta.merge` returns a plain
    Keras model.

    Build it like a Functional model, `HomotopyModel(inputs, outputs)`, or
    around an existing built model, `HomotopyModel.from_model(model)`.

    Args:
        inputs: Input tensor(s) of a Functional network, as for `keras.Model`.
        outputs: Output tensor(s) of that network.
        network: A built `keras.Model` to wrap instead of `inputs`/`outputs`
            (what `from_model` passes). Its weights become θ.
        split: String or callable. `"channels"` (default, paper §2.1: each
            weight's output channels/units cut into groups, biases with
            them), `"layers"` (paper §2.2: the first half of the layers vs
            the second half), `"random"` (a fixed dropout-style mask drawn
            with `seed`), or a callable `variable -> array` of group indices
            (a boolean mask, True on θ₁, for two groups).
        anchor: `"zeros"` (default, the paper's dropout reading and the
            authors' code), `"init"` (the weights at construction), a
            callable `variable -> array`, or a list of arrays.
        num_groups: Integer >= 2, the number of twins and groups (default
            2, the paper). Twin k is free on group `(k + 1) % num_groups`.
        homotopy_l: Float > 0, L before any scheduler changes it (default
            0.01, the start of the paper's schedule).
        norm: `"squared"` (default, the paper's formula) or `"l2"` (plain
            norms, as the authors' published code does; needs
            `penalty_update="gradient"`).
        penalty_update: `"proximal"` (default) or `"gradient"`. Proximal:
            the compiled optimizer steps on Σ_k f(w_k) only (momentum,
            clipping, weight decay, loss scaling as usual), then every
            weight element is set to the exact minimiser of
            `½‖w − w′‖² + γ·penalties(w)`, γ the optimizer's learning rate
            at that iteration: stable at any learning rate and any L, as
            Keras applies `weight_decay`. Gradient: the penalties' gradient
            is added to f's (the paper's explicit step; SGD diverges on it
            once `learning_rate · penalty_curvature() >= 2(1 + momentum)`,
            and the model warns).
        twin_batch: `"full"` (default: every twin sees the whole batch, as
            the paper) or `"split"` (twin k sees examples k, k + m, k + 2m,
            ... of each batch, so a step costs about one plain step).
        seed: Integer or `None`, for `split="random"`.
        name: String, the model's name.

    Raises:
        TypeError: `network` is not a Keras model, or a trainable weight is
            not floating point.
        ValueError: no trainable weights, an unbuilt network, an unknown or
            empty split, a mask or anchor of the wrong shape,
            `num_groups < 2`, a bad `norm` or `penalty_update` (or
            `norm="l2"` with `"proximal"`), or L <= 0, NaN or inf.

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
        seed=None,
        name=None,
        **kwargs,
    ):
        if network is None:
            if inputs is None or outputs is None:
                raise ValueError(
                    "Pass `inputs` and `outputs`, or a built `network`. "
                    f"Received: inputs={inputs!r}, outputs={outputs!r}"
                )
            network = keras.Model(inputs, outputs)
        elif inputs is not None or outputs is not None:
            raise ValueError("Pass either `inputs`/`outputs` or `network`, not both.")
        self._check_arguments(network, num_groups, norm, penalty_update)
        if twin_batch not in TWIN_BATCHES:
            raise ValueError(
                f"Argument `twin_batch` must be one of {TWIN_BATCHES}. Received: twin_batch={twin_batch!r}"
            )
        homotopy_l = schedules_lib.validate_l(homotopy_l, "homotopy_l")
        variables = network.trainable_variables
        # "custom" (what get_config records for a callable split or anchor):
        # placeholders of the right shape, filled when the saved weights load.
        if split == "custom":
            groups = [np.zeros(tuple(v.shape), "int32") for v in variables]
        else:
            groups = splits_lib.assign_groups(network, variables, split, num_groups, seed)
        if anchor == "custom":
            anchor_values = [np.zeros(tuple(v.shape), v.dtype) for v in variables]
        else:
            anchor_values = anchors_lib.resolve_anchor(anchor, variables)

        super().__init__(name=name or f"homotopy_{network.name}", **kwargs)
        self.network = network
        self.twins = [
            _clone_twin(network, _twin_suffix(k, num_groups))
            for k in range(1, num_groups)
        ]
        self.num_groups = num_groups
        self.norm = norm
        self.penalty_update = penalty_update
        self.twin_batch = twin_batch
        self.split = split if isinstance(split, str) else "custom"
        self.anchor = anchor if isinstance(anchor, str) else "custom"
        self.seed = seed
        self._initial_l = homotopy_l

        self.homotopy_l = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(homotopy_l),
            trainable=False, name="homotopy_l", dtype="float32",
            aggregation="only_first_replica",
        )
        self.homotopy_epoch = self.add_weight(
            shape=(), initializer="zeros", trainable=False,
            name="homotopy_epoch", dtype="int64", aggregation="only_first_replica",
        )
        # θ̃ = 0 is not stored; other anchors are one copy of the weights.
        self._anchor_weights = None if anchor_values is None else [
            self._constant_weight(value, f"anchor_{i}") for i, value in enumerate(anchor_values)
        ]
        # Channel and layer splits are derived from the network (a vector per
        # weight or one integer); random and custom ones are stored (int32: collectives take no int8).
        if self.split in ("channels", "layers"):
            self._groups = [tf.constant(g, "int32") for g in groups]
        else:
            self._groups = [
                self._constant_weight(g.astype("int32"), f"groups_{i}") for i, g in enumerate(groups)
            ]
        self._shapes = [tuple(v.shape) for v in variables]
        names = ["theta"] + [_twin_suffix(k, num_groups) for k in range(1, num_groups)]
        self.twin_loss_trackers = [keras.metrics.Mean(name=f"f_{n}") for n in names]
        self.anchor_tracker = keras.metrics.Mean(name="anchor_penalty")
        self.coupling_tracker = keras.metrics.Mean(name="coupling")
        self.l_tracker = keras.metrics.Mean(name="homotopy_l")
        self._homotopy_metric_names = {m.name for m in self._homotopy_trackers}
        self.built = True  # every weight exists now: save() right after fit() is safe

    @classmethod
    def from_model(cls, model, **kwargs):
        """Wraps a built Keras model; its weights become θ.

        Args:
            model: A built `keras.Model` (Functional or Sequential).
            **kwargs: The other arguments of `HomotopyModel`.
        """
        return cls(network=model, **kwargs)

    @staticmethod
    def _check_arguments(network, num_groups, norm, penalty_update):
        if not isinstance(network, keras.Model):
            raise TypeError(
                "Argument `model` must be a keras.Model. "
                f"Received: model={network!r} of type {type(network).__name__}"
            )
        if not network.built:
            raise ValueError(
                f"Argument `model` must be built. Received: model '{network.name}' "
                "with no weights yet: call it on data or give it an Input first."
            )
        if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 2:
            raise ValueError(
                f"Argument `num_groups` must be an integer >= 2. Received: num_groups={num_groups!r}"
            )
        if norm not in penalties_lib.NORMS:
            raise ValueError(
                f"Argument `norm` must be one of {penalties_lib.NORMS}. Received: norm={norm!r}"
            )
        if penalty_update not in penalties_lib.PENALTY_UPDATES:
            raise ValueError(
                f"Argument `penalty_update` must be one of {penalties_lib.PENALTY_UPDATES}. "
                f"Received: penalty_update={penalty_update!r}"
            )
        if norm == "l2" and penalty_update == "proximal":
            raise ValueError(
                "Argument `penalty_update`='proximal' needs norm='squared' (the proximal step "
                "is exact for the squared norms only). Received: norm='l2', "
                "penalty_update='proximal'. Pass penalty_update='gradient' for the l2 form."
            )
        if not network.trainable_variables:
            raise ValueError(
                f"Argument `model` must have trainable weights. Received: model "
                f"'{network.name}' with none: HTA has nothing to split."
            )
        for v in network.trainable_variables:
            if not np.issubdtype(np.dtype(v.dtype), np.floating):
                raise TypeError(
                    "Every trainable weight must be floating point. Received: "
                    f"'{v.path}' of dtype {v.dtype}"
                )

    def _constant_weight(self, value, name):
        w = self.add_weight(
            shape=value.shape, initializer="zeros", trainable=False, name=name,
            dtype=value.dtype, aggregation="only_first_replica",
        )
        w.assign(value)
        return w

    @property
    def _homotopy_trackers(self):
        return self.twin_loss_trackers + [self.anchor_tracker, self.coupling_tracker, self.l_tracker]

    @property
    def nets(self):
        """The twins as a list of Keras models: `[θ, η, ...]`."""
        return [self.network] + list(self.twins)

    @property
    def anchors(self):
        """The anchor θ̃ of each trainable weight, as tensors (zeros for `anchor="zeros"`)."""
        if self._anchor_weights is None:
            return [tf.zeros(shape, v.dtype) for shape, v in zip(self._shapes, self.network.trainable_variables)]
        return [tf.convert_to_tensor(a) for a in self._anchor_weights]

    def _free_masks(self, k, dtype="float32"):
        """0/1 tensors, broadcastable to each weight, 1 where twin k is free."""
        free = splits_lib.free_group(k, self.num_groups)
        return [tf.cast(tf.equal(tf.cast(g, "int32"), free), dtype) for g in self._groups]

    @property
    def anchor_masks(self):
        """Full-size 0/1 masks per twin and weight, 1 where the twin is anchored.

        Computed on demand (the model stores only the groups).
        """
        return [
            [tf.broadcast_to(1.0 - e, shape) for e, shape in zip(self._free_masks(k), self._shapes)]
            for k in range(self.num_groups)
        ]

    def group_sizes(self):
        """Number of weight elements in each group (group g: where twin g − 1 is free)."""
        groups = [np.asarray(g) for g in self._groups]
        return splits_lib.group_sizes(groups, self._shapes, self.num_groups)

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def penalties(self):
        """Returns `(anchor, coupling)`: Σ_k ‖a_k ⊙ (w_k − θ̃)‖² and Σ_{j<k} ‖w_j − w_k‖².

        Unweighted by L (plain norms for `norm="l2"`). Subclasses may
        override it to change the penalty terms (with
        `penalty_update="gradient"`: the proximal step assumes these).
        """
        masks = [[1.0 - e for e in self._free_masks(k)] for k in range(self.num_groups)]
        return penalties_lib.homotopy_penalties(
            [net.trainable_variables for net in self.nets],
            self._anchor_weights, masks, self.norm,
        )

    def penalty_curvature(self, homotopy_l=None):
        """Largest eigenvalue of the penalty terms' Hessian (`norm="squared"`).

        See `keras_hta.penalties.penalty_curvature`. What limits an explicit
        gradient step on the penalties (`penalty_update="gradient"`): SGD
        with momentum β diverges once `learning_rate · curvature >=
        2(1 + β)`; for two twins the curvature is about 4/L at small L.

        Args:
            homotopy_l: Float or `None` (the current L).

        Returns:
            A float, or `None` for `norm="l2"` (not quadratic).
        """
        if self.norm != "squared":
            return None
        L = float(self.homotopy_l.numpy()) if homotopy_l is None else float(homotopy_l)
        return penalties_lib.penalty_curvature(L, self.num_groups)

    def check_stability(self, homotopy_l=None):
        """Warns when SGD must diverge on the penalty terms at this L.

        Only an explicit gradient step on the squared penalties
        (`penalty_update="gradient"`) can diverge; the proximal update
        cannot. Checks `keras.optimizers.SGD`, also inside a wrapper such
        as `LossScaleOptimizer` (adaptive optimizers rescale the step).
        Called at `compile` and by `HomotopyScheduler` for each L it sets.

        Returns:
            True when no problem is seen.
        """
        optimizer = getattr(self, "optimizer", None)
        while hasattr(optimizer, "inner_optimizer"):
            optimizer = optimizer.inner_optimizer
        curvature = self.penalty_curvature(homotopy_l)
        if (self.penalty_update != "gradient" or curvature is None
                or not isinstance(optimizer, keras.optimizers.SGD)):
            return True
        lr = float(np.asarray(optimizer.learning_rate))
        limit = penalties_lib.sgd_divergence_limit(optimizer.momentum, optimizer.nesterov)
        if lr * curvature < limit:
            return True
        L = float(self.homotopy_l.numpy()) if homotopy_l is None else float(homotopy_l)
        warnings.warn(
            f"HomotopyModel: with SGD(learning_rate={lr:g}, momentum={optimizer.momentum:g}) "
            f"L={L:g} makes the penalty terms diverge: learning_rate x "
            f"curvature = {lr * curvature:.3g} >= {limit:.3g}. Use "
            "penalty_update='proximal', a larger L or a smaller learning rate.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self.check_stability()

    def compile_from_config(self, config):
        # Keras skips a custom compile() when loading; this one is safe to run.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def _twin_loss(self, net, y, y_pred, sample_weight):
        """f of one twin: the compiled loss plus that twin's own losses.

        Per-output loss metrics (multi-output models) record θ's losses only.
        """
        losses = []
        if self._compile_loss is not None:
            trackers = [] if net is self.network else list(self._compile_loss.metrics)
            with _silenced(trackers):
                value = self._compile_loss(y, y_pred, sample_weight)
            if value is not None:
                losses.append(value)
        losses.extend(self._aggregate_additional_loss(l) for l in net.losses)
        if not losses:
            raise ValueError("No loss to compute. Provide a `loss` argument in `compile()`.")
        return tf.add_n(losses) if len(losses) > 1 else losses[0]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # evaluate(): f(θ) with θ's regularizers only, not every twin's.
        return self._twin_loss(self.network, y, y_pred, sample_weight)

    def _twin_batches(self, x, y, sample_weight):
        """What each twin trains on: the whole batch, or examples k, k + m, ...

        With `twin_batch="split"` a batch of fewer than m examples goes
        whole to every twin, so that no twin gets an empty batch.
        """
        m = self.num_groups
        data = (x, y, sample_weight)
        if self.twin_batch != "split":
            return [data] * m
        enough = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0] >= m

        def part(k):
            def take(t):
                return None if t is None else tf.cond(enough, lambda: t[k::m], lambda: t)

            return tf.nest.map_structure(take, data)

        return [part(k) for k in range(m)]

    def _proximal_step(self, gamma):
        """Applies the penalties exactly after the optimizer's step (see `penalties.proximal_update`)."""
        twin_variables = [net.trainable_variables for net in self.nets]
        l_value = tf.cast(self.homotopy_l, "float32")
        free = [self._free_masks(k) for k in range(self.num_groups)]
        anchors = self._anchor_weights or [None] * len(self._groups)
        updates = []
        for i, anchor in enumerate(anchors):
            values = [ws[i] for ws in twin_variables]
            dtype = values[0].dtype
            new = penalties_lib.proximal_update(
                [tf.convert_to_tensor(v) for v in values], [e[i] for e in free],
                tf.cast(gamma, dtype), tf.cast(l_value, dtype),
                None if anchor is None else tf.cast(anchor, dtype),
            )
            updates += zip(values, new)
        _assign_all(updates)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        parts = self._twin_batches(x, y, sample_weight)
        proximal = self.penalty_update == "proximal"
        l_value = tf.cast(self.homotopy_l, "float32")
        with tf.GradientTape() as tape:
            twin_losses, predictions = [], []
            for net, (x_k, y_k, sw_k) in zip(self.nets, parts):
                y_pred = net(x_k, training=True)
                twin_losses.append(self._twin_loss(net, y_k, y_pred, sw_k))
                predictions.append(y_pred)
            f_total = tf.add_n(twin_losses)
            objective = f_total
            if not proximal:  # the explicit step: the penalties' gradient joins f's
                anchor, coupling = self.penalties()
                penalty = l_value * anchor + coupling / l_value
                # Keras scales f by 1/replicas and sums gradients over replicas:
                # the penalty, identical on every replica, must be scaled alike.
                objective = f_total + tf.cast(penalty, f_total.dtype) / _replicas()
            scaled = self.optimizer.scale_loss(objective) if self.optimizer else objective
        gradients = tape.gradient(scaled, variables)
        if proximal:  # H's penalties at the weights f was evaluated at, for the logs
            anchor, coupling = self.penalties()
            penalty = l_value * anchor + coupling / l_value
            gamma = tf.identity(tf.cast(self.optimizer.learning_rate, "float32"))  # before the step
        self.optimizer.apply(gradients, variables)
        if proximal:
            self._proximal_step(gamma)

        x, y, sample_weight = parts[0]  # θ's examples: its metrics and loss weights
        batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        replicas = tf.cast(_replicas(), "float32")
        self._loss_tracker.update_state(
            tf.cast(f_total, "float32") * replicas + tf.cast(penalty, "float32"), sample_weight=batch
        )
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
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "split": self.split,
                "anchor": self.anchor,
                "num_groups": self.num_groups,
                "homotopy_l": self._initial_l,
                "norm": self.norm,
                "penalty_update": self.penalty_update,
                "twin_batch": self.twin_batch,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        # A callable split or anchor is saved as "custom": its groups or
        # anchors are created shape-only and come back with the weights.
        return cls(network=network, **config)
