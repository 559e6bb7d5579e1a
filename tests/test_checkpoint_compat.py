"""Checkpoints written by earlier code load and train on with this code.

tests/checkpoints/ holds `.keras` files of trained HomotopyModels written by
an earlier commit on TensorFlow (`expected.npz` names it), with what that code
computed from them: each twin's outputs as saved, L and the HTA epoch, and the
loss, L and outputs after one more epoch of the same training
(tests/checkpoints/write.py). A change that moves a weight's checkpoint path
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
# The files were written on TensorFlow: the same float32 math, summed in another order elsewhere.
ATOL = 1e-6 if BACKEND == "tensorflow" else 1e-5


@pytest.mark.parametrize("name", sorted(cm.CHECKPOINTS))
def test_a_checkpoint_of_earlier_code_loads_and_trains_on_as_it_would_have(name):
    want = {key.split("/", 1)[1]: value for key, value in EXPECTED.items() if key.startswith(f"{name}/")}
    assert want, f"no expected values for {name}"
    model = keras.models.load_model(os.path.join(HERE, f"{name}.keras"))

    network, _, _ = cm.CHECKPOINTS[name]
    assert type(model.network) is type(network())  # Sequential, the Functional subclass, the subclassed model
    assert float(model.homotopy_l.numpy()) == pytest.approx(float(want["saved_l"]))
    assert int(model.homotopy_epoch.numpy()) == int(want["saved_epoch"])
    saved = cm.twin_outputs(model)
    assert len(saved) == sum(key.startswith("saved_outputs_") for key in want)
    for k, got in enumerate(saved):
        np.testing.assert_allclose(got, want[f"saved_outputs_{k}"], atol=ATOL, err_msg=f"twin {k} as saved")

    history = cm.fit(model, epochs=1)  # the schedule goes on from the saved epoch; anchors, masks, slots as saved
    assert history.history["homotopy_l"][-1] == pytest.approx(float(want["next_l"]))
    np.testing.assert_allclose(history.history["loss"][-1], want["next_loss"], rtol=10 * ATOL)
    for k, got in enumerate(cm.twin_outputs(model)):
        np.testing.assert_allclose(got, want[f"next_outputs_{k}"], atol=10 * ATOL, err_msg=f"twin {k} one epoch on")
