"""Figures from results files: results/<study>.json → figures/<name>.png and .pdf.

Plotting never trains: every number drawn here was written by a study in experiments/.
Deterministic output: Agg backend, fixed fonts and sizes, no timestamps in PDFs.
Run `python -m lintheory.plots --results results --figures figures`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lintheory.run.io import read_json  # noqa: E402

STYLE = {"figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.grid": True,
         "grid.alpha": 0.3, "svg.hashsalt": "lintheory", "pdf.fonttype": 42}


def decode(x):
  """Undo io.write_json's strict-JSON encoding for plotting: "inf"/"-inf" → ±inf, and null inside
  a list of numbers → NaN (a null dict value means "absent" and stays None)."""
  if isinstance(x, dict):
    return {k: decode(v) for k, v in x.items()}
  if isinstance(x, list):
    return [float("nan") if v is None else decode(v) for v in x]
  if x in ("inf", "-inf"):
    return float(x)
  return x


def save(fig, figures: Path, name: str) -> list[Path]:
  """Write name.png and name.pdf deterministically; returns the paths."""
  figures.mkdir(parents=True, exist_ok=True)
  paths = [figures / f"{name}.png", figures / f"{name}.pdf"]
  fig.savefig(paths[0], metadata={"Software": None})
  fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
  plt.close(fig)
  return paths


def band(ax, x, values_SX, label=None, color=None, **kw):
  """Mean over seeds (axis 0) as a line, ± one standard error as a band."""
  v = np.asarray(values_SX, float)
  m = v.mean(0)
  se = v.std(0, ddof=1) / np.sqrt(v.shape[0]) if v.shape[0] > 1 else np.zeros_like(m)
  (line,) = ax.plot(x, m, label=label, color=color, **kw)
  ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.2, lw=0)
  return line


# --- one-layer equivalence (issue: foundation) ---------------------------------------------


def _case_title(name: str, case: dict) -> str:
  kind = "Σ = I" if case["x_cov_diag"] is None else "Σ = diag(" + ", ".join(f"{v:g}" for v in case["x_cov_diag"]) + ")"
  return f"d={case['d']}, N={case['n_context']}, {kind}"


def plot_one_layer(res: dict, figures: Path) -> list[Path]:
  """Loss curves vs the GD / closed-form lines; Γ_eff heatmaps vs η* I or Γ*; cos and |Δŷ|."""
  cases = res["cases"]
  names = list(cases)
  paths = []

  # 1. training curves with the one-step GD loss (held-out) and the closed form as horizontal lines
  fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
  for ax, name in zip(axes[0], names):
    c = cases[name]
    seeds = c["seeds"]
    x = np.asarray(seeds[0]["curve_steps"])
    for j, s in enumerate(seeds):  # every seed drawn: a seed stuck at a saddle stays visible
      ax.plot(x, s["curve_loss"], color="C0", lw=0.8, alpha=0.7,
              label="trained 1-layer, train loss (each seed)" if j == 0 else None)
      ax.plot([x[-1]], [s["final_loss"]], "o", color="C0", ms=3.5,
              label="held-out loss (each seed)" if j == 0 else None)
    gd1 = np.mean([s["gd1_loss"] for s in seeds])
    top = 1.6 * max(c["closed_form_loss"], max(s["final_loss"] for s in seeds))  # room for the legend
    ax.axhline(gd1, color="C1", ls="--", lw=1.2,
               label=f"1 GD step at η*: {gd1:.3f}" + (" (above the axis)" if gd1 > top else ""))
    if c["reference"] == "gamma_star":
      ref = np.mean([s["ref_loss"] for s in seeds])
      ax.axhline(ref, color="C2", ls="-.", lw=1.2, label=f"1 step preconditioned by Γ*: {ref:.3f}")
    ax.axhline(c["closed_form_loss"], color="k", ls=":", lw=1.2,
               label=f"closed form, optimal 1 layer: {c['closed_form_loss']:.3f}")
    ax.set_title(_case_title(name, c))
    ax.set_xlabel("training step")
    ax.set_ylim(0, top)
    ax.legend(fontsize=6.5, loc="upper right")
  axes[0, 0].set_ylabel("squared error (not halved)")
  fig.tight_layout()
  paths += save(fig, figures, "one_layer_loss")

  # 2. learned effective preconditioner (seed 0) next to the optimum and their difference
  fig, axes = plt.subplots(len(names), 3, figsize=(7.2, 2.3 * len(names)), squeeze=False,
                           layout="constrained")
  for row, name in zip(axes, names):
    c = cases[name]
    G, R = np.asarray(c["seeds"][0]["Gamma_eff"]), np.asarray(c["Gamma_ref"])
    lim = np.abs(R).max()
    err = np.mean([s["Gamma_rel_err"] for s in c["seeds"]])
    ref_label = "η* I" if c["reference"] == "eta_star_I" else "Γ*"
    for ax, M, title in ((row[0], G, f"learned Γ_eff (seed {c['seeds'][0]['seed']})"), (row[1], R, ref_label),
                         (row[2], G - R, f"difference (mean rel. err {err:.3f})")):
      im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
      ax.set_title(title, fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.grid(False)
    row[0].set_ylabel(_case_title(name, c), fontsize=7)
    fig.colorbar(im, ax=row.tolist(), shrink=0.8)
  paths += save(fig, figures, "one_layer_preconditioner")

  # 3. agreement with the reference learner on held-out tasks
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.0, 2.6))
  pos = np.arange(len(names))
  for i, name in enumerate(names):
    seeds = cases[name]["seeds"]
    cos = [s["grad_cos"] for s in seeds]
    dy = [s["mean_abs_dy"] / s["mean_abs_y_ref"] for s in seeds]
    ax1.plot(np.full(len(cos), i), cos, "o", color="C0", alpha=0.6, ms=4)
    ax1.plot([i - 0.2, i + 0.2], [np.mean(cos)] * 2, color="k")
    ax2.plot(np.full(len(dy), i), dy, "o", color="C3", alpha=0.6, ms=4)
    ax2.plot([i - 0.2, i + 0.2], [np.mean(dy)] * 2, color="k")
  labels = [_case_title(n, cases[n]).replace(", Σ", "\nΣ") for n in names]
  for ax in (ax1, ax2):
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, fontsize=6)
  ax1.set_title("cos(∇ₓ ŷ_model, ∇ₓ ŷ_ref), mean over tasks", fontsize=8)
  ax2.set_title("mean |ŷ_model − ŷ_ref| / mean |ŷ_ref|", fontsize=8)
  ax2.set_ylim(bottom=0)
  fig.tight_layout()
  paths += save(fig, figures, "one_layer_gd_match")
  return paths


# --- implicit-GD analysis -------------------------------------------------------------------


_REF_STYLE = {"gd": ("C1", "--"), "gd_step": ("C2", "--"), "gd_pp": ("C3", "-."), "precond": ("C4", ":")}


def _by_noise(res: dict) -> dict[float, list[dict]]:
  out: dict[float, list[dict]] = {}
  for r in res["runs"]:
    out.setdefault(r["noise_std"], []).append(r)
  return {k: sorted(v, key=lambda r: r["L"]) for k, v in sorted(out.items())}


def plot_implicit_gd(res: dict, figures: Path) -> list[Path]:
  """(a) loss vs L, (b) per-layer ‖ŵ_t − w_t‖/‖w_t‖ per reference, (c) ‖ΔW_t‖, ‖G_t‖, (d) loss vs M."""
  groups, labels, kinds = _by_noise(res), res["labels"], res["kinds"]
  paths = []

  # (a) final loss vs depth, one panel per noise level; references are deterministic given the batch
  fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
  for ax, (noise, runs) in zip(axes[0], groups.items()):
    Ls = [r["L"] for r in runs]
    band(ax, Ls, np.array([r["final"]["losses"]["model"] for r in runs]).T, label="trained transformer",
         color="C0", marker="o")
    # deep models have a heavy tail of exploding tasks: the median squared error shows the typical task
    ax.plot(Ls, [np.mean(r["final"]["median_sq_err"]["model"]) for r in runs], ":", color="C0", marker="o",
            mfc="none", ms=4, label="trained, median sq. error")
    for k in kinds:
      c, ls = _REF_STYLE[k]
      ax.plot(Ls, [np.mean(r["final"]["losses"][k]) for r in runs], ls, color=c, marker=".", label=labels[k])
    floor = [np.mean(r["final"]["losses"]["ridge"]) for r in runs]
    if min(floor) > 1e-6:
      ax.plot(Ls, floor, "-", color="k", lw=0.8, label="ridge (Bayes) floor")
      if ax is not axes[0, 0]:  # the shared legend is on the first panel, which has no floor line
        ax.legend(handles=ax.lines[-1:], fontsize=7, loc="lower left")
    else:  # σ = 0 and N > d: ridge recovers w exactly, a floor of 0 has no place on a log axis
      ax.text(0.98, 0.98, f"ridge (Bayes) floor: {max(floor):.0e} (N > d, σ = 0)", transform=ax.transAxes,
              ha="right", va="top", fontsize=7)
    ax.set(xlabel="layers L", ylabel="ICL test MSE", yscale="log", title=f"d={res['d']}, N={res['N']}, σ={noise:g}",
           xticks=Ls)
  axes[0, 0].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  paths += save(fig, figures, "implicit_gd_loss_vs_L")

  # (b) per-layer distance of the implicit predictor ŵ_t to each reference's iterate w_t, noiseless
  runs = groups[min(groups)]
  fig, axes = plt.subplots(1, len(runs), figsize=(2.6 * len(runs), 3.0), squeeze=False, sharey=True)
  for ax, r in zip(axes[0], runs):
    t = np.arange(1, r["L"] + 1)
    for k in kinds:
      c, ls = _REF_STYLE[k]
      band(ax, t, r["layers"]["references"][k]["rel_l2"], label=labels[k], color=c, ls=ls, marker=".")
    ax.set(xlabel="layer t", title=f"L={r['L']}", yscale="log", xticks=t)
  axes[0, 0].set_ylabel("‖ŵ_t − w_t‖ / ‖w_t‖")
  axes[0, -1].legend(fontsize=7)
  fig.tight_layout()
  paths += save(fig, figures, "implicit_gd_trajectory")

  # (c) ‖ΔW_t‖_F and ‖G_t‖_F per layer, one line per depth
  has_gamma = all("gamma_eff" in r["layers"] for r in runs)
  fig, axes = plt.subplots(1, 2 + has_gamma, figsize=(3.8 * (2 + has_gamma), 3.0), squeeze=False)
  for i, (key, name) in enumerate((("delta_W_fro", "‖ΔW_t‖_F"), ("G_fro", "‖G_t‖_F"))):
    ax = axes[0, i]
    for j, r in enumerate(runs):
      band(ax, np.arange(1, r["L"] + 1), r["layers"][key], label=f"L={r['L']}", color=f"C{j}", marker=".")
    ax.set(xlabel="layer t", ylabel=name, yscale="log", title=f"{name}, mean over tasks (σ={min(groups):g})",
           xticks=np.arange(1, max(r["L"] for r in runs) + 1))
  if has_gamma:  # the trained weights read as GD++: γ_eff per layer, fitted GD++ γ_t as crosses
    ax = axes[0, 2]
    for j, r in enumerate(runs):
      t = np.arange(1, r["L"] + 1)
      band(ax, t, r["layers"]["gamma_eff"], label=f"L={r['L']}", color=f"C{j}", marker=".")
      if "gd_pp" in r.get("references", {}):
        ax.plot(t, r["references"]["gd_pp"]["gamma"], "x", color=f"C{j}", ms=5)
    ax.set(xlabel="layer t", ylabel="γ_eff = −mean diag W_PV[x, x]", title="γ_eff per layer (× = fitted GD++ γ_t)",
           xticks=np.arange(1, max(r["L"] for r in runs) + 1))
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  paths += save(fig, figures, "implicit_gd_norms")

  # (d) test-time context size M ≠ N, against the one-layer closed form
  sweeps = [r for r in runs if "m_sweep" in r]
  if sweeps:
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    M = np.asarray(sweeps[0]["m_sweep"]["M"])
    for j, r in enumerate(sweeps):
      band(ax, M, r["m_sweep"]["loss"], label=f"trained L={r['L']}", color=f"C{j}", marker="o", ms=3)
    ax.plot(M, sweeps[0]["m_sweep"]["gd1_closed_form"], "k--", label="1 GD step at η*(N), closed form")
    ridge = np.asarray(sweeps[0]["m_sweep"]["ridge"])
    ax.plot(M[ridge > 1e-3], ridge[ridge > 1e-3], "k-", lw=0.8, label="ridge (Bayes) floor (0 for M > d)")
    ax.axvline(res["N"], color="grey", lw=0.8, ls=":")
    # deep models explode for M < N (values up to 1e40 and beyond): clip the axis, say so
    top = 3 * max(sweeps[0]["m_sweep"]["gd1_closed_form"])
    low = min(np.min(np.mean(r["m_sweep"]["loss"], 0)) for r in sweeps)
    ax.set_ylim(min(1e-2, low / 2), top)
    ax.minorticks_off()
    for j, r in enumerate(sweeps):
      for m, v in zip(M, np.mean(r["m_sweep"]["loss"], 0)):
        if v > top:
          ax.annotate(f"{v:.0e}", (m, top), xytext=(0, -10 - 8 * j), textcoords="offset points", fontsize=6,
                      color=f"C{j}", ha="center")
    ax.set(xscale="log", yscale="log", xlabel="demonstrations at test time M", ylabel="ICL test MSE",
           title=f"trained with N={res['N']} (dotted), d={res['d']}, σ=0", xticks=M, xticklabels=[str(m) for m in M])
    ax.minorticks_off()  # again: the log scale set just now brings minor labels ("5×10⁰") back
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths += save(fig, figures, "implicit_gd_context")
  return paths


# --- SVD pruning ----------------------------------------------------------------------------

# SVD pruning, studies a, b, e (prune_depth, prune_trajectory, condition_numbers).


def _depth_colors(L: int):
  """Shallow layers dark blue, deep layers yellow (viridis), so depth reads at a glance."""
  return [plt.cm.viridis(0.05 + 0.9 * l / max(L - 1, 1)) for l in range(L)]


def _trained(models: list[dict]) -> list[dict]:
  return [m for m in models if not m.get("diverged")]


def _model_title(m: dict) -> str:
  return f"{m['name']} L={m['layers']}"


def plot_prune_depth(res: dict, figures: Path) -> list[Path]:
  """ICL error vs clipping rate and vs kept rank, one line per pruned layer; the damage per depth."""
  models, paths = _trained(res["models"]), []
  if not models:
    return paths
  rates = res["rates"]
  mods = ["attn", "q", "k", "v", "mlp"]
  mods = [m for m in mods if any(m in mm["modules"] for mm in models)]
  for kind in ("rate", "rank"):
    fig, axes = plt.subplots(len(models), len(mods), figsize=(2.6 * len(mods), 2.3 * len(models)),
                             squeeze=False, sharex=True)
    for i, mm in enumerate(models):
      L, colors = mm["layers"], _depth_colors(mm["layers"])
      for j, mod in enumerate(mods):
        ax = axes[i, j]
        if mod not in mm["modules"]:
          ax.set_visible(False)
          continue
        err = np.asarray(mm["modules"][mod][f"{kind}_err"], float)  # [L, S, X]; overflow → inf/nan
        err = np.where(np.isfinite(err), err, 1e39)  # drawn at the top: beyond float32's range
        x = np.arange(len(rates)) if kind == "rate" else np.asarray(mm["ranks"])
        for l in range(L):
          lab = f"layer {l}" + (" (shallow)" if l == 0 else " (deep)" if l == L - 1 else "")
          band(ax, x, err[l], label=lab, color=colors[l], lw=2.2 if l in (0, L - 1) else 1.0, marker=".")
        ax.axhline(np.mean(mm["unpruned"]), color="k", ls="--", lw=0.8, label="unpruned")
        ax.set_yscale("log")
        ax.set_title(f"{_model_title(mm)}: {mod}", fontsize=8)
        if kind == "rate":
          ax.set_xticks(np.arange(len(rates)), [f"{r:g}" for r in rates], rotation=60, fontsize=6)
        if j == 0:
          ax.set_ylabel("ICL error (MSE/d)")
        if i == len(models) - 1:
          ax.set_xlabel("clipping rate ξ" if kind == "rate" else "kept rank r (of 11)")
      axes[i, 0].legend(fontsize=5, loc="upper left")
    fig.suptitle(f"Pruning one layer alone (seeds {models[0]['seeds']}, mean ± SE)", fontsize=9)
    fig.tight_layout()
    paths += save(fig, figures, f"prune_depth_{kind}")
  fig, axes = plt.subplots(1, len(mods), figsize=(2.8 * len(mods), 2.6), squeeze=False)
  for j, mod in enumerate(mods):
    ax = axes[0, j]
    for c, mm in enumerate(models):  # one colour per model in every panel
      if mod in mm["modules"]:
        dmg = np.asarray(mm["modules"][mod]["summary"]["damage_log10_per_seed"], float)  # [L, S]
        dmg = np.minimum(np.where(np.isnan(dmg), np.inf, dmg), 40.0)  # overflowed (inf) drawn at 40
        L = mm["layers"]
        band(ax, np.arange(L) / max(L - 1, 1), dmg.T, label=_model_title(mm), color=f"C{c}", marker="o", ms=3)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(f"{mod}: damage of pruning layer k\n(mean over ξ ∈ .1, .5, .75, .9)", fontsize=8)
    ax.set_xlabel("relative depth k/(L−1)  (0 = shallow)")
  axes[0, 0].set_ylabel("log10(err pruned/unpruned)\n(40 = overflow)")
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  return paths + save(fig, figures, "prune_depth_damage")


def plot_prune_trajectory(res: dict, figures: Path) -> list[Path]:
  """Relative change of ŵ_t when pruning layer k (heatmaps), and the unpruned ‖G_t‖, ‖ΔW_t‖."""
  models, paths = _trained(res["models"]), []
  if not models:
    return paths
  show = [0.5, 0.9]
  fig, axes = plt.subplots(len(models), len(show) + 1, figsize=(3.2 * (len(show) + 1), 2.8 * len(models)),
                           squeeze=False)
  for i, mm in enumerate(models):
    L = mm["layers"]
    rel = np.asarray(mm["modules"]["attn"]["w_hat_rel"], float).mean(2)  # [rate, k, t]
    for j, x in enumerate(show):
      ax = axes[i, j]
      r = mm["rates"].index(x)
      logrel = np.log10(np.maximum(rel[r], 1e-12))
      im = ax.imshow(logrel, vmin=-4, vmax=max(1.0, float(np.ceil(logrel.max()))), cmap="magma", origin="upper")
      ax.set_xlabel("layer t of ŵ_t")
      ax.set_ylabel("pruned layer k")
      ax.set_xticks(range(L))
      ax.set_yticks(range(L))
      ax.grid(False)
      ax.set_title(f"L={L}: attn at ξ={x} (rank {mm['ranks'][r]})\nlog10 ‖ŵ_t−ŵ_t⁰‖/‖ŵ_t⁰‖ (t<k: exactly 0)",
                   fontsize=7)
      fig.colorbar(im, ax=ax, shrink=0.8)
    ax = axes[i, -1]
    band(ax, np.arange(L), np.asarray(mm["G_norm"], float), label="‖G_t‖_F", marker="o", ms=3)
    band(ax, np.arange(L), np.asarray(mm["dW_norm"], float), label="‖ΔW_t‖_F", marker="s", ms=3, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("layer t")
    ax.set_title(f"L={L}: unpruned norms (seeds {mm['seeds']})", fontsize=8)
    ax.legend(fontsize=6)
  fig.tight_layout()
  return paths + save(fig, figures, "prune_trajectory")


def plot_condition_numbers(res: dict, figures: Path) -> list[Path]:
  """log10 σ_max/σ_min per layer for every matrix (the paper's Fig. 3), seeds as bands."""
  models = _trained(res["models"])
  if not models:
    return []
  fig, axes = plt.subplots(1, len(models), figsize=(3.0 * len(models), 2.7), squeeze=False)
  for ax, mm in zip(axes[0], models):
    for name, v in mm["log10_cond"].items():
      v = np.asarray([[np.nan if isinstance(x, str) else x for x in row] for row in v], float)
      color = {"W_Q": "C0", "W_K": "C1", "W_V": "C2", "W_O": "C3", "W_1": "C4", "W_2": "C5"}.get(name)
      band(ax, np.arange(mm["layers"]), v, label=name, color=color, marker="o", ms=3)
    ax.legend(fontsize=6)
    ax.set_xlabel("layer (from 0)")
    ax.set_title(_model_title(mm), fontsize=8)
    ax.set_xticks(range(mm["layers"]))
  axes[0, 0].set_ylabel("log10 condition number (σ_max/σ_min)")
  fig.tight_layout()
  return save(fig, figures, "condition_numbers")


# bounds & Algorithm 1 (studies c, d, f: prune_bound, prune_shots, algorithm1).


def _live(models: list[dict]) -> list[dict]:
  return [m for m in models if "skipped" not in m]


def _col(rows: list[dict], key: str) -> np.ndarray:
  return np.asarray([np.nan if r.get(key) is None or isinstance(r.get(key), str) else r[key] for r in rows], float)


def _symlog(ax, which: str, values, linthresh: float) -> None:
  """A symlog axis with at most ~7 labelled decades (the default labels every decade and collide)."""
  v = np.abs(np.asarray(values, float))
  v = v[np.isfinite(v) & (v > linthresh)]
  (ax.set_xscale if which == "x" else ax.set_yscale)("symlog", linthresh=linthresh)
  top = int(np.ceil(np.log10(v.max()))) if v.size else 1
  lo = int(np.floor(np.log10(linthresh)))
  step = max(1, int(np.ceil((top - lo) / 3)))
  pos = [10.0**k for k in range(lo, top + 1, step)]
  ticks = sorted([-t for t in pos] + [0.0] + pos)
  (ax.set_xticks if which == "x" else ax.set_yticks)(ticks, [f"{t:.0e}" if t else "0" for t in ticks], fontsize=6)


def plot_prune_bound(res: dict, figures: Path) -> list[Path]:
  """Theorem 2 (floor, range, sensitive part) vs the measured gap, and per-layer curves vs rank."""
  models = _live(res["models"])
  if not models:
    return []
  names = [("bound_floor", "bound, floor εI"), ("bound_range", "bound, range of C_t"),
           ("bound_sensitive", "sensitive part Σ‖ΔW‖²‖I+W‖²")]
  fig, axes = plt.subplots(len(models), 3, figsize=(9.6, 2.9 * len(models)), squeeze=False)
  for i, mm in enumerate(models):
    rows, L = mm["rows"], mm["layers"]
    gap, layer, triv = _col(rows, "bd_gap"), _col(rows, "layer"), np.nanmean(_col(rows, "bd_trivial"))
    colors = _depth_colors(L)
    for j, (key, label) in enumerate(names):
      ax, y = axes[i, j], _col(rows, f"bd_{key}")
      for l in range(L):
        sel = layer == l
        ax.scatter(gap[sel], y[sel], s=7, color=colors[l], label=f"layer {l}")
      if key != "bound_sensitive":
        ax.axhline(triv, color="k", ls="--", lw=0.8, label="zero-predictor loss")
      _symlog(ax, "x", gap, 1e-2)
      ax.set_yscale("log")
      sp = mm["spearman"][key]["vs_gap"]
      ax.set_title(f"L={L}: {label}\nSpearman ρ {sp['rho']:+.2f} [{sp['lo']:+.2f}, {sp['hi']:+.2f}]", fontsize=8)
      ax.set_xlabel("measured gap of ŵ_L")
    axes[i, 0].legend(fontsize=5)
  fig.tight_layout()
  paths = save(fig, figures, "prune_bound_scatter")
  fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 2.9), squeeze=False)
  for ax, mm in zip(axes[0], models):
    rows, L = mm["rows"], mm["layers"]
    mod = mm["rows"][0]["module"]
    sel_m = np.array([r["module"] == mod for r in rows])
    rank, layer, seed = _col(rows, "rank"), _col(rows, "layer"), _col(rows, "seed")
    ranks = np.unique(rank[sel_m])
    for l, c in enumerate(_depth_colors(L)):
      for key, ls in (("bd_bound_range", "-"), ("bd_gap", "--")):
        v = _col(rows, key)
        vals = np.array([[v[sel_m & (layer == l) & (rank == r) & (seed == s)][0] for r in ranks]
                         for s in mm["seeds"]])
        ax.plot(ranks, np.nanmedian(vals, 0), ls=ls, color=c, marker=".", label=f"layer {l}" if ls == "-" else None)
    _symlog(ax, "y", np.concatenate([_col(rows, "bd_bound_range"), _col(rows, "bd_gap")]), 1e-2)
    ax.set_xlabel(f"kept rank of {mod} (of 11)")
    ax.set_title(f"L={L}: bound (range, solid) and gap (dashed),\nmedian over seeds", fontsize=8)
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  return paths + save(fig, figures, "prune_bound_layers")


def _num(v) -> float:
  """A JSON number, or "inf"/"-inf"/None as written by io.write_json → float."""
  return float("nan") if v is None else float(v)


def _gain_errorbar(ax, x, entries, label_prefix=""):
  """Median over seeds ± SE of the finite seeds; seeds with a non-finite gain are counted in the label."""
  allv = []
  for key, marker, lab in (("heldout_gain", "o", "held-out (chosen on validation)"), ("oracle_gain", "x", "oracle (best on test)")):
    per = [np.array([_num(v) for v in e[key]]) for e in entries]
    m = np.array([np.median(v) if np.isfinite(np.median(v)) else np.nan for v in per])
    se = np.array([v[np.isfinite(v)].std(ddof=1) / np.sqrt(np.isfinite(v).sum()) if np.isfinite(v).sum() > 1
                   else 0.0 for v in per])
    bad = sum(int((~np.isfinite(v)).sum()) for v in per)
    ax.errorbar(x, m, yerr=se, marker=marker, capsize=3, lw=1,
                label=label_prefix + lab + (f" ({bad} non-finite seed values not drawn)" if bad else ""))
    allv += list(m)
  ax.axhline(0, color="k", lw=0.7)
  _symlog(ax, "y", allv, 1e-3)


def plot_prune_shots(res: dict, figures: Path) -> list[Path]:
  """Pruning gain (pruned − unpruned ICL error; < 0 helps) vs shots, training steps, noise."""
  fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.0))
  ax = axes[0]
  _gain_errorbar(ax, [e["M"] for e in res["shots"]], res["shots"])
  ax.axvline(res["N_train"], color="grey", ls=":", lw=0.8)
  ax.set_xlabel(f"test-time shots M (trained N = {res['N_train']})")
  ax.set_ylabel("pruning gain (ICL error)\nmedian over seeds ± SE")
  ax.legend(fontsize=6)
  ax = axes[1]
  _gain_errorbar(ax, [e["steps"] for e in res["steps"]], res["steps"])
  ax.set_xscale("log")
  ax.set_xticks([e["steps"] for e in res["steps"]], [str(e["steps"]) for e in res["steps"]])
  ax.minorticks_off()
  ax.set_xlabel("training steps")
  ax = axes[2]
  labels = [f"σ_test={e['test_sigma']:g}\ntrained σ={e['trained_sigma']:g}\n{e['train_steps']} steps" for e in res["noise"]]
  _gain_errorbar(ax, np.arange(len(labels)), res["noise"])
  ax.set_xticks(np.arange(len(labels)), labels, fontsize=6)
  for a, t in zip(axes, ("shots", "training length", "label noise")):
    a.set_title(f"pruning gain vs {t} (seeds {res['seeds']})", fontsize=8)
  fig.tight_layout()
  return save(fig, figures, "prune_shots")


def plot_algorithm1(res: dict, figures: Path) -> list[Path]:
  """Unpruned vs pruned test error per Algorithm-1 variant, mean ± 95% t-interval over seeds."""
  models = [m for m in res["models"] if m.get("rows")]
  if not models:
    return []
  fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.4), squeeze=False)
  for ax, mm in zip(axes[0], models):
    names = [r["variant"] for r in mm["rows"]]
    y = np.arange(len(names))
    for off, key, lab in ((-0.15, "unpruned", "unpruned"), (0.15, "pruned", "pruned (chosen on validation)")):
      m = np.array([r[key][0] for r in mm["rows"]])
      ci = np.array([r[key][1] for r in mm["rows"]])
      ax.errorbar(m, y + off, xerr=ci, fmt="o", ms=3, capsize=2, label=lab)
    ax.set_yticks(y, names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("test ICL error (MSE/d), mean ± 95% CI")
    ax.set_title(f"Algorithm 1, L={mm['layers']}, seeds {mm['seeds']}", fontsize=8)
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  return save(fig, figures, "algorithm1")



# Each study's results file → the function drawing its figures. Sections above add to it.
PLOTTERS: dict[str, str] = {
    "one_layer": "plot_one_layer",
    "implicit_gd": "plot_implicit_gd",
    "prune_depth": "plot_prune_depth",
    "prune_trajectory": "plot_prune_trajectory",
    "condition_numbers": "plot_condition_numbers",
    "prune_bound": "plot_prune_bound",
    "prune_shots": "plot_prune_shots",
    "algorithm1": "plot_algorithm1",
}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description="draw every figure whose results exist")
  ap.add_argument("--results", default="results")
  ap.add_argument("--figures", default="figures")
  args = ap.parse_args(argv)
  results, figures = Path(args.results), Path(args.figures)
  plt.rcParams.update(STYLE)
  drawn = 0
  for study, fn_name in PLOTTERS.items():
    path = results / f"{study}.json"
    if not path.exists():
      print(f"skip {study}: {path} not found (run experiments/{study}.py)", file=sys.stderr)
      continue
    for p in globals()[fn_name](decode(read_json(path)), figures):
      print(f"wrote {p}")
      drawn += 1
  return 0 if drawn else 1


if __name__ == "__main__":
  sys.exit(main())
