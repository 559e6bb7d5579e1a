#!/usr/bin/env bash
# MNIST-1D: SGD vs HTA over a few HTA settings, 3 seeds each (about 10 minutes on 2 cores).
# Results: benchmarks/results/mnist1d-*/results.{json,md}, val_error.png
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
run() { name=$1; shift; keras-hta compare --verbose 0 --seeds 0 1 2 --out "$out/mnist1d-$name" "$@"; }
run paper-l2                                  # the paper's L schedule, the authors' unsquared norm
run paper-squared-lr0.004 --norm squared --lr 0.004   # the paper's formula; lr inside the stability bound
run squared-L0.5-0.1 --norm squared --L-start 0.5 --L-stop 0.1 --L-step -0.1
run squared-L0.5-0.1-init --norm squared --L-start 0.5 --L-stop 0.1 --L-step -0.1 --anchor init
run mlp-paper-l2 --model mlp
run mlp-squared-L0.5-0.1-init --model mlp --norm squared --L-start 0.5 --L-stop 0.1 --L-step -0.1 --anchor init
