"""keras-hta: the Homotopy Training Algorithm for Keras 3."""

from keras_hta import schedules
from keras_hta.export import export_saved_model
from keras_hta.homotopy_model import HomotopyModel
from keras_hta.homotopy_scheduler import HomotopyScheduler
from keras_hta.merge import merge, recompute_batchnorm
from keras_hta.multi_worker import multi_worker_strategy

__version__ = "0.1.0"

__all__ = [
    "export_saved_model",
    "HomotopyModel",
    "HomotopyScheduler",
    "merge",
    "multi_worker_strategy",
    "recompute_batchnorm",
    "schedules",
]
