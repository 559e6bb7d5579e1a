"""`keras-hta compare`: SGD against HTA with every ordinary hyperparameter equal.

For each seed every arm starts from the same initial weights and sees the same
batches (order and augmentation follow from the seed alone), optimizer,
learning rate, momentum, weight decay, batch size and epochs; HTA only adds
its twins and the L schedule. A stratified validation split is held out of
the training data for the curves; the test set is evaluated once per run, at
the end. Results are written atomically, run by run, to `results.json`, each
run with its configuration (a rerun skips finished runs; runs with other
flags sit beside them), then summarised in `results.md` (the paper's Table 2
and Table 3 formats) and `val_error.png` (Figure 2).
"""

import argparse
import contextlib
import json
import math
import os
import time

import numpy as np

from keras_hta.experiments import provenance

ARMS = ("sgd", "hta", "hta_l2", "hta_split", "sgd_ema")
ARM_LABELS = {"sgd": "SGD", "hta": "HTA", "hta_l2": "HTA (l2, gradient step)", "hta_split": "HTA (twin_batch=split)",
              "sgd_ema": "SGD + EMA"}
HTA_ARMS = ("hta", "hta_l2", "hta_split")


def add_compare_parser(sub):
    p = sub.add_parser(
        "compare",
        help="train plain SGD and HTA with identical hyperparameters and compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_model_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed and arm")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="constant, or cosine decay to 0 over the run")
    p.add_argument("--L-start", type=float, default=0.01, help="the first L (the paper's)")
    p.add_argument("--L-stop", type=float, default=0.005, help="the last L")
    p.add_argument("--L-step", type=float, default=-0.001, help="the change of L between values")
    p.add_argument("--epochs-per-L", type=int, default=4, help="epochs spent at each L")
    p.add_argument("--norm", choices=["squared", "l2"], default="squared",
                   help="squared (the paper's formula) or l2 (the authors' code; needs --penalty-update gradient)")
    p.add_argument("--penalty-update", choices=["proximal", "gradient"], default="proximal",
                   help="proximal (the penalties applied exactly after each optimizer step; stable at any "
                        "learning rate) or gradient (an explicit gradient step on them)")
    p.add_argument("--split", choices=["channels", "layers", "random"], default="channels",
                   help="how the weights are split into groups")
    p.add_argument("--anchor", choices=["zeros", "init"], default="zeros",
                   help="the anchor: zeros or the initial weights")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=["sgd", "hta"],
                   help="what to train: sgd (required), hta, and also hta_l2 (the authors' form: l2 norms, explicit "
                        "gradient step), hta_split (each twin sees half of each batch) and sgd_ema (SGD with "
                        "Keras' use_ema=True)")
    p.add_argument("--threads", type=int, default=1,
                   help="TensorFlow's intra- and inter-op threads, with deterministic ops and oneDNN's reordering "
                        "off, so that a run gives the same numbers on one core or more and under load (0: "
                        "TensorFlow's defaults: numbers that move with the cores and the load). Set when keras-hta "
                        "runs as a command, before TensorFlow starts")
    p.add_argument("--out", default="compare_results", help="output folder")
    p.add_argument("--multi-worker", action="store_true",
                   help="train with MultiWorkerMirroredStrategy across the workers in TF_CONFIG "
                        "(start the same command on every worker; the chief writes the results)")
    p.set_defaults(func=run_compare)


def add_data_model_arguments(p):
    """The data, model and optimizer flags shared by `compare` and `tune`."""
    p.add_argument("--dataset", choices=["mnist1d", "cifar10"], default="mnist1d",
                   help="mnist1d (generated locally) or cifar10 (tensorflow_datasets)")
    p.add_argument("--data-dir", help="image folder or .tar.gz with train/<class>/* and test/<class>/* (CIFAR-10 layout)")
    p.add_argument("--tfds-dir", help="tensorflow_datasets data_dir for --dataset cifar10")
    p.add_argument("--cache-dir", help="where archives are extracted and decoded images cached "
                                       "(when not given: $KERAS_HTA_CACHE, else ~/.keras/keras_hta)")
    p.add_argument("--model", choices=["vgg11", "vgg13", "vgg16", "vgg19", "cnn1d", "mlp"],
                   help="when not given: cnn1d for mnist1d, vgg11 for images")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    p.add_argument("--epochs", type=int, default=24, help="epochs per run (compare: 24, the paper's 6 L values x 4)")
    p.add_argument("--batch-size", type=int, default=128, help="examples per batch")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (0: none)")
    p.add_argument("--train-size", type=int, help="use a stratified, seeded subset of this many training examples")
    p.add_argument("--test-size", type=int, help="use a stratified, seeded subset of this many test examples")
    p.add_argument("--val-size", type=float, default=0.1,
                   help="validation examples held out of the training data, stratified: a count, or a fraction "
                        "if below 1 (0.1: 5,000 images of CIFAR-10, 400 of MNIST-1D)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2],
                   help="Keras fit verbosity (when not given: 1, a progress bar, on a terminal; 2, a line per "
                        "epoch, otherwise)")


HTA_KEYS = ("L_start", "L_stop", "L_step", "epochs_per_L", "norm", "penalty_update", "split", "anchor")
DATA_SEED = 0  # the validation split and the subsets: the same for every run and seed


def _config(args):
    config = data_model_config(args, ("width", "epochs", "batch_size", "lr", "lr_schedule", "momentum",
                                      "weight_decay", "train_size", "test_size", "val_size") + HTA_KEYS, args.arms)
    l_schedule(config, build=False)
    check_norm_flags(config["norm"], config["penalty_update"])
    seeds = getattr(args, "seeds", None) or []
    if any(s < 0 for s in seeds):
        raise ValueError(f"Argument `--seeds` must be >= 0. Received: --seeds {' '.join(map(str, seeds))}")
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 0:
            raise ValueError(f"Argument `--threads` must be >= 0 (0: TensorFlow's defaults). Received: --threads {threads}")
        config["threads"] = threads  # part of each run's key: numbers from other thread settings are not reused
    return config


# What `--threads N` sets before TensorFlow starts: fixed thread pools, deterministic kernels, and oneDNN's
# reordering of floating-point operations off. With these, `keras-hta compare`'s default gave identical
# runs (every validation curve and test error) on 2 idle cores, pinned to one core and with both cores
# busy (RESULTS §3); TensorFlow's defaults gave 11.93 / 12.87, 11.77 / 12.33 and 13.37 / 12.40 there.
THREAD_ENV = provenance.THREAD_ENV


def fix_threads(threads):
    """Fixes TensorFlow's threads and determinism for `--threads N` (N ≥ 1), before TensorFlow is imported.

    Process-wide settings, made only where `keras-hta` runs as its own process
    and TensorFlow has not started (its pools cannot change after); variables
    the user set are left alone. Each run records the settings it had.
    """
    import sys

    if not threads or "tensorflow" in sys.modules:
        return
    for name, value in zip(THREAD_ENV, ("0", "1", str(threads), str(threads))):
        os.environ.setdefault(name, value)


def check_norm_flags(norm, penalty_update):
    """`--norm` and `--penalty-update` as the library checks `norm` and `penalty_update` (one rule, one place)."""
    from keras_hta import checks  # no Keras: before --threads

    checks.check_options(norm, penalty_update, names={"norm": "--norm", "penalty_update": "--penalty-update"})


def fit_verbosity(args):
    """`--verbose`, or when not given: 1 (a progress bar) on a terminal, 2 (a line per epoch) otherwise."""
    import sys

    return args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)


def l_schedule(config, names=("--L-start", "--L-stop", "--L-step", "--epochs-per-L"), build=True):
    """The linear L schedule of the flags; errors name the flags as typed.

    The flags are checked before Keras is imported (`keras_hta.checks`);
    `build=False` only checks them.
    """
    from keras_hta import checks

    flags = dict(zip(("start", "stop", "step", "epochs_per_value"), names))
    values = [config["L_start"], config["L_stop"], config["L_step"], config.get("epochs_per_L", 1)]
    try:
        checks.check_linear(*values[:3])
        checks.check_epochs_per_value(values[3])
    except (ValueError, TypeError) as error:
        message = str(error)
        for name, flag in flags.items():
            message = message.replace(f"`{name}`", f"`{flag}`").replace(f"{name}=", f"{flag} ")
        raise ValueError(message) from None
    if not build:
        return None
    import keras_hta as hta

    return hta.schedules.Linear(*values)


def _positive(config, names, strict=True):
    for name in names:
        value = config.get(name)
        if value is not None and not (math.isfinite(value) and (value > 0 if strict else value >= 0)):
            raise ValueError(f"Argument `--{name.replace('_', '-')}` must be a finite number "
                             f"{'>' if strict else '>='} 0. Received: --{name.replace('_', '-')} {value}")


def data_model_config(args, keys, arms=("sgd",)):
    """The run's settings as a flat dict; checks them before any data is loaded."""
    images = bool(args.data_dir) or args.dataset == "cifar10"
    model = args.model or ("vgg11" if images else "cnn1d")
    if images != model.startswith("vgg"):
        raise ValueError(
            f"Argument `--model {model}` does not fit the data: "
            + ("images (--data-dir or --dataset cifar10) need a vgg model" if images
               else "MNIST-1D needs --model cnn1d or mlp")
        )
    dataset = "folder:" + os.path.abspath(args.data_dir) if args.data_dir else args.dataset
    config = {"dataset": dataset, "model": model, **{k: getattr(args, k) for k in keys}}
    if "sgd" not in arms:
        raise ValueError(f"Argument `--arms` must include the baseline 'sgd'. Received: --arms {' '.join(arms)}")
    _check_numbers(config)
    if args.data_dir:
        _check_data_dir(args.data_dir)
    sizes = _known_sizes(args)
    if sizes is not None:
        check_sizes(config, *sizes)
    return config


def _check_numbers(config):
    """Counts >= 1, rates finite, momentum in [0, 1), a validation size that is a count or a fraction."""
    for name in ("epochs", "batch_size", "epochs_per_L", "train_size", "test_size"):
        if config.get(name) is not None and config[name] < 1:
            raise ValueError(f"Argument `--{name.replace('_', '-')}` must be >= 1. "
                             f"Received: --{name.replace('_', '-')} {config[name]}")
    _positive(config, ("width", "val_size"))
    _positive(config, ("lr", "weight_decay"), strict=False)
    if "momentum" in config and not 0 <= config["momentum"] < 1:
        raise ValueError(f"Argument `--momentum` must be in [0, 1). Received: --momentum {config['momentum']}")
    val = config.get("val_size")
    if val is not None and val >= 1 and val != int(val):
        raise ValueError(f"Argument `--val-size` must be a count or a fraction below 1. Received: --val-size {val}")


def _check_data_dir(path):
    """A folder holding train/ and test/ image folders, or a tar archive of them."""
    if not os.path.exists(path):
        raise ValueError(f"Argument `--data-dir` does not exist. Received: --data-dir {path}")
    if os.path.isdir(path) and not all(os.path.isdir(os.path.join(path, split)) for split in ("train", "test")):
        raise ValueError("Argument `--data-dir` must hold train/<class>/ and test/<class>/ image folders (or be "
                         f"a .tar.gz of them). Received: --data-dir {path}")
    if os.path.isfile(path):
        import tarfile

        if not tarfile.is_tarfile(path):
            raise ValueError("Argument `--data-dir` is a file but not a .tar or .tar.gz archive of image folders. "
                             f"Received: --data-dir {path}")


def _known_sizes(args):
    """(training examples, test examples, classes) of the data set, where known without loading it; else None."""
    from keras_hta.experiments import SIZES  # not `data`, which starts Keras (and TensorFlow, before --threads)

    if not args.data_dir:
        return SIZES.get(args.dataset)
    if not os.path.isdir(args.data_dir):
        return None  # an archive: counted once unpacked
    count = lambda split: sum(len(files) for _, _, files in os.walk(os.path.join(args.data_dir, split)))  # noqa: E731
    classes = [c for c in os.listdir(os.path.join(args.data_dir, "train"))
               if os.path.isdir(os.path.join(args.data_dir, "train", c))]
    return count("train"), count("test"), len(classes)


def check_sizes(config, n_train, n_test, classes):
    """Raises, naming the flag, unless `--val-size`, `--train-size` and `--test-size` fit the data; returns the
    number of validation examples.

    Checked before loading where the sizes are known (MNIST-1D, CIFAR-10, an
    image folder), and on the loaded data.
    """
    val = config.get("val_size") or 0
    n_val = int(round(val * n_train)) if val < 1 else int(val)
    if not 0 < n_val < n_train:
        raise ValueError(f"Argument `--val-size` must leave training data: {n_val} of {n_train} examples. "
                         f"Received: --val-size {val:g}")
    for key, split, available in (("train_size", "train", n_train - n_val), ("test_size", "test", n_test)):
        size, flag = config.get(key), f"--{key.replace('_', '-')}"
        if size and size > available:
            raise ValueError(f"Argument `{flag}` exceeds the {available} {split} examples available. "
                             f"Received: {flag} {size}")
        if size and size < classes:
            raise ValueError(f"Argument `{flag}` must be at least the number of classes ({classes}), so that each "
                             f"class has an example. Received: {flag} {size}")
    return n_val


def load_data(config, tfds_dir=None, cache_dir=None):
    """Loads the data set; holds out the stratified validation split; takes the subsets.

    Returns a dict with `x_train`, `y_train`, `x_val`, `y_val`, `x_test`,
    `y_test` and `class_names`. The validation split and the subsets are
    stratified and drawn with `DATA_SEED`, the same for every run.
    """
    from keras_hta.experiments import data

    if config["dataset"].startswith("folder:"):
        d = data.load_image_folder(config["dataset"][len("folder:"):], cache_dir=cache_dir)
    elif config["dataset"] == "cifar10":
        d = data.load_cifar10_tfds(tfds_dir)
    else:
        d = data.load_mnist1d()
    n = len(d["y_train"])
    n_val = check_sizes(config, n, len(d["y_test"]), len(d["class_names"]))
    held = np.zeros(n, bool)
    held[data.stratified_indices(d["y_train"], n_val, DATA_SEED)] = True
    d["x_val"], d["y_val"] = d["x_train"][held], d["y_train"][held]
    train = np.flatnonzero(~held)
    for split, key, available in (("train", "train_size", train), ("test", "test_size", np.arange(len(d["y_test"])))):
        size = config.get(key)
        if size:
            labels = d[f"y_{split}"][available]
            available = available[data.stratified_indices(labels, size, DATA_SEED)]
        d[f"x_{split}"], d[f"y_{split}"] = d[f"x_{split}"][available], d[f"y_{split}"][available]
    return d


def make_pipelines(d, config, seed):
    """Training (shuffled, augmented for images), validation and test pipelines.

    Call after `keras.utils.set_random_seed(seed)`: then the training
    batches are a function of `seed` alone.
    """
    from keras_hta.experiments import data

    bs = config["batch_size"]
    if d["x_train"].dtype == np.uint8:  # images: the paper's augmentation
        mean, std = data.channel_stats(d["x_train"])
        train = data.image_pipeline(d["x_train"], d["y_train"], bs, True, mean, std, seed=seed)
        val, test = (data.image_pipeline(d[f"x_{s}"], d[f"y_{s}"], bs, False, mean, std) for s in ("val", "test"))
        return train, val, test, d["x_train"].shape[1:]
    expand = (lambda a: a) if config["model"] == "mlp" else (lambda a: a[..., None])
    train = data.array_pipeline(expand(d["x_train"]), d["y_train"], bs, True, seed=seed)
    val, test = (data.array_pipeline(expand(d[f"x_{s}"]), d[f"y_{s}"], bs, False) for s in ("val", "test"))
    return train, val, test, expand(d["x_train"]).shape[1:]


_STRATEGY = {}


def _strategy(multi_worker=False):
    """One strategy per process: multi-worker from TF_CONFIG, else all local GPUs (TensorFlow; None elsewhere)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if "strategy" not in _STRATEGY:
        if multi_worker:
            from keras_hta import multi_worker_strategy

            _STRATEGY["strategy"] = multi_worker_strategy()
        else:
            gpus = tf.config.list_logical_devices("GPU")
            _STRATEGY["strategy"] = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    return _STRATEGY["strategy"]


def _non_chief_index():
    """This worker's index in TF_CONFIG, or `None` on the chief (which writes the results)."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task", {})
    kind, index = task.get("type", "chief"), task.get("index", 0)
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config.get("cluster", {}))
    return None if chief else index


def run_config(config, arm):
    """The settings a run of `arm` depends on: the baselines ignore HTA's."""
    return {k: v for k, v in config.items() if arm in HTA_ARMS or k not in HTA_KEYS}


def train_one(config, arm, seed, d, verbose=0, multi_worker=False):
    """Trains one arm for one seed; returns its result record.

    Everything random in the run (initial weights, shuffle order,
    augmentation) follows from `seed` alone: the global seed is set before
    the pipelines and the network are built, so runs do not depend on what
    ran before them in the process.
    """
    import keras

    import keras_hta as hta
    from keras_hta.experiments import models

    keras.utils.set_random_seed(seed)
    train, val, test, shape = make_pipelines(d, config, seed)
    steps = int(np.ceil(len(d["y_train"]) / config["batch_size"])) * config["epochs"]
    lr = config["lr"]
    if config["lr_schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config["lr"], steps)
    strategy = _strategy(multi_worker)
    with strategy.scope() if strategy else contextlib.nullcontext():
        keras.utils.set_random_seed(seed)  # same initial weights for every arm
        network = models.get(config["model"], config["width"], len(d["class_names"]), shape)
        model = network
        callbacks = []
        if arm in HTA_ARMS:
            norm, update = ("l2", "gradient") if arm == "hta_l2" else (config["norm"], config["penalty_update"])
            model = hta.HomotopyModel.from_model(
                network, split=config["split"], anchor=config["anchor"], norm=norm, penalty_update=update,
                homotopy_l=config["L_start"], seed=seed,
                twin_batch="split" if arm == "hta_split" else "full",
            )
            callbacks.append(hta.HomotopyScheduler(l_schedule(config)))
        model.compile(
            optimizer=keras.optimizers.SGD(lr, momentum=config["momentum"], weight_decay=config["weight_decay"] or None,
                                           use_ema=arm == "sgd_ema"),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    start = time.perf_counter()
    history = model.fit(train, validation_data=val, epochs=config["epochs"], callbacks=callbacks,
                        verbose=verbose, shuffle=False)
    seconds = time.perf_counter() - start
    h = history.history
    # After fit: EMA weights are swapped in for sgd_ema; θ for HTA. The test
    # set is read once, here.
    val_final = 100.0 * (1.0 - model.evaluate(val, verbose=0, return_dict=True)["accuracy"])
    test_error = 100.0 * (1.0 - model.evaluate(test, verbose=0, return_dict=True)["accuracy"])
    return {
        "arm": arm, "seed": seed, "config": run_config(config, arm),
        "val_error": [100.0 * (1.0 - a) for a in h["val_accuracy"]], "val_final_error": val_final,
        "test_error": test_error, "train_loss": h["f_theta"] if "f_theta" in h else h["loss"],
        "homotopy_l": h.get("homotopy_l"), "seconds": round(seconds, 2),
        "finite": bool(np.all(np.isfinite(h["loss"]))),
    }


def summarize(runs):
    """Per arm over seeds: test accuracy mean, sample std (ddof=1), max; mean errors; rate of improvement over SGD;
    and each arm against SGD paired seed by seed (`stats.paired`, with the difference it detects at power 0.8)."""
    from keras_hta.experiments import stats

    summary = {}
    for arm in ARMS:
        chosen = [r for r in runs if r["arm"] == arm]
        if chosen:
            errors = np.array([r["test_error"] for r in chosen])
            val = np.array([r["val_final_error"] for r in chosen])
            acc = 100.0 - errors
            summary[arm] = {"seeds": len(errors), "error_mean": float(errors.mean()),
                            "error_std": stats.sample_std(errors),
                            "error_min": float(errors.min()), "acc_mean": float(acc.mean()),
                            "acc_std": stats.sample_std(acc), "acc_max": float(acc.max()),
                            "val_error_mean": float(val.mean()), "val_acc_mean": float(100.0 - val.mean()),
                            "seconds_mean": float(np.mean([r["seconds"] for r in chosen]))}
    if "sgd" in summary and summary["sgd"]["error_mean"] > 0:
        base = summary["sgd"]["error_mean"]
        for arm in ARMS[1:]:
            if arm in summary:
                summary[arm]["roi_percent"] = 100.0 * (base - summary[arm]["error_mean"]) / base
        if "hta" in summary:
            summary["roi_percent"] = summary["hta"]["roi_percent"]
    for arm in (arm for arm in ARMS[1:] if arm in summary and "sgd" in summary):
        ours, sgd = paired_accuracies(arm, runs)
        if len(ours) >= 2:  # the paired difference over the seeds both arms ran: what results.md states
            try:
                row = stats.paired(ours, sgd)
            except ImportError:  # SciPy is not installed: no test (`verdict` says so)
                continue
            row["mde_power_0.8"] = stats.paired_mde(row["sd_diff"], row["n"]) if row["sd_diff"] > 0 else None
            summary[arm]["paired_vs_sgd"] = row
    return summary


def describe_provenance(runs):
    """One line per distinct environment the runs came from (code, versions, Python, CPU), or none for older runs."""
    seen = []
    for r in runs or []:
        p = r.get("provenance") if isinstance(r, dict) else None
        if not p:
            continue
        code, cpu = p.get("code"), p.get("cpu")
        line = ("Produced " + (f"by commit {code['commit'][:10]}{' with local changes' if code['dirty'] else ''} "
                               if code else "")
                + "with " + ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items())
                + f"; Python {p.get('python')}; {(p.get('cpus') or {}).get('usable')} usable CPUs of "
                f"{(p.get('cpus') or {}).get('machine')}"
                + (f" ({cpu['model']}; {' '.join(cpu['vector']) or 'no vector sets recorded'})" if cpu else ""))
        threads = p.get("threads") or {}
        if threads:
            line += "; " + ", ".join(f"{k}={threads.get(k)}" for k in THREAD_ENV if threads.get(k) is not None)
        if line not in seen:
            seen.append(line)
    return seen


def markdown(config, summary, command, runs=None):
    """results.md: the command, where the runs came from, the settings, Tables 2 and 3, and the comparison in words."""
    name = config["model"] + (f" (width {config['width']:g})" if config["width"] != 1 else "")
    return "\n".join(_header(config, command, runs) + _table2(name, summary) + _table3(name, summary)
                     + _in_words(summary, runs)) + "\n"


def _header(config, command, runs):
    produced = describe_provenance(runs)
    recorded = sum(1 for r in runs or [] if r.get("provenance"))
    lines = [f"Command: `{command}`", ""]
    if produced:
        lines += [f"{line} ({recorded} of {len(runs)} runs record it)." for line in produced] + [""]
    return lines + [
        f"Data: {config['dataset']}; {config['epochs']} epochs; validation {config['val_size']:g} held out of train; "
        f"L {config['L_start']:g} -> {config['L_stop']:g} by {config['L_step']:g}, {config['epochs_per_L']} epochs "
        f"each; norm={config['norm']}, penalty_update={config['penalty_update']}, split={config['split']}, "
        f"anchor={config['anchor']}; backend {config.get('backend', 'tensorflow')}", ""]


def _table2(name, summary):
    lines = ["Table 2 format (test error after the last epoch, mean over seeds):", "",
             "| Model | Original error rate | Error rate with HTA | Rate of improvement |", "|---|---|---|---|"]
    s, h = summary.get("sgd"), summary.get("hta")
    if s and h:
        lines.append(f"| {name} | {s['error_mean']:.2f}% | {h['error_mean']:.2f}% | {summary['roi_percent']:.2f}% |")
    return lines


def _table3(name, summary):
    lines = ["", "Table 3 format (accuracy over seeds; rate of improvement of the mean test error over SGD):", "",
             "| Model | Method | seeds | validation mean | test mean | test sample std | test max | rate of improvement "
             "| seconds per run |", "|---|---|---|---|---|---|---|---|---|"]
    for arm in (arm for arm in ARMS if arm in summary):
        a = summary[arm]
        roi = f"{a['roi_percent']:.2f}%" if "roi_percent" in a else "-"
        lines.append(f"| {name} | {ARM_LABELS[arm]} | {a['seeds']} | {a['val_acc_mean']:.2f}% | {a['acc_mean']:.2f}% "
                     f"| {_std(a['acc_std'])} | {a['acc_max']:.2f}% | {roi} | {a['seconds_mean']:.1f} |")
    return lines


def _in_words(summary, runs):
    lines = []
    verdicts = [verdict(arm, summary, runs) for arm in ARMS[1:] if arm in summary and "sgd" in summary]
    if verdicts:
        lines += ["", "In words (test accuracy against SGD, paired seed by seed; two-sided tests):", ""]
        lines += [f"- {v}" for v in verdicts]
    diverged = [r for r in runs or [] if not r.get("finite", True)]
    if diverged:
        lines += ["", "Runs that diverged (their errors are in the tables above, but no arm is compared with them):",
                  ""]
        lines += [f"- {ARM_LABELS.get(r['arm'], r['arm'])}, seed {r['seed']}: {divergence(r)}" for r in diverged]
    return lines


def divergence(run):
    """'diverged: NaN loss at epoch 3' (epochs from 1), from a run's training loss per epoch."""
    losses = run.get("train_loss") or []
    for epoch, loss in enumerate(losses, 1):
        if loss is None or not np.isfinite(loss):
            return f"diverged: {'NaN' if loss is None or np.isnan(loss) else 'infinite'} loss at epoch {epoch}"
    return "diverged: a non-finite loss within an epoch"


def _std(value):
    return f"{value:.2f}%" if np.isfinite(value) else "—"


def paired_accuracies(arm, runs):
    """Test accuracies of `arm` and of SGD on the seeds both ran, in seed order: the paired design's two columns."""
    by_seed = {k: {r["seed"]: 100.0 - r["test_error"] for r in runs or [] if r and r["arm"] == k} for k in (arm, "sgd")}
    seeds = sorted(set(by_seed[arm]) & set(by_seed["sgd"]))
    return [by_seed[arm][s] for s in seeds], [by_seed["sgd"][s] for s in seeds]


def verdict(arm, summary, runs=None):
    """One sentence: `arm` − SGD in test accuracy, paired over the seeds (each seed gives both arms the same initial
    weights and batches), with its 95% confidence interval, the paired t and Wilcoxon tests, and what the design
    resolves (the difference its seeds detect with power 0.8 at the spread seen)."""
    a, s = summary[arm], summary["sgd"]
    diverged = [r for r in runs or [] if r and r["arm"] in (arm, "sgd") and not r.get("finite", True)]
    if diverged:
        names = ", ".join(f"{ARM_LABELS.get(r['arm'], r['arm'])} seed {r['seed']}" for r in diverged)
        return f"{ARM_LABELS[arm]} not compared with SGD: {len(diverged)} run(s) diverged ({names}; below)."
    gap = a["acc_mean"] - s["acc_mean"]
    better = f"{ARM_LABELS[arm]} {'above' if gap > 0 else 'below' if gap < 0 else 'level with'} SGD"
    text = f"{better}: {a['acc_mean']:.2f}% vs {s['acc_mean']:.2f}% ({gap:+.2f} points)"
    row = a.get("paired_vs_sgd")  # computed once, by `summarize`
    if row is None:
        paired = len(paired_accuracies(arm, runs)[0])
        if paired < 2:
            return text + f"; {paired} paired seed(s): no test possible."
        return text + " (no test: SciPy is not installed)."
    from keras_hta.experiments import stats

    if row["sd_diff"] == 0:
        return text + f"; the same difference on all {row['n']} seeds: no interval to give."
    resolved = ("the interval excludes 0" if row["ci_low"] > 0 or row["ci_high"] < 0
                else "the interval includes 0: no difference resolved")
    return (text + f"; paired over {row['n']} seeds, {ARM_LABELS[arm]} − SGD = {row['mean_diff']:+.2f} points, 95% CI "
            f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] (paired t p = {stats.format_p(row['p_ttest'])}, "
            f"Wilcoxon p = {stats.format_p(row['p_wilcoxon'])}): {resolved}; at this spread (sd of the differences "
            f"{row['sd_diff']:.2f}) {row['n']} seeds detect a true difference of "
            f"{row['mde_power_0.8']:.2f} points with power 0.8.")


def write_json_atomic(path, obj):
    """Writes `obj` as JSON to `path` atomically (see `experiments.write_atomic`)."""
    from keras_hta.experiments import write_atomic

    write_atomic(path, lambda f: json.dump(obj, f, indent=1))


def check_writable_folder(path, flag="--out"):
    """Raises a ValueError naming `flag` unless `path` is, or can be made, a writable folder.

    Creates nothing: the folder is made when the first result is written.
    """
    folder = os.path.abspath(path)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"Argument `{flag}` cannot be a folder: {existing} is a file. Received: {flag} {path}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"Argument `{flag}` cannot be written: {existing} is read-only. Received: {flag} {path}")


RUN_FIELDS = ("arm", "seed", "test_error", "val_error", "val_final_error", "seconds")


@contextlib.contextmanager
def _locked(folder):
    """An exclusive lock on `folder` (flock on the folder itself: no file is left behind) where the OS has one."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one writer per --out
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _run_key(run):
    return run["arm"], run["seed"], json.dumps(run.get("config"), sort_keys=True)


def save_runs(path, runs, fields):
    """Writes `runs` to the results file with `fields`, under a lock, keeping the runs another process wrote there.

    Two `compare` processes may share one `--out` (seeds 0 and 1 in two
    terminals): each adds its runs to what is on disk at that moment.
    Returns every run the file now holds.
    """
    with _locked(os.path.dirname(os.path.abspath(path))):
        merged = read_runs(path)
        have = {_run_key(r) for r in merged}
        merged += [r for r in runs if _run_key(r) not in have]
        saved = {k: v for k, v in fields.items() if k != "summary"}
        write_json_atomic(path, {**saved, "runs": merged, **({"summary": fields["summary"]} if "summary" in fields else {})})
    return merged


def _check_run(i, r):
    """Raises a KeyError or TypeError saying what run `i` of a results file lacks or holds wrongly."""
    if not isinstance(r, dict):
        raise TypeError(f"run {i} is not an object")
    missing = [k for k in RUN_FIELDS if k not in r]
    if missing:
        raise KeyError(f"run {i} has no {', '.join(missing)}")
    for key in ("seed", "test_error", "val_final_error", "seconds"):
        if isinstance(r[key], bool) or not isinstance(r[key], (int, float)):
            raise TypeError(f"run {i}'s {key} is not a number: {r[key]!r}")
    if not isinstance(r["arm"], str) or not isinstance(r["val_error"], list):
        raise TypeError(f"run {i}'s arm is not a string or its val_error not a list")
    if not isinstance(r.get("config", {}), dict):
        raise TypeError(f"run {i}'s config is not an object: {r['config']!r}")


def read_runs(path):
    """The finished runs in a results file (none if it does not exist)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or not isinstance(saved.get("config", {}), dict):
            raise TypeError("its top level or its config is not an object")
        runs = saved["runs"]
        if not isinstance(runs, list):
            raise TypeError("runs is not a list")
        for i, r in enumerate(runs):
            _check_run(i, r)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"The results file {path} cannot be read ({type(error).__name__}: {error}). Move it away to keep it "
            "and rerun, or pass another --out."
        ) from None
    for r in runs:  # files written before runs carried their configuration, or their backend
        r.setdefault("config", run_config(saved.get("config", {}), r["arm"]))
        r["config"].setdefault("backend", "tensorflow")
    return runs


def run_compare(args, command=None):
    import sys

    from keras_hta.experiments.plots import plot_error_curves

    config = _config(args)
    check_writable_folder(args.out)
    if getattr(args, "own_process", False):
        fix_threads(config.get("threads"))
    import keras  # after the flags are checked, and the threads fixed

    config["backend"] = keras.backend.backend()  # recorded, and part of each run's key
    command = command or getattr(args, "command_line", None) or "keras-hta " + " ".join(sys.argv[1:])
    verbose = fit_verbosity(args)
    if args.multi_worker:
        _strategy(multi_worker=True)  # before any other TensorFlow work
        index = _non_chief_index()
        if index is not None:  # only the chief writes the results
            args.out = os.path.join(args.out, f"worker{index}")
    path = os.path.join(args.out, "results.json")
    runs = read_runs(path)

    def finished(arm, seed):
        key = run_config(config, arm)
        return next((r for r in runs if r["arm"] == arm and r["seed"] == seed and r["config"] == key), None)

    done = sum(finished(arm, seed) is not None for seed in args.seeds for arm in args.arms)
    if done:
        print(f"Resuming: {done} finished run(s) in {path}")
    d = None
    for seed in args.seeds:
        for arm in args.arms:
            if finished(arm, seed):
                continue
            if d is None:
                d = load_data(config, args.tfds_dir, args.cache_dir)
            print(f"\n== {arm.upper()} | {config['model']} | seed {seed} ==", flush=True)
            run = train_one(config, arm, seed, d, verbose, args.multi_worker)
            run["provenance"] = provenance.record(command)  # commit, versions, CPU, threads, load: per run
            os.makedirs(args.out, exist_ok=True)  # only once a run has finished: a failed start leaves nothing
            runs[:] = save_runs(path, runs + [run], {"command": command})  # saved run by run
    # The file keeps every finished run; the summary covers this call's configuration, seeds and arms.
    selected = [finished(arm, seed) for seed in args.seeds for arm in args.arms]
    summary = summarize(selected)
    os.makedirs(args.out, exist_ok=True)
    runs[:] = save_runs(path, runs, {"command": command, "config": config, "summary": summary})
    table = markdown(config, summary, command, selected)
    from keras_hta.experiments import write_atomic

    write_atomic(os.path.join(args.out, "results.md"), lambda f: f.write(table))
    curves = {ARM_LABELS[arm]: [r["val_error"] for r in selected if r["arm"] == arm] for arm in args.arms}
    l_values = next((r["homotopy_l"] for r in selected if r["homotopy_l"]), None)
    plot_error_curves(os.path.join(args.out, "val_error.png"), curves, l_values,
                      title=f"{config['model']} on {os.path.basename(config['dataset'])}: validation error")
    print("\n" + table)
    print(f"Wrote {path}, results.md and val_error.png in {args.out}")
    return {"config": config, "runs": selected, "summary": summary}
