"""The plan of a network's twins: which variables each twin has its own copy of, and each twinned weight's group.

Decided from the network and the options alone, and no variable is made here:
`keras_hta.twins.TwinState` makes the variables the plan names. The rule
(`keras_hta.twins` states it in full): a twin copies every weight the network
trains, at construction or at a later `compile`, except float8 scales; and the
state a training forward pass updates, that is every seed generator's state
and, of the layers that train, their other non-trainable variables
(BatchNormalization's statistics). Positions are indices in `network.variables`.
"""

import numpy as np

from keras_hta import backend
from keras_hta import compat
from keras_hta import splits as splits_lib


class TwinPlan:
    """Which of `network`'s variables the twins copy, and the group of each weight, for these options.

    Args:
        network: The built `keras.Model` the twins stand beside.
        num_groups: Integer >= 2, the number of twins and groups.
        split, anchor, seed: As for `HomotopyModel` (a callable split or
            anchor, or a list of anchors, is kept as it is).
    """

    def __init__(self, network, num_groups, split, anchor, seed=None):
        self.network, self.num_groups, self.seed = network, num_groups, seed
        self.split_option, self.anchor_option = split, anchor
        variables = network.variables
        self.count = len(variables)
        created_trainable = compat.created_trainable(network)
        # Weights Keras could train (created trainable), in the network's order: what the "layers" and "random"
        # splits are computed over.
        self.candidates = [p for p, v in enumerate(variables) if id(v) in created_trainable]
        # State: what the layers create non-trainable. Seed states are copied for every twin; the rest (BatchNorm
        # statistics, ...) for the layers that train (a frozen BatchNormalization never moves its statistics).
        self.state_candidates = [p for p, v in enumerate(variables)
                                 if id(v) not in created_trainable and not v.trainable]
        seeds = compat.seed_states(network)
        self.seed_positions = {p for p in self.state_candidates if id(variables[p]) in seeds}
        self.owner = _owners(network, self.state_candidates)
        self._layer_groups = None  # "layers": position -> group, computed once

    @property
    def split(self):
        """The split's name, or `"custom"` for a callable (a saved model's groups come back as "custom")."""
        return self.split_option if isinstance(self.split_option, str) else "custom"

    @staticmethod
    def twinnable(variable):
        """Whether a trainable variable gets twins: Keras overwrites float8 scales with their "gradient", θ's alone."""
        return not getattr(variable, "overwrite_with_gradient", False)

    def check_processes(self, twinned=None):
        """Raises where each process would draw its own random split (no seed, several processes, no saved groups)."""
        processes = backend.process_count()
        if self.split_option == "random" and self.seed is None and twinned is None and processes > 1:
            raise ValueError(
                f"HomotopyModel: split='random' with seed=None would draw a different mask on each of the "
                f"{processes} processes; pass the same integer `seed` on every process.")

    def check_unchanged(self):
        """Raises where the network's variables changed since the plan (`enable_lora` or `quantize` after wrapping)."""
        count = len(self.network.variables)
        if count != self.count:
            raise ValueError(
                f"The network '{self.network.name}' has {count} variables, {self.count} when it was wrapped: "
                "change its structure (enable_lora, quantize) before wrapping it in HomotopyModel.")

    def trained_now(self, twinned=()):
        """Positions of the weights the network trains now that get twins, beside those in `twinned`."""
        trainable = {id(v) for v in self.network.trainable_variables}
        have = set(twinned)
        return [p for p, v in enumerate(self.network.variables)
                if id(v) in trainable and p not in have and self.twinnable(v)]

    def state_to_copy(self, copied=()):
        """State positions not in `copied` that need a copy now: seed states, and the state of layers that train."""
        copied = set(copied)
        return [p for p in self.state_candidates
                if p not in copied and (p in self.seed_positions or self.owner[p].trainable)]

    def check_later(self, positions):
        """Raises where weights trained after construction (at `positions`) cannot get an anchor or a group."""
        variables = self.network.variables
        names = ", ".join(variables[p].path for p in positions)
        if isinstance(self.anchor_option, (list, tuple)) or self.anchor_option == "custom":
            raise ValueError(
                f"Argument `anchor` gave arrays for the weights trainable at construction; {names} became trainable "
                "later and has none. Pass `anchor` as a callable `variable -> array`, 'zeros' or 'init'.")
        if self.split == "custom" and not callable(self.split_option):
            raise ValueError(
                f"Argument `split` was a callable, not saved with the model; {names} became trainable since "
                "and has no group. Wrap the network again with that `split`.")

    def groups_of(self, positions):
        """The group indices of the weights at `positions` (see `keras_hta.splits.assign_groups`)."""
        variables = self.network.variables
        if self.split_option == "random":
            return self._random_groups(positions)
        if self.split_option == "layers":
            if self._layer_groups is None:
                candidates = [variables[p] for p in self.candidates]
                self._layer_groups = dict(zip(self.candidates, splits_lib.layer_groups(
                    self.network, candidates, self.num_groups)))
            return [np.array(self._layer_groups.get(p, 0), "int32") for p in positions]
        return splits_lib.assign_groups(self.network, [variables[p] for p in positions], self.split_option,
                                        self.num_groups, check=False)

    def _random_groups(self, positions):
        """Random masks: the candidates' drawn in one stream from `seed`; a weight created frozen and trained later
        its own, from the seed and its position, so that every process draws the same mask."""
        variables = self.network.variables
        wanted = [self.candidates.index(p) if p in self.candidates else None for p in positions]
        drawn = splits_lib.random_groups([tuple(variables[p].shape) for p in self.candidates], self.num_groups,
                                         self.seed, keep={i for i in wanted if i is not None})
        return [drawn[i] if i is not None else splits_lib.random_groups(
            [tuple(variables[p].shape)], self.num_groups, None if self.seed is None else [self.seed, p])[0]
            for i, p in zip(wanted, positions)]


def _owners(network, positions):
    """The layer owning each variable at `positions`: the innermost layer that lists it (the network, else)."""
    owner = {}
    for layer in compat.all_layers(network):  # parents first: the innermost layer owns a variable
        for v in layer.weights:
            owner[id(v)] = layer
    variables = network.variables
    return {p: owner.get(id(variables[p]), network) for p in positions}
