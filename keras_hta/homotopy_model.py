"""`HomotopyModel`: a Keras model trained with the Homotopy Training Algorithm."""

import contextlib
import warnings

import numpy as np
import tensorflow as tf

import keras
from keras.src.losses import loss as loss_module

from keras_hta import anchors as anchors_lib
from keras_hta import penalties as penalties_lib
from keras_hta import schedules as schedules_lib
from keras_hta import splits as splits_lib


TWIN_BATCHES = ("full", "split")


def _twin_suffix(k, num_groups):
    return "eta" if num_groups == 2 else f"eta{k}"


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
            norms, as the authors' published code does).
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
            `num_groups < 2`, a bad `norm`, or L <= 0, NaN or inf.

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
        twin_batch="full",
        seed=None,
        name=None,
        _restoring=False,
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
        self._check_arguments(network, num_groups, norm)
        if twin_batch not in TWIN_BATCHES:
            raise ValueError(
                f"Argument `twin_batch` must be one of {TWIN_BATCHES}. Received: twin_batch={twin_batch!r}"
            )
        homotopy_l = schedules_lib.validate_l(homotopy_l, "homotopy_l")
        variables = network.trainable_variables
        if _restoring:  # masks and anchors come back with the weights
            groups = [
                splits_lib._split_channels(tuple(v.shape), num_groups)
                for v in variables
            ]
            anchor_values = anchors_lib.resolve_anchor("zeros", variables)
        else:
            groups = splits_lib.assign_groups(network, variables, split, num_groups, seed)
            anchor_values = anchors_lib.resolve_anchor(anchor, variables)

        super().__init__(name=name or f"homotopy_{network.name}", **kwargs)
        self.network = network
        self.twins = [
            _clone_twin(network, _twin_suffix(k, num_groups))
            for k in range(1, num_groups)
        ]
        self.num_groups = num_groups
        self.norm = norm
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
        self.anchors = [
            self._constant_weight(value, f"anchor_{i}")
            for i, value in enumerate(anchor_values)
        ]
        self.anchor_masks = [
            [self._constant_weight(m, f"anchor_mask_{k}_{i}") for i, m in enumerate(ms)]
            for k, ms in enumerate(splits_lib.anchor_masks(groups, num_groups))
        ]
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
    def _check_arguments(network, num_groups, norm):
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

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def penalties(self):
        """Returns `(anchor, coupling)`: Σ_k ‖a_k ⊙ (w_k − θ̃)‖² and Σ_{j<k} ‖w_j − w_k‖².

        Unweighted by L (plain norms for `norm="l2"`). Subclasses may
        override it to change the penalty terms.
        """
        return penalties_lib.homotopy_penalties(
            [net.trainable_variables for net in self.nets],
            self.anchors, self.anchor_masks, self.norm,
        )

    def penalty_curvature(self, homotopy_l=None):
        """Largest eigenvalue of the penalty terms' Hessian (`norm="squared"`).

        Per weight element the penalties are a quadratic in the m twins' values
        with Hessian `2L·diag(a) + (2/L)·(m·I − 11ᵀ)`, `a` marking the m − 1
        anchored twins. Plain SGD with momentum β diverges on it once
        `learning_rate · curvature >= 2(1 + β)` (2(1 + β)/(1 + 2β) with
        Nesterov), whatever f does: for two twins the curvature is about
        4/L for small L, so the paper's L = 0.01 needs a learning rate
        below about 0.0095 with momentum 0.9.

        Args:
            homotopy_l: Float or `None` (the current L).

        Returns:
            A float, or `None` for `norm="l2"` (not quadratic).
        """
        if self.norm != "squared":
            return None
        L = float(self.homotopy_l.numpy()) if homotopy_l is None else float(homotopy_l)
        m = self.num_groups
        a = np.ones(m)
        a[0] = 0.0
        hessian = 2 * L * np.diag(a) + (2 / L) * (m * np.eye(m) - np.ones((m, m)))
        return float(np.linalg.eigvalsh(hessian)[-1])

    def check_stability(self, homotopy_l=None):
        """Warns when SGD must diverge on the penalty terms at this L.

        Checks `keras.optimizers.SGD` only (adaptive optimizers rescale the
        step); see `penalty_curvature`. Returns True when no problem is seen.
        """
        optimizer = getattr(self, "optimizer", None)
        curvature = self.penalty_curvature(homotopy_l)
        if curvature is None or not isinstance(optimizer, keras.optimizers.SGD):
            return True
        lr = float(np.asarray(optimizer.learning_rate))
        beta = float(optimizer.momentum)
        limit = 2 * (1 + beta) / (1 + 2 * beta) if optimizer.nesterov else 2 * (1 + beta)
        if lr * curvature < limit:
            return True
        L = float(self.homotopy_l.numpy()) if homotopy_l is None else float(homotopy_l)
        warnings.warn(
            f"HomotopyModel: with SGD(learning_rate={lr:g}, momentum={beta:g}) "
            f"L={L:g} makes the penalty terms diverge: learning_rate x "
            f"curvature = {lr * curvature:.3g} >= {limit:.3g}. Use a larger "
            "L, a smaller learning rate, or norm='l2'.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False

    def fit(self, *args, **kwargs):
        from keras_hta.homotopy_scheduler import HomotopyScheduler

        callbacks = kwargs.get("callbacks") or []
        if not any(isinstance(c, HomotopyScheduler) for c in callbacks):
            self.check_stability()  # a scheduler checks each L it sets
        return super().fit(*args, **kwargs)

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

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        m = self.num_groups
        if self.twin_batch == "split":  # twin k: examples k, k + m, ...
            parts = [
                tf.nest.map_structure(lambda t, k=k: None if t is None else t[k::m], (x, y, sample_weight))
                for k in range(m)
            ]
        else:
            parts = [(x, y, sample_weight)] * m
        with tf.GradientTape() as tape:
            twin_losses, predictions = [], []
            for net, (x_k, y_k, sw_k) in zip(self.nets, parts):
                y_pred = net(x_k, training=True)
                twin_losses.append(self._twin_loss(net, y_k, y_pred, sw_k))
                predictions.append(y_pred)
            anchor, coupling = self.penalties()
            l_value = tf.cast(self.homotopy_l, "float32")
            anchor_term = l_value * anchor
            penalty = anchor_term + coupling / l_value
            # Keras scales f by 1/replicas and sums gradients over replicas:
            # the penalty, identical on every replica, must be scaled alike.
            total = tf.add_n(twin_losses) + loss_module.scale_loss_for_distribution(
                tf.cast(penalty, twin_losses[0].dtype)
            )
            scaled = self.optimizer.scale_loss(total) if self.optimizer else total
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)

        x, y, sample_weight = parts[0]  # θ's examples: its metrics and loss weights
        batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        unscale = loss_module.unscale_loss_for_distribution
        self._loss_tracker.update_state(unscale(total), sample_weight=batch)
        for tracker, value in zip(self.twin_loss_trackers, twin_losses):
            tracker.update_state(unscale(value), sample_weight=batch)
        self.anchor_tracker.update_state(anchor_term)
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
        # Groups and anchors come back with the weights, so a callable split
        # or anchor (saved as "custom") need not be rebuilt.
        return cls(network=network, _restoring=True, **config)
