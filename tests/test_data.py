"""Data loaders: image folders and archives, the augmentation pipeline, tfds, MNIST-1D."""

import os
import shutil
import tarfile

import numpy as np
import pytest

from keras_hta.experiments import SIZES, data

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)
tf = pytest.importorskip("tensorflow")


CLASSES = ("cat", "ant", "bee")  # written unsorted: labels follow sorted names


def make_folder(root, per_class=3, size=8, seed=0):
    """Writes lossless PNGs; returns {split: (images, labels)} in label order."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(sorted(CLASSES)):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                tf.io.write_file(str(root / split / name / f"{i:04d}.png"), tf.io.encode_png(image))
                images.append(image)
                labels.append(label)
        expected[split] = (np.stack(images), np.array(labels))
    return expected


def test_folder_loads_exact_pixels_labels_and_class_order(tmp_path):
    expected = make_folder(tmp_path / "data")
    d = data.load_image_folder(tmp_path / "data", image_size=(8, 8))
    assert d["class_names"] == ["ant", "bee", "cat"]
    for split in ("train", "test"):
        np.testing.assert_array_equal(d[f"x_{split}"], expected[split][0])
        np.testing.assert_array_equal(d[f"y_{split}"], expected[split][1])
    again = data.load_image_folder(tmp_path / "data", image_size=(8, 8))  # from the .npy cache
    np.testing.assert_array_equal(again["x_train"], d["x_train"])


def test_tar_gz_archive_equals_folder(tmp_path):
    expected = make_folder(tmp_path / "data")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data" / "train", arcname="train")
        tar.add(tmp_path / "data" / "test", arcname="test")
    d = data.load_image_folder(archive, image_size=(8, 8), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(d["x_test"], expected["test"][0])


def test_bad_files_and_layouts_are_named(tmp_path):
    make_folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "bee" / "0001.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="0001.png"):
        data.load_image_folder(tmp_path / "data", image_size=(8, 8))
    with pytest.raises(ValueError, match="could not be read as 16x16"):
        make_folder(tmp_path / "other")
        data.load_image_folder(tmp_path / "other", image_size=(16, 16))
    make_folder(tmp_path / "only_train")
    shutil.rmtree(tmp_path / "only_train" / "test")
    with pytest.raises(ValueError, match="Missing folder .*test"):
        data.load_image_folder(tmp_path / "only_train", image_size=(8, 8))
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images"):
        data.load_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        data.load_image_folder(tmp_path / "nowhere")


def test_channel_stats_closed_form():
    images = np.zeros((2, 1, 2, 3), np.uint8)
    images[0, 0, 0] = [255, 0, 51]
    mean, std = data.channel_stats(images)
    np.testing.assert_allclose(mean, [0.25, 0.0, 0.05], rtol=1e-6)
    np.testing.assert_allclose(std, [np.sqrt(0.25 * 0.75), 0.0, np.sqrt(0.2**2 * 0.25 * 0.75)], rtol=1e-6)


def test_pipeline_normalises_and_augments_within_bounds():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    y = np.arange(6, dtype="int32")
    mean, std = data.channel_stats(x)
    test = next(iter(data.image_pipeline(x, y, 6, False, mean, std)))
    np.testing.assert_allclose(test[0].numpy(), (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(test[1].numpy(), y)
    for images, labels in data.image_pipeline(x, y, 6, True, mean, std, seed=3).take(3):
        for image, label in zip(images.numpy(), labels.numpy()):
            original = (x[label] / 255.0 - mean) / std
            padded = np.pad(original, [(4, 4), (4, 4), (0, 0)], constant_values=0)
            padded[:4], padded[-4:], padded[:, :4], padded[:, -4:] = [-mean / std] * 4
            candidates = [
                p[i : i + 8, j : j + 8]
                for p in (padded, padded[:, ::-1])
                for i in range(9)
                for j in range(9)
            ]
            assert min(np.abs(c - image).max() for c in candidates) < 1e-5


def test_tfds_path_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10):
        d = data.load_cifar10_tfds()
    assert d["x_train"].shape == (10, 32, 32, 3) and d["x_train"].dtype == np.uint8
    assert d["y_test"].shape == (10,) and d["class_names"][0] == "airplane"


def test_tfds_offline_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda *a, **k: False)
    with pytest.raises(data.DataUnavailableError, match="--data-dir") as info:
        data.load_cifar10_tfds(str(tmp_path))
    assert "\n" not in str(info.value)


def test_mnist1d_is_generated_locally_and_deterministic():
    state = np.random.get_state()[1].copy()
    a, b = data.load_mnist1d(), data.load_mnist1d()
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched
    assert a["x_train"].shape == (4000, 40) and a["x_test"].shape == (1000, 40)
    assert (len(a["y_train"]), len(a["y_test"]), len(a["class_names"])) == SIZES["mnist1d"]  # known beforehand
    assert sorted(set(a["y_train"].tolist())) == list(range(10))
    np.testing.assert_array_equal(a["x_train"], b["x_train"])


def test_cache_is_keyed_by_content(tmp_path):
    make_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = data.load_image_folder(tmp_path / "data", image_size=(8, 8), cache_dir=cache)
    assert len(list((cache / "decoded").glob("*.npy"))) == 2
    # Move one image to another class: same file count, new labels and pixels order.
    (tmp_path / "data" / "train" / "ant" / "0000.png").rename(tmp_path / "data" / "train" / "cat" / "0009.png")
    moved = data.load_image_folder(tmp_path / "data", image_size=(8, 8), cache_dir=cache)
    fresh = data.load_image_folder(tmp_path / "data", image_size=(8, 8), cache_dir=tmp_path / "empty")
    np.testing.assert_array_equal(moved["x_train"], fresh["x_train"])
    np.testing.assert_array_equal(moved["y_train"], fresh["y_train"])
    assert not np.array_equal(moved["x_train"], first["x_train"])
    np.testing.assert_array_equal(moved["x_train"][-1], first["x_train"][0])  # now the last "cat"


def test_failed_extraction_leaves_nothing_behind(tmp_path):
    make_folder(tmp_path / "data")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data", arcname=".")
    archive.write_bytes(archive.read_bytes()[:200])  # truncated download
    with pytest.raises(ValueError, match="Could not extract"):
        data.load_image_folder(archive, image_size=(8, 8), cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_environment_variable_sets_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HTA_CACHE", str(tmp_path / "env_cache"))
    assert data.cache_root() == tmp_path / "env_cache"
    assert data.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_stratified_indices_keep_class_shares_and_follow_the_seed():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])  # sorted by class, like a folder
    idx = data.stratified_indices(labels, 40, seed=0)
    assert len(idx) == 40 and len(set(idx)) == 40
    np.testing.assert_array_equal(np.bincount(labels[idx]), [20, 10, 6, 4])
    np.testing.assert_array_equal(idx, data.stratified_indices(labels, 40, seed=0))
    assert not np.array_equal(idx, data.stratified_indices(labels, 40, seed=1))
    held = np.zeros(200, bool)
    held[idx] = True
    rest = data.stratified_indices(labels, 20, seed=0, exclude=held)
    assert not held[rest].any()
    with pytest.raises(ValueError, match="Cannot draw 300"):
        data.stratified_indices(labels, 300)


def test_subsets_and_validation_split_are_stratified():
    from keras_hta.experiments import compare

    config = {"dataset": "mnist1d", "val_size": 0.1, "train_size": 500, "test_size": 200}
    d = compare.load_data(config)
    assert len(d["y_val"]) == 400 and len(d["y_train"]) == 500 and len(d["y_test"]) == 200
    full = data.load_mnist1d()
    for split, n in (("train", 500), ("test", 200)):
        share = np.bincount(d[f"y_{split}"], minlength=10) / n
        np.testing.assert_allclose(share, np.bincount(full[f"y_{split}"], minlength=10) / len(full[f"y_{split}"]),
                                   atol=1.0 / n + 1e-9)
    # Validation examples are not trained on.
    train_rows = {row.tobytes() for row in d["x_train"]}
    assert not any(row.tobytes() in train_rows for row in d["x_val"])


def test_image_pipeline_is_a_function_of_the_seed():
    import keras

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    y = np.arange(20, dtype="int32")
    mean, std = data.channel_stats(x)

    def batches(seed, noise):
        keras.utils.set_random_seed(seed)
        ds = data.image_pipeline(x, y, 5, True, mean, std, seed=seed)
        tf.random.uniform((noise,))  # other random work in between
        return [b[0].numpy() for _ in range(2) for b in ds]  # two epochs

    a, b, c = batches(3, 1), batches(3, 7), batches(4, 1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, v) for u, v in zip(a, c))
    assert any(not np.array_equal(u, v) for u, v in zip(a[:4], a[4:]))  # new each epoch


def test_write_atomic_keeps_the_old_file_on_failure_and_the_usual_permissions(tmp_path):
    from keras_hta.experiments import write_atomic

    path = tmp_path / "results.json"
    write_atomic(path, lambda f: f.write("old"))

    def fail(f):
        f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
