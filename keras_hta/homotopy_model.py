"""`HomotopyModel`: a Keras model trained with the Homotopy Training Algorithm."""

import warnings

import numpy as np

import keras
from keras import ops
from keras_hta import backend
from keras_hta import checks
from keras_hta import compat
from keras_hta import homotopy_scheduler as scheduler_lib
from keras_hta import losses as losses_lib
from keras_hta import network as network_lib
from keras_hta import penalties as penalties_lib
from keras_hta import schedules as schedules_lib
from keras_hta import train_step as train_step_lib
from keras_hta import twin_variables as twin_variables_lib
from keras_hta import twins as twins_lib

@keras.saving.register_keras_serializable(package="keras_hta")
class HomotopyModel(train_step_lib.TrainStep, keras.Model):
    """A model trained by the Homotopy Training Algorithm (HTA) in `fit`.

    HTA keeps `num_groups` twin sets of the trainable weights (θ, η, ...)
    and a fixed anchor θ̃. Twin k is free on one group of weights and pulled
    towards the anchor on the others; each step of `fit` minimises

        H = Σ_k f(w_k) + L · Σ_k ‖a_k ⊙ (w_k − θ̃)‖² + (1/L) · Σ_{j<k} ‖w_j − w_k‖²

    f being the compiled loss plus the twin's own regularization losses,
    w_0 = θ the wrapped network, a_k the mask of the groups twin k is
    anchored on. For two twins this is the paper's `f(θ) + L‖θ₁ − θ̃₁‖² +
    f(η) + L‖η₂ − θ̃₂‖² + (1/L)‖θ − η‖²`. Large L decouples the twins; small
    L forces them together and recovers f. Anneal L with
    `keras_hta.HomotopyScheduler`.

    The network is held once: θ is its own variables, and twin k ≥ 1 a
    variable beside each weight the network trains plus its own copy of the
    state its layers update (BatchNorm statistics, seed states), run through
    the same network (`keras_hta.twins`, which states the rule); frozen
    weights exist once. Twins start equal to θ; a weight that first trains
    at a later `compile` gets its twins then, so freezing and unfreezing
    layers works as in plain Keras. `predict`, `evaluate` and `call` use θ;
    `model.twin(k)` reads twin k; `keras_hta.merge` returns a plain Keras
    model. Build it like a Functional model, `HomotopyModel(inputs,
    outputs)`, or around a built model, `HomotopyModel.from_model(model)`:
    any model Keras can train, subclassed ones and custom layers as they
    are (a layer calling a torch module with its own parameters,
    `TorchModuleWrapper`, is refused).

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
        twin_factory: Deprecated and ignored (a `DeprecationWarning`): twins
            are no longer copies of the network.
        seed: Integer or `None`, for `split="random"`. When several
            processes train together (JAX's `keras.distribution.initialize`,
            a `MultiWorkerMirroredStrategy`), give every process the same
            integer: `None` is refused there, since each process would draw
            its own mask.
        twinned, copied_state: Lists of positions in `network.variables`:
            the weights with twins and the state copied per twin, in order.
            A saved model records them; leave them `None`.
        name: String, the model's name.

    Raises:
        TypeError: `network` is not a Keras model, or a trainable weight is
            not floating point.
        ValueError: no trainable weights, an unbuilt network, an unknown or
            empty split, a mask or anchor of the wrong shape, a bad
            `num_groups`, `norm`, `penalty_update` or `twin_batch`, L <= 0,
            NaN or inf, or `split="random"` with `seed=None` when several
            processes train.

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
        twinned=None,
        copied_state=None,
        name=None,
        **kwargs,
    ):
        network = network_lib.check_network(network, inputs, outputs)
        network_lib.warn_what_hta_does_not_run(network)
        checks.check_options(norm, penalty_update)
        twins_lib.check_options(num_groups, twin_batch)
        homotopy_l = schedules_lib.validate_l(homotopy_l, "homotopy_l")
        if twin_factory is not None:
            warnings.warn(
                "HomotopyModel: `twin_factory` is ignored and will be removed: twins are no longer copies of the "
                "network but sets of variables run through the one network, so every model Keras can train wraps "
                "as it is.", DeprecationWarning, stacklevel=2,
            )
        state = twins_lib.TwinState(network, num_groups, split, anchor, seed, twinned, copied_state)

        super().__init__(name=name or f"homotopy_{network.name}".replace(".", "_"), **kwargs)  # torch: no "." in names
        self.network = network
        self.twin_state = state
        self.num_groups = num_groups
        self.norm = norm
        self.penalty_update = penalty_update
        self.twin_batch = twin_batch
        self.split = split if isinstance(split, str) else "custom"
        self.anchor = anchor if isinstance(anchor, str) else "custom"
        self.seed = seed
        self._initial_l = homotopy_l

        # L and the schedule position: what callbacks assign to.
        self.homotopy_l = self._state(np.float32(homotopy_l), "homotopy_l")
        self.homotopy_epoch = self._state(0, "homotopy_epoch", dtype="int")  # Keras' counter dtype
        self._make_trackers()  # the logs' (keras_hta.train_step)
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

    def twin(self, k):
        """Twin k (0: θ, 1: η, ...) as a `keras_hta.twin_variables.TwinView`: its weights and outputs, read like a model.

        `model.twin(1).get_weights()` aligns with `model.network.get_weights()`;
        `model.twin(1)(x)` and `model.twin(1).predict(x)` run the network on
        η's weights in inference mode.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_groups:
            raise ValueError(f"Argument `k` must be a twin index in [0, {self.num_groups}). Received: k={k!r}")
        return twin_variables_lib.TwinView(self.twin_state, int(k))

    @property
    def anchors(self):
        """The anchor θ̃ of each weight trained now, as tensors (zeros for `anchor="zeros"`)."""
        variables = self.network.variables
        positions = self.twin_state.active()
        anchors = self.twin_state.anchors(positions)
        if anchors is None:
            return [ops.zeros(tuple(variables[p].shape), variables[p].dtype) for p in positions]
        return [ops.convert_to_tensor(a) for a in anchors]

    @property
    def anchor_masks(self):
        """Full-size 0/1 masks per twin and weight trained now, 1 where the twin is anchored.

        Computed on demand (the model stores only the groups).
        """
        variables = self.network.variables
        positions = self.twin_state.active()
        masks = self.twin_state.masks(positions, anchored=True)
        return [[ops.broadcast_to(a, tuple(variables[p].shape)) for a, p in zip(ms, positions)] for ms in masks]

    def group_sizes(self):
        """Number of weight elements in each group, over the weights trained now (twin g − 1 is free on group g)."""
        return self.twin_state.group_sizes(self.twin_state.active())

    def call(self, inputs, training=None):
        return self.network(train_step_lib.theta_inputs(inputs), training=training)

    def penalties(self):
        """Returns `(anchor, coupling)`: Σ_k ‖a_k ⊙ (w_k − θ̃)‖² and Σ_{j<k} ‖w_j − w_k‖².

        Over the weights trainable now; unweighted by L (plain norms for
        `norm="l2"`). Subclasses may override it to change the penalty
        terms (with `penalty_update="gradient"`: the proximal step assumes
        these).
        """
        state = self.twin_state
        positions = state.active()
        masks = state.masks(positions, anchored=True)
        return penalties_lib.homotopy_penalties(state.per_twin_variables(positions), state.anchors(positions), masks,
                                                self.norm)

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
        backend.check_jit_compile(kwargs.get("jit_compile"))
        self.twin_state.refresh()  # twins for weights trainable now, trainable as their weights are
        super().compile(optimizer, loss, loss_weights, *args, **kwargs)
        # The twins' f: the same loss, its own (unreported) trackers; kept out
        # of Keras' tracking, so it is neither a layer nor saved.
        object.__setattr__(self, "_twin_loss", losses_lib.compiled_loss(self.output_names, loss, loss_weights))
        self.check_stability()

    def compile_from_config(self, config):
        # Keras skips a custom compile() when loading; this one is safe to run.
        config = keras.saving.deserialize_keras_object(compat.portable_compile_config(config))
        self.compile(**backend.portable_jit_compile(config))
        self.optimizer.build(self.trainable_variables)

    def save(self, filepath, *args, **kwargs):
        """Saves to the `.keras` format (Keras' own `save`); the legacy `.h5` format is refused.

        Keras' HDF5 writer compares weights with `==` and fails on a model
        that owns array-valued weights (the anchors), so a `.h5` path raises
        a ValueError naming `.keras` before anything is written. So does a
        subclassed network that Keras could not rebuild when loading (no
        `get_config`, an `__init__` without `**kwargs`).
        """
        network_lib.refuse_h5(filepath)
        network_lib.refuse_unloadable(self.network)
        return super().save(filepath, *args, **kwargs)

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras' `fit`, counting HTA epochs; a `ModelCheckpoint` that `save` would refuse is refused before training.

        `model.homotopy_epoch` counts the epochs completed, also across `fit`
        calls and a reload; it advances at each epoch's end before any other
        callback's `on_epoch_end`, so a checkpoint taken there holds it. A
        `fit` that raises leaves the model with the values of its last
        completed step and the count of its completed epochs, and the next
        `fit` goes on from there.
        """
        callbacks = list(callbacks or [])
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.ModelCheckpoint) and not callback.save_weights_only:
                network_lib.refuse_h5(callback.filepath, "ModelCheckpoint(filepath=...)")
                network_lib.refuse_unloadable(self.network)  # before training, not at the first epoch's end
        with compat.restorable_fit(self):
            return super().fit(*args, callbacks=[scheduler_lib.EpochCounter()] + callbacks, **kwargs)

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

    def load_own_variables(self, store):
        # L and the HTA epoch; a file of keras-hta 0.2 holds the twins, anchors and groups here too.
        if len(store) <= 2:
            return super().load_own_variables(store)
        homotopy_l, epoch = self.twin_state.load_legacy([store[str(i)] for i in range(len(store))], store)
        self.homotopy_l.assign(homotopy_l)
        self.homotopy_epoch.assign(epoch)

    @property
    def losses(self):
        """θ's own losses (regularizers, `add_loss`): those in f(θ), `fit`'s and `evaluate`'s loss."""
        return compat.forward_losses(self) or self.network.losses

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network), split=self.split, anchor=self.anchor,
            num_groups=self.num_groups, homotopy_l=self._initial_l, norm=self.norm,
            penalty_update=self.penalty_update, twin_batch=self.twin_batch, seed=self.seed,
            twinned=self.twin_state.twinned(), copied_state=self.twin_state.copied_state(),
            **network_lib.training_setup(self.network),
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)  # a callable split or anchor comes back as "custom", filled by the weights
        network = keras.saving.deserialize_keras_object(config.pop("network"), custom_objects=custom_objects)
        network_lib.restore_training_setup(network, **{key: config.pop(key) for key in (
            "lora_layers", "frozen_layers", "frozen_weights") if key in config})
        return cls(network=network, **config)
