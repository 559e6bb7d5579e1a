#!/usr/bin/env bash
# What the GPU machine lacks, gathered into .whl/ (ignored by git), to travel with `carry: [".whl"]`:
# the wheels of keras and of the two dependencies its image does not have (namex, optree), keras-tuner and
# its dependencies for benchmarks/study.py's GPU pieces (RESULTS §7), for
# CPython 3.12 on manylinux x86_64, and the CIFAR-10 tarball for stage d of benchmarks/gpu_check.py.
# Its image has JAX, NumPy, Pillow, matplotlib, SciPy, h5py, absl-py, rich, ml-dtypes and packaging.
# Usage: bash benchmarks/gpu_wheels.sh [KERAS_VERSION]   (then the command in benchmarks/RESULTS.md §6)
set -euo pipefail
cd "$(dirname "$0")/.."
keras_version=${1:-$(python3 -c "import importlib.metadata as m; print(m.version('keras'))" 2>/dev/null || echo 3.15.1)}
mkdir -p .whl
rm -f .whl/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    "keras==$keras_version" namex optree \
    keras-tuner kt-legacy grpcio protobuf requests urllib3 idna certifi charset-normalizer  # the study's tuner
install -m 0644 ../shared/datasets/cifar10-jpeg.tar.gz .whl/  # writable: a rerun replaces it
ls -l .whl
du -sh .whl
