"""Does the main job's result depend on the machine? `keras-hta compare` (the default run) in three environments.

Runs the default `keras-hta compare` with `--threads 1` (its default: fixed
thread pools, deterministic kernels, oneDNN's reordering off) and with
`--threads 0` (TensorFlow's own defaults), each on every CPU of an idle
machine, pinned to one CPU (`taskset -c 0`) and with every CPU kept busy by
other processes (one busy loop per CPU), one folder per case under
`benchmarks/results/main-job-env/`. (Another CPU's instruction set is not
among them: with `--threads 1` TensorFlow's determinism is on, under which
Keras does not compile the step with XLA, so capping XLA's code
(`XLA_FLAGS=--xla_cpu_max_isa=AVX2`) changes no kernel: every run came out
identical, checked with that variable on this AVX-512 machine.)
Then renders, from those results.json files, the test errors of each case and
whether every run (validation curve, test error, training loss) is identical
to the idle run with the same `--threads`.

Usage: python benchmarks/main_job_env.py [--out benchmarks/results/main-job-env] [--environments ...] [--render-only]
Writes main-job-env/<threads>-<environment>/results.json (and results.md) and main-job-env/table.md.
"""

import argparse
import json
import os
import subprocess
import sys

import common  # noqa: E402  (beside this file)

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = (1, 0)
ENVIRONMENTS = ("idle", "one-cpu", "loaded")


def _busy():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_case(out, threads, environment):
    """One default `keras-hta compare` into `out/<threads>-<environment>`."""
    folder = os.path.join(out, f"threads{threads}-{environment}")
    command = [sys.executable, "-m", "keras_hta.experiments.cli", "compare", "--threads", str(threads),
               "--verbose", "0", "--out", folder]
    if environment == "one-cpu":
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] + command
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    for name in common.thread_env() + ("XLA_FLAGS",):
        env.pop(name, None)  # what --threads sets, and nothing from the caller's environment
    load = [_busy() for _ in range(os.cpu_count() or 1)] if environment == "loaded" else []
    try:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        for p in load:
            p.kill()
            p.wait()


def _runs(out, threads, environment):
    with open(os.path.join(out, f"threads{threads}-{environment}", "results.json")) as f:
        return sorted(json.load(f)["runs"], key=lambda r: (r["seed"], r["arm"]))


def render(out):
    """The table of the cases found under `out`, from their results.json."""
    head = ["--threads", "environment", "SGD test error", "HTA test error", "HTA − SGD (points)",
            "every run identical to the idle one", "seconds trained (sum of the runs)"]
    rows = []
    for threads in THREADS:
        if not os.path.exists(os.path.join(out, f"threads{threads}-idle", "results.json")):
            continue
        idle = _runs(out, threads, "idle")
        for environment in ENVIRONMENTS:
            if not os.path.exists(os.path.join(out, f"threads{threads}-{environment}", "results.json")):
                continue
            runs = _runs(out, threads, environment)
            error = {arm: sum(r["test_error"] for r in runs if r["arm"] == arm) / sum(r["arm"] == arm for r in runs)
                     for arm in ("sgd", "hta")}
            same = all(a[k] == b[k] for a, b in zip(runs, idle) for k in ("val_error", "test_error", "train_loss"))
            rows.append([str(threads), environment, f"{error['sgd']:.2f}%", f"{error['hta']:.2f}%",
                         f"{error['hta'] - error['sgd']:+.2f}", "yes" if same else "no",
                         f"{sum(r['seconds'] for r in runs):.1f}"])
    return "\n".join(common.table(head, rows)) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "main-job-env"))
    parser.add_argument("--environments", nargs="+", choices=ENVIRONMENTS, default=list(ENVIRONMENTS),
                        help="the environments to run (the others' results are rendered as found)")
    parser.add_argument("--render-only", action="store_true", help="only render the table from existing results")
    args = parser.parse_args()
    if not args.render_only:
        if not hasattr(os, "sched_getaffinity"):
            raise SystemExit("main_job_env.py: needs Linux's sched_getaffinity and taskset to pin to one CPU")
        for threads in THREADS:
            for environment in args.environments:
                print(f"--threads {threads}, {environment} ...", flush=True)
                run_case(args.out, threads, environment)
    table = render(args.out)
    from keras_hta.experiments import write_atomic

    write_atomic(os.path.join(args.out, "table.md"), lambda f: f.write(table))
    print(table)


if __name__ == "__main__":
    main()
