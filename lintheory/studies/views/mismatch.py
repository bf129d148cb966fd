"""Mismatch: where pruning could help — fewer shots than trained, untrained-for noise, short training.

The study's figures, report section and summary line, read from its table alone (lintheory.studies.views).
"""

from __future__ import annotations

import numpy as np

from lintheory.studies import engine, text
from lintheory.studies.mismatch import (
    FAMILIES, MARGIN, REGIMES, call_text, condition_keys, describe, mismatched, verdict_of)
from lintheory.studies.views import common

FAMILY_TEXT = {"svd": "SVD truncation (rank ≥ 1)", "shrink": "a uniform shrink of the last W_V",
               "drop": "dropping layers (W_V = 0: the last k, or one layer's attn or v at rank 0)"}


def plot(table: engine.Table, meta: dict, out) -> list:
  Ls = table.unique("L", measure="gain")
  regimes = [r for r in REGIMES if condition_keys(table, r)]
  fig, axes = common.subplots(len(Ls), len(regimes), figsize=(4.2 * len(regimes), 3.2 * len(Ls)))
  full = meta["settings"]["train"]["steps"]
  for i, L in enumerate(Ls):
    for ax, regime in zip(axes[i], regimes):
      ks = [k for k in condition_keys(table, regime) if k["L"] == L]
      for j, k in enumerate(ks):
        common.seed_points(ax, j, 100 * np.clip(table.values("gain_frac", **k), -1, None),
                            color="C3" if mismatched(k, full) else "C2")
      ax.axhline(0, color="k", lw=0.8)
      for y in (-100 * MARGIN, 100 * MARGIN):
        ax.axhline(y, color="0.5", lw=0.6, ls=":")
      ax.set_xticks(range(len(ks)))
      ax.set_xticklabels([describe(k).replace(" ", "\n", 1) for k in ks], fontsize=6.5)
      ax.set_xlim(-0.6, len(ks) - 0.4)
      y = np.concatenate([np.clip(table.values("gain_frac", **k), -1, 1) for k in ks]) * 100 if ks else np.zeros(1)
      ax.set_ylim(min(-10, y.min() - 5), max(10, y.max() + 5))  # the ±5 % band always shows
      ax.set_title(f"{regime.replace('_', ' ')}, L = {L}", fontsize=8)
    axes[i, 0].set_ylabel("gain of the chosen edit\n(% of unpruned − Bayes error)")
  fig.text(0.01, 0.005, "Each dot a seed, bar the median; red: train/test mismatch, green: its in-distribution "
           "control (mixed lengths, σ_train = σ_test, full training); dotted: ±5 % equivalence margin; "
           "below −100 % drawn at −100 %.", fontsize=6.5)
  return common.save_tight(fig, out, "mismatch_gain", rect=(0, 0.03, 1, 1))


def report(table: engine.Table, meta: dict) -> str:
  s = meta["settings"]
  rows, fam_rows = [], []
  for regime in REGIMES:
    for k in condition_keys(table, regime):
      v = verdict_of(table, k)
      seeds = table.seeds(measure="gain", **k)
      edits = [table.where(measure="chosen", seed=x, **{c: k[c] for c in k}).rows[0]["edit"] for x in seeds]
      rows.append([regime, str(k["L"]), describe(k), str(len(seeds)),
                   text.num(np.median(table.values("unpruned_mean", **k))),
                   text.num(np.max(table.values("unpruned_max", **k))),
                   text.num(table.value("bayes_mean", seed=None, **k)),
                   text.interval(v["gain"]),
                   f"{text.num(100 * v['center'], 2)} % {text.ci(100 * v['lo'], 100 * v['hi'], 2)}",
                   v["call"], "; ".join(edits)])
      fam_rows.append([regime, str(k["L"]), describe(k)] + [_family_cell(table, k, f) for f in FAMILIES])
  n = table.n_tasks("gain", **condition_keys(table, REGIMES[0])[0]) if condition_keys(table, REGIMES[0]) else 0
  return (f"Each seed's edit is chosen on {s['select_tasks']:,} tasks and scored on {n:,} others (exact "
          f"per-task errors ÷ d). Fixed-length models see an M-shot prompt with 1/M scaling; mixed-length "
          f"models (trained with M ~ U{{{s['mixed_min']}, …, N}}) see it zero-padded to N, as in training. "
          f"Headroom = unpruned − Bayes error. Calls read gain / headroom per seed: helps / hurts when its 95 % "
          f"t-interval over seeds excludes 0, null when its 90 % interval lies within ±{100 * MARGIN:g} % (TOST), "
          f"else inconclusive.\n\n"
          + text.table(["regime", "L", "condition", "seeds", "unpruned mean error (median over seeds)",
                        "worst task (max over seeds)", "Bayes error", "gain, mean [95 % CI over seeds]",
                        "gain / headroom, mean [95 % CI] (any edit)", "call", "chosen edit per seed"], rows)
          + "\n\nThe same choice made within each edit family ("
          + "; ".join(f"{f}: {t}" for f, t in FAMILY_TEXT.items()) + "), scored on the same tasks: gain / headroom, mean [95 % CI] over seeds, and its call. The verdicts "
          "on pruning read the SVD column; another family that wins has a verdict of its own.\n\n"
          + text.table(["regime", "L", "condition", *FAMILIES], fam_rows)
          + "\n\n![gain](../figures/mismatch_gain.png)\n\n*Each dot is a seed's gain as a share of the headroom "
          "between the unpruned model and the Bayes error. Gains well above the dotted band say an edit "
          "repairs a mismatch; dots inside it say the unpruned model is already as good as edits can make it.*\n")


def _family_cell(table: engine.Table, k: dict, fam: str) -> str:
  v = verdict_of(table, k, fam)
  if v is None:
    return "no edit"
  if v["missing"]:
    return call_text(v)
  return f"{text.num(100 * v['center'], 2)} % {text.ci(100 * v['lo'], 100 * v['hi'], 2)} {v['call']}"


def summary(table: engine.Table) -> str:
  """Per regime, the condition where the SVD truncation chosen per seed gains most (% of headroom, what
  the verdicts read), with its 95 % CI, and the same for the edit chosen among every family."""
  parts = []
  for regime in REGIMES:
    for fam, what in (("svd", "SVD truncation"), (None, "any edit")):
      vs = [(k, v) for k in condition_keys(table, regime) for v in [verdict_of(table, k, fam)]
            if v is not None and not v["missing"]]
      if vs:
        k, v = max(vs, key=lambda kv: kv[1]["center"])
        parts.append(f"{regime} ({what}): {describe(k)}, L={k['L']} {text.num(100 * v['center'], 2)} % "
                     f"{text.ci(100 * v['lo'], 100 * v['hi'], 2)} % ({len(v['frac'])} seeds, "
                     f"{table.n_tasks('gain', **k):,} tasks)")
  return "largest gain of the chosen edit, % of the headroom, 95 % CI over seeds: " + "; ".join(parts)
