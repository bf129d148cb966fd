"""Figures from results files: results/<study>.json → figures/<name>.png and .pdf.

Plotting never trains: every number drawn here was written by a study in experiments/.
Deterministic output: Agg backend, fixed fonts and sizes, no timestamps in PDFs.
Run `python -m lintheory.plots --results results --figures figures`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lintheory.io import read_json  # noqa: E402

STYLE = {"figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.grid": True,
         "grid.alpha": 0.3, "svg.hashsalt": "lintheory", "pdf.fonttype": 42}


def save(fig, figures: Path, name: str) -> list[Path]:
  """Write name.png and name.pdf deterministically; returns the paths."""
  figures.mkdir(parents=True, exist_ok=True)
  paths = [figures / f"{name}.png", figures / f"{name}.pdf"]
  fig.savefig(paths[0], metadata={"Software": None})
  fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
  plt.close(fig)
  return paths


def band(ax, x, values_SX, label=None, color=None, **kw):
  """Mean over seeds (axis 0) as a line, ± one standard error as a band."""
  v = np.asarray(values_SX, float)
  m = v.mean(0)
  se = v.std(0, ddof=1) / np.sqrt(v.shape[0]) if v.shape[0] > 1 else np.zeros_like(m)
  (line,) = ax.plot(x, m, label=label, color=color, **kw)
  ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.2, lw=0)
  return line


# --- one-layer equivalence (issue: foundation) ---------------------------------------------

# --- implicit-GD analysis -------------------------------------------------------------------

# --- SVD pruning ----------------------------------------------------------------------------


# Each study's results file → the function drawing its figures. Sections above add to it.
PLOTTERS: dict[str, str] = {}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description="draw every figure whose results exist")
  ap.add_argument("--results", default="results")
  ap.add_argument("--figures", default="figures")
  args = ap.parse_args(argv)
  results, figures = Path(args.results), Path(args.figures)
  plt.rcParams.update(STYLE)
  drawn = 0
  for study, fn_name in PLOTTERS.items():
    path = results / f"{study}.json"
    if not path.exists():
      print(f"skip {study}: {path} not found (run experiments/{study}.py)", file=sys.stderr)
      continue
    for p in globals()[fn_name](read_json(path), figures):
      print(f"wrote {p}")
      drawn += 1
  return 0 if drawn else 1


if __name__ == "__main__":
  sys.exit(main())
