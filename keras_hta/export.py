"""Exporting a trained `HomotopyModel` as a TF SavedModel for serving."""

from keras_hta.merge import merge


def export_saved_model(model, path, how="theta", recompute_bn=None, verbose=False):
    """Writes a TF SavedModel of the merged network, ready for TF Serving.

    The SavedModel holds only the plain network's variables (no twin,
    anchor, mask or L), has a `serve` endpoint (also the
    `serving_default` signature) whose inputs carry the network's input
    names, and loads with `tf.saved_model.load` without keras-hta.

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

    Example:

    ```python
    keras_hta.export_saved_model(model, "served/1")
    served = tf.saved_model.load("served/1")
    predictions = served.serve(images)
    ```
    """
    plain = merge(model, how=how, recompute_bn=recompute_bn)
    plain.export(str(path), format="tf_saved_model", verbose=verbose)
    return plain
