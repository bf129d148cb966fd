"""In-weights vs in-context knowledge: does low-rank pruning trade one for the other (the LASER effect)?

LASER (Sharma, Ash, Misra 2024) reports that truncating late MLP layers of LLMs to low rank improves
their accuracy on facts. Here a ReLU-MLP transformer is trained on tasks whose w is one fixed w₀
(drawn once from the prior) with probability p and fresh otherwise (TaskConfig.w0_prob), so it can
keep w₀ in its weights and must learn every other w in context. Each MLP (W_1 and W_2 together) and
attention layer is truncated to every rank of a grid; every edit is scored on fresh tasks (in-context
learning) and on w₀ tasks (in-weights knowledge). Two edits are chosen per seed on one task set — the
best for fresh tasks ("icl") and the best for w₀ tasks ("facts"); the unpruned model is kept when no
edit beats it — and both are scored on a disjoint set of each kind. The query is sampled (squared error
÷ d, docs/theory.md §1, §11), so every mean carries its standard error over tasks; gains are
error_unpruned − error_pruned on the same tasks (> 0: pruning helps); seeds are the unit of inference.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lintheory.core import evaluate, prune, stats
from lintheory.core.tasks import TaskConfig
from lintheory.run import profiles
from lintheory.studies import engine, text

NAME = "in_weights"
KEYS = ("p", "edit", "module", "layer", "rank", "tasks")
TASK_SETS = ("fresh", "w0")  # fresh tasks (w from the prior) and w₀ tasks (w = w₀)
EDITS = ("none", "icl", "facts")  # unpruned; chosen on fresh tasks; chosen on w₀ tasks
MODULES = ("mlp", "attn")
SELECT_KEY, CONFIRM_KEY = 5_151, 6_161  # disjoint task streams (training uses the seeds' keys)


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds
  probs: tuple[float, ...]  # p, the share of training tasks whose w is w₀
  ranks: tuple[int, ...]  # ranks each layer's module is truncated to (below min(m, n) = D)
  select_tasks: int  # tasks of each kind on which the edits are chosen
  confirm_tasks: int  # disjoint tasks of each kind on which the chosen edits are scored
  layers: int = 4  # L
  d: int = 10  # input dimension
  n_context: int = 20  # N
  noise_std: float = 0.25  # σ, label noise on the demonstrations
  w0_seed: int = 0  # seeds the one w₀ every model of every p and seed shares
  equiv_frac: float = 0.05  # equivalence margin: this share of the headroom
  chunk: int = 4096  # tasks per compiled evaluation call; at most select_tasks, so one shape serves both sets


PROFILES = {
    "tiny": Settings(profiles.Profile(steps=40, batch_size=32, seeds=(0, 1), eval_tasks=1024), (0.5,),
                     ranks=(1,), select_tasks=1024, confirm_tasks=1024, layers=2, d=3, n_context=6, chunk=1024),
    "default": Settings(profiles.Profile(steps=1000, batch_size=256, seeds=(0, 1, 2, 3, 4), eval_tasks=100_000),
                        (0.0, 0.3, 0.6), ranks=(0, 1, 2, 3, 4), select_tasks=2048, confirm_tasks=100_000, chunk=2048,
                        layers=2, d=5),
    "long": Settings(profiles.Profile(steps=1000, batch_size=256, seeds=(0, 1, 2, 3, 4), eval_tasks=100_000),
                     (0.0, 0.3, 0.6), ranks=(0, 2, 4, 6, 8), select_tasks=2048, confirm_tasks=100_000, chunk=2048),
    "full": Settings(profiles.PROFILES["full"], (0.0, 0.3, 0.6), ranks=tuple(range(11)), select_tasks=65_536,
                     confirm_tasks=1_000_000),
}


def task_config(s: Settings, p: float) -> TaskConfig:
  return TaskConfig(d=s.d, n_context=s.n_context, noise_std=s.noise_std, w0_prob=p, w0_seed=s.w0_seed)


def task_set(task: TaskConfig, kind: str) -> TaskConfig:
  """The evaluation tasks of one kind: w always fresh, or always w₀."""
  return dataclasses.replace(task, w0_prob=0.0 if kind == "fresh" else 1.0)


def edit_list(s: Settings) -> list[tuple[str, int, int]]:
  return [(m, layer, r) for m in MODULES for layer in range(s.layers) for r in s.ranks]


def _errors(s: Settings, tr, params, kind: str, key, n: int) -> np.ndarray:
  """[n] per-task errors of one model on tasks of one kind; one compiled chunk shape for every call."""
  return evaluate.errors(params, tr.model, task_set(tr.task, kind), key, n, chunk=s.chunk)


def _edited(p0, edit) -> dict:
  return p0 if edit is None else prune.prune(p0, edit[1], edit[0], rank=edit[2])


def _mean_se(e_B: np.ndarray) -> tuple[float, float]:
  return float(e_B.mean()), float(e_B.std(ddof=1) / np.sqrt(e_B.size))


def run_setting(s: Settings, p: float, ctx: engine.Context) -> None:
  keys = {"p": p}
  tr = ctx.train(s, keys, layers=s.layers, mlp="relu", **dataclasses.asdict(task_config(s, p)))
  if tr is None:
    return
  edits = edit_list(s)
  D = tr.model.D
  k_sel, k_conf = jax.random.key(SELECT_KEY), jax.random.key(CONFIRM_KEY)
  for i, seed in enumerate(tr.seeds):
    p0 = profiles.seed_params(tr.params, i)
    chosen = {}
    for kind in TASK_SETS:
      err = np.array([_errors(s, tr, _edited(p0, e), kind, k_sel, s.select_tasks).mean() for e in [None] + edits])
      ctx.add("select_mean", err[0], seed=seed, n_tasks=s.select_tasks, edit="none", tasks=kind, **keys)
      for (m, layer, r), e in zip(edits, err[1:]):
        ctx.add("select_mean", e, seed=seed, n_tasks=s.select_tasks, module=m, layer=layer, rank=r, tasks=kind,
                **keys)
      best = int(np.argmin(err[1:]))
      chosen["icl" if kind == "fresh" else "facts"] = edits[best] if err[1 + best] < err[0] else None
    for name, e in chosen.items():  # an unpruned choice is recorded as module "", layer −1, rank D
      m, layer, r = e if e is not None else ("", -1, D)
      ctx.add("chosen_layer", layer, seed=seed, edit=name, module=m, **keys)
      ctx.add("chosen_rank", r, seed=seed, edit=name, module=m, **keys)
    n, unpruned = s.confirm_tasks, {}
    for kind in TASK_SETS:  # every edit on the same tasks: paired gains
      err = [_errors(s, tr, _edited(p0, chosen.get(name)), kind, k_conf, n) for name in EDITS]
      unpruned[kind] = err[0].mean()
      for j, name in enumerate(EDITS):
        mean, se = _mean_se(err[j])
        ctx.add("confirm_mean", mean, seed=seed, n_tasks=n, edit=name, tasks=kind, **keys)
        ctx.add("confirm_se", se, seed=seed, n_tasks=n, edit=name, tasks=kind, **keys)
        if j:
          g, g_se = _mean_se(err[0] - err[j])
          ctx.add("gain", g, seed=seed, n_tasks=n, edit=name, tasks=kind, **keys)
          ctx.add("gain_se", g_se, seed=seed, n_tasks=n, edit=name, tasks=kind, **keys)
    ctx.log(f"p={p} seed {seed}: unpruned fresh {unpruned['fresh']:.4g}, w0 {unpruned['w0']:.4g}; "
            f"icl edit {chosen['icl']}, facts edit {chosen['facts']}")
  bayes = evaluate.bayes_errors(task_set(tr.task, "fresh"), k_conf, s.confirm_tasks)
  mean, se = _mean_se(bayes)
  ctx.add("bayes_mean", mean, n_tasks=s.confirm_tasks, tasks="fresh", **keys)
  ctx.add("bayes_se", se, n_tasks=s.confirm_tasks, tasks="fresh", **keys)


def run(s: Settings, ctx: engine.Context) -> None:
  for p in s.probs:
    run_setting(s, p, ctx)


# --- what the table says ----------------------------------------------------------------------


def headroom(table: engine.Table, p, kind: str) -> np.ndarray:
  """Per seed: the unpruned error above its floor — the Bayes error on fresh tasks, 0 on w₀ tasks
  (a model that holds w₀ predicts a noiseless query exactly)."""
  floor = table.value("bayes_mean", p=p, tasks="fresh", seed=None) if kind == "fresh" else 0.0
  return table.values("confirm_mean", p=p, edit="none", tasks=kind) - floor


def gain_test(table: engine.Table, p, edit: str, kind: str, frac: float) -> dict:
  """The gain's interval over seeds (text.over_seeds: order statistics where a seed's gain is ±inf; None
  below 2 seeds) and TOST against ±frac × the median headroom. TOST is a t-test: it runs only when every
  seed's gain is finite ("testable"); with an infinite seed no equivalence can be declared."""
  g = table.values("gain", p=p, edit=edit, tasks=kind)
  margin = frac * float(np.median(headroom(table, p, kind)))
  iv = text.over_seeds(g)
  testable = g.size >= 2 and bool(np.all(np.isfinite(g)))
  eq = stats.equivalence(g, margin)["equivalent"] if testable and margin > 0 else False
  return {"gain": g, "iv": iv, "margin": margin, "equivalent": eq, "testable": testable}


# --- claims -------------------------------------------------------------------------------------


def claims(table: engine.Table, meta: dict) -> list:
  """The trade holds when, at some p > 0, the edit chosen on w₀ tasks lowers their error (interval over
  seeds above 0) while raising the error on fresh tasks (interval below 0); gain_test gives the intervals
  (order statistics where a seed is ±inf) and the equivalence test (only when every seed is finite)."""
  from lintheory.studies.verdicts import NO_INTERVAL, Claim
  frac = meta["settings"]["equiv_frac"]
  parts, trades, helps, nulls, seeds = [], [], [], [], []
  for p in [p for p in table.unique("p", measure="gain") if p > 0]:
    t = gain_test(table, p, "facts", "w0", frac)
    f = gain_test(table, p, "facts", "fresh", frac)
    icl = gain_test(table, p, "icl", "fresh", frac)
    untested = "" if t["testable"] or t["iv"] is None else " (no equivalence test: a seed's gain is not finite)"
    parts.append(f"p={p}: on w₀ {text.interval(t['gain'])}{untested}, on fresh {text.interval(f['gain'])}; "
                 f"edit chosen on fresh tasks, on fresh {text.interval(icl['gain'])}")
    seeds.append(t["iv"].n if t["iv"] is not None else int(np.sum(~np.isnan(t["gain"]))))
    if t["iv"] is None:
      continue
    helps.append(t["iv"].lo > 0)
    trades.append(helps[-1] and f["iv"] is not None and f["iv"].hi < 0)
    nulls.append(t["equivalent"])
  if not parts:
    return []
  verdict = (NO_INTERVAL if not helps else "holds" if any(trades)
             else "fails: w₀ tasks gain, fresh tasks do not lose" if any(helps)
             else "fails: equivalent to no gain on w₀ tasks" if all(nulls) and len(nulls) == len(parts)
             else "not shown: no gain on w₀ tasks detected, some p inconclusive")
  return [Claim("in_weights", verdict, "mean gain (error units) of the edit chosen on w₀ tasks, scored on w₀ and "
                "on fresh tasks", "; ".join(parts), min(seeds),
                f"ReLU-MLP L={meta['settings']['layers']}, σ={meta['settings']['noise_std']}, w = w₀ with prob. p; "
                f"{table.n_tasks('gain', p=table.unique('p', measure='gain')[-1], edit='facts', tasks='w0'):,} "
                f"tasks per set; margin {100 * frac:g} % of headroom")]
