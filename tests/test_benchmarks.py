"""The benchmark scripts run (timings are reported in benchmarks/, never asserted)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_step_time_script_writes_consistent_ratios(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--models", "cnn1d",
                          "--rounds", "1", "--steps", "3", "--no-memory", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads((tmp_path / "step_time.json").read_text())["rows"][0]
    assert row["hta_over_2plain"] == pytest.approx(row["hta_s"] / (2 * row["plain_s"]))
    assert row["split_floor"] == pytest.approx(2 * row["plain_half_s"] / row["plain_s"])
    assert row["proximal_over_gradient"] == pytest.approx(row["hta_s"] / row["hta_gradient_s"])
    # State memory, counted exactly: θ and η plus one momentum slot per twin
    # against θ and one slot (channel split, zero anchor: no mask, no anchor
    # stored), up to a few scalars: 2 x the plain state.
    assert row["state_ratio"] == pytest.approx(2.0, rel=2e-3)
    assert row["state_ratio"] <= 2.05
    assert (tmp_path / "step_time.md").exists() and (tmp_path / "step_time.png").exists()


def test_study_script_tunes_runs_and_reports_consistent_numbers(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "benchmarks" / "study.py"), "mnist1d-mlp", "--trials", "2", "--epochs", "1",
               "--seeds", "2", "--train-size", "256", "--arms", "sgd", "sgd_ema", "h1_paper_zeros", "h3_elastic_split",
               "sgd_2x", "--out", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((tmp_path / "study.json").read_text())
    assert set(state["tuned"]) == {"sgd", "sgd_ema", "h1_paper_zeros", "h3_elastic_split"}
    rows = state["summary"]
    for arm, row in rows.items():
        accs = [100 * r["test_accuracy"] for r in state["finals"][arm]]
        assert row["acc_mean"] == pytest.approx(np.mean(accs)) and len(accs) == 2
    sgd, hta = rows["sgd"]["err_mean"], rows["h3_elastic_split"]["err_mean"]
    assert rows["h3_elastic_split"]["roi_vs_sgd"] == pytest.approx(100 * (sgd - hta) / sgd)
    assert 0 <= rows["h1_paper_zeros"]["p_vs_sgd"] <= 1 or np.isnan(rows["h1_paper_zeros"]["p_vs_sgd"])
    # Resumable: a second call trains nothing new and reports the same table.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "  final " not in again.stdout and "tuning " not in again.stdout
    assert json.loads((tmp_path / "study.json").read_text())["summary"] == rows
