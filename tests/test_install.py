"""What the package declares about its dependencies is what CI installs and tests."""

import pathlib
import re

import keras

from keras_hta import compat

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _minor(version):
    return tuple(int(part) for part in version.split(".")[:2])


def test_the_declared_keras_floor_is_the_keras_ci_tests():
    floor = re.search(r'"keras>=([0-9.]+)"', (ROOT / "setup.py").read_text()).group(1)
    pinned = re.search(r'KERAS="keras==([0-9.]+)"', (ROOT / ".ci" / "run").read_text()).group(1)
    # CI installs the lowest Keras setup.py allows; the error messages and the README name the same.
    assert _minor(pinned) == _minor(floor), (pinned, floor)
    assert compat._TESTED.split()[0] == floor
    assert f"Keras ≥ {floor}" in (ROOT / "README.md").read_text()
    assert _minor(keras.__version__) >= _minor(floor)  # the Keras these tests run on is allowed


def test_ci_pins_a_cpu_build_of_pytorch_and_says_where_it_comes_from():
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'TORCH="torch==[0-9.]+"', run)
    assert "download.pytorch.org/whl/cpu" in run  # the public CPU index, for machines without the local wheel
    assert "--index-url https://download.pytorch.org/whl/cpu" in (ROOT / "README.md").read_text()
