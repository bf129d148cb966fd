"""In-weights vs in-context knowledge: does low-rank pruning trade one for the other (the LASER effect)?

The study's figures, report section and summary line, read from its table alone (lintheory.studies.views).
"""

from __future__ import annotations

import numpy as np

from lintheory.studies import engine, text
from lintheory.studies.in_weights import EDITS, MODULES, TASK_SETS, gain_test, headroom
from lintheory.studies.views import common

TASK_LABELS = {"fresh": "fresh tasks", "w0": "w₀ tasks"}


def _decide(t: dict) -> str:
  iv = t["iv"]
  if iv is None:
    return "no interval (1 seed)"
  if iv.lo > 0:
    return "helps"
  if iv.hi < 0:
    return "hurts"
  if t["equivalent"]:
    return "no effect (equivalent)"
  return "inconclusive" if t["testable"] else "inconclusive (a seed is not finite: no equivalence test)"


def _edit_label(table, p, edit, seed) -> str:
  rows = table.where(measure="chosen_rank", p=p, edit=edit, seed=seed).rows
  if not rows or rows[0]["module"] in ("", None):
    return "none"
  layer = int(table.value("chosen_layer", p=p, edit=edit, seed=seed))
  return f"{rows[0]['module']}{layer + 1}@{int(rows[0]['value'])}"


def _sparse_symlog_ticks(axis, lim, linthresh: float = 1e-3, per_side: int = 4) -> None:
  """At most per_side decades ±10^k on each side of 0 (gains span 20 decades when a layer is removed)."""
  ticks = [0.0]
  for sign, edge in ((-1, lim[0]), (1, lim[1])):
    if sign * edge > linthresh:
      k_lo, k_hi = int(np.log10(linthresh)), int(np.floor(np.log10(sign * edge)))
      step = max(1, -(-(k_hi - k_lo + 1) // per_side)) if k_hi - k_lo >= 3 else k_hi - k_lo + 1  # few decades: one
      ticks += [sign * 10.0**k for k in range(k_hi, k_lo - 1, -step)]
  axis.set_ticks(sorted(ticks))
  axis.set_ticklabels(["0" if t == 0 else f"{'−' if t < 0 else ''}10^{int(round(np.log10(abs(t))))}"
                       for t in sorted(ticks)], fontsize=6)


def plot(table: engine.Table, meta: dict, out) -> list:
  ps = table.unique("p", measure="gain")
  paths = []
  fig, axes = common.subplots(1, len(ps), figsize=(max(3.8 * len(ps), 5.0), 3.8))
  for ax, p in zip(axes[0], ps):
    base = {kind: {sd: table.value("select_mean", p=p, edit="none", tasks=kind, seed=sd)
                   for sd in table.seeds(measure="gain", p=p)} for kind in TASK_SETS}
    for m, marker in zip(MODULES, "os"):
      for layer in table.unique("layer", measure="select_mean", p=p, module=m):
        pts = []
        for r in table.unique("rank", measure="select_mean", p=p, module=m, layer=layer):
          g = {kind: np.median([base[kind][row["seed"]] - row["value"] for row in table.where(
              measure="select_mean", p=p, module=m, layer=layer, rank=r, tasks=kind).rows]) for kind in TASK_SETS}
          pts.append((g["fresh"], g["w0"]))
        x, y = np.asarray(pts).T
        ax.plot(x, y, marker, ms=3, ls="-", lw=0.5, alpha=0.8, color=f"C{layer}",
                label=f"{m}, layer {layer + 1}")
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.margins(0.15)
    _sparse_symlog_ticks(ax.xaxis, ax.get_xlim())
    _sparse_symlog_ticks(ax.yaxis, ax.get_ylim())
    ax.set_xlabel("gain on fresh tasks (in context)")
    ax.set_title(f"p = {p}: every (module, layer, rank), median over seeds\n"
                 f"of the mean on {table.n_tasks('select_mean', p=p):,} selection tasks per seed", fontsize=7)
  axes[0, 0].set_ylabel("gain on w₀ tasks (in weights)")
  axes[0, -1].legend(fontsize=5, ncol=2)
  fig.suptitle("Selection tasks: gain = unpruned − pruned error (> 0: pruning helps)\n"
               "upper left: w₀ knowledge bought with in-context error", fontsize=8)
  paths += common.save_tight(fig, out, "in_weights_tradeoff")

  fig, axes = common.subplots(1, 2, figsize=(7.6, 3.2), sharey=True)
  for ax, edit in zip(axes[0], EDITS[1:]):
    for c, kind in enumerate(TASK_SETS):
      for j, p in enumerate(ps):
        frac = 100 * table.values("gain", p=p, edit=edit, tasks=kind) / headroom(table, p, kind)
        common.seed_points(ax, j + (c - 0.5) * 0.35, frac, color=f"C{c}", width=0.2,
                            label=f"scored on {TASK_LABELS[kind]}" if j == 0 else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(ps)))
    ax.set_xticklabels([f"p = {p}" for p in ps])
    ax.set_yscale("symlog", linthresh=1.0)
    common.title_and_legend(ax, f"edit chosen on {'fresh' if edit == 'icl' else 'w₀'} tasks ({edit!r})")
  paths += common.save_tight(fig, out, "in_weights_gain",
                             ylabel="confirmation gain, % of headroom\n(unpruned − floor), each dot a seed")
  return paths


def report(table: engine.Table, meta: dict) -> str:
  s = meta["settings"]
  rows = []
  for p in table.unique("p", measure="gain"):
    seeds = table.seeds(measure="gain", p=p)
    for edit in EDITS[1:]:
      for kind in TASK_SETS:
        t = gain_test(table, p, edit, kind, s["equiv_frac"])
        se = np.median(table.values("gain_se", p=p, edit=edit, tasks=kind))
        rows.append([str(p), edit, kind, text.num(np.median(table.values("confirm_mean", p=p, edit="none", tasks=kind))),
                     text.num(t["gain"].mean()), text.seed_ci(t["gain"]), text.num(se), text.num(t["margin"]),
                     _decide(t),
                     ", ".join(_edit_label(table, p, edit, x) for x in seeds)])
  bayes = [f"p = {p}: {text.num(table.value('bayes_mean', p=p, tasks='fresh', seed=None))}"
           for p in table.unique("p", measure="gain")]
  per_seed = [f"p = {p}: " + ", ".join(text.num(v) for v in table.values("confirm_mean", p=p, edit="none",
                                                                       tasks="fresh"))
              for p in table.unique("p", measure="gain")]
  n = table.n_tasks("gain", p=table.unique("p", measure="gain")[0], edit="icl", tasks="fresh")
  return (f"ReLU-MLP transformer, L = {s['layers']}, d = {s['d']}, N = {s['n_context']}, σ = {s['noise_std']}, "
          f"trained with w = w₀ on a share p of tasks. Each of MLP and attention per layer is truncated to ranks "
          f"{s['ranks']}; the edit is chosen on {s['select_tasks']:,} tasks of each kind and scored on "
          f"{n:,} others of each kind (sampled queries, squared error ÷ d; 'SE' is the standard error over tasks "
          f"of one seed's paired gain). Bayes error on fresh tasks: {'; '.join(bayes)}. The equivalence margin is "
          f"{100 * s['equiv_frac']:g} % of the headroom (unpruned − Bayes on fresh tasks, unpruned − 0 on w₀ "
          f"tasks). Unpruned mean error on fresh tasks, seed by seed (a seed far above the others has a heavy "
          f"tail of blown-up tasks, which dominates its means and gains): {'; '.join(per_seed)}.\n\n"
          + text.table(["p", "edit", "scored on", "unpruned error (median)", "mean gain", "95 % CI over seeds",
                        "SE over tasks (median)", "margin", "verdict", "chosen edit per seed (module, layer counted from 1, @ kept rank)"],
                       rows)
          + "\n\n![trade-off](../figures/in_weights_tradeoff.png)\n\n*Each point is one truncation (module, layer, "
          "rank) on the selection tasks, its gain on fresh tasks against its gain on w₀ tasks (median over seeds; "
          "symmetric-log axes). Points in the upper left would be LASER's trade: in-weights knowledge bought with "
          "in-context error; points right of zero would be pruning that helps in-context learning.*\n\n"
          "![gain](../figures/in_weights_gain.png)\n\n*The chosen edits on the disjoint confirmation tasks, per "
          "seed, as a share of the headroom. An edit chosen for w₀ tasks that helps them while hurting fresh "
          "tasks is the trade; zero means the unpruned model was kept or the edit does nothing.*\n")


def summary(table: engine.Table) -> str:
  """Per p > 0, the mean gain of the edit chosen on w₀ tasks, on w₀ and on fresh tasks, with 95 % CIs."""
  parts = []
  for p in [p for p in table.unique("p", measure="gain") if p > 0]:
    w0, fresh = (table.values("gain", p=p, edit="facts", tasks=k) for k in ("w0", "fresh"))
    parts.append(f"p={p}: on w₀ {text.interval(w0)}, on fresh {text.interval(fresh)} ({w0.size} seeds, "
                 f"{table.n_tasks('gain', p=p, edit='facts', tasks='w0'):,} tasks per set)")
  return "gain (error units) of the edit chosen on w₀ tasks, 95 % CI over seeds: " + "; ".join(parts)
