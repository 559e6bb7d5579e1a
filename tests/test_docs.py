"""The README's quickstart and the examples run as written."""

import os
import pathlib
import re
import sys

import pytest
from conftest import run_bounded

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code_or_file, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    args = [sys.executable, str(code_or_file)] if isinstance(code_or_file, pathlib.Path) else [sys.executable, "-c", code_or_file]
    out = run_bounded(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_quickstart_example_runs(tmp_path):
    out = _run(ROOT / "examples" / "quickstart.py", tmp_path)
    assert "validation accuracy" in out


def test_nonconvex_example_runs(tmp_path):
    out = _run(ROOT / "examples" / "nonconvex.py", tmp_path)
    assert "BFGS reaches x = 1 from 24" in out


def test_cifar10_example_runs_on_a_small_folder(tmp_path):
    from test_data import make_folder

    make_folder(tmp_path / "images", per_class=4, size=32)
    env_args = ["--data-dir", str(tmp_path / "images"), "--epochs", "1", "--width", "0.0625", "--batch-size", "4"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, str(ROOT / "examples" / "cifar10_vgg.py")] + env_args,
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy SGD" in out.stdout


def test_tune_schedule_example_runs(tmp_path):
    out = _run(ROOT / "examples" / "tune_schedule.py", tmp_path)
    assert "Best schedule:" in out and "Best test accuracy" in out


def test_readme_ecosystem_snippets_run(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Ecosystem", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    out = _run(code, tmp_path)
    assert "Linear(" in out or "Geometric(" in out or "Constant(" in out
    for path in ("served/1/saved_model.pb", "best.keras", "logs/train", "tuning"):
        assert (tmp_path / path).exists(), path
    served = run_bounded(["keras-hta", "export", "best.keras", "served/2"], cwd=tmp_path,
                            capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))
    assert served.returncode == 0, served.stderr[-2000:]
    bash = re.search(r"```bash\n(CLUSTER=.*?)```", section, re.S).group(1)
    ran = run_bounded(["bash", "-c", bash], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "multi_worker" / "results.json").exists()


def test_readme_fine_tuning_subclassed_and_lora_snippets_run(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Fine-tuning, subclassed models and LoRA", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    check = (  # the LoRA model's twins load back to the bit; its frozen kernel has none
        "\nrestored = keras.models.load_model('lora.keras')\n"
        "flat_x = x.reshape(64, -1)\n"
        "print(max(float(np.abs(restored.twin(k).predict(flat_x) - model.twin(k).predict(flat_x)).max()) for k in (0, 1)))\n"
        "print(dense.weights[0] is model.twin(1).variable(dense.weights[0]))\n")
    out = _run(code + check, tmp_path).splitlines()
    # Channels split of what the LoRA model trains: A (3072, 4), B (4, 64), the bias (64,), the head (64, 10)
    # and its bias (10,), each weight's last axis cut in two halves.
    half = 3072 * 2 + 4 * 32 + 32 + 64 * 5 + 5
    assert [int(v) for v in re.findall(r"\d+", out[-3])] == [half, half]
    assert float(out[-2]) == 0.0 and out[-1] == "True"  # to the bit: the base kernel is saved as it is
    fine_tuned = [int(v) for v in re.findall(r"\d+", out[-4])]
    assert len(fine_tuned) == 2 and min(fine_tuned) > 0.4 * sum(fine_tuned)  # channels: each layer cut in half
    assert (tmp_path / "small.weights.h5").exists()
