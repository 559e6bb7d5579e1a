"""Writes the checkpoints that test_checkpoint_compat.py loads with later code.

    KERAS_BACKEND=tensorflow python tests/checkpoints/write.py   # NAME.keras
    KERAS_BACKEND=jax python tests/checkpoints/write.py          # NAME.jax.keras
    KERAS_BACKEND=torch python tests/checkpoints/write.py        # NAME.torch.keras

Each file is a HomotopyModel of `checkpoint_models.CHECKPOINTS[NAME]` trained
2 epochs on that backend (TensorFlow's files, the first written, have no
backend in their name, `checkpoint_models.stem`); `expected.npz` holds, per
file, its twins' outputs, L and the HTA epoch as saved, and the loss and twins'
outputs after one more epoch of the same training. Run it only to add checkpoints
under new names or for another backend: files that exist are kept, since
rewriting them with new code would test nothing.
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
    backend = keras.backend.backend()
    written_by = f"keras-hta {commit.strip()} keras {keras.__version__} backend {backend}"
    expected = {}
    for name in cm.CHECKPOINTS:
        stem = cm.stem(name, backend)
        path = os.path.join(here, f"{stem}.keras")
        if os.path.exists(path):
            print(f"{path} exists: kept (write new checkpoints under new names)")
            continue
        keras.utils.set_random_seed(11)
        model = cm.build(name)
        cm.fit(model, epochs=2)
        model.save(path)
        for k, out in enumerate(cm.twin_outputs(model)):
            expected[f"{stem}/saved_outputs_{k}"] = out
        expected[f"{stem}/saved_l"] = np.float32(model.homotopy_l.numpy())
        expected[f"{stem}/saved_epoch"] = np.int64(model.homotopy_epoch.numpy())
        history = cm.fit(model, epochs=1)
        expected[f"{stem}/next_loss"] = np.float32(history.history["loss"][-1])
        expected[f"{stem}/next_l"] = np.float32(history.history["homotopy_l"][-1])
        for k, out in enumerate(cm.twin_outputs(model)):
            expected[f"{stem}/next_outputs_{k}"] = out
        expected[f"{stem}/written_by"] = np.array(written_by)
        print(f"wrote {path}")
    npz = os.path.join(here, "expected.npz")
    if os.path.exists(npz):
        expected = {**expected, **np.load(npz)}  # the old checkpoints' values stay as written
    np.savez(npz, **expected)


if __name__ == "__main__":
    main()
