"""Implicit gradient descent, layer by layer: trained models against explicit learners of the same depth.

The study's figures, report section and summary line, read from its table alone (lintheory.studies.views).
"""

from __future__ import annotations

import numpy as np

from lintheory.run import references
from lintheory.studies import engine, text
from lintheory.studies.implicit_gd import KINDS, closest
from lintheory.studies.views import common

STYLE = {"gd": ("C1", "--"), "gd_step": ("C2", "--"), "gd_pp": ("C3", "-."), "precond": ("C4", ":"),
         "ridge": ("k", ":")}
LABELS = {**references.LABELS, "ridge": "ridge (Bayes floor)"}


def plot(table: engine.Table, meta: dict, out) -> list:
  paths = []
  sigmas = table.unique("sigma", measure="model_mean")
  fig, axes = common.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 3.4))
  for ax, sigma in zip(axes[0], sigmas):
    Ls = table.unique("L", measure="model_mean", sigma=sigma)
    for j, L in enumerate(Ls):
      common.seed_points(ax, j, table.values("model_median", sigma=sigma, L=L), color="C0",
                          label="trained, median task error (each seed)" if j == 0 else None)
      ax.plot(j + 0.3 + np.zeros(len(table.values("model_mean", sigma=sigma, L=L))),
              table.values("model_mean", sigma=sigma, L=L), "x", color="C3", ms=4,
              label="trained, mean error (each seed)" if j == 0 else None)
    for kind in (*KINDS, "ridge"):
      if any(table.values("ref_mean", sigma=sigma, L=L, reference=kind, seed=None).size != 1 for L in Ls):
        continue  # refused at some depth (ref_converged): no line rather than a line through gaps
      y = np.array([table.value("ref_mean", sigma=sigma, L=L, reference=kind, seed=None) for L in Ls])
      c, ls = STYLE[kind]
      if kind == "ridge" and y.max() < 1e-8:  # σ = 0 and N > d: ridge interpolates, its error is 0
        ax.plot([], [], color=c, ls=ls, lw=1, label="ridge (Bayes floor): 0 at σ = 0")
        continue
      ax.plot(range(len(Ls)), y, color=c, ls=ls, lw=1, label=LABELS[kind] + ", mean")
    ax.set_yscale("log")
    ax.set_xticks(range(len(Ls)))
    ax.set_xticklabels([f"L={L}" for L in Ls])
    ax.set_title(f"σ = {sigma}: exact per-task error, {table.n_tasks('model_mean', sigma=sigma, L=Ls[0]):,} "
                 f"tasks per model", fontsize=8)
    ax.legend(fontsize=6)
  paths += common.save_tight(fig, out, "implicit_gd_loss_vs_L", ylabel="error of ŷ, squared ÷ d (log)")

  Ls = [L for L in table.unique("L", measure="w_rel_dist", sigma=0.0) if L > 1] or table.unique("L", measure="w_rel_dist")
  fig, axes = common.subplots(1, len(Ls), figsize=(2.6 * len(Ls), 2.8), sharey=True)
  for ax, L in zip(axes[0], Ls):
    for kind in KINDS:
      c, ls = STYLE[kind]
      for n, seed in enumerate(table.seeds(measure="w_rel_dist", sigma=0.0, L=L)):
        y = table.values("w_rel_dist", sigma=0.0, L=L, reference=kind, seed=seed)
        if y.size != L:
          continue  # refused
        ax.plot(range(1, L + 1), y, color=c, ls=ls, lw=0.8, alpha=0.7,
                label=LABELS[kind] if n == 0 else None)
    ax.set_title(f"L = {L}, σ = 0", fontsize=8)
    ax.set_xlabel("layer t")
    ax.set_xticks(range(1, L + 1))
  axes[0, 0].set_ylabel("‖ŵ_t − w_t‖ / ‖w_t‖\n(distance to the reference iterate)")
  axes[0, 0].set_ylim(bottom=0)
  axes[0, -1].legend(fontsize=6)
  paths += common.save_tight(fig, out, "implicit_gd_trajectory")
  return paths


def _ref_mean(table: engine.Table, sigma, L, kind) -> str:
  v = table.values("ref_mean", sigma=sigma, L=L, reference=kind, seed=None)
  if v.size == 1:
    return text.num(v[0])
  g = table.values("ref_grad_norm", sigma=sigma, L=L, reference=kind)
  return f"refused (fit not converged, gradient norm {text.num(g[0]) if g.size else '?'})"


def _certificate(table: engine.Table) -> str:
  g, ok = table.values("ref_grad_norm"), table.values("ref_converged")
  if not g.size:
    return ""
  return (f"\n\nEvery reference is at its optimum: the closed form at L = 1, otherwise a trust-region Newton fit "
          f"on {table.n_tasks('ref_grad_norm') or 'a fixed sample of'} tasks stopped on its gradient norm (largest over "
          f"all fits: {text.num(g.max(), 2)}); {int((ok == 0).sum())} fit(s) did not converge and are refused, "
          "not compared (docs/theory.md §9).")


def report(table: engine.Table, meta: dict) -> str:
  head = ["σ", "L", "seeds", "trained: median task error (median over seeds)", "trained: mean error per seed",
          "trained: largest task error", "GD++ mean", "per-step GD mean", "ridge mean", "tasks per model"]
  rows = []
  for sigma in table.unique("sigma", measure="model_mean"):
    for L in table.unique("L", measure="model_mean", sigma=sigma):
      seeds = table.seeds(measure="model_mean", sigma=sigma, L=L)
      means = table.values("model_mean", sigma=sigma, L=L)
      rows.append([text.num(sigma, 2), str(L), str(len(seeds)),
                   text.num(np.median(table.values("model_median", sigma=sigma, L=L))),
                   ", ".join(text.num(m) for m in means),
                   text.num(table.values("model_max", sigma=sigma, L=L).max()),
                   _ref_mean(table, sigma, L, "gd_pp"), _ref_mean(table, sigma, L, "gd_step"),
                   text.num(table.value("ref_mean", sigma=sigma, L=L, reference="ridge", seed=None)),
                   f"{table.n_tasks('model_mean', sigma=sigma, L=L):,}"])
  ident = table.values("identity_max_abs_err")
  return ("The Theorem-1 identity (the implicit trajectory reproduces every forward pass) holds to "
          f"{text.num(ident.max())} (largest absolute error over all models, float64).\n\n"
          + text.table(head, rows) + _certificate(table) +
          "\n\nMeans are listed per seed because a deep model's mean is dominated by its rarest tasks; "
          "the median task error is the typical behaviour.\n\n"
          "![loss vs depth](../figures/implicit_gd_loss_vs_L.png)\n\n*Exact per-task error against depth. "
          "Dots: each seed's median task error (bar: median over seeds); crosses: each seed's mean, which "
          "sits far above the median when a few tasks blow up. Lines: the fitted explicit references' means "
          "and the Bayes floor.*\n\n"
          "![trajectory](../figures/implicit_gd_trajectory.png)\n\n*Per layer, the relative distance of the "
          "model's implicit predictor ŵ_t to each reference's iterate w_t (each seed a line): the reference "
          "the model follows is the lowest curve at every layer, not only at the last.*\n")


def summary(table: engine.Table) -> str:
  """Per depth at σ = 0, the closest reference's final relative distance, with its 95 % CI over seeds."""
  near = closest(table)
  parts = [f"L={L} {best} {text.interval(d, 2, ci_sig=3)}" for L, (best, d) in near.items()]
  seeds = max((d.size for _, d in near.values()), default=0)
  L0 = table.unique("L", measure="model_mean")[0]
  return (f"identity error ≤ {text.num(table.values('identity_max_abs_err').max(), 2)}; final ‖ŵ − w_ref‖/‖w_ref‖ "
          f"to the closest reference, 95 % CI over {seeds} seeds ({table.n_tasks('w_rel_dist', L=L0):,} tasks): "
          + "; ".join(parts))
