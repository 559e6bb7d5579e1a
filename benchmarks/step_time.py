"""What HTA costs: step time and memory of HomotopyModel against plain fit.

For each model, in one process: plain `fit`, HTA (both twins see the whole
batch; the default proximal penalty update), HTA with the explicit gradient
step on the penalties (`penalty_update="gradient"`: what the proximal update
adds is `hta / hta_gradient`) and HTA with `twin_batch="split"`, same network, batch, optimizer
(SGD, momentum 0.9) and data; after a warm-up call (tracing) each variant runs
`--steps` steps per round, rounds alternating between variants, and the
median step time over all rounds is reported. Peak memory (resident set size)
is measured for each variant in a fresh process; the state memory (weights,
twins, anchors, masks and optimizer slots) is counted exactly.

Runs on the backend Keras is set to, or with `--backends tensorflow jax torch`
on each of them in turn (a child process per backend, the same models, in one
run), side by side with the fastest backend per model named.

Usage: python benchmarks/step_time.py [--models vgg11/8 vgg11/4 cnn1d] [--rounds 5] [--steps 20]
                                      [--backends tensorflow jax torch]
Writes benchmarks/results/step_time.json, step_time.md and step_time.png.
"""

import argparse
import json
import os
import subprocess
import sys


import numpy as np  # noqa: E402

import common  # noqa: E402  (beside this file)
from common import MODELS, StepTimes, build, dataset, package_versions, table  # noqa: E402,F401

HERE = os.path.dirname(os.path.abspath(__file__))
# plain_half: plain fit on half batches; hta_gradient: the explicit penalty step.
VARIANTS = ("plain", "hta", "hta_split", "plain_half", "hta_gradient")
PEAK_VARIANTS = ("plain", "hta", "hta_split")
def device_name():
    """The accelerator's name, or the CPU with its core count."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get(
                "device_name", "GPU")
    elif backend == "jax":
        import jax

        if jax.devices()[0].platform != "cpu":
            return jax.devices()[0].device_kind
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def state_bytes(model):
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in list(model.weights) + list(model.optimizer.variables)))


def time_models(model_name, rounds, steps):
    data = {v: dataset(model_name, steps, half=v == "plain_half") for v in VARIANTS}
    models, timers = {}, {}
    for variant in VARIANTS:
        models[variant] = build(model_name, variant)
        models[variant].fit(data[variant], steps_per_epoch=3, epochs=1, verbose=0)  # warm-up: tracing
        timers[variant] = StepTimes()
    for _ in range(rounds):
        for variant in VARIANTS:  # alternating, so load changes hit every variant alike
            models[variant].fit(data[variant], steps_per_epoch=steps, epochs=1, verbose=0,
                                callbacks=[timers[variant].callback])
    return {v: {"median_s": float(np.median(timers[v].times)), "steps": len(timers[v].times),
                "state_bytes": state_bytes(models[v])} for v in VARIANTS}


def peak_rss(model_name, variant, steps):
    """Peak resident memory (MiB) of a fresh process training `steps` steps.

    Read from VmHWM in /proc/self/status: ru_maxrss would carry over the
    parent's high-water mark through fork and exec on Linux.
    """
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import step_time as s; "
            f"m = s.build({model_name!r}, {variant!r}); m.fit(s.dataset({model_name!r}, {steps}), "
            f"steps_per_epoch={steps}, epochs=1, verbose=0); "
            "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vgg11/8", "vgg11/4", "cnn1d"], choices=sorted(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory processes")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--backends", nargs="+", choices=["tensorflow", "jax", "torch"],
                        help="run on each backend in turn (default: the one Keras is set to)")
    parser.add_argument("--rows-json", help=argparse.SUPPRESS)  # internal: one backend's rows, to this file
    args = parser.parse_args()
    if args.backends:
        rows = []
        for backend in args.backends:
            print(f"== {backend}", flush=True)
            path = os.path.join(args.out, f".step_time_{backend}.json")
            os.makedirs(args.out, exist_ok=True)
            argv = [a for a in sys.argv[1:]]
            i = argv.index("--backends")
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            argv = argv[:i] + argv[j:]
            env = dict(os.environ, KERAS_BACKEND=backend)
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--rows-json", path], env=env, check=True)
            with open(path) as f:
                rows += json.load(f)
            os.remove(path)
        return write_report(rows, args.out)
    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)  # PyTorch's step times are erratic otherwise
    device = device_name()
    rows = []
    for name in args.models:
        print(f"timing {name} ...", flush=True)
        r = time_models(name, args.rounds, args.steps)
        row = {"model": name, "backend": keras.backend.backend(), "device": device,
               **{f"{v}_s": r[v]["median_s"] for v in VARIANTS},
               **{f"{v}_state_mib": r[v]["state_bytes"] / 2**20 for v in VARIANTS}}
        row["hta_over_plain"] = row["hta_s"] / row["plain_s"]
        row["hta_over_2plain"] = row["hta_s"] / (2 * row["plain_s"])
        row["proximal_over_gradient"] = row["hta_s"] / row["hta_gradient_s"]
        row["state_ratio"] = row["hta_state_mib"] / row["plain_state_mib"]
        row["split_over_plain"] = row["hta_split_s"] / row["plain_s"]
        # Two plain networks on half batches: what any split step costs at least.
        row["split_floor"] = 2 * row["plain_half_s"] / row["plain_s"]
        if not args.no_memory:
            for v in PEAK_VARIANTS:
                row[f"{v}_peak_mib"] = peak_rss(name, v, 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.rows_json:
        with open(args.rows_json, "w") as f:
            json.dump(rows, f)
        return None
    return write_report(rows, args.out)


def render(rows):
    """The Markdown table of step_time.json's rows (backends side by side, the fastest per model named).

    What benchmarks/RESULTS.md §4 shows; a test re-renders it from the committed JSON.
    """
    head = ["model", "backend", "device", "plain s/step", "HTA s/step", "HTA split s/step", "HTA / plain",
            "HTA / (2 x plain)", "split / plain", "2 x plain(half batch) / plain", "proximal / gradient HTA",
            "state MiB plain / HTA", "state HTA / plain", "peak RSS MiB plain / HTA / split"]
    cells = []
    for r in rows:
        peak = " / ".join(f"{r[f'{v}_peak_mib']:.0f}" for v in PEAK_VARIANTS) if "plain_peak_mib" in r else "-"
        cells.append([r["model"], r.get("backend", "tensorflow"), r["device"], f"{r['plain_s']:.4f}",
                      f"{r['hta_s']:.4f}", f"{r['hta_split_s']:.4f}", f"{r['hta_over_plain']:.2f}",
                      f"{r['hta_over_2plain']:.2f}", f"{r['split_over_plain']:.2f}", f"{r['split_floor']:.2f}",
                      f"{r['proximal_over_gradient']:.3f}", f"{r['plain_state_mib']:.2f} / {r['hta_state_mib']:.2f}",
                      f"{r['state_ratio']:.3f}", peak])
    lines = table(head, cells)
    backends = sorted({r.get("backend", "tensorflow") for r in rows})
    if len(backends) > 1:
        lines.append("")
        for name in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == name]
            best = min(mine, key=lambda r: r["hta_s"])
            lines.append(f"Fastest HTA step for {name}: {best['backend']} ({best['hta_s']:.4f} s; "
                         + ", ".join(f"{r['backend']} {r['hta_s'] / best['hta_s']:.2f}x" for r in mine if r is not best)
                         + ")")
    return "\n".join(lines) + "\n"


def write_report(rows, out):
    """step_time.json (with the versions and threads that produced it), step_time.md and step_time.png."""
    import platform

    os.makedirs(out, exist_ok=True)
    versions = package_versions()
    from keras_hta.experiments import write_atomic

    command = "python benchmarks/step_time.py " + " ".join(sys.argv[1:])
    saved = {"command": command, "versions": versions, "python": platform.python_version(), "cpus": os.cpu_count(),
             "provenance": common.provenance(command), "rows": rows}
    write_atomic(os.path.join(out, "step_time.json"), lambda f: json.dump(saved, f, indent=1))
    backends = sorted({r.get("backend", "tensorflow") for r in rows})
    rendered = render(rows)
    device = rows[0]["device"] if rows else "?"
    write_atomic(os.path.join(out, "step_time.md"), lambda f: f.write(rendered))
    from keras_hta.experiments.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [r["model"] + (f"\n{r['backend']}" if len(backends) > 1 else "") for r in rows]
    ax.bar(np.arange(len(rows)) - 0.2, [r["hta_over_2plain"] for r in rows], 0.4, label="HTA / (2 x plain)")
    ax.bar(np.arange(len(rows)) + 0.2, [r["split_over_plain"] for r in rows], 0.4, label="HTA split / plain")
    ax.axhline(1.05, color="C0", ls="--", lw=1)
    ax.axhline(1.15, color="C1", ls="--", lw=1)
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylabel("step-time ratio")
    ax.set_title(f"HTA step-time ratios ({device})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "step_time.png"), dpi=120)
    print(rendered)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up lines, unless the user chose a level
    main()
