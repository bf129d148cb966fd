"""Pruning one layer at a time: how much damage by depth, what it does to the implicit trajectory.

The paper's Fig. 1 in miniature (docs/theory.md §6 Remark 5, §7). Trained models (linear attention
at two depths, and softmax and ReLU-MLP variants the theory does not cover), one per seed: SVD-prune
one module (attn, q, k, v; mlp where present) of ONE layer at a kept rank r, and measure on held-out
tasks the median task error (robust to the heavy tail of deep models; the task count is in the
table), the relative change of every later implicit predictor ŵ_t, and each layer's condition
numbers (the paper's layer choice of Algorithm 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lintheory.core import prune, stats
from lintheory.run import profiles, sweep
from lintheory.studies import engine, figures, text

NAME = "pruning"
KEYS = ("model", "L", "layer", "module", "rank", "t", "matrix")
MODULE_COLORS = {"attn": 1, "q": 2, "k": 3, "v": 4, "mlp": 5}  # one colour per module in every panel
DAMAGE_RANKS = (9, 5, 2, 1)  # the paper's rates ξ = 0.1, 0.5, 0.75, 0.9 on 11×11 matrices


@dataclasses.dataclass(frozen=True)
class Model:
  name: str  # label: "linear", "softmax", "relu_mlp"
  L: int  # depth
  attention: str = "linear"  # "linear" or "softmax"
  mlp: str | None = None  # None or "relu"


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds
  models: tuple[Model, ...]  # the models pruned
  ranks: tuple[int, ...]  # kept ranks r < D swept in every layer and module
  eval_tasks: int  # held-out tasks per seed and configuration (a screen: medians are reported)
  d: int = 10  # input dimension
  n_context: int = 20  # N


PROFILES = {
    "tiny": Settings(profiles.PROFILES["tiny"], (Model("linear", 2),), ranks=(0, 2), eval_tasks=256, d=3,
                     n_context=8),
    "default": Settings(profiles.PROFILES["default"],
                        (Model("linear", 4), Model("linear", 8), Model("softmax", 4, attention="softmax"),
                         Model("relu_mlp", 4, mlp="relu")), ranks=(0, 1, 2, 4), eval_tasks=4096, d=5),
    "long": Settings(profiles.PROFILES["long"],
                     (Model("linear", 4), Model("linear", 8), Model("softmax", 4, attention="softmax"),
                         Model("relu_mlp", 4, mlp="relu")), ranks=(0, 1, 2, 5, 9), eval_tasks=4096),
    "full": Settings(profiles.PROFILES["full"],
                     (Model("linear", 4), Model("linear", 8), Model("softmax", 4, attention="softmax"),
                      Model("relu_mlp", 4, mlp="relu"), Model("softmax", 8, attention="softmax")),
                     ranks=tuple(range(11)), eval_tasks=65_536),
}


def run_model(s: Settings, m: Model, ctx: engine.Context) -> None:
  keys = {"model": m.name, "L": m.L}
  try:
    tr = engine.trained(s, ctx, d=s.d, n_context=s.n_context, layers=m.L, attention=m.attention, mlp=m.mlp)
  except RuntimeError as e:
    ctx.fail("train", str(e), **keys)
    return
  ctx.add_training(tr, **keys)
  modules = ("attn", "q", "k", "v") + (("mlp",) if m.mlp else ())
  cfg = sweep.SweepConfig(modules=modules, rates=(0.0,), ranks=tuple(r for r in s.ranks if r < tr.model.D),
                          n_eval=s.eval_tasks, n_analysis=64, bounds=False)
  res = sweep.run(tr.params, tr.seeds, tr.model, tr.task, cfg, progress=False)

  def add(measure, value, **kw):  # overflow is a value: NaN here comes only from inf − inf in a pruned model
    ctx.add(measure, np.inf if np.isnan(value) else value, **kw)

  for r in res.rows:
    if r["mode"] == "rate":  # ξ = 0: the unpruned model, one row per (layer, module); keep one
      if r["layer"] == 0 and r["module"] == "attn":
        add("median_error", r["icl_error_median"], seed=r["seed"], n_tasks=s.eval_tasks, rank=tr.model.D, **keys)
      continue
    where = dict(layer=r["layer"], module=r["module"], rank=r["rank"], **keys)
    add("median_error", r["icl_error_median"], seed=r["seed"], n_tasks=s.eval_tasks, **where)
    if m.attention == "linear" and m.mlp is None:
      for t in range(r["layer"], m.L):
        add("w_hat_rel_change", r[f"w_hat_rel_{t}"], seed=r["seed"], n_tasks=cfg.n_analysis, t=t, **where)
  for k, seed in enumerate(tr.seeds):
    kappa = prune.condition_numbers(profiles.seed_params(tr.params, k))
    for name, v in kappa.items():
      for layer, x in enumerate(np.asarray(v, np.float64).reshape(m.L, -1).max(-1)):
        ctx.add("condition_number", x, seed=seed, layer=layer, matrix=name, **keys)


def run(s: Settings, ctx: engine.Context) -> None:
  for m in s.models:
    run_model(s, m, ctx)


# --- reading the table ----------------------------------------------------------------------


def damage(table: engine.Table, model: str, L: int, module: str, seed: int) -> np.ndarray:
  """Per layer: mean over DAMAGE_RANKS of log10(median error pruned / unpruned) → [L] (inf: overflow)."""
  base = table.values("median_error", model=model, L=L, seed=seed, layer=None)
  if base.size != 1:
    return np.full(L, np.nan)
  ranks = [r for r in DAMAGE_RANKS if table.where(measure="median_error", model=model, L=L, module=module,
                                                  rank=r).rows]
  out = np.zeros(L)
  for layer in range(L):
    # an overflowed median is +inf (infinite damage); results written before overflow was recorded as a
    # value have no row for it, which reads the same
    v = [(lambda a: a[0] if a.size else np.inf)(table.values("median_error", model=model, L=L, module=module,
                                                             rank=r, layer=layer, seed=seed)) for r in ranks]
    with np.errstate(divide="ignore", over="ignore"):
      out[layer] = np.mean(np.log10(np.asarray(v) / base)) if v else np.nan
  return out


def deep_minus_shallow(table, model, L, module) -> np.ndarray:
  """Per seed: damage of the deeper half of the layers minus the shallower half (< 0: deep more stable)."""
  out = []
  for seed in table.seeds(measure="median_error", model=model, L=L):
    dmg = damage(table, model, L, module, seed)
    with np.errstate(invalid="ignore"):  # both halves overflowed: ∞ − ∞ has no value (NaN), said where used
      out.append(np.mean(dmg[L - L // 2:]) - np.mean(dmg[: L // 2]))
  return np.asarray(out)


def _models(table):
  return [(m, L) for m in table.unique("model", measure="median_error")
          for L in table.unique("L", measure="median_error", model=m)]


def plot(table: engine.Table, meta: dict, out) -> list:
  plt = figures.pyplot()
  models = _models(table)
  paths = []
  fig, axes = plt.subplots(1, len(models), figsize=(3.3 * len(models), 3.0), squeeze=False)
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
  fig.tight_layout()
  paths += figures.save(fig, out, "pruning_damage_by_layer")

  linear = [(m, L) for m, L in models if table.where(measure="w_hat_rel_change", model=m, L=L).rows]
  if linear:
    fig, axes = plt.subplots(1, len(linear), figsize=(3.6 * len(linear), 3.0), squeeze=False)
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
    axes[0, 0].set_ylabel(f"‖ŵ_t − ŵ_t⁰‖ / ‖ŵ_t⁰‖ (median over\n{_analysis_tasks(table)} tasks, then over seeds)")
    fig.tight_layout()
    paths += figures.save(fig, out, "pruning_trajectory")
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
  for m, L in _models(table):
    if m != "linear":
      continue
    dms = deep_minus_shallow(table, m, L, "attn")
    iv = text.over_seeds(dms)
    parts.append(f"L={L} " + (text.interval(dms, 2) if iv else "no value (fewer than 2 seeds)")
                 + f", deep < shallow in {int(np.sum(dms < 0))} of {dms.size} seeds")
  return ("deep − shallow log10 damage of pruning attention (< 0: deep layers more stable), over seeds, "
          f"median task errors on {table.n_tasks('median_error'):,} tasks: " + "; ".join(parts))


def claims(table: engine.Table, meta: dict) -> list:
  """Remark 5 holds for a module when the deep-minus-shallow damage's interval over seeds lies below 0:
  the t-interval when every seed is finite, else an order-statistic interval (a seed whose pruned model
  overflowed counts as ±inf, none is dropped; stats.seed_interval)."""
  from lintheory.studies.verdicts import Claim
  parts, verdicts, seeds = [], [], []
  for m, L in _models(table):
    if m != "linear":
      continue
    dms = deep_minus_shallow(table, m, L, "attn")
    iv = text.over_seeds(dms)
    if iv is None:
      continue
    verdicts.append("holds" if iv.hi < 0 else "fails" if iv.lo > 0 else "undecided")
    parts.append(f"L={L} attn: {text.interval(dms, 2)}")
    seeds.append(iv.n)
  if not verdicts:
    return []
  v = verdicts[0] if len(set(verdicts)) == 1 else "depends on depth: " + ", ".join(verdicts)
  return [Claim("deep_stable", v, "deep − shallow log10 damage (attn, linear)", "; ".join(parts), min(seeds),
                "median task errors; < 0 means deep layers are more stable; intervals over seeds "
                "(t, or order statistics where a seed overflowed)")]
