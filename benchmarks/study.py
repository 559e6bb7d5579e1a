"""The study: where does HTA help? Each arm tuned alike, then paired seeded final runs.

Protocol, per data set:
  1. Tune every arm with the same keras-tuner budget (RandomSearch, `--trials`
     trials of `--epochs` epochs, every trial drawn at random, the first
     included). Every arm, the baselines, the HTA arms and the controls, tunes
     its own learning rate and weight decay jointly (SGD with momentum 0.9 and
     cosine learning-rate decay), and an HTA arm also what its hypothesis
     leaves free (the L schedule, the anchor, the split). A trial's score is
     the validation accuracy of the model as it would be deployed (θ, the EMA
     weights, or the merged average), averaged over the tuning seeds
     (the first `--tuning-seeds` of `TUNING_SEEDS`), which no final run uses. Each arm's trials are kept in
     order, so the report says which trial won.
  2. Final runs of each arm's best configuration with seeds 1..`--seeds`; a
     seed gives every arm the same initial weights and batches, so arms are
     compared seed by seed: the mean per-seed difference in test accuracy (read
     once per run) with its 95% t interval, the paired t-test and the Wilcoxon
     signed-rank test, and the minimum detectable difference (paired t-test,
     alpha 0.05, power 0.8, at the observed sd of the differences). Holm's
     correction across every data set's HTA-vs-SGD and HTA-vs-control tests is
     applied by `benchmarks/study_report.py`.

Controls, each tuned like any arm: sgd_decay (SGD plus the weight decay HTA's
zero anchors add: with twins that start equal and see the same batches, the
exact penalty step shrinks every weight by a factor 1/(1 + γ·L) per step, γ
the learning rate; sgd_decay adds a decoupled decay of γ·L·w per step) and
sgd_pull (the same for "init" anchors: a decoupled pull γ·L·(w − w₀) toward
the initial weights), both with L on the paper's schedule of h1_paper_zeros /
h1_paper_init, which they mirror. sgd_2x (twice the epochs: an HTA step costs
up to two SGD steps) and sgd_constant (the paper's constant rate) take the
tuned SGD's settings.

Arms (the hypotheses tested): sgd, sgd_ema; h1_paper_zeros / h1_paper_init
(the paper's L 0.01 -> 0.005 by 0.001), h2_homotopy_init / h2_homotopy_zeros (a
true homotopy: geometric L from [1, 10] down to [1e-4, 1e-3]), h3_elastic_split
(`twin_batch="split"`, then `merge(how="average", recompute_bn=...)`),
hta_tuned (two twins; L schedule, anchor and split all tuned); also runnable
with `--arms`: h4_m3 / h4_m4 (3 and 4 twins), h5_layers / h5_random (other
splits), h6_long_final (the last L for three quarters of the run), h7_ema (HTA
with the optimizer's EMA).

Usage (resumable run by run; results under benchmarks/results/study-<data>/;
a study keeps the backend it started on):
    KERAS_BACKEND=jax python benchmarks/study.py mnist1d-cnn   # each run's seconds land in study.json
    KERAS_BACKEND=jax python benchmarks/study.py mnist1d-mlp
    python benchmarks/study.py cifar10 --trials 2 --epochs 6 --seeds 3 --train-size 10000 --arms ...
    python benchmarks/study_report.py
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from common import table  # beside this file

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
    "hta_tuned": {"schedule": "free", "split": "tuned"},
    "h4_m3": {"schedule": "free", "num_groups": 3},
    "h4_m4": {"schedule": "free", "num_groups": 4},
    "h5_layers": {"schedule": "free", "split": "layers"},
    "h5_random": {"schedule": "free", "split": "random"},
    "h6_long_final": {"schedule": "long_final"},
    "h7_ema": {"schedule": "free", "ema": True},
    # The controls: SGD with what an HTA arm adds besides the homotopy, on the same L schedule (the paper's).
    "sgd_decay": {"kind": "sgd", "control": "decay"},  # zero anchors: a decoupled decay γ·L·w
    "sgd_pull": {"kind": "sgd", "control": "pull"},  # "init" anchors: a decoupled pull γ·L·(w − w₀)
}
EXTRA_ROWS = ("sgd_2x", "sgd_constant")  # final runs only, with the tuned SGD's settings
DEFAULT_ARMS = ["sgd", "sgd_ema", "h1_paper_zeros", "h1_paper_init", "sgd_decay", "sgd_pull", "h2_homotopy_init",
                "h3_elastic_split", "hta_tuned"]
CONTROLS = {"sgd_decay": "h1_paper_zeros", "sgd_pull": "h1_paper_init"}  # control: the HTA arm it mirrors
TUNING_SEEDS = (1001, 1002, 1003)  # every trial is scored on these; the final runs' seeds are 1..N
TUNER_SEED = 1  # keras-tuner's draws; not 0, which its Oracle takes as "no seed" (`seed or random.randint(...)`)
PROTOCOL = 2  # 1: HTA arms took SGD's tuned optimizer, trials on seed 0; 2: as the module's docstring says


def paper_schedule(epochs):
    """The paper's L values 0.01 -> 0.005 by 0.001, six values over the run (its 4 epochs each of 24)."""
    from keras_hta import schedules

    return schedules.Linear(0.01, 0.005, -0.001, max(1, epochs // 6))


def schedule_for(arm, hp, epochs):
    """The arm's L schedule from the trial's hyperparameters (a fixed one for the paper's)."""
    from keras_hta import schedules

    spec = ARMS[arm]["schedule"]
    if spec == "paper":
        return paper_schedule(epochs)
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


def configuration(arm, hp, epochs, sgd_settings=None):
    """The run's settings, drawn from `hp` (keras-tuner's HyperParameters, or FixedHP to replay a trial).

    Calling it on an empty `keras_tuner.HyperParameters()` declares the arm's
    whole search space, so that RandomSearch draws even its first trial.
    """
    spec = ARMS.get(arm, ARMS["sgd"])
    if tunable(arm):  # every arm tunes its own optimizer: learning rate and weight decay, jointly
        config = {"lr": hp.Float("lr", 0.005, 0.3, sampling="log"),
                  "weight_decay": hp.Float("weight_decay", 1e-5, 1e-2, sampling="log")}
    else:  # sgd_2x, sgd_constant: the tuned SGD's
        config = {"lr": sgd_settings["lr"], "weight_decay": sgd_settings["weight_decay"]}
    if spec.get("kind") != "sgd":
        config["anchor"] = spec.get("anchor") or hp.Choice("anchor", ["zeros", "init"])
        split = spec.get("split", "channels")
        config["split"] = hp.Choice("split", ["channels", "layers", "random"]) if split == "tuned" else split
        config["schedule"] = schedule_for(arm, hp, epochs)
    return config


def tunable(arm):
    """Whether the arm is tuned: every arm of `ARMS` is (sgd_2x and sgd_constant take the tuned SGD's settings)."""
    return arm in ARMS


def decayed_sgd(*args, toward_initial=False, **kwargs):
    """`keras.optimizers.SGD` plus a decoupled pull of `lr * extra_decay * (w − w₀)` per step: the controls.

    With `toward_initial=False`, w₀ = 0: a decay (sgd_decay, the control of
    HTA's zero anchors); with `toward_initial=True`, w₀ is each weight's value
    when the optimizer is built (sgd_pull, the control of "init" anchors),
    kept as an optimizer slot made like Keras' own. `extra_decay` is an
    optimizer variable, so a callback can assign it between epochs on every
    backend.
    """
    import keras
    from keras import ops

    class DecayedSGD(keras.optimizers.SGD):
        def build(self, variables):
            super().build(variables)
            self.extra_decay = self.add_variable((), initializer="zeros", name="extra_decay")
            self.initial = []  # each variable's value when built, in the order Keras indexes them
            if toward_initial:
                for v in variables:
                    self.initial.append(self.add_variable_from_reference(v, "initial"))
                    self.initial[-1].assign(ops.copy(v))  # a buffer of its own: JAX donates the step's

        def update_step(self, gradient, variable, learning_rate):
            from keras_hta import compat

            rate = ops.cast(learning_rate, variable.dtype) * ops.cast(self.extra_decay, variable.dtype)
            target = self.initial[compat.variable_index(self, variable)] if self.initial else None
            self.assign_sub(variable, (variable if target is None else variable - target) * rate)
            super().update_step(gradient, variable, learning_rate)

    return DecayedSGD(*args, **kwargs)


def decay_callback(schedule):
    """A callback that sets the optimizer's `extra_decay` to `schedule(epoch)` at each epoch's start."""
    import keras

    class DecaySchedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            optimizer = self.model.optimizer
            if not optimizer.built:  # TensorFlow builds it in the first step, after this
                optimizer.build(self.model.trainable_variables)
            optimizer.extra_decay.assign(float(schedule(epoch)))

    return DecaySchedule()


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
    settings = configuration(arm, hp, epochs, sgd_settings)
    keras.utils.set_random_seed(seed)
    network = models.get(config["model"], config.get("width", 1.0), len(d["class_names"]), shape)
    model, callbacks = network, []
    if spec.get("kind") != "sgd":
        model = hta.HomotopyModel.from_model(
            network, split=settings["split"], anchor=settings["anchor"], num_groups=spec.get("num_groups", 2),
            twin_batch=spec.get("twin_batch", "full"), seed=seed)
        callbacks.append(hta.HomotopyScheduler(settings["schedule"]))
    rate = settings["lr"] if arm == "sgd_constant" else keras.optimizers.schedules.CosineDecay(settings["lr"], steps)
    optimizer_args = dict(momentum=0.9, weight_decay=settings["weight_decay"], use_ema=bool(spec.get("ema")))
    if spec.get("control"):
        optimizer = decayed_sgd(rate, toward_initial=spec["control"] == "pull", **optimizer_args)
        callbacks.append(decay_callback(paper_schedule(epochs)))
    else:
        optimizer = keras.optimizers.SGD(rate, **optimizer_args)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
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


class PieceDone(Exception):
    """Raised when `--stop-after` leaves no time for the next trial or run: the study ends here, to be continued."""


class Deadline:
    """`--stop-after`: whether the next unit of work (a tuning trial, a final run) fits in what is left.

    The estimate is the longest unit timed so far in this process; with none timed yet the unit runs, so every
    piece makes progress.
    """

    def __init__(self, seconds=None):
        self.seconds, self.start, self.longest = seconds, time.perf_counter(), None

    def check(self):
        """Raises PieceDone unless the next unit is estimated to finish in time (or no limit was given)."""
        if self.seconds is not None and self.longest is not None:
            if time.perf_counter() - self.start + self.longest > self.seconds:
                raise PieceDone()

    def timed(self, work):
        """Runs `work()`, counting its time towards the estimate; returns its result."""
        began = time.perf_counter()
        result = work()
        self.longest = max(self.longest or 0.0, time.perf_counter() - began)
        return result


def tune(arm, d, config, args, sgd_settings, out, deadline=None):
    """RandomSearch over the arm's space; returns the best values, their score and every trial in order.

    Raises PieceDone before a trial that `deadline` says would not fit: the trials done stay in the tuner's
    folder, and the same call continues the search where it stopped (keras-tuner saves its random state).
    """
    import keras_tuner

    deadline = deadline or Deadline()

    class ArmSearch(keras_tuner.RandomSearch):  # keras-tuner's way to tune anything: override run_trial
        def pre_create_trial(self):
            if len(self.oracle.trials) < self.oracle.max_trials:  # a trial would start: does it fit?
                deadline.check()

        def run_trial(self, trial, *fit_args, **fit_kwargs):
            records = deadline.timed(lambda: [train(arm, trial.hyperparameters, d, config, seed, args.epochs,
                                                    sgd_settings) for seed in tuning_seeds(args)])
            return {"val_accuracy": float(np.mean([r["val_accuracy"] for r in records]))}

    space = keras_tuner.HyperParameters()  # declared up front: the first trial is drawn too, not the defaults
    configuration(arm, space, args.epochs, sgd_settings)
    tuner = ArmSearch(objective=keras_tuner.Objective("val_accuracy", "max"), max_trials=args.trials, seed=TUNER_SEED,
                      hyperparameters=space, directory=os.path.join(out, "tuning"), project_name=arm,
                      overwrite=False)
    tuner.search(verbose=0)
    trials = [{"values": t.hyperparameters.values, "val_accuracy": t.score}
              for _, t in sorted(tuner.oracle.trials.items(), key=lambda item: int(item[0])) if t.score is not None]
    best = best_trial(trials)
    print(f"  tuned {arm}: best val_accuracy {trials[best]['val_accuracy']:.4f} at trial {best + 1} of "
          f"{len(trials)}: {trials[best]['values']}", flush=True)
    return trials, best


def tuning_seeds(args):
    """The seeds a trial is scored on: the first `--tuning-seeds` of `TUNING_SEEDS`."""
    return TUNING_SEEDS[:args.tuning_seeds]


def best_trial(trials):
    """The index of the trial with the best validation accuracy (the earliest of equal ones)."""
    return max(range(len(trials)), key=lambda i: trials[i]["val_accuracy"])


def trials_from_folder(folder):
    """The finished trials keras-tuner saved in `folder` (trial_*/trial.json), in the order they ran."""
    trials = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name, "trial.json")
        if name.startswith("trial_") and os.path.exists(path):
            trial = json.load(open(path))
            if trial.get("score") is not None:
                trials.append((int(trial["trial_id"]), {"values": trial["hyperparameters"]["values"],
                                                        "val_accuracy": trial["score"]}))
    return [t for _, t in sorted(trials, key=lambda item: item[0])]


class FixedHP:
    """Replays tuned values through the keras-tuner HyperParameters calls `configuration` makes."""

    def __init__(self, values):
        self.values = values

    def _get(self, name, *args, **kwargs):
        return self.values[name]

    Float = Int = Choice = _get


FAMILY_NOTE = ("HTA arms against SGD, and each control's HTA arm against the control: the tests Holm's correction "
               "covers in study_report.py")


def comparisons(arms):
    """The paired comparisons reported for `arms`: (arm, baseline, in the HTA-vs-SGD family)."""
    pairs = []
    for arm in arms:
        if arm == "sgd":
            continue
        pairs.append((arm, "sgd", ARMS.get(arm, {}).get("kind") != "sgd" and arm in ARMS))
    for control, hta_arm in CONTROLS.items():
        if control in arms and hta_arm in arms:
            pairs.append((hta_arm, control, True))
    return pairs


def summarize(state, arms):
    """Per arm: mean, sample std (ddof=1); per comparison: the paired statistics over the seeds both arms ran."""
    from keras_hta.experiments import stats

    finals, rows = state["finals"], {}
    by_seed = {arm: {r["seed"]: 100 * r["test_accuracy"] for r in finals[arm]} for arm in arms if finals.get(arm)}
    val = {arm: {r["seed"]: 100 * r["val_accuracy"] for r in finals[arm]} for arm in by_seed}
    for arm in arms:
        runs = finals.get(arm, [])
        if runs:
            acc = np.array([by_seed[arm][r["seed"]] for r in runs])
            rows[arm] = {"seeds": len(acc), "acc_mean": float(acc.mean()), "acc_std": stats.sample_std(acc),
                         "err_mean": float(100 - acc.mean()), "seconds": float(np.mean([r["seconds"] for r in runs])),
                         "accs": acc.tolist()}
            tuned = state["tuned"].get(arm, {})
            if tuned.get("trials"):
                rows[arm]["best_trial"], rows[arm]["trials"] = tuned["best"] + 1, len(tuned["trials"])
    for arm, row in rows.items():
        for base in ("sgd", "sgd_ema"):
            if base in rows and arm != base:
                b = rows[base]["err_mean"]
                row[f"roi_vs_{base}"] = 100 * (b - row["err_mean"]) / b
    tests = []
    for arm, base, family in comparisons([a for a in arms if a in rows]):
        seeds = sorted(set(by_seed[arm]) & set(by_seed[base]))
        row = stats.paired([by_seed[arm][s] for s in seeds], [by_seed[base][s] for s in seeds])
        if row["n"] >= 2 and row["sd_diff"] > 0:
            row["mde"] = stats.paired_mde(row["sd_diff"], row["n"])
        row["val_mean_diff"] = float(np.mean([val[arm][s] - val[base][s] for s in seeds])) if seeds else float("nan")
        tests.append({"arm": arm, "baseline": base, "family": family, **row})
    return rows, tests


def accuracy(row):
    """A row's test accuracy as the tables give it: mean ± sample std, or the one seed's figure."""
    return f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f}%" if row["seeds"] > 1 else f"{row['acc_mean']:.2f}% (1 seed)"


def markdown(name, args, state, rows, tests):
    from keras_hta.experiments.stats import format_p as p

    best_first = [a for a in rows if rows[a].get("trials", 0) > 1 and rows[a]["best_trial"] == 1]
    tuned_arms = [a for a in rows if rows[a].get("trials", 0) > 1]
    lines = [f"Command: `KERAS_BACKEND={state['backend']} python benchmarks/study.py {' '.join(sys.argv[1:])}`", "",
             f"{name}: {args.trials} trials x {args.epochs} epochs per tuned arm (RandomSearch, every trial drawn at "
             f"random; each arm its own learning rate and weight decay, and its own knobs; objective: validation "
             f"accuracy, the mean over tuning seeds {', '.join(map(str, tuning_seeds(args)))}); final runs: seeds "
             f"1..{args.seeds}, test accuracy read once per run. Std: sample std over seeds (ddof=1).", "",
             f"Tuning: the best trial was the first in {len(best_first)} of {len(tuned_arms)} tuned arms"
             + (f" ({', '.join(best_first)})." if best_first else "."), ""]
    arms = []
    for arm, row in rows.items():
        values = state["tuned"].get(arm, {}).get("values", {})
        conf = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        trial = f"{row['best_trial']} of {row['trials']}" if "trials" in row else "—"
        roi = f"{row['roi_vs_sgd']:+.2f}%" if "roi_vs_sgd" in row else "—"
        arms.append([arm, conf or "(fixed, or the tuned SGD settings)", trial, row["seeds"], accuracy(row), roi,
                     f"{row['seconds']:.1f}"])
    lines += table(["arm", "tuned configuration", "best trial", "seeds", "test accuracy mean ± std", "ROI vs SGD",
                    "s/run"], arms)
    lines += ["", "Paired comparisons (per-seed differences in test accuracy, points; p-values unadjusted, "
              "two-sided; MDE: the difference the paired t-test detects with power 0.8 at alpha 0.05 and the "
              "observed sd of the differences; family: " + FAMILY_NOTE + "):", ""]
    lines += table(["arm − baseline", "family", "seeds", "mean difference [95% CI]", "sd of differences",
                    "paired t-test p", "Wilcoxon signed-rank p", "MDE"],
                   [[f"{t['arm']} − {t['baseline']}", "yes" if t["family"] else "no", t["n"],
                     f"{t['mean_diff']:+.2f} [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]" if t["n"] > 1 else "—",
                     f"{t['sd_diff']:.2f}", p(t["p_ttest"]), p(t["p_wilcoxon"]),
                     f"{t['mde']:.2f}" if "mde" in t else "—"] for t in tests])
    return "\n".join(lines) + "\n"


def parse_arguments(argv=None):
    """The command line, checked: one line naming the flag and the value for anything wrong, before any data loads."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", choices=sorted(DATA))
    parser.add_argument("--trials", type=int, default=20,
                        help="keras-tuner trials per tuned arm (the same for every arm)")
    parser.add_argument("--epochs", type=int, default=24, help="epochs per trial and per final run")
    parser.add_argument("--seeds", type=int, default=40, help="final runs per arm (seeds 1..N)")
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS) + list(EXTRA_ROWS))
    parser.add_argument("--tuning-seeds", type=int, default=len(TUNING_SEEDS), choices=range(1, len(TUNING_SEEDS) + 1),
                        metavar="N", help=f"seeds each trial is scored on, the first N of {TUNING_SEEDS} (1 where "
                        "the validation set is large enough to score a trial alone, as CIFAR-10's 5,000 images)")
    parser.add_argument("--train-size", type=int, help="a stratified subset of the training data")
    parser.add_argument("--out", help="default: benchmarks/results/study-<data>")
    parser.add_argument("--data-dir", help="cifar10 only: the images (a folder or .tar.gz; default: the shared "
                        "CIFAR-10 tarball)")
    parser.add_argument("--width", type=float, help="cifar10 only: VGG11-BN's width multiplier (default 0.125)")
    parser.add_argument("--val-size", type=int, help="cifar10 only: validation images held out (default 5000)")
    parser.add_argument("--check-seeds", type=int, metavar="K",
                        help=f"the checks {', '.join(EXTRA_ROWS)} (SGD's settings: twice the epochs, a constant rate) "
                        "run on seeds 1..K only (default: every seed)")
    parser.add_argument("--stop-after", type=float, metavar="SECONDS",
                        help="end cleanly before a trial or run that would not finish within SECONDS of the start "
                             "(the longest one so far is the estimate; the first always runs); the same command "
                             "continues the study")
    args = parser.parse_args(argv)
    for flag in ("trials", "epochs", "seeds", "check_seeds"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')} must be >= 1. Received: {getattr(args, flag)}")
    for flag in ("data_dir", "width", "val_size"):
        if getattr(args, flag) is not None and args.data != "cifar10":
            parser.error(f"argument --{flag.replace('_', '-')} applies to cifar10 only. Received: {args.data}")
    for flag in ("width", "val_size", "stop_after"):
        value = getattr(args, flag)
        if value is not None and not (np.isfinite(value) and value > 0):
            parser.error(f"argument --{flag.replace('_', '-')} must be > 0. Received: {value}")
    if args.data_dir is not None and not os.path.exists(args.data_dir):
        parser.error(f"argument --data-dir does not exist. Received: {args.data_dir}")
    if "sgd" not in args.arms:
        parser.error("argument --arms must include sgd (every other arm uses its tuned optimizer)")
    return parser, args


def data_config(args):
    """The data and model settings of `args`, as `keras_hta.experiments.compare` takes them."""
    config = {**DATA[args.data][0], "val_size": 5000 if args.data == "cifar10" else 0.1,
              "train_size": args.train_size, "test_size": None}
    if args.data_dir is not None:
        config["dataset"] = "folder:" + os.path.abspath(args.data_dir)
    config.update({k: v for k, v in (("width", args.width), ("val_size", args.val_size)) if v is not None})
    return config


def open_state(parser, out, backend):
    """The study kept in `out` (or a new one), refused in one line if an earlier protocol or backend made it."""
    from keras_hta.experiments import compare

    try:
        compare.check_writable_folder(out)
    except ValueError as error:
        parser.error(str(error))
    path = os.path.join(out, "study.json")
    state = json.load(open(path)) if os.path.exists(path) else {"tuned": {}, "finals": {}, "protocol": PROTOCOL}
    if state.get("protocol") != PROTOCOL:
        parser.error(f"the study in {out} was run by an earlier protocol (every HTA arm took SGD's tuned optimizer, "
                     f"tuning on one seed): start this one in another --out. Received: --out {out}")
    if state.setdefault("backend", backend if not state["finals"] else "tensorflow") != backend:
        parser.error(f"the study in {out} ran on {state['backend']}; continue it with KERAS_BACKEND="
                     f"{state['backend']}. Received: KERAS_BACKEND={backend}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        parser.error(f"argument --out cannot be made: {error.strerror}. Received: --out {out}")
    return state


def run(args, state, out, d, config, deadline):
    """Tunes each arm not yet tuned, then makes each final run not yet made, saving study.json after each.

    Raises PieceDone where `deadline` stops it; what finished is saved.
    """
    from keras_hta.experiments import compare, provenance

    path = os.path.join(out, "study.json")
    command = f"KERAS_BACKEND={state['backend']} python benchmarks/study.py " + " ".join(sys.argv[1:])
    started = []

    def piece():  # before this process's first unit of work: where the piece's tuning trials came from
        if not started:
            started.append(True)
            state.setdefault("pieces", []).append({"provenance": provenance.record(command)})

    def tuned_values(arm):
        if not tunable(arm):  # sgd_2x, sgd_constant
            return {}
        folder = os.path.join(out, "tuning", arm)
        if arm in state["tuned"] and "trials" not in state["tuned"][arm] and os.path.isdir(folder):
            trials = trials_from_folder(folder)  # a study from before trials were recorded in study.json
            state["tuned"][arm].update(trials=trials, best=best_trial(trials))
        if arm not in state["tuned"]:
            piece()
            print(f"tuning {arm} ...", flush=True)
            trials, best = tune(arm, d, config, args, state["tuned"].get("sgd", {}).get("values"), out, deadline)
            state["tuned"][arm] = {"values": trials[best]["values"], "val_accuracy": trials[best]["val_accuracy"],
                                   "trials": trials, "best": best}
            compare.write_json_atomic(path, state)
        return state["tuned"][arm]["values"]

    sgd = tuned_values("sgd")
    values = {arm: tuned_values(arm) for arm in args.arms}
    for seed in range(1, args.seeds + 1):  # seed by seed: a study stopped part way has every arm on the same seeds
        for arm in args.arms:
            runs = state["finals"].setdefault(arm, [])
            if any(r["seed"] == seed for r in runs) or (arm in EXTRA_ROWS and seed > (args.check_seeds or seed)):
                continue
            epochs = 2 * args.epochs if arm == "sgd_2x" else args.epochs
            deadline.check()
            piece()
            record = deadline.timed(lambda: train(arm, FixedHP(values[arm]), d, config, seed, epochs, sgd,
                                                  final=True))
            runs.append({"seed": seed, **record, "provenance": provenance.record(command)})
            compare.write_json_atomic(path, state)
            print(f"  final {arm} seed {seed}: test {100 * record['test_accuracy']:.2f}% "
                  f"({record['seconds']:.0f} s)", flush=True)


def main():
    parser, args = parse_arguments()
    deadline = Deadline(args.stop_after)  # counts from here: loading the data is part of a piece's time
    import keras

    from keras_hta.experiments import compare, plots

    config = data_config(args)
    out = args.out or os.path.join(HERE, "results", f"study-{args.data}")
    backend = keras.backend.backend()
    state = open_state(parser, out, backend)
    seeds = state.setdefault("tuning_seeds", list(TUNING_SEEDS if state["tuned"] else tuning_seeds(args)))
    if seeds != list(tuning_seeds(args)):
        parser.error(f"the study in {out} scores its trials on {len(seeds)} tuning seed(s); continue it with "
                     f"--tuning-seeds {len(seeds)}. Received: --tuning-seeds {args.tuning_seeds}")
    path = os.path.join(out, "study.json")
    d = compare.load_data(config)
    print(f"{args.data}: {len(d['y_train'])} train / {len(d['y_val'])} validation / {len(d['y_test'])} test "
          f"({backend})", flush=True)
    try:
        run(args, state, out, d, config, deadline)
    except PieceDone:  # everything finished is in study.json (and the tuner's folders): the same command continues
        compare.write_json_atomic(path, state)
        finals = sum(len(runs) for runs in state["finals"].values())
        print(f"Stopped by --stop-after {args.stop_after:g}: {len(state['tuned'])} arm(s) tuned and {finals} final "
              f"run(s) kept in {out}; run the same command to continue.", flush=True)
        return 0
    rows, tests = summarize(state, args.arms)
    state["summary"], state["tests"] = rows, tests
    compare.write_json_atomic(path, state)
    table = markdown(args.data, args, state, rows, tests)
    from keras_hta.experiments import write_atomic

    write_atomic(os.path.join(out, "study.md"), lambda f: f.write(table))
    curves = {arm: [[100 * (1 - a) for a in r["val_curve"]] for r in state["finals"][arm]] for arm in args.arms
              if state["finals"].get(arm) and arm != "sgd_2x"}
    plots.plot_error_curves(os.path.join(out, "val_error.png"), curves, title=f"{args.data}: validation error")
    print(table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up lines, unless the user chose a level
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every finished run is already in study.json: rerun the command to continue
        print("Interrupted: the finished runs are kept in study.json; run the same command to continue.",
              file=sys.stderr)
        sys.exit(130)
    except OSError as error:  # e.g. a full or read-only disk: the runs written before it are kept
        print(f"study.py: {error.strerror}: {error.filename}", file=sys.stderr)
        sys.exit(2)
