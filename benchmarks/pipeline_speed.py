"""Images per second of the CIFAR-10 training pipeline: tf.data (TensorFlow) beside NumPy (JAX, PyTorch).

Both pipelines do the same work per image: shuffle, random flip, pad-4 random
crop, per-channel normalisation, batches of 128. Each backend runs in its own
process on the decoded (cached) CIFAR-10 training images; the first batches
are a warm-up. The NumPy pipeline is `keras_hta.experiments.data.ArrayBatches`
(no workers: one process, as `fit` uses it by default).

Usage: python benchmarks/pipeline_speed.py [CIFAR_PATH] [--batches 150] [--backends tensorflow jax]
Writes benchmarks/results/pipeline_speed.json and .md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import common  # beside this file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(path, batches):
    import keras

    from keras_hta.experiments import data

    d = data.load_image_folder(path)
    x, y = d["x_train"], d["y_train"]
    mean, std = data.channel_stats(x)
    pipeline = data.image_pipeline(x, y, 128, True, mean, std, seed=0)
    if keras.backend.backend() == "tensorflow":
        batches_of = iter(pipeline)
        get = lambda i: next(batches_of)  # noqa: E731
    else:
        get = pipeline.__getitem__
    for i in range(10):  # warm-up
        get(i)
    start, images = time.perf_counter(), 0
    for i in range(10, 10 + batches):
        images += len(get(i % (len(y) // 128))[1])
    seconds = time.perf_counter() - start
    return {"backend": keras.backend.backend(), "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "cpus": os.cpu_count()}


def render(saved):
    """RESULTS §6's pipeline table from pipeline_speed.json."""
    rows = [["tf.data" if r["backend"] == "tensorflow" else "NumPy (ArrayBatches)", r["backend"],
             f"{r['images_per_s']:.0f}", str(r["images"])] for r in saved["rows"]]
    return "\n".join([f"Command: `{saved['command']}`", ""] +
                     common.table(["pipeline", "backend", "images/s", "images timed"], rows)) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cifar", nargs="?", default=os.path.join(ROOT, "..", "shared", "datasets", "cifar10-jpeg.tar.gz"))
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.path.exists(args.cifar):
        parser.error(f"argument cifar does not exist. Received: {args.cifar}")
    if args.worker:
        print(json.dumps(measure(args.cifar, args.batches)))
        return 0
    rows = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, __file__, args.cifar, "--batches", str(args.batches), "--worker"],
                             capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    from keras_hta.experiments import write_atomic

    command = "python benchmarks/pipeline_speed.py " + " ".join(sys.argv[1:])
    saved = {"command": command, "provenance": common.provenance(command), "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    write_atomic(os.path.join(args.out, "pipeline_speed.json"), lambda f: json.dump(saved, f, indent=1))
    text = render(saved)
    write_atomic(os.path.join(args.out, "pipeline_speed.md"), lambda f: f.write(text))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
