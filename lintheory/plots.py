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


def _case_title(name: str, case: dict) -> str:
  kind = "Σ = I" if case["x_cov_diag"] is None else "Σ = diag(" + ", ".join(f"{v:g}" for v in case["x_cov_diag"]) + ")"
  return f"d={case['d']}, N={case['n_context']}, {kind}"


def plot_one_layer(res: dict, figures: Path) -> list[Path]:
  """Loss curves vs the GD / closed-form lines; Γ_eff heatmaps vs η* I or Γ*; cos and |Δŷ|."""
  cases = res["cases"]
  names = list(cases)
  paths = []

  # 1. training curves with the one-step GD loss (held-out) and the closed form as horizontal lines
  fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
  for ax, name in zip(axes[0], names):
    c = cases[name]
    seeds = c["seeds"]
    x = np.asarray(seeds[0]["curve_steps"])
    for j, s in enumerate(seeds):  # every seed drawn: a seed stuck at a saddle stays visible
      ax.plot(x, s["curve_loss"], color="C0", lw=0.8, alpha=0.7,
              label="trained 1-layer, train loss (each seed)" if j == 0 else None)
      ax.plot([x[-1]], [s["final_loss"]], "o", color="C0", ms=3.5,
              label="held-out loss (each seed)" if j == 0 else None)
    gd1 = np.mean([s["gd1_loss"] for s in seeds])
    top = 1.6 * max(c["closed_form_loss"], max(s["final_loss"] for s in seeds))  # room for the legend
    ax.axhline(gd1, color="C1", ls="--", lw=1.2,
               label=f"1 GD step at η*: {gd1:.3f}" + (" (above the axis)" if gd1 > top else ""))
    if c["reference"] == "gamma_star":
      ref = np.mean([s["ref_loss"] for s in seeds])
      ax.axhline(ref, color="C2", ls="-.", lw=1.2, label=f"1 step preconditioned by Γ*: {ref:.3f}")
    ax.axhline(c["closed_form_loss"], color="k", ls=":", lw=1.2,
               label=f"closed form, optimal 1 layer: {c['closed_form_loss']:.3f}")
    ax.set_title(_case_title(name, c))
    ax.set_xlabel("training step")
    ax.set_ylim(0, top)
    ax.legend(fontsize=6.5, loc="upper right")
  axes[0, 0].set_ylabel("squared error (not halved)")
  fig.tight_layout()
  paths += save(fig, figures, "one_layer_loss")

  # 2. learned effective preconditioner (seed 0) next to the optimum and their difference
  fig, axes = plt.subplots(len(names), 3, figsize=(7.2, 2.3 * len(names)), squeeze=False,
                           layout="constrained")
  for row, name in zip(axes, names):
    c = cases[name]
    G, R = np.asarray(c["seeds"][0]["Gamma_eff"]), np.asarray(c["Gamma_ref"])
    lim = np.abs(R).max()
    err = np.mean([s["Gamma_rel_err"] for s in c["seeds"]])
    ref_label = "η* I" if c["reference"] == "eta_star_I" else "Γ*"
    for ax, M, title in ((row[0], G, f"learned Γ_eff (seed {c['seeds'][0]['seed']})"), (row[1], R, ref_label),
                         (row[2], G - R, f"difference (mean rel. err {err:.3f})")):
      im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
      ax.set_title(title, fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.grid(False)
    row[0].set_ylabel(_case_title(name, c), fontsize=7)
    fig.colorbar(im, ax=row.tolist(), shrink=0.8)
  paths += save(fig, figures, "one_layer_preconditioner")

  # 3. agreement with the reference learner on held-out tasks
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.0, 2.6))
  pos = np.arange(len(names))
  for i, name in enumerate(names):
    seeds = cases[name]["seeds"]
    cos = [s["grad_cos"] for s in seeds]
    dy = [s["mean_abs_dy"] / s["mean_abs_y_ref"] for s in seeds]
    ax1.plot(np.full(len(cos), i), cos, "o", color="C0", alpha=0.6, ms=4)
    ax1.plot([i - 0.2, i + 0.2], [np.mean(cos)] * 2, color="k")
    ax2.plot(np.full(len(dy), i), dy, "o", color="C3", alpha=0.6, ms=4)
    ax2.plot([i - 0.2, i + 0.2], [np.mean(dy)] * 2, color="k")
  labels = [_case_title(n, cases[n]).replace(", Σ", "\nΣ") for n in names]
  for ax in (ax1, ax2):
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, fontsize=6)
  ax1.set_title("cos(∇ₓ ŷ_model, ∇ₓ ŷ_ref), mean over tasks", fontsize=8)
  ax2.set_title("mean |ŷ_model − ŷ_ref| / mean |ŷ_ref|", fontsize=8)
  ax2.set_ylim(bottom=0)
  fig.tight_layout()
  paths += save(fig, figures, "one_layer_gd_match")
  return paths


# --- implicit-GD analysis -------------------------------------------------------------------

# --- SVD pruning ----------------------------------------------------------------------------


# Each study's results file → the function drawing its figures. Sections above add to it.
PLOTTERS: dict[str, str] = {
    "one_layer": "plot_one_layer",
}


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
