"""The paper's experiment harness, built on the keras_hta library.

`compare` (SGD against HTA, `keras-hta compare`), `tune` (`keras-hta tune`),
`nonconvex` (Table 1), `data` (CIFAR-10 folders and tfds, MNIST-1D),
`models` (the CIFAR VGGs, a 1-D CNN, an MLP), `plots` and the `cli`. It uses
the library as any user would; nothing in `keras_hta` imports it. Its extra
dependencies: `pip install "keras-hta[experiments]"`.
"""

import os
import tempfile


def write_atomic(path, write, mode="w"):
    """Calls `write(file)` on a temporary file beside `path`, then renames it over `path`.

    A reader, or a run killed mid-write, sees the old file or the new one,
    never part of one. The file gets the permissions `open` would give it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600)
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# (training examples, test examples, classes) of the built-in data sets, known before loading them (and before
# Keras starts, which `data` imports): MNIST-1D's generator splits its 5,000 samples 0.8 / 0.2; CIFAR-10
# (tensorflow_datasets) is 50,000 / 10,000.
SIZES = {"mnist1d": (4000, 1000, 10), "cifar10": (50000, 10000, 10)}


class DataUnavailableError(RuntimeError):
    """A data set could not be loaded (for instance, no download possible)."""
