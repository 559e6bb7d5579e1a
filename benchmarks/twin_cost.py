"""What the twins cost: state memory against plain Keras, and step time against another commit.

Memory (`--memory`): the state a training run holds — every variable of the
model and of its optimizer, counted exactly from their shapes and dtypes —
for HTA against plain `fit` of the same network, same optimizer (SGD with
momentum), in three cases:

  a. `vgg11/8`: VGG11-BN at width 1/8, every weight trained (the floor is
     2.00: two twins of everything, slots for both);
  b. `frozen-trunk`: MobileNetV2 (alpha 0.35, 32x32) frozen, a new Dense
     head trained;
  c. `lora`: Keras' own LoRA (`Dense.enable_lora(2)`) on a 3 x 512 MLP, a
     new head trained;

with zero anchors and with "init" anchors, on each backend given. The same
cases run through another commit's code (`--against REV`, a `git worktree`)
show what changed.

Step time (`--steps`): HTA's step (and plain's) under this tree's code and
under REV's, in alternating child processes, `--rounds` times; each child
times `--steps` steps after a warm-up, and the median over all rounds is
reported with the ratio new / REV (single runs move such ratios by up to 14%
on this machine; alternating spreads load over both).

Usage:
    python benchmarks/twin_cost.py --memory --backends tensorflow jax torch --against fd7dd58
    python benchmarks/twin_cost.py --steps 20 --rounds 4 --models vgg11/8 --backends tensorflow jax torch --against fd7dd58
Writes benchmarks/results/twin_cost.json and twin_cost.md (each run adds its section).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import common  # noqa: E402  (beside this file)
from common import package_versions  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASES = ("vgg11/8", "frozen-trunk", "lora")
ANCHORS = ("zeros", "init")


def _network(case):
    import keras

    keras.utils.set_random_seed(0)
    if case == "vgg11/8":
        from keras_hta.experiments import models

        return models.get("vgg11", 0.125, 10, (32, 32, 3)), (32, 32, 3)
    if case == "frozen-trunk":
        trunk = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                               weights=None, pooling="avg")
        trunk.trainable = False
        inputs = keras.Input((32, 32, 3))
        return keras.Model(inputs, keras.layers.Dense(10)(trunk(inputs))), (32, 32, 3)
    inputs = keras.Input((512,))
    h, body = inputs, []
    for _ in range(3):
        body.append(keras.layers.Dense(512, activation="relu"))
        h = body[-1](h)
    network = keras.Model(inputs, keras.layers.Dense(10)(h))
    for dense in body:
        dense.enable_lora(2)
    return network, (512,)


def _build(case, variant, anchor):
    import keras

    import keras_hta as hta

    network, shape = _network(case)
    model = network if variant == "plain" else hta.HomotopyModel.from_model(network, anchor=anchor, homotopy_l=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, shape


def _state_bytes(model):
    import numpy as np

    model.optimizer.build(model.trainable_variables)
    variables = {id(v): v for v in list(model.variables) + list(model.optimizer.variables)}
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables.values()))


def memory_rows():
    """Plain and HTA state bytes for every case and anchor, on this process's backend."""
    import keras

    rows = []
    for case in CASES:
        plain = _state_bytes(_build(case, "plain", None)[0])
        for anchor in ANCHORS:
            hta = _state_bytes(_build(case, "hta", anchor)[0])
            rows.append({"case": case, "anchor": anchor, "backend": keras.backend.backend(),
                         "plain_mib": plain / 2**20, "hta_mib": hta / 2**20, "ratio": hta / plain})
    return rows


def _data(shape, batch):
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.normal(size=(batch * 4,) + shape).astype("float32"),
            rng.integers(0, 10, size=batch * 4).astype("int32"))


def step_rows(models, steps, chunks=4):
    """Median step seconds of plain and HTA (full and split batches) for each model.

    The three are built and warmed up (traced) first, then timed in `chunks`
    alternating chunks of `steps / chunks` steps each, so that a change of
    load falls on all three alike.
    """
    import keras
    import numpy as np

    import keras_hta as hta

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step
            self.times.append(time.perf_counter() - self.start)

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for case in models:
        built = {}
        for variant in ("plain", "hta", "hta_split"):
            network, shape = _network(case)
            model = network if variant == "plain" else hta.HomotopyModel.from_model(
                network, homotopy_l=0.5, twin_batch="split" if variant == "hta_split" else "full")
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            x, y = _data(shape, 128)
            model.fit(x, y, batch_size=128, epochs=1, verbose=0)  # warm-up: tracing
            built[variant] = (model, x, y, Timer())
        per_chunk = max(1, steps // chunks)
        for _ in range(chunks):
            for model, x, y, timer in built.values():
                target = len(timer.times) + per_chunk
                while len(timer.times) < target:
                    model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False, callbacks=[timer],
                              steps_per_epoch=min(4, target - len(timer.times)))
        for variant, (_, _, _, timer) in built.items():
            rows.append({"case": case, "variant": variant, "backend": keras.backend.backend(),
                         "median_s": float(np.median(timer.times))})
    return rows


def _child(code_root, backend, argv):
    """Runs this script's `--child` mode under the keras_hta found at `code_root`; returns its rows."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=code_root, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--child", out, *argv], env=env, check=True,
                   cwd=code_root)
    with open(out) as f:
        rows = json.load(f)
    os.remove(out)
    return rows




def _worktree(rev):
    path = tempfile.mkdtemp(prefix="keras_hta_rev_")
    subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=ROOT, check=True, capture_output=True)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", action="store_true", help="count the state memory of every case")
    parser.add_argument("--steps", type=int, default=0, help="time this many steps per child (0: no timing)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of child processes")
    parser.add_argument("--models", nargs="+", default=["vgg11/8"], choices=CASES, help="what --steps times")
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"],
                        choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--against", help="a git revision to run the same cases under")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one backend, one code version: rows to a file
        import keras_hta

        rows = (memory_rows() if args.memory else []) + (step_rows(args.models, args.steps) if args.steps else [])
        for row in rows:
            row["code_path"] = os.path.dirname(os.path.dirname(keras_hta.__file__))
        with open(args.child, "w") as f:
            json.dump(rows, f)
        return
    child_argv = (["--memory"] if args.memory else []) + (
        ["--steps", str(args.steps), "--models", *args.models] if args.steps else [])
    other = _worktree(args.against) if args.against else None
    try:
        command = "python benchmarks/twin_cost.py " + " ".join(sys.argv[1:])
        result = {"command": command, "versions": package_versions(), "python": platform.python_version(),
                  "cpus": os.cpu_count(), "provenance": common.provenance(command), "against": args.against,
                  "memory": [], "steps": []}
        for backend in args.backends:
            print(f"== {backend}", flush=True)
            rounds = args.rounds if args.steps else 1
            for r in range(rounds):
                for code, root in (("this", ROOT), ("against", other)):
                    if root is None or (code == "against" and not args.steps and not args.memory):
                        continue
                    for row in _child(root, backend, child_argv):
                        row.update(code=code, round=r)
                        if "ratio" in row:
                            if r == 0:
                                result["memory"].append(row)
                        else:
                            result["steps"].append(row)
                    print(f"   round {r + 1}/{rounds} {code} done", flush=True)
    finally:
        if other:
            subprocess.run(["git", "worktree", "remove", "--force", other], cwd=ROOT, capture_output=True)
    write(result, args.out)


def _median(values):
    import numpy as np

    return float(np.median(values))


def write(result, out):
    """twin_cost.json (this run's section replaces the one of the same kind) and twin_cost.md."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "twin_cost.json")
    saved = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
    kind = "memory" if result["memory"] else "steps"
    saved[kind] = result
    from keras_hta.experiments import write_atomic

    write_atomic(path, lambda f: json.dump(saved, f, indent=1))
    text = render(saved) + ("\n" + render_memory_summary(saved) if saved.get("memory") else "")
    write_atomic(os.path.join(out, "twin_cost.md"), lambda f: f.write(text))
    print(render(saved))


def render(saved):
    """The Markdown tables of twin_cost.json: what RESULTS.md shows, re-rendered by a test."""
    lines = []
    if saved.get("memory"):
        lines += _memory_table(saved["memory"]) + [""]
    if saved.get("steps"):
        lines += _steps_table(saved["steps"]) + [""]
    return "\n".join(lines)


def _memory_table(memory):
    rows = []
    for row in [r for r in memory["memory"] if r["code"] == "this"]:
        before = [r for r in memory["memory"] if r["code"] == "against" and all(
            r[k] == row[k] for k in ("case", "anchor", "backend"))]
        rows.append([row["case"], row["anchor"], row["backend"], f"{row['plain_mib']:.2f}", f"{row['hta_mib']:.2f}",
                     f"{row['ratio']:.3f}", f"{before[0]['ratio']:.3f}" if before else "-"])
    head = ["case", "anchor", "backend", "plain MiB", "HTA MiB", "HTA / plain", f"HTA / plain at {memory['against'] or '-'}"]
    return [f"State memory, HTA / plain (model and optimizer variables, SGD with momentum); `{memory['command']}`",
            ""] + common.table(head, rows)


def _steps_table(steps):
    rounds = max(r["round"] for r in steps["steps"]) + 1

    def med(case, backend, variant, code, round_=None):
        values = [r["median_s"] for r in steps["steps"] if r["case"] == case and r["backend"] == backend
                  and r["variant"] == variant and r["code"] == code and round_ in (None, r["round"])]
        return _median(values) if values else None

    def per_round(case, backend, variant):
        ratios = [med(case, backend, variant, "this", i) / med(case, backend, variant, "against", i)
                  for i in range(rounds) if med(case, backend, variant, "against", i)]
        return f"{_median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"

    rows = []
    for case, backend in sorted({(r["case"], r["backend"]) for r in steps["steps"]}):
        plain, hta, split = (med(case, backend, v, "this") for v in ("plain", "hta", "hta_split"))
        rows.append([case, backend, f"{plain:.4f}", f"{hta:.4f}", f"{split:.4f}", f"{hta / (2 * plain):.2f}",
                     f"{split / plain:.2f}"] + [per_round(case, backend, v) for v in ("hta", "hta_split", "plain")])
    head = ["model", "backend", "plain", "HTA", "split", "HTA / (2 x plain)", "split / plain", "HTA this / then",
            "split this / then", "plain this / then (no keras-hta code: the noise)"]
    return [f"Step time (s), medians over {rounds} rounds of alternating processes, this tree and "
            f"{steps['against'] or '-'} ({steps['cpus']} CPUs); `{steps['command']}`. The this / then ratios "
            "are the median of each round's ratio (the two processes of a round ran one after the other), "
            "with the rounds' range.", ""] + common.table(head, rows)


CASE_NAMES = {"vgg11/8": "VGG11-BN/8, every weight trained", "frozen-trunk": "MobileNetV2 trunk frozen, new head",
              "lora": "Keras' LoRA (`Dense.enable_lora(2)`) on a 3 x 512 MLP"}


def render_memory_summary(saved):
    """README's table: per case, HTA / plain with zero and "init" anchors, on every backend, and at the commit against."""
    memory = saved["memory"]

    def ratios(case, anchor, code):
        found = [f"{r['ratio']:.3f}" for backend in ("tensorflow", "jax", "torch") for r in memory["memory"]
                 if r["case"] == case and r["anchor"] == anchor and r["code"] == code and r["backend"] == backend]
        return found[0] if len(set(found)) == 1 else " / ".join(found)

    rows = []
    for case in CASES:
        plain = [r["plain_mib"] for r in memory["memory"] if r["case"] == case and r["code"] == "this"][0]
        rows.append([CASE_NAMES[case], f"{plain:.2f}", ratios(case, "zeros", "this"), ratios(case, "init", "this"),
                     f"{ratios(case, 'zeros', 'against')}; {ratios(case, 'init', 'against')}"])
    head = ["network", "plain MiB", "HTA / plain, zero anchors", "HTA / plain, \"init\" anchors",
            f"before ({memory['against']}): zero; \"init\" (TensorFlow / JAX / PyTorch where they differ)"]
    return "\n".join(common.table(head, rows)) + "\n"


if __name__ == "__main__":
    main()
