"""One prepared GPU check for keras-hta on JAX, without TensorFlow (issues #13, #21).

Five independent stages, each in a fresh process with `KERAS_BACKEND=jax` and
its own time limit; each writes `stage_<x>.json` under the output folder as
soon as it ends, so a time-out keeps what finished. The driver then writes
`gpu_check.json`, `gpu_check.md` and `step_time.png`, and prints the card's
name. No stage imports TensorFlow (each records whether it did).

  a. correctness: HomotopyModel `fit` (proximal update) for 20 steps with
     `jit_compile` False and True, float32 and mixed_float16; θ against the
     same run on the CPU (max |Δθ|);
  b. several devices: `keras.distribution.DataParallel` over 2 devices
     against 1 (a network without BatchNorm; max |Δθ|, target 1e-5), when
     more than one accelerator is visible (one skipped line otherwise; the
     dry run uses 2 host devices);
  c. step time at batch 128: plain vs HTA vs HTA split for VGG11-BN and
     VGG16-BN at full width, with and without XLA, medians from alternating
     rounds in one process; peak device memory per variant;
  d. full-width VGG11-BN on CIFAR-10 (the shared JPEG tarball, decoded with
     Pillow, NumPy augmentation), SGD vs HTA (squared norms, proximal update,
     the paper's L schedule), same seed and batches, cosine learning rate,
     as many epochs as `--minutes-d` allows (sized from a timed epoch);
     images/s of the input pipeline alone against the training step's;
  e. fused twins: the twins' forward and backward pass as one `jax.vmap`
     over stacked weights against two calls, VGG11-BN at widths 1/8 and 1
     (decides whether the library gets a fused mode).

Usage (about 8 minutes on one H200; the wheels and the command that carries
them: benchmarks/RESULTS.md §6):
    KERAS_BACKEND=jax python benchmarks/gpu_check.py [--data ../shared/datasets/cifar10-jpeg.tar.gz]
Dry run (every stage at toy size on the CPU, 2 host devices standing in for
2 GPUs; under 3 minutes; `tests/test_benchmarks.py` runs it):
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports Keras: this check runs on JAX
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the repository's keras_hta, installed or not (the stages run this file too)
STAGES = ("a", "b", "c", "d", "e")
LIMITS = {"a": 80, "b": 60, "c": 150, "d": 170, "e": 70}  # seconds per stage on the GPU: 9.2 min at most


def _write(path, obj):
    from keras_hta.experiments import write_atomic

    write_atomic(path, lambda f: json.dump(obj, f, indent=1))


def _card(dry_run):
    import jax

    if dry_run:
        return "CPU (dry run)"
    device = jax.devices()[0]
    if device.platform == "cpu":
        raise SystemExit("No GPU visible to JAX: run with --dry-run on a CPU machine.")
    return device.device_kind


def _small_network(batch_norm=True, seed=0):
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", kernel_initializer=init)(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(10, kernel_initializer=init)(x))


def _fit_small(jit, policy, device=None, steps=20, batch_norm=True, plain=False):
    import contextlib

    import jax
    import keras
    import numpy as np

    import keras_hta as hta

    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * 16, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, size=steps * 16)
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
        keras.utils.set_random_seed(0)
        network = _small_network(batch_norm)
        model = network if plain else hta.HomotopyModel.from_model(network, homotopy_l=0.01, split="channels")
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    keras.config.set_dtype_policy("float32")
    return [np.asarray(w) for w in network.weights]


def _max_diff(a, b):
    import numpy as np

    return float(max(np.abs(u.astype("float64") - v.astype("float64")).max() for u, v in zip(a, b)))


def stage_a(args):
    import jax

    card = _card(args.dry_run)
    cpu = jax.devices("cpu")[0]
    reference = _fit_small(False, "float32", device=cpu)
    plain_reference = _fit_small(False, "float32", device=cpu, plain=True)
    rows = []
    for policy in ("float32", "mixed_float16"):
        for jit in (False, True):
            start = time.perf_counter()
            theta = _fit_small(jit, policy)
            seconds = round(time.perf_counter() - start, 2)
            plain = _fit_small(jit, policy, plain=True)  # what plain Keras differs by in the same setting
            rows.append({"policy": policy, "jit_compile": jit, "max_abs_diff_vs_cpu": _max_diff(theta, reference),
                         "plain_keras_max_abs_diff_vs_cpu": _max_diff(plain, plain_reference), "seconds": seconds})
    return {"card": card, "rows": rows, "note": "20 SGD steps, proximal update, against float32 on the CPU; "
                                               "plain Keras's own difference in the same setting beside it"}


def stage_b(args):
    import keras

    card = _card(args.dry_run)
    devices = keras.distribution.list_devices("cpu" if args.dry_run else None)
    if len(devices) < 2:
        return {"card": card, "skipped": f"{len(devices)} device visible: DataParallel needs 2"}
    one = _fit_small(False, "float32", batch_norm=False)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices[:2]))
    try:
        two = _fit_small(False, "float32", batch_norm=False)
    finally:
        keras.distribution.set_distribution(None)
    return {"card": card, "devices": [str(d) for d in devices[:2]], "max_abs_diff": _max_diff(one, two),
            "target": 1e-5}


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


def _repeat(x, y, batch):
    import keras

    class Repeat(keras.utils.PyDataset):
        def __len__(self):
            return 10**6

        def __getitem__(self, i):
            i %= len(x) // batch
            return x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]

    return Repeat()


def _peak_mib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def stage_c(args):
    import keras
    import numpy as np

    import keras_hta as hta
    from keras_hta.experiments import models

    card = _card(args.dry_run)
    width, batch, steps, rounds = (1 / 16, 8, 4, 2) if args.dry_run else (1.0, 128, 11, 3)
    depths = (11,) if args.dry_run else (11, 16)
    rng = np.random.default_rng(0)
    data = _repeat(rng.normal(size=(batch * 4, 32, 32, 3)).astype("float32"), rng.integers(0, 10, size=batch * 4),
                   batch)
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
                peaks[variant] = _peak_mib()  # the process's peak so far: grows with each variant built
            for _ in range(rounds):  # alternating, so load changes hit every variant alike
                for variant, model in built.items():
                    timer = _StepTimer()
                    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
                    times[variant] += timer.times[1:]  # the first step of a fit also starts its iterator
            median = {v: float(np.median(t)) for v, t in times.items()}
            rows.append({"model": f"vgg{depth}_bn", "width": width, "batch": batch, "jit_compile": jit,
                         **{f"{v}_s": s for v, s in median.items()},
                         "hta_over_plain": median["hta"] / median["plain"],
                         "hta_over_2plain": median["hta"] / (2 * median["plain"]),
                         "split_over_plain": median["hta_split"] / median["plain"],
                         **{f"{v}_peak_mib": peaks.get(v) for v in built}})
            del built
            keras.backend.clear_session()
    return {"card": card, "rows": rows, "note": "peak MiB: the device's peak after building and warming each "
                                               "variant in turn (cumulative within a row)"}


def stage_d(args):
    import keras
    import numpy as np

    import keras_hta as hta
    from keras_hta.experiments import data, models

    card = _card(args.dry_run)
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

    probe = data.image_pipeline(d["x_train"], d["y_train"], batch, True, mean, std, seed=0)
    start, images = time.perf_counter(), 0
    for i in range(min(steps_per_epoch, 100)):
        images += len(probe[i][1])
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


def stage_e(args):
    """Two twins' gradients: one jitted `vmap` over stacked weights against two jitted calls."""
    import jax
    import keras
    import numpy as np

    from keras_hta.experiments import models

    card = _card(args.dry_run)
    batch, reps = (8, 3) if args.dry_run else (128, 20)
    widths = (1 / 16, 1 / 8) if args.dry_run else (1 / 8, 1.0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(batch, 32, 32, 3)).astype("float32"))
    y = jax.numpy.asarray(rng.integers(0, 10, size=batch))
    rows = []
    for width in widths:
        keras.utils.set_random_seed(0)
        network = models.vgg(11, width=width)
        trainable = [v.value for v in network.trainable_variables]
        frozen = [v.value for v in network.non_trainable_variables]

        def f(tv, ntv):
            y_pred, ntv = network.stateless_call(tv, ntv, x, training=True)
            return loss(y, y_pred), ntv

        grad = jax.grad(f, has_aux=True)
        twin = [t * 1.01 for t in trainable]
        two = jax.jit(lambda a, b, n: (grad(a, n), grad(b, n)))
        fused = jax.jit(lambda stacked, n: jax.vmap(grad, in_axes=(0, None))(stacked, n))
        stacked = [jax.numpy.stack([a, b]) for a, b in zip(trainable, twin)]
        timings = {}
        for name, call in (("two_calls", lambda: two(trainable, twin, frozen)),
                           ("fused_vmap", lambda: fused(stacked, frozen))):
            jax.block_until_ready(call())  # compile
            samples = []
            for _ in range(reps):
                start = time.perf_counter()
                jax.block_until_ready(call())
                samples.append(time.perf_counter() - start)
            timings[name] = float(np.median(samples))
        (g_a, _), (g_b, _) = two(trainable, twin, frozen)
        g_fused, _ = fused(stacked, frozen)
        agree = max(float(np.max(np.abs(np.asarray(u[0]) - np.asarray(a)))) for u, a in zip(g_fused, g_a))
        agree = max(agree, max(float(np.max(np.abs(np.asarray(u[1]) - np.asarray(b)))) for u, b in zip(g_fused, g_b)))
        rows.append({"model": "vgg11_bn", "width": width, "batch": batch, **{f"{k}_s": v for k, v in timings.items()},
                     "fused_over_two": timings["fused_vmap"] / timings["two_calls"], "max_abs_grad_diff": agree})
        keras.backend.clear_session()
    return {"card": card, "rows": rows}


def report(out, results):
    lines = [f"# GPU check ({results.get('card', '?')}, Keras on JAX)", ""]
    a = results.get("a")
    if a:
        lines += ["## a. Correctness against the CPU (20 steps, proximal update)", "",
                  "| policy | jit_compile | max abs diff of θ vs CPU float32 | plain Keras's, the same way | seconds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['policy']} | {r['jit_compile']} | {r['max_abs_diff_vs_cpu']:.2e} | "
                  f"{r['plain_keras_max_abs_diff_vs_cpu']:.2e} | {r['seconds']} |" for r in a["rows"]]
    b = results.get("b")
    if b:
        lines += ["", "## b. DataParallel, 2 devices vs 1", ""]
        lines += [f"skipped: {b['skipped']}" if "skipped" in b else
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
    e = results.get("e")
    if e:
        lines += ["", "## e. Fused twins (vmap) against two calls, forward + backward", "",
                  "| model | width | batch | two calls s | fused s | fused / two | max abs grad diff |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['width']:g} | {r['batch']} | {r['two_calls_s']:.4f} | {r['fused_vmap_s']:.4f} | "
                  f"{r['fused_over_two']:.2f} | {r['max_abs_grad_diff']:.1e} |" for r in e["rows"]]
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


def _child(args):
    """Runs one stage here (KERAS_BACKEND=jax, set by the driver) and writes its JSON at once."""
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"gpu_check stages run on JAX; this process has KERAS_BACKEND={keras.backend.backend()}")
    result = globals()[f"stage_{args.stage}"](args)
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    _write(os.path.join(args.out, f"stage_{args.stage}.json"), result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "cifar10-jpeg.tar.gz"),
                        help="the CIFAR-10 JPEG tarball or image folder for stage d")
    parser.add_argument("--minutes-d", type=float, default=2.5, help="training time for stage d, both arms")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu"), help="where the results go")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage here
    args = parser.parse_args()
    if args.minutes_d <= 0:
        parser.error(f"argument --minutes-d must be > 0. Received: {args.minutes_d}")
    if "d" in args.stages and not args.dry_run and not os.path.exists(args.data):
        parser.error(f"argument --data does not exist. Received: {args.data}")
    os.makedirs(args.out, exist_ok=True)
    if args.stage:
        _child(args)
        return 0

    env = dict(os.environ, KERAS_BACKEND="jax")  # the stages run on JAX whatever the caller's backend
    if args.dry_run:  # two host devices stand in for two GPUs, and JAX stays on the CPU
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
        env["JAX_PLATFORMS"] = "cpu"
    results, errors = {}, {}
    for stage in args.stages:
        print(f"stage {stage} ...", flush=True)
        command = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--out", args.out, "--data", args.data,
                   "--minutes-d", str(args.minutes_d)] + (["--dry-run"] if args.dry_run else [])
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=LIMITS[stage] * (3 if args.dry_run else 1))
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
