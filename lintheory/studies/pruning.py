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

from lintheory.core import prune
from lintheory.run import profiles, sweep
from lintheory.studies import engine, text
from lintheory.studies.verdicts import Claim

NAME = "pruning"
KEYS = ("model", "L", "layer", "module", "rank", "t", "matrix")
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
  tr = ctx.train(s, keys, d=s.d, n_context=s.n_context, layers=m.L, attention=m.attention, mlp=m.mlp)
  if tr is None:
    return
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


def attn_deep_minus_shallow(table) -> list[tuple[int, np.ndarray]]:
  """Per depth L of the linear models: deep_minus_shallow of pruning attention, per seed (Remark 5's test)."""
  return [(L, deep_minus_shallow(table, m, L, "attn")) for m, L in _models(table) if m == "linear"]


def claims(table: engine.Table, meta: dict) -> list:
  """Remark 5 holds for a module when the deep-minus-shallow damage's interval over seeds lies below 0:
  the t-interval when every seed is finite, else an order-statistic interval (a seed whose pruned model
  overflowed counts as ±inf, none is dropped; stats.seed_interval)."""
  parts, verdicts, seeds = [], [], []
  for L, dms in attn_deep_minus_shallow(table):
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
