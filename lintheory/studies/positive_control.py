"""Positive control: a setting where low-rank pruning CAN help, to show the pipeline would see it.

Tasks have a low-rank prior (w ~ N(0, diag(1, …, 1, ε, …, ε)), k large directions) and label noise;
models are trained on a fixed pool of P prompts (P = ∞: fresh tasks every step). A model fitted to
few prompts also fits their noise in the ε-directions; truncating attention to a low rank removes
directions the prior says carry nothing, so a gain near rank k + 1 is expected at small P and should
vanish as P grows. Per (L, P, seed): the unpruned error, the best (layer, rank) chosen on one task
set and its error on a disjoint confirmation set (exact per-task errors), against the Bayes error
under the prior (posterior-mean ridge). Gains are error_unpruned − error_pruned (> 0: pruning helps),
also as a fraction of the headroom (unpruned − Bayes).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lintheory.core import evaluate, prune, stats
from lintheory.run import profiles
from lintheory.studies import engine, figures, text

NAME = "positive_control"
KEYS = ("L", "pool", "layer", "rank")
INF_POOL = 0  # pool = 0 in the table means fresh tasks every step (P = ∞)


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds
  depths: tuple[int, ...]  # L
  pools: tuple[int, ...]  # P, prompts in the fixed training pool; 0 = fresh tasks (P = ∞)
  select_tasks: int  # tasks on which the (layer, rank) is chosen
  confirm_tasks: int  # disjoint tasks on which the chosen edit is scored (reported errors)
  d: int = 10  # input dimension
  k: int = 3  # directions of the prior with variance 1; the other d − k have variance eps
  eps: float = 1e-4  # prior variance of the small directions
  n_context: int = 20  # N
  noise_std: float = 0.5  # σ, label noise


PROFILES = {
    "tiny": Settings(profiles.PROFILES["tiny"], (1,), (20, INF_POOL), select_tasks=512, confirm_tasks=1024,
                     d=4, k=1, n_context=8),
    "default": Settings(profiles.PROFILES["default"], (1, 2), (50, 200, 1000, INF_POOL), select_tasks=8192,
                        confirm_tasks=100_000, d=5, k=2),
    "long": Settings(profiles.PROFILES["long"], (1, 2), (50, 200, 1000, INF_POOL), select_tasks=8192,
                     confirm_tasks=100_000),
    "full": Settings(profiles.PROFILES["full"], (1, 2, 4), (50, 100, 200, 1000, INF_POOL), select_tasks=16_384,
                     confirm_tasks=1_000_000),
}


def w_cov(s: Settings) -> tuple[float, ...]:
  return (1.0,) * s.k + (s.eps,) * (s.d - s.k)


def run_setting(s: Settings, L: int, pool: int, ctx: engine.Context) -> None:
  keys = {"L": L, "pool": pool}
  try:
    tr = engine.trained(s, ctx, d=s.d, n_context=s.n_context, layers=L, noise_std=s.noise_std, w_cov=w_cov(s),
                        pool_size=pool)
  except RuntimeError as e:
    ctx.fail("train", str(e), **keys)
    return
  ctx.add_training(tr, **keys)
  k_sel, k_conf = jax.random.key(4242), jax.random.key(4343)
  D, S = tr.model.D, len(tr.seeds)
  edits = [(layer, r) for layer in range(L) for r in range(D)]
  # Every seed's unpruned model, then every edit of every seed: one paired evaluation on the same tasks.
  seeds_p = [profiles.seed_params(tr.params, i) for i in range(S)]
  models = seeds_p + [prune.prune(p0, layer, "attn", rank=r) for layer, r in edits for p0 in seeds_p]
  sel = evaluate.errors(profiles.stack_params(models), tr.model, tr.task, k_sel, s.select_tasks).mean(-1).reshape(1 + len(edits), S)
  chosen = []  # per seed: the index of the chosen edit, or None (ties keep the unpruned model)
  for i, seed in enumerate(tr.seeds):
    for (layer, r), e in zip(edits, sel[1:, i]):
      ctx.add("select_mean", e, seed=seed, n_tasks=s.select_tasks, layer=layer, rank=r, **keys)
    best = int(np.argmin(sel[1:, i]))
    chosen.append(None if sel[0, i] <= sel[1 + best, i] else best)
  picked = [seeds_p[i] if b is None else models[(1 + b) * S + i] for i, b in enumerate(chosen)]
  err = evaluate.errors(profiles.stack_params(seeds_p + picked), tr.model, tr.task, k_conf, s.confirm_tasks)
  n = s.confirm_tasks
  for i, seed in enumerate(tr.seeds):
    e0 = err[i]
    e1 = e0 if chosen[i] is None else err[S + i]  # a kept model's gain is exactly 0
    ctx.add_many(stats.summary(e0), prefix="unpruned_", seed=seed, n_tasks=n, **keys)
    ctx.add_many(stats.summary(e1), prefix="pruned_", seed=seed, n_tasks=n, **keys)
    ctx.add("gain", e0.mean() - e1.mean(), seed=seed, n_tasks=n, **keys)
    layer, r = (-1, D) if chosen[i] is None else edits[chosen[i]]
    ctx.add("chosen_layer", layer, seed=seed, **keys)
    ctx.add("chosen_rank", r, seed=seed, **keys)
  bayes = evaluate.bayes_errors(tr.task, k_conf, s.confirm_tasks)
  ctx.add_many(stats.summary(bayes), prefix="bayes_", n_tasks=s.confirm_tasks, **keys)


def run(s: Settings, ctx: engine.Context) -> None:
  for L in s.depths:
    for pool in s.pools:
      run_setting(s, L, pool, ctx)


def _pools(table, L):
  pools = table.unique("pool", measure="gain", L=L)
  return sorted(pools, key=lambda p: np.inf if p == INF_POOL else p)


def _label(p) -> str:
  return "∞" if p == INF_POOL else str(p)


def headroom_fraction(table, L, pool) -> np.ndarray:
  """Per seed: gain / (unpruned − Bayes) on the confirmation tasks."""
  bayes = table.value("bayes_mean", L=L, pool=pool, seed=None)
  out = []
  for seed in table.seeds(measure="gain", L=L, pool=pool):
    head = table.value("unpruned_mean", L=L, pool=pool, seed=seed) - bayes
    out.append(table.value("gain", L=L, pool=pool, seed=seed) / head)
  return np.asarray(out)


def plot(table: engine.Table, meta: dict, out) -> list:
  plt = figures.pyplot()
  Ls = table.unique("L", measure="gain")
  fig, axes = plt.subplots(1, len(Ls), figsize=(3.8 * len(Ls), 3.0), squeeze=False, sharey=True)
  for ax, L in zip(axes[0], Ls):
    pools = _pools(table, L)
    for j, p in enumerate(pools):
      figures.seed_points(ax, j, 100 * headroom_fraction(table, L, p), color="C2")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(pools)))
    ax.set_xticklabels([_label(p) for p in pools])
    ax.set_xlabel("training prompts P (∞: fresh tasks every step)")
    ax.set_title(f"L = {L}", fontsize=8)
  axes[0, 0].set_ylabel("gain of the chosen attn truncation\n(% of unpruned − Bayes error)")
  fig.tight_layout()
  return figures.save(fig, out, "positive_control_gain")


def report(table: engine.Table, meta: dict) -> str:
  rows = []
  for L in table.unique("L", measure="gain"):
    for p in _pools(table, L):
      seeds = table.seeds(measure="gain", L=L, pool=p)
      g = table.values("gain", L=L, pool=p)
      frac = headroom_fraction(table, L, p)
      ranks = [int(table.value("chosen_rank", L=L, pool=p, seed=x)) for x in seeds]
      rows.append([str(L), _label(p), str(len(seeds)),
                   text.num(np.median(table.values("unpruned_mean", L=L, pool=p))),
                   text.num(table.value("bayes_mean", L=L, pool=p, seed=None)),
                   text.num(g.mean()), text.seed_ci(g), f"{text.num(100 * np.median(frac), 2)} %",
                   ", ".join(map(str, ranks)), f"{table.n_tasks('gain', L=L, pool=p):,}"])
  s = meta["settings"]
  return (f"Prior w ~ N(0, diag(1 ×{s['k']}, {s['eps']:g} ×{s['d'] - s['k']})), σ = {s['noise_std']}, "
          f"N = {s['n_context']}. The (layer, rank) of the attention truncation is chosen on "
          f"{s['select_tasks']:,} tasks and scored on {s['confirm_tasks']:,} others (exact per-task errors).\n\n"
          + text.table(["L", "P", "seeds", "unpruned mean error (median over seeds)", "Bayes error", "mean gain",
                        "95 % CI over seeds", "gain / headroom (median)", "chosen rank per seed (D = unpruned)",
                        "tasks"], rows)
          + "\n\n![gain](../figures/positive_control_gain.png)\n\n*Each dot is a seed's gain as a share of the "
          "headroom between the unpruned model and the Bayes error. Look for gains above zero at small P that "
          "shrink as P grows: that is what the pipeline must be able to see for its negative findings "
          "elsewhere to mean anything.*\n")


def summary(table: engine.Table) -> str:
  """Per depth at the smallest pool, the chosen truncation's mean gain, with its 95 % CI over seeds."""
  parts = []
  for L in table.unique("L", measure="gain"):
    p = _pools(table, L)[0]
    g = table.values("gain", L=L, pool=p)
    parts.append(f"L={L} P={_label(p)} {text.interval(g)} ({g.size} seeds, "
                 f"{table.n_tasks('gain', L=L, pool=p):,} tasks)")
  return "gain of the chosen truncation (error units) at the smallest pool, 95 % CI over seeds: " + "; ".join(parts)


def claims(table: engine.Table, meta: dict) -> list:
  """Holds when, at the smallest pool, the chosen truncation's gain has an interval over seeds above 0 for
  some depth (text.over_seeds: the t-interval of the mean; order statistics where a seed's gain is ±inf);
  else fails: no gain detected. No gain measured: no claim; no depth with 2 seeds: undecided."""
  from lintheory.studies.verdicts import NO_INTERVAL, Claim
  parts, detected, seeds = [], [], []
  for L in table.unique("L", measure="gain"):
    pools = _pools(table, L)
    for p in dict.fromkeys((pools[0], pools[-1])):
      g = table.values("gain", L=L, pool=p)
      iv = text.over_seeds(g)
      parts.append(f"L={L} P={_label(p)}: {text.interval(g)}")
      seeds.append(iv.n if iv is not None else int(np.sum(~np.isnan(g))))
      if p == pools[0] and iv is not None:
        detected.append(iv.lo > 0)
  if not parts:
    return []
  verdict = NO_INTERVAL if not detected else "holds" if any(detected) else "fails: no gain detected"
  return [Claim("positive_control", verdict, "gain of the chosen truncation (error units), smallest and "
                "largest pool", "; ".join(parts), min(seeds), "low-rank prior, fixed training pool")]
