"""The keras-hta command line: compare and nonconvex, end to end on tiny runs."""

import json

import numpy as np
import pytest

from keras_hta import cli
from test_data import make_folder

TINY = ["--epochs", "1", "--seeds", "0", "--train-size", "256", "--test-size", "128", "--verbose", "0"]


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
              "--batch-size", "4", "--out", str(out)] + TINY)
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["model"] == "vgg11" and all(r["finite"] for r in result["runs"])


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--epochs", "0", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert "data_dir" in capsys.readouterr().err


def test_nonconvex_table_json_and_figure(tmp_path, capsys):
    cli.main(["nonconvex", "--n", "2", "--workers", "1", "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "f.png")])
    out = capsys.readouterr().out
    assert "| 2 | 36 | 24 | 24 | 25 | 24 | 36 |" in out
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert rows[0]["bfgs"] == 24 and rows[0]["homotopy_zeros"] == 25
    assert _png(tmp_path / "f.png")


def test_tune_prints_trials_and_best_schedule(tmp_path, capsys):
    from keras_hta import schedules

    best = cli.main(["tune", "--model", "mlp", "--epochs", "1", "--max-trials", "2", "--train-size", "256",
                     "--test-size", "128", "--verbose", "0", "--directory", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| trial | val_accuracy | schedule |" in out and "Best schedule:" in out
    assert out.count("failed") == 0


def test_rerun_with_fewer_arms_keeps_the_saved_runs(tmp_path):
    out = tmp_path / "run"
    cli.main(["compare", "--model", "mlp", "--out", str(out)] + TINY)
    cli.main(["compare", "--model", "mlp", "--arms", "sgd", "--out", str(out)] + TINY)
    result = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in result["runs"]] == ["sgd", "hta"]  # nothing deleted
    assert set(result["summary"]) == {"sgd"}  # the summary covers this call's arms
