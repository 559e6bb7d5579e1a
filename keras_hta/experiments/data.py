"""Data: CIFAR-10 (tfds or an image folder / .tar.gz) and MNIST-1D, as batches for `fit`.

Images get the paper's preprocessing: random horizontal flip and random crop
(pad 4) for training, per-channel normalisation for both splits. Decoded
images are kept in memory, so each epoch only augments. On the TensorFlow
backend the batches come from tf.data; on JAX and PyTorch from NumPy
(`ArrayBatches`, a `keras.utils.PyDataset`), and images are decoded with
Pillow, so no TensorFlow is needed there. Either way every batch is a
function of the seed alone, so each seed gives every arm the same batches.

The cache: archives are extracted, and decoded image folders saved as .npy
arrays, under `~/.keras/keras_hta` (for CIFAR-10 some hundreds of megabytes: the extracted
files, and the decoded arrays per decoder), or
under `$KERAS_HTA_CACHE`, or the `cache_dir` argument (`--cache-dir` in the
CLI). Entries are keyed by content: the files' relative paths, sizes and
modification times, so moving, adding or editing an image gives a new entry.
Every entry is written to a temporary name and renamed when complete, so an
interrupted extraction or save leaves nothing behind. Delete the folder to
reclaim the space.
"""

import hashlib
import os
import pathlib
import shutil
import tarfile
import tempfile

import keras
import numpy as np

from keras_hta.experiments import DataUnavailableError  # noqa: F401  (raised here; the CLI catches it)
from keras_hta.experiments import write_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def cache_root(cache_dir=None):
    """The cache folder: `cache_dir`, else `$KERAS_HTA_CACHE`, else `~/.keras/keras_hta`."""
    return pathlib.Path(
        cache_dir or os.environ.get("KERAS_HTA_CACHE") or os.path.join(os.path.expanduser("~"), ".keras", "keras_hta")
    )


def _extract(archive, cache_dir=None):
    archive = pathlib.Path(archive)
    stat = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    root = cache_root(cache_dir)
    target = root / f"{archive.name.split('.')[0]}-{key}"
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
            partial.rename(target)  # complete: appears at once
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ValueError(f"Could not extract the archive {archive}: {error}") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    # The archive may hold the splits at its top or inside one folder.
    if not (target / "train").is_dir():
        inner = [p for p in target.iterdir() if p.is_dir() and (p / "train").is_dir()]
        if inner:
            return inner[0]
    return target


def _list_split(split_dir, class_names=None):
    if not split_dir.is_dir():
        raise ValueError(f"Missing folder {split_dir}: expected <root>/{split_dir.name}/<class>/<image>")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    class_names = class_names or found
    if found != list(class_names):
        raise ValueError(f"Folder {split_dir} has classes {found}, expected {list(class_names)}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}")
    return paths, np.array(labels, "int32"), list(class_names)


def _use_tensorflow():
    return keras.backend.backend() == "tensorflow"


def _decode_pillow(paths, image_size):
    """Decodes every file with Pillow; returns the images and the paths that decoded."""
    from PIL import Image

    h, w = image_size
    images, decoded = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except (OSError, ValueError):
            continue
        if array.shape == (h, w, 3):
            images.append(array)
            decoded.append(path)
    return np.stack(images) if images else np.zeros((0, h, w, 3), "uint8"), decoded


def _decode_all(paths, image_size):
    """Decodes every file (tf.data on TensorFlow, else Pillow); names bad files."""
    h, w = image_size
    if not _use_tensorflow():
        images, decoded = _decode_pillow(paths, image_size)
        bad = sorted(set(paths) - set(decoded))
        if bad:
            raise ValueError(f"{len(bad)} file(s) could not be read as {h}x{w} RGB images, e.g. {bad[:3]}")
        return images
    import tensorflow as tf

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.ensure_shape(image, (h, w, 3)), path

    ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors().batch(4096)
    images, decoded = [], []
    for batch, batch_paths in ds:
        images.append(batch.numpy())
        decoded.append(batch_paths.numpy())
    decoded = {p.decode() for chunk in decoded for p in chunk}
    bad = [p for p in paths if p not in decoded]
    if bad:
        raise ValueError(
            f"{len(bad)} file(s) could not be read as {h}x{w} RGB images, e.g. {bad[:3]}"
        )
    return np.concatenate(images)


def _content_key(paths, image_size):
    """A hash of the files' relative paths, sizes and modification times, and of the decoder.

    TensorFlow's and Pillow's JPEG decoders differ by a few levels per pixel,
    so arrays decoded by one are never served to the other.
    """
    decoder = "" if _use_tensorflow() else ":pillow"  # TensorFlow's keys as before
    digest = hashlib.sha1(f"{image_size}{decoder}".encode())
    root = os.path.commonpath(paths) if paths else ""
    for p in paths:
        stat = os.stat(p)
        digest.update(f"{os.path.relpath(p, root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _save_atomic(path, array):
    """np.save to a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.save(f, array), "wb")


def load_image_folder(path, image_size=(32, 32), cache_dir=None):
    """Loads an image-folder tree `train/<class>/*`, `test/<class>/*` (or its .tar.gz).

    Classes are the sorted folder names (CIFAR-10's label order for the
    shared tarball). Decoded arrays are cached as .npy files in the cache
    folder (see the module docstring), keyed by the files' paths, sizes and
    modification times.

    Args:
        path: String, the folder or a `.tar.gz` / `.tar` archive of it.
        image_size: Tuple (height, width) every image must have.
        cache_dir: String or `None`: the cache folder (default
            `$KERAS_HTA_CACHE`, else `~/.keras/keras_hta`).

    Returns:
        A dict with `x_train` (uint8, N×H×W×3), `y_train` (int32),
        `x_test`, `y_test` and `class_names`.

    Raises:
        ValueError: a missing folder or split, mismatched classes, or files
            that do not decode (named in the message).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"Argument `data_dir` does not exist. Received: data_dir={str(path)!r}")
    root = _extract(path, cache_dir) if path.is_file() else path
    train_paths, y_train, class_names = _list_split(root / "train")
    test_paths, y_test, _ = _list_split(root / "test", class_names)
    result = {"class_names": class_names, "y_train": y_train, "y_test": y_test}
    for split, paths in (("train", train_paths), ("test", test_paths)):
        cache = cache_root(cache_dir) / "decoded" / f"{split}-{_content_key(paths, image_size)}.npy"
        if cache.exists():
            result[f"x_{split}"] = np.load(cache)
        else:
            result[f"x_{split}"] = _decode_all(paths, image_size)
            try:
                _save_atomic(cache, result[f"x_{split}"])
            except OSError:  # read-only cache: none
                pass
    return result


def stratified_indices(labels, size, seed=0, exclude=None):
    """A seeded, class-stratified sample of indices.

    Each class keeps its share of `size` (largest remainders get the extra
    examples); within a class the examples are drawn at random with `seed`.

    Args:
        labels: Integer array of class labels.
        size: Integer, how many indices to draw (at most the number left).
        seed: Integer, the draw's seed.
        exclude: Optional boolean array, True for indices not to draw.

    Returns:
        A sorted int64 array of `size` indices.
    """
    labels = np.asarray(labels)
    available = np.ones(len(labels), bool) if exclude is None else ~np.asarray(exclude)
    classes, counts = np.unique(labels[available], return_counts=True)
    size = int(size)
    if not 0 <= size <= counts.sum():
        raise ValueError(f"Cannot draw {size} examples from {counts.sum()}.")
    share = counts * size / counts.sum()
    take = np.floor(share).astype(int)
    for i in np.argsort(-(share - take), kind="stable")[: size - take.sum()]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(available & (labels == c)), n, replace=False)
        for c, n in zip(classes, take)
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, "int64")


def _to_arrays(ds):
    xs, ys = [], []
    for x, y in ds.batch(8192).prefetch(2):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


CIFAR10_HOST = "www.cs.toronto.edu"


def _reachable(host, port=443, timeout=5.0):
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_cifar10_tfds(data_dir=None):
    """CIFAR-10 through `tensorflow_datasets`, as uint8 arrays.

    Uses a prepared copy in `data_dir` if there is one; otherwise downloads
    it, after checking within 5 seconds that the source can be reached.

    Raises:
        DataUnavailableError: when tfds cannot provide it (e.g. offline),
            with a one-line hint to use an image folder instead.
    """
    import tensorflow_datasets as tfds

    def fail(reason):
        return DataUnavailableError(
            f"CIFAR-10 could not be loaded with tensorflow_datasets ({reason}). Offline? Pass "
            "--data-dir PATH to an image folder or .tar.gz with train/<class>/*.jpg and test/<class>/*.jpg."
        )

    kwargs = dict(split=["train", "test"], as_supervised=True, data_dir=data_dir)
    try:
        train, test = tfds.load("cifar10", download=False, **kwargs)
    except Exception:  # not prepared yet
        if not _reachable(CIFAR10_HOST):
            raise fail(f"not prepared in data_dir={data_dir!r} and {CIFAR10_HOST} cannot be reached") from None
        try:
            train, test = tfds.load("cifar10", **kwargs)
        except Exception as error:  # tfds raises many kinds when offline
            raise fail(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from None
    (x_train, y_train), (x_test, y_test) = _to_arrays(train), _to_arrays(test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return {"x_train": x_train, "y_train": y_train.astype("int32"), "x_test": x_test,
            "y_test": y_test.astype("int32"), "class_names": names}


def load_mnist1d(num_samples=5000, seed=42):
    """MNIST-1D (Greydanus 2020), generated locally by the `mnist1d` package.

    Returns:
        A dict like `load_image_folder`'s with float32 `x` of shape (N, 40).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    state = np.random.get_state()  # mnist1d seeds numpy's global generator
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    return {"x_train": data["x"].astype("float32"), "y_train": data["y"].astype("int32"),
            "x_test": data["x_test"].astype("float32"), "y_test": data["y_test"].astype("int32"),
            "class_names": [str(i) for i in range(10)]}


def channel_stats(images):
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.reshape(-1, images.shape[-1]).astype("float64") / 255.0
    return x.mean(0).astype("float32"), x.std(0).astype("float32")


def _augment(images, rng, pad):
    """Random horizontal flips and pad-`pad` random crops of a float batch, vectorised."""
    n, h, w = images.shape[:3]
    flip = rng.random(n) < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top, left = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    rows = (top[:, None] + np.arange(h))[:, :, None]
    cols = (left[:, None] + np.arange(w))[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


class ArrayBatches(keras.utils.PyDataset):
    """Batches of in-memory arrays for `fit`, without TensorFlow.

    For training (`seed` given) the order is reshuffled every epoch and,
    with `augment`, every image flipped and cropped; the random numbers of
    batch i of epoch e come from `numpy.random.default_rng([seed, e, i])`,
    so the batches are a function of the seed alone. Call `fit` with
    `shuffle=False` (the order is already shuffled; Keras would reorder the
    batches by Python's global `random`, which building a HomotopyModel
    draws from) and no workers (Keras 3.15's worker threads on JAX and
    PyTorch first serve batches fetched before the first epoch).
    Images (uint8) are normalised as `(x/255 − mean)/std`.

    Args:
        x, y: Arrays with the examples on the first axis.
        batch_size: Integer.
        seed: Integer or `None` (no shuffling: evaluation).
        mean, std: Per-channel arrays for uint8 images, else `None`.
        augment: Boolean, flip and pad-`pad` crop (images only).
        pad: Integer.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`.
    """

    def __init__(self, x, y, batch_size, seed=None, mean=None, std=None, augment=False, pad=4, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.seed, self.augment, self.pad = seed, augment, pad
        self.mean = None if mean is None else np.asarray(mean, "float32")
        self.std = None if std is None else np.asarray(std, "float32")
        self.epoch = 0
        self._order = self._shuffled()

    def _shuffled(self):
        if self.seed is None:
            return np.arange(len(self.x))
        return np.random.default_rng([int(self.seed), self.epoch]).permutation(len(self.x))

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        chosen = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        x, y = self.x[chosen], self.y[chosen]
        if x.dtype == np.uint8:
            x = x.astype("float32") / 255.0
            if self.augment:
                x = _augment(x, np.random.default_rng([int(self.seed or 0), self.epoch, index]), self.pad)
            x = (x - self.mean) / self.std
        return x, y

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._shuffled()


class RepeatedBatches(keras.utils.PyDataset):
    """`x` and `y` cut into batches of `batch_size`, repeated in order for a million batches (for timing steps)."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, int(batch_size)

    def __len__(self):
        return 10**6

    def __getitem__(self, index):
        index %= len(self.x) // self.batch_size
        return (self.x[index * self.batch_size:(index + 1) * self.batch_size],
                self.y[index * self.batch_size:(index + 1) * self.batch_size])


def image_pipeline(x, y, batch_size, training, mean, std, seed=None, pad=4):
    """Batches of normalised images, augmented when `training`.

    Training: shuffle, random horizontal flip, random crop after zero
    padding by `pad`, then `(x/255 − mean)/std`. Otherwise only the
    normalisation. On TensorFlow a prefetched tf.data pipeline whose shuffle
    and augmentation are functions of `seed` and TensorFlow's global seed
    (stateless random ops, their keys drawn from a seeded stream, so the
    parallel map cannot reorder them): two pipelines built after
    `keras.utils.set_random_seed(s)` with one `seed` yield identical batches,
    epoch after epoch. Elsewhere an `ArrayBatches`, seeded the same way.
    """
    if not _use_tensorflow():
        seed = (0 if seed is None else int(seed)) if training else None
        return ArrayBatches(x, y, batch_size, seed=seed, mean=mean, std=std, augment=training, pad=pad)
    import tensorflow as tf

    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    h, w = x.shape[1:3]
    if not training:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.map(lambda image, label: ((tf.cast(image, tf.float32) / 255.0 - mean) / std, label),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    seed = 0 if seed is None else int(seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    # One random pair per example, new each epoch, from a seeded stream.
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, keys))

    def prepare(example, key):
        image, label = example
        image = tf.cast(image, tf.float32) / 255.0
        image = tf.image.stateless_random_flip_left_right(image, seed=key)
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, (h, w, image.shape[-1]), seed=key[::-1])
        return (image - mean) / std, label

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def array_pipeline(x, y, batch_size, training, seed=None):
    """Batches (and, for training, shuffles with `seed`) an in-memory data set."""
    if not _use_tensorflow():
        return ArrayBatches(x, y, batch_size, seed=(0 if seed is None else int(seed)) if training else None)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        ds = ds.shuffle(len(x), seed=0 if seed is None else int(seed), reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
