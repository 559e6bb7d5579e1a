"""keras-hta: the Homotopy Training Algorithm for Keras 3."""

import pathlib
import re

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "keras_hta" / "__init__.py").read_text()).group(1)

setup(
    name="keras-hta",
    version=version,
    description="The Homotopy Training Algorithm (HTA) as a drop-in for Keras 3 model.fit",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["keras_hta", "keras_hta.*"]),
    python_requires=">=3.10",
    # The library needs Keras 3, NumPy and one Keras backend, chosen through an
    # extra and KERAS_BACKEND: "keras-hta[tensorflow]" (or "[cpu]", the smaller
    # tensorflow-cpu wheel), "keras-hta[jax]" or "keras-hta[torch]".
    # Keras: the lowest version CI installs and tests (3.15.1); older ones are not tested.
    install_requires=[
        "keras>=3.15",
        "numpy>=1.26",
    ],
    entry_points={"console_scripts": ["keras-hta = keras_hta.experiments.cli:main"]},
    extras_require={
        "tensorflow": ["tensorflow>=2.16"],
        "cpu": ["tensorflow-cpu>=2.16"],
        "jax": ["jax>=0.4.30"],
        # On a machine without a GPU, install PyTorch's CPU build first (an extra cannot choose
        # an index): pip install torch --index-url https://download.pytorch.org/whl/cpu
        "torch": ["torch>=2.1"],
        "tuner": ["keras-tuner>=1.4"],  # keras_hta.tuning.HomotopyHyperModel
        # The paper's harness (keras_hta.experiments, the keras-hta command).
        "experiments": [
            "scipy>=1.11",  # quasi-Newton for the non-convex benchmark
            "matplotlib>=3.7",
            "tensorflow-datasets>=4.9",
            "importlib_resources",  # tfds imports it and does not declare it
            "keras-tuner[bayesian]>=1.4",  # keras-hta tune; scikit-learn for BayesianOptimization
            "tensorboard>=2.16",
            "mnist1d>=0.0.2",  # generates MNIST-1D locally: the offline default data set
            "requests",  # mnist1d imports it
        ],
        # -n 2: the suite on two workers; mpmath: the proximal step's high-precision reference
        "test": ["pytest>=7.3", "pytest-xdist>=3.0", "scipy>=1.11", "mpmath>=1.3"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "License :: OSI Approved :: Apache Software License",
    ],
)
