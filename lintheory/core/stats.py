"""Statistics of per-task errors: tails, bootstrap intervals with seeds as the unit, paired gains,
equivalence (docs/theory.md §11).

Inputs are numpy arrays of per-task errors, [B] for one model or [S, B] for S training seeds on
B tasks each. +inf (an overflowed blow-up) is a legal error; NaN is refused. Quantiles use numpy's
default (linear) interpolation. Bootstrap intervals are percentile intervals; for heavy tails the
interval of the mean is only as good as the tail the sample has seen, so read it with p9999 and max.
Sign convention for comparisons: gain = error_before − error_after, positive = improvement.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

_BLOCK = 2**22  # elements per bootstrap block: bounds memory, keeps numpy vectorised
MEAN_UNITS = 2000  # above this many tasks per seed, the mean's inner bootstrap resamples this many blocks


def _errors(name: str, x, ndim: int | tuple = 1) -> np.ndarray:
  a = np.asarray(x, np.float64)
  ndims = (ndim,) if isinstance(ndim, int) else ndim
  if a.ndim not in ndims or a.size == 0:
    raise ValueError(f"{name} must be a non-empty array with ndim in {ndims}, got shape {a.shape}")
  if np.isnan(a).any():
    raise ValueError(f"{name} contains {int(np.isnan(a).sum())} NaN value(s)")
  return a


def _check(n_boot, level):
  if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
    raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level!r}")


def quantile(x: np.ndarray, q) -> np.ndarray:
  """numpy's linear quantile, with inf (not NaN) where both neighbours are +inf."""
  with np.errstate(invalid="ignore"):
    out = np.quantile(x, q)
  return np.where(np.isnan(out), np.inf, out)


def _interval(stats_boot: np.ndarray, level: float) -> tuple[float, float]:
  lo, hi = quantile(stats_boot, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def _block_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """x [..., B] → its sums over MEAN_UNITS contiguous blocks of the last axis [..., MEAN_UNITS] and the
  block sizes [MEAN_UNITS]. The tasks are iid, so the blocks are too: resampling the block sums gives the
  mean the task-level resample's expectation and variance at B / MEAN_UNITS the cost (docs/theory.md §14)."""
  B = x.shape[-1]
  starts = np.linspace(0, B, MEAN_UNITS + 1).astype(np.int64)
  return np.add.reduceat(x, starts[:-1], axis=-1), np.diff(starts).astype(np.float64)


def bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
  """Means of n_boot resamples (with replacement) of the 1-D sample x → [n_boot]; above MEAN_UNITS
  tasks, resamples of its block sums."""
  sums, sizes = _block_sums(x) if x.size > MEAN_UNITS else (x, np.ones(x.size))
  n = sums.size
  per = max(1, _BLOCK // n)
  out = []
  for i in range(0, n_boot, per):
    idx = rng.integers(0, n, (min(per, n_boot - i), n))
    out.append(sums[idx].sum(axis=1) / sizes[idx].sum(axis=1))
  return np.concatenate(out)


def summary(err, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
  """Tail-aware summary of one sample of per-task errors [B].

  Keys: n, mean, median, p99, p9999 (99.99th percentile), max, frac_gt_10x_median (share of tasks
  with error > 10 × median), n_inf, mean_ci_lo/mean_ci_hi (percentile bootstrap of the mean at level).
  """
  x = _errors("err", err)
  _check(n_boot, level)
  median = float(quantile(x, 0.5))
  lo, hi = _interval(bootstrap_means(x, n_boot, np.random.default_rng(seed)), level)
  p99, p9999 = quantile(x, [0.99, 0.9999])
  return {"n": int(x.size), "mean": float(x.mean()), "median": median, "p99": float(p99),
          "p9999": float(p9999), "max": float(x.max()), "frac_gt_10x_median": float(np.mean(x > 10 * median)),
          "n_inf": int(np.isinf(x).sum()), "mean_ci_lo": lo, "mean_ci_hi": hi}


def rare_share(err, n: int) -> float:
  """The share of sum(err) carried by the tasks above the (1 − 1/n) quantile of err [B]: what a mean
  over n tasks usually has not seen (docs/theory.md §11). 0 when every error is 0."""
  x = _errors("err", err)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be an integer >= 1, got {n!r}")
  total = x.sum()
  if total == 0:
    return 0.0
  if np.isinf(total):
    return 1.0
  return float(x[x > quantile(x, 1 - 1 / n)].sum() / total)


def chi2_rare_share(q: int, n: int) -> float:
  """rare_share of an error that is pure query noise, χ²_q / q (the mean of q squared Gaussian query
  errors), in the limit of many tasks: P(χ²_{q+2} > the (1 − 1/n) quantile of χ²_q) (docs/theory.md §11)."""
  from scipy import stats as st
  for name, v in (("q", q), ("n", n)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
  return float(st.chi2.sf(st.chi2.ppf(1 - 1 / n, q), q + 2))


def seed_bootstrap(err_SB, stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95, inner: bool = True) -> dict:
  """Hierarchical bootstrap over [S, B] errors: resample seeds, then tasks within each chosen seed.

  stat maps the pooled resample (1-D) to a number (np.mean, np.median, a quantile). inner=False
  resamples seeds only (the cluster bootstrap; slightly narrower). Keys: estimate (stat on all the
  data), ci_lo, ci_hi, n_seeds, n_tasks. Cost: n_boot · S · B draws, or n_boot · S · MEAN_UNITS for
  the mean of more than MEAN_UNITS tasks per seed (block sums resampled).
  """
  x = _errors("err_SB", err_SB, 2)
  _check(n_boot, level)
  S, B = x.shape
  if S < 2:
    raise ValueError(f"err_SB needs at least 2 seeds (rows) for a seed bootstrap, got {S}")
  rng = np.random.default_rng(seed)
  boot = np.empty(n_boot)
  if stat is np.mean and inner and B > MEAN_UNITS:
    sums, sizes = _block_sums(x)  # [S, MEAN_UNITS], [MEAN_UNITS]
    for i in range(n_boot):
      rows, cols = rng.integers(0, S, S), rng.integers(0, MEAN_UNITS, (S, MEAN_UNITS))
      boot[i] = sums[rows[:, None], cols].sum() / sizes[cols].sum()
    lo, hi = _interval(boot, level)
    return {"estimate": float(x.mean()), "ci_lo": lo, "ci_hi": hi, "n_seeds": S, "n_tasks": B}
  for i in range(n_boot):
    rows = rng.integers(0, S, S)
    sample = x[rows[:, None], rng.integers(0, B, (S, B))] if inner else x[rows]
    boot[i] = stat(sample.ravel())
  lo, hi = _interval(boot, level)
  return {"estimate": float(stat(x.ravel())), "ci_lo": lo, "ci_hi": hi, "n_seeds": S, "n_tasks": B}


def paired_gain(before, after, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
  """Per-task gains of a change, gain = before − after (positive = improvement), same tasks paired.

  before/after are [B] or [S, B] (then the interval is the hierarchical seed bootstrap). Keys:
  mean_gain, ci_lo, ci_hi (of the mean gain), median_gain, frac_improved (gain > 0), frac_worse
  (gain < 0), mean_before, mean_after, rel_gain (mean_gain / mean_before).
  """
  b, a = _errors("before", before, (1, 2)), _errors("after", after, (1, 2))
  if b.shape != a.shape:
    raise ValueError(f"before and after must have the same shape (paired tasks), got {b.shape} and {a.shape}")
  both_inf = np.isinf(b) & np.isinf(a)
  if both_inf.any():
    raise ValueError(f"before and after are both inf on {int(both_inf.sum())} task(s): their gain is undefined")
  gain = b - a
  if gain.ndim == 2:
    bs = seed_bootstrap(gain, np.mean, n_boot, seed, level)
    lo, hi = bs["ci_lo"], bs["ci_hi"]
  else:
    _check(n_boot, level)
    lo, hi = _interval(bootstrap_means(gain, n_boot, np.random.default_rng(seed)), level)
  mean_b = float(b.mean())
  return {"mean_gain": float(gain.mean()), "ci_lo": lo, "ci_hi": hi, "median_gain": float(quantile(gain, 0.5)),
          "frac_improved": float(np.mean(gain > 0)), "frac_worse": float(np.mean(gain < 0)),
          "mean_before": mean_b, "mean_after": float(a.mean()),
          "rel_gain": float(gain.mean() / mean_b) if mean_b != 0 else float("nan")}


def equivalence(diff_S, margin: float, alpha: float = 0.05) -> dict:
  """TOST over seeds: is the mean of the per-seed differences within ±margin?

  diff_S: one difference per seed (e.g. mean error after − before on that seed's tasks); margin:
  the smallest effect of interest (> 0). Two one-sided t-tests at alpha ⇔ the (1 − 2·alpha)
  t-interval lies inside (−margin, margin). Keys: mean, se, ci_lo, ci_hi, level (= 1 − 2·alpha),
  margin, equivalent, p_value (the larger one-sided p), n.
  """
  from scipy import stats as st  # imported here: scipy.stats is slow to import

  d = _errors("diff_S", diff_S)
  if not np.all(np.isfinite(d)):
    raise ValueError("diff_S must be finite")
  if d.size < 2:
    raise ValueError(f"diff_S needs at least 2 seeds, got {d.size}")
  if not (np.isfinite(margin) and margin > 0):
    raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
  if not 0 < alpha < 0.5:
    raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
  n, mean = d.size, float(d.mean())
  se = float(d.std(ddof=1) / np.sqrt(n))
  half = float(st.t.ppf(1 - alpha, n - 1)) * se
  if se > 0:
    p = max(float(st.t.sf((mean + margin) / se, n - 1)), float(st.t.cdf((mean - margin) / se, n - 1)))
  else:
    p = 0.0 if abs(mean) < margin else 1.0
  lo, hi = mean - half, mean + half
  return {"mean": mean, "se": se, "ci_lo": lo, "ci_hi": hi, "level": 1 - 2 * alpha, "margin": float(margin),
          "equivalent": bool(-margin < lo and hi < margin), "p_value": p, "n": int(n)}


def seed_ci(values_S, level: float = 0.95) -> tuple[float, float]:
  """The t-interval of the mean of one number per seed (seeds are the unit of inference)."""
  from scipy import stats as st

  v = _errors("values_S", values_S)
  if v.size < 2:
    raise ValueError(f"values_S needs at least 2 seeds, got {v.size}")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level!r}")
  if not np.all(np.isfinite(v)):
    return float("nan"), float("nan")
  half = float(st.t.ppf(0.5 + level / 2, v.size - 1)) * float(v.std(ddof=1)) / np.sqrt(v.size)
  return float(v.mean() - half), float(v.mean() + half)


class SeedInterval(NamedTuple):
  center: float  # the mean (t-interval) or the median (order statistics) over seeds
  lo: float
  hi: float
  level: float  # the interval's coverage: `level` for the t-interval, exact for order statistics
  kind: str  # "t" or "order"
  n: int  # seeds behind it


def seed_interval(values_S, level: float = 0.95) -> SeedInterval:
  """One number per seed → an interval with every seed in it (docs/theory.md §14, "Seeds that overflowed").

  All finite: the t-interval of the mean (seed_ci). Some ±inf (a seed whose model overflowed): the
  median and the order-statistic interval [x_(k), x_(n+1−k)] with the largest k whose exact coverage
  1 − 2·P(Bin(n, ½) < k) is at least `level`, or k = 1 (the seeds' range, coverage 1 − 2^(1−n)) when
  none reaches it. An interval entirely below 0 is then a sign test: P(every seed < 0 | median 0) = 2^−n.
  NaN (a seed with no defined value) is refused: say which seeds have none before calling.
  """
  from scipy import stats as st

  v = np.asarray(values_S, np.float64)
  if v.ndim != 1 or v.size < 2 or np.isnan(v).any():
    raise ValueError(f"values_S must be >= 2 numbers per seed without NaN, got {v.tolist()}")
  if np.all(np.isfinite(v)):
    lo, hi = seed_ci(v, level)
    return SeedInterval(float(v.mean()), lo, hi, level, "t", v.size)
  x, n = np.sort(v), v.size
  coverage = lambda k: 1 - 2 * float(st.binom.cdf(k - 1, n, 0.5))
  k = max([k for k in range(1, n // 2 + 1) if coverage(k) >= level], default=1)
  return SeedInterval(float(np.median(x)), float(x[k - 1]), float(x[n - k]), coverage(k), "order", n)
