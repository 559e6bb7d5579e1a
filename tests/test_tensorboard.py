"""The standard keras.callbacks.TensorBoard records HTA's scalars."""

import pytest
import numpy as np

import keras
import keras_hta as hta
from conftest import dense_network, regression_data

pytestmark = [pytest.mark.harness, pytest.mark.tensorflow_only]  # run once, in the TensorFlow pass (tests/conftest.py)
tf = pytest.importorskip("tensorflow")
EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator



def test_event_file_holds_l_coupling_anchor_and_twin_losses(tmp_path):
    x, y = regression_data(n=32)
    model = hta.HomotopyModel.from_model(dense_network(hidden=4), homotopy_l=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    schedule = hta.schedules.Linear(0.5, 0.2, -0.1)
    callbacks = [keras.callbacks.TensorBoard(str(tmp_path)), hta.HomotopyScheduler(schedule)]  # TensorBoard first
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=callbacks)
    events = EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
    events.Reload()
    for key in ("homotopy_l", "coupling", "anchor_penalty", "f_theta", "f_eta", "loss"):
        tag = f"epoch_{key}"
        assert tag in events.Tags()["tensors"], tag
        logged = [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        np.testing.assert_allclose(logged, history.history[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(history.history["homotopy_l"], [0.5, 0.4, 0.3, 0.2], rtol=1e-6)
