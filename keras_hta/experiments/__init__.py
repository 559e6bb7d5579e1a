"""The paper's experiment harness, built on the keras_hta library.

`compare` (SGD against HTA, `keras-hta compare`), `tune` (`keras-hta tune`),
`nonconvex` (Table 1), `data` (CIFAR-10 folders and tfds, MNIST-1D),
`models` (the CIFAR VGGs, a 1-D CNN, an MLP), `plots` and the `cli`. It uses
the library as any user would; nothing in `keras_hta` imports it. Its extra
dependencies: `pip install "keras-hta[experiments]"`.
"""


class DataUnavailableError(RuntimeError):
    """A data set could not be loaded (for instance, no download possible)."""
