"""Tail summaries, bootstrap intervals (coverage), seeds as the unit of inference, TOST equivalence."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lintheory.core import stats


def test_summary_quantiles_match_numpy_and_count_the_tail():
  x = np.random.default_rng(0).lognormal(0.0, 2.0, 50_001)
  s = stats.summary(x, n_boot=50)
  assert s["n"] == x.size and s["n_inf"] == 0
  assert s["mean"] == pytest.approx(x.mean(), rel=1e-12) and s["max"] == x.max()
  for key, q in (("median", 0.5), ("p99", 0.99), ("p9999", 0.9999)):
    assert s[key] == pytest.approx(np.quantile(x, q), rel=1e-12)
  assert s["frac_gt_10x_median"] == np.mean(x > 10 * np.median(x)) > 0
  assert s["mean_ci_lo"] < x.mean() < s["mean_ci_hi"]


def test_summary_keeps_overflowed_errors_as_inf_and_refuses_nan():
  x = np.r_[np.ones(9), np.inf]
  s = stats.summary(x, n_boot=20)
  assert s["n_inf"] == 1 and s["max"] == np.inf and s["mean"] == np.inf and s["median"] == 1.0
  with pytest.raises(ValueError, match="err contains 1 NaN"):
    stats.summary(np.r_[np.ones(3), np.nan])
  with pytest.raises(ValueError, match="err must be a non-empty"):
    stats.summary(np.zeros((2, 2)))
  with pytest.raises(ValueError, match="n_boot"):
    stats.summary(np.ones(3), n_boot=0)
  with pytest.raises(ValueError, match="level"):
    stats.summary(np.ones(3), level=1.0)


def test_rare_share_of_chi2_1_matches_its_closed_form():
  """For X ~ χ²₁, E[X·1{X > q}] = P(χ²₃ > q) (docs/theory.md §11): 4.857 % above the 99.5 % quantile."""
  x = np.random.default_rng(1).chisquare(1, 2_000_000)
  assert stats.rare_share(x, 200) == pytest.approx(0.04857, abs=0.0015)
  assert stats.chi2_rare_share(1, 200) == pytest.approx(0.04857, abs=1e-4)
  x16 = np.random.default_rng(3).chisquare(16, 2_000_000) / 16
  assert stats.rare_share(x16, 200) == pytest.approx(stats.chi2_rare_share(16, 200), abs=0.001)
  with pytest.raises(ValueError, match="q must be an integer >= 1"):
    stats.chi2_rare_share(0, 200)
  heavy = np.random.default_rng(2).pareto(1.2, 100_000)  # infinite variance: the rare tasks carry much more
  assert stats.rare_share(heavy, 200) > 0.2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.integers(1, 1000),
       st.floats(1e-3, 1e3))
def test_rare_share_is_a_scale_free_share(values, n, c):
  x = np.asarray(values)
  share = stats.rare_share(x, n)
  assert 0.0 <= share <= 1.0
  assert stats.rare_share(c * x, n) == pytest.approx(share, abs=1e-9)
  assert stats.rare_share(np.full(7, 3.0), n) == 0.0  # nothing lies above a constant's quantile


def test_rare_share_refuses_bad_input():
  assert stats.rare_share(np.r_[np.ones(9), np.inf], 5) == 1.0
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    stats.rare_share(np.ones(3), 0)
  with pytest.raises(ValueError, match="err contains 1 NaN"):
    stats.rare_share(np.r_[1.0, np.nan], 2)


def test_mean_interval_covers_the_true_mean_at_its_level():
  """200 samples of n = 100 from Exp(1) (true mean 1): the 95 % interval covers 1 in 89–99 % of them."""
  rng = np.random.default_rng(1)
  hits = [(s["mean_ci_lo"] <= 1.0 <= s["mean_ci_hi"])
          for s in (stats.summary(rng.exponential(1.0, 100), n_boot=400, seed=i) for i in range(200))]
  assert 0.89 <= np.mean(hits) <= 0.99, np.mean(hits)
  narrow = [stats.summary(rng.exponential(1.0, 100), n_boot=400, seed=i, level=0.5) for i in range(200)]
  assert np.mean([s["mean_ci_lo"] <= 1.0 <= s["mean_ci_hi"] for s in narrow]) < 0.65  # the level matters


def seeded_data(rng, S=8, B=50, mu=3.0):
  """Seed effects (sd 1) dominate the task noise (sd 1 over B tasks)."""
  return mu + rng.normal(0, 1, (S, 1)) + rng.normal(0, 1, (S, B))


def test_seed_bootstrap_is_wider_than_the_flat_one_and_covers():
  rng = np.random.default_rng(2)
  hier, flat = [], []
  for i in range(100):
    x = seeded_data(rng)
    h, f = stats.seed_bootstrap(x, n_boot=300, seed=i), stats.summary(x.ravel(), n_boot=300, seed=i)
    assert h["estimate"] == pytest.approx(x.mean(), rel=1e-12)
    hier.append((h["ci_lo"] <= 3.0 <= h["ci_hi"], h["ci_hi"] - h["ci_lo"]))
    flat.append((f["mean_ci_lo"] <= 3.0 <= f["mean_ci_hi"], f["mean_ci_hi"] - f["mean_ci_lo"]))
  (h_cover, h_width), (f_cover, f_width) = np.mean(hier, axis=0), np.mean(flat, axis=0)
  assert h_width > 3 * f_width
  assert h_cover >= 0.8 and f_cover <= 0.6, (h_cover, f_cover)  # 8 seeds: a percentile interval under-covers a little


def test_seed_bootstrap_takes_any_statistic_and_the_cluster_variant():
  x = seeded_data(np.random.default_rng(3))
  med = stats.seed_bootstrap(x, np.median, n_boot=200)
  assert med["estimate"] == np.median(x) and med["ci_lo"] < med["estimate"] < med["ci_hi"]
  outer = stats.seed_bootstrap(x, n_boot=200, inner=False)
  assert outer["ci_lo"] < x.mean() < outer["ci_hi"] and (outer["n_seeds"], outer["n_tasks"]) == (8, 50)
  with pytest.raises(ValueError, match="at least 2 seeds"):
    stats.seed_bootstrap(x[:1])
  with pytest.raises(ValueError, match="err_SB"):
    stats.seed_bootstrap(x.ravel())


def test_paired_gain_sign_convention_and_pairing():
  rng = np.random.default_rng(4)
  before = rng.exponential(1.0, 5000) + 1.0
  after = before - 0.1 + rng.normal(0, 0.01, before.size)  # a small, consistent improvement
  g = stats.paired_gain(before, after, n_boot=300)
  assert g["mean_gain"] == pytest.approx(0.1, abs=1e-3) and g["ci_lo"] > 0  # positive = improvement
  assert g["frac_improved"] > 0.99 and g["frac_worse"] < 0.01
  assert g["rel_gain"] == pytest.approx(0.1 / before.mean(), rel=1e-2)
  # Unpaired, the same improvement hides in the task-to-task spread (sd 1): pairing is what resolves it.
  unpaired = stats.summary(before, n_boot=300)["mean_ci_hi"] - stats.summary(before, n_boot=300)["mean_ci_lo"]
  assert g["ci_hi"] - g["ci_lo"] < unpaired / 20
  worse = stats.paired_gain(after, before, n_boot=100)
  assert worse["mean_gain"] < 0 and worse["ci_hi"] < 0
  gS = stats.paired_gain(before.reshape(10, 500), after.reshape(10, 500), n_boot=100)
  assert gS["ci_lo"] < 0.1 < gS["ci_hi"]
  with pytest.raises(ValueError, match="same shape"):
    stats.paired_gain(before, after[:-1])
  with pytest.raises(ValueError, match="both inf on 1"):
    stats.paired_gain(np.r_[1.0, np.inf], np.r_[0.5, np.inf])


def test_equivalence_interval_has_its_coverage_and_decides():
  """The 90 % t-interval of TOST (alpha = 0.05) covers the true mean 0.1 in 85–95 % of 400 draws of 5 seeds."""
  rng = np.random.default_rng(5)
  draws = [stats.equivalence(rng.normal(0.1, 0.2, 5), margin=1.0) for _ in range(400)]
  assert 0.85 <= np.mean([r["ci_lo"] <= 0.1 <= r["ci_hi"] for r in draws]) <= 0.95
  assert draws[0]["level"] == pytest.approx(0.9)
  tight = stats.equivalence([0.01, -0.02, 0.0, 0.015, -0.005], margin=0.1)
  assert tight["equivalent"] and tight["p_value"] < 0.05
  far = stats.equivalence([0.3, 0.25, 0.35, 0.28, 0.32], margin=0.1)
  assert not far["equivalent"] and far["p_value"] > 0.5
  wide = stats.equivalence([0.5, -0.5, 0.4, -0.45], margin=0.1)  # centred but too noisy to claim equivalence
  assert not wide["equivalent"]
  for kwargs, name in ((dict(diff_S=[1.0], margin=1.0), "at least 2"), (dict(diff_S=[1.0, 2.0], margin=0), "margin"),
                       (dict(diff_S=[1.0, np.inf], margin=1.0), "finite"),
                       (dict(diff_S=[1.0, 2.0], margin=1.0, alpha=0.5), "alpha")):
    with pytest.raises(ValueError, match=name):
      stats.equivalence(**kwargs)


def test_block_bootstrap_of_the_mean_matches_the_task_level_one(monkeypatch):
  """Above MEAN_UNITS tasks per seed the mean's inner resample is over block sums: same estimate,
  an interval within 10 % of the task-level bootstrap's (iid tasks, seeds that differ)."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((5, 8000)) + rng.standard_normal((5, 1)) * 0.02
  monkeypatch.setattr(stats, "MEAN_UNITS", 400)
  blocks = stats.seed_bootstrap(x, n_boot=400)
  monkeypatch.setattr(stats, "MEAN_UNITS", 10**9)
  tasks_level = stats.seed_bootstrap(x, n_boot=400)
  assert blocks["estimate"] == tasks_level["estimate"]
  w_b, w_t = blocks["ci_hi"] - blocks["ci_lo"], tasks_level["ci_hi"] - tasks_level["ci_lo"]
  assert abs(w_b / w_t - 1) < 0.1, (w_b, w_t)
  assert abs((blocks["ci_hi"] + blocks["ci_lo"]) - (tasks_level["ci_hi"] + tasks_level["ci_lo"])) < 0.2 * w_t


def test_block_bootstrap_of_one_sample_matches_the_task_level_one(monkeypatch):
  """summary's interval for the mean: block sums above MEAN_UNITS tasks, within 10 % of the task-level
  interval, and the same point estimate and quantiles."""
  x = np.random.default_rng(4).exponential(1.0, 20_000)
  monkeypatch.setattr(stats, "MEAN_UNITS", 500)
  blocks = stats.summary(x, n_boot=2000)
  monkeypatch.setattr(stats, "MEAN_UNITS", 10**9)
  tasks_level = stats.summary(x, n_boot=2000)
  assert {k: v for k, v in blocks.items() if not k.startswith("mean_ci")} == \
      {k: v for k, v in tasks_level.items() if not k.startswith("mean_ci")}
  w_b, w_t = blocks["mean_ci_hi"] - blocks["mean_ci_lo"], tasks_level["mean_ci_hi"] - tasks_level["mean_ci_lo"]
  assert abs(w_b / w_t - 1) < 0.1, (w_b, w_t)
  assert abs((blocks["mean_ci_hi"] + blocks["mean_ci_lo"]) - (tasks_level["mean_ci_hi"] + tasks_level["mean_ci_lo"])) < 0.2 * w_t
