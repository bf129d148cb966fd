"""Theorem 2 under pruning: do finite, valid versions of the paper's bound track the generalisation gap?

The paper's bound is +∞ as written (its noise covariance C_t is singular, docs/theory.md §6), so two
finite versions that are theorems are computed instead (docs/theory.md §10, §15): the bound inside the
data-independent subspace V_t of the implicit gradients (finite when C_t is non-singular on V_t), and
a supersample conditional-mutual-information bound for the clipped loss. R is fixed across the
configurations compared (the zero predictor's). For a trained model pruned one layer at a time (attn
and v, a grid of kept ranks) every row holds the measured gap of the implicit learner ŵ_L
(population loss − loss on its own demonstrations) beside each bound, dim V_t, and the
pruning-sensitive term Σ_t ‖ΔW_t‖²‖I + W_{t−1}‖² the paper's Example 1 argues about. The bounds need
per-task spectra, so they are averaged over analysis_tasks; the squared-loss gap the subspace bound is
compared with is measured exactly on tail_tasks fresh tasks per configuration (gap_tail_* rows), where
its tail shows (the gap on the analysis tasks, "gap", is kept to show what a small sample misses).
"""

from __future__ import annotations

import dataclasses

import numpy as np

import jax
import jax.numpy as jnp

from lintheory.core import bounds, evaluate, precision, prune, stats, tasks
from lintheory.run import profiles, sweep
from lintheory.studies import engine, figures, text

NAME = "prune_bound"
KEYS = ("L", "layer", "module", "rank")
BOUNDS = {"bound_subspace": "subspace bound (V_t)", "cmi_bound": "CMI bound (clipped loss)"}
# The gap each bound is a theorem about: the squared-loss gap measured on tail_tasks (its tail shows
# there; on the bounds' own analysis_tasks it is "gap"), the clipped loss's on the CMI's supersample.
GAPS = {"bound_subspace": "gap_tail_mean", "cmi_bound": "cmi_gap_clipped"}
MEASURES = ("gap", "cmi_gap_clipped", "bound_subspace", "cmi_bound", "bound_sensitive", "dimV", "dimV_max",
            "trivial", "R", "subspace_nonfinite", "paper_as_written", "icl_error_median")


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds
  depths: tuple[int, ...]  # L of the pruned models
  modules: tuple[str, ...]  # modules pruned, one layer at a time
  ranks: tuple[int, ...]  # kept ranks (D = unpruned is added)
  analysis_tasks: int  # tasks per seed on which gaps and bounds are averaged
  tail_tasks: int = 100_000  # fresh tasks on which each configuration's gap is also measured (exact per task)
  noise_std: float = 0.5  # σ; with σ = 0 the subspace bound is +∞ (all tokens in a d-dim subspace)
  d: int = 4  # input dimension; dim V_t ≤ D(D+1)/2 = 15 ≤ N − 1 keeps the subspace bound finite
  n_context: int = 20  # N


PROFILES = {
    "tiny": Settings(profiles.PROFILES["tiny"], (2,), ("v",), ranks=(0, 2), analysis_tasks=32, d=2, n_context=8,
                     tail_tasks=2048),
    "default": Settings(profiles.PROFILES["default"], (4,), ("attn",), ranks=(0, 1, 2, 3, 4),
                        analysis_tasks=2048, d=4),
    "long": Settings(profiles.PROFILES["long"], (4,), ("attn", "v"), ranks=(0, 1, 2, 3, 4),
                     analysis_tasks=2048, d=4),
    "full": Settings(profiles.PROFILES["full"], (4, 8), ("attn", "q", "k", "v"), ranks=(0, 1, 2, 3, 4),
                     analysis_tasks=2048, d=4),
}


def run(s: Settings, ctx: engine.Context) -> None:
  for L in s.depths:
    try:
      tr = engine.trained(s, ctx, d=s.d, n_context=s.n_context, layers=L, noise_std=s.noise_std)
    except RuntimeError as e:
      ctx.fail("train", str(e), L=L)
      continue
    cfg = sweep.SweepConfig(modules=s.modules, rates=(0.0,), ranks=tuple(r for r in s.ranks if r < tr.model.D),
                            n_eval=256, n_analysis=s.analysis_tasks, bounds=True)
    res = sweep.run(tr.params, tr.seeds, tr.model, tr.task, cfg, progress=False)
    with precision.x64():
      batch = tasks.sample(jax.random.key(7), tr.task, s.analysis_tasks, dtype=jnp.float64)
      Sigma = jnp.asarray(tasks.x_covariance(tr.task))
      for k, seed in enumerate(tr.seeds):
        p0 = {n: jnp.asarray(v, jnp.float64) for n, v in profiles.seed_params(tr.params, k).items()}
        ctx.add("R_unpruned", bounds.R_unpruned(p0, batch, tr.model, Sigma, s.noise_std), seed=seed,
                n_tasks=s.analysis_tasks, L=L)
        terms = np.asarray(bounds.theorem2(p0, batch, tr.model, tr.task).subspace_terms).sum(0)  # [B]
        if np.all(np.isfinite(terms)) and np.all(terms >= 0):  # the share of the rarest tasks in their mean
          ctx.add("terms_rare_share", stats.rare_share(terms, RARE), seed=seed, n_tasks=s.analysis_tasks, L=L)
    gap_tail(s, tr, L, [(r["layer"], r["module"], r["rank"]) for r in res.rows if r["mode"] != "rate"], ctx)
    for r in res.rows:
      unpruned = r["mode"] == "rate"
      if unpruned and not (r["layer"] == 0 and r["module"] == s.modules[0]):
        continue  # the unpruned model appears once per (layer, module); keep one
      where = {"L": L, "rank": tr.model.D} if unpruned else \
          {"L": L, "layer": r["layer"], "module": r["module"], "rank": r["rank"]}
      for m in MEASURES:
        v = r.get(m) if m == "icl_error_median" else r.get(f"bd_{m}")
        if v is None or (isinstance(v, float) and np.isnan(v)):
          ctx.fail("bound", f"{m} is undefined", seed=r["seed"], **where)
          continue
        ctx.add(m, v, seed=r["seed"], n_tasks=s.analysis_tasks, **where)


TAIL_KEY = 42_424  # the gap's fresh tasks, disjoint from the sweep's
RARE = 200  # terms_rare_share: the share of the bound's per-task terms carried by tasks rarer than 1 in RARE


def gap_tail(s: Settings, tr, L: int, configs, ctx: engine.Context) -> None:
  """The gap of every configuration (and the unpruned model) on s.tail_tasks fresh tasks, exact per
  task, every seed and configuration on the same tasks: the bounds need per-task spectra and stay on
  analysis_tasks, the gap they bound gets its tail seen here."""
  configs = list(dict.fromkeys(configs))
  seeds_p = [profiles.seed_params(tr.params, k) for k in range(len(tr.seeds))]
  models = seeds_p + [prune.prune(p0, layer, module, rank=r) for layer, module, r in configs for p0 in seeds_p]
  with precision.x64():
    g = evaluate.errors(profiles.stack_params(models), tr.model, tr.task, jax.random.key(TAIL_KEY), s.tail_tasks,
                        normalise=False, measure="gap").reshape(1 + len(configs), len(tr.seeds), -1)
  wheres = [{"rank": tr.model.D}] + [{"layer": layer, "module": module, "rank": r} for layer, module, r in configs]
  for where, g_S in zip(wheres, g):
    for k, seed in enumerate(tr.seeds):
      ctx.add_many(stats.summary(g_S[k]), prefix="gap_tail_", seed=seed, n_tasks=s.tail_tasks, L=L, **where)


# --- reading the table ----------------------------------------------------------------------


def _rows(table, L, measure, seed):
  return {(r["layer"], r["module"], r["rank"]): r["value"] for r in table.where(measure=measure, L=L, seed=seed).rows}


def spearman(x, y) -> float:
  from scipy import stats as st
  ok = np.isfinite(x) & np.isfinite(y)
  if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
    return float("nan")
  return float(st.spearmanr(x[ok], y[ok]).statistic)


def per_seed(table, L, bound: str) -> dict[str, np.ndarray]:
  """Per seed over the configurations: Spearman ρ(bound, gap), share of rows where bound ≥ gap, share finite."""
  rho, holds, finite = [], [], []
  for seed in table.seeds(measure=bound, L=L):
    b, g = _rows(table, L, bound, seed), _rows(table, L, GAPS[bound], seed)
    keys = sorted(set(b) & set(g), key=str)
    x, y = np.array([b[k] for k in keys]), np.array([g[k] for k in keys])
    fin = np.isfinite(x)
    rho.append(spearman(x, y))
    holds.append(np.mean(x[fin] >= y[fin]) if fin.any() else np.nan)
    finite.append(fin.mean())
  return {"rho": np.array(rho), "holds": np.array(holds), "finite": np.array(finite)}


def small_sample_check(table, L) -> dict[str, np.ndarray] | None:
  """What the analysis tasks alone would say. Per seed: Spearman ρ(subspace bound, gap on the analysis
  tasks) and the share of rows where the bound ≥ that gap; over all rows the ratio of the analysis
  tasks' gap to the tail tasks' gap."""
  if not table.values("gap_tail_mean", L=L).size:
    return None
  rho, holds, ratio = [], [], []
  for seed in table.seeds(measure="gap_tail_mean", L=L):
    b, g, g1 = (_rows(table, L, m, seed) for m in ("bound_subspace", "gap", "gap_tail_mean"))
    keys = sorted(set(b) & set(g), key=str)
    x, y = np.array([b[k] for k in keys]), np.array([g[k] for k in keys])
    fin = np.isfinite(x)
    rho.append(spearman(x, y))
    holds.append(np.mean(x[fin] >= y[fin]) if fin.any() else np.nan)
    ratio += [g[k] / g1[k] for k in keys if k in g1 and g1[k] != 0]
  return {"rho": np.array(rho), "holds": np.array(holds), "ratio": np.array(ratio)}


def plot(table: engine.Table, meta: dict, out) -> list:
  plt = figures.pyplot()
  Ls = table.unique("L", measure="gap")
  fig, axes = plt.subplots(len(Ls), len(BOUNDS), figsize=(3.9 * len(BOUNDS), 3.3 * len(Ls)), squeeze=False)
  for row, L in zip(axes, Ls):
    for ax, (bound, label) in zip(row, BOUNDS.items()):
      lo, hi, xs, ys = np.inf, -np.inf, [], []
      for c, seed in enumerate(table.seeds(measure=bound, L=L)):
        b, g = _rows(table, L, bound, seed), _rows(table, L, GAPS[bound], seed)
        keys = sorted(set(b) & set(g), key=str)
        x, y = np.array([g[k] for k in keys]), np.array([b[k] for k in keys])
        fin = np.isfinite(y)
        ax.plot(x[fin], y[fin], "o", ms=3, alpha=0.7, color=f"C{c}", label=f"seed {seed}")
        xs.extend(x[fin]), ys.extend(y[fin])
        if fin.any():
          lo, hi = min(lo, x[fin].min(), y[fin].min()), max(hi, x[fin].max(), y[fin].max())
      if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="bound = gap")
      figures.symlog(ax, "x", xs + [lo, hi])
      figures.symlog(ax, "y", ys + [lo, hi])
      n_gap = table.n_tasks(GAPS[bound], L=L)
      ax.set_xlabel(f"measured gap ({'clipped loss' if bound == 'cmi_bound' else 'squared loss'}, {n_gap:,} tasks)")
      ax.set_ylabel(label)
      ax.set_title(f"L = {L}: one point per pruned configuration", fontsize=8)
      ax.legend(fontsize=6)
  fig.tight_layout()
  return figures.save(fig, out, "prune_bound_scatter")


def report(table: engine.Table, meta: dict) -> str:
  rows = []
  for L in table.unique("L", measure="gap"):
    for bound, label in BOUNDS.items():
      ps = per_seed(table, L, bound)
      rho = ps["rho"][np.isfinite(ps["rho"])]
      lo, hi = stats.seed_ci(rho) if rho.size > 1 else (np.nan, np.nan)
      rows.append([str(L), label, str(len(ps["rho"])), text.num(np.median(ps["finite"]), 2),
                   _median_finite(ps["holds"]), text.num(np.mean(rho)) if rho.size else "n/a",
                   text.ci(lo, hi)])
  dim = table.values("dimV_max")
  L0 = table.unique("L", measure="gap")[0]
  n, n_gap = table.n_tasks("bound_subspace", L=L0), table.n_tasks(GAPS["bound_subspace"], L=L0)
  as_written = table.values("paper_as_written")
  R0, Ru = np.median(table.values("R")), np.median(table.values("R_unpruned"))
  return (f"The bounds are averages over {n:,} tasks per seed and configuration (they need per-task spectra); "
          f"the squared-loss gap the subspace bound is compared with is the exact per-task gap on {n_gap:,} fresh "
          f"tasks per configuration; the CMI bound's clipped gap has no tail. The paper's bound as written is +∞ in "
          f"{int(np.sum(np.isinf(as_written)))} of {as_written.size} rows, so only the finite versions are "
          f"compared. dim V_t ≤ {int(dim.max()) if dim.size else 'n/a'} over all rows. R is the zero "
          f"predictor's, {text.num(R0)} (median over seeds), the same for every configuration; the unpruned "
          f"model's R is {text.num(Ru)}, and the subspace bound scales linearly in R.\n\n"
          + text.table(["L", "bound", "seeds", "share of rows finite (median)", "share with bound ≥ gap (median)",
                        "Spearman ρ(bound, gap), mean over seeds", "95 % CI over seeds"], rows)
          + _tail_text(table)
          + "\n\n![bound vs gap](../figures/prune_bound_scatter.png)\n\n*Each point is one pruned configuration "
          "of one seed; the line is bound = gap. A valid bound lies above the line; a bound that explains "
          "pruning would also rise and fall with the gap (a positive ρ in every seed).*\n")


def _median_finite(share_S: np.ndarray) -> str:
  """The median over the seeds with a finite bound in some row (a seed whose bound is +∞ in every row
  has no share), and how many seeds that is."""
  v = share_S[np.isfinite(share_S)]
  return f"{text.num(np.median(v), 2)} ({v.size} of {share_S.size} seeds)" if v.size else "n/a (no finite row)"


def _tail_text(table) -> str:
  out = []
  for L in table.unique("L", measure="gap"):
    t = small_sample_check(table, L)
    if t is None:
      continue
    n = table.n_tasks("gap", L=L)
    rho = t["rho"][np.isfinite(t["rho"])]
    lo, hi = stats.seed_ci(rho) if rho.size > 1 else (np.nan, np.nan)
    out.append(f"L = {L}: the gap on the bounds' own {n:,} tasks ÷ the gap on the fresh tasks is "
               f"{text.num(np.median(t['ratio']), 3)} (median over {t['ratio'].size} rows; range "
               f"{text.num(t['ratio'].min(), 3)} to {text.num(t['ratio'].max(), 3)}). Compared with that gap "
               f"instead, the subspace bound would be ≥ the gap in {_median_finite(t['holds'])} of the "
               f"rows (median over seeds) and ρ(bound, gap) {text.num(rho.mean(), 2) if rho.size else 'n/a'} "
               f"{text.ci(lo, hi)} (mean over {rho.size} seeds, 95 % CI).")
  share = table.values("terms_rare_share")
  if share.size:
    out.append(f"The subspace bound's per-task terms are logarithms of the spectra (docs/theory.md §10), which "
               f"tames the tail a polynomial has: on the unpruned models, tasks rarer than 1 in {RARE} carry at most "
               f"{100 * share.max():.1f} % of their sum ({share.size} models, {table.n_tasks('terms_rare_share'):,} "
               f"tasks each).")
  return ("\n\nWhat the bounds' tasks alone would have said about the gap: " + " ".join(out)) if out else ""


def summary(table: engine.Table) -> str:
  """Per depth and finite bound, the Spearman ρ between bound and measured gap, with its 95 % CI over seeds."""
  parts = []
  for L in table.unique("L", measure="gap"):
    for bound, label in BOUNDS.items():
      rho = per_seed(table, L, bound)["rho"]
      rho = rho[np.isfinite(rho)]
      ci = text.ci(*stats.seed_ci(rho), 2) if rho.size > 1 else "(no CI)"
      parts.append(f"L={L} {label} {text.num(rho.mean(), 2) if rho.size else 'undefined'} {ci} ({rho.size} seeds)")
  return "Spearman ρ(bound, gap) over pruned configurations, 95 % CI over seeds: " + "; ".join(parts)


def claims(table: engine.Table, meta: dict) -> list:
  """Theorem 2 'explains' pruning when a finite valid version tracks the gap: ρ's CI over seeds above 0."""
  from lintheory.studies.verdicts import Claim
  parts, tracking, defined, seeds = [], [], 0, 0
  for L in table.unique("L", measure="gap"):
    for bound, label in BOUNDS.items():
      rho = per_seed(table, L, bound)["rho"]
      rho = rho[np.isfinite(rho)]
      if rho.size < 2:
        parts.append(f"L={L} {label}: ρ undefined (bound infinite or constant)")
        continue
      lo, hi = stats.seed_ci(rho)
      defined += 1
      if lo > 0:
        tracking.append(label)
      parts.append(f"L={L} {label}: ρ = {text.num(rho.mean(), 2)} {text.ci(lo, hi, 2)}")
      seeds = rho.size
  if tracking:
    verdict = "holds for " + ", ".join(tracking)
  elif defined:
    verdict = "not shown: no finite bound's ρ has a CI above 0"
  else:
    verdict = "undecided: no finite bound"
  return [Claim("theorem2", verdict, "Spearman ρ between bound and measured gap over pruned configurations",
                "; ".join(parts), seeds, f"the as-written bound is +∞; finite versions at σ = {meta['settings']['noise_std']}")]
