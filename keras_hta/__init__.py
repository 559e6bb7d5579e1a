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
    "multi_worker_strategy": "keras_hta.backend",
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


def _run_as_the_command():
    """Whether this process is the `keras-hta` command, which imports what each subcommand needs itself.

    `import keras_hta` imports the library at once (below), so that Keras
    finds the registered classes ("keras_hta>HomotopyModel") when it loads a
    saved model: Keras imports only its own packages when loading. The
    console script, though, must import this package before any of its own
    code runs, and it needs Keras unstarted: `keras-hta --help` answers
    without importing Keras, and `compare --threads` sets TensorFlow's
    threads before TensorFlow starts. No argument reaches a package's import,
    so the command is recognised by the program's name: the `keras-hta`
    script, or `python -m keras_hta.experiments.cli` (whose `sys.argv[0]` is
    "-m" while packages import). There, the names load on first use
    (`__getattr__` above). `multi_worker_strategy` (TensorFlow's
    tf.distribute) always loads on first use, so that the library imports
    without TensorFlow on the JAX and PyTorch backends.
    """
    return _os.path.basename(_sys.argv[0] if _sys.argv else "") in ("keras-hta", "-m")


if not _run_as_the_command():
    from keras_hta import schedules
    from keras_hta.export import export_model, export_saved_model
    from keras_hta.homotopy_model import HomotopyModel
    from keras_hta.homotopy_scheduler import HomotopyScheduler
    from keras_hta.merge import merge, recompute_batchnorm
