"""The benchmark scripts run (timings are reported in benchmarks/, never asserted)."""

import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest
from conftest import benchmark_script, needs, run_bounded

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_step_time_script_writes_consistent_ratios(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--models", "cnn1d",
                          "--rounds", "1", "--steps", "3", "--no-memory", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env)
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


@pytest.mark.slow  # tunes and trains every arm: about a minute
def test_study_script_tunes_runs_and_reports_consistent_numbers(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "benchmarks" / "study.py"), "mnist1d-mlp", "--trials", "2", "--epochs", "1",
               "--seeds", "3", "--train-size", "256", "--arms", "sgd", "sgd_ema", "h1_paper_zeros", "h3_elastic_split",
               "sgd_2x", "sgd_decay", "--check-seeds", "2", "--out", str(tmp_path)]
    out = run_bounded(command, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((tmp_path / "study.json").read_text())
    # Every arm tunes its own learning rate and weight decay (sgd_2x takes SGD's); an HTA arm its own knobs too.
    assert set(state["tuned"]) == {"sgd", "sgd_ema", "h1_paper_zeros", "h3_elastic_split", "sgd_decay"}
    assert {"lr", "weight_decay"} <= set(state["tuned"]["h1_paper_zeros"]["values"]) and state["protocol"] == 2
    assert "l_a" in state["tuned"]["h3_elastic_split"]["values"]
    # Every trial is drawn, the first included: keras-tuner's default point
    # (each range's minimum, the first choice) is not the first trial.
    first = state["tuned"]["sgd"]["trials"][0]["values"]
    assert first["lr"] != 0.005 and first["weight_decay"] != 1e-5
    tuned = state["tuned"]["h3_elastic_split"]
    assert tuned["values"] == tuned["trials"][tuned["best"]]["values"]
    assert tuned["val_accuracy"] == max(t["val_accuracy"] for t in tuned["trials"])
    rows = state["summary"]
    accs = {arm: {r["seed"]: 100 * r["test_accuracy"] for r in state["finals"][arm]} for arm in rows}
    for arm, row in rows.items():
        values = list(accs[arm].values())
        assert row["acc_mean"] == pytest.approx(np.mean(values)) and len(values) == (2 if arm == "sgd_2x" else 3)
        assert row["acc_std"] == pytest.approx(np.std(values, ddof=1))
    sgd, hta = rows["sgd"]["err_mean"], rows["h3_elastic_split"]["err_mean"]
    assert rows["h3_elastic_split"]["roi_vs_sgd"] == pytest.approx(100 * (sgd - hta) / sgd)
    tests = {(t["arm"], t["baseline"]): t for t in state["tests"]}
    assert {k for k, t in tests.items() if t["family"]} == {("h1_paper_zeros", "sgd"), ("h3_elastic_split", "sgd"),
                                                          ("h1_paper_zeros", "sgd_decay")}
    diffs = [accs["h3_elastic_split"][s] - accs["sgd"][s] for s in (1, 2, 3)]  # paired by seed
    assert tests[("h3_elastic_split", "sgd")]["mean_diff"] == pytest.approx(np.mean(diffs))
    assert tests[("h3_elastic_split", "sgd")]["sd_diff"] == pytest.approx(np.std(diffs, ddof=1))
    # The plateau check (--check-seeds 2): sgd_2x on seeds 1-2, against SGD on the same seeds, on validation too.
    val = {arm: {r["seed"]: 100 * r["val_accuracy"] for r in state["finals"][arm]} for arm in ("sgd", "sgd_2x")}
    check = tests[("sgd_2x", "sgd")]
    assert check["n"] == 2 and check["mean_diff"] == pytest.approx(np.mean([accs["sgd_2x"][s] - accs["sgd"][s]
                                                                            for s in (1, 2)]))
    assert check["val_mean_diff"] == pytest.approx(np.mean([val["sgd_2x"][s] - val["sgd"][s] for s in (1, 2)]))
    # Resumable: a second call trains nothing new and reports the same table.
    again = run_bounded(command, capture_output=True, text=True, env=env)
    progress = [line for line in again.stdout.splitlines() if line.startswith(("tuning ", "  final "))]
    assert again.returncode == 0 and progress == []
    again_state = json.loads((tmp_path / "study.json").read_text())
    assert again_state["summary"] == rows
    assert again_state["pieces"] == state["pieces"] and len(state["pieces"]) == 1  # no work: no piece recorded
    # The report adjusts the family's paired t-test p-values together (Holm).
    report = run_bounded([sys.executable, str(ROOT / "benchmarks" / "study_report.py"), "--results", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert report.returncode == 2  # study.json is not under study-*/: one clear line
    assert "--results" in report.stderr and "Traceback" not in report.stderr
    (tmp_path / "study-mlp").mkdir()
    (tmp_path / "study.json").rename(tmp_path / "study-mlp" / "study.json")
    report = run_bounded([sys.executable, str(ROOT / "benchmarks" / "study_report.py"), "--results", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert report.returncode == 0, report.stderr[-2000:]
    summary = json.loads((tmp_path / "study-summary.json").read_text())
    family = [t for t in state["tests"] if t["family"]]
    p = sorted(t["p_ttest"] for t in family)
    assert summary["family_size"] == 3
    assert min(t["p_holm"] for t in summary["tests"]) == pytest.approx(min(1.0, 3 * p[0]))
    study_report = benchmark_script("study_report")
    line = f"Plateau check: sgd_2x − sgd on validation {check['val_mean_diff']:+.2f} points over 2 seeds, "
    assert line in study_report.results_table("mlp", state, summary)


def _tiny_image_folder(root, classes=3, train=8, test=4, size=32):
    """A CIFAR-10-shaped image folder (train/<class>/*.png, test/<class>/*.png): 32x32 noise around a colour of
    each class's own, so that a network learns something in one epoch."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, (classes, 3))
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                image = np.clip(colours[c] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(root / split / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.slow  # nine processes, each loading Keras
@pytest.mark.extras
def test_study_in_pieces_by_stop_after_equals_the_study_in_one_run(tmp_path):
    """The GPU command's pieces: `--stop-after` ends before the next unit (a trial, a final run) once one has run,
    and the same command continues; the pieces together tune and train exactly what one uninterrupted run does
    (CIFAR-10's path: an image folder, VGG11-BN at a given width, JAX)."""
    needs("jax", ": the GPU study runs on JAX")
    images = _tiny_image_folder(tmp_path / "images")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), KERAS_BACKEND="jax",
               KERAS_HTA_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, str(ROOT / "benchmarks" / "study.py"), "cifar10", "--data-dir", str(images),
               "--width", "0.0625", "--val-size", "3", "--trials", "2", "--epochs", "1", "--seeds", "2",
               "--arms", "sgd", "h1_paper_zeros", "--tuning-seeds", "1"]
    whole = run_bounded(command + ["--out", str(tmp_path / "whole")], capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    pieces = []
    for _ in range(12):  # 2 arms x 2 trials + 2 arms x 2 seeds = 8 units, one per piece
        piece = run_bounded(command + ["--out", str(tmp_path / "pieces"), "--stop-after", "0.001"],
                            capture_output=True, text=True, env=env)
        assert piece.returncode == 0, piece.stderr[-3000:]
        pieces.append(piece.stdout)
        if "Stopped by --stop-after" not in piece.stdout:
            break
    assert len(pieces) == 8, [p[-300:] for p in pieces]
    # The final runs go seed by seed, so that a study stopped part way has every arm on the same seeds.
    finals = [m.groups() for p in pieces for m in re.finditer(r"final (\S+) seed (\d+)", p)]
    assert finals == [("sgd", "1"), ("h1_paper_zeros", "1"), ("sgd", "2"), ("h1_paper_zeros", "2")]
    one, parts = (json.loads((tmp_path / name / "study.json").read_text()) for name in ("whole", "pieces"))
    assert one["tuning_seeds"] == parts["tuning_seeds"] == [1001]  # --tuning-seeds 1: the first tuning seed
    # Each piece records where its work came from (tuning trials included, which keras-tuner's files do not).
    assert len(one["pieces"]) == 1 and len(parts["pieces"]) == 8
    assert all(p["provenance"]["code"]["commit"] and "--stop-after" in p["provenance"]["command"]
               for p in parts["pieces"])
    for arm in ("sgd", "h1_paper_zeros"):
        assert parts["tuned"][arm] == one["tuned"][arm]  # every trial's values and score, and the best
        same = ("seed", "test_accuracy", "val_accuracy", "val_curve")
        assert [[r[k] for k in same] for r in parts["finals"][arm]] == [[r[k] for k in same] for r in one["finals"][arm]]
    assert [t["mean_diff"] for t in parts["tests"]] == [t["mean_diff"] for t in one["tests"]]


def test_study_report_gives_no_mde_where_no_difference_varies(tmp_path):
    """A study whose paired differences are all equal (tiny runs can tie on every seed) has no spread to size a
    design by: its MDE is reported as undefined, not raised on, and the Holm p-values still come out."""
    study_report = benchmark_script("study_report")
    tie = {"n": 3, "mean_diff": 0.0, "sd_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_ttest": 1.0,
           "p_wilcoxon": float("nan")}
    spread = {**tie, "mean_diff": 0.5, "sd_diff": 1.0, "ci_low": -2.0, "ci_high": 3.0, "p_ttest": 0.47}
    for name, test in (("tied", tie), ("spread", spread)):
        (tmp_path / f"study-{name}").mkdir()
        state = {"backend": "jax", "tests": [{"arm": "h1_paper_zeros", "baseline": "sgd", "family": True, **test}]}
        (tmp_path / f"study-{name}" / "study.json").write_text(json.dumps(state))
    result = study_report.report(sorted(str(p) for p in tmp_path.glob("study-*/study.json")))
    assert np.isnan(result["designs"]["tied"]["mde_05"]) and np.isnan(result["designs"]["tied"]["mde_holm"])
    from keras_hta.experiments import stats

    assert result["designs"]["spread"]["mde_05"] == stats.paired_mde(1.0, 3)
    assert {t["data"]: t["p_holm"] for t in result["tests"]} == dict(zip(("spread", "tied"), stats.holm([0.47, 1.0])))
    assert "| tied | jax | 3 | — | — | — |" in study_report.markdown(result)


@pytest.mark.parametrize("flags, named", [(["--out", "FILE/x"], "--out"), (["--trials", "0"], "--trials"),
                                          (["--out", "OLD"], "earlier protocol"),
                                          (["--tuning-seeds", "4"], "--tuning-seeds"),
                                          (["--check-seeds", "0"], "--check-seeds"),
                                          (["--out", "TUNED", "--tuning-seeds", "1"], "--tuning-seeds 1")])
def test_study_script_refuses_bad_input_in_one_line(tmp_path, flags, named):
    (tmp_path / "FILE").write_text("")
    (tmp_path / "OLD").mkdir()  # a study of the earlier protocol: its study.json records none
    (tmp_path / "OLD" / "study.json").write_text(json.dumps({"tuned": {}, "finals": {}}))
    (tmp_path / "TUNED").mkdir()  # a study tuned on the 3 tuning seeds, before the seeds were recorded
    (tmp_path / "TUNED" / "study.json").write_text(json.dumps(
        {"tuned": {"sgd": {"values": {}}}, "finals": {}, "protocol": 2, "backend": "tensorflow"}))
    flags = [f.replace("OLD", str(tmp_path / "OLD")).replace("TUNED", str(tmp_path / "TUNED")) for f in flags]
    flags = [f.replace("FILE", str(tmp_path / "FILE")) for f in flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, str(ROOT / "benchmarks" / "study.py"), "mnist1d-mlp", *flags],
                         capture_output=True, text=True, env=env)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and named in last and "Traceback" not in out.stderr


def _without_loss():
    """The controls' tests: the study module, 64 examples, a loss that is 0 (so only the pull or decay moves the
    weights), and a fresh two-layer network each call."""
    import keras

    study = benchmark_script("study")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.zeros((64, 4), "float32")

    def zero(y_true, y_pred):
        return 0.0 * keras.ops.mean(y_pred)

    def network():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(4)])

    return study, x, y, zero, network


def test_sgd_decay_applies_the_decay_hta_zero_anchors_add():
    """HTA with zero anchors and no loss shrinks every weight by 1/(1 + lr·L) per step; sgd_decay by 1 − lr·L."""
    import keras

    import keras_hta as hta

    study, x, y, zero, network = _without_loss()

    lr = 0.1
    schedule = study.paper_schedule(6)  # 0.01 for epoch 0, 0.009 for epoch 1, ...
    shrink = np.prod([(1 - lr * schedule(e)) ** 8 for e in range(3)])
    model = network()
    before = np.linalg.norm(model.weights[0].numpy())
    model.compile(study.decayed_sgd(lr, momentum=0.9), loss=zero)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[study.decay_callback(schedule)])
    assert np.linalg.norm(model.weights[0].numpy()) / before == pytest.approx(shrink, rel=1e-6)
    model = hta.HomotopyModel.from_model(network(), anchor="zeros")
    model.compile(keras.optimizers.SGD(lr, momentum=0.9), loss=zero)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)])
    exact = np.prod([(1 / (1 + lr * schedule(e))) ** 8 for e in range(3)])
    ratio = np.linalg.norm(model.network.weights[0].numpy()) / before
    # Equal to the uncoupled closed form up to the twins' coupling, O(L) relative: 4e-6 here;
    # the decay itself, 1 - ratio, is 0.0217.
    assert ratio == pytest.approx(exact, rel=1e-5)
    assert (1 - ratio) == pytest.approx(1 - shrink, rel=2e-3)


def test_sgd_pull_applies_the_pull_toward_the_initial_weights_that_hta_init_anchors_add():
    """With no loss, HTA's "init" anchors pull each weight's distance from its initial value by 1/(1 + lr·L) per
    step; sgd_pull by 1 − lr·L, toward the weights it was built with."""
    import keras

    import keras_hta as hta

    study, x, y, zero, network = _without_loss()

    lr, delta = 0.1, 0.5
    schedule = study.paper_schedule(6)
    model = network()
    initial = model.weights[0].numpy()
    model.compile(study.decayed_sgd(lr, momentum=0.9, toward_initial=True), loss=zero)
    model.optimizer.build(model.trainable_variables)  # w₀: the weights it was built with
    model.weights[0].assign(initial + delta)  # away from w₀
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[study.decay_callback(schedule)])
    pull = np.prod([(1 - lr * schedule(e)) ** 8 for e in range(3)])
    np.testing.assert_allclose(model.weights[0].numpy() - initial, delta * pull, rtol=1e-5)
    model = hta.HomotopyModel.from_model(network(), anchor="init")  # θ̃: the weights at construction
    for k in range(2):
        model.twin(k).set_weights([w + delta for w in model.twin(k).get_weights()])
    model.compile(keras.optimizers.SGD(lr, momentum=0.9), loss=zero)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[hta.HomotopyScheduler(schedule)])
    exact = np.prod([(1 / (1 + lr * schedule(e))) ** 8 for e in range(3)])
    ratio = np.linalg.norm(model.network.weights[0].numpy() - initial) / np.linalg.norm(np.full(initial.shape, delta))
    # As for the decay: the uncoupled closed form up to the twins' coupling, O(L) relative; the pull, 1 − ratio,
    # equal to sgd_pull's to first order in lr·L.
    assert ratio == pytest.approx(exact, rel=1e-5)
    assert (1 - ratio) == pytest.approx(1 - pull, rel=2e-3)


def test_importing_a_benchmark_script_changes_no_environment_variable():
    """Scripts set what they need (their backend, TensorFlow's threads) when they run, in `main()` or in their
    subprocesses' environment: importing one, as these tests do, leaves every later test and subprocess as it was."""
    # A fresh process, so that no module is cached from an earlier test, with none of the variables a script
    # might set by default (TensorFlow's log level among them) already set.
    # The command line's module comes after Keras, whose TensorFlow sets TF_CPP_MIN_LOG_LEVEL itself on import.
    names = [path.stem for path in sorted((ROOT / "benchmarks").glob("*.py"))] + ["keras", "keras_hta.experiments.cli"]
    code = ("import importlib, os, sys\n"
            f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]\n"
            "for name in sys.argv[1:]:\n"
            "    before = dict(os.environ)\n"
            "    importlib.import_module(name)\n"
            "    if name == 'keras':\n"
            "        continue\n"
            "    changed = sorted(set(os.environ.items()) ^ set(before.items()))\n"
            "    assert not changed, f'importing {name} changed the environment: {changed}'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "XLA_"))}
    out = run_bounded([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_cost_tables_of_readme_and_results_render_from_their_json():
    """README's memory table and RESULTS §4's tables are what the scripts render from the committed JSON."""
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    twin_cost = benchmark_script("twin_cost")
    saved = json.loads((ROOT / "benchmarks" / "results" / "twin_cost.json").read_text())
    assert twin_cost.render_memory_summary(saved) in readme
    for table in twin_cost.render(saved).strip().split("\n\n"):
        assert table.strip() in results
    # The step in one module (train_step.py) against the commit before it: its own run, rendered alike.
    for folder in ("step-refactor", "step-refactor-torch"):
        refactor = json.loads((ROOT / "benchmarks" / "results" / folder / "twin_cost.json").read_text())
        assert twin_cost.render(refactor).strip() in results, folder
    step_time = benchmark_script("step_time")
    rows = json.loads((ROOT / "benchmarks" / "results" / "step_time.json").read_text())["rows"]
    assert step_time.render(rows).strip() in results


def test_twin_cost_measures_every_case_and_renders_what_it_measured(tmp_path):
    """The memory cases on this backend, counted; the renderer's ratios are those counts."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, str(ROOT / "benchmarks" / "twin_cost.py"), "--memory", "--backends",
                          "tensorflow", "--out", str(tmp_path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((tmp_path / "twin_cost.json").read_text())
    rows = saved["memory"]["memory"]
    assert {(r["case"], r["anchor"]) for r in rows} == {(c, a) for c in ("vgg11/8", "frozen-trunk", "lora")
                                                        for a in ("zeros", "init")}
    for r in rows:
        assert r["ratio"] == pytest.approx(r["hta_mib"] / r["plain_mib"])
    vgg = {r["anchor"]: r["ratio"] for r in rows if r["case"] == "vgg11/8"}
    assert vgg["zeros"] == pytest.approx(2.0, abs=1e-5)  # everything trains: twice plain, up to L and the epoch
    assert saved["memory"]["versions"]["keras"] and saved["memory"]["cpus"] >= 1


def test_table1_of_readme_and_results_renders_from_its_json():
    """Table 1 (RESULTS §1, README) and the anchor study are `render_table1` of the committed JSON."""
    from keras_hta.experiments import nonconvex

    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    table1 = json.loads((ROOT / "benchmarks" / "results" / "nonconvex.json").read_text())
    assert nonconvex.render_table1(table1).strip() in results
    assert nonconvex.render_table1(table1).strip() in readme
    anchors = json.loads((ROOT / "benchmarks" / "results" / "nonconvex_anchors.json").read_text())
    assert nonconvex.render_table1(anchors).strip() in results
    for result in (table1, anchors):  # what produced them
        assert result["provenance"]["command"].startswith("keras-hta nonconvex")
        assert {"keras", "numpy", "scipy"} <= set(result["provenance"]["versions"])


def test_the_main_jobs_tables_in_results_render_from_their_json():
    """RESULTS §3's tables of `keras-hta compare` and of its environments are rendered from the committed runs."""
    from keras_hta.experiments import compare

    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    saved = json.loads((ROOT / "benchmarks" / "results" / "compare-default" / "results.json").read_text())
    rendered = compare.markdown(saved["config"], saved["summary"], saved["command"], saved["runs"])
    tables = [block for block in rendered.split("\n\n") if block.startswith(("| Model", "- HTA"))]
    assert len(tables) == 3 and all(table.strip() in results for table in tables)  # and the paired sentence
    main_job_env = benchmark_script("main_job_env")
    table = main_job_env.render(str(ROOT / "benchmarks" / "results" / "main-job-env"))
    assert table.count("\n") == 8 and table.strip() in results  # 2 settings x 3 environments
    for run in saved["runs"]:
        assert run["provenance"]["threads"]["TF_NUM_INTRAOP_THREADS"] == "1"
        code = run["provenance"]["code"]  # RESULTS names the commit and the CPU the runs record, a clean tree
        assert f"at commit {code['commit'][:7]}" in " ".join(results.split()) and not code["dirty"]
        assert run["provenance"]["cpu"]["model"] in results


@pytest.mark.extras
def test_torch_profile_takes_each_ratio_within_a_round_and_renders_what_it_measured(tmp_path):
    """One round on PyTorch: the fused pass is checked equal to the sequential one inside the script; each ratio
    is its parts' per-round times divided; the Markdown written is `render` of the JSON written."""
    needs("torch", " beside TensorFlow")
    torch_profile = benchmark_script("torch_profile")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), KERAS_BACKEND="torch")
    path = tmp_path / "tp.json"
    out = run_bounded([sys.executable, str(ROOT / "benchmarks" / "torch_profile.py"), "--rounds", "2", "--steps", "1",
                       "--out", str(path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads(path.read_text())
    times = saved["seconds"]
    assert all(len(values) == 2 for values in times.values())
    for name, (top, bottom) in torch_profile.RATIOS.items():
        per_round = [sum(times[k][r] for k in top) / sum(times[k][r] for k in bottom) for r in range(2)]
        assert saved["derived"][name]["median"] == pytest.approx(np.median(per_round)), name
        assert saved["derived"][name]["min"] == pytest.approx(min(per_round)), name
    assert (tmp_path / "tp.md").read_text() == torch_profile.render(saved)
    assert saved["provenance"]["versions"]["torch"] and "--rounds 2" in saved["provenance"]["command"]


@pytest.mark.parametrize("argv, env_backend, named", [
    (["--rounds", "0"], "torch", "--rounds 0"),
    (["--steps", "-1"], "torch", "--steps -1"),
    ([], "jax", "KERAS_BACKEND=jax"),
])
def test_torch_profile_refuses_bad_input_in_one_line(tmp_path, argv, env_backend, named):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), KERAS_BACKEND=env_backend)
    out = run_bounded([sys.executable, str(ROOT / "benchmarks" / "torch_profile.py"), *argv,
                       "--out", str(tmp_path / "tp.json")], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and named in out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and not (tmp_path / "tp.json").exists()


def test_the_pytorch_profile_renders_from_its_json():
    """RESULTS §4's profile of PyTorch's step is `torch_profile.render` of the committed JSON."""
    torch_profile = benchmark_script("torch_profile")
    saved = json.loads((ROOT / "benchmarks" / "results" / "torch_profile.json").read_text())
    for table in torch_profile.render(saved).strip().split("\n\n"):
        assert table.strip() in (ROOT / "benchmarks" / "RESULTS.md").read_text()


def test_the_cost_of_going_wide_renders_from_its_json():
    """RESULTS §4's tables of all-reduced bytes and 2 processes against 1 are `wide_cost.render` of the JSON."""
    wide_cost = benchmark_script("wide_cost")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    saved = json.loads((ROOT / "benchmarks" / "results" / "wide_cost.json").read_text())
    assert wide_cost.render(saved).strip() in results
    cases = saved["cases"]
    for twin_batch in ("hta", "hta_split"):  # every twin's gradient: twice plain's, full or split twins
        assert cases[f"{twin_batch}-1"]["gradient_bytes"] == 2 * cases["plain-1"]["gradient_bytes"]
    assert saved["vgg11_bn"]["hta"] == 2 * saved["vgg11_bn"]["plain"]
    # The ring model: 2 (N - 1) / N x bytes / bandwidth, here against its value for 8 links at 1 GB/s.
    assert wide_cost.ring_ms(1e9, 8, 1e9) == pytest.approx(1e3 * 2 * 7 / 8)
    assert saved["provenance"]["command"].startswith("wide_cost.py") and "jax" in saved["provenance"]["versions"]


def test_the_accuracy_tables_of_results_render_from_their_json():
    """RESULTS §5's tables (MNIST-1D and CIFAR-10) are `accuracy.render` of the committed runs."""
    accuracy = benchmark_script("accuracy")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert accuracy.render(accuracy.MNIST1D).strip() in results
    assert accuracy.render(accuracy.CIFAR, seconds=True).strip() in results


def test_the_study_tables_of_results_render_from_their_json():
    """RESULTS §7's tables (one per data set, the HTA-beyond-decay lines, the design's MDE) render from the JSON."""
    study_report = benchmark_script("study_report")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    folder = ROOT / "benchmarks" / "results"
    summary = json.loads((folder / "study-summary.json").read_text())
    assert summary == study_report.report(sorted(str(p) for p in folder.glob("study-*/study.json")))
    for data in ("mnist1d-cnn", "mnist1d-mlp", "cifar10"):
        state = json.loads((folder / f"study-{data}" / "study.json").read_text())
        for part in study_report.results_table(data, state, summary).strip().split("\n\n"):
            assert part.strip() in results, (data, part[:200])
    design = next(b for b in study_report.markdown(summary).split("\n\n") if b.startswith("| data set | backend"))
    assert design.strip() in results
    # Protocol 2's studies, their own family: benchmarks/results/protocol2/
    folder = folder / "protocol2"
    summary = json.loads((folder / "study-summary.json").read_text())
    assert summary == study_report.report(sorted(str(p) for p in folder.glob("study-*/study.json")))
    state = json.loads((folder / "study-mnist1d-mlp" / "study.json").read_text())
    assert state["protocol"] == 2 and all(len(runs) >= 100 for runs in state["finals"].values())
    for part in study_report.results_table("mnist1d-mlp", state, summary).strip().split("\n\n"):
        assert part.strip() in results, part[:200]
    design = next(b for b in study_report.markdown(summary).split("\n\n") if b.startswith("| data set | backend"))
    assert design.strip() in results


def _rendered_results():
    """Every table the scripts render from the committed results JSON, as one text."""
    from keras_hta.experiments import compare, nonconvex

    folder = ROOT / "benchmarks" / "results"
    load = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    accuracy, study_report = benchmark_script("accuracy"), benchmark_script("study_report")
    twin_cost, saved = benchmark_script("twin_cost"), load("compare-default/results.json")
    summary = load("study-summary.json")
    texts = [nonconvex.render_table1(load("nonconvex.json")), accuracy.render(accuracy.MNIST1D),
             accuracy.render(accuracy.CIFAR, seconds=True), study_report.markdown(summary),
             benchmark_script("step_time").render(load("step_time.json")["rows"]),
             twin_cost.render(load("twin_cost.json")), twin_cost.render_memory_summary(load("twin_cost.json")),
             twin_cost.render(load("step-refactor/twin_cost.json")),
             twin_cost.render(load("step-refactor-torch/twin_cost.json")),
             benchmark_script("wide_cost").render(load("wide_cost.json")),
             benchmark_script("torch_profile").render(load("torch_profile.json")),
             benchmark_script("main_job_env").render(str(folder / "main-job-env")),
             compare.markdown(saved["config"], saved["summary"], saved["command"], saved["runs"])]
    texts += [study_report.results_table(d, load(f"study-{d}/study.json"), summary)
              for d in ("mnist1d-cnn", "mnist1d-mlp", "cifar10")]
    protocol2 = load("protocol2/study-summary.json")
    texts += [study_report.markdown(protocol2),
              study_report.results_table("mnist1d-mlp", load("protocol2/study-mnist1d-mlp/study.json"), protocol2)]
    return "\n".join(texts).replace("−", "-")


def test_every_figure_of_the_readme_results_table_is_in_a_rendered_table():
    """README's "Results so far": every measured figure (a decimal, or an integer of 3+ digits) appears, as a
    whole number, in a table rendered from the committed JSON; the paper's own figures are the only others."""
    import re

    rendered = _rendered_results()
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Results so far"):readme.index("\nTable 1 (")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| experiment")]
    assert len(rows) >= 12
    papers = {"0.4"}  # the paper's smallest gain, quoted for comparison
    checked = 0
    for row in rows:
        measured = row.rstrip(" |").split(" | ")[-1]
        for figure in re.findall(r"(?<![\w.])[−+-]?\d[\d,]*\.\d+(?![\w.])|(?<![\w.])\d{3,}(?![\w.])", measured):
            number = figure.replace("−", "-").lstrip("+-")
            if number in papers:
                continue
            assert re.search(r"(?<![\d.])" + re.escape(number) + r"(?!\d)", rendered), (figure, row[:80])
            checked += 1
    assert checked > 100


def test_the_mnist1d_grid_table_renders_from_its_json():
    """RESULTS §3's grid of HTA settings is `mnist1d_grid.render` of the committed runs, all with --threads 1."""
    grid = benchmark_script("mnist1d_grid")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert grid.render().strip() in results
    for name, flags, _ in grid.RUNS:
        saved = json.loads((ROOT / "benchmarks" / "results" / f"mnist1d-{name}" / "results.json").read_text())
        assert all(run["provenance"]["threads"]["TF_NUM_INTRAOP_THREADS"] == "1" for run in saved["runs"]), name
        assert saved["command"].endswith(" ".join(flags)), name


# What counts as a figure in the prose of README.md and benchmarks/RESULTS.md (test below): a decimal number, or an
# integer directly followed by a unit of measure, or an integer of 3+ digits that counts no named thing. Not figures:
# versions (v0.4, 3.15.1), dates, section, table and issue numbers, exit codes, code (fenced or in backticks), link
# targets, and integers that count things (5 seeds, 4,096 images, 1296 starts).
_UNIT = r"(?=\s?(?:%|×|x\b|s\b|ms\b|µs\b|MB\b|GB\b|KB\b|GiB\b|MiB\b|minutes?\b|hours?\b|points?\b|images/s\b))"
_COUNTED = ("images", "examples", "starts", "seeds", "trials", "runs", "epochs", "steps", "weights", "parameters",
            "variables", "lines", "tests", "bytes", "train", "training", "validation", "test", "of", "to", "and",
            "passed", "skipped", "failed", "characters", "rows", "files", "classes", "channels", "filters", "units")
_NUMBER = re.compile(r"(?<![\w.§#/-])[−+±-]?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w.]*\d)(?![\w/-])")
_NOT_PROSE = re.compile(r"`[^`]*`|\]\([^)]*\)|https?://\S+|\b(?:v|Python |Keras |keras-hta |keras |NumPy |numpy |"
                        r"TensorFlow |tensorflow(?:-cpu)? |JAX |jax |PyTorch |torch |SciPy |scipy |CPython |Pillow |"
                        r"keras-hub |keras-tuner |mnist1d |files of |Table |section |issue |issues |exit |n = )"
                        r"[\d.,/–-]+|\d{4}-\d{2}-\d{2}|§[\d.]+")


def _more_rendered_results():
    """The rendered tables that the figure test of README's results table does not read."""
    from keras_hta.experiments import compare, nonconvex

    folder = ROOT / "benchmarks" / "results"
    load = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    check = load("cifar10-vgg11-w0.125-2ep/results.json")
    return "\n".join([nonconvex.render_table1(load("nonconvex_anchors.json")), benchmark_script("mnist1d_grid").render(),
                      benchmark_script("pipeline_speed").render(load("pipeline_speed.json")),
                      compare.markdown(check["config"], check["summary"], check["command"], check["runs"])])


def prose_figures(text):
    """(line number, figure as written, its value, its decimals) for every figure of `text`'s prose (see above)."""
    in_code = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code or line.startswith("    ") or line.lstrip().startswith((">>> ", "... ")):  # code
            continue
        prose = _NOT_PROSE.sub(" ", line)
        for m in _NUMBER.finditer(prose):
            whole, decimals = m.group(1), m.group(2) or ""
            after = prose[m.end():].lstrip()
            if not decimals and not re.match(_UNIT, prose[m.end():]):
                if len(whole.replace(",", "")) < 3 or after.split(" ")[0].strip(",;:.()") in _COUNTED:
                    continue
                if re.match(r"(?:19|20)\d\d\b", whole):  # a year
                    continue
            value = float((whole + decimals).replace(",", ""))
            yield number, m.group(0), value, len(decimals) - 1 if decimals else 0


def rendered_numbers(text):
    """Every number of the rendered tables as written (signs and thousands separators dropped: the prose says
    'below' or 'loses')."""
    return {n.replace(",", "") for n in re.findall(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", text)}


def accounted(written, decimals, rendered):
    """True when the figure `written` is a rendered number: as written, or, with 3+ significant digits, that number
    rounded to the decimals written (63.2 for 63.19; 0.4 must be written 0.4 somewhere)."""
    figure = written.lstrip("−+±-").replace(",", "")
    if figure in rendered:
        return True
    if len(figure.replace(".", "").lstrip("0")) < 3:
        return False
    return any(round(float(n), decimals) == float(figure) for n in rendered)


def stated_constants():
    """benchmarks/constants.toml: the figures the prose may state that no results JSON holds, each with its source."""
    import tomllib

    return tomllib.loads((ROOT / "benchmarks" / "constants.toml").read_text())["figure"]


def test_what_counts_as_a_figure_in_the_prose():
    text = "\n".join([
        "Keras 3.15.1, keras-hta v0.4 and files of 0.3 on 2026-12-07 (§4.1, Table 2, issue #45, exit 130):",
        "5 seeds, 4,096 images, 1296 starts and `--lr 0.05` in code;",
        "HTA 87.84 ± 2.37% in 5.3 s, −0.28 points, 1,224 wins, 2 × the memory, 624 s.",
        "```", "12.34 in a code block", "```", ">>> x = [91.2]",
    ])
    assert [(line, written) for line, written, _, _ in prose_figures(text)] == [
        (3, "87.84"), (3, "2.37"), (3, "5.3"), (3, "−0.28"), (3, "1,224"), (3, "2"), (3, "624")]
    rendered = rendered_numbers("| 87.84% | 1,224 | 0.874 | 63.19% |")
    assert accounted("87.84", 2, rendered) and accounted("1,224", 0, rendered) and accounted("63.2", 1, rendered)
    assert accounted("0.874", 3, rendered) and not accounted("0.9", 1, rendered)  # 2 digits: only as written
    assert not accounted("63.3", 1, rendered)


def test_every_stated_constant_names_its_source_and_a_repository_source_holds_it():
    for entry in stated_constants():
        assert set(entry) == {"value", "what", "source"} and entry["what"] and entry["source"], entry
        path = ROOT / entry["source"].split(" ")[0].split(":")[0]
        if entry["source"].startswith(("keras_hta/", "benchmarks/", "examples/")):
            assert path.is_file(), entry
            assert entry["value"] in path.read_text(), entry


def test_every_figure_in_the_prose_of_readme_results_and_the_harness_docstrings_is_rendered_or_stated():
    """A figure in README.md, benchmarks/RESULTS.md or a docstring of the harness (keras_hta/experiments,
    benchmarks/; outside code and examples) is a number some table rendered from the
    committed results JSON holds (to the decimals the prose gives: 63.2 for 63.19) or one of benchmarks/constants.toml's
    stated constants (hyperparameters, the paper's figures, closed forms)."""
    import ast

    rendered = rendered_numbers(_rendered_results() + "\n" + _more_rendered_results())
    constants = {c["value"] for c in stated_constants()}
    texts = [(name, (ROOT / name).read_text()) for name in ("README.md", "benchmarks/RESULTS.md")]
    for path in sorted((ROOT / "keras_hta" / "experiments").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node, clean=False):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'name', 'module')} docstring"
                texts.append((where, ast.get_docstring(node, clean=False)))
    unaccounted, checked = [], 0
    for name, text in texts:
        for line, written, _, decimals in prose_figures(text):
            checked += 1
            if written.lstrip("−+±-") not in constants and not accounted(written, decimals, rendered):
                unaccounted.append(f"{name}:{line}: {written}")
    assert checked > 1000  # README and RESULTS hold over 1,500 today
    assert not unaccounted, f"{len(unaccounted)} figures neither rendered nor stated:\n" + "\n".join(unaccounted)


# Results files made before their scripts recorded where a run came from; each is to be rerun (issue #45) and
# leaves this list when it is. RESULTS says so where it quotes them.
PREDATES_PROVENANCE = {
    "step_time.json", "twin_cost.json", "torch_profile.json",
    "wide_cost.json", "pipeline_speed.json", "study-cifar10/study.json", "study-mnist1d-cnn/study.json",
    "study-mnist1d-mlp/study.json",
    "protocol2/study-cifar10/study.json",  # in progress: its first pieces ran code without the piece record
}
DERIVED = {"study-summary.json", "protocol2/study-summary.json"}  # study_report's reading of the study.json files


def _provenance_blocks(value):
    """Every `provenance` block in a results file's JSON, however deep."""
    if isinstance(value, dict):
        return ([value["provenance"]] if isinstance(value.get("provenance"), dict) else []) + [
            block for key, item in value.items() if key != "provenance" for block in _provenance_blocks(item)]
    if isinstance(value, list):
        return [block for item in value for block in _provenance_blocks(item)]
    return []


def test_every_results_file_records_the_commit_and_the_cpu_that_made_it():
    """Each committed results JSON (keras-tuner's own trial files aside) carries at least one provenance block,
    and each block names a commit, whether the tree was dirty, the CPU's model and vector sets, the versions,
    the backend (None where one script drives several, each row naming its own) and the threads; the files listed as predating it are exactly those that still lack it."""
    import subprocess

    results = ROOT / "benchmarks" / "results"
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "benchmarks/results"], capture_output=True,
                            text=True, check=True).stdout.split()
    files = [pathlib.Path(p).relative_to("benchmarks/results").as_posix() for p in listed
             if p.endswith(".json") and "/tuning/" not in p]
    lacking = set()
    for name in files:
        if name in DERIVED:
            continue
        blocks = _provenance_blocks(json.loads((results / name).read_text()))
        complete = [b for b in blocks if re.fullmatch(r"[0-9a-f]{40}", str((b.get("code") or {}).get("commit")))
                    and isinstance(b["code"].get("dirty"), bool) and (b.get("cpu") or {}).get("model")
                    and "vector" in b["cpu"] and b.get("versions") and "backend" in b and "threads" in b]
        if not blocks or len(complete) < len(blocks):
            lacking.add(name)
    assert lacking == PREDATES_PROVENANCE
    assert DERIVED <= set(files)
