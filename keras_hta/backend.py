"""Every line of keras-hta that differs per Keras backend, and nothing else.

Everything else is written once in `keras.ops`. The modules above call these
functions with values and callables; nothing here calls back into them by
name. What differs, and lives here:

- the training step's signature and state (`step_arguments`,
  `keras_step_arguments`, `at_state`, `update_state`, `map_logs`): TensorFlow
  and PyTorch step on the variables (`train_step(data) -> logs`); JAX steps on
  explicit state (`train_step(state, data) -> (logs, state)`), so what HTA
  reads before Keras' step and the proximal update after it run inside a
  `keras.StatelessScope` mapped to that state, and the update's results go
  back into the state Keras returns;
- how many processes train together (`process_count`), the replica count
  Keras divides each replica's loss by (`replicas`: TensorFlow's
  `tf.distribute`; 1 elsewhere, JAX's `keras.distribution` computing the
  global loss), and TensorFlow's multi-worker strategy
  (`multi_worker_strategy`);
- where variables are created (under TensorFlow, in the strategy that was
  current when the model was built) and how the proximal step's values are
  assigned: under a `tf.distribute` strategy once per device in the
  cross-replica context, on PyTorch outside autograd in one foreach copy;
- how elementwise arithmetic runs over many weights (`elementwise`): one
  `torch._foreach_*` call per operation on PyTorch, as Keras' own PyTorch
  optimizers step, instead of one eager operation per weight; a loop of
  `keras.ops` elsewhere (traced and fused on TensorFlow and JAX);
- what `jit_compile` means on each backend.

TensorFlow and PyTorch are imported only on their own backend (TensorFlow
also for `multi_worker_strategy`, on first use).
"""

import contextlib

import keras
from keras import ops

BACKEND = keras.backend.backend()


def replicas():
    """Replicas the current step runs on (Keras divides each one's loss by it)."""
    if BACKEND != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def process_count():
    """Processes that train together: JAX's multi-process runtime (`keras.distribution.initialize`), the
    workers (and chief) of the current `tf.distribute` strategy's cluster on TensorFlow; 1 on PyTorch."""
    if BACKEND == "jax":
        import jax

        return jax.process_count()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        resolver = getattr(tf.distribute.get_strategy(), "cluster_resolver", None)
        if resolver is None:
            return 1
        spec = resolver.cluster_spec()
        return max(1, sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs))
    return 1


def no_grad():
    """A context outside autograd for PyTorch; nothing elsewhere."""
    if BACKEND == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def creation_scope():
    """A callable giving the context to create variables in later: the current `tf.distribute` strategy's scope.

    Taken when a model is built, so that variables a later `compile` adds are
    mirrored like the model's own; nothing on JAX and PyTorch (their
    `keras.distribution` lays variables out at creation).
    """
    if BACKEND != "tensorflow":
        return contextlib.nullcontext
    import tensorflow as tf

    return tf.distribute.get_strategy().scope


def assign_all(updates):
    """Assigns `(variable, value)` pairs computed from the same step's weights.

    Under a `tf.distribute` strategy every replica computed the same values
    from the same mirrored weights; as Keras' optimizers do, the assignment
    happens in the cross-replica context through `strategy.extended.update`.
    """
    if BACKEND == "torch":  # one copy for all, as Keras' PyTorch optimizers write their variables
        import torch

        if updates:
            with torch.no_grad():
                torch._foreach_copy_([variable.value for variable, _ in updates], [value for _, value in updates])
        return
    if BACKEND != "tensorflow":
        for variable, value in updates:
            variable.assign(value)
        return
    import tensorflow as tf

    def assign(strategy, updates):
        for variable, value in updates:
            variable = getattr(variable, "value", variable)  # the tf.Variable of a Keras variable
            strategy.extended.update(variable, lambda v, x: v.assign(x), args=(value,), group=False)

    context = tf.distribute.get_replica_context()
    if context is None:
        assign(tf.distribute.get_strategy(), updates)
    else:
        context.merge_call(assign, args=(updates,))


class _KerasElementwise:
    """Elementwise arithmetic over aligned lists of tensors, written once in `keras.ops`.

    `b` is a list aligned with `a` (each of its tensors broadcastable against
    `a`'s) or one scalar applied to every tensor of `a`.
    """

    @staticmethod
    def add(a, b):
        return [x + y for x, y in zip(a, b)] if isinstance(b, (list, tuple)) else [x + b for x in a]

    @staticmethod
    def sub(a, b):
        return [x - y for x, y in zip(a, b)]

    @staticmethod
    def mul(a, b):
        return [x * y for x, y in zip(a, b)] if isinstance(b, (list, tuple)) else [x * b for x in a]

    @staticmethod
    def sum_squares(a):
        """Σ‖t‖² over the tensors of `a` (already float32), a scalar."""
        sums = [ops.sum(ops.square(t)) for t in a]
        return sums[0] if len(sums) == 1 else ops.sum(ops.stack(sums))


class _TorchElementwise:
    """`_KerasElementwise` in one `torch._foreach_*` call per operation (the values are torch tensors)."""

    @staticmethod
    def add(a, b):
        import torch

        return torch._foreach_add(list(a), list(b) if isinstance(b, (list, tuple)) else b)

    @staticmethod
    def sub(a, b):
        import torch

        return torch._foreach_sub(list(a), list(b))

    @staticmethod
    def mul(a, b):
        import torch

        return torch._foreach_mul(list(a), list(b) if isinstance(b, (list, tuple)) else b)

    @staticmethod
    def sum_squares(a):
        import torch

        flat = torch.cat([t.reshape(-1) for t in a])
        return torch.dot(flat, flat)


elementwise = _TorchElementwise if BACKEND == "torch" else _KerasElementwise


def check_jit_compile(jit_compile):
    """Raises for `jit_compile=True` on PyTorch, whose `torch.compile` cannot trace the twins' step."""
    if jit_compile is True and BACKEND == "torch":
        raise ValueError(
            "Argument `jit_compile`=True is not supported on the torch backend: torch.compile cannot trace "
            "the twins' calls inside the step. Received: jit_compile=True with KERAS_BACKEND=torch. Leave "
            "it at its default, or use the jax or tensorflow backend for XLA."
        )


def portable_jit_compile(config):
    """A saved compile config for this backend: XLA, the default where the file was saved, is 'auto' on PyTorch."""
    if BACKEND == "torch" and config.get("jit_compile") is True:
        config = dict(config, jit_compile="auto")
    return config


def _state_mapping(model, state):
    trainable, non_trainable, optimizer_variables, _ = state
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += zip(model.non_trainable_variables, non_trainable)
    if model.optimizer is not None:
        mapping += zip(model.optimizer.variables, optimizer_variables)
    return mapping


def step_arguments(args):
    """`(state, data)` of the arguments Keras' `train_step` or `test_step` was called with (state: None but on JAX)."""
    return (args[0], args[1]) if BACKEND == "jax" else (None, args[0])


def keras_step_arguments(state, data):
    """The arguments of Keras' own `train_step` on this backend: `(data)`, or `(state, data)` on JAX."""
    return (state, data) if BACKEND == "jax" else (data,)


def at_state(model, state, read):
    """`read()`, reading the model's variables as the step's `state` holds them (JAX) or as they are."""
    if state is None:
        return read()
    with keras.StatelessScope(state_mapping=_state_mapping(model, state)):
        return read()


def update_state(model, result, update):
    """Runs `update()`, which assigns the model's trainable variables after Keras' step; returns the step's result.

    On JAX, `result` is `(logs, state)`: `update` runs on that state, and its
    values replace the trainable ones in the state returned.
    """
    if BACKEND != "jax":
        update()
        return result
    logs, state = result
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    with keras.StatelessScope(state_mapping=_state_mapping(model, state)) as scope:
        update()
        trainable = [scope.get_current_value(v) for v in model.trainable_variables]
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def map_logs(result, function):
    """The step's result with `function` applied to its logs (`logs`, or `(logs, state)` on JAX)."""
    if BACKEND == "jax":
        logs, state = result
        return function(logs), state
    return function(result)


def multi_worker_strategy(**kwargs):
    """`tf.distribute.MultiWorkerMirroredStrategy(**kwargs)` with the workaround for a Keras bug that breaks it.

    The cluster comes from the `TF_CONFIG` environment variable, as usual.
    Create it at program start, before other TensorFlow work, on every worker.
    The workaround (keras-team/keras#20585, two functions of Keras'
    TensorFlow trainer) is `keras_hta.compat.patch_keras`'s; it is installed
    only over the Keras source it was checked against. TensorFlow only.

    Example:

    ```python
    # on each worker, with TF_CONFIG set:
    strategy = keras_hta.multi_worker_strategy()
    with strategy.scope():
        model = keras_hta.HomotopyModel.from_model(build_network())
        model.compile(...)
    model.fit(dataset, epochs=10, callbacks=[keras_hta.HomotopyScheduler(schedule)])
    ```
    """
    import tensorflow as tf

    from keras_hta.compat import patch_keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy(**kwargs)
    patch_keras()
    return strategy
