"""Study f: the paper's Algorithm 1 (docs/theory.md §8) with confidence intervals over seeds.

Per trained model (zoo, d = 10, N = 20, L = 4 and 8, one model per seed): a validation task set
scores every candidate, a disjoint test task set reports the choice. Variants:
  paper        layer = the deepest of the top-k layers by the module's condition number
               (k = L // 2), candidate ξ = the paper's rates [0, 0.1, …, 0.995];
  paper+ranks  the same layer, every kept rank as a candidate;
  best-all     our extension: the best (layer, module, rank) over all.
Ties go to the smaller ξ (the larger rank, the unpruned model first).
Writes results/algorithm1.json and results/algorithm1.md (the table), and prints the table.

  python experiments/algorithm1.py --profile default --results results
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from lintheory.run import algorithm1 as alg, io, profiles
from lintheory.core import prune

MODULES = ("attn", "q", "k", "v")
VAL_SEED, TEST_SEED = 7_001, 7_002  # task keys, folded with the model seed
SIZES = {"default": (256, 1024), "full": (8192, 65_536)}  # (validation, test) tasks per seed


def ci95(x) -> tuple[float, float]:
  """Mean and half-width of the 95% t-interval over seeds (nan for one seed)."""
  x = np.asarray(x, np.float64)
  if x.size < 2:
    return float(x.mean()), float("nan")
  return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))


def describe(configs, i) -> str:
  if configs.layer[i] < 0:
    return "unpruned"
  return f"layer {configs.layer[i]} {configs.module[i]} r={configs.rank[i]}"


def run_model(prof, layers: int, n_val: int, n_test: int) -> dict:
  m = profiles.trained(prof, layers=layers)
  p0 = profiles.seed_params(m.params, 0)
  configs = alg.all_configs(p0, MODULES)
  val = alg.stacked_batches(m.task, m.seeds, n_val, VAL_SEED)
  test = alg.stacked_batches(m.task, m.seeds, n_test, TEST_SEED)
  t0 = time.perf_counter()
  both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), val, test)
  err = alg.config_errors(m.params, m.model, configs, both)  # [S, C, n_val + n_test], one pass
  err_val, err_test = err[..., :n_val], err[..., n_val:]
  print(f"  L={layers}: {len(configs.layer)} configurations × {len(m.seeds)} seeds in "
        f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
  val_C, test_C = err_val.mean(-1), err_test.mean(-1)
  test_se = err_test.std(-1, ddof=1) / np.sqrt(n_test)
  k_top = max(1, layers // 2)
  D = m.model.D
  ranks_paper = alg.paper_ranks(D)
  rows = []
  variants = [(f"paper ({mod})", mod, "paper") for mod in MODULES] + \
             [(f"paper+ranks ({mod})", mod, "ranks") for mod in MODULES] + [("best-all", None, "all")]
  unpruned = configs.layer < 0
  for name, mod, kind in variants:
    per_seed = []
    for s, seed in enumerate(m.seeds):
      if kind == "all":
        mask, layer = np.ones_like(unpruned), None
      else:
        layer = alg.condition_layer(alg.module_kappa(profiles.seed_params(m.params, s), mod), k_top)
        here = (configs.layer == layer) & np.array([c == mod for c in configs.module])
        if kind == "paper":
          here &= np.isin(configs.rank, ranks_paper)
        mask = unpruned | here
      ch = alg.choose(configs, val_C[s], test_C[s], mask)
      per_seed.append({"seed": seed, "kappa_layer": layer, "chosen": describe(configs, ch.index),
                       "chosen_rank": int(configs.rank[ch.index]), "val_error": ch.val,
                       "test_unpruned": float(test_C[s, 0]), "test_pruned": ch.test,
                       "test_se_unpruned": float(test_se[s, 0]), "test_se_pruned": float(test_se[s, ch.index])})
    u = [r["test_unpruned"] for r in per_seed]
    p = [r["test_pruned"] for r in per_seed]
    rows.append({"layers": layers, "variant": name, "module": mod, "seeds": per_seed,
                 "unpruned": ci95(u), "pruned": ci95(p), "diff": ci95(np.subtract(p, u)),
                 "improved_seeds": int(np.sum(np.subtract(p, u) < 0))})
  oracle = test_C.min(1) - test_C[:, 0]  # the best configuration on the test set itself (optimistic)
  return {"layers": layers, "rows": rows, "n_configs": len(configs.layer), "top_k": k_top,
          "paper_ranks": list(ranks_paper), "test_oracle_gain": oracle.tolist(),
          "train_loss_final": m.losses[:, -1].tolist(), "seeds": list(m.seeds)}


def table(models: list[dict]) -> str:
  f = lambda mc: f"{mc[0]:.4g} ± {mc[1]:.2g}"
  g = lambda mc: f"{mc[0]:+.1e} ± {mc[1]:.1e}"
  lines = ["| L | variant | unpruned test error | pruned test error | pruned − unpruned | seeds improved | chosen (per seed) |",
           "|---|---|---|---|---|---|---|"]
  for mdl in models:
    for r in mdl["rows"]:
      chosen = "; ".join(s["chosen"] for s in r["seeds"])
      lines.append(f"| {r['layers']} | {r['variant']} | {f(r['unpruned'])} | {f(r['pruned'])} | {g(r['diff'])} | "
                   f"{r['improved_seeds']}/{len(r['seeds'])} | {chosen} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = profiles.study_parser(__doc__)
  args = ap.parse_args(argv)
  prof = profiles.profile(args.profile)
  n_val, n_test = SIZES[args.profile]
  t0 = time.perf_counter()
  models = []
  for L in (4, 8):
    try:
      models.append(run_model(prof, L, n_val, n_test))
    except RuntimeError as e:  # a zoo model that failed to train is reported, not hidden
      print(f"  L={L}: skipped: {e}", file=sys.stderr)
      models.append({"layers": L, "skipped": str(e), "rows": []})
  md = ("Algorithm 1 (docs/theory.md §8): normalised test error (squared error / d), mean ± 95% "
        f"t-interval over seeds {list(prof.seeds)}; {n_val} validation and {n_test} test tasks per seed; "
        "d = 10, N = 20; 'paper' uses the deepest of the top-L/2 layers by condition number and the "
        f"paper's rates (ranks {list(alg.paper_ranks(11))} of 11).\n\n" + table(models)
        + "".join(f"\nL = {m['layers']}: skipped ({m['skipped']})\n" for m in models if 'skipped' in m))
  out = Path(args.results)
  io.write_json(out / "algorithm1.json", {"profile": args.profile, "n_val": n_val, "n_test": n_test,
                                          "modules": list(MODULES), "paper_rates": list(prune.PAPER_RATES),
                                          "models": models, "seconds": time.perf_counter() - t0})
  io.atomic_write_bytes(out / "algorithm1.md", md.encode())
  print(md)
  print(f"wrote {out / 'algorithm1.json'} and {out / 'algorithm1.md'} ({time.perf_counter() - t0:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
