"""Exporting a trained `HomotopyModel`'s merged network for serving, in the formats Keras' `model.export` offers."""

import importlib.util

import numpy as np

import keras
from keras_hta import backend as backend_lib
from keras_hta.merge import CannotCopyError, merge, named_inputs


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
# The format `export_model` writes by default on each backend: a PyTorch ExportedProgram on PyTorch, else a SavedModel.
DEFAULT_FORMAT = {"torch": "torch", "tensorflow": "tf_saved_model", "jax": "tf_saved_model"}


def export_problem(caller, format):
    """The error to raise when `caller` cannot export `format` on this backend, in one line, or `None`.

    Names the packages to install for this backend when only they are missing.
    """
    backend = backend_lib.BACKEND
    if format not in EXPORT_NEEDS:
        return ValueError(f"{caller}: argument `format` must be one of {tuple(EXPORT_NEEDS)}. "
                          f"Received: format={format!r}")
    needs = EXPORT_NEEDS[format].get(backend)
    if needs is None:
        offered = [f for f, per_backend in EXPORT_NEEDS.items() if backend in per_backend]
        where = ", ".join(sorted(EXPORT_NEEDS[format]))
        return ValueError(
            f"{caller}: Keras exports format={format!r} on the {where} backend(s), not on {backend}. Received: "
            f"format={format!r} with KERAS_BACKEND={backend}. On {backend}: one of {offered}; or save the model "
            "(model.save('m.keras'), which loads on every backend) and export it on another backend.")
    missing = [package for module, package in needs if importlib.util.find_spec(module) is None]
    if missing:
        return ImportError(f"{caller}: format={format!r} on the {backend} backend needs "
                           f"{', '.join(missing)}: pip install {' '.join(missing)}")
    return None


def export_model(model, path, format=None, how="theta", recompute_bn=None, verbose=False, **kwargs):
    """Writes the merged network in one of the formats of Keras' `model.export`.

    The merged network (see `keras_hta.merge`) holds no twin, anchor, mask
    or L (for θ, where Keras cannot copy the network, the wrapped network
    itself, which exporting leaves as it is); it is called once on a zero
    batch, as some formats (ONNX) require of a model, and then exported with
    Keras' own `model.export(path, format=format)`, in inference mode
    (`training=False`: augmentation layers, which default to training, pass
    their inputs through; Keras' own export of such a network would augment
    what it serves). What each format needs on each
    backend (`EXPORT_NEEDS`) is checked first: a format Keras
    does not offer on this backend, or a missing package, is refused in one
    line naming what to install, before anything is merged or written.

    | format | TensorFlow | JAX | PyTorch |
    |---|---|---|---|
    | `"tf_saved_model"` | yes | with TensorFlow | no |
    | `"onnx"` | tf2onnx, onnx | jax2onnx | onnx, onnxscript |
    | `"openvino"` | openvino | openvino | openvino |
    | `"litert"` | yes | no | litert-torch |
    | `"torch"` (a `torch.export` program, `.pt2`) | no | no | yes |

    Args:
        model: A `keras_hta.HomotopyModel`.
        path: String, where to write (a folder for `"tf_saved_model"`, a
            file for the others, e.g. `"model.onnx"`, `"model.pt2"`).
        format: One of the formats above; default (`None`) `"torch"` on
            PyTorch, `"tf_saved_model"` elsewhere.
        how: `"theta"` (default), `"eta"`, a twin index or `"average"`,
            as in `keras_hta.merge`.
        recompute_bn: Optional data set to recompute BatchNorm statistics
            from (see `keras_hta.merge`), advisable with `"average"`.
        verbose: Boolean, print Keras' export summary.
        **kwargs: Passed on to Keras' `model.export` (e.g. `opset_version`).

    Returns:
        The merged plain `keras.Model` that was exported.

    Raises:
        ValueError: a format Keras does not export on this backend, or
            Keras' own export of this network fails here (its reason in one
            line; `keras_hta.merge(model).export(...)` fails alike).
        ImportError: a package the format needs here is not installed.

    Example:

    ```python
    import numpy as np, keras
    import keras_hta

    inputs = keras.Input((4,))
    model = keras_hta.HomotopyModel(inputs, keras.layers.Dense(2)(inputs))
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0)
    if keras.backend.backend() == "torch":
        keras_hta.export_model(model, "model.pt2")     # torch.export.load("model.pt2")
    ```
    """
    format = DEFAULT_FORMAT[backend_lib.BACKEND] if format is None else format
    problem = export_problem("export_model", format)
    if problem is not None:
        raise problem
    plain = _merged(model, how, recompute_bn)
    _call_once(plain)
    try:
        _in_inference_mode(plain).export(str(path), format=format, verbose=verbose, **kwargs)
    except Exception as error:  # what Keras' exporter or the format's library raises, said in one line
        text = " ".join(str(error).split())
        raise ValueError(f"export_model: Keras' model.export of '{plain.name}' in format={format!r} failed on the "
                         f"{backend_lib.BACKEND} backend: {type(error).__name__}: {text[:300]}") from error
    return plain


def export_saved_model(model, path, how="theta", recompute_bn=None, verbose=False):
    """Writes a TF SavedModel of the merged network, ready for TF Serving.

    `keras_hta.export_model(model, path, format="tf_saved_model")`: the SavedModel
    holds only the plain network's variables (no twin, anchor, mask or L),
    has a `serve` endpoint (also the `serving_default` signature) whose
    inputs carry the network's input names, and loads with
    `tf.saved_model.load` without keras-hta. It needs TensorFlow installed:
    on the TensorFlow backend, and on JAX (Keras converts the JAX
    functions). On PyTorch Keras cannot write a SavedModel: use
    `keras_hta.export_model(model, "model.pt2")` there (or `format="onnx"`), or
    save the model (`model.save("m.keras")`, which loads on every backend)
    and export it on TensorFlow or JAX.

    Args and return value: as `export_model`'s, `path` being the SavedModel
    directory to write.

    Raises:
        ImportError: TensorFlow is not installed.
        ValueError: on the PyTorch backend.

    Example:

    ```python
    keras_hta.export_saved_model(model, "served/1")
    served = tf.saved_model.load("served/1")
    predictions = served.serve(images)
    ```
    """
    problem = export_problem("export_saved_model", "tf_saved_model")
    if problem is not None:
        raise problem
    return export_model(model, path, "tf_saved_model", how=how, recompute_bn=recompute_bn, verbose=verbose)


def _merged(model, how, recompute_bn):
    """The network to export: a merged copy; θ's own network where Keras cannot copy it (exporting reads it only)."""
    try:
        return merge(model, how=how, recompute_bn=recompute_bn)
    except CannotCopyError:
        if how not in ("theta", 0) or recompute_bn is not None:
            raise
        return model.network


def _in_inference_mode(plain):
    """A Functional model calling `plain` with `training=False`, with its inputs' names; `plain` where they are unknown.

    Keras' exporters call the model without `training`, and its random
    augmentation layers (`RandomFlip`, `RandomZoom`, ...) default to
    `training=True`: a network holding them would serve augmented outputs.
    """
    inputs = named_inputs(plain)
    if inputs is None:
        return plain
    return keras.Model(inputs, plain(inputs, training=False), name=plain.name)


def _call_once(plain):
    """Calls a network with known inputs once on a batch of zeros (unknown sizes: 1).

    Functional models take their inputs' structure (`model.input`); a
    Sequential model, which has no `input` until called, its one input.
    """
    inputs = getattr(plain, "inputs", None)
    if not inputs:
        return
    zeros = [np.zeros([1 if d is None else d for d in t.shape], keras.backend.standardize_dtype(t.dtype))
             for t in inputs]
    try:
        structure = plain.input
    except (AttributeError, ValueError):
        structure = None
    batch = zeros[0] if structure is None and len(zeros) == 1 else (
        zeros if structure is None else keras.tree.pack_sequence_as(structure, zeros))
    plain(batch, training=False)
