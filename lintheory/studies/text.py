"""Number formatting for generated documents: deterministic, so the report regenerates byte-identical."""

from __future__ import annotations

import math

import numpy as np


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
