"""Number formatting for generated documents: deterministic, so the report regenerates byte-identical.
Also the interval over seeds that every claim and summary quotes, so that they all read ±inf alike."""

from __future__ import annotations

import math

import numpy as np

from lintheory.core import stats


def num(x: float, sig: int = 3) -> str:
  """A number with `sig` significant digits; inf and huge values stay readable."""
  x = float(x)
  if math.isnan(x):
    return "n/a"
  if math.isinf(x):
    return "∞" if x > 0 else "−∞"
  if x == 0:
    return "0"
  if abs(x) >= 1e5 or abs(x) < 1e-3:
    m, e = f"{x:.{sig - 1}e}".split("e")
    return f"{m}·10^{int(e)}"
  return f"{x:.0f}" if abs(x) >= 10 ** (sig - 1) else f"{x:.{max(sig - 1 - int(math.floor(math.log10(abs(x)))), 0)}f}"


def ci(lo: float, hi: float, sig: int = 3) -> str:
  return f"[{num(lo, sig)}, {num(hi, sig)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
  """A Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def median_of(values) -> float:
  v = np.asarray(values, float)
  return float(np.median(v)) if v.size else float("nan")


def over_seeds(values_S) -> stats.SeedInterval | None:
  """stats.seed_interval over the seeds with a value: the t-interval of the mean when every seed is finite,
  an order-statistic interval of exact, stated coverage when one is ±inf (an overflow is a value;
  docs/theory.md §14). NaN (no value, e.g. ∞ − ∞) is counted apart by seed_ci. None below 2 seeds with a
  value: there is no interval over seeds, and a claim resting on it is undecided."""
  v = np.asarray(values_S, np.float64)
  v = v[~np.isnan(v)]
  return stats.seed_interval(v) if v.size >= 2 else None


def centre_interval(values_S) -> tuple[float, float, float]:
  """(centre, lo, hi) of over_seeds: the mean and its t-interval, or, where a seed is ±inf, the median and its
  order-statistic interval (docs/theory.md §14); NaN below 2 seeds."""
  iv = over_seeds(values_S)
  return (math.nan,) * 3 if iv is None else (iv.center, iv.lo, iv.hi)


def seed_ci(values_S, sig: int = 3) -> str:
  """over_seeds as text: '[lo, hi]' for the t-interval; an order-statistic interval says so, with its
  coverage and how many seeds are infinite; fewer than 2 seeds: '(1 seed, no interval)'."""
  v = np.asarray(values_S, np.float64)
  iv, n_none = over_seeds(v), int(np.isnan(v).sum())
  if iv is None:
    out = f"({v.size - n_none} seed{'' if v.size - n_none == 1 else 's'}, no interval)"
  else:
    out = ci(iv.lo, iv.hi, sig)
    if iv.kind == "order":
      out += (f" (median; {100 * iv.level:.1f} % order-statistic interval over {iv.n} seeds, "
              f"{int(np.isinf(v).sum())} of them infinite)")
  return out + (f" ({n_none} seed(s) without a value)" if n_none else "")


def interval(values_S, sig: int = 3, unit: str = "", ci_sig: int | None = None) -> str:
  """The centre over seeds, then seed_ci: the mean with its t-interval, the median with its order-statistic
  interval, a single seed's value."""
  v = np.asarray(values_S, np.float64)
  iv, has = over_seeds(v), v[~np.isnan(v)]
  center = iv.center if iv is not None else has[0] if has.size else math.nan
  return f"{num(center, sig)}{unit} {seed_ci(v, sig if ci_sig is None else ci_sig)}"
