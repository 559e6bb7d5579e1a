"""Exporting a trained `HomotopyModel` as a TF SavedModel for serving."""

from keras_hta import step as step_lib
from keras_hta.merge import merge


def export_saved_model(model, path, how="theta", recompute_bn=None, verbose=False):
    """Writes a TF SavedModel of the merged network, ready for TF Serving.

    The SavedModel holds only the plain network's variables (no twin,
    anchor, mask or L), has a `serve` endpoint (also the
    `serving_default` signature) whose inputs carry the network's input
    names, and loads with `tf.saved_model.load` without keras-hta. It is
    Keras' own `model.export(path, format="tf_saved_model")` of the merged
    network, so it needs TensorFlow installed: on the TensorFlow backend, and
    on JAX (Keras converts the JAX functions). On PyTorch Keras cannot write
    a SavedModel; save the model (`model.save("m.keras")`, which loads on
    every backend) and export it on TensorFlow or JAX, or export the merged
    network in another format Keras offers there (`merge(model).export(path,
    format="onnx")` with the `onnx` package).

    Args:
        model: A `keras_hta.HomotopyModel`.
        path: String, the SavedModel directory to write.
        how: `"theta"` (default), `"eta"`, a twin index or `"average"`,
            as in `keras_hta.merge`.
        recompute_bn: Optional data set to recompute BatchNorm statistics
            from (see `keras_hta.merge`), advisable with `"average"`.
        verbose: Boolean, print Keras' export summary.

    Returns:
        The merged plain `keras.Model` that was exported.

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
    problem = step_lib.saved_model_problem("export_saved_model")
    if problem is not None:
        raise problem
    plain = merge(model, how=how, recompute_bn=recompute_bn)
    plain.export(str(path), format="tf_saved_model", verbose=verbose)
    return plain
