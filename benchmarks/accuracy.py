"""Accuracy of HTA against SGD and SGD + EMA, run by run.

Runs `keras-hta compare` with four arms: sgd, hta (the paper's squared norms
with the exact proximal penalty update, the default), hta_l2 (the authors'
unsquared norms with an explicit gradient step, as their code does) and sgd_ema:
  - CIFAR-10 (the JPEG tarball), VGG11-BN width 1/8, 15 epochs, 3 seeds
    (hours per seed on 2 cores with `--threads 1`: run across sessions),
    SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 128, the paper's
    augmentation; HTA with the paper's L values 0.01 -> 0.005 by 0.001 scaled
    to the budget (2 epochs each, then 0.005);
  - MNIST-1D, 1-D CNN and MLP, 24 epochs, 5 seeds, the same optimizer.
Every run holds out a stratified 10% of the training data for validation
(the curves) and reads the test set once, at the end.
Each `keras-hta compare` runs as its own process, as the command does, so its
`--threads 1` (the default) fixes TensorFlow's thread pools and kernels: a run's
numbers then do not move with the cores or the load. Each finished run is saved
in benchmarks/results/accuracy-*/results.json and skipped when the script runs
again, so it can be continued across sessions.

Usage: python benchmarks/accuracy.py [CIFAR_PATH] [--only cifar|mnist1d]
(each run's seconds are in its results.json and in RESULTS §5's CIFAR-10 table)
"""

import argparse
import json
import os
import subprocess
import sys

import common  # noqa: E402  (beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS = ["--arms", "sgd", "hta", "hta_l2", "sgd_ema"]
LABELS = {"sgd": "SGD", "hta": "HTA (proximal)", "hta_l2": "HTA (l2, explicit)", "sgd_ema": "SGD + EMA"}
# RESULTS §5's tables: (results folder, model name in the table).
MNIST1D = (("accuracy-mnist1d-cnn1d", "1-D CNN"), ("accuracy-mnist1d-mlp", "MLP"))
CIFAR = (("accuracy-cifar10-vgg11-w0.125", "VGG11-BN/8"),)


def _signed(value):
    return f"{value:+.2f}%".replace("-", "\u2212")


def render(folders, seconds=False, root=os.path.join(HERE, "results")):
    """RESULTS §5's table of `folders` ((results folder, model name), ...) from their results.json, summarized
    from the runs (a folder whose runs are still being made renders the arms and seeds it has).

    Test accuracy mean ± sample std (ddof=1) over seeds, its max, the rate of improvement of the mean test error
    over SGD, and each arm against SGD paired seed by seed (a seed gives every arm the same initial weights and
    batches): the mean difference with its 95% interval, the paired t-test's and the Wilcoxon signed-rank test's
    two-sided p (`keras_hta.experiments.stats.paired`).
    """
    from keras_hta.experiments import compare, stats

    head = ["model", "arm", "validation acc.", "test accuracy mean ± sample std", "max",
            "rate of improvement over SGD", "− SGD, paired [95% CI]", "paired t p", "Wilcoxon p"] + (
        ["seconds per run"] if seconds else [])
    rows = []
    for folder, model in folders:
        with open(os.path.join(root, folder, "results.json")) as f:
            saved = json.load(f)
        runs = saved["runs"]
        summary = compare.summarize(runs)  # from the runs: a folder still being run renders what it has
        for arm, label in LABELS.items():
            a = summary.get(arm)
            if a is None:
                continue
            row = a.get("paired_vs_sgd")  # against SGD on the seeds both ran (`compare.summarize`)
            if row is None:
                roi = diff = p_t = p_w = "—"
            else:
                roi = _signed(a["roi_percent"])
                diff = f"{row['mean_diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]".replace("-", "\u2212")
                p_t, p_w = stats.format_p(row["p_ttest"]), stats.format_p(row["p_wilcoxon"])
            spread = f" ± {a['acc_std']:.2f}%" if a["seeds"] > 1 else f" ({a['seeds']} seed)"
            cells = [model, label, f"{a['val_acc_mean']:.2f}%", f"{a['acc_mean']:.2f}%{spread}",
                     f"{a['acc_max']:.2f}%", roi, diff, p_t, p_w] + ([f"{a['seconds_mean']:.0f}"] if seconds else [])
            rows.append(cells)
    return "\n".join(common.table(head, rows)) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cifar", nargs="?", default=os.path.join(HERE, "..", "..", "shared", "datasets", "cifar10-jpeg.tar.gz"))
    parser.add_argument("--only", choices=["cifar", "mnist1d"])
    args = parser.parse_args()
    out = os.path.join(HERE, "results")
    jobs = []
    if args.only in (None, "mnist1d"):
        for model in ("cnn1d", "mlp"):
            jobs.append(["compare", "--model", model, "--seeds", "0", "1", "2", "3", "4", "--verbose", "0",
                         "--out", os.path.join(out, f"accuracy-mnist1d-{model}")] + ARMS)
    if args.only in (None, "cifar"):
        jobs.append(["compare", "--data-dir", args.cifar, "--model", "vgg11", "--width", "0.125", "--epochs", "15",
                     "--epochs-per-L", "2", "--seeds", "0", "1", "2", "--verbose", "2",
                     "--out", os.path.join(out, "accuracy-cifar10-vgg11-w0.125")] + ARMS)
    for job in jobs:  # each its own process, as `keras-hta` runs: --threads 1 (its default) fixes TensorFlow's pools
        print("keras-hta", " ".join(job), flush=True)
        subprocess.run([sys.executable, "-m", "keras_hta.experiments.cli", *job], check=True,
                       env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
