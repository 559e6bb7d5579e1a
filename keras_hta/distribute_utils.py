"""What HomotopyModel's step needs from `tf.distribute`: the replica count and a mirrored assignment."""

import tensorflow as tf


def replicas():
    """Replicas the current step runs on (Keras divides each one's loss by it)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def assign_all(updates):
    """Assigns `(variable, value)` pairs, once per device under a strategy.

    Every replica computed the same values from the same mirrored weights;
    as Keras' optimizers do, the assignment happens in the cross-replica
    context through `strategy.extended.update`.
    """

    def assign(strategy, updates):
        for variable, value in updates:
            variable = getattr(variable, "value", variable)  # the tf.Variable of a Keras variable
            strategy.extended.update(variable, lambda v, x: v.assign(x), args=(value,), group=False)

    context = tf.distribute.get_replica_context()
    if context is None:
        assign(tf.distribute.get_strategy(), updates)
    else:
        context.merge_call(assign, args=(updates,))
