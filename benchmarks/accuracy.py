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
import os
import sys

from keras_hta.experiments import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS = ["--arms", "sgd", "hta", "hta_l2", "sgd_ema"]


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
