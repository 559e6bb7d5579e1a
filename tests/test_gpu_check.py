"""benchmarks/gpu_check.py's dry run: every stage at toy size on the CPU, on JAX, importing no TensorFlow.

A library-level check (not the harness's): it runs in CI's JAX pass, whose
environment has no TensorFlow installed, as the GPU machine has none.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import BACKEND, benchmark_script, not_installed, run_bounded

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_stage_on_jax_without_tensorflow(tmp_path):
    """As on a GPU machine without TensorFlow (made uninstalled here: Keras' `set_random_seed` imports it wherever it
    is installed); each stage records it imported none."""
    if BACKEND != "jax":
        pytest.skip("the JAX pass runs it")
    # gpu_check.py puts the repository on sys.path itself
    env = dict(os.environ, PYTHONPATH=not_installed(tmp_path / "not-installed", ["tensorflow"]))
    out = run_bounded([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["errors"] == {} and "card: CPU (dry run)" in out.stdout
    for stage in "abcde":
        assert result[stage]["tensorflow_imported"] is False and result[stage]["complete"] is True, stage
    assert result["versions"]["keras"] == __import__("keras").__version__
    rows = {(r["policy"], r["jit_compile"]): r for r in result["a"]["rows"]}
    assert rows[("float32", False)]["max_abs_diff_vs_cpu"] == 0.0  # the same device: bit-identical
    assert rows[("float32", True)]["max_abs_diff_vs_cpu"] < 1e-5
    for jit in (False, True):  # float16 moves θ about as far as it moves a plain Keras model
        row = rows[("mixed_float16", jit)]
        assert row["max_abs_diff_vs_cpu"] < max(5 * row["plain_keras_max_abs_diff_vs_cpu"], 1e-4), row
    assert result["b"]["max_abs_diff"] < 1e-5  # DataParallel over two host devices equals one device
    row = result["c"]["rows"][0]
    assert row["hta_over_2plain"] == pytest.approx(row["hta_s"] / (2 * row["plain_s"]))
    assert set(result["d"]["arms"]) == {"sgd", "hta"} and result["d"]["pipeline_images_per_s"] > 0
    probe = result["d"]["probe"]  # the epochs: sized from the timed steps, by d_epochs (capped at 2 here)
    assert result["d"]["arms"]["sgd"]["epochs"] == min(2, max(1, int(
        (result["d"]["budget_s"] - 3 * probe["compile_s"]) / (3.4 * probe["sgd_epoch_s"]))))
    for row in result["e"]["rows"]:  # the fused twins compute the same gradients as two calls
        assert row["max_abs_grad_diff"] < 1e-4
        assert row["fused_over_two"] == pytest.approx(row["fused_vmap_s"] / row["two_calls_s"])
    for name in ("gpu_check.md", "step_time.png", "stage_a.json", "stage_e.json"):
        assert (tmp_path / name).exists(), name


def _gpu_check():
    return benchmark_script("gpu_check")


def test_stage_d_epochs_pay_three_compilations_and_3_4_sgd_epochs_each():
    gpu_check = _gpu_check()
    # (240 − 3·20) / (3.4·2) = 26.47: 26 epochs; the cap and the floor of one epoch.
    assert gpu_check.d_epochs(240, 20, 2.0) == 26
    assert gpu_check.d_epochs(240, 1, 0.1) == gpu_check.EPOCHS_CAP
    assert gpu_check.d_epochs(30, 20, 2.0) == 1
    for budget, compile_s, epoch_s in ((180, 35, 1.3), (400, 60, 4.0)):  # what the arms would cost: within budget
        epochs = gpu_check.d_epochs(budget, compile_s, epoch_s)
        assert 3 * compile_s + 3.4 * epoch_s * epochs <= budget < 3 * compile_s + 3.4 * epoch_s * (epochs + 1)


def test_stage_d_gets_what_the_budget_leaves_and_the_others_never_take_its_minimum():
    gpu_check = _gpu_check()
    assert gpu_check._stage_limits("a", 540, False) == (gpu_check.LIMITS["a"], None)
    assert gpu_check._stage_limits("c", 200, False) == (200 - gpu_check.D_MINIMUM, None)
    assert gpu_check._stage_limits("c", 100, False, d_follows=False) == (100, None)
    limit, minutes = gpu_check._stage_limits("d", 300, False)
    assert limit == 300 and minutes == pytest.approx((300 - gpu_check.D_OVERHEAD) / 60)
    assert gpu_check._stage_limits("d", 10, False)[0] == gpu_check.D_MINIMUM  # late: d still gets its minimum
    assert sum(gpu_check.LIMITS.values()) + gpu_check.D_MINIMUM <= 540  # the default budget holds every cap


def test_a_stage_cut_short_keeps_the_rows_it_saved(tmp_path, monkeypatch):
    """The driver, its stage's process replaced: one row saved, then the time limit."""
    gpu_check = _gpu_check()
    calls = []
    real_run = subprocess.run

    def run(command, timeout=None, **kwargs):
        if "--stage" not in command:  # not a stage: git, for the results' provenance
            return real_run(command, timeout=timeout, **kwargs)
        stage = command[command.index("--stage") + 1]
        calls.append((stage, timeout))
        if stage == "c":
            (tmp_path / "stage_c.json").write_text(json.dumps({"card": "X", "complete": False, "rows": [
                {"model": "vgg11_bn", "width": 1.0, "batch": 128, "jit_compile": True, "plain_s": 0.01,
                 "hta_s": 0.021, "hta_split_s": 0.012, "hta_over_plain": 2.1, "hta_over_2plain": 1.05,
                 "split_over_plain": 1.2}]}))
            (tmp_path / ".stage_c.json-abc").write_text("half")  # a write the limit cut short
            raise subprocess.TimeoutExpired(command, timeout)
        raise AssertionError(stage)

    (tmp_path / "stage_c.json").write_text("{}")  # an earlier run's: replaced
    stage_a = {"card": "X", "complete": True, "rows": [{"policy": "float32", "jit_compile": True, "seconds": 1.0,
                                                        "max_abs_diff_vs_cpu": 3e-7, "plain_keras_max_abs_diff_vs_cpu": 2e-7}]}
    (tmp_path / "stage_a.json").write_text(json.dumps(stage_a))  # an earlier run's, not rerun: reported with it
    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--stages", "c", "--out", str(tmp_path)])
    assert gpu_check.main() == 1
    assert calls == [("c", gpu_check.LIMITS["c"])]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["c"]["rows"][0]["hta_over_2plain"] == 1.05 and result["a"] == stage_a
    assert result["errors"] == {"c": f"timed out after {gpu_check.LIMITS['c']} s; kept what it finished: 1 row(s)"}
    report = (tmp_path / "gpu_check.md").read_text()
    assert "| vgg11_bn w1 b128 | True |" in report and "| float32 | True | 3.00e-07 | 2.00e-07 |" in report
    assert not (tmp_path / ".stage_c.json-abc").exists()
