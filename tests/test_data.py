"""Data loaders: image folders and archives, the augmentation pipeline, tfds, MNIST-1D."""

import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from keras_hta import data

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
    assert sorted(set(a["y_train"].tolist())) == list(range(10))
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
