"""The study (issue #12): where does HTA help? Equal-budget tuning, then seeded final runs.

Protocol, per data set:
  1. Tune every arm with the same keras-tuner budget (RandomSearch, `--trials`
     trials of `--epochs` epochs, seed 0, objective: the validation accuracy of
     the model as it would be deployed: θ, EMA weights, or the merged average).
     SGD (momentum 0.9, cosine learning-rate decay) tunes the learning rate and
     weight decay, and so does SGD + EMA; every HTA arm takes the tuned SGD's
     optimizer and tunes its L schedule and what its hypothesis leaves free.
  2. Final runs of each arm's best configuration with seeds 1..`--seeds`
     (never the tuning seed): test accuracy (read once per run), rate of
     improvement of the mean test error over SGD and over SGD + EMA, Welch's
     t-test p-value against SGD, seconds per run. The same-compute row gives
     SGD twice the epochs (an HTA step costs up to two SGD steps), and the
     paper's setting row trains SGD at a constant learning rate.

Arms (hypotheses of issue #12): sgd, sgd_ema, sgd_2x (same compute),
sgd_constant (the paper's constant rate); h1_paper_zeros / h1_paper_init (the
paper's L 0.01 -> 0.005 by 0.001), h2_homotopy_init / h2_homotopy_zeros (a true
homotopy: geometric L from [1, 10] down to [1e-4, 1e-3]), h3_elastic_split
(`twin_batch="split"`, then `merge(how="average", recompute_bn=...)`), h4_m3 /
h4_m4 (3 and 4 twins), h5_layers / h5_random (other splits; channels is the
default of every other arm), h6_long_final (L reaches its last value in the
first quarter of the run and stays there), h7_ema (HTA with the optimizer's EMA).

Usage (resumable run by run; results under benchmarks/results/study-<data>/):
    python benchmarks/study.py mnist1d-cnn     # about 20 minutes on 2 CPU cores
    python benchmarks/study.py mnist1d-mlp
    python benchmarks/study.py cifar10 --trials 2 --epochs 8 --seeds 3
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = {  # name: (compare config, model)
    "mnist1d-cnn": ({"dataset": "mnist1d", "model": "cnn1d"}, "cnn1d"),
    "mnist1d-mlp": ({"dataset": "mnist1d", "model": "mlp"}, "mlp"),
    "cifar10": ({"dataset": "folder:" + os.path.join(HERE, "..", "..", "shared", "datasets", "cifar10-jpeg.tar.gz"),
                 "model": "vgg11", "width": 0.125}, "vgg11"),
}
ARMS = {
    "sgd": {"kind": "sgd"},
    "sgd_ema": {"kind": "sgd", "ema": True},
    "h1_paper_zeros": {"schedule": "paper", "anchor": "zeros"},
    "h1_paper_init": {"schedule": "paper", "anchor": "init"},
    "h2_homotopy_init": {"schedule": "homotopy", "anchor": "init"},
    "h2_homotopy_zeros": {"schedule": "homotopy", "anchor": "zeros"},
    "h3_elastic_split": {"schedule": "free", "twin_batch": "split", "merge": "average"},
    "h4_m3": {"schedule": "free", "num_groups": 3},
    "h4_m4": {"schedule": "free", "num_groups": 4},
    "h5_layers": {"schedule": "free", "split": "layers"},
    "h5_random": {"schedule": "free", "split": "random"},
    "h6_long_final": {"schedule": "long_final"},
    "h7_ema": {"schedule": "free", "ema": True},
}
EXTRA_ROWS = ("sgd_2x", "sgd_constant")  # final runs only, with the tuned SGD's settings


def schedule_for(arm, hp, epochs):
    """The arm's L schedule from the trial's hyperparameters (a fixed one for the paper's)."""
    from keras_hta import schedules

    spec = ARMS[arm]["schedule"]
    if spec == "paper":  # six values over the run, as the paper's 4 epochs each of 24
        return schedules.Linear(0.01, 0.005, -0.001, max(1, epochs // 6))
    if spec == "homotopy":
        start = hp.Float("l_start", 1.0, 10.0, sampling="log")
        stop = hp.Float("l_stop", 1e-4, 1e-3, sampling="log")
        values = hp.Int("values", 3, max(3, min(8, epochs)))
    else:
        a = hp.Float("l_a", 1e-3, 10.0, sampling="log")
        b = hp.Float("l_b", 1e-4, 1.0, sampling="log")
        start, stop = max(a, b), min(a, b)
        values = hp.Int("values", 2, max(2, min(8, epochs)))
    span = epochs // 4 if spec == "long_final" else epochs  # h6: the last L for three quarters of the run
    epochs_per_value = max(1, span // values)
    if spec == "homotopy" or hp.Choice("kind", ["geometric", "linear"]) == "geometric":
        return schedules.Geometric(start, stop, (stop / start) ** (1.0 / max(values - 1, 1)), epochs_per_value)
    return schedules.Linear(start, stop, (stop - start) / max(values - 1, 1), epochs_per_value)


def train(arm, hp, d, config, seed, epochs, sgd_settings, final=False, verbose=0):
    """Builds, trains and evaluates one run; returns its record. The test set is read only in final runs."""
    import keras

    import keras_hta as hta
    from keras_hta.experiments import compare, models

    spec = ARMS.get(arm, ARMS["sgd"])
    keras.utils.set_random_seed(seed)
    run_config = {**config, "batch_size": 128}
    train_ds, val_ds, test_ds, shape = compare.make_pipelines(d, run_config, seed)
    steps = int(np.ceil(len(d["y_train"]) / 128)) * epochs
    if spec.get("kind") == "sgd" and arm in ARMS:  # the baselines tune their own optimizer
        lr = hp.Float("lr", 0.005, 0.3, sampling="log")
        wd = hp.Float("weight_decay", 1e-5, 1e-2, sampling="log")
    else:
        lr, wd = sgd_settings["lr"], sgd_settings["weight_decay"]
    keras.utils.set_random_seed(seed)
    network = models.get(config["model"], config.get("width", 1.0), len(d["class_names"]), shape)
    model, callbacks = network, []
    if spec.get("kind") != "sgd":
        anchor = spec.get("anchor") or hp.Choice("anchor", ["zeros", "init"])
        model = hta.HomotopyModel.from_model(
            network, split=spec.get("split", "channels"), anchor=anchor, num_groups=spec.get("num_groups", 2),
            twin_batch=spec.get("twin_batch", "full"), seed=seed)
        callbacks.append(hta.HomotopyScheduler(schedule_for(arm, hp, epochs)))
    rate = lr if arm == "sgd_constant" else keras.optimizers.schedules.CosineDecay(lr, steps)
    model.compile(optimizer=keras.optimizers.SGD(rate, momentum=0.9, weight_decay=wd, use_ema=bool(spec.get("ema"))),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=verbose,
                        shuffle=False)
    deployed = model
    if spec.get("merge"):  # h3: the elastic average, BatchNorm statistics recomputed on training data
        deployed = hta.merge(model, how="average", recompute_bn=train_ds, steps=50)
        deployed.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    seconds = time.perf_counter() - start
    record = {"val_accuracy": float(deployed.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"]),
              "val_curve": [float(a) for a in history.history["val_accuracy"]], "seconds": round(seconds, 2)}
    if final:
        record["test_accuracy"] = float(deployed.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])
    return record


def tune(arm, d, config, args, sgd_settings, out):
    """RandomSearch over the arm's space; returns the best hyperparameters' values."""
    import keras_tuner

    class ArmSearch(keras_tuner.RandomSearch):  # keras-tuner's way to tune anything: override run_trial
        def run_trial(self, trial, *fit_args, **fit_kwargs):
            record = train(arm, trial.hyperparameters, d, config, 0, args.epochs, sgd_settings)
            return {"val_accuracy": record["val_accuracy"]}

    tuner = ArmSearch(objective=keras_tuner.Objective("val_accuracy", "max"), max_trials=args.trials, seed=0,
                      directory=os.path.join(out, "tuning"), project_name=arm, overwrite=False)
    tuner.search(verbose=0)
    best = tuner.get_best_hyperparameters(1)[0].values
    scores = [t.score for t in tuner.oracle.trials.values() if t.score is not None]
    print(f"  tuned {arm}: best val_accuracy {max(scores):.4f} over {len(scores)} trials: {best}", flush=True)
    return best, max(scores)


class FixedHP:
    """Replays tuned values through the keras-tuner HyperParameters calls `train` makes."""

    def __init__(self, values):
        self.values = values

    def _get(self, name, *args, **kwargs):
        return self.values[name]

    Float = Int = Choice = _get


def summarize(finals, arms):
    from scipy import stats

    rows = {}
    for arm in arms:
        runs = finals.get(arm, [])
        if runs:
            acc = np.array([100 * r["test_accuracy"] for r in runs])
            rows[arm] = {"seeds": len(acc), "acc_mean": float(acc.mean()), "acc_std": float(acc.std()),
                         "err_mean": float(100 - acc.mean()), "seconds": float(np.mean([r["seconds"] for r in runs])),
                         "accs": acc.tolist()}
    for arm, row in rows.items():
        for base in ("sgd", "sgd_ema"):
            if base in rows and arm != base:
                b = rows[base]["err_mean"]
                row[f"roi_vs_{base}"] = 100 * (b - row["err_mean"]) / b
        if "sgd" in rows and arm != "sgd" and len(row["accs"]) > 1 and rows["sgd"]["seeds"] > 1:
            row["p_vs_sgd"] = float(stats.ttest_ind(row["accs"], rows["sgd"]["accs"], equal_var=False).pvalue)
    return rows


def markdown(name, args, tuned, rows):
    lines = [f"Command: `python benchmarks/study.py {' '.join(sys.argv[1:])}`", "",
             f"{name}: {args.trials} trials x {args.epochs} epochs per arm (RandomSearch, seed 0, objective: "
             f"validation accuracy); final runs: seeds 1..{args.seeds}, test accuracy.", "",
             "| arm | tuned configuration | test accuracy mean ± std | ROI vs SGD | ROI vs SGD+EMA | p vs SGD "
             "| seconds per run |", "|---|---|---|---|---|---|---|"]
    for arm, row in rows.items():
        conf = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned.get(arm, {}).items())
        fmt = lambda k, f: f.format(row[k]) if k in row else "-"  # noqa: E731
        lines.append(f"| {arm} | {conf or '(the tuned SGD settings)'} | {row['acc_mean']:.2f}% ± {row['acc_std']:.2f}% "
                     f"| {fmt('roi_vs_sgd', '{:+.2f}%')} | {fmt('roi_vs_sgd_ema', '{:+.2f}%')} "
                     f"| {fmt('p_vs_sgd', '{:.3f}')} | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", choices=sorted(DATA))
    parser.add_argument("--trials", type=int, default=6, help="keras-tuner trials per arm (the same for every arm)")
    parser.add_argument("--epochs", type=int, default=24, help="epochs per trial and per final run")
    parser.add_argument("--seeds", type=int, default=5, help="final runs per arm (seeds 1..N)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS) + list(EXTRA_ROWS),
                        choices=list(ARMS) + list(EXTRA_ROWS))
    parser.add_argument("--train-size", type=int, help="a stratified subset of the training data")
    parser.add_argument("--out", help="default: benchmarks/results/study-<data>")
    args = parser.parse_args()
    for flag in ("trials", "epochs", "seeds"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag} must be >= 1. Received: {getattr(args, flag)}")
    if "sgd" not in args.arms:
        parser.error("argument --arms must include sgd (every other arm uses its tuned optimizer)")
    from keras_hta.experiments import compare, plots

    config = {**DATA[args.data][0], "val_size": 5000 if args.data == "cifar10" else 0.1,
              "train_size": args.train_size, "test_size": None}
    out = args.out or os.path.join(HERE, "results", f"study-{args.data}")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "study.json")
    state = json.load(open(path)) if os.path.exists(path) else {"tuned": {}, "finals": {}}
    d = compare.load_data(config)
    print(f"{args.data}: {len(d['y_train'])} train / {len(d['y_val'])} validation / {len(d['y_test'])} test", flush=True)

    def tuned_values(arm):
        if arm in EXTRA_ROWS:
            return {}
        if arm not in state["tuned"]:
            print(f"tuning {arm} ...", flush=True)
            best, score = tune(arm, d, config, args, state["tuned"].get("sgd", {}).get("values"), out)
            state["tuned"][arm] = {"values": best, "val_accuracy": score}
            compare.write_json_atomic(path, state)
        return state["tuned"][arm]["values"]

    sgd = tuned_values("sgd")
    for arm in args.arms:
        values = tuned_values(arm)
        runs = state["finals"].setdefault(arm, [])
        for seed in range(1, args.seeds + 1):
            if any(r["seed"] == seed for r in runs):
                continue
            epochs = 2 * args.epochs if arm == "sgd_2x" else args.epochs
            hp = FixedHP({**values, **({} if arm in ARMS else sgd)})
            record = train(arm, hp, d, config, seed, epochs, sgd, final=True)
            runs.append({"seed": seed, **record})
            compare.write_json_atomic(path, state)
            print(f"  final {arm} seed {seed}: test {100 * record['test_accuracy']:.2f}% "
                  f"({record['seconds']:.0f} s)", flush=True)
    rows = summarize(state["finals"], args.arms)
    state["summary"] = rows
    compare.write_json_atomic(path, state)
    tuned = {arm: state["tuned"].get(arm, {}).get("values", {}) for arm in args.arms}
    table = markdown(args.data, args, tuned, rows)
    with open(os.path.join(out, "study.md"), "w") as f:
        f.write(table)
    curves = {arm: [[100 * (1 - a) for a in r["val_curve"]] for r in state["finals"][arm]] for arm in args.arms
              if state["finals"].get(arm) and arm != "sgd_2x"}
    plots.plot_error_curves(os.path.join(out, "val_error.png"), curves, title=f"{args.data}: validation error")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
