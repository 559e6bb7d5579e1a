"""A twin's variables: made like the variables they stand for, stored per twin, and read like a model.

Twin k's variables are made the way Keras' optimizers make their slots
(`add_variable_from_reference`): with the reference variable's shape, dtype,
aggregation and the layout the active distribution gives it.
"""

import numpy as np

import keras
from keras import ops

_GOLDEN = 0x9E3779B9  # folds a twin's index into a seed state


def twin_name(k, num_groups):
    """The name of twin k: `theta` (k = 0), `eta`, or `eta1`, `eta2`, ..."""
    return "theta" if k == 0 else ("eta" if num_groups == 2 else f"eta{k}")


def like(reference, value, name, trainable, dtype=None):
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


def copy_of(variable):
    """A new tensor with the variable's value (never the same buffer: JAX donates, torch shares storage)."""
    return ops.copy(ops.convert_to_tensor(variable))


def fold_seed(value, k):
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


def slot_name(variable):
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
