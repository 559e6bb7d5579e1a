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
- **State**: what a forward pass in training may update, that is the
  variables the network's layers create non-trainable: the state of every
  seed generator (dropout, noise, random augmentation), and for each layer
  that trains (at construction or a later `compile`) its other such
  variables — BatchNormalization's moving statistics, counters. A frozen
  layer's statistics do not move (Keras runs a frozen BatchNormalization in
  inference mode) and stay shared until the layer trains. Twin k's seed
  states start as the layer's, with the seed folded with k: each twin draws
  its own dropout masks, and they reproduce from the layer's seed.

Everything else — frozen weights (created trainable, not trainable now: a
frozen layer, LoRA's base kernels) and float8 scale variables that Keras
overwrites with their "gradient" — exists once, and every twin computes with
it. `TwinState` owns all of this: the twins' variables and state, the anchor
θ̃ and the group of every twinned weight, and which of them take part now.
"""

import numpy as np

import keras
from keras import ops
from keras_hta import anchors as anchors_lib
from keras_hta import compat
from keras_hta import network as network_lib
from keras_hta import splits as splits_lib
from keras_hta import twin_plan
from keras_hta import backend
from keras_hta import twin_variables as variables_lib
from keras_hta.twin_variables import twin_name

TWIN_BATCHES = ("full", "split")


def check_options(num_groups, twin_batch):
    """Raises a ValueError naming `num_groups` or `twin_batch` if it is not valid."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 2:
        raise ValueError(f"Argument `num_groups` must be an integer >= 2. Received: num_groups={num_groups!r}")
    if twin_batch not in TWIN_BATCHES:
        raise ValueError(f"Argument `twin_batch` must be one of {TWIN_BATCHES}. Received: twin_batch={twin_batch!r}")



class TwinState(keras.layers.Layer):
    """The twins' variables and state, anchors and groups of one network, and which twin computes now.

    Args:
        network: The built `keras.Model` (twin 0, θ). Not tracked here: the
            `HomotopyModel` owns it.
        num_groups: Integer >= 2, the number of twins.
        split, anchor, seed: As for `HomotopyModel`.
        twinned: Optional list of positions in `network.variables` of the
            weights to twin at construction, in order (what a saved model
            records); by default the weights the network trains now.
        copied_state: Optional list of positions of the state variables to
            copy for each twin (what a saved model records); by default the
            seed states and the state of the layers trainable now.
    """

    def __init__(self, network, num_groups, split, anchor, seed=None, twinned=None, copied_state=None,
                 name="twin_state"):
        plan = twin_plan.TwinPlan(network, num_groups, split, anchor, seed)
        plan.check_processes(twinned)
        super().__init__(name=name)
        object.__setattr__(self, "network", network)
        object.__setattr__(self, "plan", plan)
        self.num_groups = num_groups
        self.seed = seed
        object.__setattr__(self, "_state_positions", [])  # state positions copied for every twin, in creation order
        object.__setattr__(self, "_order", [])  # twinned positions, in creation order
        object.__setattr__(self, "_anchors", {})  # position -> anchor variable (None: θ̃ = 0)
        object.__setattr__(self, "_groups", {})  # position -> group array, or int32 variable
        self.anchor_and_group_slots = []  # tracked: the anchors and the stored groups
        self.twins = [variables_lib.TwinWeights(k, name=f"twin_{twin_name(k, num_groups)}")
                      for k in range(1, num_groups)]
        self.built = True
        object.__setattr__(self, "_creation_scope", backend.creation_scope())
        self._copy_state(plan.state_to_copy() if copied_state is None else list(copied_state))
        twinned = plan.trained_now() if twinned is None else list(twinned)
        if not twinned:
            raise network_lib.nothing_to_split(network)
        self._add(twinned)
        self._cache_masks()
        counts = self.group_sizes(self._order)
        if 0 in counts and self.split != "custom":  # "custom": the saved groups fill them
            raise ValueError(
                f"Argument `split`={self.split!r} leaves a group empty with num_groups={num_groups}: elements "
                f"per group {counts}. Use fewer groups or another split."
            )

    def build(self, input_shape=None):
        pass  # see TwinWeights.build

    def _copy_state(self, positions):
        variables = self.network.variables
        with self._creation_scope():
            for p in positions:
                v = variables[p]
                for twin in self.twins:
                    value = v.numpy()
                    if p in self.plan.seed_positions:
                        value = variables_lib.fold_seed(value, twin.k)
                    twin.add(p, variables_lib.like(v, value, f"{variables_lib.slot_name(v)}_{twin_name(twin.k, self.num_groups)}", False))
                self._state_positions.append(p)

    def copied_state(self):
        """Positions (in `network.variables`) of the state each twin has its own copy of, in creation order."""
        return list(self._state_positions)

    @property
    def split(self):
        return self.plan.split

    # -- which weights are twinned, and when --------------------------------

    def _add(self, positions):
        variables = self.network.variables
        values = [variables[p] for p in positions]
        anchors = anchors_lib.resolve_anchor(self.plan.anchor_option, values) or [None] * len(values)
        groups = self.plan.groups_of(positions)
        with self._creation_scope():
            for p, v, anchor, group in zip(positions, values, anchors, groups):
                name = variables_lib.slot_name(v)
                for twin in self.twins:
                    twin.add(p, variables_lib.like(v, variables_lib.copy_of(v), f"{name}_{twin_name(twin.k, self.num_groups)}", True))
                if anchor is not None:
                    self._anchors[p] = variables_lib.like(v, anchor, f"{name}_anchor", False)
                    self.anchor_and_group_slots.append(self._anchors[p])
                if self.split in ("random", "custom"):  # stored (and saved) full-size
                    group = variables_lib.like(v, group, f"{name}_groups", False, dtype="int32")
                    self.anchor_and_group_slots.append(group)
                self._groups[p] = group
                self._order.append(p)

    def refresh(self):
        """At `compile`: twins for weights trainable now that have none; each twin variable trains as its weight does.

        Raises:
            ValueError: the network's variables changed since construction
                (`enable_lora` or `quantize` after wrapping), or a weight
                trained since has no anchor or group to be had.
        """
        self.plan.check_unchanged()
        new = self.plan.trained_now(self._groups)
        if new:
            self.plan.check_later(new)
            self._add(new)
        self._copy_state(self.plan.state_to_copy(self._state_positions))
        self._cache_masks()
        trainable = {id(v) for v in self.network.trainable_variables}
        variables = self.network.variables
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

    def per_twin_variables(self, positions):
        """Per twin (θ first), the variables standing for the weights at `positions`."""
        variables = self.network.variables
        return [[variables[p] for p in positions]] + [[t.by_position[p] for p in positions] for t in self.twins]

    def anchors(self, positions):
        """The anchor variable of each weight at `positions`, or `None` for θ̃ = 0."""
        return None if not self._anchors else [self._anchors[p] for p in positions]

    def groups(self, positions):
        """The group indices of each weight at `positions` (arrays or int32 variables)."""
        return [self._groups[p] for p in positions]

    def masks(self, positions, dtype="float32", anchored=False):
        """Per twin, a 0/1 mask per weight at `positions`: 1 where the twin is free (or, `anchored`, anchored).

        Masks of groups derived from the network ("channels", "layers": small
        arrays) are made at `compile` (outside any traced step, which then
        reads them as constants); stored groups ("random", a callable) are
        read each time, so that loaded groups take effect.
        """
        cache = self.__dict__.get("_mask_cache", {})
        out = [[None] * len(positions) for _ in range(self.num_groups)]
        for i, p in enumerate(positions):
            masks = cache.get((p, keras.backend.standardize_dtype(dtype), anchored))
            if masks is None:
                masks = [m for (m,) in (splits_lib.anchor_masks if anchored else splits_lib.free_masks)(
                    [self._groups[p]], self.num_groups, dtype)]
            for k in range(self.num_groups):
                out[k][i] = masks[k]
        return out

    def _cache_masks(self):
        """The masks of every twinned weight whose groups are an array, made now, eagerly (see `masks`)."""
        cache = {}
        variables = self.network.variables
        for p in self._order:
            if isinstance(self._groups[p], np.ndarray):
                dtype = keras.backend.standardize_dtype(variables[p].dtype)
                for anchored in (False, True):
                    cache[(p, dtype, anchored)] = [m for (m,) in (
                        splits_lib.anchor_masks if anchored else splits_lib.free_masks)(
                        [self._groups[p]], self.num_groups, dtype)]
        object.__setattr__(self, "_mask_cache", cache)

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
        variables = self.network.variables  # one walk of the layers, not one per state variable
        state = [(p, variables[p]) for p in self._state_positions]
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
        """Per LoRA layer whose update Keras merges when saving: the positions of its base kernel and θ's LoRA weights."""
        position = {id(v): p for p, v in enumerate(self.network.variables)}
        return [(position[id(base)], [position[id(v)] for v in lora]) for _, base, lora in compat.merged_lora(self.network)]

    def save_own_variables(self, store):
        for p in self._order:
            if p in self._anchors:
                store[f"anchor_{p}"] = self._anchors[p]
            if self.split in ("random", "custom"):
                store[f"groups_{p}"] = self._groups[p]
        variables = self.network.variables
        # Keras saves a LoRA layer's kernel with θ's update merged in; the base kernel and θ's LoRA weights as they
        # are make the loaded model the saved one to the bit (base + update - update rounds).
        for base, positions in self._lora_positions():
            store[f"lora_base_{base}"] = variables[base]
            for p in positions:
                store[f"lora_{p}"] = variables[p]

    def load_own_variables(self, store):
        # Keras walks the HomotopyModel's layers in order: the network is loaded by now.
        if self.twins[0].legacy_loaded and len(store) == 0:
            return  # a file of keras-hta 0.2: see load_legacy
        lora = self._lora_positions()
        want = {f"anchor_{p}" for p in self._anchors} | {f"lora_{p}" for _, ps in lora for p in ps}
        want |= {f"lora_base_{base}" for base, _ in lora}
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
        for base, positions in lora:  # Keras loaded base + θ's update into the kernel: both as they were saved
            variables[base].assign(store[f"lora_base_{base}"])
            for p in positions:
                variables[p].assign(store[f"lora_{p}"])

    def load_legacy(self, root_values, store):
        """Fills twins, anchors and groups from a `.keras` file of keras-hta 0.2, whose twins were models.

        That model's own variables were, in order: each twin's weights that
        Keras could train (θ's first, in the network's order), L, the HTA
        epoch, the anchors and the groups of those weights; each twin's
        state (BatchNorm statistics) sat in its copy of the network, saved
        beside the network under the model's `layers`. Returns `(L, epoch)`.
        """
        m, n = self.num_groups, len(self.plan.candidates)
        has_anchor, has_groups = self.plan.anchor_option != "zeros", self.split in ("random", "custom")
        if len(root_values) != m * n + 2 + n * (has_anchor + has_groups):
            raise ValueError(
                f"This file holds {len(root_values)} HomotopyModel variables; a keras-hta 0.2 file of this model "
                f"holds {m * n + 2 + n * (has_anchor + has_groups)}, a file of this version 2."
            )
        paired = [root_values[k * n:(k + 1) * n] for k in range(m)]
        rest = root_values[m * n + 2:]
        anchors, groups = (rest[:n], rest[n:]) if has_anchor else ([], rest)
        index = {p: i for i, p in enumerate(self.plan.candidates)}
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
