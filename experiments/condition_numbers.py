"""Study (e), condition numbers per layer and module of trained models (the paper's Fig. 3).

For every trained model of study (a) (lintheory.run.profiles, d = 10, N = 20: linear L = 4 and 8, and the
softmax / ReLU-MLP variants), σ_max/σ_min of W_Q, W_K, W_V (and W_1, W_2) in every layer and seed
(prune.condition_numbers; inf when σ_min ≤ σ_max·max(m, n)·ε of the stored dtype), and the full
singular-value spectra. The paper's Algorithm 1 prunes the deepest of the top-k layers by
condition number; here we report which layer has the largest one per matrix.
No training happens here beyond what zoo caches for study (a).

  python experiments/condition_numbers.py --profile default --results results
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from lintheory.run import io, profiles
from lintheory.core import prune

from prune_depth import model_list, trained  # the same models as study (a)


def run_model(prof, name: str, L: int, kw: dict) -> dict:
  out = {"name": name, "layers": L}
  try:
    tr = trained(prof, layers=L, **kw)
  except RuntimeError as e:
    print(f"  {name} L={L}: {e}", file=sys.stderr)
    return {**out, "diverged": str(e)}
  seeds = list(tr.seeds)
  per_seed = [prune.condition_numbers(profiles.seed_params(tr.params, i)) for i in range(len(seeds))]
  spectra = [prune.spectra(profiles.seed_params(tr.params, i)) for i in range(len(seeds))]
  cond = {k: np.array([c[k] for c in per_seed]) for k in per_seed[0]}  # name → [S, L]
  log_cond = {k: np.log10(v) for k, v in cond.items()}
  argmax = {k: [int(np.argmax(np.where(np.isfinite(v[s]), v[s], np.inf))) for s in range(len(seeds))]
            for k, v in cond.items()}
  return {**out, "diverged": None, "seeds": seeds, "cond": cond, "log10_cond": log_cond,
          "n_infinite": {k: int(np.sum(~np.isfinite(v))) for k, v in cond.items()},
          "layer_of_max_cond": argmax,
          "spectra": {k: np.array([s[k] for s in spectra]) for k in spectra[0]}}  # [S, L, k]


def main(argv=None) -> int:
  ap = profiles.study_parser(__doc__)
  args = ap.parse_args(argv)
  prof = profiles.profile(args.profile)
  t0 = time.perf_counter()
  models = [run_model(prof, name, L, kw) for name, L, kw in model_list(args.profile)]
  out = {"study": "condition_numbers", "profile": args.profile, "models": models,
         "singular": "cond = inf when σ_min ≤ σ_max·max(m, n)·ε (float32 ε for trained weights)",
         "seconds": time.perf_counter() - t0}
  path = Path(args.results) / "condition_numbers.json"
  io.write_json(path, out)
  for mod in models:
    if mod["diverged"]:
      print(f"{mod['name']} L={mod['layers']}: training diverged")
      continue
    print(f"{mod['name']} L={mod['layers']} (seeds {mod['seeds']}): median log10 condition number per layer")
    for k, v in mod["log10_cond"].items():
      print(f"  {k}: {np.array2string(np.median(v, 0), precision=2)}  (largest at layer "
            f"{mod['layer_of_max_cond'][k]} per seed)")
  print(f"wrote {path} ({out['seconds']:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
