"""The `keras-hta` command line: `nonconvex`, `compare`, `tune`, `export`.

Parsing imports nothing heavy: each subcommand imports TensorFlow, SciPy or
keras-tuner when it runs, so `keras-hta --help` answers at once.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time


def _anchor(text):
    if text in ("zeros", "init"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"anchor must be 'zeros', 'init' or a finite number, got {text!r}")
    return value


def _nonconvex_parser(sub):
    p = sub.add_parser(
        "nonconvex",
        help="Table 1: global minima found by BFGS and by the homotopy quasi-Newton method",
        description="The paper's non-convex benchmark (eq. 33, Table 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n", type=int, nargs="+", default=[2, 4, 6], help="dimensions")
    p.add_argument("--anchors", type=_anchor, nargs="+", default=["zeros", "init"],
                   help="homotopy anchors: zeros, init or a number c (anchor c*1)")
    p.add_argument("--grid", type=float, nargs="+", help="start grid per coordinate (when not given: the paper's)")
    p.add_argument("--L-start", type=float, default=0.9, help="the first L")
    p.add_argument("--L-stop", type=float, default=0.1, help="the last L")
    p.add_argument("--L-step", type=float, default=-0.1, help="the change of L between values")
    p.add_argument("--workers", type=int, default=None, help="processes (when not given: all CPUs)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="draw Figure 1 (n=2, with solver paths) to this PNG file")
    p.set_defaults(func=run_nonconvex)


def _run_arms(nonconvex, starts, arms, schedule, workers, bar, row):
    done, shown = 0, [0]

    def progress(k, base):
        shown[0] = base + k
        bar.update(shown[0])

    for method, anchor, start in arms:
        t = time.perf_counter()
        ok = nonconvex.count_global_minima(
            starts, method, schedule, anchor, workers=workers,
            progress=lambda k, base=done: progress(k, base), start=start,
        )
        done += len(starts)
        key = nonconvex.arm_key(method, anchor, start)
        row[key] = int(ok.sum())
        row[f"{key}_seconds"] = round(time.perf_counter() - t, 2)
    if shown[0] < done:  # reaching the total has already printed the bar's last line
        bar.update(done, finalize=True)


def _check_output_file(path, flag):
    """Raises a ValueError naming `flag` unless `path` is a file that can be written (before any computation)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"Argument `{flag}` is a folder; it names a file. Received: {flag} {path}")
    if not os.path.isdir(folder):
        raise ValueError(f"Argument `{flag}` is in a folder that does not exist ({folder}). Received: {flag} {path}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"Argument `{flag}` cannot be written: {folder} is read-only. Received: {flag} {path}")


def _check_nonconvex_flags(args):
    """Raises, naming the flag, for what `nonconvex` cannot run; before any start is solved."""
    from keras_hta.experiments.compare import l_schedule

    l_schedule({"L_start": args.L_start, "L_stop": args.L_stop, "L_step": args.L_step}, build=False)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"Argument `--workers` must be >= 1. Received: --workers {args.workers}")
    if any(n < 1 for n in args.n):
        raise ValueError(f"Argument `--n` must be >= 1. Received: --n {' '.join(map(str, args.n))}")
    from keras_hta.experiments.nonconvex import PAPER_TABLE1

    if args.grid is None and any(n not in PAPER_TABLE1 for n in args.n):
        raise ValueError(f"Argument `--n`: the paper gives start grids for n = {', '.join(map(str, PAPER_TABLE1))} "
                         f"only; pass --grid for the others. Received: --n {' '.join(map(str, args.n))}")
    if args.grid is not None and not all(math.isfinite(g) for g in args.grid):
        raise ValueError(f"Argument `--grid` must be finite numbers. Received: --grid {' '.join(map(str, args.grid))}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            _check_output_file(path, flag)


def run_nonconvex(args):
    from keras_hta.experiments.compare import l_schedule

    _check_nonconvex_flags(args)
    schedule = l_schedule({"L_start": args.L_start, "L_stop": args.L_stop, "L_step": args.L_step})
    import keras

    from keras_hta.experiments import nonconvex
    rows = []
    for n in args.n:
        starts = nonconvex.paper_starts(n, args.grid)
        row = {"n": n, "starts": len(starts), "grid": sorted(set(starts[:, 0].tolist()))}
        arms = nonconvex.arms(args.anchors)
        # A bar on a terminal; in a log file, one line at the end (no escape codes).
        bar = keras.utils.Progbar(len(starts) * len(arms), stateful_metrics=None, verbose=1 if sys.stderr.isatty() else 2)
        print(f"n={n}: {len(starts)} starts x {len(arms)} solvers", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # progress on stderr, table on stdout
            _run_arms(nonconvex, starts, arms, schedule, args.workers, bar, row)
        paper = nonconvex.PAPER_TABLE1.get(n) if args.grid is None else None
        row["paper_bfgs"] = paper["bfgs"] if paper else None
        row["paper_homotopy"] = paper["homotopy"] if paper else None
        rows.append(row)

    from keras_hta.experiments.provenance import record

    result = {"schedule": schedule.get_config(), "anchors": [str(a) for a in args.anchors], "rows": rows,
              "provenance": record(getattr(args, "command_line", None))}
    print("\n" + nonconvex.render_table1(result), end="")
    walls = ", ".join(f"n={r['n']} {sum(v for k, v in r.items() if k.endswith('_seconds')):.1f} s" for r in rows)
    print(f"\nsuccess: ||x - 1||_inf < {nonconvex.SUCCESS_TOL}; L schedule {schedule}; wall time {walls}")
    if args.json:
        from keras_hta.experiments import write_atomic

        write_atomic(args.json, lambda f: json.dump(result, f, indent=2))
    if args.plot:
        from keras_hta.experiments.plots import plot_nonconvex

        print("wrote", plot_nonconvex(args.plot, schedule=schedule, anchor=args.anchors[0]))
    return rows


def _export_parser(sub):
    p = sub.add_parser(
        "export",
        help="export a saved HomotopyModel (.keras) as a TF SavedModel for serving",
        description="Merge a saved HomotopyModel and write a TF SavedModel with a `serve` endpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .keras file saved from a HomotopyModel")
    p.add_argument("path", help="the SavedModel directory to write")
    p.add_argument("--how", default="theta", help="theta, eta, average, or a twin index")
    p.add_argument("--overwrite", action="store_true", help="replace `path` if it is a folder that holds files")
    p.set_defaults(func=run_export)


def _saved_twins(checkpoint):
    """The number of twins of the HomotopyModel in a .keras archive, read from its config.json; None if not one."""
    import zipfile

    try:
        with zipfile.ZipFile(checkpoint) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not isinstance(config, dict) or config.get("class_name") != "HomotopyModel":
        return None
    return int((config.get("config") or {}).get("num_groups", 2))


def _load(checkpoint):
    """`keras.models.load_model` without the optimizer (exporting needs none), its failures in one line."""
    import re

    import keras

    try:
        return keras.models.load_model(checkpoint, compile=False)
    except (TypeError, ValueError) as error:
        text = " ".join(str(error).split())
        unknown = re.search(r"[Cc]ould not locate (?:class|function) '([^']+)'", text)
        if unknown:
            raise ValueError(
                f"Argument `checkpoint` names '{unknown.group(1)}', which Keras does not know here: it is defined in "
                "your code. Load and export it from Python after importing that code: "
                "keras_hta.export_saved_model(keras.models.load_model(path, custom_objects=...), folder). "
                f"Received: {checkpoint!r}") from None
        raise ValueError(f"Argument `checkpoint` could not be loaded: {text[:300]}. Received: {checkpoint!r}") from None


def run_export(args):
    import zipfile

    if not os.path.exists(args.checkpoint):
        raise ValueError(f"Argument `checkpoint` does not exist. Received: {args.checkpoint!r}")
    if not zipfile.is_zipfile(args.checkpoint):
        raise ValueError(f"Argument `checkpoint` is not a Keras archive (a .keras file saved by model.save). "
                         f"Received: {args.checkpoint!r}")
    twins = _saved_twins(args.checkpoint)
    if args.how.isdigit() and twins is not None and int(args.how) >= twins:
        raise ValueError(f"Argument `--how` must be theta, eta, average or a twin index below {twins} (the "
                         f"model's twins). Received: --how {args.how}")
    if not args.how.isdigit() and args.how not in ("theta", "eta", "average"):
        raise ValueError(f"Argument `--how` must be theta, eta, average or a twin index. Received: --how {args.how}")
    if os.path.exists(args.path) and not os.path.isdir(args.path):
        raise ValueError(f"Argument `path` is a file; the SavedModel is a folder. Received: {args.path!r}")
    if os.path.isdir(args.path) and os.listdir(args.path) and not args.overwrite:
        raise ValueError(f"Argument `path` is a folder that holds files; pass --overwrite to replace it. "
                         f"Received: {args.path!r}")
    import keras_hta
    from keras_hta.export import export_problem
    from keras_hta.homotopy_model import HomotopyModel  # registers the class before Keras looks it up

    problem = export_problem("keras-hta export", "tf_saved_model")  # before the model is loaded
    if problem is not None:
        raise problem
    model = _load(args.checkpoint)
    if not isinstance(model, HomotopyModel):
        raise TypeError(f"Argument `checkpoint` must hold a HomotopyModel. Received: a {type(model).__name__}")
    how = int(args.how) if args.how.isdigit() else args.how
    # Written beside `path`, then moved into place: an export that fails leaves `path` as it was.
    target = os.path.abspath(args.path)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".", suffix=".tmp", dir=parent)
    try:
        plain = keras_hta.export_saved_model(model, tmp, how=how)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Exported {plain.name} ({how}, {len(plain.weights)} variables) to {args.path}")


def _kept(args):
    """What an interrupted or failed command leaves: the finished runs, and how to go on."""
    out = getattr(args, "out", None)
    if args.command == "compare" and out:
        path = os.path.join(out, "results.json")
        try:
            with open(path) as f:
                count = len(json.load(f)["runs"])
        except (OSError, ValueError, KeyError, TypeError):
            count = 0
        if count:
            return f" {count} finished run(s) are kept in {path}; the same command resumes from there."
        return " No run had finished; nothing was written."
    if args.command == "tune":
        return f" keras-tuner's finished trials are in {args.directory}."
    return ""


def build_parser():
    from keras_hta import __version__

    parser = argparse.ArgumentParser(prog="keras-hta", description="The Homotopy Training Algorithm for Keras.")
    parser.add_argument("--version", action="version", version=f"keras-hta {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _nonconvex_parser(sub)
    _export_parser(sub)
    from keras_hta.experiments.compare import add_compare_parser
    from keras_hta.experiments.tune import add_tune_parser

    add_compare_parser(sub)
    add_tune_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it ends as Ctrl-C does (what finished is kept)."""


def _terminate(signum, frame):
    raise Terminated


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # What results files record: the command as typed, or as a script passed it.
    args.command_line = "keras-hta " + " ".join(sys.argv[1:] if argv is None else argv)
    # The command owns its process (it may set process-wide TensorFlow settings, `compare --threads`)
    # only when run as a program, not when Python code calls main([...]).
    args.own_process = argv is None
    if args.own_process:  # TensorFlow's C++ start-up lines, unless the user chose a level
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_hta.experiments import DataUnavailableError

    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        previous = None
    try:
        args.func(args)
    except Terminated:
        parser.exit(143, f"keras-hta {args.command}: terminated.{_kept(args)}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"keras-hta {args.command}: interrupted.{_kept(args)}\n")
    except (DataUnavailableError, ValueError, TypeError) as error:
        parser.exit(2, f"keras-hta {args.command}: error: {error}\n")
    except OSError as error:  # a full or read-only disk, a folder removed under the run
        where = f" ({error.filename})" if error.filename else ""
        parser.exit(2, f"keras-hta {args.command}: error: {error.strerror or error}{where}.{_kept(args)}\n")
    except ModuleNotFoundError as error:  # a lean install: the harness's extras are missing
        if error.name == "tensorflow":
            parser.exit(2, f"keras-hta {args.command}: error: tensorflow is not installed; this needs it "
                           "(pip install \"keras-hta[cpu]\"), or run it on TensorFlow's backend\n")
        parser.exit(2, f"keras-hta {args.command}: error: {error.name} is not installed; the experiment "
                       "harness needs its extras: pip install \"keras-hta[experiments]\"\n")
    except ImportError as error:  # keras-hta's own, naming what to install (an export format's package)
        parser.exit(2, f"keras-hta {args.command}: error: {error}\n")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
