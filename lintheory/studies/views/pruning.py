"""Pruning one layer at a time: how much damage by depth, what it does to the implicit trajectory.

The study's figures, report section and summary line, read from its table alone (lintheory.studies.views).
"""

from __future__ import annotations

import numpy as np

from lintheory.studies import engine, text
from lintheory.studies.pruning import DAMAGE_RANKS, _models, attn_deep_minus_shallow, damage, deep_minus_shallow
from lintheory.studies.views import common

MODULE_COLORS = {"attn": 1, "q": 2, "k": 3, "v": 4, "mlp": 5}  # one colour per module in every panel


def plot(table: engine.Table, meta: dict, out) -> list:
  models = _models(table)
  paths = []
  fig, axes = common.subplots(1, len(models), figsize=(3.3 * len(models), 3.0))
  for ax, (m, L) in zip(axes[0], models):
    for module in table.unique("module", measure="median_error", model=m, L=L):
      if module is None:
        continue
      c = MODULE_COLORS[module]
      for n, seed in enumerate(table.seeds(measure="median_error", model=m, L=L)):
        dmg = damage(table, m, L, module, seed)
        finite = np.isfinite(dmg)
        ax.plot(np.arange(L)[finite], dmg[finite], "o-", color=f"C{c}", lw=0.7, ms=2.5, alpha=0.6,
                label=module if n == 0 else None)
        ax.plot(np.arange(L)[~finite], np.full((~finite).sum(), 0), "^", color=f"C{c}", ms=5)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title(f"{m}, L = {L}", fontsize=8)
    ax.set_xlabel("pruned layer (0 = first)")
    ax.set_xticks(range(L))
  axes[0, 0].set_ylabel("damage: mean log10(median error\npruned / unpruned) over r ∈ {9, 5, 2, 1}")
  for ax in axes[0]:
    ax.legend(fontsize=6, title="module, each seed", title_fontsize=6)
  paths += common.save_tight(fig, out, "pruning_damage_by_layer")

  linear = [(m, L) for m, L in models if table.where(measure="w_hat_rel_change", model=m, L=L).rows]
  if linear:
    fig, axes = common.subplots(1, len(linear), figsize=(3.6 * len(linear), 3.0))
    for ax, (m, L) in zip(axes[0], linear):
      rank = min(r for r in table.unique("rank", measure="w_hat_rel_change", model=m, L=L))
      for layer in range(L):
        med, n = _trajectory_change(table, m, L, rank, layer)
        if n == 0:
          continue
        t, finite = np.arange(layer, L), np.isfinite(med)
        label = f"layer {layer} pruned" + (f" ({n} seeds)" if n < len(table.seeds(model=m, L=L)) else "")
        ax.plot(t[finite], med[finite], "o-", color=f"C{layer % 10}", ms=3, label=label)
        if not finite.all():  # infinite: a triangle on the top edge
          ax.plot(t[~finite], np.full((~finite).sum(), 1.0), "^", color=f"C{layer % 10}", ms=6,
                  transform=ax.get_xaxis_transform(), clip_on=False)
      ax.set_yscale("log")
      ax.set_title(f"{m}, L = {L}: attn pruned to rank {rank}", fontsize=8)
      ax.set_xlabel("layer t")
      ax.set_xticks(range(L))
      ax.legend(fontsize=6)
    paths += common.save_tight(fig, out, "pruning_trajectory",
                               ylabel=f"‖ŵ_t − ŵ_t⁰‖ / ‖ŵ_t⁰‖ (median over\n{_analysis_tasks(table)} tasks, then over seeds)")
  return paths


def _trajectory_change(table: engine.Table, m: str, L: int, rank: int, layer: int) -> tuple[np.ndarray, int]:
  """Median over seeds of ŵ_t's change for t = layer..L−1 (attn pruned to `rank` at `layer`), from
  the seeds with a value at every t, so each curve follows the same seeds; and their count."""
  rows = {}
  for t in range(layer, L):
    for r in table.where(measure="w_hat_rel_change", model=m, L=L, module="attn", rank=rank, layer=layer, t=t).rows:
      rows.setdefault(r["seed"], {})[t] = r["value"]
  complete = [v for v in rows.values() if len(v) == L - layer]
  if not complete:
    return np.full(L - layer, np.nan), 0
  return np.median([[v[t] for t in range(layer, L)] for v in complete], axis=0), len(complete)


def _analysis_tasks(table: engine.Table) -> str:
  """The task count behind the trajectory changes (one value, or a range if they differ)."""
  n = sorted(int(x) for x in table.unique("n_tasks", measure="w_hat_rel_change"))
  return f"{n[0]:,}" if len(n) == 1 else f"{n[0]:,}–{n[-1]:,}"


def report(table: engine.Table, meta: dict) -> str:
  rows = []
  for m, L in _models(table):
    seeds = table.seeds(measure="median_error", model=m, L=L)
    base = [v for x in seeds for v in table.values("median_error", model=m, L=L, seed=x, layer=None)]
    for module in [x for x in table.unique("module", measure="median_error", model=m, L=L) if x]:
      dms = deep_minus_shallow(table, m, L, module)
      iv = text.over_seeds(dms)
      rows.append([m, str(L), module, str(len(seeds)), text.num(np.median(base)),
                   text.interval(dms, 2) if iv else "n/a (fewer than 2 seeds with a value)",
                   f"{int(np.sum(dms < 0))}/{len(dms)}"])
  n = table.n_tasks("median_error", model=_models(table)[0][0], L=_models(table)[0][1])
  return (f"Damage = mean over kept ranks {DAMAGE_RANKS} of log10(median task error pruned / unpruned), "
          f"each on {n:,} held-out tasks per seed and configuration (medians: a screen, not a mean "
          "estimate). Deep − shallow < 0 means pruning the deeper half of the layers does less damage "
          "(Remark 5's prediction). The interval is over seeds: the 95 % t-interval of the mean when every seed's "
          "value is finite, else the median with an order-statistic interval of stated coverage, every seed in it "
          "(an overflowed half counts as infinite damage; docs/theory.md §14).\n\n"
          + text.table(["model", "L", "module", "seeds", "unpruned median error", "deep − shallow damage: mean "
                        "[95 % t-interval], or median [order-statistic interval] where a seed overflowed", "seeds with deep < shallow"], rows)
          + "\n\n![damage](../figures/pruning_damage_by_layer.png)\n\n*Damage of pruning each layer, per module "
          "and seed (triangles on the zero line: overflow). Look at whether the curves fall from left to right, "
          "as Remark 5 predicts.*\n" + _trajectory_caption(table))


def _trajectory_caption(table: engine.Table) -> str:
  if not table.where(measure="w_hat_rel_change").rows:  # only linear attention has an implicit trajectory
    return ""
  return ("\n![trajectory](../figures/pruning_trajectory.png)\n\n*How far each later implicit predictor ŵ_t "
          "moves when one layer's attention is truncated (per task, relative to the unpruned ŵ_t; median over "
          f"{_analysis_tasks(table)} tasks, then over seeds). Pruning layer k leaves ŵ_t for t < k exactly "
          "unchanged (Theorem 1; not drawn on the log scale); a triangle on the top edge: the median change is "
          "infinite (ŵ_t overflowed). Look at whether the change grows or shrinks on its way to the output.*\n")


def summary(table: engine.Table) -> str:
  """Per depth of the linear models, deep − shallow log10 damage of pruning attention over all seeds
  (the interval of claims(): t, or order statistics where a seed overflowed)."""
  table = engine.Table(table.where(measure="median_error").rows, table.keys)  # the only measure damage reads
  parts = []
  for L, dms in attn_deep_minus_shallow(table):
    iv = text.over_seeds(dms)
    parts.append(f"L={L} " + (text.interval(dms, 2) if iv else "no value (fewer than 2 seeds)")
                 + f", deep < shallow in {int(np.sum(dms < 0))} of {dms.size} seeds")
  return ("deep − shallow log10 damage of pruning attention (< 0: deep layers more stable), over seeds, "
          f"median task errors on {table.n_tasks('median_error'):,} tasks: " + "; ".join(parts))
