"""Where PyTorch's HTA step spends its time, and what a fused twin pass would save.

On PyTorch, HTA's step is above issue #33's targets (HTA / (2 x plain) <= 1.0,
`twin_batch="split"` / plain <= 1.05) where TensorFlow and JAX are below them.
This script splits the step into its parts on one network (default VGG11-BN
at width 1/8, batch 128, SGD with momentum, random data), in one process,
every measurement repeated in interleaved rounds and reported as the median:

- the training steps of `benchmarks/step_time.py`'s variants: plain `fit`,
  plain on half batches, HTA (full twins, proximal update) and HTA with
  `twin_batch="split"` (the time between `on_train_batch_begin` and `_end`);
- one forward pass of the network in training mode, outside autograd, on 2,
  half and all examples of a batch: the pass on 2 examples is what Keras'
  layer calls cost in Python whatever the batch (no convolution on 2
  examples costs much), and it is paid once per twin;
- what keras-hta adds to Keras' step: `HomotopyModel.penalties()` (H's
  penalties, evaluated every step for the logs) and the proximal update;
- both twins' forward and backward pass (loss of each twin, the gradient of
  their sum) one after the other, against the same in one fused pass,
  `torch.func.vmap` over the twins' stacked weights (and, split, their
  stacked half batches; full twins share the batch, passed unbatched). PyTorch's vmap cannot run Keras' conversion of a
  convolution's input to channels-last memory (it may not query that memory
  format), so for this measurement only that conversion is replaced by the
  identity (a private Keras function, patched here and restored after; the
  results are checked equal to the sequential pass's).

Usage: KERAS_BACKEND=torch python benchmarks/torch_profile.py [--model vgg11/8] [--rounds 7] [--steps 10]
       python benchmarks/torch_profile.py --render-only
Writes benchmarks/results/torch_profile.json and torch_profile.md.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time


import common  # noqa: E402  (beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "torch_profile.json")
STEPS = ("plain", "plain_half", "hta", "hta_split")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg11/8", choices=sorted(common.MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="timed repeats of each part per round")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--render-only", action="store_true", help="render --out's JSON to Markdown, measure nothing")
    args = parser.parse_args(argv)
    for flag, value in (("--rounds", args.rounds), ("--steps", args.steps)):
        if value < 1:
            parser.error(f"argument {flag}: must be at least 1. Received: {flag} {value}")
    if not args.render_only and os.environ["KERAS_BACKEND"] != "torch":
        parser.error(f"this script measures the PyTorch backend. Received: KERAS_BACKEND={os.environ['KERAS_BACKEND']}")
    return args


class TwinPasses:
    """Both twins' loss and gradient on one batch: one after the other, or fused in one `torch.func.vmap` pass."""

    def __init__(self, model, x, y, split):
        import keras
        import torch

        self.network = model.network
        self.trainable = self.network.trainable_variables
        self.state = self.network.non_trainable_variables
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        twins = [model.twin(k).trainable_weights for k in range(2)]
        self.weights = [torch.stack([v.value.detach() for v in vs]) for vs in zip(*twins)]
        self.stats = [torch.stack([v.value.detach()] * 2) for v in self.state]
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        # Each twin's batch: its half (split), or the one batch every twin sees, passed to vmap unbatched.
        self.batches = [(x[k::2], y[k::2]) for k in range(2)] if split else [(x, y)] * 2
        data = (torch.stack([x[0::2], x[1::2]]), torch.stack([y[0::2], y[1::2]])) if split else (x, y)
        self.fused_call = lambda weights: torch.func.vmap(self._one, in_dims=(0, 0) + (0 if split else None,) * 2)(
            weights, self.stats, *data)

    def _one(self, weights, stats, x, y):
        import keras

        with keras.StatelessScope(state_mapping=list(zip(self.trainable, weights)) + list(zip(self.state, stats))):
            return self.loss(y, self.network(x, training=True))

    def sequential(self):
        """Each twin's forward pass, then one backward pass of their summed loss; the losses and gradients."""
        weights = [w.detach().requires_grad_() for w in self.weights]
        losses = [self._one([w[k] for w in weights], [s[k] for s in self.stats], *self.batches[k]) for k in range(2)]
        (losses[0] + losses[1]).backward()
        return [float(v.detach()) for v in losses], [w.grad for w in weights]

    def fused(self):
        """Both twins in one vmapped forward pass, then one backward pass; the losses and gradients."""
        weights = [w.detach().requires_grad_() for w in self.weights]
        losses = self.fused_call(weights)
        losses.sum().backward()
        return [float(v.detach()) for v in losses], [w.grad for w in weights]


def measure(model_name, rounds, steps):
    """Every part's median time (s) over `rounds` interleaved rounds of `steps` repeats each."""
    import keras
    import numpy as np
    import torch

    from keras_hta.compat import channels_last_conversion_off

    torch.set_num_threads(os.cpu_count() or 1)  # as step_time.py runs PyTorch
    _, shape, batch = common.MODELS[model_name]
    models = {v: common.build(model_name, v) for v in STEPS}
    data = {v: common.dataset(model_name, steps, half=v == "plain_half") for v in STEPS}
    timers = {v: common.StepTimes() for v in STEPS}
    for v in STEPS:
        models[v].fit(data[v], steps_per_epoch=3, epochs=1, verbose=0)  # warm-up
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + shape).astype("float32")
    y = rng.integers(0, 10, size=batch).astype("int32")
    hta = models["hta"]
    network = models["plain"]
    gamma = keras.ops.convert_to_tensor(0.01)
    passes = {"full": TwinPasses(hta, x, y, split=False), "split": TwinPasses(hta, x, y, split=True)}
    with channels_last_conversion_off():  # the fused pass equals the sequential one: same losses and gradients
        for name, twin_passes in passes.items():
            (ls, gs), (lf, gf) = twin_passes.sequential(), twin_passes.fused()
            error = max(float((a - b).abs().max() / (a.abs().max() + 1e-12)) for a, b in zip(gs, gf))
            if not np.allclose(ls, lf, rtol=1e-4) or error > 1e-3:
                raise RuntimeError(f"fused pass ({name}) differs from the sequential one: losses {lf} vs {ls}, "
                                   f"largest relative gradient difference {error:.2g}")

    def forward(rows):
        tensor = torch.as_tensor(x[:rows])
        with torch.no_grad():
            network(tensor, training=True)

    def penalties():
        with torch.no_grad():
            hta.penalties()

    parts = {
        "forward_2": lambda: forward(2), "forward_half": lambda: forward(batch // 2),
        "forward_full": lambda: forward(batch),
        "penalties": penalties, "proximal": lambda: hta.proximal_step(gamma),
        "twins_sequential": passes["full"].sequential, "twins_sequential_unconverted": passes["full"].sequential,
        "twins_fused": passes["full"].fused,
        "split_sequential": passes["split"].sequential, "split_sequential_unconverted": passes["split"].sequential,
        "split_fused": passes["split"].fused,
    }
    times = {name: [] for name in list(STEPS) + list(parts)}  # per round: the median of its repeats
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        for v in STEPS:  # alternating, so load changes hit every part alike
            timers[v].times = []
            models[v].fit(data[v], steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timers[v].callback])
            times[v].append(statistics.median(timers[v].times))
        for name, part in parts.items():
            unconverted = name.endswith(("_fused", "_unconverted"))
            with channels_last_conversion_off() if unconverted else contextlib.nullcontext():
                part()  # not timed: a first call after another part
                repeats = []
                for _ in range(steps):
                    start = time.perf_counter()
                    part()
                    repeats.append(time.perf_counter() - start)
                times[name].append(statistics.median(repeats))
    return times, batch


RATIOS = {  # name: (numerator parts, denominator parts): a ratio of sums of per-round medians
    "hta_over_2plain": (("hta",), ("plain", "plain")),
    "split_over_plain": (("hta_split",), ("plain",)),
    "split_floor": (("plain_half", "plain_half"), ("plain",)),
    "hta_added_share": (("penalties", "proximal"), ("hta",)),
    "fixed_share_plain": (("forward_2",), ("plain",)),
    "unconverted_over_sequential": (("twins_sequential_unconverted",), ("twins_sequential",)),
    "fused_over_sequential": (("twins_fused",), ("twins_sequential",)),
    "fused_over_unconverted": (("twins_fused",), ("twins_sequential_unconverted",)),
    "split_unconverted_over_sequential": (("split_sequential_unconverted",), ("split_sequential",)),
    "split_fused_over_sequential": (("split_fused",), ("split_sequential",)),
    "split_fused_over_unconverted": (("split_fused",), ("split_sequential_unconverted",)),
}


def derived(times):
    """Each ratio taken within each round, then its median over rounds and the rounds' range."""
    out = {}
    for name, (top, bottom) in RATIOS.items():
        per_round = [sum(times[k][r] for k in top) / sum(times[k][r] for k in bottom)
                     for r in range(len(times["plain"]))]
        out[name] = {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}
    return out


def render(saved):
    """The Markdown table of torch_profile.json (RESULTS §4 shows it; a test re-renders it)."""
    s = {name: statistics.median(values) for name, values in saved["seconds"].items()}
    ratios = saved["derived"]
    ms = lambda key: f"{1000 * s[key]:.1f}"  # noqa: E731

    def fmt(name, digits=2):  # the median over rounds, with the rounds' range
        r = ratios[name]
        return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}-{r['max']:.{digits}f})"

    p = saved["provenance"]
    lines = [
        f"PyTorch step of {saved['model']} (batch {saved['batch']}), medians over {saved['rounds']} interleaved "
        f"rounds of {saved['steps']} repeats, ratios taken per round (median, range); "
        f"PyTorch {p['versions'].get('torch', '?')}, Keras "
        f"{p['versions'].get('keras', '?')}, {p['cpus']['usable']} CPUs; `{p['command']}`",
        "",
    ] + common.table(["part", "ms", "ratio"], [
        ["plain step", ms("plain"), "1"],
        ["HTA step (full twins)", ms("hta"), f"HTA / (2 x plain) {fmt('hta_over_2plain')}"],
        ["HTA step, `twin_batch=\"split\"`", ms("hta_split"), f"split / plain {fmt('split_over_plain')}"],
        ["plain step on half a batch", ms("plain_half"), f"2 x half / plain {fmt('split_floor')}"],
        [f"forward pass, {saved['batch']} examples", ms("forward_full"), ""],
        [f"forward pass, {saved['batch'] // 2} examples", ms("forward_half"), ""],
        ["forward pass, 2 examples (Keras' per-call cost)", ms("forward_2"),
         f"/ plain step {fmt('fixed_share_plain')}"],
        ["`penalties()` (the logs) + proximal update", f"{ms('penalties')} + {ms('proximal')}",
         f"/ HTA step {fmt('hta_added_share', 3)}"],
    ]) + [""] + common.table(
        ["both twins' forward + backward", "full twins, ms", "/ as run", "/ conversion off", "split twins, ms",
         "/ as run", "/ conversion off"], [
            ["one after the other (as keras-hta runs them)", ms("twins_sequential"), "1", "",
             ms("split_sequential"), "1", ""],
            ["one after the other, channels-last conversion off", ms("twins_sequential_unconverted"),
             fmt("unconverted_over_sequential"), "1", ms("split_sequential_unconverted"),
             fmt("split_unconverted_over_sequential"), "1"],
            ["fused (`torch.func.vmap`), conversion off", ms("twins_fused"), fmt("fused_over_sequential"),
             fmt("fused_over_unconverted"), ms("split_fused"), fmt("split_fused_over_sequential"),
             fmt("split_fused_over_unconverted")],
        ])
    return "\n".join(lines) + "\n"


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "torch")  # this script's backend, set when it runs (not when imported)
    args = parse_args(argv)
    if args.render_only:
        with open(args.out) as f:
            print(render(json.load(f)), end="")
        return
    from keras_hta.experiments import provenance, write_atomic

    seconds, batch = measure(args.model, args.rounds, args.steps)
    command = "KERAS_BACKEND=torch python benchmarks/torch_profile.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    saved = {"model": args.model, "batch": batch, "rounds": args.rounds, "steps": args.steps,
             "seconds": seconds, "derived": derived(seconds), "provenance": provenance.record(command.strip())}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_atomic(args.out, lambda f: json.dump(saved, f, indent=1))
    table = render(saved)
    write_atomic(os.path.splitext(args.out)[0] + ".md", lambda f: f.write(table))
    print(table, end="")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up lines, unless the user chose a level
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("torch_profile: interrupted; nothing written")
