"""Every statistic a verdict rests on, pinned on small fixed inputs to values computed independently:
scipy.stats (t, ttest_1samp), closed forms written out here, or numpy's percentile of resamples drawn
here with the same generator (docs/theory.md §11)."""

import math

import numpy as np
import pytest
from scipy import stats as st

from lintheory.core import stats

V4 = np.array([1.0, 2.0, 4.0, 7.0])  # mean 3.5, sample sd sqrt(7)


# --- seed_ci: the t-interval over seeds -------------------------------------------------------


def test_seed_ci_is_the_student_t_interval_with_n_minus_1_degrees_of_freedom():
  """mean ± t_{0.975, n−1} · s / √n, s with ddof = 1; t_{0.975, 3} = 3.182446 from a printed table."""
  lo, hi = stats.seed_ci(V4)
  half = 3.182446305 * math.sqrt(7.0) / 2.0
  assert (lo, hi) == pytest.approx((3.5 - half, 3.5 + half), rel=1e-9)
  assert (lo, hi) == pytest.approx(tuple(st.ttest_1samp(V4, 0.0).confidence_interval(0.95)), rel=1e-12)


@pytest.mark.parametrize("values, level", [([0.3, -0.1], 0.95), ([0.01, 0.02, 0.03], 0.9),
                                           ([5.0, 5.5, 4.0, 6.5, 5.0], 0.99)])
def test_seed_ci_matches_scipys_one_sample_t_interval(values, level):
  assert stats.seed_ci(values, level) == pytest.approx(
      tuple(st.ttest_1samp(values, 0.0).confidence_interval(level)), rel=1e-12)


def test_seed_ci_of_two_seeds_uses_one_degree_of_freedom():
  """Two seeds: half-width t_{0.975, 1} · |a − b| / 2 with t_{0.975, 1} = 12.7062 (the interval is wide)."""
  lo, hi = stats.seed_ci([0.0, 1.0])
  assert (hi - lo) / 2 == pytest.approx(12.70620474 * math.sqrt(0.5) / math.sqrt(2), rel=1e-9)


def test_seed_ci_of_a_constant_is_that_constant_and_non_finite_is_undefined():
  assert stats.seed_ci([0.25, 0.25, 0.25]) == (0.25, 0.25)
  assert all(math.isnan(x) for x in stats.seed_ci([1.0, np.inf, 2.0]))
  with pytest.raises(ValueError, match="at least 2 seeds"):
    stats.seed_ci([1.0])


# --- equivalence: TOST over seeds -------------------------------------------------------------

D5 = np.array([0.02, -0.01, 0.03, 0.0, 0.01])


@pytest.mark.parametrize("sign", [1, -1])
def test_equivalence_p_value_is_the_larger_of_two_one_sided_t_tests(sign):
  """H0: mean ≤ −m and H0: mean ≥ m, each scipy's one-sided t-test; a negative mean makes the first the larger."""
  d, m = sign * D5, 0.05
  p_lower = st.ttest_1samp(d, -m, alternative="greater").pvalue
  p_upper = st.ttest_1samp(d, m, alternative="less").pvalue
  assert stats.equivalence(d, m)["p_value"] == pytest.approx(max(p_lower, p_upper), rel=1e-10)


def test_equivalence_is_two_one_sided_t_tests_and_their_90_percent_interval():
  """The interval is the (1 − 2α) t-interval; equivalence ⇔ that interval inside (−m, m) ⇔ p < α."""
  m = 0.05
  r = stats.equivalence(D5, m)
  assert (r["ci_lo"], r["ci_hi"]) == pytest.approx(tuple(st.ttest_1samp(D5, 0.0).confidence_interval(0.90)), rel=1e-12)
  assert r["mean"] == pytest.approx(0.01) and r["se"] == pytest.approx(math.sqrt(0.00025 / 5), rel=1e-12)
  assert r["level"] == pytest.approx(0.9) and r["n"] == 5
  # by hand: t_{0.95, 4} = 2.131847; half-width 2.131847 · √(0.00025/5) = 0.015075
  assert r["ci_hi"] - 0.01 == pytest.approx(2.131846786 * math.sqrt(0.00025 / 5), rel=1e-8)
  assert r["equivalent"] and r["p_value"] < 0.05


@pytest.mark.parametrize("margin", [0.012, 0.02, 0.0251, 0.026, 0.05])
def test_equivalence_decision_agrees_with_its_p_value_and_its_interval(margin):
  """The margin sweeps across the edge (the 90 % interval's hi is 0.025075): both forms of TOST agree."""
  r = stats.equivalence(D5, margin)
  lo, hi = st.ttest_1samp(D5, 0.0).confidence_interval(0.90)
  assert r["equivalent"] == (-margin < lo and hi < margin) == (r["p_value"] < 0.05)


def test_equivalence_of_constant_differences_decides_by_the_mean_alone():
  assert stats.equivalence([0.01, 0.01, 0.01], 0.05)["equivalent"]
  assert stats.equivalence([0.01, 0.01, 0.01], 0.05)["p_value"] == 0.0
  far = stats.equivalence([0.2, 0.2], 0.05)
  assert not far["equivalent"] and far["p_value"] == 1.0


# --- the bootstrap over seeds, then tasks -----------------------------------------------------


def _resampled_means(x_SB, n_boot, seed, inner=True):
  """The hierarchical resample written out: draw S rows with replacement, then B columns per row."""
  rng = np.random.default_rng(seed)
  S, B = x_SB.shape
  out = []
  for _ in range(n_boot):
    rows = rng.integers(0, S, S)
    if inner:
      cols = rng.integers(0, B, (S, B))
      out.append(np.mean([x_SB[r, c] for r, c in zip(rows, cols)]))
    else:
      out.append(x_SB[rows].mean())
  return np.array(out)


X_SB = np.array([[0.0, 1.0, 3.0], [2.0, 2.5, 9.0], [1.0, 1.0, 4.0]])


@pytest.mark.parametrize("inner", [True, False])
def test_seed_bootstrap_interval_is_numpys_percentile_of_the_resampled_means(inner):
  b = stats.seed_bootstrap(X_SB, n_boot=300, seed=7, inner=inner)
  means = _resampled_means(X_SB, 300, 7, inner)
  assert (b["ci_lo"], b["ci_hi"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), rel=1e-12)
  assert b["estimate"] == pytest.approx(X_SB.mean(), rel=1e-12) and (b["n_seeds"], b["n_tasks"]) == (3, 3)


def test_seed_bootstrap_of_two_seeds_without_inner_resample_spans_the_two_seed_means():
  """Two seeds, seeds resampled only: the resampled mean is m0 (prob 1/4), m1 (1/4) or their midpoint,
  so the 2.5 % and 97.5 % quantiles are exactly the smaller and the larger seed mean."""
  x = np.array([[1.0, 3.0], [10.0, 14.0]])
  b = stats.seed_bootstrap(x, n_boot=2000, seed=1, inner=False)
  assert (b["ci_lo"], b["ci_hi"]) == (2.0, 12.0)


def test_seed_bootstrap_resamples_tasks_within_seeds():
  """Identical seeds: resampling seeds alone sees no spread, resampling their tasks does."""
  x = np.array([[0.0, 1.0, 2.0, 3.0]] * 3)
  outer = stats.seed_bootstrap(x, n_boot=200, inner=False)
  inner = stats.seed_bootstrap(x, n_boot=200, inner=True)
  assert outer["ci_lo"] == outer["ci_hi"] == 1.5
  assert inner["ci_lo"] < 1.5 < inner["ci_hi"]


def test_seed_bootstrap_of_a_constant_is_that_constant_and_shifts_with_the_data(monkeypatch):
  c = stats.seed_bootstrap(np.full((3, 5), 0.7), n_boot=50)
  assert c["ci_lo"] == pytest.approx(0.7) and c["ci_hi"] == pytest.approx(0.7)
  a, b = stats.seed_bootstrap(X_SB, n_boot=100, seed=3), stats.seed_bootstrap(2 * X_SB + 5, n_boot=100, seed=3)
  assert (b["ci_lo"], b["ci_hi"]) == pytest.approx((2 * a["ci_lo"] + 5, 2 * a["ci_hi"] + 5), rel=1e-12)
  monkeypatch.setattr(stats, "MEAN_UNITS", 4)  # the block-sum path above MEAN_UNITS tasks per seed
  k = stats.seed_bootstrap(np.full((2, 10), -1.5), n_boot=50)
  assert k["ci_lo"] == pytest.approx(-1.5) and k["ci_hi"] == pytest.approx(-1.5)


# --- one sample: summary's mean interval, paired gains ----------------------------------------


def test_summary_interval_is_numpys_percentile_of_means_of_resamples():
  x = np.array([0.5, 1.0, 1.5, 4.0, 9.0, 0.25])
  s = stats.summary(x, n_boot=400, seed=11, level=0.9)
  rng = np.random.default_rng(11)
  means = x[rng.integers(0, x.size, (400, x.size))].mean(axis=1)
  assert (s["mean_ci_lo"], s["mean_ci_hi"]) == pytest.approx(tuple(np.percentile(means, [5, 95])), rel=1e-12)
  # median of (0.25, 0.5, 1, 1.5, 4, 9) = 1.25; tasks above 10 × 1.25: none
  assert s["median"] == 1.25 and s["frac_gt_10x_median"] == 0.0 and s["max"] == 9.0
  assert stats.summary(np.r_[np.ones(5), 20.0], n_boot=10)["frac_gt_10x_median"] == pytest.approx(1 / 6)


def test_paired_gain_is_before_minus_after_with_its_fractions_and_intervals():
  before, after = np.array([3.0, 2.0, 5.0, 1.0]), np.array([1.0, 2.0, 6.0, 0.5])  # gains 2, 0, −1, 0.5
  g = stats.paired_gain(before, after, n_boot=300, seed=2)
  assert g["mean_gain"] == pytest.approx(0.375) and g["median_gain"] == pytest.approx(0.25)
  assert (g["frac_improved"], g["frac_worse"]) == (0.5, 0.25)
  assert g["rel_gain"] == pytest.approx(0.375 / 2.75) and g["mean_after"] == pytest.approx(2.375)
  gains = before - after
  means = gains[np.random.default_rng(2).integers(0, 4, (300, 4))].mean(axis=1)
  assert (g["ci_lo"], g["ci_hi"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), rel=1e-12)
  gS = stats.paired_gain(X_SB + 1, X_SB, n_boot=50, seed=0)  # every task gains exactly 1: a point interval
  assert gS["ci_lo"] == pytest.approx(1.0) and gS["ci_hi"] == pytest.approx(1.0) and gS["frac_improved"] == 1.0


# --- quantiles and the rare-task share --------------------------------------------------------


def test_quantile_is_linear_interpolation_between_order_statistics():
  x = np.array([8.0, 1.0, 4.0, 2.0])  # sorted 1, 2, 4, 8; position q·(n − 1)
  assert stats.quantile(x, 0.5) == 3.0  # between 2 and 4
  assert stats.quantile(x, 0.9) == pytest.approx(4 + 0.7 * 4)  # position 2.7
  assert stats.quantile(np.array([1.0, np.inf, np.inf]), 0.9) == np.inf  # inf, not NaN, between two infs


def test_rare_share_is_the_share_of_the_sum_strictly_above_the_quantile():
  """[1, 1, 1, 1, 6], n = 5: the 0.8 quantile is 1 + 0.2 · 5 = 2 (position 3.2); only 6 lies above: 6/10."""
  assert stats.rare_share(np.array([1.0, 1.0, 1.0, 1.0, 6.0]), 5) == pytest.approx(0.6)
  # n = 2: the median of (1, 2, 3, 10) is 2.5; above it 3 + 10 of the sum 16
  assert stats.rare_share(np.array([3.0, 1.0, 10.0, 2.0]), 2) == pytest.approx(13 / 16)
  assert stats.rare_share(np.zeros(4), 3) == 0.0
  # ties at the quantile are not above it: (1, 2, 2, 2, 5), n = 2, median 2: only 5 of the sum 12
  assert stats.rare_share(np.array([2.0, 1.0, 5.0, 2.0, 2.0]), 2) == pytest.approx(5 / 12)


@pytest.mark.parametrize("n", [10, 200, 100_000])
def test_chi2_rare_share_of_two_degrees_of_freedom_in_closed_form(n):
  """χ²₂ is exponential with mean 2: its (1 − 1/n) quantile is t = 2 ln n, and P(χ²₄ > t) =
  e^{−t/2}(1 + t/2) = (1 + ln n)/n."""
  assert stats.chi2_rare_share(2, n) == pytest.approx((1 + math.log(n)) / n, rel=1e-10)


# --- seed_interval: t when finite, order statistics when a seed is ±inf ----------------------------


def test_seed_interval_is_the_t_interval_when_every_seed_is_finite():
  from scipy import stats as st
  v = np.array([0.3, -1.2, 0.8, 2.0])
  iv = stats.seed_interval(v)
  lo, hi = st.t.interval(0.95, 3, loc=v.mean(), scale=st.sem(v))
  assert iv.kind == "t" and iv.n == 4 and np.allclose([iv.center, iv.lo, iv.hi], [v.mean(), lo, hi], rtol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 6, 9, 21])
def test_seed_interval_with_an_infinite_seed_is_the_widest_order_interval_of_exact_coverage(n):
  """Coverage of [x_(k), x_(n+1−k)] for the median: 1 − 2 P(Bin(n, ½) ≤ k − 1), by direct summation."""
  from math import comb
  v = np.r_[np.arange(n - 1, dtype=float), np.inf]
  iv = stats.seed_interval(v)
  cov = lambda k: 1 - 2 * sum(comb(n, j) for j in range(k)) / 2 ** n
  ks = [k for k in range(1, n // 2 + 1) if cov(k) >= 0.95] or [1]
  k = max(ks)
  x = np.sort(v)
  assert iv.kind == "order" and iv.n == n and iv.center == np.median(v)
  assert (iv.lo, iv.hi) == (x[k - 1], x[n - k]) and iv.level == pytest.approx(cov(k), abs=1e-12)
  if n == 5:
    assert (iv.lo, iv.hi, iv.level) == (0.0, np.inf, 1 - 2 / 32)


def test_seed_interval_refuses_nan_and_a_single_seed():
  for bad in ([1.0], [1.0, np.nan]):
    with pytest.raises(ValueError, match="values_S"):
      stats.seed_interval(bad)
