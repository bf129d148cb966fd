"""Training deep models: which recipe gives L ≥ 3 linear attention a finite, GD++-like expected error.

The study's figures, report section and summary line, read from its table alone (lintheory.studies.views).
"""

from __future__ import annotations

import numpy as np

from lintheory.studies import engine, text
from lintheory.studies.deep_recipes import CANDIDATES, GDPP_LIKE, L8_FACTOR, LAM_BINS, _ALL, decide, worst_mean
from lintheory.studies.views import common

CAP = 1e30  # figures draw larger errors (up to overflow) at this value, so one log axis holds them


def _color(recipe: str) -> str:
  """One colour per recipe in every panel."""
  return f"C{_ALL.index(recipe) % 10}" if recipe in _ALL else "C9"


def _recipes(table: engine.Table, L: int) -> list[str]:
  return [r for r in table.unique("recipe", measure="model_mean", L=L) if r != "gd_pp"]


def plot(table: engine.Table, meta: dict, out) -> list:
  paths = []
  Ls = table.unique("L", measure="model_mean")
  fig, axes = common.subplots(1, len(Ls), figsize=(max(3.3 * len(Ls), 7.5), 3.6))
  for ax, L in zip(axes[0], Ls):
    names = _recipes(table, L)
    for j, r in enumerate(names):
      first = j == 0 and L == Ls[0]
      common.seed_points(ax, j - 0.2, table.values("model_median", L=L, recipe=r), color="C0",
                          label="median task error (each seed)" if first else None)
      for dx, m, c, mk, lab in ((0.05, "model_p9999", "C2", "^", "99.99th percentile"), (0.3, "model_mean", "C3", "x",
                                                                                         "mean (the expected error)")):
        v = np.minimum(table.values(m, L=L, recipe=r), CAP)
        ax.plot(j + dx + np.zeros(v.size), v, mk, color=c, ms=5, label=lab + " (each seed)" if first else None)
    for m, ls, lab in (("model_mean", "--", "GD++ mean"), ("model_median", ":", "GD++ median")):
      ax.axhline(table.value(m, L=L, recipe="gd_pp", seed=None), color="k", ls=ls, lw=1,
                 label=lab if L == Ls[0] else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=6)
    ax.set_title(f"L = {L}: {table.n_tasks('model_mean', L=L, recipe=names[0]):,} tasks per model", fontsize=8)
  axes[0, 0].set_ylabel(f"exact per-task error / d (log;\nabove {CAP:.0e} drawn at {CAP:.0e})")
  fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
  paths += common.save_tight(fig, out, "deep_recipes_errors", rect=(0, 0.12, 1, 1))

  fig, axes = common.subplots(1, len(Ls), figsize=(max(3.3 * len(Ls), 7.5), 3.0))
  for ax, L in zip(axes[0], Ls):
    for r in _recipes(table, L):
      for n, seed in enumerate(table.seeds(measure="train_loss_median", L=L, recipe=r)):
        rows = table.where(measure="train_loss_median", L=L, recipe=r, seed=seed).rows
        ax.plot([x["step"] for x in rows], [x["value"] for x in rows], color=_color(r), lw=0.9, alpha=0.8,
                label=r if n == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    common.title_and_legend(ax, f"L = {L}")
  paths += common.save_tight(fig, out, "deep_recipes_curves",
                             ylabel="training loss (median per window,\nsquared query error, log)")

  fig, axes = common.subplots(1, len(Ls), figsize=(max(3.3 * len(Ls), 7.5), 3.4), sharey=True)
  for ax, L in zip(axes[0], Ls):
    names = [*_recipes(table, L), "gd_pp"]
    for j, r in enumerate(names):
      first = j == 0 and L == Ls[0]
      for dx, m, c, mk, lab in ((-0.2, "share_worst_0.0001", "C3", "o", "worst 0.01 % of tasks"),
                                (0.0, "share_lam_max_top", "C1", "s", "λ_max(X̂ᵀX̂/N) in the top 0.1 %"),
                                (0.2, "share_w_norm_top", "C4", "d", "tasks with ‖w‖ in the top 0.1 %")):
        v = table.values(m, L=L, recipe=r)
        ax.plot(j + dx + np.zeros(v.size), v, mk, color=c, ms=4, alpha=0.8, label=lab if first else None)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=6)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"L = {L}", fontsize=8)
  axes[0, 0].set_ylabel("share of the summed error (each seed)")
  fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
  paths += common.save_tight(fig, out, "deep_recipes_tail", rect=(0, 0.07, 1, 1))

  fig, axes = common.subplots(1, len(Ls), figsize=(max(3.3 * len(Ls), 7.5), 3.4))
  edges = (0.0, *LAM_BINS)
  ticks = [f"{100 * a:g}–{100 * b:g}" for a, b in zip(edges[:-1], edges[1:])]
  for ax, L in zip(axes[0], Ls):
    for r in _recipes(table, L):
      for n, seed in enumerate(table.seeds(measure="bin_mean", L=L, recipe=r)):
        v = np.minimum([table.value("bin_mean", L=L, recipe=r, seed=seed, lam_q=q) for q in LAM_BINS], CAP)
        ax.plot(range(len(LAM_BINS)), v, "o-", color=_color(r), lw=0.9, ms=2.5, alpha=0.8, label=r if n == 0 else None)
    ax.plot(range(len(LAM_BINS)), [table.value("bin_mean", L=L, recipe="gd_pp", seed=None, lam_q=q) for q in LAM_BINS],
            "k-", lw=2, label="GD++")
    ax.set_yscale("log")
    ax.set_xticks(range(len(LAM_BINS)))
    ax.set_xticklabels(ticks, rotation=30, ha="right", fontsize=6)
    ax.set_xlabel("tasks by the percentile of λ_max(X̂ᵀX̂/N)", fontsize=7)
    common.title_and_legend(ax, f"L = {L}")
  paths += common.save_tight(fig, out, "deep_recipes_spectrum",
                             ylabel=f"mean error / d in the band (log;\nabove {CAP:.0e} drawn at {CAP:.0e})")
  return paths


def _per_seed(table, m, **match) -> str:
  return ", ".join(text.num(v) for v in table.values(m, **match))


def report(table: engine.Table, meta: dict) -> str:
  head = ["L", "recipe", "mean (each seed)", "median (each seed)", "p99.99 (each seed)", "max",
          "share > 10× median", "worst 0.01 % carry", "λ_max top 0.1 % carry", "skipped steps"]
  rows = []
  for L in table.unique("L", measure="model_mean"):
    for r in [*_recipes(table, L), "gd_pp"]:
      m = dict(L=L, recipe=r)
      rows.append([str(L), "GD++ (fitted)" if r == "gd_pp" else f"`{r}`", _per_seed(table, "model_mean", **m),
                   _per_seed(table, "model_median", **m), _per_seed(table, "model_p9999", **m),
                   text.num(table.values("model_max", **m).max()),
                   text.num(table.values("model_frac_gt_10x_median", **m).max(), 2),
                   _per_seed(table, "share_worst_0.0001", **m), _per_seed(table, "share_lam_max_top", **m),
                   "" if r == "gd_pp" else _per_seed(table, "skipped_steps", **m)])
  dec = decide(table)
  lines, reasons = [], []
  for L, d in dec.items():
    lines.append(f"- L = {L}: `{d['recipe']}` — worst seed's mean {text.num(d['worst_mean'])} against GD++ "
                 f"{text.num(d['gd_pp_mean'])}: " + ("GD++-like" if d["gd_pp_like"] else
                                                        f"**not** GD++-like (> {GDPP_LIKE:g}× GD++)")
                 + f"; median task error {text.num(d['median'])} (GD++ {text.num(d['gd_pp_median'])})."
                 + (f" Without the tail-aware batch or loss, the best recipe is `{d['best_train_fit_recipe']}` "
                    f"(worst seed's mean {text.num(worst_mean(table, L, d['best_train_fit_recipe']))})."
                    if d["recipe"] in CANDIDATES and CANDIDATES[d["recipe"]].own_loop and d["best_train_fit_recipe"]
                    else ""))
  for L in dec:
    for r in _recipes(table, L):
      ref = table.value("model_mean", L=L, recipe="gd_pp", seed=None)
      for seed in table.seeds(measure="model_mean", L=L, recipe=r):
        m = dict(L=L, recipe=r, seed=seed)
        if table.value("model_mean", **m) <= GDPP_LIKE * ref:
          continue
        top = table.value("bin_mean", lam_q=1.0, **m) / table.value("bin_mean", lam_q=LAM_BINS[0], **m)
        top_ref = (table.value("bin_mean", L=L, recipe="gd_pp", seed=None, lam_q=1.0)
                   / table.value("bin_mean", L=L, recipe="gd_pp", seed=None, lam_q=LAM_BINS[0]))
        reasons.append(f"- L = {L} `{r}` seed {seed}: mean {text.num(table.value('model_mean', **m))} "
                       f"(median {text.num(table.value('model_median', **m))}); the worst 0.01 % of tasks carry "
                       f"{text.num(100 * table.value('share_worst_0.0001', **m), 3)} % of the summed error, the "
                       f"top 0.1 % by λ_max carry {text.num(100 * table.value('share_lam_max_top', **m), 3)} % "
                       f"(by ‖w‖: {text.num(100 * table.value('share_w_norm_top', **m), 3)} %); the worst task's "
                       f"λ_max is at the {text.num(100 * table.value('lam_max_rank_of_worst', **m), 4)}th "
                       f"percentile; mean error of the top 0.01 % by λ_max / of the lower half: {text.num(top)} "
                       f"(GD++: {text.num(top_ref)}).")
  if 8 in dec and 4 in dec:
    a, b = dec[8]["median"], dec[4]["median"]
    ok = a <= L8_FACTOR * b
    lines.append(f"- L = 8 against L = 4, median task error of the chosen recipes (`{dec[8]['recipe']}`, "
                 f"`{dec[4]['recipe']}`): {text.num(a)} vs {text.num(b)}, ratio {text.num(a / b)}: "
                 + ("within" if ok else "**failed**: not within") + f" {L8_FACTOR:g}× (curves below); the best "
                 f"medians of any recipe: {text.num(dec[8]['best_median'])} (`{dec[8]['best_median_recipe']}`) vs "
                 f"{text.num(dec[4]['best_median'])} (`{dec[4]['best_median_recipe']}`).")
  cands = [r for r in table.unique("recipe", measure="cfg_lr") if r in CANDIDATES]
  legend = "\n".join(f"- `{r}`: {CANDIDATES[r].label}" for r in cands)
  return ("Per depth and recipe, each seed's exact per-task population error (normalised by d) on "
          f"{table.n_tasks('model_mean', L=table.unique('L', measure='model_mean')[0], recipe='gd_pp'):,} "
          "fresh tasks, the same tasks for every model and for the fitted GD++ of that depth. "
          f"{meta['settings']['train']['steps']} Adam steps of {meta['settings']['train']['batch_size']} fresh "
          f"tasks (× the recipe's batch factor), init {meta['settings']['train']['init_scale']:g}, d = "
          f"{meta['settings']['d']}, N = {meta['settings']['n_context']}.\n\n" + legend + "\n\n"
          + text.table(head, rows) +
          "\n\n'worst 0.01 % carry': the share of the summed error carried by the worst 0.01 % of tasks; "
          "'λ_max top 0.1 % carry': the share carried by the 0.1 % of tasks whose demonstrations' covariance "
          "has the largest top eigenvalue. A share near 1 means the mean is a handful of tasks.\n\n"
          f"Decision (the recipe whose worst seed has the smallest mean; GD++-like means every seed's mean "
          f"within {GDPP_LIKE:g}× GD++'s):\n\n" + "\n".join(lines) + "\n\n"
          + ("Where the mean of each model that is not GD++-like comes from:\n\n" + "\n".join(reasons) + "\n\n"
             if reasons else "")
          + "![errors](../figures/deep_recipes_errors.png)\n\n*Per recipe, each seed's median task error (dots, "
          "bar: median over seeds), 99.99th percentile (triangles) and mean (crosses); lines: GD++ of the same "
          "depth. A cross far above its dot is a mean made by a few tasks.*\n\n"
          "![curves](../figures/deep_recipes_curves.png)\n\n*Training curves: median training loss per "
          "window of steps, each seed a line.*\n\n"
          "![tail](../figures/deep_recipes_tail.png)\n\n*Where the summed error comes from: the worst 0.01 % "
          "of tasks, and the 0.1 % with the most extreme demonstration spectrum or task norm (each seed).*\n\n"
          "![spectrum](../figures/deep_recipes_spectrum.png)\n\n*Mean error of the tasks in each band of "
          "λ_max(X̂ᵀX̂/N) percentiles (each seed a line; GD++ black): how fast the error grows with the "
          "demonstrations' largest eigenvalue.*\n")


def summary(table: engine.Table) -> str:
  """Per depth, the recipe whose worst seed has the smallest mean error, against GD++, with the median task error."""
  seeds = len(table.seeds(measure="model_mean"))
  parts = [f"L={L} {d['recipe']}: worst seed's mean {text.num(d['worst_mean'])} (GD++ {text.num(d['gd_pp_mean'])}), "
           f"median task error {text.num(d['median'])}" for L, d in decide(table).items()]
  return (f"best recipe per depth over {seeds} seeds, {table.n_tasks('model_mean'):,} tasks per model: "
          + "; ".join(parts))
