"""Accuracy of HTA against SGD and SGD + EMA, run by run.

Runs `keras-hta compare` with four arms: sgd, hta (the paper's squared norms
with the exact proximal penalty update, the default), hta_l2 (the authors'
unsquared norms with an explicit gradient step, as their code does) and sgd_ema:
  - CIFAR-10 (the JPEG tarball), VGG11-BN width 1/8, 15 epochs, 3 seeds,
    SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 128, the paper's
    augmentation; HTA with the paper's L values 0.01 -> 0.005 by 0.001 scaled
    to the budget (2 epochs each, then 0.005);
  - MNIST-1D, 1-D CNN and MLP, 24 epochs, 5 seeds, the same optimizer.
Every run holds out a stratified 10% of the training data for validation
(the curves) and reads the test set once, at the end.
Each finished run is saved in benchmarks/results/accuracy-*/results.json and
skipped when the script runs again, so it can be continued across sessions.

Usage: python benchmarks/accuracy.py [CIFAR_PATH] [--only cifar|mnist1d]
(about 50 minutes for CIFAR-10 and 5 for MNIST-1D on 2 CPU cores)
"""

import argparse
import json
import os
import sys

from keras_hta.experiments import cli

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
    """RESULTS §5's table of `folders` ((results folder, model name), ...) from their results.json.

    Test accuracy mean ± sample std (ddof=1) over seeds, its max, the rate of improvement of the mean test
    error over SGD, and Welch's t-test p of the test accuracies against SGD (`keras_hta.experiments.stats`).
    """
    from scipy import stats as scipy_stats

    from keras_hta.experiments import stats

    head = ["model", "arm", "validation acc.", "test accuracy mean ± sample std", "max",
            "rate of improvement over SGD", "p vs SGD"] + (["seconds per run"] if seconds else [])
    rows = []
    for folder, model in folders:
        with open(os.path.join(root, folder, "results.json")) as f:
            saved = json.load(f)
        summary, runs = saved["summary"], saved["runs"]
        accuracy = {arm: [100.0 - r["test_error"] for r in runs if r["arm"] == arm] for arm in LABELS}
        for arm, label in LABELS.items():
            a = summary[arm]
            if arm == "sgd":
                roi = p = "—"
            else:
                roi = _signed(a["roi_percent"])
                p = stats.format_p(float(scipy_stats.ttest_ind(accuracy[arm], accuracy["sgd"], equal_var=False).pvalue))
            cells = [model, label, f"{a['val_acc_mean']:.2f}%", f"{a['acc_mean']:.2f}% ± {a['acc_std']:.2f}%",
                     f"{a['acc_max']:.2f}%", roi, p] + ([f"{a['seconds_mean']:.0f}"] if seconds else [])
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
    for job in jobs:
        print("keras-hta", " ".join(job), flush=True)
        cli.main(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
