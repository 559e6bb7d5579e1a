"""keras-hta: the Homotopy Training Algorithm for Keras 3.

The library: `HomotopyModel`, the L `schedules`, `HomotopyScheduler`,
`merge` / `recompute_batchnorm`, `export_model` / `export_saved_model` and
`multi_worker_strategy`; `keras_hta.tuning.HomotopyHyperModel` (needs
keras-tuner) is imported from its module. The paper's experiment harness
lives in `keras_hta.experiments` and is never imported from here.
"""

import os as _os
import sys as _sys

__version__ = "0.4.0"

__all__ = [
    "export_model",
    "export_saved_model",
    "HomotopyModel",
    "HomotopyScheduler",
    "merge",
    "multi_worker_strategy",
    "recompute_batchnorm",
    "schedules",
]

_WHERE = {
    "export_model": "keras_hta.export",
    "export_saved_model": "keras_hta.export",
    "HomotopyModel": "keras_hta.homotopy_model",
    "HomotopyScheduler": "keras_hta.homotopy_scheduler",
    "merge": "keras_hta.merge",
    "multi_worker_strategy": "keras_hta.multi_worker",
    "recompute_batchnorm": "keras_hta.merge",
    "schedules": None,  # the module itself
}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'keras_hta' has no attribute {name!r}")
    import importlib

    value = importlib.import_module(f"keras_hta.{name}") if _WHERE[name] is None else getattr(
        importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


# Imported at once, so that Keras finds the registered classes
# ("keras_hta>HomotopyModel") when it loads a saved model after a plain
# `import keras_hta`. Only the `keras-hta` command (or `python -m
# keras_hta.experiments.cli`, during which `sys.argv[0]` is "-m" while the
# package is imported) defers them (through `__getattr__` above): it imports
# what each subcommand needs, so that `keras-hta --help` answers without
# importing Keras, and `compare --threads` can set TensorFlow's threads
# before TensorFlow starts. `multi_worker_strategy`
# (TensorFlow's tf.distribute) is always imported on first use, so that the
# library imports without TensorFlow on the JAX and PyTorch backends.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") not in ("keras-hta", "-m"):
    from keras_hta import schedules
    from keras_hta.export import export_model, export_saved_model
    from keras_hta.homotopy_model import HomotopyModel
    from keras_hta.homotopy_scheduler import HomotopyScheduler
    from keras_hta.merge import merge, recompute_batchnorm
