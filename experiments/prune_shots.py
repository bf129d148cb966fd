"""Study d: when does SVD pruning improve ICL error? Shots, training length and label noise.

Model: the zoo's L = 4 linear transformer (d = 10, trained with N = 20, one model per seed).
Every configuration prunes one layer's module (attn; full: attn, q, k, v) to a kept rank 0..10. Per setting and
seed, with a validation task set and a disjoint test task set:
  held-out gain = test error of the configuration best on validation − unpruned test error
                  (Algorithm 1's extension; what a user would get),
  oracle gain   = min over configurations of the test error − unpruned (selection on the test
                  set itself: optimistic, ≤ 0 by construction; shown for reference only).
Negative = pruning helps. Settings: test-time shots M = N/4 … 2N; training steps (two shorter
runs trained here, extra cost); label noise σ at test time, and a model trained with σ = 1.

  python experiments/prune_shots.py --profile default --results results
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.run import algorithm1 as alg, io, profiles
from lintheory.core.tasks import TaskConfig

VAL_SEED, TEST_SEED = 8_001, 8_002
SETTINGS = {
    "default": dict(modules=("attn",), shots=(5, 10, 20, 40), steps=(150, 500), noise=(1.0,),
                    noise_train_steps=500, n_val=256, n_test=512),
    "full": dict(modules=("attn", "q", "k", "v"), shots=(5, 10, 15, 20, 30, 40), steps=(300, 1000, 5000),
                 noise=(0.25, 0.5, 1.0), noise_train_steps=20_000, n_val=4096, n_test=16_384),
}


def gains(m: profiles.Trained, task: TaskConfig, st: dict, n_context: int | None = None) -> dict:
  """Unpruned error and the held-out / oracle pruning gains per seed on `task` with M shots."""
  p0 = profiles.seed_params(m.params, 0)
  configs = alg.all_configs(p0, st["modules"])
  n_val, n_test = st["n_val"], st["n_test"]
  val = alg.stacked_batches(task, m.seeds, n_val, VAL_SEED, n_context)
  test = alg.stacked_batches(task, m.seeds, n_test, TEST_SEED, n_context)
  both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), val, test)
  err = alg.config_errors(m.params, m.model, configs, both)
  val_C, err_test = err[..., :n_val].mean(-1), err[..., n_val:]
  test_C = err_test.mean(-1)
  out = {"unpruned": [], "heldout_gain": [], "heldout_gain_se": [], "oracle_gain": [], "chosen": []}
  for s in range(len(m.seeds)):
    ch = alg.choose(configs, val_C[s], test_C[s], np.ones(len(configs.layer), bool))
    diff = err_test[s, ch.index] - err_test[s, 0]  # paired over the same test tasks
    out["unpruned"].append(float(test_C[s, 0]))
    out["heldout_gain"].append(float(diff.mean()))
    out["heldout_gain_se"].append(float(diff.std(ddof=1) / np.sqrt(diff.size)))
    out["oracle_gain"].append(float(test_C[s].min() - test_C[s, 0]))
    out["chosen"].append("unpruned" if configs.layer[ch.index] < 0 else
                         f"layer {configs.layer[ch.index]} {configs.module[ch.index]} r={configs.rank[ch.index]}")
  for k in ("unpruned", "heldout_gain", "oracle_gain"):
    v = np.asarray(out[k])
    out[k + "_mean"] = float(v.mean())
    out[k + "_se_seeds"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
  return out


def line(name: str, g: dict) -> str:
  return (f"{name:28s} unpruned {g['unpruned_mean']:.4f}  held-out gain {g['heldout_gain_mean']:+.4f} "
          f"± {g['heldout_gain_se_seeds']:.4f}  oracle gain {g['oracle_gain_mean']:+.4f}  chosen {g['chosen']}")


def main(argv=None) -> int:
  ap = profiles.study_parser(__doc__)
  args = ap.parse_args(argv)
  prof, st = profiles.profile(args.profile), SETTINGS[args.profile]
  t0 = time.perf_counter()
  base = profiles.trained(prof, layers=4)
  N = base.task.n_context
  res = {"profile": args.profile, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in st.items()},
         "seeds": list(base.seeds), "N_train": N, "base_steps": base.train.steps}
  res["shots"] = []
  for M in st["shots"]:
    g = gains(base, base.task, st, M)
    res["shots"].append({"M": M, **g})
    print(line(f"shots M={M}", g))
  res["steps"] = []
  train_seconds = {}
  for n in tuple(st["steps"]) + (base.train.steps,):
    t1 = time.perf_counter()
    m = profiles.trained(prof, layers=4, steps=n) if n != base.train.steps else base
    train_seconds[n] = time.perf_counter() - t1
    g = gains(m, m.task, st)
    res["steps"].append({"steps": n, "train_loss_final": m.losses[:, -1].tolist(), **g})
    print(line(f"train steps {n}", g))
  res["noise"] = []
  for sigma in st["noise"]:
    g = gains(base, TaskConfig(d=base.task.d, n_context=N, noise_std=sigma), st)
    res["noise"].append({"trained_sigma": 0.0, "test_sigma": sigma, "train_steps": base.train.steps, **g})
    print(line(f"σ_test={sigma} (trained σ=0)", g))
  n = st["noise_train_steps"]
  t1 = time.perf_counter()
  noisy = profiles.trained(prof, layers=4, noise_std=1.0, steps=n)
  train_seconds[f"sigma=1,steps={n}"] = time.perf_counter() - t1
  clean = profiles.trained(prof, layers=4, steps=n)
  for m, ts in ((noisy, 1.0), (clean, 0.0)):
    g = gains(m, TaskConfig(d=base.task.d, n_context=N, noise_std=1.0), st)
    res["noise"].append({"trained_sigma": ts, "test_sigma": 1.0, "train_steps": n, **g})
    print(line(f"σ_test=1 (trained σ={ts}, {n} steps)", g))
  res["train_seconds_extra_models"] = train_seconds
  res["seconds"] = time.perf_counter() - t0
  out = Path(args.results) / "prune_shots.json"
  io.write_json(out, res)
  print(f"wrote {out} ({res['seconds']:.1f} s; training of extra models {train_seconds})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
