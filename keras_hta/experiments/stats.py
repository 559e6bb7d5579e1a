"""Statistics of seeded runs: sample std, paired comparisons, power and Holm's correction.

Every arm of a study is run with the same seeds, and a seed gives every arm
the same initial weights and the same batches, so two arms are compared by
their per-seed differences (a paired design). Needs SciPy (the `experiments`
extra).

Example:

>>> import numpy as np
>>> from keras_hta.experiments import stats
>>> hta = np.array([91.2, 90.8, 92.0, 91.5, 90.9])
>>> sgd = np.array([90.9, 90.1, 91.8, 91.0, 90.7])
>>> row = stats.paired(hta, sgd)
>>> round(row["mean_diff"], 2), row["n"]
(0.38, 5)
>>> round(stats.paired_mde(0.5, 20), 2)  # points detectable with power 0.8 at sd 0.5, 20 seeds
0.33
"""

import numpy as np


def sample_std(values):
    """The sample standard deviation (ddof=1); NaN for fewer than two values."""
    values = np.asarray(values, dtype="float64")
    return float(values.std(ddof=1)) if values.size > 1 else float("nan")


def paired(a, b, confidence=0.95):
    """Compares `a` with `b`, matched element by element (seed by seed).

    Returns a dict: `n`, `mean_diff` (mean of a − b), `sd_diff` (its sample
    std), `ci_low`/`ci_high` (the t confidence interval of the mean
    difference), `p_ttest` (two-sided paired t-test) and `p_wilcoxon`
    (two-sided Wilcoxon signed-rank test, SciPy's default zero handling;
    NaN when every difference is zero).
    """
    from scipy import stats

    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Arguments `a` and `b` must be 1-D and of one length. Received: {a.shape} and {b.shape}")
    d = a - b
    n = d.size
    row = {"n": int(n), "mean_diff": float(d.mean()) if n else float("nan"), "sd_diff": sample_std(d)}
    if n < 2:
        return {**row, "ci_low": float("nan"), "ci_high": float("nan"), "p_ttest": float("nan"),
                "p_wilcoxon": float("nan")}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * row["sd_diff"] / np.sqrt(n)
    row["ci_low"], row["ci_high"] = row["mean_diff"] - half, row["mean_diff"] + half
    if row["sd_diff"] == 0:
        row["p_ttest"] = 1.0 if row["mean_diff"] == 0 else 0.0
    else:
        row["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
    row["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else float("nan")
    return row


def paired_power(diff, sd, n, alpha=0.05):
    """Power of the two-sided paired t-test at level `alpha` to detect a true mean difference `diff`."""
    from scipy import stats

    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = diff * np.sqrt(n) / sd
    # SciPy's noncentral t returns NaN for a lower tail below about 1e-300: count it as 0.
    return float(stats.nct.sf(critical, df, shift) + np.nan_to_num(stats.nct.cdf(-critical, df, shift)))


def paired_mde(sd, n, alpha=0.05, power=0.8):
    """The smallest true mean difference the two-sided paired t-test detects with `power`.

    Solves `paired_power(mde, sd, n, alpha) == power` exactly (noncentral t),
    for `n` pairs whose differences have standard deviation `sd`.
    """
    from scipy import optimize

    if n < 2 or not sd > 0:
        raise ValueError(f"paired_mde needs n >= 2 pairs and sd > 0. Received: n={n}, sd={sd}")
    high = sd
    while paired_power(high, sd, n, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda x: paired_power(x, sd, n, alpha) - power, 0.0, high, xtol=1e-12 * sd))


def format_p(p):
    """A p-value for a table: three decimals, "<0.001" below that, "—" when there is none."""
    return "—" if p is None or not np.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values, in the order given (NaN entries are left out of the family)."""
    p = np.asarray(pvalues, dtype="float64")
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
