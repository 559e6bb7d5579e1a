"""Every Python block of the README runs as written on each backend its first line names.

Each block starts with `# backends: ...`. The blocks of one section run in
order in one Python session, as the README says; each CI pass (TensorFlow,
JAX, PyTorch) runs the sections that name its backend and checks what the
text says they print or write.
"""

import os
import pathlib
import re
import sys

import pytest
from conftest import BACKEND, not_installed, run_bounded

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BACKENDS = ("tensorflow", "jax", "torch")
TAG = re.compile(r"# backends: ((?:tensorflow|jax|torch)(?:, (?:tensorflow|jax|torch))*)\n")


def _sections():
    """`{section title: [python block, ...]}` for the README's `## ` sections that hold Python blocks."""
    sections = {}
    for part in README.split("\n## ")[1:]:
        title, body = part.split("\n", 1)
        blocks = re.findall(r"```python\n(.*?)```", body, re.S)
        if blocks:
            sections[title.strip()] = blocks
    return sections


SECTIONS = _sections()


def _backends(block):
    match = TAG.match(block)
    return tuple(match.group(1).split(", ")) if match else None


def _run(code, tmp_path, missing=()):
    """Runs `code` in a fresh process where the packages `missing` fail to import, as where they are not installed."""
    path = [str(ROOT)]
    if missing:
        path.insert(0, not_installed(tmp_path / "not-installed", missing))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(path))
    out = run_bounded([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                      cwd=tmp_path)  # a bound for hangs only
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_every_python_block_names_the_backends_it_runs_on():
    blocks = [b for bs in SECTIONS.values() for b in bs]
    assert len(blocks) == README.count("```python") and len(blocks) >= 8
    for title, bs in SECTIONS.items():
        tags = [_backends(b) for b in bs]
        assert all(tags), f"{title}: a Python block without '# backends: ...' as its first line"
        assert len(set(tags)) == 1, f"{title}: the blocks of one session name different backends {tags}"
    assert set(_backends(SECTIONS["Quickstart"][0])) == set(BACKENDS)


def _check_quickstart(code, tmp_path, missing):
    shown = SECTIONS["Quickstart"][0]
    assert len([line for line in shown.strip().splitlines() if not TAG.match(line + "\n")]) <= 20
    check = ("\nrestored = keras.models.load_model('plain.keras')\n"  # the saved plain model is θ
             "print(float(np.abs(restored.predict(x, verbose=0) - model.predict(x, verbose=0)).max()))\n")
    lines = _run(code + check, tmp_path, missing).strip().splitlines()
    # What the comment says the line prints, as printed.
    assert lines[-2] == "[0.1, 0.1, 0.08, 0.08, 0.06, 0.06, 0.04, 0.04, 0.02, 0.02]"
    assert float(lines[-1]) == 0.0


def _check_fine_tuning(code, tmp_path, missing):
    check = (  # the LoRA model's twins load back to the bit; its frozen kernel has none
        "\nrestored = keras.models.load_model('lora.keras')\n"
        "flat_x = x.reshape(64, -1)\n"
        "print(max(float(np.abs(restored.twin(k).predict(flat_x) - model.twin(k).predict(flat_x)).max()) for k in (0, 1)))\n"
        "print(dense.weights[0] is model.twin(1).variable(dense.weights[0]))\n")
    out = _run(code + check, tmp_path, missing).splitlines()
    # Channels split of what the LoRA model trains: A (3072, 4), B (4, 64), the bias (64,), the head (64, 10)
    # and its bias (10,), each weight's last axis cut in two halves.
    half = 3072 * 2 + 4 * 32 + 32 + 64 * 5 + 5
    assert [int(v) for v in re.findall(r"\d+", out[-3])] == [half, half]
    assert float(out[-2]) == 0.0 and out[-1] == "True"  # to the bit: the base kernel is saved as it is
    fine_tuned = [int(v) for v in re.findall(r"\d+", out[-4])]
    assert len(fine_tuned) == 2 and min(fine_tuned) > 0.4 * sum(fine_tuned)  # channels: each layer cut in half
    assert (tmp_path / "small.weights.h5").exists()


def _check_ecosystem(code, tmp_path, missing):
    out = _run(code, tmp_path, missing)
    assert "Linear(" in out or "Geometric(" in out or "Constant(" in out
    for path in ("served/1/saved_model.pb", "best.keras", "logs/train", "tuning"):
        assert (tmp_path / path).exists(), path
    # `keras-hta` as the README calls it: the command installed beside this Python
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    served = run_bounded(["keras-hta", "export", "best.keras", "served/2"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert served.returncode == 0, served.stderr[-2000:]
    section = README.split("## Ecosystem", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(CLUSTER=.*?)```", section, re.S).group(1)
    ran = run_bounded(["bash", "-c", bash], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "multi_worker" / "results.json").exists()


CHECKS = {
    "Quickstart": _check_quickstart,
    "Fine-tuning, subclassed models and LoRA": _check_fine_tuning,
    "Ecosystem": _check_ecosystem,
}
# keras-tuner, a SavedModel, TensorBoard, tf.distribute and the keras-hta command: the harness's pass.
HARNESS = {"Ecosystem"}


def test_every_section_with_python_blocks_has_a_check():
    assert set(CHECKS) == set(SECTIONS)


@pytest.mark.parametrize("title", [pytest.param(t, marks=pytest.mark.harness) if t in HARNESS else t for t in CHECKS])
def test_readme_section_runs_as_written_on_this_backend(title, tmp_path):
    backends = _backends(SECTIONS[title][0])
    if BACKEND not in backends:
        pytest.skip(f"the README runs {title!r} on {', '.join(backends)}")
    # As where only this backend is installed: the others do not import.
    missing = [b for b in BACKENDS if b != BACKEND] if set(backends) == set(BACKENDS) else []
    CHECKS[title]("\n".join(SECTIONS[title]), tmp_path, missing)
