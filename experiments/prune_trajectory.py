"""Study (b), the implicit GD trajectory under pruning (docs/theory.md §5, §6 Remark 5, §7).

For trained linear models (lintheory.run.profiles, d = 10, N = 20; L = 4 and L = 8), prune the attention
(q, k, v together) of one layer k at the paper's rates and read off, with Theorem 1, every layer's
implicit predictor ŵ_t. Pruning layer k cannot move ŵ_t for t < k (t counts layers from 0, ŵ_t is
the predictor after layer t): the study reports the largest |ŵ_t − ŵ_t⁰| over all t < k, which
must be exactly 0. For t ≥ k it reports the relative change ‖ŵ_t − ŵ_t⁰‖/‖ŵ_t⁰‖, and the spread
of the unpruned ‖G_t‖_F and ‖ΔW_t‖_F over layers and seeds.

  python experiments/prune_trajectory.py --profile default --results results
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from lintheory.run import io, sweep, profiles
from lintheory.core import prune

from prune_depth import trained  # remembers diverged recipes

SETTINGS = {"default": dict(depths=(4, 8), n_analysis=128, n_eval=256),
            "full": dict(depths=(4, 8), n_analysis=1024, n_eval=4096)}
MODULES = ("attn", "v")


def run_model(prof, profile: str, L: int) -> dict:
  s = SETTINGS[profile]
  try:
    tr = trained(prof, layers=L)
  except RuntimeError as e:
    print(f"  L={L}: {e}", file=sys.stderr)
    return {"layers": L, "diverged": str(e)}
  rates = prune.PAPER_RATES[1:]
  cfg = sweep.SweepConfig(modules=MODULES, rates=prune.PAPER_RATES, n_eval=s["n_eval"],
                          n_analysis=s["n_analysis"], block=32, bounds=False)
  res = sweep.cached(tr.params, tr.seeds, tr.model, tr.task, cfg)
  seeds = list(tr.seeds)
  col = lambda r, name: np.array([r[f"{name}_{t}"] for t in range(L)])
  base = {r["seed"]: r for r in res.rows if r["xi"] == 0.0 and r["layer"] == 0 and r["module"] == "attn"}
  out = {"layers": L, "diverged": None, "seeds": seeds, "rates": rates,
         "ranks": [prune.rank_for_rate(tr.model.D, tr.model.D, x) for x in rates],
         "G_norm": np.array([col(base[s_], "G_norm") for s_ in seeds]),  # [S, L] unpruned
         "dW_norm": np.array([col(base[s_], "dW_norm") for s_ in seeds]), "modules": {}}
  before_max, after_min = 0.0, np.inf
  for m in MODULES:
    rel = np.zeros((len(rates), L, len(seeds), L))  # [rate, k, seed, t]
    G_ratio = np.zeros_like(rel)  # ‖G_t‖ pruned / unpruned
    for r in res.rows:
      if r["module"] != m or r["xi"] == 0.0:
        continue
      i, k, si = rates.index(r["xi"]), r["layer"], seeds.index(r["seed"])
      rel[i, k, si] = col(r, "w_hat_rel")
      G_ratio[i, k, si] = col(r, "G_norm") / col(base[r["seed"]], "G_norm")
      maxabs = col(r, "w_hat_maxabs")
      before_max = max(before_max, float(np.max(maxabs[:k], initial=0.0)))
      after_min = min(after_min, float(np.min(maxabs[k:])))
    out["modules"][m] = {"w_hat_rel": rel, "G_ratio": G_ratio}
  out["max_abs_change_before_k"] = before_max  # must be exactly 0
  out["min_max_abs_change_from_k"] = after_min
  G = out["G_norm"]
  out["G_norm_spread"] = {"min": float(G.min()), "max": float(G.max()),
                          "cv_over_layers": float(np.mean(G.std(1) / G.mean(1))),
                          "cv_over_seeds": float(np.mean(G.std(0) / G.mean(0)))}
  return out


def main(argv=None) -> int:
  ap = profiles.study_parser(__doc__)
  args = ap.parse_args(argv)
  prof = profiles.profile(args.profile)
  t0 = time.perf_counter()
  models = []
  for L in SETTINGS[args.profile]["depths"]:
    print(f"== linear L={L}", file=sys.stderr, flush=True)
    models.append(run_model(prof, args.profile, L))
  out = {"study": "prune_trajectory", "profile": args.profile, "modules": MODULES, "models": models,
         "layer_index": "k and t count layers from 0; ŵ_t is the implicit predictor after layer t",
         "seconds": time.perf_counter() - t0}
  path = Path(args.results) / "prune_trajectory.json"
  io.write_json(path, out)
  for mod in models:
    if mod["diverged"]:
      print(f"L={mod['layers']}: training diverged")
      continue
    print(f"L={mod['layers']}: max |Δŵ_t| over t < k = {mod['max_abs_change_before_k']!r} (must be 0); "
          f"min over t ≥ k = {mod['min_max_abs_change_from_k']:.3g}")
    G = mod["G_norm"]
    print(f"  unpruned ‖G_t‖_F per layer (mean over seeds) {np.array2string(G.mean(0), precision=3)}, "
          f"CV over layers {mod['G_norm_spread']['cv_over_layers']:.2f}, over seeds "
          f"{mod['G_norm_spread']['cv_over_seeds']:.2f}")
    for m in MODULES:
      rel = mod["modules"][m]["w_hat_rel"]  # [rate, k, seed, t]
      final = rel[:, :, :, -1].mean(2)  # [rate, k]
      for i, x in enumerate(mod["rates"]):
        if x in (0.5, 0.9):
          print(f"  {m} ξ={x}: relative change of the final ŵ when pruning layer k = 0..{mod['layers'] - 1}: "
                f"{np.array2string(final[i], precision=3)}")
  print(f"wrote {path} ({out['seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
