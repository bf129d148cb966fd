"""Theorem 2 under pruning: do finite versions of the paper's bound track the generalisation gap?

The paper's bound is +∞ as written (its noise covariance C_t is singular, docs/theory.md §6), so two
finite versions that are theorems are computed instead (docs/theory.md §6, §15), each for its own
learner and each estimated by Monte Carlo with a one-sided error:
- the bound inside the data-independent subspace V_t of the implicit gradients bounds the gap of the
  paper's noisy learner W_t = W_{t−1} + G_t + N(0, C_t) (gradients at the noisy iterate), for a loss
  that is R-sub-Gaussian; it is the log of the mean over (task, demonstrations, noise), each mean at
  its one-sided upper confidence bound (jointly at 95 %), and that learner's gap is measured beside it;
- the unconditional loss-difference supersample CMI bound bounds the gap of the deterministic ŵ_L's
  clipped, quantised loss; its information is a plug-in estimate, reported at its one-sided 95 %
  bootstrap upper confidence bound over tasks.
R is fixed across the configurations compared (the zero predictor's). For a trained model pruned one
layer at a time (attn and v, a grid of kept ranks) every row holds both gaps, each version, dim V_t,
the zero predictor's loss (the vacuity scale: value ÷ it < 1 is non-vacuous) and the pruning-sensitive
term Σ_t ‖ΔW_t‖²‖I + W_{t−1}‖² the paper's Example 1 argues about. The versions need per-task spectra,
so they are averaged over analysis_tasks; ŵ_L's squared-loss gap, which is what pruning changes and
what ρ is computed against, is measured exactly on tail_tasks fresh tasks per configuration
(gap_tail_* rows), where its tail shows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import jax
import jax.numpy as jnp

from lintheory.core import bounds, evaluate, precision, prune, stats, tasks
from lintheory.run import profiles, sweep
from lintheory.studies import engine, text
from lintheory.studies.verdicts import Claim

NAME = "prune_bound"
KEYS = ("L", "layer", "module", "rank")
BOUNDS = {"bound_subspace": "subspace bound (V_t)", "cmi_bound": "CMI bound (clipped loss)"}
# Which learner each version bounds, and how it is estimated (docs/theory.md §6, §15.1, §15.2).
LEARNERS = {
    "bound_subspace": "a theorem for the gap of the paper's noisy learner W_t = W_{t−1} + G_t + N(0, C_t) (its "
                      "gradients taken at the noisy iterate), for a loss assumed R-sub-Gaussian: the log of the "
                      "mean over tasks, demonstrations and the learner's noise, each mean at its one-sided upper "
                      "confidence bound (jointly 95 %, normal approximation over the analysis tasks); it does not "
                      "bound the deterministic ŵ_L's gap (docs/theory.md §6, §15.1)",
    "cmi_bound": "a theorem for the gap of the deterministic ŵ_L's clipped, quantised loss: the unconditional "
                 "loss-difference supersample CMI bound, its information a plug-in estimate, at its one-sided "
                 "95 % bootstrap upper confidence bound over tasks (docs/theory.md §15.2)",
}
# The gap ρ is computed against: ŵ_L's squared-loss gap on tail_tasks (what pruning changes; on the
# bounds' own analysis_tasks it is "gap"), the clipped loss's on the CMI's supersample.
GAPS = {"bound_subspace": "gap_tail_mean", "cmi_bound": "cmi_gap_clipped"}
# The gap of the learner each version bounds, measured on the version's own tasks.
OWN_GAPS = {"bound_subspace": "gap_noisy", "cmi_bound": "cmi_gap_clipped"}
MEASURES = ("gap", "gap_noisy", "gap_noisy_se", "cmi_gap_clipped", "bound_subspace", "bound_subspace_point",
            "bound_subspace_per_prompt", "cmi_bound", "cmi_bound_point", "bound_sensitive", "dimV", "dimV_max",
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
    tr = ctx.train(s, {"L": L}, d=s.d, n_context=s.n_context, layers=L, noise_std=s.noise_std)
    if tr is None:
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


def undefined_rho(x, y) -> str | None:
  """Why Spearman's ρ of one seed's (value, gap) pairs is undefined (None when `spearman` defines it)."""
  ok = np.isfinite(x) & np.isfinite(y)
  if x.size and np.all(np.isposinf(x)):
    return "its value is +∞ in every configuration"
  if ok.sum() < 3:
    return f"its value and gap are both finite in only {int(ok.sum())} configurations (ρ needs 3)"
  if np.ptp(x[ok]) == 0:
    return "its value is the same in every configuration where it is finite"
  if np.ptp(y[ok]) == 0:
    return "its gap is the same in every configuration"
  return None


def per_seed(table, L, bound: str) -> dict:
  """Per seed over the configurations: Spearman ρ(bound, ŵ_L's gap), share of finite rows where the bound
  ≥ its own learner's gap (a consistency check of a theorem, not evidence that it says anything), share
  finite, and (why) seed → the reason its ρ is undefined, for the seeds whose ρ is NaN."""
  rho, holds, finite, why = [], [], [], {}
  for seed in table.seeds(measure=bound, L=L):
    b, g, own = (_rows(table, L, m, seed) for m in (bound, GAPS[bound], OWN_GAPS[bound]))
    keys = sorted(set(b) & set(g), key=str)
    x, y = np.array([b[k] for k in keys], float), np.array([g[k] for k in keys], float)
    fin = np.isfinite(x)
    rho.append(spearman(x, y))
    mine = [(b[k], own[k]) for k in keys if k in own and np.isfinite(b[k])]
    holds.append(np.mean([u >= v for u, v in mine]) if mine else np.nan)
    finite.append(fin.mean() if fin.size else np.nan)
    if np.isnan(rho[-1]):
      why[seed] = undefined_rho(x, y) or "ρ is undefined"
  return {"rho": np.array(rho), "holds": np.array(holds), "finite": np.array(finite), "why": why}


def vacuity(table, L, bound: str) -> tuple[np.ndarray, int]:
  """value ÷ the zero predictor's population loss E[wᵀΣw] + σ² (`trivial`, on the same analysis tasks
  and seed) for every configuration and seed where the value is finite, and the number of rows with
  a value; ≥ 1 is vacuous (it allows a loss above that of predicting 0)."""
  ratio, n = [], 0
  for seed in table.seeds(measure=bound, L=L):
    b, z = _rows(table, L, bound, seed), _rows(table, L, "trivial", seed)
    n += len(b)
    ratio += [b[k] / z[k] for k in b if k in z and np.isfinite(b[k]) and z[k] > 0]
  return np.array(ratio, float), n


def vacuity_text(table, L, bound: str) -> str:
  """The vacuity of one version as a sentence fragment: median and range of value ÷ the zero predictor's loss."""
  ratio, n = vacuity(table, L, bound)
  if not table.values("trivial", L=L).size:
    return "vacuity not measured (no zero-predictor loss, `trivial`, in the results)"
  if not ratio.size:
    return f"no finite value in {n} rows"
  return (f"value ÷ the zero predictor's loss {text.num(np.median(ratio), 3)} (median; range "
          f"{text.num(ratio.min(), 3)} to {text.num(ratio.max(), 3)}) over the {ratio.size} of {n} rows (configurations "
          f"× seeds) where it is finite; non-vacuous (value < the zero predictor's loss) in "
          f"{int(np.sum(ratio < 1))} of {n} rows")


def rho_interval(table, L, bound: str) -> dict:
  """ρ over the seeds where it is defined: their ρ, the t-interval (NaN with fewer than 2), the seeds
  out and why."""
  ps = per_seed(table, L, bound)
  rho = ps["rho"][np.isfinite(ps["rho"])]
  lo, hi = stats.seed_ci(rho) if rho.size > 1 else (np.nan, np.nan)
  return {"rho": rho, "lo": lo, "hi": hi, "n_seeds": ps["rho"].size, "why": ps["why"], "per_seed": ps}


def _seeds_out(r: dict) -> list[str]:
  return [f"seed {seed} ({why}, so ρ is undefined for it)" for seed, why in r["why"].items()]


def claims(table: engine.Table, meta: dict) -> list:
  """Theorem 2 'explains' pruning when a finite version tracks the gap (ρ's CI over seeds above 0) and
  is contradicted by one that moves against it (ρ's CI below 0). The seeds are those behind the
  deciding intervals (the fewest where several decide); a seed without a ρ is named with the reason."""
  Ls = table.unique("L", measure="gap")
  parts, tracking, contra, defined, outs, vac = [], [], [], [], [], []
  for L in Ls:
    for bound, label in BOUNDS.items():
      name = label if len(Ls) == 1 else f"L={L} {label}"
      r = rho_interval(table, L, bound)
      rho, lo, hi = r["rho"], r["lo"], r["hi"]
      outs += [f"{name}: " + "; ".join(_seeds_out(r))] if r["why"] else []
      vac.append(f"{name}: {vacuity_text(table, L, bound)}")
      if rho.size < 2:
        parts.append(f"L={L} {label}: ρ undefined ({rho.size} of {r['n_seeds']} seeds with a ρ)")
        continue
      defined.append((name, rho.size))
      tracking += [(name, rho.size)] if lo > 0 else []
      contra += [(name, rho.size)] if hi < 0 else []
      parts.append(f"L={L} {label}: ρ = {text.num(rho.mean(), 2)} {text.ci(lo, hi, 2)} "
                   f"({rho.size} of {r['n_seeds']} seeds)")
  names = lambda xs: ", ".join(x for x, _ in xs)
  if tracking and contra:
    verdict, deciding = f"depends on the version: holds for {names(tracking)}, contradicted for {names(contra)}", \
        tracking + contra
  elif tracking:
    verdict, deciding = f"holds for {names(tracking)}", tracking
  elif contra:
    verdict, deciding = f"contradicted for {names(contra)}: ρ's CI lies below 0", contra
  elif defined:
    verdict, deciding = "not shown: every finite version's ρ has a CI containing 0", defined
  else:
    verdict, deciding = "undecided: no finite bound", []
  detail = (f"the as-written bound is +∞; finite versions at σ = {meta['settings']['noise_std']}: the "
            + "; the ".join(f"{label} is {LEARNERS[b]}" for b, label in BOUNDS.items())
            + ". Vacuity: " + "; ".join(vac)
            + (". Seeds out: " + "; ".join(outs) if outs else ""))
  return [Claim("theorem2", verdict, "Spearman ρ between each finite version and the measured gap over pruned "
                "configurations", "; ".join(parts), min((n for _, n in deciding), default=0), detail)]
