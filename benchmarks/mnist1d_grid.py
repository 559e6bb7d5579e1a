"""MNIST-1D: SGD against HTA over a few HTA settings, 3 seeds each (each run's seconds in its results.json).

Every run is `keras-hta compare` with its defaults (`--threads 1` among them)
and the SGD baseline lr 0.05, momentum 0.9, weight decay 5e-4, 24 epochs,
batch 128, except paper-squared-gradient-lr0.004, where both arms use lr 0.004.
Each writes benchmarks/results/mnist1d-<name>/results.{json,md} and
val_error.png; a run whose folder holds finished seeds continues from them.
Then renders RESULTS §3's table of the grid from those results.json files
(test accuracy after the last epoch, mean ± sample std over seeds, ddof=1).

Usage: python benchmarks/mnist1d_grid.py [--render-only]
"""

import argparse
import json
import os
import subprocess
import sys

import common  # noqa: E402  (beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
# (folder suffix, flags of `keras-hta compare`, the HTA setting in words)
RUNS = (
    ("paper-proximal", [], "the paper's L, squared norms, proximal (default)"),
    ("paper-l2", ["--norm", "l2", "--penalty-update", "gradient"],
     "the paper's L, l2 norms, explicit step (the authors' code)"),
    ("paper-squared-gradient-lr0.004", ["--penalty-update", "gradient", "--lr", "0.004"],
     "the paper's L, squared, explicit step, lr 0.004 for both arms (inside its bound)"),
    ("squared-L0.5-0.1", ["--L-start", "0.5", "--L-stop", "0.1", "--L-step", "-0.1"],
     "L 0.5 → 0.1, zero anchors, proximal"),
    ("squared-L0.5-0.1-init", ["--L-start", "0.5", "--L-stop", "0.1", "--L-step", "-0.1", "--anchor", "init"],
     "L 0.5 → 0.1, anchors at init, proximal"),
    ("mlp-paper-proximal", ["--model", "mlp"], "the paper's L, proximal"),
    ("mlp-paper-l2", ["--model", "mlp", "--norm", "l2", "--penalty-update", "gradient"],
     "the paper's L, l2, explicit step"),
    ("mlp-squared-L0.5-0.1-init", ["--model", "mlp", "--L-start", "0.5", "--L-stop", "0.1", "--L-step", "-0.1",
                                   "--anchor", "init"], "L 0.5 → 0.1, anchors at init, proximal"),
)


def render(root=RESULTS):
    """The grid's table, from each run's results.json under `root`."""
    rows = []
    for name, _, setting in RUNS:
        with open(os.path.join(root, f"mnist1d-{name}", "results.json")) as f:
            saved = json.load(f)
        summary = saved["summary"]
        cells = [f"{summary[arm]['acc_mean']:.2f} ± {summary[arm]['acc_std']:.2f}%" for arm in ("sgd", "hta")]
        rows.append([f"mnist1d-{name}", saved["config"]["model"], setting, *cells])
    head = ["run (folder under benchmarks/results/)", "model", "HTA setting", "SGD", "HTA"]
    return "\n".join(common.table(head, rows)) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render-only", action="store_true", help="only render the table from existing results")
    args = parser.parse_args()
    if not args.render_only:
        for name, flags, _ in RUNS:
            job = ["compare", "--verbose", "0", "--seeds", "0", "1", "2", "--out",
                   os.path.join("benchmarks", "results", f"mnist1d-{name}"), *flags]
            print("keras-hta", " ".join(job), flush=True)
            # Its own process, as `keras-hta` runs: --threads sets TensorFlow's thread pools only there.
            subprocess.run([sys.executable, "-m", "keras_hta.experiments.cli", *job], check=True,
                           cwd=os.path.dirname(HERE), env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    print(render())


if __name__ == "__main__":
    main()
