#!/usr/bin/env bash
# The paper's experiments as run for benchmarks/RESULTS.md. The two nonconvex commands take most of the time: their
# runs record each solver's seconds (34 minutes in all for the committed ones, made while two studies shared the
# 2 cores; their Markdown prints the wall time per n); the two compare runs take a few minutes.
# Outputs land in benchmarks/results/. CIFAR-10 path: first argument, default ../shared/datasets/cifar10-jpeg.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."
cifar=${1:-../shared/datasets/cifar10-jpeg.tar.gz}
out=benchmarks/results
mkdir -p $out
# Table 1 and Figure 1.
keras-hta nonconvex --n 2 4 6 --json $out/nonconvex.json --plot $out/nonconvex_fig1.png | tee $out/nonconvex.md
# Where the anchor sits decides the count: constant anchors c*1 on the n=4 grid.
keras-hta nonconvex --n 4 --anchors zeros init 1 -2 2 3 6 --json $out/nonconvex_anchors.json | tee $out/nonconvex_anchors.md
# The default comparison (MNIST-1D, 1-D CNN, 3 seeds, the paper's hyperparameters).
keras-hta compare --verbose 0 --out $out/compare-default
# VGG11-BN at width 1/8 on the real CIFAR-10 images, 2 epochs (an end-to-end check, not an accuracy claim).
keras-hta compare --verbose 2 --data-dir "$cifar" --model vgg11 --width 0.125 --epochs 2 --seeds 0 --out $out/cifar10-vgg11-w0.125-2ep
