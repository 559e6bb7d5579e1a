"""Writes the checkpoints that test_checkpoint_compat.py loads with later code.

    KERAS_BACKEND=tensorflow python tests/checkpoints/write.py

Each `NAME.keras` is a HomotopyModel of `checkpoint_models.CHECKPOINTS[NAME]`
trained 2 epochs; `expected.npz` holds, per checkpoint, its twins' outputs,
L and the HTA epoch as saved, and the loss and twins' outputs after one more
epoch of the same training. Run it only to add a checkpoint under a new name:
rewriting the files with new code would test nothing.
"""

import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(here))

import numpy as np  # noqa: E402

import keras  # noqa: E402
import checkpoint_models as cm  # noqa: E402


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here).stdout
    written_by = f"keras-hta {commit.strip()} keras {keras.__version__} backend {keras.backend.backend()}"
    expected = {}
    for name in cm.CHECKPOINTS:
        path = os.path.join(here, f"{name}.keras")
        if os.path.exists(path):
            print(f"{path} exists: kept (write new checkpoints under new names)")
            continue
        keras.utils.set_random_seed(11)
        model = cm.build(name)
        cm.fit(model, epochs=2)
        model.save(path)
        for k, out in enumerate(cm.twin_outputs(model)):
            expected[f"{name}/saved_outputs_{k}"] = out
        expected[f"{name}/saved_l"] = np.float32(model.homotopy_l.numpy())
        expected[f"{name}/saved_epoch"] = np.int64(model.homotopy_epoch.numpy())
        history = cm.fit(model, epochs=1)
        expected[f"{name}/next_loss"] = np.float32(history.history["loss"][-1])
        expected[f"{name}/next_l"] = np.float32(history.history["homotopy_l"][-1])
        for k, out in enumerate(cm.twin_outputs(model)):
            expected[f"{name}/next_outputs_{k}"] = out
        expected[f"{name}/written_by"] = np.array(written_by)
        print(f"wrote {path}")
    npz = os.path.join(here, "expected.npz")
    if os.path.exists(npz):
        expected = {**expected, **np.load(npz)}  # the old checkpoints' values stay as written
    np.savez(npz, **expected)


if __name__ == "__main__":
    main()
