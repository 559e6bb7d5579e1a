"""f of a twin: the compiled loss on the twin's outputs, plus the twin's own losses (regularizers, `add_loss`)."""

import keras
from keras import ops
from keras_hta import penalties as penalties_lib


class _CompiledLoss(keras.Model):
    """A model with no layers: its `compute_loss` is the compiled loss alone."""

    def __init__(self, output_names):
        super().__init__(name="twin_loss")
        self.output_names = output_names  # as Functional sets it: matches dict losses and targets


def compiled_loss(output_names, loss, loss_weights=None):
    """A weightless model compiled with `loss`: f of a twin without θ's regularizers or metrics.

    Its `compute_loss(y=..., y_pred=..., sample_weight=...)` applies `loss`
    and `loss_weights` exactly as compiling a network with these
    `output_names` would; per-output loss trackers, if Keras makes them, are
    its own and reported nowhere. Returns None when `loss` is None.
    """
    if loss is None:
        return None
    model = _CompiledLoss(output_names)
    model.compile(optimizer=None, loss=loss, loss_weights=loss_weights)
    return model


def twin_f(compiled, y, y_pred, sample_weight, extras, replicas=1):
    """The compiled loss (a `compiled_loss` model, or None) plus `extras`, each extra divided by `replicas`.

    As Keras' `compute_loss` gives θ's: every replica's loss is divided by the
    number of replicas (the compiled loss does so itself).
    """
    losses = [] if compiled is None else [compiled.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)]
    for extra in extras:  # regularizers and add_loss
        extra = ops.sum(extra)
        if not keras.backend.is_float_dtype(extra.dtype):
            extra = ops.cast(extra, keras.config.floatx())
        losses.append(extra / replicas)
    if not losses:
        raise ValueError("No loss to compute. Provide a `loss` argument in `compile()`.")
    return penalties_lib.add_n(losses)
