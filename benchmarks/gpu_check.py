"""One prepared GPU check for keras-hta (issue #13): correctness, MirroredStrategy, step time, CIFAR-10.

Four independent stages, each in a fresh process with its own time limit;
each writes `stage_<x>.json` under the output folder as soon as it ends, so a
time-out keeps what finished. The driver then writes `gpu_check.json`,
`gpu_check.md` and `step_time.png`, and prints the card's name.

  a. correctness: HomotopyModel `fit` (proximal update) for 20 steps with
     `jit_compile` False and True, float32 and mixed_float16; θ against the
     same run on the CPU (max |Δθ|);
  b. MirroredStrategy over 2 logical GPUs carved out of the one physical GPU
     against 1 GPU (a network without BatchNorm; max |Δθ|, target 1e-5);
  c. step time at batch 128: plain vs HTA vs HTA split for VGG11-BN and
     VGG16-BN at full width, with and without XLA, ratios from alternating
     rounds in one process; peak GPU memory per variant;
  d. full-width VGG11-BN on CIFAR-10 (the shared JPEG tarball), SGD vs HTA
     (squared norms, proximal update, the paper's L schedule), same seed,
     cosine learning rate, as many epochs as `--minutes-d` allows; images/s
     of the input pipeline alone against the training step's.

Usage (about 8 minutes on one H100):
    python benchmarks/gpu_check.py [--data ../shared/datasets/cifar10-jpeg.tar.gz]
Dry run (every stage at toy size on the CPU, 2 logical CPUs standing in for
the 2 GPUs; under 2 minutes; `tests/test_benchmarks.py` runs it):
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the repository's keras_hta, installed or not (the stages run this file too)
STAGES = ("a", "b", "c", "d")
LIMITS = {"a": 90, "b": 90, "c": 170, "d": 240}  # seconds per stage on the GPU: 9.8 min at most, 8 expected


def _write(path, obj):
    from keras_hta.experiments.compare import write_json_atomic

    write_json_atomic(path, obj)


def _devices(dry_run, logical=1):
    """Configures devices before TensorFlow starts; returns (accelerator, card name)."""
    import tensorflow as tf

    if dry_run:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * max(logical, 2))
        return "CPU", "CPU (dry run)"
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise SystemExit("No GPU visible: run with --dry-run on a CPU machine.")
    if logical > 1:
        memory = 30 * 1024  # MiB per logical GPU: two fit on an 80 GB card
        tf.config.set_logical_device_configuration(
            gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=memory)] * logical)
    else:
        tf.config.experimental.set_memory_growth(gpus[0], True)
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return "GPU", name


def _small_network(batch_norm=True, seed=0):
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", kernel_initializer=init)(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(10, kernel_initializer=init)(x))


def _fit_small(device, jit, policy, strategy=None, steps=20, batch_norm=True):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_hta as hta

    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * 16, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, size=steps * 16)
    scope = strategy.scope() if strategy else tf.device(device)
    with scope:
        keras.utils.set_random_seed(0)
        model = hta.HomotopyModel.from_model(_small_network(batch_norm), homotopy_l=0.01, split="channels")
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    with (contextlib.nullcontext() if strategy else tf.device(device)):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    return [w.numpy() for w in model.network.weights]


def _max_diff(a, b):
    import numpy as np

    return float(max(np.abs(u.astype("float64") - v.astype("float64")).max() for u, v in zip(a, b)))


def stage_a(args):
    accel, card = _devices(args.dry_run)
    reference = _fit_small("/CPU:0", False, "float32")
    rows = []
    for policy in ("float32", "mixed_float16"):
        for jit in (False, True):
            start = time.perf_counter()
            theta = _fit_small(f"/{accel}:0", jit, policy)
            rows.append({"policy": policy, "jit_compile": jit, "max_abs_diff_vs_cpu": _max_diff(theta, reference),
                         "seconds": round(time.perf_counter() - start, 2)})
    return {"card": card, "rows": rows, "note": "20 SGD steps, proximal update, against float32 on the CPU"}


def stage_b(args):
    import tensorflow as tf

    accel, card = _devices(args.dry_run, logical=2)
    devices = [d.name for d in tf.config.list_logical_devices(accel)][:2]
    one = _fit_small(devices[0], False, "float32", batch_norm=False)
    mirrored = tf.distribute.MirroredStrategy(devices)
    two = _fit_small(None, False, "float32", strategy=mirrored, batch_norm=False)
    return {"card": card, "devices": devices, "max_abs_diff": _max_diff(one, two), "target": 1e-5}


def _StepTimer():
    """A callback timing each training step; reading the loss waits for the device."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def stage_c(args):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_hta as hta
    from keras_hta.experiments import models

    accel, card = _devices(args.dry_run)
    width, batch, steps, rounds = (1 / 16, 8, 4, 2) if args.dry_run else (1.0, 128, 11, 3)
    depths = (11,) if args.dry_run else (11, 16)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 4, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=batch * 4)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat().prefetch(4)
    rows = []
    for depth in depths:
        for jit in (False, True):
            built, times, peaks = {}, {}, {}
            for variant in ("plain", "hta", "hta_split"):
                keras.utils.set_random_seed(0)
                network = models.vgg(depth, width=width)
                model = network if variant == "plain" else hta.HomotopyModel.from_model(
                    network, homotopy_l=0.01, twin_batch="split" if variant == "hta_split" else "full")
                model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=jit,
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # tracing and XLA compilation
                built[variant], times[variant] = model, []
            for _ in range(rounds):  # alternating, so load changes hit every variant alike
                for variant, model in built.items():
                    if accel == "GPU":
                        tf.config.experimental.reset_memory_stats("GPU:0")
                    timer = _StepTimer()
                    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
                    times[variant] += timer.times[1:]  # the first step of a fit also starts its iterator
                    if accel == "GPU":
                        peaks[variant] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
            median = {v: float(np.median(t)) for v, t in times.items()}
            rows.append({"model": f"vgg{depth}_bn", "width": width, "batch": batch, "jit_compile": jit,
                         **{f"{v}_s": s for v, s in median.items()},
                         "hta_over_plain": median["hta"] / median["plain"],
                         "hta_over_2plain": median["hta"] / (2 * median["plain"]),
                         "split_over_plain": median["hta_split"] / median["plain"],
                         **{f"{v}_peak_mib": peaks.get(v) for v in built}})
            del built
            keras.backend.clear_session()
    return {"card": card, "rows": rows}


def stage_d(args):
    import keras
    import numpy as np

    import keras_hta as hta
    from keras_hta.experiments import data, models

    accel, card = _devices(args.dry_run)
    if args.dry_run:
        rng = np.random.default_rng(0)
        d = {"x_train": rng.integers(0, 256, size=(256, 32, 32, 3), dtype=np.uint8),
             "y_train": rng.integers(0, 10, size=256).astype("int32"),
             "x_test": rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8),
             "y_test": rng.integers(0, 10, size=64).astype("int32")}
        width, batch, epochs_cap = 1 / 16, 32, 2
    else:
        d = data.load_image_folder(args.data)
        width, batch, epochs_cap = 1.0, 128, 30
    mean, std = data.channel_stats(d["x_train"])
    steps_per_epoch = int(np.ceil(len(d["y_train"]) / batch))

    keras.utils.set_random_seed(0)
    probe = data.image_pipeline(d["x_train"], d["y_train"], batch, True, mean, std, seed=0)
    start, images = time.perf_counter(), 0
    for xb, _ in probe.take(min(steps_per_epoch, 100)):
        images += int(xb.shape[0])
    pipeline_images_s = images / (time.perf_counter() - start)

    def run(arm, epochs):
        keras.utils.set_random_seed(0)  # same initial weights and batches for both arms
        train = data.image_pipeline(d["x_train"], d["y_train"], batch, True, mean, std, seed=0)
        test = data.image_pipeline(d["x_test"], d["y_test"], batch, False, mean, std)
        network = models.vgg(11, width=width)
        model, callbacks = network, []
        if arm == "hta":  # the paper's six L values over the run, squared norms, proximal update
            model = hta.HomotopyModel.from_model(network, homotopy_l=0.01)
            callbacks = [hta.HomotopyScheduler(hta.schedules.Linear(0.01, 0.005, -0.001, max(1, epochs // 6)))]
        lr = keras.optimizers.schedules.CosineDecay(0.05, steps_per_epoch * epochs)
        model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9, weight_decay=5e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        start = time.perf_counter()
        history = model.fit(train, epochs=epochs, verbose=0 if args.dry_run else 2, callbacks=callbacks)
        seconds = time.perf_counter() - start
        accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
        return {"epochs": epochs, "test_accuracy": float(accuracy), "seconds": round(seconds, 1),
                "train_images_per_s": len(d["y_train"]) * epochs / seconds,
                "final_loss": float(history.history["loss"][-1])}

    probe = run("sgd", 1)  # one epoch (with tracing) sizes the run: SGD + HTA take about 3 SGD epochs
    epochs = int(max(1, min(epochs_cap, args.minutes_d * 60 / 3 / probe["seconds"])))
    return {"card": card, "width": width, "batch": batch, "pipeline_images_per_s": pipeline_images_s,
            "probe_epoch_seconds": probe["seconds"], "arms": {arm: run(arm, epochs) for arm in ("sgd", "hta")}}


def report(out, results):
    lines = [f"# GPU check ({results.get('card', '?')})", ""]
    a = results.get("a")
    if a:
        lines += ["## a. Correctness against the CPU (20 steps, proximal update)", "",
                  "| policy | jit_compile | max abs diff of θ vs CPU float32 | seconds |", "|---|---|---|---|"]
        lines += [f"| {r['policy']} | {r['jit_compile']} | {r['max_abs_diff_vs_cpu']:.2e} | {r['seconds']} |"
                  for r in a["rows"]]
    b = results.get("b")
    if b:
        lines += ["", "## b. MirroredStrategy, 2 logical devices vs 1", "",
                  f"max abs diff {b['max_abs_diff']:.2e} (target {b['target']:g}) on {', '.join(b['devices'])}"]
    c = results.get("c")
    if c:
        lines += ["", "## c. Step time", "", "| model | XLA | plain s | HTA s | split s | HTA/plain | HTA/(2 plain) | "
                  "split/plain | peak MiB plain / HTA / split |", "|---|---|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            peaks = " / ".join("-" if r.get(f"{v}_peak_mib") is None else f"{r[f'{v}_peak_mib']:.0f}"
                               for v in ("plain", "hta", "hta_split"))
            lines.append(f"| {r['model']} w{r['width']:g} b{r['batch']} | {r['jit_compile']} | {r['plain_s']:.4f} | "
                         f"{r['hta_s']:.4f} | {r['hta_split_s']:.4f} | {r['hta_over_plain']:.2f} | "
                         f"{r['hta_over_2plain']:.2f} | {r['split_over_plain']:.2f} | {peaks} |")
    d = results.get("d")
    if d:
        lines += ["", "## d. CIFAR-10, VGG11-BN", "", f"input pipeline alone: {d['pipeline_images_per_s']:.0f} images/s",
                  "", "| arm | epochs | test accuracy | seconds | training images/s |", "|---|---|---|---|---|"]
        lines += [f"| {arm} | {r['epochs']} | {100 * r['test_accuracy']:.2f}% | {r['seconds']} | "
                  f"{r['train_images_per_s']:.0f} |" for arm, r in d["arms"].items()]
    for stage, error in results.get("errors", {}).items():
        lines += ["", f"Stage {stage} did not finish: {error}"]
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if c:
        from keras_hta.experiments.plots import _pyplot

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [f"{r['model']}\n{'XLA' if r['jit_compile'] else 'no XLA'}" for r in c["rows"]]
        ax.bar([i - 0.2 for i in range(len(labels))], [r["hta_over_2plain"] for r in c["rows"]], 0.4,
               label="HTA / (2 x plain)")
        ax.bar([i + 0.2 for i in range(len(labels))], [r["split_over_plain"] for r in c["rows"]], 0.4,
               label="HTA split / plain")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(f"step-time ratios ({results.get('card', '?')})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "step_time.png"), dpi=120)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "cifar10-jpeg.tar.gz"))
    parser.add_argument("--minutes-d", type=float, default=3.5, help="training time for stage d, both arms")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu"))
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage here
    args = parser.parse_args()
    if args.minutes_d <= 0:
        parser.error(f"argument --minutes-d must be > 0. Received: {args.minutes_d}")
    if "d" in args.stages and not args.dry_run and not os.path.exists(args.data):
        parser.error(f"argument --data does not exist. Received: {args.data}")
    os.makedirs(args.out, exist_ok=True)
    if args.stage:  # a child process: one stage, its result written at once
        result = globals()[f"stage_{args.stage}"](args)
        _write(os.path.join(args.out, f"stage_{args.stage}.json"), result)
        return 0

    results, errors = {}, {}
    for stage in args.stages:
        print(f"stage {stage} ...", flush=True)
        command = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--out", args.out, "--data", args.data,
                   "--minutes-d", str(args.minutes_d)] + (["--dry-run"] if args.dry_run else [])
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=LIMITS[stage] * (3 if args.dry_run else 1))
            if done.returncode:
                errors[stage] = done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            errors[stage] = f"timed out after {LIMITS[stage]} s"
        path = os.path.join(args.out, f"stage_{stage}.json")
        if os.path.exists(path) and stage not in errors:
            with open(path) as f:
                results[stage] = json.load(f)
            results["card"] = results[stage].get("card")
        print(f"stage {stage}: {'done' if stage in results else errors.get(stage)} in {time.perf_counter() - start:.0f} s",
              flush=True)
    results["errors"] = errors
    results["command"] = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
    _write(os.path.join(args.out, "gpu_check.json"), results)
    print(report(args.out, results))
    print(f"\ncard: {results.get('card')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
