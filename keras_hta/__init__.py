"""keras-hta: the Homotopy Training Algorithm for Keras 3."""

from keras_hta import schedules
from keras_hta.homotopy_model import HomotopyModel
from keras_hta.homotopy_scheduler import HomotopyScheduler
from keras_hta.merge import merge, recompute_batchnorm

__version__ = "0.1.0"

__all__ = [
    "HomotopyModel",
    "HomotopyScheduler",
    "merge",
    "recompute_batchnorm",
    "schedules",
]
