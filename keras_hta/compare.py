"""`keras-hta compare`: SGD against HTA with every ordinary hyperparameter equal.

For each seed both arms start from the same initial weights and see the same
data order, optimizer, learning rate, momentum, weight decay, batch size,
epochs and augmentation; HTA only adds its twins and the L schedule. Results
are written run by run to `results.json` (a rerun skips finished runs), then
summarised in `results.md` (the paper's Table 2 and Table 3 formats) and
`val_error.png` (Figure 2).
"""

import json
import os
import time

import numpy as np

ARMS = ("sgd", "hta", "hta_l2", "hta_split", "sgd_ema")
ARM_LABELS = {"sgd": "SGD", "hta": "HTA", "hta_l2": "HTA (l2, gradient step)", "hta_split": "HTA (twin_batch=split)",
              "sgd_ema": "SGD + EMA"}
HTA_ARMS = ("hta", "hta_l2", "hta_split")


def add_compare_parser(sub):
    p = sub.add_parser(
        "compare",
        help="train plain SGD and HTA with identical hyperparameters and compare",
        description=__doc__.split("\n\n")[0],
    )
    add_data_model_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--L-start", type=float, default=0.01)
    p.add_argument("--L-stop", type=float, default=0.005)
    p.add_argument("--L-step", type=float, default=-0.001)
    p.add_argument("--epochs-per-L", type=int, default=4)
    p.add_argument("--norm", choices=["squared", "l2"], default="squared",
                   help="squared (default, the paper's formula) or l2 (the authors' code; needs --penalty-update gradient)")
    p.add_argument("--penalty-update", choices=["proximal", "gradient"], default="proximal",
                   help="proximal (default: the penalties applied exactly after each optimizer step; stable at any "
                        "learning rate) or gradient (an explicit gradient step on them)")
    p.add_argument("--split", choices=["channels", "layers", "random"], default="channels")
    p.add_argument("--anchor", choices=["zeros", "init"], default="zeros")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=["sgd", "hta"],
                   help="what to train (default: sgd hta); also hta_l2 (the authors' form: l2 norms, explicit "
                        "gradient step), hta_split (each twin sees half of each batch) and sgd_ema (SGD with "
                        "Keras' use_ema=True)")
    p.add_argument("--out", default="compare_results", help="output folder (default compare_results)")
    p.add_argument("--multi-worker", action="store_true",
                   help="train with MultiWorkerMirroredStrategy across the workers in TF_CONFIG "
                        "(start the same command on every worker; the chief writes the results)")
    p.set_defaults(func=run_compare)


def add_data_model_arguments(p):
    """The data, model and optimizer flags shared by `compare` and `tune`."""
    p.add_argument("--dataset", choices=["mnist1d", "cifar10"], default="mnist1d",
                   help="mnist1d (default, generated locally) or cifar10 (tensorflow_datasets)")
    p.add_argument("--data-dir", help="image folder or .tar.gz with train/<class>/* and test/<class>/* (CIFAR-10 layout)")
    p.add_argument("--tfds-dir", help="tensorflow_datasets data_dir for --dataset cifar10")
    p.add_argument("--model", choices=["vgg11", "vgg13", "vgg16", "vgg19", "cnn1d", "mlp"],
                   help="default: cnn1d for mnist1d, vgg11 for images")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--epochs", type=int, default=24, help="default 24 (the paper's 6 L values x 4 epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--train-size", type=int, help="use only this many training examples")
    p.add_argument("--test-size", type=int, help="use only this many test examples")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Keras fit verbosity")


def _config(args):
    return data_model_config(args, ("width", "epochs", "batch_size", "lr", "lr_schedule", "momentum", "weight_decay",
                                    "L_start", "L_stop", "L_step", "epochs_per_L", "norm", "penalty_update", "split", "anchor",
                                    "train_size", "test_size"), args.arms)


def data_model_config(args, keys, arms=("sgd",)):
    """The run's settings as a flat dict; checks them before any training."""
    model = args.model or ("cnn1d" if args.dataset == "mnist1d" and not args.data_dir else "vgg11")
    dataset = "folder:" + os.path.abspath(args.data_dir) if args.data_dir else args.dataset
    config = {"dataset": dataset, "model": model, **{k: getattr(args, k) for k in keys}}
    if "sgd" not in arms:
        raise ValueError(f"Argument `--arms` must include the baseline 'sgd'. Received: {list(arms)}")
    for name in ("epochs", "batch_size", "epochs_per_L"):
        if name in config and config[name] < 1:
            raise ValueError(f"Argument `--{name.replace('_', '-')}` must be >= 1. Received: {config[name]}")
    return config


def load_data(config, tfds_dir=None):
    from keras_hta import data

    if config["dataset"].startswith("folder:"):
        d = data.load_image_folder(config["dataset"][len("folder:"):])
    elif config["dataset"] == "cifar10":
        d = data.load_cifar10_tfds(tfds_dir)
    else:
        d = data.load_mnist1d()
    for split, size in (("train", config["train_size"]), ("test", config["test_size"])):
        if size:
            d[f"x_{split}"], d[f"y_{split}"] = d[f"x_{split}"][:size], d[f"y_{split}"][:size]
    return d


def make_pipelines(d, config, seed):
    from keras_hta import data

    bs = config["batch_size"]
    if d["x_train"].dtype == np.uint8:  # images: the paper's augmentation
        mean, std = data.channel_stats(d["x_train"])
        train = data.image_pipeline(d["x_train"], d["y_train"], bs, True, mean, std, seed=seed)
        test = data.image_pipeline(d["x_test"], d["y_test"], bs, False, mean, std)
        return train, test, d["x_train"].shape[1:]
    x_train, x_test = d["x_train"], d["x_test"]
    if config["model"] != "mlp":
        x_train, x_test = x_train[..., None], x_test[..., None]
    train = data.array_pipeline(x_train, d["y_train"], bs, True, seed=seed)
    test = data.array_pipeline(x_test, d["y_test"], bs, False)
    return train, test, x_train.shape[1:]


_STRATEGY = {}


def _strategy(multi_worker=False):
    """One strategy per process: multi-worker from TF_CONFIG, else all local GPUs."""
    import tensorflow as tf

    if "strategy" not in _STRATEGY:
        if multi_worker:
            from keras_hta.multi_worker import multi_worker_strategy

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


def train_one(config, arm, seed, d, verbose=0, multi_worker=False):
    """Trains one arm for one seed; returns its result record."""
    import keras

    import keras_hta as hta
    from keras_hta import models

    train, test, shape = make_pipelines(d, config, seed)
    steps = int(np.ceil(len(d["y_train"]) / config["batch_size"])) * config["epochs"]
    lr = config["lr"]
    if config["lr_schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config["lr"], steps)
    strategy = _strategy(multi_worker)
    with strategy.scope():
        keras.utils.set_random_seed(seed)  # same initial weights for both arms
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
            schedule = hta.schedules.Linear(config["L_start"], config["L_stop"], config["L_step"], config["epochs_per_L"])
            callbacks.append(hta.HomotopyScheduler(schedule))
        model.compile(
            optimizer=keras.optimizers.SGD(lr, momentum=config["momentum"], weight_decay=config["weight_decay"] or None,
                                           use_ema=arm == "sgd_ema"),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    start = time.perf_counter()
    history = model.fit(train, validation_data=test, epochs=config["epochs"], callbacks=callbacks, verbose=verbose)
    h = history.history
    val_error = [100.0 * (1.0 - a) for a in h["val_accuracy"]]
    # After fit: EMA weights are swapped in for sgd_ema; θ for HTA.
    final = 100.0 * (1.0 - model.evaluate(test, verbose=0, return_dict=True)["accuracy"])
    return {
        "arm": arm, "seed": seed, "val_error": val_error, "final_error": final,
        "best_error": min(val_error), "train_loss": h["f_theta"] if "f_theta" in h else h["loss"],
        "homotopy_l": h.get("homotopy_l"), "seconds": round(time.perf_counter() - start, 2),
        "finite": bool(np.all(np.isfinite(h["loss"]))),
    }


def summarize(runs):
    """Per arm: mean, std, max accuracy and mean/min error over seeds (final epoch)."""
    summary = {}
    for arm in ARMS:
        errors = np.array([r["final_error"] for r in runs if r["arm"] == arm])
        if len(errors):
            acc = 100.0 - errors
            summary[arm] = {"seeds": len(errors), "error_mean": float(errors.mean()), "error_std": float(errors.std()),
                            "error_min": float(errors.min()), "acc_mean": float(acc.mean()),
                            "acc_std": float(acc.std()), "acc_max": float(acc.max())}
    if "sgd" in summary and summary["sgd"]["error_mean"] > 0:
        base = summary["sgd"]["error_mean"]
        for arm in ARMS[1:]:
            if arm in summary:
                summary[arm]["roi_percent"] = 100.0 * (base - summary[arm]["error_mean"]) / base
        if "hta" in summary:
            summary["roi_percent"] = summary["hta"]["roi_percent"]
    return summary


def markdown(config, summary, command):
    name = config["model"] + (f" (width {config['width']:g})" if config["width"] != 1 else "")
    s, h = summary.get("sgd"), summary.get("hta")
    lines = [f"Command: `{command}`", "", f"Data: {config['dataset']}; {config['epochs']} epochs; "
             f"L {config['L_start']:g} -> {config['L_stop']:g} by {config['L_step']:g}, {config['epochs_per_L']} epochs each; "
             f"norm={config['norm']}, penalty_update={config['penalty_update']}, split={config['split']}, anchor={config['anchor']}", "",
             "Table 2 format (final-epoch test error, mean over seeds):", "",
             "| Model | Original error rate | Error rate with HTA | Rate of improvement |", "|---|---|---|---|"]
    if s and h:
        lines.append(f"| {name} | {s['error_mean']:.2f}% | {h['error_mean']:.2f}% | {summary['roi_percent']:.2f}% |")
    lines += ["", "Table 3 format (test accuracy over seeds; rate of improvement of the mean error over SGD):", "",
              "| Model | Method | seeds | mean | stddev | max | rate of improvement |", "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        if arm in summary:
            a = summary[arm]
            roi = f"{a['roi_percent']:.2f}%" if "roi_percent" in a else "-"
            lines.append(f"| {name} | {ARM_LABELS[arm]} | {a['seeds']} | {a['acc_mean']:.2f}% | {a['acc_std']:.2f}% | {a['acc_max']:.2f}% | {roi} |")
    return "\n".join(lines) + "\n"


def run_compare(args, command=None):
    import sys

    from keras_hta.plots import plot_error_curves

    config = _config(args)
    command = command or "keras-hta " + " ".join(sys.argv[1:])
    if args.multi_worker:
        _strategy(multi_worker=True)  # before any other TensorFlow work
        index = _non_chief_index()
        if index is not None:  # only the chief writes the results
            args.out = os.path.join(args.out, f"worker{index}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("config") == config:
            runs = saved["runs"]
            print(f"Resuming: {len(runs)} finished run(s) in {path}")
    d = load_data(config, args.tfds_dir)
    for seed in args.seeds:
        for arm in args.arms:
            if any(r["arm"] == arm and r["seed"] == seed for r in runs):
                continue
            print(f"\n== {arm.upper()} | {config['model']} | seed {seed} ==")
            runs.append(train_one(config, arm, seed, d, args.verbose, args.multi_worker))
            with open(path, "w") as f:  # saved run by run
                json.dump({"config": config, "command": command, "runs": runs}, f, indent=1)
    # The file keeps every finished run; the summary covers this call's seeds and arms.
    selected = [r for r in runs if r["seed"] in args.seeds and r["arm"] in args.arms]
    summary = summarize(selected)
    with open(path, "w") as f:
        json.dump({"config": config, "command": command, "runs": runs, "summary": summary}, f, indent=1)
    runs = selected
    table = markdown(config, summary, command)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    curves = {ARM_LABELS[arm]: [r["val_error"] for r in runs if r["arm"] == arm] for arm in args.arms}
    l_values = next((r["homotopy_l"] for r in runs if r["homotopy_l"]), None)
    plot_error_curves(os.path.join(args.out, "val_error.png"), curves, l_values,
                      title=f"{config['model']} on {os.path.basename(config['dataset'])}: SGD vs HTA")
    print("\n" + table)
    print(f"Wrote {path}, results.md and val_error.png in {args.out}")
    return {"config": config, "runs": runs, "summary": summary}
