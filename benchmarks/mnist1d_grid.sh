#!/usr/bin/env bash
# MNIST-1D: SGD vs HTA over a few HTA settings, 3 seeds each (about 5 minutes on 2 cores).
# Every row has the same SGD baseline (lr 0.05, momentum 0.9, weight decay 5e-4, 24 epochs, batch 128),
# except paper-squared-gradient-lr0.004, where both arms use lr 0.004.
# Results: benchmarks/results/mnist1d-*/results.{json,md}, val_error.png
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
run() { name=$1; shift; keras-hta compare --verbose 0 --seeds 0 1 2 --out "$out/mnist1d-$name" "$@"; }
run paper-proximal                            # the paper's L schedule and squared norms, proximal update (default)
run paper-l2 --norm l2 --penalty-update gradient      # the authors' unsquared norm, explicit step (the old default)
run paper-squared-gradient-lr0.004 --penalty-update gradient --lr 0.004   # explicit step, lr inside its stability bound
run squared-L0.5-0.1 --L-start 0.5 --L-stop 0.1 --L-step -0.1
run squared-L0.5-0.1-init --L-start 0.5 --L-stop 0.1 --L-step -0.1 --anchor init
run mlp-paper-proximal --model mlp
run mlp-paper-l2 --model mlp --norm l2 --penalty-update gradient
run mlp-squared-L0.5-0.1-init --model mlp --L-start 0.5 --L-stop 0.1 --L-step -0.1 --anchor init
