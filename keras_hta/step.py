"""The lines of `HomotopyModel` that differ per Keras backend, in one place.

Everything else in keras-hta is written once in `keras.ops`. Each backend's
own `train_step` (Keras' trainer) runs the forward pass, differentiates the
loss (`HomotopyModel.compute_loss`, which adds the twins' f), applies the
optimizer, scales losses under mixed precision and distribution, and
updates the metrics. What differs per backend, and lives here:

- the step's signature and state: TensorFlow and PyTorch step on the
  variables (`train_step(data) -> logs`); JAX steps on explicit state
  (`train_step(state, data) -> (logs, state)`), so the proximal update
  (`keras_hta.twin_step`) runs inside a `keras.StatelessScope` mapped to the
  state Keras' step returned, and its results go back into that state; the
  same split for `test_step`, which drops HTA's training logs;
- how many processes train together (`process_count`);
- the replica count Keras divides each replica's loss by (TensorFlow's
  `tf.distribute`; 1 elsewhere: JAX's `keras.distribution` computes the
  global loss);
- where variables are created (under TensorFlow, in the strategy that was
  current when the model was built) and how the proximal step's values are
  assigned: under a `tf.distribute` strategy once per device in the
  cross-replica context, on PyTorch outside autograd;
- what `jit_compile` and each export format need on each backend;
- how the proximal update's elementwise arithmetic runs over all weights
  (`each`): one `torch._foreach_*` call per operation on PyTorch, as Keras'
  own PyTorch optimizers step, instead of one eager operation per weight;
  a loop of `keras.ops` elsewhere (traced and fused on TensorFlow and JAX).

TensorFlow and PyTorch are imported only on their own backend.
"""

import contextlib
import importlib.util

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


class _EachOps:
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


class _TorchEachOps:
    """`_EachOps` in one `torch._foreach_*` call per operation (the values are torch tensors)."""

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


each = _TorchEachOps if BACKEND == "torch" else _EachOps


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


# What each export format of Keras' `model.export` needs beside Keras, per backend: (module, pip package).
# A backend missing from a format's entry is one Keras does not export that format from.
EXPORT_NEEDS = {
    "tf_saved_model": {"tensorflow": (), "jax": (("tensorflow", "tensorflow-cpu"),)},
    "onnx": {"tensorflow": (("tf2onnx", "tf2onnx"), ("onnx", "onnx")), "jax": (("jax2onnx", "jax2onnx"),),
             "torch": (("onnx", "onnx"), ("onnxscript", "onnxscript"))},
    "openvino": {b: (("openvino", "openvino"),) for b in ("tensorflow", "jax", "torch")},
    "litert": {"tensorflow": (), "torch": (("litert_torch", "litert-torch"),)},
    "torch": {"torch": ()},
}


def default_export_format():
    """The format `keras_hta.export_model` writes by default: a PyTorch ExportedProgram on PyTorch, else a TF SavedModel."""
    return "torch" if BACKEND == "torch" else "tf_saved_model"


def export_problem(caller, format):
    """The error to raise when `caller` cannot export `format` on this backend, in one line, or `None`.

    Names the packages to install for this backend when only they are missing.
    """
    if format not in EXPORT_NEEDS:
        return ValueError(f"{caller}: argument `format` must be one of {tuple(EXPORT_NEEDS)}. "
                          f"Received: format={format!r}")
    needs = EXPORT_NEEDS[format].get(BACKEND)
    if needs is None:
        offered = [f for f, per_backend in EXPORT_NEEDS.items() if BACKEND in per_backend]
        where = ", ".join(sorted(EXPORT_NEEDS[format]))
        return ValueError(
            f"{caller}: Keras exports format={format!r} on the {where} backend(s), not on {BACKEND}. Received: "
            f"format={format!r} with KERAS_BACKEND={BACKEND}. On {BACKEND}: one of {offered}; or save the model "
            "(model.save('m.keras'), which loads on every backend) and export it on another backend.")
    missing = [package for module, package in needs if importlib.util.find_spec(module) is None]
    if missing:
        return ImportError(f"{caller}: format={format!r} on the {BACKEND} backend needs "
                           f"{', '.join(missing)}: pip install {' '.join(missing)}")
    return None


def _state_mapping(model, state):
    trainable, non_trainable, optimizer_variables, _ = state
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += zip(model.non_trainable_variables, non_trainable)
    if model.optimizer is not None:
        mapping += zip(model.optimizer.variables, optimizer_variables)
    return mapping


if BACKEND == "jax":

    class HomotopyStep:
        """`train_step(state, data)`: Keras' JAX step, then the proximal update on its state."""

        def train_step(self, state, data):
            with keras.StatelessScope(state_mapping=_state_mapping(self, state)):
                before = self._before_step()  # γ and the iteration count before the step
            with self._twin_batches(data) as theta_data:
                logs, state = super().train_step(state, theta_data)
            if before is None:
                return logs, state
            trainable, non_trainable, optimizer_variables, metrics_variables = state
            with keras.StatelessScope(state_mapping=_state_mapping(self, state)) as scope:
                self._proximal_step(*before)
                trainable = [scope.get_current_value(v) for v in self.trainable_variables]
            return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

        def test_step(self, state, data):
            logs, state = super().test_step(state, data)
            return self._without_training_logs(logs), state

else:

    class HomotopyStep:
        """`train_step(data)`: Keras' TensorFlow or PyTorch step, then the proximal update."""

        def train_step(self, data):
            before = self._before_step()  # γ and the iteration count before the step
            with self._twin_batches(data) as theta_data:
                logs = super().train_step(theta_data)
            if before is not None:
                self._proximal_step(*before)
            return logs

        def test_step(self, data):
            return self._without_training_logs(super().test_step(data))
