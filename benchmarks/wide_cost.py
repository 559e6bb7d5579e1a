"""The cost of going wide: bytes all-reduced per step, and 2 processes against 1 on this CPU.

Under `DataParallel` (JAX) and TensorFlow's strategies each step all-reduces
one gradient per trainable variable; for a HomotopyModel that is every twin's
(θ's and η's), with full or split-batch twins alike. The bytes are counted
from the gradients' sizes (`model.trainable_variables`): for the network the
step times are measured on, and for the paper's VGG11-BN on CIFAR-10.

The step times: `examples/multi_process.py` on JAX (a 4-layer MLP, 512 units,
global batch 256) as plain `fit`, HTA with full twins and HTA with
split-batch twins, each in 1 process and in 2 processes on this machine (Gloo
collectives over 127.0.0.1, one CPU device per process), rounds interleaved;
a run's step time is the median of its epochs after the first (tracing)
divided by its steps, and each case reports the median over rounds.

Then a ring all-reduce model, with the bandwidths it assumes stated in the
table, turns the VGG11-BN bytes into communication time per step at 8 GPUs
on one host and at 8 hosts: t = 2 (N − 1) / N · bytes / bandwidth (latency
terms left out). Those times are derived, not measured: no GPU or second host
was used.

Usage: python benchmarks/wide_cost.py [--rounds 3] [--out benchmarks/results/wide_cost.json] [--render-only]
Writes wide_cost.json and wide_cost.md beside it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import common  # noqa: E402  (beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLE = os.path.join(ROOT, "examples", "multi_process.py")
ARMS = {"plain": ["--plain"], "hta": [], "hta_split": ["--twin-batch", "split"]}
SIZE = ["--width", "512", "--hidden", "4", "--learning-rate", "0.01", "--rows", "8192", "--global-batch", "256",
        "--epochs", "4"]
# The ring model's assumed bandwidths (bytes per second each way per link): stated, not measured.
LINKS = {"8 GPUs, one host (NVLink-class, 100 GB/s assumed)": (8, 100e9),
         "8 hosts (100 Gb/s Ethernet, 12.5 GB/s assumed)": (8, 12.5e9)}


def step_seconds(arm, processes, folder):
    """One run of the example; returns (seconds per step, gradient bytes, steps per epoch)."""
    out = os.path.join(folder, f"{arm}-{processes}")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, EXAMPLE, "--local", str(processes), *ARMS[arm], *SIZE, "--out", out],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out + ".process0.json") as f:
        record = json.load(f)
    epochs = record["history"]["seconds"][1:]
    return statistics.median(epochs) / record["steps_per_epoch"], record["gradient_bytes"], record["steps_per_epoch"]


def vgg_gradient_bytes():
    """Gradient bytes per step of the paper's VGG11-BN (CIFAR-10, full width): plain and HomotopyModel."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import numpy as np

    import keras_hta as hta
    from keras_hta.experiments import models

    network = models.get("vgg11", 1.0, 10, (32, 32, 3))
    count = lambda variables: sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    plain = count(network.trainable_variables)
    return {"plain": plain, "hta": count(hta.HomotopyModel.from_model(network).trainable_variables)}


def ring_ms(nbytes, devices, bandwidth):
    """Milliseconds of one ring all-reduce of `nbytes` over `devices` at `bandwidth` bytes/s per link."""
    return 1e3 * 2 * (devices - 1) / devices * nbytes / bandwidth


def render(result):
    """RESULTS' tables, from the JSON."""
    cases = result["cases"]
    rows = []
    for arm in ARMS:
        one, two = cases[f"{arm}-1"], cases[f"{arm}-2"]
        rows.append([arm, f"{one['gradient_bytes']:,}", f"{one['gradient_bytes'] / cases['plain-1']['gradient_bytes']:.2f}",
                     f"{1e3 * one['step_s']:.1f}", f"{1e3 * two['step_s']:.1f}", f"{two['step_s'] / one['step_s']:.2f}"])
    lines = common.table(["arm", "gradient bytes per step", "× plain", "step, 1 process (ms)", "step, 2 processes (ms)",
                          "2 processes / 1"], rows)
    vgg = result["vgg11_bn"]
    rows = [[link, f"{ring_ms(vgg['plain'], devices, bandwidth):.2f}", f"{ring_ms(vgg['hta'], devices, bandwidth):.2f}"]
            for link, (devices, bandwidth) in result["links"].items()]
    lines += [""] + common.table(["ring all-reduce of VGG11-BN's gradients (derived)", "plain (ms)",
                                  "HTA, full or split twins (ms)"], rows) + [""]
    lines.append(f"VGG11-BN (CIFAR-10): {vgg['plain']:,} bytes of gradients per step plain, {vgg['hta']:,} with HTA "
                 f"({vgg['hta'] / vgg['plain']:.2f}×).")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "wide_cost.json"))
    parser.add_argument("--render-only", action="store_true", help="only render the tables from the JSON")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not args.render_only:
        from keras_hta.experiments import provenance

        times = {f"{arm}-{n}": [] for arm in ARMS for n in (1, 2)}
        cases = {}
        with tempfile.TemporaryDirectory() as folder:
            for r in range(args.rounds):
                for key in times:
                    arm, n = key.rsplit("-", 1)
                    print(f"round {r + 1}/{args.rounds}: {arm}, {n} process(es) ...", flush=True)
                    seconds, nbytes, steps = step_seconds(arm, int(n), folder)
                    times[key].append(seconds)
                    cases[key] = {"gradient_bytes": nbytes, "steps_per_epoch": steps}
        for key, case in cases.items():
            case["step_s"] = statistics.median(times[key])
            case["step_s_rounds"] = times[key]
        result = {"cases": cases, "vgg11_bn": vgg_gradient_bytes(), "links": LINKS, "example_args": SIZE,
                  "provenance": provenance.record()}
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)
    with open(args.out) as f:
        result = json.load(f)
    table = render(result)
    from keras_hta.experiments import write_atomic

    write_atomic(os.path.splitext(args.out)[0] + ".md", lambda f: f.write(table))
    print(table)


if __name__ == "__main__":
    main()
