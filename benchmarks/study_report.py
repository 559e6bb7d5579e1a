"""The study's verdict across data sets: paired tests, Holm's correction, minimum detectable differences.

Reads every `benchmarks/results/study-*/study.json` that `benchmarks/study.py`
wrote, collects the comparisons of the HTA-vs-SGD family (each HTA arm against
tuned SGD, and each control's HTA arm against its control) from all data sets,
and adjusts their paired t-test p-values together with Holm–Bonferroni. For each
data set it states the minimum detectable difference (MDE) of its design: the
true mean difference that the two-sided paired t-test detects with power 0.8,
at alpha 0.05 and at Holm's strictest level alpha/m (m the family's size),
using the median sd of the family's per-seed differences on that data set.
Writes `benchmarks/results/study-summary.{json,md}`.

Usage: python benchmarks/study_report.py
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

from common import table  # beside this file
from study import CONTROLS, accuracy

HERE = os.path.dirname(os.path.abspath(__file__))


def report(paths):
    from keras_hta.experiments import stats

    studies = {}
    for path in sorted(paths):
        state = json.load(open(path))
        if state.get("tests"):
            studies[os.path.basename(os.path.dirname(path)).removeprefix("study-")] = state
    family = [(name, t) for name, state in studies.items() for t in state["tests"] if t["family"]]
    adjusted = stats.holm([t["p_ttest"] for _, t in family])
    rows = [{"data": name, **t, "p_holm": p} for (name, t), p in zip(family, adjusted)]
    m = sum(np.isfinite(adjusted))
    designs = {}
    for name, state in studies.items():
        sds = [t["sd_diff"] for t in state["tests"] if t["family"] and t["sd_diff"] > 0]
        seeds = min(t["n"] for t in state["tests"] if t["family"])
        # No spread in any difference (every seed's runs equal): the design's MDE is undefined, not zero.
        defined = bool(sds) and seeds > 1
        sd = float(np.median(sds)) if sds else float("nan")
        mde = (lambda alpha: stats.paired_mde(sd, seeds, alpha=alpha) if defined else float("nan"))  # noqa: E731
        designs[name] = {"seeds": seeds, "median_sd_diff": sd, "mde_05": mde(0.05), "mde_holm": mde(0.05 / m),
                         "backend": state.get("backend")}
    return {"family_size": int(m), "designs": designs, "tests": rows}


def markdown(result, flags=""):
    from keras_hta.experiments.stats import format_p as p

    m = result["family_size"]
    lines = [f"Command: `python benchmarks/study_report.py{flags}`", "",
             f"Family: {m} paired comparisons (every HTA arm against tuned SGD, and each control's HTA arm against "
             "the control) over all data sets; Holm–Bonferroni adjusts their paired t-test p-values together.",
             "", "Design sensitivity: MDE = the true mean difference in test accuracy (points) that the two-sided "
             "paired t-test detects with power 0.8, at the median sd of the family's per-seed differences.", ""]
    lines += table(["data set", "backend", "seeds per arm", "median sd of differences", "MDE at alpha 0.05",
                    f"MDE at alpha 0.05/{m} (Holm's first step)"],
                   [[name, d["backend"], d["seeds"]] + [f"{d[k]:.2f}" if np.isfinite(d[k]) else "—"
                                                        for k in ("median_sd_diff", "mde_05", "mde_holm")]
                    for name, d in result["designs"].items()])
    lines += [""] + table(["data set", "arm − baseline", "seeds", "mean difference [95% CI]", "paired t-test p",
                           "Wilcoxon signed-rank p", "Holm-adjusted p (paired t)"],
                          [[t["data"], f"{t['arm']} − {t['baseline']}", t["n"],
                            f"{t['mean_diff']:+.2f} [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]", p(t["p_ttest"]),
                            p(t["p_wilcoxon"]), p(t["p_holm"])] for t in result["tests"]])
    return "\n".join(lines) + "\n"


PLATEAU = 0.3  # points on validation: SGD is at its plateau if twice the epochs gain less (issue #45)
HYPOTHESES = {
    "sgd": "baseline", "sgd_ema": "baseline", "sgd_constant": "constant learning rate",
    "sgd_2x": "control: same compute (2× epochs)", "sgd_decay": "control: HTA's zero-anchor decay",
    "sgd_pull": "control: HTA's init-anchor pull",
    "h1_paper_zeros": "1: paper's L, zero anchors", "h1_paper_init": "1: paper's L, init anchors",
    "h2_homotopy_init": "2: homotopy from L ≥ 1, init anchors", "h2_homotopy_zeros": "2: homotopy from L ≥ 1, zero anchors",
    "h3_elastic_split": "3: split batches, averaged", "hta_tuned": "L, anchor, split tuned",
    "h4_m3": "4: three twins", "h4_m4": "4: four twins", "h5_layers": "5: balanced layer split",
    "h5_random": "5: random split", "h6_long_final": "6: last L for ¾ of the run", "h7_ema": "7: HTA + EMA",
}


def _configuration(arm, state):
    """The tuned configuration of `arm` in words, from the values its best trial chose."""
    values = state["tuned"].get(arm, {}).get("values") or {}
    if "lr" in values:
        return f"lr {values['lr']:.3g}, wd {values['weight_decay']:.2g}"
    if arm.startswith("sgd"):
        epochs = len(state["finals"][arm][0]["val_curve"])
        return f"SGD's, {epochs} epochs" if arm == "sgd_2x" else "SGD's"
    if "l_start" in values:
        return f"L {values['l_start']:.3g} → {values['l_stop']:.2g}, {values['values']} values"
    if "l_a" in values:
        split = f"{values['split']} split; " if "split" in values else ""
        high, low = max(values["l_a"], values["l_b"]), min(values["l_a"], values["l_b"])
        return f"{values['anchor']}; {split}L {high:.2g} → {low:.2g}, {values['values']} values, {values['kind']}"
    return "(fixed)"


def results_table(data, state, summary):
    """RESULTS §7's table of one data set, and its line on HTA beyond the decay, from study.json and the summary."""
    from keras_hta.experiments.stats import format_p as p

    holm = {(t["arm"], t["baseline"]): t["p_holm"] for t in summary["tests"] if t["data"] == data}
    tests = {(t["arm"], t["baseline"]): t for t in state["tests"]}
    rows = []
    for arm, row in state["summary"].items():
        trial = f"{row['best_trial']} of {row['trials']}" if "trials" in row else "—"
        t = tests.get((arm, "sgd"))
        diff = f"{t['mean_diff']:+.2f} [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]" if t else "—"
        pt, pw = (p(t["p_ttest"]), p(t["p_wilcoxon"])) if t else ("—", "—")
        ph = p(holm[(arm, "sgd")]) if (arm, "sgd") in holm else "—"
        rows.append([arm, HYPOTHESES[arm], _configuration(arm, state), trial, accuracy(row), diff, pt, pw, ph,
                     f"{row['seconds']:.1f}"])
    lines = table(["arm", "hypothesis", "tuned configuration", "best trial", "test accuracy mean ± std",
                   "− SGD, points [95% CI]", "paired t p", "Wilcoxon p", "Holm p", "s/run"], rows)
    beyond = {"sgd_decay": "HTA beyond its decay", "sgd_pull": "HTA beyond its pull to the initial weights"}
    for control, arm in CONTROLS.items():
        what = beyond[control]
        t = tests.get((arm, control))
        if t:
            lines += ["", f"{what}: {arm} − {control} {t['mean_diff']:+.2f} points "
                          f"[{t['ci_low']:+.2f}, {t['ci_high']:+.2f}], paired t p {p(t['p_ttest'])}, Wilcoxon p "
                          f"{p(t['p_wilcoxon'])}, Holm p {p(holm[(arm, control)])}, {t['n']} seeds."]
    t = tests.get(("sgd_2x", "sgd"))
    if t and "val_mean_diff" in t:  # studies since the plateau check; earlier ones recorded no validation difference
        verdict = "below" if t["val_mean_diff"] < PLATEAU else "not below"
        lines += ["", f"Plateau check: sgd_2x − sgd on validation {t['val_mean_diff']:+.2f} points over {t['n']} "
                      f"seeds, {verdict} {PLATEAU} (SGD at its plateau: twice the epochs gain less)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"), help="the folder holding study-*/")
    args = parser.parse_args()
    paths = glob.glob(os.path.join(args.results, "study-*", "study.json"))
    if not paths:
        parser.error(f"argument --results holds no study-*/study.json. Received: --results {args.results}")
    from keras_hta.experiments import compare, write_atomic

    result = report(paths)
    compare.write_json_atomic(os.path.join(args.results, "study-summary.json"), result)
    default = os.path.abspath(args.results) == os.path.abspath(os.path.join(HERE, "results"))
    text = markdown(result, "" if default else f" --results {os.path.relpath(args.results)}")
    write_atomic(os.path.join(args.results, "study-summary.md"), lambda f: f.write(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
