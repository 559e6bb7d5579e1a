"""The keras-hta command line: compare and nonconvex, end to end on tiny runs."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from keras_hta.experiments import cli
from test_data import make_folder
from conftest import communicate_bounded, run_bounded

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)


BASE = ["--epochs", "1", "--seeds", "0", "--verbose", "0"]
TINY = BASE + ["--train-size", "256", "--test-size", "128"]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_writes_json_markdown_and_plot_then_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    result = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in result["runs"]] == ["sgd", "hta"]
    assert len(result["runs"][1]["val_error"]) == 1
    assert result["runs"][1]["homotopy_l"] == [pytest.approx(0.01, rel=1e-6)]  # float32 variable
    s = result["summary"]
    assert s["roi_percent"] == pytest.approx(100 * (s["sgd"]["error_mean"] - s["hta"]["error_mean"]) / s["sgd"]["error_mean"])
    table = (out / "results.md").read_text()
    assert "| Model | Original error rate | Error rate with HTA | Rate of improvement |" in table
    assert f"{s['hta']['error_mean']:.2f}%" in table
    import importlib.metadata
    import subprocess

    import keras
    from keras_hta.experiments import provenance

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for run in result["runs"]:  # what produced each run: commit, versions, Python, CPU, threads, the command
        p = run["provenance"]
        assert p["versions"]["keras"] == keras.__version__ and p["versions"]["numpy"] == np.__version__
        assert p["versions"]["mnist1d"] == importlib.metadata.version("mnist1d")
        assert p["cpus"]["usable"] == len(os.sched_getaffinity(0)) and p["command"].startswith("keras-hta compare")
        assert p["code"]["commit"] == head and p["cpu"] == provenance.cpu() and p["backend"] == keras.backend.backend()
    assert f"Produced by commit {head[:10]}" in table and f"with keras {keras.__version__}" in table
    assert provenance.cpu()["model"] in table and "(2 of 2 runs record it)" in table
    assert _png(out / "val_error.png")
    capsys.readouterr()
    cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    assert "Resuming: 2 finished run(s)" in capsys.readouterr().out


def test_both_arms_start_from_the_same_weights(tmp_path):
    out = tmp_path / "run"
    cli.main(["compare", "--model", "cnn1d", "--lr", "0", "--weight-decay", "0", "--out", str(out)] + TINY)
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert runs[0]["val_error"] == runs[1]["val_error"]  # nothing trained: θ = the SGD model


def test_compare_vgg_on_an_image_folder(tmp_path):
    make_folder(tmp_path / "images", per_class=4, size=32)
    out = tmp_path / "run"
    cli.main(["compare", "--data-dir", str(tmp_path / "images"), "--model", "vgg11", "--width", "0.0625",
              "--batch-size", "4", "--val-size", "3", "--out", str(out)] + BASE)
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["model"] == "vgg11" and all(r["finite"] for r in result["runs"])


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--epochs", "0", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert "--data-dir" in capsys.readouterr().err


def test_nonconvex_table_json_and_figure(tmp_path, capsys):
    from keras_hta.experiments import nonconvex

    cli.main(["nonconvex", "--n", "2", "--workers", "1", "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "f.png")])
    out = capsys.readouterr().out
    assert "| 2 | 36 | zeros | 24 | 24 | 25 | 36 | 36 | 24 | 36 |" in out
    assert "| 2 | 36 | init | 24 | 24 | 24 | 24 | 24 | 24 | 36 |" in out
    result = json.loads((tmp_path / "t.json").read_text())
    rows = result["rows"]
    assert rows[0]["bfgs"] == 24 and rows[0]["homotopy_zeros"] == 25 and rows[0]["homotopy_decoupled_zeros"] == 36
    assert nonconvex.render_table1(result) in out  # what it printed is what the JSON renders to
    assert result["provenance"]["command"].startswith("keras-hta nonconvex --n 2")
    assert {"keras", "numpy", "scipy"} <= set(result["provenance"]["versions"])
    assert _png(tmp_path / "f.png")


def test_compare_gives_the_same_runs_on_one_core_and_on_all(tmp_path):
    # --threads 1 (the default) fixes TensorFlow's pools and kernels: the CPUs it may use change nothing.
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to pin to one")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), KERAS_BACKEND="tensorflow")
    for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_DETERMINISTIC_OPS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(name, None)
    command = [sys.executable, "-m", "keras_hta.experiments.cli", "compare", "--model", "cnn1d", "--epochs", "2",
               "--seeds", "0", "--verbose", "0", "--train-size", "512", "--test-size", "256"]
    first = min(os.sched_getaffinity(0))
    runs = {}
    for name, prefix in (("all", []), ("one", ["taskset", "-c", str(first)])):
        out = run_bounded(prefix + command + ["--out", str(tmp_path / name)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())["runs"]
    assert [r["provenance"]["cpus"]["usable"] for r in runs["one"]] == [1, 1]
    assert runs["all"][0]["provenance"]["threads"]["TF_NUM_INTRAOP_THREADS"] == "1"
    for a, b in zip(runs["all"], runs["one"]):
        assert a["val_error"] == b["val_error"] and a["test_error"] == b["test_error"] and a["train_loss"] == b["train_loss"]


def test_nonconvex_pool_workers_end_without_a_traceback(tmp_path):
    # Forked workers inherit the command's SIGTERM handler; the pool ends them with SIGTERM.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, "-m", "keras_hta.experiments.cli", "nonconvex", "--n", "3", "--grid", "0", "2", "4", "5", "--workers", "2",
                       "--anchors", "zeros"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "| 3 | 64 | zeros |" in out.stdout


def test_tune_prints_trials_and_best_schedule(tmp_path, capsys):
    from keras_hta import schedules

    cli.main(["tune", "--model", "mlp", "--epochs", "1", "--max-trials", "2", "--train-size", "256",
              "--test-size", "128", "--verbose", "0", "--directory", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| trial | val_accuracy | schedule |" in out
    rows = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 2 and float(rows[0][1]) >= float(rows[1][1])  # both trials, best first
    line = next(line for line in out.splitlines() if line.startswith("Best schedule: "))
    best = eval(line[len("Best schedule: "):], {k: getattr(schedules, k) for k in ("Constant", "Linear", "Geometric")})
    config = best.get_config()  # the best trial's schedule: its first L is that trial's l_start
    assert config.get("start", config.get("value")) == pytest.approx(float(rows[0][3]), rel=1e-3)


def test_rerun_with_fewer_arms_keeps_the_saved_runs(tmp_path):
    out = tmp_path / "run"
    cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    cli.main(["compare", "--model", "mlp", "--arms", "sgd", "--out", str(out)] + TINY)
    result = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in result["runs"]] == ["sgd", "hta"]  # nothing deleted
    assert set(result["summary"]) == {"sgd"}  # the summary covers this call's arms


# --- trustworthy experiments: same batches per arm, flags checked before data, atomic files ---


def _record_batches(monkeypatch):
    """Records a digest of every training batch each run receives."""
    import hashlib

    import tensorflow as tf

    from keras_hta.experiments import compare

    seen, original = [], compare.make_pipelines

    def recording(d, config, seed):
        train, val, test, shape = original(d, config, seed)
        digests = []
        seen.append(digests)

        def note(x, y):
            digests.append(hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
            return y

        def tap(x, y):
            y2 = tf.py_function(note, [x, y], y.dtype)
            y2.set_shape(y.shape)
            return x, y2

        return train.map(tap), val, test, shape

    monkeypatch.setattr(compare, "make_pipelines", recording)
    return seen


def test_every_arm_of_a_seed_sees_the_same_batches(tmp_path, monkeypatch):
    seen = _record_batches(monkeypatch)
    cli.main(["compare", "--model", "mlp", "--epochs", "2", "--seeds", "0", "--arms", "sgd", "hta", "sgd_ema",
              "--train-size", "256", "--test-size", "64", "--verbose", "0", "--out", str(tmp_path / "a")])
    assert len(seen) == 3 and len(seen[0]) == 4  # 2 batches x 2 epochs
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][:2] != seen[0][2:]  # reshuffled each epoch


def test_a_seed_gives_the_same_run_whatever_ran_before(tmp_path):
    cli.main(["compare", "--model", "mlp", "--epochs", "2", "--seeds", "1", "--train-size", "256",
              "--test-size", "128", "--verbose", "0", "--out", str(tmp_path / "a")])
    out = tmp_path / "b"
    both_args = ["compare", "--model", "mlp", "--epochs", "2", "--seeds", "0", "1", "--train-size", "256",
                 "--test-size", "128", "--verbose", "0", "--out", str(out)]
    cli.main(both_args)
    runs = json.loads((out / "results.json").read_text())["runs"]
    for arm in ("sgd", "hta"):
        a = next(r for r in runs if r["arm"] == arm and r["seed"] == 1)
        b = next(r for r in json.loads((tmp_path / "a" / "results.json").read_text())["runs"] if r["arm"] == arm)
        assert a["test_error"] == b["test_error"] and a["val_error"] == b["val_error"]
    # A run removed from the file and rerun reproduces its recorded numbers.
    removed = runs.pop(next(i for i, r in enumerate(runs) if r["arm"] == "hta" and r["seed"] == 1))
    (out / "results.json").write_text(json.dumps({"runs": runs}))
    cli.main(both_args)
    again = json.loads((out / "results.json").read_text())["runs"]
    redo = next(r for r in again if r["arm"] == "hta" and r["seed"] == 1)
    assert redo["test_error"] == removed["test_error"] and redo["val_error"] == removed["val_error"]
    assert len(again) == 4


def test_runs_with_other_flags_sit_beside_earlier_ones(tmp_path):
    out = tmp_path / "run"
    cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    cli.main(["compare", "--model", "mlp", "--lr", "0.01", "--out", str(out)] + TINY)
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 4
    assert sorted(r["config"]["lr"] for r in result["runs"]) == [0.01, 0.01, 0.05, 0.05]
    assert result["config"]["lr"] == 0.01 and result["summary"]["sgd"]["seeds"] == 1
    # The baseline ignores HTA's flags: a new L schedule reuses the SGD run.
    cli.main(["compare", "--model", "mlp", "--L-start", "0.02", "--out", str(out)] + TINY)
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 5


def test_unreadable_results_file_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"runs": [')  # as a kill mid-write would have left it, before
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(out / "results.json") in err and "Move it away" in err


@pytest.mark.parametrize("flags,message", [
    (["--L-start", "0"], "--L-start"),
    (["--L-start", "-1"], "--L-start"),
    (["--L-stop", "nan"], "--L-stop"),
    (["--L-step", "0.001"], "--L-step"),
    (["--epochs-per-L", "0"], "--epochs-per-L"),
    (["--model", "vgg11"], "--model vgg11"),
    (["--val-size", "0"], "--val-size"),
    (["--norm", "l2"], "--penalty-update gradient"),
    (["--momentum", "1"], "--momentum"),
    (["--width", "-1"], "--width"),
    (["--lr", "inf"], "--lr inf"),  # trained to NaN before, exit 0
    (["--weight-decay", "nan"], "--weight-decay nan"),
    (["--val-size", "inf"], "--val-size inf"),  # an OverflowError traceback before
    (["--threads", "-1"], "--threads -1"),
])
def test_every_flag_is_checked_before_any_data_is_loaded(tmp_path, capsys, monkeypatch, flags, message):
    from keras_hta.experiments import compare

    monkeypatch.setattr(compare, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--out", str(tmp_path)] + flags)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_data_dir_without_image_folders_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    from keras_hta.experiments import compare

    monkeypatch.setattr(compare, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.tar.gz").write_text("not an archive")
    for path, says in ((tmp_path / "empty", "must hold train/<class>/"), (tmp_path / "notes.tar.gz", "not a .tar")):
        with pytest.raises(SystemExit) as info:
            cli.main(["compare", "--data-dir", str(path), "--out", str(tmp_path / "run")])
        line = _one_line(capsys)
        assert info.value.code == 2 and f"Received: --data-dir {path}" in line and says in line


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_nonconvex_output_in_a_missing_folder_is_refused_before_solving(tmp_path, capsys, monkeypatch, flag):
    from keras_hta.experiments import nonconvex

    monkeypatch.setattr(nonconvex, "paper_starts", lambda *a: pytest.fail("solved before the check"))
    for path, says in ((tmp_path / "missing" / "t.out", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit) as info:
            cli.main(["nonconvex", "--n", "2", flag, str(path)])
        line = _one_line(capsys)
        assert info.value.code == 2 and f"Received: {flag} {path}" in line and says in line


def test_image_model_mismatch_and_workers_are_refused(tmp_path, capsys):
    make_folder(tmp_path / "images", per_class=2, size=32)
    with pytest.raises(SystemExit):
        cli.main(["compare", "--data-dir", str(tmp_path / "images"), "--model", "cnn1d", "--out", str(tmp_path)])
    assert "--model cnn1d" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["nonconvex", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err


def test_logs_print_a_line_per_epoch_and_no_shuffle_warning(tmp_path, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.main(["compare", "--model", "mlp", "--epochs", "2", "--seeds", "0", "--train-size", "256",
                  "--test-size", "64", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("Epoch 2/2") == 2 and "\r" not in out and "\x1b" not in out and "\x08" not in out
    assert not [w for w in caught if "shuffle" in str(w.message)]


def test_tune_never_reads_the_test_set(tmp_path, capsys, monkeypatch):
    from keras_hta.experiments import compare

    original = compare.make_pipelines
    monkeypatch.setattr(compare, "make_pipelines", lambda *a: original(*a)[:2] + (None,) + original(*a)[3:])
    cli.main(["tune", "--model", "mlp", "--epochs", "1", "--max-trials", "2", "--train-size", "256",
              "--test-size", "128", "--verbose", "0", "--directory", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Best schedule:" in out and out.count("failed") == 0


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _no_data(*args, **kwargs):
    raise AssertionError("data was loaded before the flags were checked")


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from keras_hta.experiments import compare

    monkeypatch.setattr(compare, "load_data", _no_data)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--out", str(tmp_path / "file" / "run")] + TINY)
    assert info.value.code == 2
    assert "`--out` cannot be a folder" in _one_line(capsys) and not (tmp_path / "file").is_dir()
    monkeypatch.setattr(compare.os, "access", lambda path, mode: False)  # a read-only file system
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--out", str(tmp_path / "ro" / "run")] + TINY)
    assert info.value.code == 2 and "`--out` cannot be written" in _one_line(capsys)
    assert not (tmp_path / "ro").exists()


def test_a_run_that_fails_on_its_data_leaves_no_folder(tmp_path, capsys, monkeypatch):
    from keras_hta.experiments import DataUnavailableError, compare

    def unavailable(*args, **kwargs):
        raise DataUnavailableError("no data here")

    monkeypatch.setattr(compare, "load_data", unavailable)
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--out", str(tmp_path / "run")] + TINY)
    assert info.value.code == 2 and "no data here" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def _stopped_at_the_second_run(tmp_path, capsys, monkeypatch, stop):
    """compare with `stop()` called as its second run (HTA) starts; returns (exit code, the one line, --out)."""
    from keras_hta.experiments import compare

    real = compare.train_one

    def stopped_second(config, arm, *args, **kwargs):
        if arm == "hta":
            stop()
        return real(config, arm, *args, **kwargs)

    monkeypatch.setattr(compare, "train_one", stopped_second)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    monkeypatch.setattr(compare, "train_one", real)
    assert [r["arm"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["sgd"]
    return info.value.code, _one_line(capsys), out


def test_ctrl_c_ends_in_one_line_keeps_the_finished_runs_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    def ctrl_c():
        raise KeyboardInterrupt

    code, line, out = _stopped_at_the_second_run(tmp_path, capsys, monkeypatch, ctrl_c)
    assert code == 130
    assert line.startswith("keras-hta compare: interrupted.") and "1 finished run(s) are kept" in line
    cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    assert "Resuming: 1 finished run(s)" in capsys.readouterr().out
    assert [r["arm"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["sgd", "hta"]


def test_sigterm_ends_like_ctrl_c_with_exit_143_and_keeps_the_finished_runs(tmp_path, capsys, monkeypatch):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    code, line, _ = _stopped_at_the_second_run(  # as `kill PID` from another terminal
        tmp_path, capsys, monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert code == 143
    assert line.startswith("keras-hta compare: terminated.") and "1 finished run(s) are kept" in line
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handler back


def test_a_full_disk_ends_in_one_line_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    import errno

    from keras_hta.experiments import compare

    real, calls = compare.write_json_atomic, []

    def full_after_the_first(path, obj):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)

    monkeypatch.setattr(compare, "write_json_atomic", full_after_the_first)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    line = _one_line(capsys)
    assert info.value.code == 2 and "No space left on device" in line and "1 finished run(s) are kept" in line
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 1
    assert [p.name for p in out.iterdir()] == ["results.json"]  # no temporary file left


_RUN = {"arm": "sgd", "seed": 0, "test_error": 0.1, "val_error": [0.2], "val_final_error": 0.2, "seconds": 1.0}


@pytest.mark.parametrize("saved,says", [
    ({"runs": [{"seed": 0}]}, "run 0 has no arm"),
    ({"config": "oops", "runs": [_RUN]}, "config is not an object"),  # an AttributeError traceback before
    ({"runs": [{**_RUN, "config": "oops"}]}, "run 0's config is not an object"),
    ({"runs": [{**_RUN, "test_error": "0.1"}]}, "run 0's test_error is not a number: '0.1'"),  # a NumPy ufunc line
    ({"runs": "all of them"}, "runs is not a list"),
    ([1, 2], "top level"),
])
def test_a_results_file_that_is_not_what_compare_writes_is_one_line(tmp_path, capsys, saved, says):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--out", str(out)] + TINY)
    line = _one_line(capsys)
    assert info.value.code == 2 and "cannot be read" in line and says in line


def test_export_of_a_file_that_is_not_a_keras_archive_says_so(tmp_path, capsys):
    (tmp_path / "junk.keras").write_text("not a zip")
    with pytest.raises(SystemExit) as info:
        cli.main(["export", str(tmp_path / "junk.keras"), str(tmp_path / "out")])
    assert info.value.code == 2 and "is not a Keras archive" in _one_line(capsys)


def _expected_verdict_parts(hta, sgd):
    """What the '- HTA' sentence must say about these paired accuracies, computed here with SciPy alone."""
    from scipy import stats as scipy_stats

    from keras_hta.experiments import stats

    d = np.subtract(hta, sgd)
    n = len(d)
    gap = np.mean(hta) - np.mean(sgd)
    parts = [f"({gap:+.2f} points)", "above" if gap > 0 else "below" if gap < 0 else "level with"]
    if d.std(ddof=1) == 0:
        return parts + [f"the same difference on all {n} seeds: no interval to give"]
    half = scipy_stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
    return parts + [
        f"paired over {n} seeds, HTA − SGD = {d.mean():+.2f} points",
        f"95% CI [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]",
        f"paired t p = {stats.format_p(scipy_stats.ttest_rel(hta, sgd).pvalue)}",
        f"Wilcoxon p = {stats.format_p(scipy_stats.wilcoxon(hta, sgd).pvalue)}",
        "excludes 0" if d.mean() - half > 0 or d.mean() + half < 0 else "includes 0",
        f"detect a true difference of {stats.paired_mde(d.std(ddof=1), n):.2f} points",
    ]


@pytest.mark.parametrize("hta", [[91.0, 90.5, 93.25, 89.0], [91.0, 91.5, 93.25, 91.0], [89.0, 89.5, 91.0, 89.5]],
                         ids=["spread", "excludes-0", "same-difference"])
def test_verdict_gives_the_paired_difference_its_interval_and_what_the_seeds_resolve(hta):
    from keras_hta.experiments import compare

    sgd = [90.0, 90.5, 92.0, 90.5]
    runs = [{"arm": arm, "seed": seed, "test_error": 100.0 - acc, "val_final_error": 0.0, "seconds": 1.0}
            for arm, accs in (("hta", hta), ("sgd", sgd)) for seed, acc in zip((3, 1, 2, 0), accs)]
    text = compare.verdict("hta", compare.summarize(runs), runs)
    for part in _expected_verdict_parts(hta, sgd):
        assert part in text, (part, text)


def test_results_md_says_in_words_who_won_by_how_much_and_what_the_paired_seeds_resolve(tmp_path):
    out = tmp_path / "run"
    cli.main(["compare", "--model", "mlp", "--out", str(out), "--epochs", "1", "--seeds", "0", "1", "2",
              "--verbose", "0", "--train-size", "256", "--test-size", "128"])
    runs = json.loads((out / "results.json").read_text())["runs"]
    acc = {arm: [100 - r["test_error"] for r in sorted(runs, key=lambda r: r["seed"]) if r["arm"] == arm]
           for arm in ("sgd", "hta")}
    line = next(l for l in (out / "results.md").read_text().splitlines() if l.startswith("- HTA"))
    for part in _expected_verdict_parts(acc["hta"], acc["sgd"]):  # whichever case these runs land on
        assert part in line, (part, line)


def test_a_run_that_diverges_is_reported_in_words_and_not_compared(tmp_path):
    out = tmp_path / "run"
    cli.main(["compare", "--model", "mlp", "--lr", "1e30", "--out", str(out)] + TINY)  # finite, and far too large
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert not all(r["finite"] for r in runs)
    md = (out / "results.md").read_text()
    import re

    for r in runs:
        if not r["finite"]:
            first = next(i for i, v in enumerate(r["train_loss"], 1) if not np.isfinite(v))
            assert re.search(rf"seed {r['seed']}: diverged: (NaN|infinite) loss at epoch {first}\b", md), md
    assert "not compared with SGD" in md and "level with" not in md


def test_two_compare_processes_into_one_out_keep_every_run(tmp_path):
    """Seeds 0 and 1 in two terminals, one --out: results.json ends with the runs of both."""
    import subprocess
    import sys

    out = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-m", "keras_hta.experiments.cli", "compare", "--model", "mlp",
                               "--out", str(out), "--epochs", "1", "--seeds", str(seed), "--verbose", "0",
                               "--train-size", "256", "--test-size", "128"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for seed in (0, 1)]
    try:
        errors = [communicate_bounded(p)[1] for p in procs]  # a run takes seconds
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("hta", 0), ("hta", 1), ("sgd", 0), ("sgd", 1)]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "val_error.png"]


def test_runs_written_meanwhile_by_another_process_are_kept(tmp_path, monkeypatch):
    from keras_hta.experiments import compare

    real = compare.train_one
    out = tmp_path / "run"

    def with_another_writer(config, arm, seed, *args, **kwargs):
        run = real(config, arm, seed, *args, **kwargs)
        if arm == "sgd":  # another process finishes seed 7 while this one trains
            other = dict(run, seed=7)
            out.mkdir(exist_ok=True)
            compare.save_runs(str(out / "results.json"), [other], {"command": "the other one"})
        return run

    monkeypatch.setattr(compare, "train_one", with_another_writer)
    cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("hta", 0), ("sgd", 0), ("sgd", 7)]


@pytest.mark.parametrize("command, says", [
    (["compare", "--train-size", "5"], "--train-size 5"),  # fewer examples than MNIST-1D's 10 classes
    (["compare", "--test-size", "3"], "--test-size 3"),
    (["compare", "--test-size", "1001"], "--test-size 1001"),  # MNIST-1D has 1,000 test examples
    (["compare", "--val-size", "4000"], "--val-size 4000"),  # and 4,000 training examples
    (["compare", "--val-size", "0.5", "--train-size", "2001"], "--train-size 2001"),  # 2,000 left beside validation
    (["tune", "--seed", "-5"], "--seed -5"),
    (["tune", "--train-size", "5"], "--train-size 5"),
])
def test_sizes_and_seeds_that_cannot_fit_are_refused_before_any_data_loads(tmp_path, capsys, monkeypatch,
                                                                            command, says):
    from keras_hta.experiments import compare

    monkeypatch.setattr(compare, "load_data", _no_data)
    with pytest.raises(SystemExit) as info:
        cli.main(command + ["--out" if command[0] == "compare" else "--directory", str(tmp_path / "run")])
    line = _one_line(capsys)
    assert info.value.code == 2 and f"Received: {says}" in line, line


def test_sizes_are_checked_against_an_image_folder_before_it_loads(tmp_path, capsys, monkeypatch):
    from keras_hta.experiments import compare

    make_folder(tmp_path / "images", per_class=4, size=8)  # 3 classes: 12 training, 12 test images
    monkeypatch.setattr(compare, "load_data", _no_data)
    for flags, says in ((["--val-size", "12"], "--val-size 12"), (["--test-size", "13"], "--test-size 13"),
                        (["--train-size", "2"], "--train-size 2")):
        with pytest.raises(SystemExit) as info:
            cli.main(["compare", "--data-dir", str(tmp_path / "images"), "--out", str(tmp_path / "run")] + flags)
        line = _one_line(capsys)
        assert info.value.code == 2 and f"Received: {says}" in line, line


def test_a_tune_directory_that_is_a_file_is_refused_before_any_data_loads(tmp_path, capsys, monkeypatch):
    from keras_hta.experiments import compare

    monkeypatch.setattr(compare, "load_data", _no_data)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as info:
        cli.main(["tune", "--directory", str(tmp_path / "a_file")])
    line = _one_line(capsys)
    assert info.value.code == 2 and f"Received: --directory {tmp_path / 'a_file'}" in line and "is a file" in line


@pytest.mark.parametrize("flags, says", [
    (["--grid", "nan", "1"], "--grid nan 1.0"),
    (["--grid", "0", "inf"], "--grid 0.0 inf"),
    (["--n", "3"], "--n 3"),  # the paper gives grids for n = 2, 4, 6
])
def test_nonconvex_refuses_grids_it_cannot_solve_in_one_line_naming_the_flag(capsys, monkeypatch, flags, says):
    from keras_hta.experiments import nonconvex

    monkeypatch.setattr(nonconvex, "count_global_minima", lambda *a, **k: pytest.fail("solved before the check"))
    with pytest.raises(SystemExit) as info:
        cli.main(["nonconvex"] + flags)
    line = _one_line(capsys)
    assert info.value.code == 2 and f"Received: {says}" in line, line


def test_checking_the_flags_starts_neither_keras_nor_tensorflow():
    """`compare --threads` sets TensorFlow's pools before TensorFlow starts: every check before it must not start it."""
    code = ("import sys; sys.argv = ['-m']\n"  # as `python -m keras_hta.experiments.cli` imports the package
            "from keras_hta.experiments import cli, compare\n"
            "args = cli.build_parser().parse_args(['compare', '--norm', 'l2', '--penalty-update', 'gradient', "
            "'--train-size', '100', '--val-size', '0.2'])\n"
            "compare._config(args); compare.check_writable_folder(args.out)\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)\n")
    out = run_bounded([sys.executable, "-c", code], capture_output=True, text=True,
                      env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
