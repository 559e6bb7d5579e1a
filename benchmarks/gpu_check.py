"""One prepared GPU check for keras-hta on JAX, without TensorFlow.

Five independent stages, each in a fresh process with `KERAS_BACKEND=jax` and
its own time limit, run in the order a, b, c, e, d within one time budget
(`--budget`, 540 s): stage d trains for what the others left. Each stage
rewrites `stage_<x>.json` under the output folder after every row it
finishes, so a time-out keeps what finished. The driver then writes
`gpu_check.json` (with the versions it ran on), `gpu_check.md` and
`step_time.png`, and prints the card's name. No stage imports TensorFlow
(each records whether it did).

  a. correctness: HomotopyModel `fit` (proximal update) for 20 steps with
     `jit_compile` False and True, float32 and mixed_float16; θ against the
     same run on the CPU (max |Δθ|);
  b. several devices: `keras.distribution.DataParallel` over 2 devices
     against 1 (a network without BatchNorm; max |Δθ|, target 1e-5), when
     more than one accelerator is visible (one skipped line otherwise; the
     dry run uses 2 host devices);
  c. step time at batch 128: plain vs HTA vs HTA split for VGG11-BN and
     VGG16-BN at full width, with and without XLA (the dry run: with XLA),
     medians from alternating rounds in one process; peak device memory per
     variant;
  d. full-width VGG11-BN on CIFAR-10 (the shared JPEG tarball, decoded with
     Pillow, NumPy augmentation), SGD vs HTA (squared norms, proximal update,
     the paper's L schedule), same seed and batches, cosine learning rate,
     as many epochs (at most 30) as the time left allows, sized from timed
     steps after compilation; images/s of the input pipeline alone against
     the training step's;
  e. fused twins: the twins' forward and backward pass as one `jax.vmap`
     over stacked weights against two calls, VGG11-BN at widths 1/8 and 1
     (decides whether the library gets a fused mode).

Usage (9 minutes at most on one GPU; the wheels and the command that carries
them: benchmarks/RESULTS.md §6):
    KERAS_BACKEND=jax python benchmarks/gpu_check.py [--data ../shared/datasets/cifar10-jpeg.tar.gz]
Dry run (every stage at toy size on the CPU, 2 host devices standing in for
2 GPUs; under 3 minutes; `tests/test_gpu_check.py` runs it):
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common  # noqa: E402  (beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STAGES = ("a", "b", "c", "e", "d")  # the order they run in: d, last, trains for the time the others left
LIMITS = {"a": 80, "b": 60, "c": 150, "e": 70}  # seconds at most per stage on the GPU; d: what is left
D_MINIMUM = 120  # seconds kept for stage d whatever the others take
D_OVERHEAD = 90  # of stage d's seconds, those not training: start, decoding, the probe, compiling evaluation
EPOCHS_CAP = 30
DRY_RUN_SCALE = 3  # the dry run's CPU is slower at everything: its limits and budget are this many times longer


def _write(path, obj):
    from keras_hta.experiments import write_atomic

    write_atomic(path, lambda f: json.dump(obj, f, indent=1))


def _stage_path(out, stage):
    return os.path.join(out, f"stage_{stage}.json")


def _read_stage(out, stage):
    """A stage's saved result, or `None`."""
    path = _stage_path(out, stage)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _card(args):
    import jax

    if args.dry_run:
        return "CPU (dry run)"
    if args.rehearse:
        return "CPU (rehearsal of stage d)"
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


def stage_a(args, save):
    import jax

    card = _card(args)
    cpu = jax.devices("cpu")[0]
    reference = _fit_small(False, "float32", device=cpu)
    plain_reference = _fit_small(False, "float32", device=cpu, plain=True)
    rows = []
    note = ("20 SGD steps, proximal update, against float32 on the CPU; "
            "plain Keras's own difference in the same setting beside it")
    for policy in ("float32", "mixed_float16"):
        for jit in (False, True):
            start = time.perf_counter()
            theta = _fit_small(jit, policy)
            seconds = round(time.perf_counter() - start, 2)
            plain = _fit_small(jit, policy, plain=True)  # what plain Keras differs by in the same setting
            rows.append({"policy": policy, "jit_compile": jit, "max_abs_diff_vs_cpu": _max_diff(theta, reference),
                         "plain_keras_max_abs_diff_vs_cpu": _max_diff(plain, plain_reference), "seconds": seconds})
            save({"card": card, "rows": rows, "note": note})
    return {"card": card, "rows": rows, "note": note}


def stage_b(args, save):
    import keras

    card = _card(args)
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


def _timer(steps=True):
    """A callback recording each training step's seconds (`steps`) and each epoch's.

    Timing a step reads its loss, which waits for the device; without
    `steps` nothing waits (an epoch's first holds the tracing and compilation).
    """
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.seconds = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.epoch_start)

        def on_train_batch_begin(self, batch, logs=None):
            if steps:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if steps:
                float(logs["loss"])
                self.times.append(time.perf_counter() - self.start)

    return Timer()


def _peak_mib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def stage_c(args, save):
    import keras
    import numpy as np

    import keras_hta as hta
    from keras_hta.experiments import models
    from keras_hta.experiments.data import RepeatedBatches

    card = _card(args)
    width, batch, steps, rounds = (1 / 16, 8, 4, 2) if args.dry_run else (1.0, 128, 11, 3)
    depths = (11,) if args.dry_run else (11, 16)
    # The dry run times XLA alone: without it JAX compiles every operation on its first call (this
    # stage took 67 s on the CPU with that row, 23 s without), for a row differing from the XLA one by the flag alone.
    jits = (True,) if args.dry_run else (True, False)
    note = ("peak MiB: the device's peak after building and warming each variant in turn (cumulative within a "
            "row); rows in order of interest (XLA is JAX's default), each saved as it ends")
    rng = np.random.default_rng(0)
    data = RepeatedBatches(rng.normal(size=(batch * 4, 32, 32, 3)).astype("float32"),
                           rng.integers(0, 10, size=batch * 4), batch)
    rows = []
    for depth in depths:
        for jit in jits:
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
                    timer = _timer()
                    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
                    times[variant] += timer.times[1:]  # the first step of a fit also starts its iterator
            median = {v: float(np.median(t)) for v, t in times.items()}
            rows.append({"model": f"vgg{depth}_bn", "width": width, "batch": batch, "jit_compile": jit,
                         **{f"{v}_s": s for v, s in median.items()},
                         "hta_over_plain": median["hta"] / median["plain"],
                         "hta_over_2plain": median["hta"] / (2 * median["plain"]),
                         "split_over_plain": median["hta_split"] / median["plain"],
                         **{f"{v}_peak_mib": peaks.get(v) for v in built}})
            save({"card": card, "rows": rows, "note": note})
            del built
            keras.backend.clear_session()
    return {"card": card, "rows": rows, "note": note}


def d_epochs(budget_s, compile_s, sgd_epoch_s, cap=EPOCHS_CAP):
    """Epochs for both arms within `budget_s` seconds of training.

    Costed as: SGD compiles once (`compile_s`) and HTA, two twins, about
    twice; an HTA epoch at most 2.4 SGD epochs (HTA/(2 plain) ≤ 1.2), so
    both arms cost 3 compilations and 3.4 SGD epochs per epoch.
    """
    return int(max(1, min(cap, (budget_s - 3 * compile_s) / (3.4 * sgd_epoch_s))))


def stage_d(args, save):
    import keras
    import numpy as np

    import keras_hta as hta
    from keras_hta.experiments import data, models

    card = _card(args)
    start = time.perf_counter()
    if args.dry_run:
        rng = np.random.default_rng(0)
        d = {"x_train": rng.integers(0, 256, size=(256, 32, 32, 3), dtype=np.uint8),
             "y_train": rng.integers(0, 10, size=256).astype("int32"),
             "x_test": rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8),
             "y_test": rng.integers(0, 10, size=64).astype("int32")}
        width, batch, probe_steps = 1 / 16, 32, 4
    else:
        d = data.load_image_folder(args.data)
        width, batch, probe_steps = 1.0, 128, 30
        if args.rehearse:  # the same path at a size the CPU runs: stratified subsets, width 1/16
            train = data.stratified_indices(d["y_train"], 4096, seed=0)
            test = data.stratified_indices(d["y_test"], 1000, seed=0)
            d = {"x_train": d["x_train"][train], "y_train": d["y_train"][train],
                 "x_test": d["x_test"][test], "y_test": d["y_test"][test]}
            width = 1 / 16
    result = {"card": card, "width": width, "batch": batch, "decode_s": round(time.perf_counter() - start, 1)}
    mean, std = data.channel_stats(d["x_train"])
    steps_per_epoch = int(np.ceil(len(d["y_train"]) / batch))

    pipeline = data.image_pipeline(d["x_train"], d["y_train"], batch, True, mean, std, seed=0)
    start, images = time.perf_counter(), 0
    for i in range(min(steps_per_epoch, 100)):
        images += len(pipeline[i][1])
    result["pipeline_images_per_s"] = images / (time.perf_counter() - start)

    def run(arm, epochs, steps=None):
        keras.utils.set_random_seed(0)  # same initial weights and batches for both arms
        train = data.image_pipeline(d["x_train"], d["y_train"], batch, True, mean, std, seed=0)
        test = data.image_pipeline(d["x_test"], d["y_test"], batch, False, mean, std)
        network = models.vgg(11, width=width)
        model, timer = network, _timer(steps=bool(steps))
        callbacks = [timer]
        if arm == "hta":  # the paper's six L values over the run, squared norms, proximal update
            model = hta.HomotopyModel.from_model(network, homotopy_l=0.01)
            callbacks.append(hta.HomotopyScheduler(hta.schedules.Linear(0.01, 0.005, -0.001, max(1, epochs // 6))))
        lr = keras.optimizers.schedules.CosineDecay(0.05, (steps or steps_per_epoch) * epochs)
        model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9, weight_decay=5e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        # shuffle=False: the pipeline shuffles by its seed; Keras's reshuffle would follow Python's global random.
        history = model.fit(train, epochs=epochs, steps_per_epoch=steps, shuffle=False, callbacks=callbacks,
                            verbose=0 if args.dry_run or steps else 2)
        if steps:
            return timer.times
        seconds = sum(timer.seconds)
        accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
        return {"epochs": epochs, "test_accuracy": float(accuracy), "seconds": round(seconds, 1),
                "first_epoch_s": round(timer.seconds[0], 2),
                "later_epoch_s": round(float(np.median(timer.seconds[1:])), 2) if epochs > 1 else None,
                "train_images_per_s": len(d["y_train"]) * epochs / seconds,
                "final_loss": float(history.history["loss"][-1])}

    # Timed SGD steps size the run: the first holds the compilation, the others' median times an epoch.
    times = run("sgd", 1, steps=probe_steps)
    step_s = float(np.median(times[1:]))
    result["probe"] = {"steps": len(times), "compile_s": round(max(0.0, times[0] - step_s), 2),
                       "sgd_epoch_s": round(step_s * steps_per_epoch, 2)}
    result["budget_s"] = round(args.minutes_d * 60, 1)
    epochs = d_epochs(result["budget_s"], result["probe"]["compile_s"], result["probe"]["sgd_epoch_s"],
                      cap=2 if args.dry_run else EPOCHS_CAP)
    result["arms"] = {}
    save(result)
    for arm in ("sgd", "hta"):
        result["arms"][arm] = run(arm, epochs)
        save(result)
    return result


def stage_e(args, save):
    """Two twins' gradients: one jitted `vmap` over stacked weights against two jitted calls."""
    import jax
    import keras
    import numpy as np

    from keras_hta.experiments import models

    card = _card(args)
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
        save({"card": card, "rows": rows})
        keras.backend.clear_session()
    return {"card": card, "rows": rows}


def report(out, results):
    """gpu_check.md (and step_time.png from stage c) in `out`; returns the Markdown."""
    from keras_hta.experiments import write_atomic

    lines = [f"# GPU check ({results.get('card', '?')}, Keras on JAX)", ""]
    sections = {"a": _report_a, "b": _report_b, "c": _report_c, "d": _report_d, "e": _report_e}
    for stage, section in sections.items():
        if results.get(stage):
            lines += section(results[stage])
    for stage, error in results.get("errors", {}).items():
        lines += ["", f"Stage {stage} did not finish: {error}"]
    write_atomic(os.path.join(out, "gpu_check.md"), lambda f: f.write("\n".join(lines) + "\n"))
    if results.get("c"):
        _plot_step_time(out, results["c"], results.get("card", "?"))
    return "\n".join(lines)


def _report_a(a):
    rows = [[r["policy"], str(r["jit_compile"]), f"{r['max_abs_diff_vs_cpu']:.2e}",
             f"{r['plain_keras_max_abs_diff_vs_cpu']:.2e}", str(r["seconds"])] for r in a["rows"]]
    return ["## a. Correctness against the CPU (20 steps, proximal update)", ""] + common.table(
        ["policy", "jit_compile", "max abs diff of θ vs CPU float32", "plain Keras's, the same way", "seconds"], rows)


def _report_b(b):
    return ["", "## b. DataParallel, 2 devices vs 1", "",
            f"skipped: {b['skipped']}" if "skipped" in b else
            f"max abs diff {b['max_abs_diff']:.2e} (target {b['target']:g}) on {', '.join(b['devices'])}"]


def _report_c(c):
    rows = []
    for r in c["rows"]:
        peaks = " / ".join("-" if r.get(f"{v}_peak_mib") is None else f"{r[f'{v}_peak_mib']:.0f}"
                           for v in ("plain", "hta", "hta_split"))
        rows.append([f"{r['model']} w{r['width']:g} b{r['batch']}", str(r["jit_compile"]), f"{r['plain_s']:.4f}",
                     f"{r['hta_s']:.4f}", f"{r['hta_split_s']:.4f}", f"{r['hta_over_plain']:.2f}",
                     f"{r['hta_over_2plain']:.2f}", f"{r['split_over_plain']:.2f}", peaks])
    return ["", "## c. Step time", ""] + common.table(
        ["model", "XLA", "plain s", "HTA s", "split s", "HTA/plain", "HTA/(2 plain)", "split/plain",
         "peak MiB plain / HTA / split"], rows)


def _report_d(d):
    lines = ["", f"## d. CIFAR-10, VGG11-BN (width {d['width']:g}, batch {d['batch']})", "",
             f"decoding {d['decode_s']} s; input pipeline alone (one thread, NumPy): "
             f"{d['pipeline_images_per_s']:.0f} images/s"]
    if "probe" in d:
        lines += [f"sizing: compilation {d['probe']['compile_s']} s, an SGD epoch {d['probe']['sgd_epoch_s']} s "
                  f"(from {d['probe']['steps']} timed steps), {d['budget_s']} s of training for both arms"]
    rows = [[arm, str(r["epochs"]), f"{100 * r['test_accuracy']:.2f}%", str(r["seconds"]), str(r["first_epoch_s"]),
             "-" if r["later_epoch_s"] is None else str(r["later_epoch_s"]), f"{r['train_images_per_s']:.0f}"]
            for arm, r in d.get("arms", {}).items()]
    return lines + [""] + common.table(["arm", "epochs", "test accuracy", "seconds", "first epoch s",
                                        "later epochs s (median)", "training images/s"], rows)


def _report_e(e):
    rows = [[r["model"], f"{r['width']:g}", str(r["batch"]), f"{r['two_calls_s']:.4f}", f"{r['fused_vmap_s']:.4f}",
             f"{r['fused_over_two']:.2f}", f"{r['max_abs_grad_diff']:.1e}"] for r in e["rows"]]
    return ["", "## e. Fused twins (vmap) against two calls, forward + backward", ""] + common.table(
        ["model", "width", "batch", "two calls s", "fused s", "fused / two", "max abs grad diff"], rows)


def _plot_step_time(out, c, card):
    from keras_hta.experiments import write_atomic
    from keras_hta.experiments.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{r['model']}\n{'XLA' if r['jit_compile'] else 'no XLA'}" for r in c["rows"]]
    ax.bar([i - 0.2 for i in range(len(labels))], [r["hta_over_2plain"] for r in c["rows"]], 0.4,
           label="HTA / (2 x plain)")
    ax.bar([i + 0.2 for i in range(len(labels))], [r["split_over_plain"] for r in c["rows"]], 0.4,
           label="HTA split / plain")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_title(f"step-time ratios ({card})")
    ax.legend()
    fig.tight_layout()
    write_atomic(os.path.join(out, "step_time.png"), lambda f: fig.savefig(f, dpi=120, format="png"), mode="wb")


def _child(args):
    """Runs one stage here (KERAS_BACKEND=jax, set by the driver), writing its JSON as rows finish and at the end."""
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"gpu_check stages run on JAX; this process has KERAS_BACKEND={keras.backend.backend()}")
    path = _stage_path(args.out, args.stage)

    def save(result, complete=False):
        _write(path, {**result, "complete": complete, "tensorflow_imported": "tensorflow" in sys.modules})

    save(globals()[f"stage_{args.stage}"](args, save), complete=True)


def _versions():
    """What the check ran on, read without importing JAX (the driver must not take the GPU's memory)."""
    import platform

    return {"python": platform.python_version(), **common.package_versions(
        ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "keras", "numpy", "pillow"))}


def _stage_limits(stage, remaining, dry_run, d_follows=True):
    """(time limit, training minutes for d) of a stage given the seconds left of the budget."""
    scale = DRY_RUN_SCALE if dry_run else 1
    if stage != "d":
        return min(LIMITS[stage] * scale, max(1.0, remaining - D_MINIMUM * scale * d_follows)), None
    limit = max(remaining, D_MINIMUM * scale)
    return limit, max(0.5, (limit - D_OVERHEAD * scale) / 60)


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--rehearse", action="store_true",
                        help="stage d alone on the CPU as the GPU runs it (the tarball, Pillow, batch 128, the "
                             "sizing), on 4,096 training and 1,000 test images at width 1/16")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "datasets", "cifar10-jpeg.tar.gz"),
                        help="the CIFAR-10 JPEG tarball or image folder for stage d")
    parser.add_argument("--budget", type=float, default=540,
                        help=f"seconds for all stages together (the dry run gets {DRY_RUN_SCALE} times as many)")
    parser.add_argument("--minutes-d", type=float, default=4.0,
                        help="at most this much training in stage d, both arms (it gets what the budget leaves)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu"), help="where the results go")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage here
    args = parser.parse_args()
    if args.minutes_d <= 0:
        parser.error(f"argument --minutes-d must be > 0. Received: {args.minutes_d}")
    if args.budget <= 0:
        parser.error(f"argument --budget must be > 0. Received: {args.budget}")
    if args.rehearse and args.dry_run:
        parser.error("argument --rehearse: not with --dry-run (it rehearses stage d's real path)")
    if args.rehearse:
        args.stages = ["d"]
    if "d" in args.stages and not args.dry_run and not os.path.exists(args.data):
        parser.error(f"argument --data does not exist. Received: {args.data}")
    return args


def _stage_env(args):
    """The stages' environment: JAX whatever the caller's backend; the CPU for a dry run or a rehearsal."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    # Stage d's decoded images: in the temporary folder unless told otherwise (a lent machine's home may not be ours).
    env.setdefault("KERAS_HTA_CACHE", os.path.join(tempfile.gettempdir(), "keras_hta_gpu_check"))
    if args.dry_run:  # two host devices stand in for two GPUs
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    if args.dry_run or args.rehearse:
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_stage(args, stage, limit, minutes, env):
    """Runs one stage in a fresh process bounded by `limit` seconds; returns (what it saved or None, error or None)."""
    command = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--out", args.out, "--data", args.data,
               "--minutes-d", f"{minutes:.3f}"] + (["--dry-run"] if args.dry_run else []) + \
        (["--rehearse"] if args.rehearse else [])
    path = _stage_path(args.out, stage)
    if os.path.exists(path):
        os.remove(path)  # an earlier run's rows are not this run's
    error = None
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=limit)
        if done.returncode:
            tail = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
            error = tail[-1][:300]
            print("\n".join(tail[-25:]), flush=True)  # what a lent GPU's output must show
    except subprocess.TimeoutExpired:
        error = f"timed out after {limit:.0f} s"
    saved = _read_stage(args.out, stage)
    if saved is not None and not saved.get("complete"):
        kept = len(saved.get("rows", saved.get("arms", [])))
        error = (error or "did not finish") + f"; kept what it finished: {kept} row(s)"
    for name in os.listdir(args.out):  # a temporary file of a write the time limit cut short
        if name.startswith(f".stage_{stage}.json-"):
            os.remove(os.path.join(args.out, name))
    return saved, error


def main():
    sys.path.insert(0, ROOT)  # the repository's keras_hta, installed or not (the stages run this file too)
    args = _parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.stage:
        _child(args)
        return 0
    env = _stage_env(args)
    budget = args.budget * (DRY_RUN_SCALE if args.dry_run else 1)
    results, errors, began = {}, {}, time.perf_counter()
    for stage in [s for s in STAGES if s in args.stages]:
        limit, minutes = _stage_limits(stage, budget - (time.perf_counter() - began), args.dry_run,
                                       d_follows="d" in args.stages)
        minutes = args.minutes_d if minutes is None else min(args.minutes_d, minutes)
        print(f"stage {stage} ... (at most {limit:.0f} s)", flush=True)
        start = time.perf_counter()
        saved, error = _run_stage(args, stage, limit, minutes, env)
        if saved is not None:
            results[stage], results["card"] = saved, saved.get("card")
        if error:
            errors[stage] = error
        print(f"stage {stage}: {error or 'done'} in {time.perf_counter() - start:.0f} s", flush=True)
    for stage in [s for s in STAGES if s not in args.stages]:  # an earlier run's, for one report of them all
        saved = _read_stage(args.out, stage)
        if saved is not None:
            results[stage] = saved
    command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
    results.update(errors=errors, versions=_versions(), seconds=round(time.perf_counter() - began, 1),
                   command=command, provenance=common.provenance(command))
    _write(os.path.join(args.out, "gpu_check.json"), results)
    print(report(args.out, results))
    print(f"\ncard: {results.get('card')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
