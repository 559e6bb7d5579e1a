"""Twins: one network, and one set of variables per twin substituted for its own.

`HomotopyModel` holds the user's network once. Twin 0 (θ) is the network with
its own variables. Twin k ≥ 1 (η, or η1, η2, ...) is the same network run on
twin k's variables (`keras.StatelessScope`), which are made the way Keras'
optimizers make their slots (`add_variable_from_reference`): one per
variable, with its shape, dtype, aggregation and the layout the active
distribution gives it. Which variables a twin has its own copy of:

- **Twinned weights**: every variable the network trains — each variable's
  own `trainable`, at any depth (a sublayer of a custom layer, LoRA weights,
  a layer frozen inside a block: whatever `network.trainable_variables`
  lists) at construction or at a later `compile`. A weight that first becomes
  trainable at a later `compile` gets its twins then, each equal to its value
  at that moment. A twinned weight frozen again keeps its twins' values,
  which then no longer train.
- **State**: every variable that the network's layers create non-trainable —
  BatchNormalization's moving statistics, the state of seed generators
  (dropout, noise, random augmentation), counters — which a forward pass in
  training may update. Twin k's seed states start as the layer's, with the
  seed folded with k: each twin draws its own dropout masks, and they
  reproduce from the layer's seed on every backend.

Everything else — frozen weights (created trainable, not trainable now: a
frozen layer, LoRA's base kernels) and float8 scale variables that Keras
overwrites with their "gradient" — exists once, and every twin computes with
it. `TwinState` owns all of this: the twins' variables and state, the anchor
θ̃ and the group of every twinned weight, and which of them take part now.
"""

import warnings

import numpy as np

import keras
from keras import ops
from keras_hta import anchors as anchors_lib
from keras_hta import compat
from keras_hta import splits as splits_lib
from keras_hta import step as step_lib

TWIN_BATCHES = ("full", "split")
_GOLDEN = 0x9E3779B9  # folds a twin's index into a seed state


def check_options(num_groups, twin_batch):
    """Raises a ValueError naming `num_groups` or `twin_batch` if it is not valid."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 2:
        raise ValueError(f"Argument `num_groups` must be an integer >= 2. Received: num_groups={num_groups!r}")
    if twin_batch not in TWIN_BATCHES:
        raise ValueError(f"Argument `twin_batch` must be one of {TWIN_BATCHES}. Received: twin_batch={twin_batch!r}")


def twin_name(k, num_groups):
    """The name of twin k: `theta` (k = 0), `eta`, or `eta1`, `eta2`, ..."""
    return "theta" if k == 0 else ("eta" if num_groups == 2 else f"eta{k}")


def _like(reference, value, name, trainable, dtype=None):
    """A variable made like `reference` (shape, aggregation, synchronization, layout) holding `value`.

    The layout is the one the active `keras.distribution` gives `reference`,
    so a `ModelParallel` `LayoutMap` key that matches a weight lays out every
    copy of it the same way; without a distribution Keras places it as usual.
    """
    distribution = keras.distribution.distribution() if hasattr(keras, "distribution") else None
    layout = None if distribution is None else distribution.get_variable_layout(reference)
    return keras.Variable(
        initializer=value, shape=tuple(reference.shape), dtype=dtype or reference.dtype, trainable=trainable,
        autocast=False, aggregation=reference.aggregation, synchronization=reference.synchronization,
        name=name, layout=layout,
    )


def _copy(variable):
    """A new tensor with the variable's value (never the same buffer: JAX donates, torch shares storage)."""
    return ops.copy(ops.convert_to_tensor(variable))


def _fold_seed(value, k):
    """A seed generator's state `[seed, counter]` with the seed folded with twin index k."""
    state = np.array(value)
    bits = state.astype(np.int64) & 0xFFFFFFFF
    bits[0] = (bits[0] ^ ((_GOLDEN * k) & 0xFFFFFFFF)) & 0xFFFFFFFF
    return bits.astype(np.uint32).view(np.int32).astype(state.dtype) if state.dtype.kind == "i" else bits.astype(
        state.dtype)


class TwinWeights(keras.layers.Layer):
    """Twin k's variables: its twinned weights (trainable) and its copy of the network's state.

    Keyed by the position of the network variable each one stands for in
    `network.variables`; saved under those keys, so a twin added at a later
    `compile` is saved and loaded with the others.
    """

    def __init__(self, k, name=None):
        super().__init__(name=name)
        self.k = k
        self.slots = []  # tracked by Keras: the variables, in creation order
        object.__setattr__(self, "by_position", {})
        object.__setattr__(self, "legacy_loaded", False)
        self.built = True

    def build(self, input_shape=None):
        # Defined so that Keras does not lock the layer's state at __init__:
        # twins of weights unfrozen later are added at `compile`.
        pass

    def add(self, position, variable):
        self.slots.append(variable)
        self.by_position[position] = variable

    def save_own_variables(self, store):
        for position, variable in self.by_position.items():
            store[str(position)] = variable

    def load_own_variables(self, store):
        if self.legacy_loaded and len(store) == 0:
            return  # a file of keras-hta 0.2: filled from its twin models (`TwinState.load_legacy`)
        want = {str(p) for p in self.by_position}
        got = set(store.keys())
        if got != want:
            raise ValueError(
                f"The saved twin '{self.name}' holds variables for {len(got)} network variables, this model "
                f"{len(want)} (missing: {sorted(want - got)[:5]}, unexpected: {sorted(got - want)[:5]})."
            )
        for position, variable in self.by_position.items():
            variable.assign(store[str(position)])


class TwinState(keras.layers.Layer):
    """The twins' variables and state, anchors and groups of one network, and which twin computes now.

    Args:
        network: The built `keras.Model` (twin 0, θ). Not tracked here: the
            `HomotopyModel` owns it.
        num_groups: Integer >= 2, the number of twins.
        split, anchor, seed: As for `HomotopyModel`.
        twinned: Optional list of positions in `network.variables` to twin at
            construction, in order (what a saved model records); by default
            the variables trainable now.
    """

    def __init__(self, network, num_groups, split, anchor, seed=None, twinned=None, name="twin_state"):
        super().__init__(name=name)
        object.__setattr__(self, "network", network)
        variables = network.variables
        object.__setattr__(self, "_count", len(variables))
        created_trainable = compat.created_trainable(network)
        seeds = compat.seed_states(network)
        self.num_groups = num_groups
        object.__setattr__(self, "_split", split)
        object.__setattr__(self, "_anchor", anchor)
        self.seed = seed
        # Weights Keras could train (created trainable), in the network's order:
        # what the "layers" and "random" splits are computed over.
        object.__setattr__(self, "_candidates", [p for p, v in enumerate(variables) if id(v) in created_trainable])
        object.__setattr__(self, "_state_positions", [
            p for p, v in enumerate(variables) if id(v) not in created_trainable and not v.trainable])
        object.__setattr__(self, "_seed_positions", {p for p in self._state_positions if id(variables[p]) in seeds})
        object.__setattr__(self, "_layer_groups", None)  # "layers": position -> group, computed once
        object.__setattr__(self, "_order", [])  # twinned positions, in creation order
        object.__setattr__(self, "_anchors", {})  # position -> anchor variable (None: θ̃ = 0)
        object.__setattr__(self, "_groups", {})  # position -> group array, or int32 variable
        self.anchor_slots = []  # tracked: anchors and stored groups
        self.twins = [TwinWeights(k, name=f"twin_{twin_name(k, num_groups)}") for k in range(1, num_groups)]
        self.built = True
        object.__setattr__(self, "_creation_scope", step_lib.creation_scope())
        with self._creation_scope():
            for p in self._state_positions:
                v = variables[p]
                for twin in self.twins:
                    value = v.numpy()
                    if p in self._seed_positions:
                        value = _fold_seed(value, twin.k)
                    twin.add(p, _like(v, value, f"{_slot_name(v)}_{twin_name(twin.k, num_groups)}", False))
        trainable_ids = {id(v) for v in network.trainable_variables}
        if twinned is None:
            twinned = [p for p, v in enumerate(variables) if id(v) in trainable_ids and self._twinnable(v)]
        if not twinned:
            raise ValueError(
                f"Argument `model` must have trainable weights. Received: model '{network.name}' with none: "
                "HTA has nothing to split."
            )
        self._add(list(twinned), at_construction=True)
        counts = self.group_sizes(self._order)
        if 0 in counts and self.split != "custom":  # "custom": the saved groups fill them
            raise ValueError(
                f"Argument `split`={self.split!r} leaves a group empty with num_groups={num_groups}: elements "
                f"per group {counts}. Use fewer groups or another split."
            )

    def build(self, input_shape=None):
        pass  # see TwinWeights.build

    @property
    def split(self):
        return self._split if isinstance(self._split, str) else "custom"

    @staticmethod
    def _twinnable(variable):
        # Keras overwrites float8 scales with their "gradient": they stay θ's.
        return not getattr(variable, "overwrite_with_gradient", False)

    # -- which weights are twinned, and when --------------------------------

    def _add(self, positions, at_construction=False):
        variables = self.network.variables
        values = [variables[p] for p in positions]
        if not at_construction and (isinstance(self._anchor, (list, tuple)) or self._anchor == "custom"):
            names = ", ".join(v.path for v in values)
            raise ValueError(
                f"Argument `anchor` gave arrays for the weights trainable at construction; {names} became trainable "
                "later and has none. Pass `anchor` as a callable `variable -> array`, 'zeros' or 'init'."
            )
        anchors = anchors_lib.resolve_anchor(self._anchor, values) or [None] * len(values)
        groups = self._groups_of(positions)
        with self._creation_scope():
            for p, v, anchor, group in zip(positions, values, anchors, groups):
                name = _slot_name(v)
                for twin in self.twins:
                    twin.add(p, _like(v, _copy(v), f"{name}_{twin_name(twin.k, self.num_groups)}", True))
                if anchor is not None:
                    self._anchors[p] = _like(v, anchor, f"{name}_anchor", False)
                    self.anchor_slots.append(self._anchors[p])
                if self.split in ("random", "custom"):  # stored (and saved) full-size
                    group = _like(v, group, f"{name}_groups", False, dtype="int32")
                    self.anchor_slots.append(group)
                self._groups[p] = group
                self._order.append(p)

    def _groups_of(self, positions):
        """The group indices of the weights at `positions` (see `keras_hta.splits.assign_groups`)."""
        variables = self.network.variables
        candidates = [variables[p] for p in self._candidates]
        if self._split == "layers" and self._layer_groups is None:
            object.__setattr__(self, "_layer_groups", dict(zip(
                self._candidates, splits_lib.layer_groups(self.network, candidates, self.num_groups))))
        if self._split == "random":
            wanted = [self._candidates.index(p) if p in self._candidates else None for p in positions]
            drawn = splits_lib.random_groups([tuple(v.shape) for v in candidates], self.num_groups, self.seed,
                                             keep={i for i in wanted if i is not None})
            return [drawn[i] if i is not None else splits_lib.random_groups(
                [tuple(variables[p].shape)], self.num_groups, None)[0] for i, p in zip(wanted, positions)]
        if self._split == "layers":
            return [np.array(self._layer_groups.get(p, 0), "int32") for p in positions]
        return splits_lib.assign_groups(self.network, [variables[p] for p in positions], self._split,
                                        self.num_groups, check=False)

    def refresh(self):
        """At `compile`: twins for weights trainable now that have none; each twin variable trains as its weight does.

        Raises:
            ValueError: the network's variables changed since construction
                (`enable_lora` or `quantize` after wrapping).
        """
        variables = self.network.variables
        if len(variables) != self._count:
            raise ValueError(
                f"The network '{self.network.name}' has {len(variables)} variables, {self._count} when it was wrapped: "
                "change its structure (enable_lora, quantize) before wrapping it in HomotopyModel."
            )
        trainable = {id(v) for v in self.network.trainable_variables}
        new = [p for p, v in enumerate(variables)
               if id(v) in trainable and p not in self._groups and self._twinnable(v)]
        if new:
            if self.split == "custom" and not callable(self._split):
                names = ", ".join(variables[p].path for p in new)
                raise ValueError(
                    f"Argument `split` was a callable, not saved with the model; {names} became trainable since "
                    "and has no group. Wrap the network again with that `split`."
                )
            self._add(new)
        for twin in self.twins:
            for p in self._order:
                twin.by_position[p].trainable = id(variables[p]) in trainable

    def twinned(self):
        """Positions (in `network.variables`) of the twinned weights, in creation order."""
        return list(self._order)

    def active(self):
        """Positions of the twinned weights the network trains now, in the network's order."""
        trainable = {id(v) for v in self.network.trainable_variables}
        variables = self.network.variables
        return [p for p in sorted(self._order) if id(variables[p]) in trainable]

    # -- what the step and the penalties read ------------------------------

    def values(self, positions):
        """Per twin (θ first), the variables standing for the weights at `positions`."""
        variables = self.network.variables
        return [[variables[p] for p in positions]] + [[t.by_position[p] for p in positions] for t in self.twins]

    def anchors(self, positions):
        """The anchor variable of each weight at `positions`, or `None` for θ̃ = 0."""
        return None if not self._anchors else [self._anchors[p] for p in positions]

    def groups(self, positions):
        """The group indices of each weight at `positions` (arrays or int32 variables)."""
        return [self._groups[p] for p in positions]

    def group_sizes(self, positions):
        """Number of weight elements in each group, over the weights at `positions`."""
        variables = self.network.variables
        return splits_lib.group_sizes([ops.convert_to_numpy(self._groups[p]) for p in positions],
                                      [tuple(variables[p].shape) for p in positions], self.num_groups)

    def substitution(self, k):
        """`(network variable, value)` for every network variable, as twin k computes."""
        if k == 0:
            return [(v, v) for v in self.network.variables]
        own = self.twins[k - 1].by_position
        mapping = []
        for p, v in enumerate(self.network.variables):
            if p in own:
                mapping.append((v, own[p]))
            elif getattr(v, "overwrite_with_gradient", False):
                mapping.append((v, ops.stop_gradient(ops.convert_to_tensor(v))))  # θ's alone sets it
            else:
                mapping.append((v, v))
        return mapping

    def forward(self, k, x, training=False):
        """Calls the network as twin k; returns `(y_pred, losses)`.

        `losses` are this call's regularization and `add_loss` terms, on twin
        k's weights. In training the state it updates (BatchNormalization
        statistics, seeds) is written to twin k's state.
        """
        if k == 0:
            y_pred = self.network(x, training=training)
            return y_pred, list(self.network.losses)
        twin = self.twins[k - 1]
        state = [(p, self.network.variables[p]) for p in self._state_positions]
        with keras.StatelessScope(state_mapping=self.substitution(k), collect_losses=True) as scope:
            before = [scope.get_current_value(v) for _, v in state]
            y_pred = self.network(x, training=training)
            losses = list(self.network.losses)
            after = [scope.get_current_value(v) for _, v in state]
        for (p, _), old, new in zip(state, before, after):
            if new is not old:
                twin.by_position[p].assign(new)
        return y_pred, losses

    def twin_variables(self, k, variables=None):
        """Twin k's variable for each network variable in `variables` (default `network.weights`).

        Its own where it has one, else the shared one.
        """
        variables = list(self.network.weights if variables is None else variables)
        if k == 0:
            return variables
        own = self.twins[k - 1].by_position
        position = {id(v): p for p, v in enumerate(self.network.variables)}
        return [own.get(position.get(id(w)), w) for w in variables]

    # -- saving -------------------------------------------------------------

    def _lora_positions(self):
        """Per LoRA layer whose update Keras merges when saving: its base kernel and the positions of θ's LoRA weights."""
        position = {id(v): p for p, v in enumerate(self.network.variables)}
        return [(layer, base, [position[id(v)] for v in lora]) for layer, base, lora in compat.merged_lora(self.network)]

    def save_own_variables(self, store):
        for p in self._order:
            if p in self._anchors:
                store[f"anchor_{p}"] = self._anchors[p]
            if self.split in ("random", "custom"):
                store[f"groups_{p}"] = self._groups[p]
        variables = self.network.variables
        for _, _, positions in self._lora_positions():  # θ's LoRA weights, which Keras merges into the kernel it saves
            for p in positions:
                store[f"lora_{p}"] = variables[p]

    def load_own_variables(self, store):
        # Keras walks the HomotopyModel's layers in order: the network is loaded by now.
        if self.twins[0].legacy_loaded and len(store) == 0:
            return  # a file of keras-hta 0.2: see load_legacy
        lora = self._lora_positions()
        want = {f"anchor_{p}" for p in self._anchors} | {f"lora_{p}" for _, _, ps in lora for p in ps}
        if self.split in ("random", "custom"):
            want |= {f"groups_{p}" for p in self._order}
        got = set(store.keys())
        if got != want:
            raise ValueError(f"The saved twin state holds {sorted(got)[:6]}, this model expects {sorted(want)[:6]}.")
        for p in self._order:
            if p in self._anchors:
                self._anchors[p].assign(store[f"anchor_{p}"])
            if self.split in ("random", "custom"):
                self._groups[p].assign(store[f"groups_{p}"])
        variables = self.network.variables
        for layer, base, positions in lora:  # the loaded kernel is base + θ's update: take the update back out
            for p in positions:
                variables[p].assign(store[f"lora_{p}"])
            update = ops.subtract(layer.kernel, base)
            base.assign(ops.subtract(base, update))

    def load_legacy(self, root_values, store):
        """Fills twins, anchors and groups from a `.keras` file of keras-hta 0.2, whose twins were models.

        That model's own variables were, in order: each twin's weights that
        Keras could train (θ's first, in the network's order), L, the HTA
        epoch, the anchors and the groups of those weights; each twin's
        state (BatchNorm statistics) sat in its copy of the network, saved
        beside the network under the model's `layers`. Returns `(L, epoch)`.
        """
        m, n = self.num_groups, len(self._candidates)
        has_anchor, has_groups = self._anchor != "zeros", self.split in ("random", "custom")
        if len(root_values) != m * n + 2 + n * (has_anchor + has_groups):
            raise ValueError(
                f"This file holds {len(root_values)} HomotopyModel variables; a keras-hta 0.2 file of this model "
                f"holds {m * n + 2 + n * (has_anchor + has_groups)}, a file of this version 2."
            )
        paired = [root_values[k * n:(k + 1) * n] for k in range(m)]
        rest = root_values[m * n + 2:]
        anchors, groups = (rest[:n], rest[n:]) if has_anchor else ([], rest)
        index = {p: i for i, p in enumerate(self._candidates)}
        for p in self._order:
            if p in self._anchors:
                self._anchors[p].assign(anchors[index[p]])
            if has_groups:
                self._groups[p].assign(groups[index[p]])
        paths = compat.legacy_twin_paths(store, self.network) if self._state_positions else [None] * (m - 1)
        if len(paths) != m - 1:
            raise ValueError(f"This file holds {len(paths)} twins of the network, the model {m - 1}.")
        for twin, values, path in zip(self.twins, paired[1:], paths):
            for p, variable in twin.by_position.items():
                if p in index:
                    variable.assign(values[index[p]])
            if path is not None:  # the twin's state, read into the network (whose own values Keras loads next)
                compat.load_into(self.network, store, path)
                variables = self.network.variables
                for p in self._state_positions:
                    twin.by_position[p].assign(variables[p])
            object.__setattr__(twin, "legacy_loaded", True)
        return root_values[m * n], root_values[m * n + 1]


def _slot_name(variable):
    return variable.path.replace("/", "_")


class TwinView:
    """Twin k of a `HomotopyModel`, read like a model: its weights, its outputs.

    Not a copy of the network: `model.twin(k)` returns a view on the one
    network and twin k's variables. `get_weights()` / `set_weights()` align
    with `model.network.get_weights()`; calling it (or `predict`) runs the
    network as twin k.
    """

    def __init__(self, state, k):
        self._state, self.k = state, k

    @property
    def name(self):
        return twin_name(self.k, self._state.num_groups)

    @property
    def weights(self):
        """The variables twin k computes with, aligned with `network.weights`."""
        return self._state.twin_variables(self.k)

    @property
    def trainable_weights(self):
        """Twin k's variables for the weights the network trains now, aligned with `network.trainable_weights`."""
        return self._state.twin_variables(self.k, self._state.network.trainable_weights)

    def variable(self, network_variable):
        """The variable twin k computes with in place of `network_variable` (e.g. a BatchNorm layer's `moving_mean`)."""
        return self._state.twin_variables(self.k, [network_variable])[0]

    def get_weights(self):
        return [ops.convert_to_numpy(v) for v in self.weights]

    def set_weights(self, weights):
        variables = self.weights
        if len(weights) != len(variables):
            raise ValueError(f"Twin '{self.name}' has {len(variables)} weights. Received: {len(weights)} arrays")
        own = {id(v) for v in self._state.network.weights} if self.k else set()
        for variable, value in zip(variables, weights):
            if id(variable) not in own:  # shared (frozen) weights are θ's: set them on the network
                variable.assign(value)

    def __call__(self, x, training=False):
        return self._state.forward(self.k, x, training=training)[0]

    def predict(self, x, batch_size=32, verbose=0):
        """The twin's outputs in inference mode, batch by batch, as NumPy arrays."""
        n = len(keras.tree.flatten(x)[0])
        outputs = []
        for start in range(0, n, batch_size):
            part = keras.tree.map_structure(lambda t: t[start:start + batch_size], x)
            outputs.append(keras.tree.map_structure(ops.convert_to_numpy, self(part, training=False)))
        return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)


def training_setup(network):
    """What decides which of `network`'s weights train, beyond what its config restores, as flat lists.

    `lora_layers`: `[layer index, rank, alpha]` for each layer with LoRA
    enabled (keras-hub's `Backbone.enable_lora` is not in a backbone's
    config); `frozen_layers`: indices of the layers whose `trainable` is off;
    `frozen_weights`: positions in `network.variables` of weights created
    trainable whose own flag is off (LoRA's base kernels). Layer indices
    count every layer, sublayers included (`keras_hta.compat.all_layers`).
    """
    layers = compat.all_layers(network)
    created = compat.created_trainable(network)
    return {
        "lora_layers": [[i, int(layer.lora_rank), float(getattr(layer, "lora_alpha", None) or layer.lora_rank)]
                        for i, layer in enumerate(layers) if getattr(layer, "lora_enabled", False)],
        "frozen_layers": [i for i, layer in enumerate(layers) if not layer.trainable],
        "frozen_weights": [p for p, v in enumerate(network.variables) if id(v) in created and not v.trainable],
    }


def restore_training_setup(network, lora_layers=(), frozen_layers=(), frozen_weights=()):
    """Puts back what `training_setup` recorded, on a network rebuilt from its config (before it is wrapped)."""
    layers = compat.all_layers(network)
    for i, rank, alpha in lora_layers:
        if not getattr(layers[i], "lora_enabled", False):
            layers[i].enable_lora(int(rank), lora_alpha=alpha)
    if not frozen_layers and not frozen_weights:
        return
    frozen = set(frozen_layers)
    for i, layer in enumerate(layers):  # parents before children: a child's own flag wins
        layer.trainable = i not in frozen
    variables = network.variables
    for p in frozen_weights:
        variables[p].trainable = False


def check_network(network, inputs=None, outputs=None):
    """The network to wrap: `network`, or `keras.Model(inputs, outputs)`.

    Raises unless it is a built Keras model with floating-point trainable
    weights whose layers Keras can run on other variables, or unless exactly
    one of `network` and `inputs`/`outputs` is given.
    """
    if network is None:
        if inputs is None or outputs is None:
            raise ValueError(
                f"Pass `inputs` and `outputs`, or a built `network`. Received: inputs={inputs!r}, outputs={outputs!r}"
            )
        network = keras.Model(inputs, outputs)
    elif inputs is not None or outputs is not None:
        raise ValueError("Pass either `inputs`/`outputs` or `network`, not both.")
    if not isinstance(network, keras.Model):
        raise TypeError(
            f"Argument `model` must be a keras.Model. Received: model={network!r} of type {type(network).__name__}"
        )
    if not network.built:
        raise ValueError(
            f"Argument `model` must be built. Received: model '{network.name}' "
            "with no weights yet: call it on data or give it an Input first."
        )
    if not network.trainable_variables:
        raise ValueError(
            f"Argument `model` must have trainable weights. Received: model "
            f"'{network.name}' with none: HTA has nothing to split."
        )
    for v in network.trainable_variables:
        if not np.issubdtype(np.dtype(v.dtype), np.floating):
            raise TypeError(f"Every trainable weight must be floating point. Received: '{v.path}' of dtype {v.dtype}")
    for layer in compat.all_layers(network):
        if type(layer).__name__ == "TorchModuleWrapper":
            raise ValueError(
                f"HomotopyModel cannot train the layer '{layer.name}' (TorchModuleWrapper): it calls its torch "
                "module with the module's own parameters, so its twins could not compute with their weights. "
                "Rewrite it as a Keras layer."
            )
    return network


def warn_what_hta_does_not_run(network):
    """Warns of the parts of `network` that HTA does not run: its own `train_step`, `compute_loss`, `preprocessor`.

    keras-hub's tasks carry a `preprocessor`, which their own `fit` applies.
    """
    own = [name for name in ("train_step", "compute_loss")
           if getattr(type(network), name, None) is not getattr(keras.Model, name)]
    if own:
        warnings.warn(
            f"HomotopyModel: the network '{network.name}' defines its own {' and '.join(own)}, which HTA does not "
            "call: each twin's f is the loss passed to compile() plus its own losses (regularizers, add_loss), "
            "and HomotopyModel's step trains the twins. Compile HomotopyModel with that loss, or move a loss "
            "computed in train_step into the network's call() with self.add_loss().",
            UserWarning, stacklevel=4,
        )
    preprocessor = getattr(network, "preprocessor", None)
    if isinstance(preprocessor, keras.layers.Layer):
        warnings.warn(
            f"HomotopyModel: the network '{network.name}' has a preprocessor ({type(preprocessor).__name__}), "
            "which HomotopyModel's fit, evaluate and predict do not run: give them preprocessed inputs, e.g. "
            "`x, y, sample_weight = network.preprocessor(texts)` or `dataset.map(network.preprocessor)`.",
            UserWarning, stacklevel=4,
        )


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
