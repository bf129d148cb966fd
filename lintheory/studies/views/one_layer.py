"""One layer of linear attention learns one step of (preconditioned) gradient descent.

The study's figures, report section and summary line, read from its table alone (lintheory.studies.views).
"""

from __future__ import annotations

import numpy as np

from lintheory.studies import engine, text
from lintheory.studies.one_layer import NEAR
from lintheory.studies.views import common


def _matrix(table, measure: str, **match) -> np.ndarray:
  rows = table.where(measure=measure, **match).rows
  n = 1 + max(r["i"] for r in rows)
  M = np.zeros((n, n))
  for r in rows:
    M[r["i"], r["j"]] = r["value"]
  return M


def plot(table: engine.Table, meta: dict, out) -> list:
  cases = table.unique("case")
  paths = []
  fig, axes = common.subplots(1, len(cases), figsize=(3.6 * len(cases), 3.0))
  for ax, case in zip(axes[0], cases):
    closed = table.value("closed_form", case=case, seed=None)
    means = []
    for n, seed in enumerate(table.seeds(case=case)):
      rows = table.where(measure="train_loss", case=case, seed=seed).rows
      ax.plot([r["step"] for r in rows], [r["value"] for r in rows], color="C0", lw=0.8, alpha=0.6,
              label="training loss, each seed" if n == 0 else None)
      means.append(table.value("model_mean", case=case, seed=seed))
      ax.plot([rows[-1]["step"]], [means[-1]], "o", color="C0", ms=3.5,
              label="held-out mean error, each seed" if n == 0 else None)
    ax.axhline(table.value("ref_mean", case=case, seed=None), color="C1", ls="--",
               label="optimal one step (η* I or Γ*), held-out")
    ax.axhline(closed, color="k", ls=":", label=f"closed form {text.num(closed)}")
    ax.set_ylim(0, 1.8 * max(closed, max(means)))
    ax.set_title(case, fontsize=8)
    ax.set_xlabel("training step")
    ax.legend(fontsize=6)
  paths += common.save_tight(fig, out, "one_layer_loss", ylabel="error of ŷ (squared ÷ d)")

  fig, axes = common.subplots(len(cases), 3, figsize=(7.2, 2.3 * len(cases)), layout="constrained")
  for row, case in zip(axes, cases):
    seeds = table.seeds(case=case)
    errs = [table.value("Gamma_rel_err", case=case, seed=s) for s in seeds]
    shown = seeds[int(np.argsort(errs)[len(errs) // 2])]  # the median seed, named in the title
    G, R = _matrix(table, "Gamma_eff", case=case, seed=shown), _matrix(table, "Gamma_ref", case=case, seed=None)
    lim = np.abs(R).max()
    for ax, M, title in ((row[0], G, f"learned Γ_eff (seed {shown}, median error)"),
                         (row[1], R, "optimum (η* I or Γ*)")):
      im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
      ax.set_title(title, fontsize=7)
    fig.colorbar(im, ax=row[:2].tolist(), shrink=0.8)
    lim_d = max(np.abs(G - R).max(), 1e-12)  # its own scale: a few % of Γ* would be invisible on Γ*'s
    im = row[2].imshow(G - R, cmap="PuOr_r", vmin=-lim_d, vmax=lim_d)
    row[2].set_title(f"difference (own scale): ‖·‖/‖Γ*‖ = {text.num(errs[seeds.index(shown)])}", fontsize=7)
    fig.colorbar(im, ax=row[2], shrink=0.8)
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
      ax.grid(False)
    row[0].set_ylabel(case, fontsize=7)
  paths += common.save(fig, out, "one_layer_preconditioner")
  return paths


def report(table: engine.Table, meta: dict) -> str:
  rows = []
  for case in table.unique("case"):
    seeds = table.seeds(case=case)
    closed = table.value("closed_form", case=case, seed=None)
    means = np.array([table.value("model_mean", case=case, seed=s) for s in seeds])
    med = np.array([table.value("model_median", case=case, seed=s) for s in seeds])
    worst = np.array([table.value("model_max", case=case, seed=s) for s in seeds])
    exact = np.array([table.value("Gamma_eff_exact_loss", case=case, seed=s) for s in seeds])
    rel = np.array([table.value("Gamma_rel_err", case=case, seed=s) for s in seeds])
    at_opt = int(np.sum(exact <= (1 + NEAR) * closed))
    rows.append([case, f"{at_opt}/{len(seeds)}", text.num(closed), text.num(np.median(exact)),
                 text.num(np.median(means)), text.num(table.value("ref_mean", case=case, seed=None)),
                 text.num(np.median(med)), text.num(worst.max()), text.num(np.median(rel)),
                 f"{table.n_tasks('model_mean', case=case, seed=seeds[0]):,}"])
  head = ["case", "seeds within 5 % of optimum", "closed form", "exact error of learned Γ_eff (median over seeds)",
          "held-out mean (median over seeds)", "optimal one step, same tasks", "held-out median error",
          "largest task error (all seeds)", "‖Γ_eff − Γ*‖/‖Γ*‖ (median)", "tasks per seed"]
  return (f"Trained one-layer models against the optimal one-step learner (docs/theory.md §9); "
          f"{len(meta['seeds'])} seeds, profile `{meta['profile']}`. Errors are exact per-task population "
          f"errors of ŷ, squared and divided by d (docs/theory.md §1: the zero predictor scores 1).\n\n" + text.table(head, rows) +
          "\n\n![loss](../figures/one_layer_loss.png)\n\n*Training curves of every seed (lines) end at "
          "their held-out mean error (dots); a seed that stalls on a plateau stays visible. The dashed line "
          "is the optimal one-step learner on the same tasks, the dotted line its closed form.*\n\n"
          "![preconditioner](../figures/one_layer_preconditioner.png)\n\n*The learned effective preconditioner "
          "Γ_eff = −W_V[y,y]·(W_Qᵀ W_K)[x,x] of the median seed beside the optimum; look for a diagonal that "
          "matches, and for the anisotropic case a diagonal that follows Γ*, not η* I.*\n")


def summary(table: engine.Table) -> str:
  """Per case, the seeds' mean excess of the learned Γ_eff's exact error over the optimum, with its 95 % CI."""
  parts = []
  for case in table.unique("case"):
    s = table.seeds(case=case, measure="Gamma_eff_exact_loss")
    closed = table.value("closed_form", case=case, seed=None)
    excess = 100 * (table.values("Gamma_eff_exact_loss", case=case) / closed - 1)
    parts.append(f"{case} {text.interval(excess, 2, ' %')} ({len(s)} seeds, "
                 f"{table.n_tasks('model_mean', case=case, seed=s[0]):,} held-out tasks per seed)")
  return "excess error of the learned step over the optimum (exact), 95 % CI over seeds: " + "; ".join(parts)
