"""Study (a), deep vs shallow (the paper's Fig. 1 in miniature; docs/theory.md §6 Remark 5, §7).

Trained models (lintheory.run.profiles, d = 10, N = 20, one model per seed) with L = 4 and L = 8 layers:
SVD-prune one module (attn, q, k, v; mlp where the model has one) of ONE layer at a time, at the
paper's clipping rates and at explicit kept ranks, and measure the ICL error (squared error / d) on
held-out tasks. Also for softmax attention and for models with ReLU MLP sub-layers, which the
paper's theory does not cover. A model whose training diverges is recorded as such, not dropped.

Summary per model and module: the "damage" of pruning layer k, the ICL error at ξ ∈ {0.1, 0.5,
0.75, 0.9} (kept ranks 9, 5, 2, 1 of 11) minus the unpruned error, averaged over those rates, per
seed (a pruned model whose error overflows float32 counts as +inf and is counted); Remark 5
predicts less damage for deeper layers. And the best improvement any
single-layer pruning gives over the unpruned model.

  python experiments/prune_depth.py --profile default --results results
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from lintheory.run import io, sweep, profiles
from lintheory.core import prune

DAMAGE_RATES = (0.1, 0.5, 0.75, 0.9)  # the paper's rates that keep rank ≥ 1 of an 11×11 matrix
# profile → (depths of the linear model, depths of the softmax / ReLU-MLP variants, ranks, tasks)
SETTINGS = {
    "default": dict(depths=(4, 8), variant_depths=(4,), ranks=(0, 1, 2, 3, 5, 7, 9), n_eval=1024),
    "full": dict(depths=(4, 8), variant_depths=(4, 8), ranks=tuple(range(11)), n_eval=16_384),
}
VARIANTS = (("linear", {}), ("softmax", {"attention": "softmax"}), ("relu_mlp", {"mlp": "relu"}))


def model_list(profile: str) -> list[tuple[str, int, dict]]:
  s = SETTINGS[profile]
  out = [("linear", L, {}) for L in s["depths"]]
  for name, kw in VARIANTS[1:]:
    out += [(name, L, kw) for L in s["variant_depths"]]
  return out


def trained(prof, cache_dir: str = "runs/cache", **kw):
  """profiles.trained(prof, **kw), or a RuntimeError when that recipe is known to diverge.

  A divergence is remembered in <cache_dir>/diverged/ (keyed by the profile, the arguments and
  profiles.trained's source), so the three pruning studies do not each retrain a model that diverges.
  """
  import dataclasses
  import hashlib
  import inspect
  import json

  key = json.dumps({"profile": dataclasses.asdict(prof), "kw": kw, "zoo": inspect.getsource(profiles.trained)},
                   sort_keys=True, default=str)
  marker = Path(cache_dir) / "diverged" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
  if marker.exists():
    raise RuntimeError(io.read_json(marker)["error"] + " (remembered in " + str(marker) + ")")
  try:
    return profiles.trained(prof, cache_dir=cache_dir, **kw)
  except RuntimeError as e:
    io.write_json(marker, {"error": str(e), "kw": kw})
    raise


def curves(rows: list[dict], seeds, L: int, module: str, mode: str, values) -> np.ndarray:
  """ICL error [L, S, len(values)] for one module, from the sweep's rows."""
  key = "xi" if mode == "rate" else "rank"
  idx = {(r["layer"], r["seed"], r[key]): r["icl_error"] for r in rows if r["module"] == module and r["mode"] == mode}
  return np.array([[[idx[(l, s, v)] for v in values] for s in seeds] for l in range(L)])


def summarise(rate_err: np.ndarray, unpruned: np.ndarray, rates) -> dict:
  """Damage per layer (mean ± SE over seeds) and the best single-layer improvement (ξ > 0).

  Damage is log10(error pruned / error unpruned) averaged over DAMAGE_RATES: the errors span
  many orders of magnitude (pruning an early layer can blow a model up), so ratios, not
  differences, are averaged.
  """
  cols = [list(rates).index(x) for x in DAMAGE_RATES]
  blown = ~np.isfinite(rate_err)  # float32 overflow of the pruned model: counted, then taken as +inf
  rate_err = np.where(blown, np.inf, rate_err)
  damage_LS = np.log10(rate_err[:, :, cols] / unpruned[None, :, None]).mean(-1)  # [L, S]
  L, S = damage_LS.shape
  fin = np.all(np.isfinite(damage_LS), axis=1)
  with np.errstate(invalid="ignore"):  # std of an overflowed (inf) layer is replaced below
    se = np.where(fin, damage_LS.std(1, ddof=1) / np.sqrt(S), np.inf) if S > 1 else np.zeros(L)
  shallow, deep = damage_LS[: L // 2].mean(0), damage_LS[L - L // 2:].mean(0)  # [S]
  pos = [i for i, x in enumerate(rates) if x > 0]
  gain = unpruned[None, :, None] - rate_err[:, :, pos]  # [L, S, R'] > 0: pruning helped
  g_mean = gain.mean(1)
  l, r = np.unravel_index(np.argmax(g_mean), g_mean.shape)
  g = gain[l, :, r]
  g_se = float(g.std(ddof=1) / np.sqrt(S)) if S > 1 else 0.0
  return {"damage_log10_mean": damage_LS.mean(1), "damage_log10_se": se, "damage_log10_per_seed": damage_LS,
          "shallow_half_damage": shallow, "deep_half_damage": deep,
          "deep_less_damaged_seeds": int(np.sum(deep < shallow)),
          "last_less_damaged_than_first_seeds": int(np.sum(damage_LS[-1] < damage_LS[0])),
          "best_gain_mean": float(g_mean[l, r]), "best_gain_se": g_se, "best_gain_layer": int(l),
          "best_gain_rate": float(rates[pos[r]]), "best_gain_per_seed": g,
          "best_gain_relative": float(g_mean[l, r] / unpruned.mean()),
          "improving_configs": int(np.sum(np.all(gain > 0, axis=1))),  # better in every seed
          "damage_log10_median": np.median(damage_LS, 1),
          "overflowed_per_layer": blown.sum((1, 2))}  # (seed, ξ) pairs whose error is not finite


def run_model(prof, profile: str, name: str, L: int, kw: dict) -> dict:
  s = SETTINGS[profile]
  out = {"name": name, "layers": L, "attention": kw.get("attention", "linear"), "mlp": kw.get("mlp")}
  t0 = time.perf_counter()
  try:
    tr = trained(prof, layers=L, **kw)
  except RuntimeError as e:  # training diverged: report it, do not substitute another recipe
    print(f"  {name} L={L}: {e}", file=sys.stderr)
    return {**out, "diverged": str(e)}
  out["train_seconds_or_cache"] = time.perf_counter() - t0
  modules = ("attn", "q", "k", "v") + (("mlp",) if kw.get("mlp") else ())
  cfg = sweep.SweepConfig(modules=modules, rates=prune.PAPER_RATES, ranks=s["ranks"], n_eval=s["n_eval"],
                          n_analysis=16, block=32, bounds=False)
  t0 = time.perf_counter()
  res = sweep.cached(tr.params, tr.seeds, tr.model, tr.task, cfg)
  out["sweep_seconds"] = time.perf_counter() - t0
  seeds = list(tr.seeds)
  D = tr.model.D
  base = {r["seed"]: r["icl_error"] for r in res.rows if r["mode"] == "rate" and r["xi"] == 0.0}
  unpruned = np.array([base[s_] for s_ in seeds])
  base_se = {r["seed"]: r["icl_error_se"] for r in res.rows if r["mode"] == "rate" and r["xi"] == 0.0}
  ranks = sorted(set(s["ranks"]) | {D})
  out.update({"diverged": None, "seeds": seeds, "final_train_loss": tr.losses[:, -50:].mean(1),
              "unpruned": unpruned, "unpruned_se": [base_se[s_] for s_ in seeds], "ranks": ranks,
              "rank_of_rate": [prune.rank_for_rate(D, D, x) for x in prune.PAPER_RATES], "modules": {}})
  for m in modules:
    rate_err = curves(res.rows, seeds, L, m, "rate", prune.PAPER_RATES)
    rank_err = np.concatenate([curves(res.rows, seeds, L, m, "rank", ranks[:-1]),
                               np.broadcast_to(unpruned[None, :, None], (L, len(seeds), 1))], axis=2)
    out["modules"][m] = {"rate_err": rate_err, "rank_err": rank_err,
                         "summary": summarise(rate_err, unpruned, prune.PAPER_RATES)}
  return out


def main(argv=None) -> int:
  ap = profiles.study_parser(__doc__)
  args = ap.parse_args(argv)
  prof = profiles.profile(args.profile)
  t0 = time.perf_counter()
  models = []
  for name, L, kw in model_list(args.profile):
    print(f"== {name} L={L}", file=sys.stderr, flush=True)
    models.append(run_model(prof, args.profile, name, L, kw))
  out = {"study": "prune_depth", "profile": args.profile, "rates": prune.PAPER_RATES,
         "damage_rates": DAMAGE_RATES, "d": 10, "n_context": 20, "models": models,
         "icl_error": "squared error / d on held-out tasks (zero predictor = 1)",
         "seconds": time.perf_counter() - t0}
  path = Path(args.results) / "prune_depth.json"
  io.write_json(path, out)
  for mod in models:
    if mod["diverged"]:
      print(f"{mod['name']} L={mod['layers']}: training diverged")
      continue
    print(f"{mod['name']} L={mod['layers']}: unpruned ICL error {np.mean(mod['unpruned']):.4f} "
          f"(seeds {mod['seeds']})")
    for m, v in mod["modules"].items():
      sm = v["summary"]
      dm = " ".join(f"{a:+.2f}±{b:.2f}" for a, b in zip(sm["damage_log10_mean"], sm["damage_log10_se"]))
      dm += f" (median {np.array2string(np.asarray(sm['damage_log10_median']), precision=2)}, overflowed " \
            f"{list(map(int, sm['overflowed_per_layer']))})"
      print(f"  {m:>4} log10 damage per layer {dm}; deep half < shallow half in {sm['deep_less_damaged_seeds']}/"
            f"{len(mod['seeds'])} seeds; best ξ>0: {sm['best_gain_mean']:+.4f} ± {sm['best_gain_se']:.4f} "
            f"(layer {sm['best_gain_layer']}, ξ={sm['best_gain_rate']}, {100 * sm['best_gain_relative']:+.1f}%); "
            f"{sm['improving_configs']} (layer, ξ>0) better in every seed")
  print(f"wrote {path} ({out['seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
