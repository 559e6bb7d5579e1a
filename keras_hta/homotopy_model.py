"""`HomotopyModel`: a Keras model trained with the Homotopy Training Algorithm."""

import warnings

import numpy as np

import keras
from keras import ops
from keras_hta import anchors as anchors_lib
from keras_hta import compat
from keras_hta import penalties as penalties_lib
from keras_hta import schedules as schedules_lib
from keras_hta import splits as splits_lib
from keras_hta import step as step_lib
from keras_hta import twins as twins_lib

def _refuse_h5(filepath, where="filepath"):
    path = str(filepath)
    if path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5"):
        raise ValueError(
            f"HomotopyModel saves whole models in the .keras format only (Keras' legacy HDF5 writer cannot hold "
            f"its anchors). Received: {where}={path!r}. Use a '.keras' path, or '.weights.h5' for weights alone."
        )


@keras.saving.register_keras_serializable(package="keras_hta")
class HomotopyModel(step_lib.HomotopyStep, keras.Model):
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
        twins_lib.warn_what_hta_does_not_run(network)
        penalties_lib.check_options(norm, penalty_update)
        twins_lib.check_options(num_groups, twin_batch)
        homotopy_l = schedules_lib.validate_l(homotopy_l, "homotopy_l")
        twins, paired = twins_lib.make_twins(network, num_groups, twin_factory)
        variables = paired[0]
        groups = splits_lib.assign_groups(network, variables, split, num_groups, seed)
        anchor_values = anchors_lib.resolve_anchor(anchor, variables)

        super().__init__(name=name or f"homotopy_{network.name}".replace(".", "_"), **kwargs)  # torch: no "." in names
        self.network = network
        self.twins = twins
        object.__setattr__(self, "twin_factory", twin_factory)  # a callable: not tracked, not saved; merge uses it
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
        self.homotopy_epoch = self._state(0, "homotopy_epoch", dtype="int")  # Keras' counter dtype
        self._anchor_weights = None if anchor_values is None else [
            self._state(value, f"anchor_{i}") for i, value in enumerate(anchor_values)
        ]
        if self.split in ("channels", "layers"):
            self._groups = [np.asarray(g, "int32") for g in groups]
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

    def _state(self, value, name, dtype=None):
        """A non-trainable weight holding `value`, the same on every replica.

        `dtype` defaults to `value`'s; `"int"` is Keras' counter dtype, as for
        the optimizer's iterations (int64 on TensorFlow, int32 elsewhere: JAX
        warns of an int64 it would truncate).
        """
        value = np.asarray(value)
        weight = self.add_weight(shape=value.shape, initializer="zeros", trainable=False, name=name,
                                 dtype=dtype or value.dtype, aggregation="only_first_replica")
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
            return [ops.zeros(self._shapes[i], self._paired[0][i].dtype) for i in self._active()]
        return [ops.convert_to_tensor(self._anchor_weights[i]) for i in self._active()]

    @property
    def anchor_masks(self):
        """Full-size 0/1 masks per twin and trainable weight, 1 where the twin is anchored.

        Computed on demand (the model stores only the groups).
        """
        active = self._active()
        masks = splits_lib.anchor_masks([self._groups[i] for i in active], self.num_groups)
        return [[ops.broadcast_to(a, self._shapes[i]) for a, i in zip(ms, active)] for ms in masks]

    def group_sizes(self):
        """Number of trainable weight elements in each group (twin g − 1 is free on group g)."""
        active = self._active()
        groups = [ops.convert_to_numpy(self._groups[i]) for i in active]
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
        if kwargs.get("jit_compile") is True and keras.backend.backend() == "torch":
            raise ValueError(
                "Argument `jit_compile`=True is not supported on the torch backend: torch.compile cannot trace "
                "the twins' calls inside the step. Received: jit_compile=True with KERAS_BACKEND=torch. Leave "
                "it at its default, or use the jax or tensorflow backend for XLA."
            )
        for twin in self.twins:  # trainable flags follow θ, as a recompile expects
            twins_lib.sync_trainable(self.network, twin)
        super().compile(optimizer, loss, loss_weights, *args, **kwargs)
        # The twins' f: the same loss, its own (unreported) trackers; kept out
        # of Keras' tracking, so it is neither a layer nor saved.
        object.__setattr__(self, "_twin_loss", twins_lib.compiled_loss(self.output_names, loss, loss_weights))
        self.check_stability()

    def compile_from_config(self, config):
        # Keras skips a custom compile() when loading; this one is safe to run.
        config = keras.saving.deserialize_keras_object(compat.portable_compile_config(config))
        if keras.backend.backend() == "torch" and config.get("jit_compile") is True:
            config["jit_compile"] = "auto"  # saved on JAX or TensorFlow, where XLA is the default
        self.compile(**config)
        self.optimizer.build(self.trainable_variables)

    def save(self, filepath, *args, **kwargs):
        """Saves to the `.keras` format (Keras' own `save`); the legacy `.h5` format is refused.

        Keras' HDF5 writer compares weights with `==` and fails on a model
        that owns array-valued weights (the anchors), so a `.h5` path raises
        a ValueError naming `.keras` before anything is written.
        """
        _refuse_h5(filepath)
        return super().save(filepath, *args, **kwargs)

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras' `fit`; a `ModelCheckpoint` to a legacy `.h5` file is refused before training (see `save`)."""
        for callback in callbacks or []:
            if isinstance(callback, keras.callbacks.ModelCheckpoint) and not callback.save_weights_only:
                _refuse_h5(callback.filepath, "ModelCheckpoint(filepath=...)")
        return super().fit(*args, callbacks=callbacks, **kwargs)

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
        return compat.forward_losses(self) or self.network.losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """H's value in training: Σ_k f(w_k) plus the penalties; f(θ) otherwise.

        With `penalty_update="proximal"` the penalties join the value only
        (their gradient is not taken: the proximal step applies them after
        the optimizer's); with `"gradient"` their gradient joins f's. Keras
        divides each replica's loss by the number of replicas and sums the
        gradients; the penalties, the same on every replica, are divided
        alike.
        """
        twin_loss = getattr(self, "_twin_loss", None)
        if twin_loss is not None and not getattr(twin_loss, "ready", False):
            # Keras calls this once before the first step, across replicas, to
            # build its compiled loss: the twins' compiled loss is built there too.
            twin_loss.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)
            twin_loss.ready = True
        f_theta = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not training:
            return f_theta
        parts = step_lib.twin_parts(self) or [(x, y, sample_weight)] * self.num_groups
        replicas = step_lib.replicas()
        twin_losses = [f_theta] + [self._f(k, *parts[k]) for k in range(1, self.num_groups)]
        f_total = penalties_lib.add_n(twin_losses)
        l_value = ops.cast(self.homotopy_l, "float32")
        anchor, coupling = self.penalties()
        penalty = l_value * anchor + coupling / l_value
        if self.penalty_update == "proximal":  # H's penalties at the step's start weights, for the logs
            penalty = ops.stop_gradient(penalty)
        batch = twins_lib.batch_size(x)
        for tracker, value in zip(self.twin_loss_trackers, twin_losses):
            tracker.update_state(ops.cast(value, "float32") * replicas, sample_weight=batch)
        self.anchor_tracker.update_state(l_value * anchor)
        self.coupling_tracker.update_state(coupling)
        self.l_tracker.update_state(l_value)
        return f_total + ops.cast(penalty, f_total.dtype) / replicas

    def _f(self, k, x, y, sample_weight):
        """f of twin k ≥ 1: the compiled loss plus that twin's own losses, as Keras' `compute_loss` gives θ's.

        Like every replica's loss, the twin's losses are divided by the number of replicas.
        """
        y_pred, extras = step_lib.forward(self.nets[k], x)
        twin_loss = getattr(self, "_twin_loss", None)
        losses = [] if twin_loss is None else [twin_loss.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)]
        for extra in extras:  # regularizers and add_loss
            extra = ops.sum(extra)
            if not keras.backend.is_float_dtype(extra.dtype):
                extra = ops.cast(extra, keras.config.floatx())
            losses.append(extra / step_lib.replicas())
        if not losses:
            raise ValueError("No loss to compute. Provide a `loss` argument in `compile()`.")
        return penalties_lib.add_n(losses)

    def test_step(self, *args):
        # `(data)` -> logs on TensorFlow and PyTorch, `(state, data)` -> (logs, state) on JAX.
        result = super().test_step(*args)
        logs, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, None)
        logs = {k: v for k, v in logs.items() if k not in self._homotopy_metric_names}
        return logs if rest is None else (logs, *rest)

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
