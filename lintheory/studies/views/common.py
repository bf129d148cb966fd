"""What the views share: figures in one style, written as deterministic PNG + PDF files, and a share over
seeds printed as a percentage with its interval (pct_interval)."""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np

from lintheory.run import io
from lintheory.studies import text

STYLE = {"figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
         "svg.hashsalt": "lintheory", "pdf.fonttype": 42}


def pyplot():
  """matplotlib.pyplot on the Agg backend with the house style (imported on first use only)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  plt.rcParams.update(STYLE)
  return plt


def subplots(rows: int, cols: int, figsize: tuple[float, float], **kw):
  """(fig, axes) in the house style, axes always a rows × cols grid (pyplot.subplots with squeeze=False)."""
  return pyplot().subplots(rows, cols, figsize=figsize, squeeze=False, **kw)


def title_and_legend(ax, title: str) -> None:
  """A panel's title and legend in the house sizes."""
  ax.set_title(title, fontsize=8)
  ax.legend(fontsize=6)


def save_tight(fig, figures: Path, name: str, rect=None, ylabel: str | None = None) -> list[Path]:
  """save after a tight layout, inside rect (left, bottom, right, top) where a legend or note sits below;
  ylabel: the first panel's, which the panels of its row share."""
  if ylabel is not None:
    fig.axes[0].set_ylabel(ylabel)
  fig.tight_layout(rect=rect)
  return save(fig, figures, name)


# Metadata left out of each format, so that a redraw gives the same bytes.
NO_STAMPS = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}}


def save(fig, figures: Path, name: str) -> list[Path]:
  """Write name.png and name.pdf, each atomically (a killed plot leaves the old file or the new one)."""
  paths = []
  for fmt, metadata in NO_STAMPS.items():
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, metadata=metadata)
    paths.append(Path(figures) / f"{name}.{fmt}")
    io.atomic_write_bytes(paths[-1], buf.getvalue())
  pyplot().close(fig)
  return paths


def seed_points(ax, x: float, values, color="C0", width=0.25, label=None):
  """Every seed as a dot (jittered deterministically) and their median as a bar."""
  v = np.asarray(values, float)
  off = np.linspace(-width / 2, width / 2, v.size) if v.size > 1 else np.zeros(1)
  ax.plot(x + off, v, "o", ms=3.5, alpha=0.75, color=color, label=label)
  if v.size:
    ax.plot([x - width * 0.7, x + width * 0.7], [np.median(v)] * 2, color="k", lw=1.2)


def symlog(ax, axis: str, values, linthresh: float = 1e-3, max_ticks: int = 7):
  """A symmetric-log axis whose labelled ticks (0 and ±10^k) are thinned to at most max_ticks, so
  that data spanning many decades on both sides of zero keeps readable labels."""
  v = np.abs(np.asarray(values, float))
  v = v[np.isfinite(v) & (v > linthresh)]
  k0, k1 = int(np.floor(np.log10(linthresh))), int(np.ceil(np.log10(v.max()))) if v.size else 0
  exps = list(range(k0 + 1, max(k1, k0 + 1) + 1))  # ±10^k0 would crowd the label 0
  step = 1
  while 2 * len(exps[::step]) + 1 > max_ticks and step < len(exps):
    step += 1
  ticks = sorted([0.0] + [s * 10.0 ** k for k in exps[::-1][::step] for s in (-1, 1)])
  getattr(ax, f"set_{axis}scale")("symlog", linthresh=linthresh)
  getattr(ax, f"set_{axis}ticks")(ticks)


def pct_interval(v) -> str:
  """Per-seed fractions → 'centre % [lo, hi] %' over every seed (text.centre_interval: the mean and its t-interval,
  or the median and its order-statistic interval where a seed is ±inf)."""
  centre, lo, hi = text.centre_interval(v)
  return f"{text.num(100 * centre, 2)} % {text.ci(100 * lo, 100 * hi, 2)}"
