"""Theorem 2 under pruning: do finite versions of the paper's bound track the generalisation gap?

The study's figures, report section and summary line, read from its table alone (lintheory.studies.views).
"""

from __future__ import annotations

import numpy as np

from lintheory.core import stats
from lintheory.studies import engine, text
from lintheory.studies.prune_bound import (
    BOUNDS, GAPS, LEARNERS, OWN_GAPS, RARE, _rows, _seeds_out, rho_interval, spearman, vacuity)
from lintheory.studies.views import common

OWN_LEARNER = {"bound_subspace": "noisy learner", "cmi_bound": "ŵ_L, clipped loss"}


def small_sample_check(table, L) -> dict[str, np.ndarray] | None:
  """What the analysis tasks alone would say. Per seed: Spearman ρ(subspace bound, ŵ_L's gap on the analysis
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
  Ls = table.unique("L", measure="gap")
  fig, axes = common.subplots(len(Ls), len(BOUNDS), figsize=(3.9 * len(BOUNDS), 3.3 * len(Ls)))
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
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="value = gap")
      common.symlog(ax, "x", xs + [lo, hi])
      common.symlog(ax, "y", ys + [lo, hi])
      n_gap = table.n_tasks(GAPS[bound], L=L)
      ax.set_xlabel(f"measured gap ({'clipped loss' if bound == 'cmi_bound' else 'squared loss'}, {n_gap:,} tasks)")
      ax.set_ylabel(label)
      common.title_and_legend(ax, f"L = {L}: one point per pruned configuration")
  return common.save_tight(fig, out, "prune_bound_scatter")


def _median(table, measure, **where) -> str:
  v = table.values(measure, **where)
  v = v[np.isfinite(v)]
  return text.num(np.median(v), 3) if v.size else "n/a"


def _estimation_text(table) -> str:
  """How far the subspace bound's placements and its one-sided error move it: per-prompt E log ÷ the log
  of the mean, and the upper confidence bound ÷ the point estimate (medians over rows)."""
  pp, pt, ub = (table.values(m) for m in ("bound_subspace_per_prompt", "bound_subspace_point", "bound_subspace"))
  if not (pp.size and pt.size and pp.size == pt.size == ub.size):
    return ""
  ok = np.isfinite(pp) & np.isfinite(pt) & np.isfinite(ub) & (pt > 0)
  if not ok.any():
    return ""
  return (f" The paper's per-prompt placement (E log, not a bound) is {text.num(np.median(pp[ok] / pt[ok]), 3)} × the "
          f"log-of-the-mean point estimate (median over {int(ok.sum())} rows; Jensen: ≤ 1), and the one-sided upper "
          f"confidence bound reported is {text.num(np.median(ub[ok] / pt[ok]), 3)} × it.")


def report(table: engine.Table, meta: dict) -> str:
  rows, outs = [], []
  for L in table.unique("L", measure="gap"):
    for bound, label in BOUNDS.items():
      r = rho_interval(table, L, bound)
      ps, rho = r["per_seed"], r["rho"]
      ratio, n_rows = vacuity(table, L, bound)
      rows.append([str(L), label, OWN_LEARNER[bound], _median(table, OWN_GAPS[bound], L=L),
                   _median(table, GAPS[bound], L=L), _median(table, bound, L=L),
                   f"{text.num(np.median(ratio), 3)} ({text.num(ratio.min(), 3)} to {text.num(ratio.max(), 3)})"
                   if ratio.size else "n/a", f"{int(np.sum(ratio < 1))} of {n_rows}",
                   _median_finite(ps["holds"]), f"{rho.size} of {r['n_seeds']}",
                   text.num(np.mean(rho)) if rho.size else "n/a", text.ci(r["lo"], r["hi"])])
      outs += [f"L = {L}, {label}: " + "; ".join(_seeds_out(r))] if r["why"] else []
  dim = table.values("dimV_max")
  L0 = table.unique("L", measure="gap")[0]
  n, n_gap = table.n_tasks("bound_subspace", L=L0), table.n_tasks(GAPS["bound_subspace"], L=L0)
  as_written = table.values("paper_as_written")
  R0, Ru = np.median(table.values("R")), np.median(table.values("R_unpruned"))
  zero = table.values("trivial")
  return (f"Which learner each version bounds. The {BOUNDS['bound_subspace']} is {LEARNERS['bound_subspace']}. "
          f"The {BOUNDS['cmi_bound']} is {LEARNERS['cmi_bound']}. Each is compared with the gap of the learner it "
          f"bounds (a theorem must be ≥ it in every row: a consistency check, not evidence that it says anything) "
          f"and, for ρ, with ŵ_L's squared-loss gap, which is what pruning changes. Whether a version says anything "
          f"is its vacuity: value ÷ the zero predictor's population loss E[wᵀΣw] + σ² on the same tasks ("
          + (f"{text.num(zero.min(), 3)} to {text.num(zero.max(), 3)} over seeds); " if zero.size else "not recorded); ")
          + "non-vacuous means value < the zero predictor's loss (ratio < 1).\n\n"
          f"Both versions are averages over {n:,} tasks per seed and configuration (they need per-task spectra, and "
          f"the noisy learner runs once per task); ŵ_L's squared-loss gap is the exact per-task gap on {n_gap:,} "
          f"fresh tasks per configuration; the CMI bound's clipped gap has no tail. The paper's bound as written is "
          f"+∞ in {int(np.sum(np.isinf(as_written)))} of {as_written.size} rows, so only the finite versions are "
          f"compared. dim V_t ≤ {int(dim.max()) if dim.size else 'n/a'} over all rows. R is the zero "
          f"predictor's, {text.num(R0)} (median over seeds), the same for every configuration; the unpruned "
          f"model's R is {text.num(Ru)}, and the subspace bound scales linearly in R."
          + _estimation_text(table) + "\n\n"
          + text.table(["L", "version", "learner it bounds", "that learner's gap (median)",
                        "ŵ_L's gap, fresh tasks (median)", "value (median)",
                        "value ÷ zero predictor's loss, median (range)", "non-vacuous rows (value < zero predictor's loss)",
                        "value ≥ its learner's gap (median share over seeds)", "seeds with a ρ",
                        "Spearman ρ(value, ŵ_L's gap), mean over seeds", "95 % CI over those seeds"], rows)
          + (f"\n\nSeeds without a ρ, left out of its interval: {'; '.join(outs)}." if outs else "")
          + _tail_text(table)
          + "\n\n![bound vs gap](../figures/prune_bound_scatter.png)\n\n*Each point is one pruned configuration "
          "of one seed; the line is value = gap. A bound that says something would lie below the zero predictor's "
          "loss; a bound that explains pruning would also rise and fall with the gap (a positive ρ in every seed).*\n")


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
    out.append(f"L = {L}: the gap on the versions' own {n:,} tasks ÷ the gap on the fresh tasks is "
               f"{text.num(np.median(t['ratio']), 3)} (median over {t['ratio'].size} rows; range "
               f"{text.num(t['ratio'].min(), 3)} to {text.num(t['ratio'].max(), 3)}). Compared with that gap "
               f"instead, ρ(subspace bound, gap) would be {text.num(rho.mean(), 2) if rho.size else 'n/a'} "
               f"{text.ci(lo, hi)} (mean over {rho.size} seeds, 95 % CI).")
  share = table.values("terms_rare_share")
  if share.size:
    out.append(f"The paper's per-prompt terms (each the logarithm of one task's spectra, docs/theory.md §6) have a "
               f"light tail: on the unpruned models, tasks rarer than 1 in {RARE} carry at most "
               f"{100 * share.max():.1f} % of their sum ({share.size} models, {table.n_tasks('terms_rare_share'):,} "
               f"tasks each).")
  return ("\n\nWhat the versions' tasks alone would have said about the gap: " + " ".join(out)) if out else ""


def summary(table: engine.Table) -> str:
  """Per depth and finite version, the Spearman ρ between it and the measured gap, with its 95 % CI over
  the seeds where ρ is defined."""
  parts = []
  for L in table.unique("L", measure="gap"):
    for bound, label in BOUNDS.items():
      r = rho_interval(table, L, bound)
      rho = r["rho"]
      ci = text.ci(r["lo"], r["hi"], 2) if rho.size > 1 else "(no CI)"
      parts.append(f"L={L} {label} {text.num(rho.mean(), 2) if rho.size else 'undefined'} {ci} "
                   f"({rho.size} of {r['n_seeds']} seeds)")
  return "Spearman ρ(value, gap) over pruned configurations, 95 % CI over seeds: " + "; ".join(parts)
