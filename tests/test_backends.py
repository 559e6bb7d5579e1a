"""HomotopyModel on every Keras backend: without TensorFlow, across backends, and
distributed with `keras.distribution` on JAX."""

import importlib.util
import json
import os
import sys
import textwrap

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import BACKEND, dense_network, needs, regression_data, run_bounded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_BACKENDS = [b for b in ("tensorflow", "jax", "torch") if importlib.util.find_spec(b)]

# Runs in a fresh process where `import tensorflow` fails (as where it is not
# installed): one proximal step against the closed form computed here in
# float64 from the weights before and the optimizer's step, merge, and a .keras
# round trip; prints what it measured as JSON.
_WITHOUT_TF = textwrap.dedent(
    """
    import json, sys
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
    import numpy as np, keras, keras_hta as hta
    assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    inputs = keras.Input((4,))
    network = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(3, activation="tanh")(inputs)))
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.05, anchor="init", split="random", seed=1)
    model.twin(1).set_weights([w + 0.3 for w in model.twin(1).get_weights()])
    lr = 0.2
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    from reference import proximal_solve_twins
    before = [[np.asarray(v, np.float64) for v in model.twin(k).get_weights()] for k in range(2)]
    anchors = [np.asarray(keras.ops.convert_to_numpy(a), np.float64) for a in model.anchors]
    masks = [[keras.ops.convert_to_numpy(m) for m in ms] for ms in model.anchor_masks]
    # f's gradient per twin, from a plain copy of each twin on the same batch
    grads = []
    for k in range(2):
        plain = hta.merge(model, how=k)
        plain.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
        start = [np.asarray(w, np.float64) for w in plain.get_weights()]
        plain.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # w - 1.0 * grad
        grads.append([s - np.asarray(w, np.float64) for s, w in zip(start, plain.get_weights())])
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    w_prime = [[b - lr * g for b, g in zip(before[k], grads[k])] for k in range(2)]
    want = proximal_solve_twins(w_prime, masks, anchors, lr, 0.05)
    worst = max(float(np.max(np.abs(got - w))) for k in range(2) for got, w in zip(model.twin(k).get_weights(), want[k]))
    merged = hta.merge(model)
    merge_gap = float(np.max(np.abs(merged.predict(x, verbose=0) - model.predict(x, verbose=0))))
    model.save(sys.argv[2])
    restored = keras.models.load_model(sys.argv[2])
    reload_gap = float(np.max(np.abs(restored.predict(x, verbose=0) - model.predict(x, verbose=0))))
    print(json.dumps({"step": worst, "merge": merge_gap, "reload": reload_gap,
                      "tensorflow": "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None}))
    """
)


@pytest.mark.extras
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_without_tensorflow_one_proximal_step_merge_and_reload(backend, tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("runs once, in the TensorFlow pass, for each other backend installed")
    needs(backend, " beside TensorFlow")
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    out = run_bounded([sys.executable, "-c", _WITHOUT_TF, backend, str(tmp_path / "m.keras")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["tensorflow"]
    assert got["step"] < 1e-6, got  # one proximal step = the float64 closed form
    assert got["merge"] < 1e-6 and got["reload"] < 1e-6, got


@pytest.mark.extras
@pytest.mark.parametrize("target", ["tensorflow", "jax", "torch"])
def test_a_model_saved_on_this_backend_loads_on_every_other(target, tmp_path):
    if target == BACKEND:
        pytest.skip("the same backend: tests/test_homotopy_model_saving.py")
    needs(target, f" beside {BACKEND}")
    x, y = regression_data(n=32)
    model = hta.HomotopyModel.from_model(dense_network(hidden=5, batch_norm=True), homotopy_l=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[hta.HomotopyScheduler(hta.schedules.Piecewise([1], [0.1, 0.05]))])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", model.predict(x, verbose=0))
    np.save(tmp_path / "want_eta.npy", model.twin(1).predict(x, verbose=0))
    script = textwrap.dedent(
        """
        import sys, numpy as np, keras, keras_hta as hta
        model = keras.models.load_model("m.keras")
        x = np.load("x.npy")
        assert abs(float(model.homotopy_l.numpy()) - 0.05) < 1e-7 and int(model.homotopy_epoch.numpy()) == 2
        np.testing.assert_allclose(model.predict(x, verbose=0), np.load("want.npy"), atol=1e-5)
        np.testing.assert_allclose(model.twin(1).predict(x, verbose=0), np.load("want_eta.npy"), atol=1e-5)
        np.testing.assert_allclose(hta.merge(model).predict(x, verbose=0), np.load("want.npy"), atol=1e-5)
        model.fit(x, x[:, :3], epochs=1, verbose=0)  # and it trains there
        print("ok", keras.backend.backend())
        """
    )
    env = dict(os.environ, KERAS_BACKEND=target, PYTHONPATH=ROOT)
    out = run_bounded([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"ok {target}"


def _train_data_parallel(devices, x, y):
    if devices is None:
        keras.distribution.set_distribution(None)
    else:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        keras.utils.set_random_seed(11)
        model = hta.HomotopyModel.from_model(dense_network(hidden=8, batch_norm=True), split="random", seed=2,
                                             homotopy_l=0.5)
        model.twin(1).set_weights([w * 1.1 for w in model.twin(1).get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
                            callbacks=[hta.HomotopyScheduler(hta.schedules.Geometric(0.5, 0.1, 0.5))])
        return [np.asarray(w) for w in model.weights], history.history
    finally:
        keras.distribution.set_distribution(None)


def test_jax_data_parallel_over_two_devices_equals_one_device():
    if BACKEND != "jax":
        pytest.skip("keras.distribution.DataParallel: the JAX backend")
    import jax

    devices = keras.distribution.list_devices("cpu")
    if len(devices) < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set by conftest)")
    x, y = regression_data(n=64)
    single, h1 = _train_data_parallel(None, x, y)
    double, h2 = _train_data_parallel(devices[:2], x, y)
    assert len(jax.devices()) >= 2
    for a, b in zip(single, double):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("loss", "f_theta", "f_eta", "coupling", "anchor_penalty", "homotopy_l"):
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-5, err_msg=key)
    assert h2["coupling"][-1] > 0 and single[0].shape == double[0].shape


def test_jit_compile_where_the_backend_supports_it():
    """`jit_compile=True` (XLA on TensorFlow and JAX) trains exactly as the default step."""
    if BACKEND == "torch":
        pytest.skip("torch.compile of the twins' step is not supported (README: backends)")
    x, y = regression_data(n=32)
    weights = []
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        model = hta.HomotopyModel.from_model(dense_network(hidden=6), homotopy_l=0.05, anchor="init")
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse", jit_compile=jit)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        weights.append([np.asarray(w) for w in model.weights])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_export_saved_model_on_torch_says_what_to_do(tmp_path):
    if BACKEND != "torch":
        pytest.skip("the torch backend: tests/test_export.py exports on the others")
    model = hta.HomotopyModel.from_model(dense_network())
    with pytest.raises(ValueError, match="not on torch.*model.save.*export it on another backend"):
        hta.export_saved_model(model, tmp_path / "served")
    assert not (tmp_path / "served").exists()


def test_export_model_on_torch_writes_a_torch_program_that_predicts_as_theta(tmp_path):
    if BACKEND != "torch":
        pytest.skip("format='torch' is PyTorch's (tests/test_export.py: the SavedModel elsewhere)")
    import torch

    x, y = regression_data(n=16)
    model = hta.HomotopyModel.from_model(dense_network(hidden=6, batch_norm=True), homotopy_l=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # The default format here; a batch of any size as Keras' torch export takes it (its default: 1).
    plain = hta.export_model(model, tmp_path / "model.pt2", dynamic_shapes={0: torch.export.Dim("batch", max=1024)})
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    served = program(torch.as_tensor(x)).detach().numpy()
    want = model.predict(x, verbose=0)
    assert served.shape == want.shape == (16, y.shape[1])
    np.testing.assert_allclose(served, want, atol=1e-6)
    assert len(plain.weights) == len(model.network.weights)


def test_export_model_refuses_in_one_line_before_merging_or_writing(tmp_path):
    from keras_hta.export import EXPORT_NEEDS

    model = hta.HomotopyModel.from_model(dense_network())
    refused = {"h5": (ValueError, "must be one of")}
    elsewhere = [f for f, backends in EXPORT_NEEDS.items() if BACKEND not in backends]
    refused[elsewhere[0]] = (ValueError, f"not on {BACKEND}")  # every backend lacks one format
    missing = [(f, [p for m, p in needs if importlib.util.find_spec(m) is None])
               for f, backends in EXPORT_NEEDS.items() for b, needs in backends.items() if b == BACKEND]
    missing = [(f, packages) for f, packages in missing if packages]
    if missing:  # e.g. openvino: named with the pip line for this backend
        fmt, packages = missing[0]
        refused[fmt] = (ImportError, "pip install " + " ".join(packages))
    for fmt, (error, words) in refused.items():
        with pytest.raises(error) as raised:
            hta.export_model(model, tmp_path / "out", format=fmt)
        message = str(raised.value)
        assert words in message and "\n" not in message and message.startswith("export_model:"), message
        assert not (tmp_path / "out").exists()


def test_jit_compile_on_torch_is_refused_at_compile():
    if BACKEND != "torch":
        pytest.skip("the torch backend")
    model = hta.HomotopyModel.from_model(dense_network())
    with pytest.raises(ValueError, match="jit_compile.*torch"):
        model.compile(optimizer="sgd", loss="mse", jit_compile=True)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_exactly(tmp_path):
    """A run interrupted after epoch 2 and resumed by BackupAndRestore ends as an uninterrupted one."""
    x, y = regression_data(n=32)
    schedule = hta.schedules.Linear(0.5, 0.1, -0.1)

    def model():
        keras.utils.set_random_seed(5)
        m = hta.HomotopyModel.from_model(dense_network(hidden=5, batch_norm=True), homotopy_l=0.5, anchor="init")
        m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        return m

    whole = model()
    whole.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)])
    resumed = model()
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[
            hta.HomotopyScheduler(schedule), keras.callbacks.BackupAndRestore(backup), _Interrupt()])
    resumed = model()  # a fresh process would start here
    history = resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[
        hta.HomotopyScheduler(schedule), keras.callbacks.BackupAndRestore(backup)])
    np.testing.assert_allclose(history.history["homotopy_l"], [0.3, 0.2], rtol=1e-6)  # epochs 2 and 3 only
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=a.path)
    for a, b in zip(whole.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=a.path)


def test_the_harness_runs_on_this_backend(tmp_path):
    """`keras-hta compare` (MNIST-1D), as on any backend; the backend is recorded."""
    from keras_hta.experiments import cli

    out = tmp_path / "cmp"
    cli.main(["compare", "--epochs", "1", "--seeds", "0", "--train-size", "600", "--verbose", "0", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["backend"] == BACKEND
    assert {r["arm"] for r in saved["runs"]} == {"sgd", "hta"}
    assert all(r["config"]["backend"] == BACKEND and r["finite"] for r in saved["runs"])
    assert f"backend {BACKEND}" in (out / "results.md").read_text()


def test_numpy_image_batches_are_seeded_and_augment_by_flip_and_crop():
    from keras_hta.experiments import data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 6, 5, 3), dtype=np.uint8)
    labels = np.arange(10)
    mean, std = np.array([0.5, 0.4, 0.3], "float32"), np.array([0.2, 0.25, 0.3], "float32")
    a = data.ArrayBatches(images, labels, 4, seed=7, mean=mean, std=std, augment=True, pad=2)
    b = data.ArrayBatches(images, labels, 4, seed=7, mean=mean, std=std, augment=True, pad=2)
    assert len(a) == 3
    for epoch in range(2):
        seen = []
        for i in range(len(a)):
            (xa, ya), (xb, yb) = a[i], b[i]
            np.testing.assert_array_equal(xa, xb)  # a function of the seed alone
            np.testing.assert_array_equal(ya, yb)
            for image, label in zip(xa, ya):  # some flip + crop of the zero-padded original
                padded = np.pad(images[label] / 255.0, ((2, 2), (2, 2), (0, 0)))
                options = [(np.flip(padded, 1) if flip else padded)[t:t + 6, l:l + 5]
                           for flip in (0, 1) for t in range(5) for l in range(5)]
                assert min(np.abs((o - mean) / std - image).max() for o in options) < 1e-5
            seen += ya.tolist()
        assert sorted(seen) == labels.tolist()  # every example once per epoch
        a.on_epoch_end()
        b.on_epoch_end()
    plain = data.ArrayBatches(images, labels, 4, mean=mean, std=std)  # evaluation: in order, only normalised
    x0, y0 = plain[0]
    np.testing.assert_array_equal(y0, [0, 1, 2, 3])
    np.testing.assert_allclose(x0, (images[:4] / 255.0 - mean) / std, atol=1e-6)


def test_fit_trains_on_the_numpy_batches_in_their_seeded_order():
    """`fit(shuffle=False)`, as the harness calls it, trains on batches 0, 1, 2 of one epoch, then of the next.

    So paired arms see the same batches. (With `shuffle=True` Keras would reorder the batches with Python's
    global `random`; with worker threads, Keras 3.15 on JAX and PyTorch first serves batches prefetched before
    the first epoch: the harness uses neither.)
    """
    from keras_hta.experiments import data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, size=12)
    mean, std = data.channel_stats(images)
    initial = []

    def trained(by_hand):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(True))
        initial.append(np.asarray(model.weights[0]))
        batches = data.ArrayBatches(images, labels, 4, seed=5, mean=mean, std=std, augment=True)
        if not by_hand:
            model.fit(batches, epochs=2, verbose=0, shuffle=False)
            return [np.asarray(w) for w in model.weights]
        batches.on_epoch_end()  # fit's first look at the data ends an epoch before training starts
        for _ in range(2):
            for i in range(len(batches)):
                model.train_on_batch(*batches[i])
            batches.on_epoch_end()
        return [np.asarray(w) for w in model.weights]

    fitted, by_hand = trained(False), trained(True)
    for a, h in zip(fitted, by_hand):
        np.testing.assert_allclose(a, h, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(initial[0], initial[1])  # the same start, and six steps moved it
    assert np.abs(fitted[0] - initial[0]).max() > 1e-3


def test_repeated_batches_cycle_through_the_arrays_in_order():
    from keras_hta.experiments import data

    x, y = np.arange(24).reshape(12, 2), np.arange(12)
    batches = data.RepeatedBatches(x, y, 4)  # three batches, then again
    assert len(batches) == 10**6
    np.testing.assert_array_equal(batches[4][1], [4, 5, 6, 7])
    np.testing.assert_array_equal(batches[3][0], x[:4])
    assert batches[2][1].tolist() == batches[10**6 - 2][1].tolist() == [8, 9, 10, 11]  # 999998 = 3·333332 + 2


def test_decoded_images_are_cached_per_decoder(tmp_path):
    """TensorFlow's and Pillow's JPEG decoders differ by a few levels: one's arrays are never served to the other."""
    from PIL import Image

    from keras_hta.experiments import data

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "img" / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / name / f"{i}.jpg", quality=75)
    loaded = data.load_image_folder(tmp_path / "img", image_size=(8, 8), cache_dir=tmp_path / "cache")
    cached = sorted(p.name for p in (tmp_path / "cache" / "decoded").iterdir())
    assert len(cached) == 2
    if BACKEND != "tensorflow":  # Pillow decoded them, under keys TensorFlow does not use
        paths = sorted((tmp_path / "img" / "train").rglob("*.jpg"))
        want = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        np.testing.assert_array_equal(loaded["x_train"], want)
    other = "jax" if BACKEND == "tensorflow" else "tensorflow"
    if other in OTHER_BACKENDS:
        script = ("import sys; from keras_hta.experiments import data; "
                  f"data.load_image_folder({str(tmp_path / 'img')!r}, image_size=(8, 8), cache_dir={str(tmp_path / 'cache')!r})")
        out = run_bounded([sys.executable, "-c", script], capture_output=True, text=True,
                             env=dict(os.environ, KERAS_BACKEND=other, PYTHONPATH=ROOT))
        assert out.returncode == 0, out.stderr[-2000:]
        assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 4  # its own two entries


def _train_distributed(x, y, devices, model_parallel):
    """Trains a HomotopyModel with BatchNormalization under `ModelParallel` (a mesh (n/2, 2) over `devices`, with
    LayoutMap keys as users write them) or under `DataParallel` on the same devices; returns the model."""
    if model_parallel:
        mesh = keras.distribution.DeviceMesh((len(devices) // 2, 2), ["batch", "model"], devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map["d1/kernel"] = (None, "model")  # a layer path, as Keras' distribution guide writes them
        layout_map["d[23]/kernel"] = ("model", None)  # a regex over several layers
        layout_map["bn/moving_.*"] = ("model",)  # a regex over several variables
        keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout_map,
                                                                             batch_dim_name="batch"))
    else:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        keras.utils.set_random_seed(4)
        inputs = keras.Input((4,))
        h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, name="d1")(inputs))
        h = keras.layers.Dense(8, activation="tanh", name="d2")(keras.layers.Activation("tanh")(h))
        h = keras.layers.Dense(8, activation="tanh", name="d3")(h)
        network = keras.Model(inputs, keras.layers.Dense(3, name="out")(h))
        model = hta.HomotopyModel.from_model(network, anchor="init", homotopy_l=0.3)
        model.twin(1).set_weights([w * 1.1 for w in model.twin(1).get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model
    finally:
        keras.distribution.set_distribution(None)


def check_model_parallel(num_devices):
    """Every copy HomotopyModel keeps of a sharded weight has its layout, and training equals DataParallel."""
    devices = keras.distribution.list_devices("cpu")[:num_devices]
    assert len(devices) == num_devices, devices
    x, y = regression_data(n=32)
    model = _train_distributed(x, y, devices, model_parallel=True)
    network = model.network
    slots = {v.path: v for v in model.optimizer.variables}
    for path, spec in (("d1/kernel", (None, "model")), ("d2/kernel", ("model", None)), ("d3/kernel", ("model", None)),
                       ("bn/moving_mean", ("model",)), ("bn/moving_variance", ("model",))):
        v = {w.path: w for w in network.variables}[path]
        copies = [model.twin(1).variable(v)]  # its twin's (η's BatchNormalization statistics for the others)
        if v.trainable:  # and its anchor's and both momenta
            copies += [a for a in model.twin_state.anchor_and_group_slots if a.path == f"{v.path.replace('/', '_')}_anchor"]
            copies += [s for s in slots.values() if s.path.endswith("momentum") and v.path.replace("/", "_") in s.path]
            assert len(copies) == 4, [c.path for c in copies]
        for copy in [v] + copies:
            assert tuple(copy.value.sharding.spec) == spec, (copy.path, copy.value.sharding.spec)
            assert len(copy.value.sharding.device_set) == num_devices
    data_parallel = _train_distributed(x, y, devices, model_parallel=False)  # the same training, replicated
    assert len(model.weights) == len(data_parallel.weights)
    for a, b in zip(model.weights, data_parallel.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=a.path)
    return len(model.weights)


def test_jax_model_parallel_lays_out_every_copy_of_a_weight_as_the_weight():
    if BACKEND != "jax":
        pytest.skip("keras.distribution.ModelParallel: the JAX backend")
    if len(keras.distribution.list_devices("cpu")) < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set by conftest)")
    assert check_model_parallel(2) > 20


def test_jax_model_parallel_on_four_devices():
    if BACKEND != "jax":
        pytest.skip("keras.distribution.ModelParallel: the JAX backend")
    # A process of its own with four host devices (this one has two): a (2, 2) mesh, batch and model.
    script = "import test_backends as t; print('weights', t.check_model_parallel(4))"
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = run_bounded([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > 20
