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

from conftest import BACKEND

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_stage_on_jax_without_tensorflow(tmp_path):
    """Runs in the JAX pass of CI, an environment without TensorFlow; each stage records it imported none."""
    if BACKEND != "jax":
        pytest.skip("the JAX pass runs it (CI: without TensorFlow installed)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["errors"] == {} and "card: CPU (dry run)" in out.stdout
    for stage in "abcde":
        assert result[stage]["tensorflow_imported"] is False, stage
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
    for row in result["e"]["rows"]:  # the fused twins compute the same gradients as two calls
        assert row["max_abs_grad_diff"] < 1e-4
        assert row["fused_over_two"] == pytest.approx(row["fused_vmap_s"] / row["two_calls_s"])
    for name in ("gpu_check.md", "step_time.png", "stage_a.json", "stage_e.json"):
        assert (tmp_path / name).exists(), name
