"""What a results file records of where it came from: the code's commit and whether it had changes, the CPU's model and
vector instruction sets (kernels differ by instruction set, and so do a run's numbers), the threads."""

import importlib.metadata
import importlib.util
import os
import pathlib
import subprocess

import pytest

from keras_hta.experiments import provenance

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_cpu_is_the_model_and_the_vector_sets_proc_cpuinfo_names():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("reads /proc/cpuinfo (Linux)")
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith(("model name", "Model")))
    flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features")))
    cpu = provenance.cpu()
    assert cpu["model"] == model
    assert cpu["vector"] == [name for name in provenance.VECTOR_SETS if name in flags]


def _provenance_of(checkout):
    """The provenance module of another checkout of this repository (its ROOT is that checkout)."""
    spec = importlib.util.spec_from_file_location("provenance_of_clone",
                                                  checkout / "keras_hta" / "experiments" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_commit_is_head_and_dirty_means_the_code_changed_not_the_results_or_the_text(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    here = ROOT / "keras_hta" / "experiments" / "provenance.py"  # this code, committed in the clone
    (clone / "keras_hta" / "experiments" / "provenance.py").write_text(here.read_text())
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=test", "-c", "user.email=test@example.com", "commit",
                    "-q", "--allow-empty", "-am", "this provenance.py"], check=True)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    module = _provenance_of(clone)
    assert module.commit() == {"commit": head, "dirty": False}
    results = next((clone / "benchmarks" / "results").rglob("results.json"))
    results.write_text(results.read_text() + " ")  # a run rewriting a committed results file: still the commit's code
    for text in (clone / "README.md", clone / "benchmarks" / "RESULTS.md", clone / "tests" / "test_stats.py"):
        text.write_text(text.read_text() + "\n")  # documentation and tests change no run's numbers
    module.commit.cache_clear()
    assert module.commit() == {"commit": head, "dirty": False}
    (clone / "keras_hta" / "penalties.py").write_text("# changed\n")
    assert module.commit() == {"commit": head, "dirty": False}  # read once per process: the code it started with
    module.commit.cache_clear()  # a process started now runs the changed code
    assert module.commit() == {"commit": head, "dirty": True}


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    copy = tmp_path / "copy" / "keras_hta" / "experiments"
    copy.mkdir(parents=True)
    (copy / "provenance.py").write_text((ROOT / "keras_hta" / "experiments" / "provenance.py").read_text())
    assert _provenance_of(tmp_path / "copy").commit() is None


def test_a_record_holds_command_code_versions_cpu_and_threads(monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    record = provenance.record("keras-hta compare --seeds 0")
    assert record["command"] == "keras-hta compare --seeds 0"
    assert record["code"] == provenance.commit() and record["cpu"] == provenance.cpu()
    assert record["threads"]["TF_NUM_INTRAOP_THREADS"] == "3"
    assert record["versions"]["keras"] == importlib.metadata.version("keras")


def test_a_script_of_another_checkout_makes_the_record_dirty_and_named(tmp_path, monkeypatch):
    """A worktree's `python benchmarks/study.py`, with this tree's package installed in development mode, runs a
    script this tree's commit does not describe: the record says dirty and names the script. This tree's own
    scripts and a user's script are recorded as the commit says."""
    other = tmp_path / "worktree" / "benchmarks" / "study.py"
    other.parent.mkdir(parents=True)
    other.write_text((ROOT / "benchmarks" / "study.py").read_text())
    users = tmp_path / "train.py"
    users.write_text("")
    assert provenance.script_elsewhere(str(other)) == os.path.realpath(other)
    assert provenance.script_elsewhere(str(ROOT / "benchmarks" / "study.py")) is None
    assert provenance.script_elsewhere(str(users)) is None
    assert provenance.script_elsewhere(str(tmp_path / "worktree" / "benchmarks" / "gone.py")) is None
    if provenance.commit() is None:
        pytest.skip("needs a git checkout")
    monkeypatch.setattr("sys.argv", [str(other), "mnist1d-mlp"])
    code = provenance.record()["code"]
    assert code == {**provenance.commit(), "dirty": True, "script": os.path.realpath(other)}
    monkeypatch.setattr("sys.argv", [str(ROOT / "benchmarks" / "study.py"), "mnist1d-mlp"])
    assert provenance.record()["code"] == provenance.commit()
