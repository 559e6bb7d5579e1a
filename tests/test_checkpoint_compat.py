"""Checkpoints written by earlier code load and train on with this code.

tests/checkpoints/ holds `.keras` files of trained HomotopyModels written by
earlier commits on each backend (`expected.npz` names the commit and backend
of each file), with what that code computed from them: each twin's outputs as
saved, L and the HTA epoch, and the loss, L and outputs after one more epoch
of the same training (tests/checkpoints/write.py). Every file loads on every
backend: a JAX or PyTorch file holds the HTA epoch as int32, TensorFlow's as
int64. A change that moves a weight's checkpoint path
(a twin rebuilt as another class, say), renames a config key, or drops an
anchor, mask or optimizer slot fails here, on every backend, instead of in a
user's resumed run.
"""

import os

import numpy as np
import pytest

import keras
import checkpoint_models as cm
from conftest import BACKEND

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
EXPECTED = dict(np.load(os.path.join(HERE, "expected.npz")))
# One checkpoint per file, named by checkpoint_models.stem: "NAME" (written on TensorFlow) or "NAME.BACKEND".
FILES = sorted({key.split("/", 1)[0] for key in EXPECTED})


def _name_and_backend(stem):
    """The checkpoint_models name of `stem`'s network and the backend that wrote the file."""
    return stem.split(".")[0], str(EXPECTED[f"{stem}/written_by"]).rsplit(" ", 1)[1]


def test_every_checkpoint_file_has_its_expected_values_and_every_model_a_file_per_backend():
    on_disk = sorted(f[: -len(".keras")] for f in os.listdir(HERE) if f.endswith(".keras"))
    assert on_disk == FILES
    assert all(stem == cm.stem(*_name_and_backend(stem)) for stem in FILES)  # named for the backend that wrote it
    assert sorted(map(_name_and_backend, FILES)) == sorted(
        (name, backend) for name in cm.CHECKPOINTS for backend in ("tensorflow", "jax", "torch"))


@pytest.mark.parametrize("stem", FILES)
def test_a_checkpoint_of_earlier_code_loads_and_trains_on_as_it_would_have(stem):
    want = {key.split("/", 1)[1]: value for key, value in EXPECTED.items() if key.startswith(f"{stem}/")}
    name, written_on = _name_and_backend(stem)
    # The same float32 math as when written; on another backend, summed in another order.
    atol = 1e-6 if written_on == BACKEND else 1e-5
    model = keras.models.load_model(os.path.join(HERE, f"{stem}.keras"))

    network, _, _ = cm.CHECKPOINTS[name]
    assert type(model.network) is type(network())  # Sequential, the Functional subclass, the subclassed model
    assert float(model.homotopy_l.numpy()) == pytest.approx(float(want["saved_l"]))
    assert int(model.homotopy_epoch.numpy()) == int(want["saved_epoch"])
    saved = cm.twin_outputs(model)
    assert len(saved) == sum(key.startswith("saved_outputs_") for key in want)
    for k, got in enumerate(saved):
        np.testing.assert_allclose(got, want[f"saved_outputs_{k}"], atol=atol, err_msg=f"twin {k} as saved")

    history = cm.fit(model, epochs=1)  # the schedule goes on from the saved epoch; anchors, masks, slots as saved
    assert history.history["homotopy_l"][-1] == pytest.approx(float(want["next_l"]))
    np.testing.assert_allclose(history.history["loss"][-1], want["next_loss"], rtol=10 * atol)
    for k, got in enumerate(cm.twin_outputs(model)):
        np.testing.assert_allclose(got, want[f"next_outputs_{k}"], atol=10 * atol, err_msg=f"twin {k} one epoch on")
