"""The study's statistics against their definitions: sample std, paired tests, power, Holm."""

import statistics

import numpy as np
import pytest

pytest.importorskip("scipy")
from scipy import stats as sps  # noqa: E402

from keras_hta.experiments import stats  # noqa: E402

pytestmark = pytest.mark.harness


def test_the_module_example_runs_as_written():
    import doctest

    result = doctest.testmod(stats)
    assert result.attempted >= 6 and result.failed == 0


def test_sample_std_is_the_n_minus_1_estimator():
    values = [91.2, 90.8, 92.0, 91.5, 90.9, 89.7]
    assert stats.sample_std(values) == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert np.isnan(stats.sample_std([1.0]))


def test_paired_statistics_follow_their_closed_forms():
    rng = np.random.default_rng(0)
    b = rng.normal(90, 1.5, size=12)
    a = b + rng.normal(0.4, 0.6, size=12)
    row = stats.paired(a, b)
    d = a - b
    se = d.std(ddof=1) / np.sqrt(12)
    t = d.mean() / se
    assert row["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
    assert row["p_ttest"] == pytest.approx(2 * sps.t.sf(abs(t), 11), rel=1e-9)
    half = sps.t.ppf(0.975, 11) * se
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    # The interval excludes 0 exactly when the paired t-test rejects at 0.05.
    assert (row["ci_low"] > 0 or row["ci_high"] < 0) == (row["p_ttest"] < 0.05)


def test_wilcoxon_gives_the_exact_sign_rank_probability():
    # Five differences, all positive: the exact two-sided p is 2 / 2**5.
    row = stats.paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.2, 2.1, 2.7, 3.3])
    assert row["p_wilcoxon"] == pytest.approx(2 / 32, rel=1e-12)
    same = stats.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["p_ttest"] == 1.0 and np.isnan(same["p_wilcoxon"])


def test_paired_mde_has_the_stated_power_by_simulation():
    sd, n = 1.3, 20
    mde = stats.paired_mde(sd, n)
    assert stats.paired_power(mde, sd, n) == pytest.approx(0.8, abs=1e-9)
    rng = np.random.default_rng(1)
    trials = 20000
    d = rng.normal(mde, sd, size=(trials, n))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    rejected = np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1))
    assert rejected == pytest.approx(0.8, abs=4 * np.sqrt(0.8 * 0.2 / trials))  # 4 binomial std: 0.011


def test_paired_mde_tends_to_the_normal_approximation_and_grows_with_the_level():
    n, sd = 5000, 2.0
    normal = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * sd / np.sqrt(n)
    assert stats.paired_mde(sd, n) == pytest.approx(normal, rel=1e-3)
    assert stats.paired_mde(sd, 30, alpha=0.05 / 10) > stats.paired_mde(sd, 30) > stats.paired_mde(sd, 60)
    with pytest.raises(ValueError, match="n >= 2"):
        stats.paired_mde(1.0, 1)


def test_holm_matches_the_step_down_procedure():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(2)
    for _ in range(200):
        p = rng.uniform(0, 0.1, size=rng.integers(1, 9))
        adjusted = np.array(stats.holm(p))
        for alpha in (0.01, 0.05, 0.1):
            # Holm: reject in increasing order while p_(k) <= alpha / (m - k), then stop.
            rejected = np.zeros(p.size, bool)
            for k, i in enumerate(np.argsort(p)):
                if p[i] > alpha / (p.size - k):
                    break
                rejected[i] = True
            assert np.array_equal(adjusted <= alpha, rejected)
    with_nan = stats.holm([0.02, float("nan"), 0.01])
    assert with_nan[0] == pytest.approx(0.02) and np.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.02)
