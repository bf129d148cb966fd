"""How the L = 6 training recipe of lintheory.run.profiles was chosen (not part of `make figures`).

Trains L = 6 linear transformers (d = 10, N = 20, σ = 0, 1500 Adam steps of 256 fresh tasks, init
0.1, up to 50 consecutive non-finite steps skipped) with a few recipes and reports, per seed, the
held-out mean, median and largest squared error on 4096 tasks (float64 evaluation), the skipped
steps and whether the run diverged. Seeds 0, 1 train together (vmapped, as in the zoo); seeds 2–5
train one at a time, so that one diverging seed does not stop the others.
Writes results/deep_recipes.json (about 7 minutes on 2 CPU cores).

  python experiments/deep_recipes.py --results results
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the float64 recipe, and every evaluation

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lintheory.run import io, train  # noqa: E402
from lintheory.core import tasks  # noqa: E402
from lintheory.core.model import ModelConfig, forward  # noqa: E402
from lintheory.core.tasks import TaskConfig  # noqa: E402
from lintheory.run.train import TrainConfig  # noqa: E402

TASK = TaskConfig(d=10, n_context=20)
MODEL = ModelConfig(d=10, n_layers=6, init_scale=0.1)
BASE = TrainConfig(steps=1500, batch_size=256, chunk=250, max_skipped=50)
# name → (TrainConfig changes, seed groups)
RECIPES = {
    "lr 1e-3, warm-up 100, clip 1, float32 (the L > 4 recipe before)":
        (dict(lr=1e-3, warmup=100, clip_norm=1.0), [(0, 1)]),
    "lr 3e-3, warm-up 300, clip 1, float32": (dict(lr=3e-3, warmup=300, clip_norm=1.0), [(0, 1)]),
    "lr 5e-3, warm-up 500, clip 0.1, float32":
        (dict(lr=5e-3, warmup=500, clip_norm=0.1), [(0, 1), (2,), (3,), (4,), (5,)]),
    "lr 5e-3, warm-up 500, clip 0.1, float64 (zoo)":
        (dict(lr=5e-3, warmup=500, clip_norm=0.1, dtype="float64"), [(0, 1), (2,), (3,), (4,), (5,)]),
}
EVAL_SEED = 31_415


def evaluate(params, batch) -> list[dict]:
  fwd = jax.jit(forward, static_argnums=2)
  out = []
  for i in range(jax.tree_util.tree_leaves(params)[0].shape[0]):
    p = {k: jnp.asarray(v[i], jnp.float64) for k, v in params.items()}
    e = np.asarray((fwd(p, tasks.batch_tokens(batch), MODEL)[0] - batch.y_q) ** 2)
    out.append({"mean": float(e.mean()), "median": float(np.median(e)), "max": float(e.max())})
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--results", default="results", help="directory for deep_recipes.json")
  args = ap.parse_args(argv)
  batch = tasks.sample(jax.random.key(EVAL_SEED), TASK, 4096, dtype=jnp.float64)
  rows, t0 = [], time.perf_counter()
  for name, (changes, groups) in RECIPES.items():
    cfg = dataclasses.replace(BASE, **changes)
    for seeds in groups:
      r = train.fit(TASK, MODEL, cfg, seeds, on_chunk=train.print_progress(cfg.steps, f"{name} {seeds}: "))
      for s, ev, sk in zip(seeds, evaluate(r.params, batch), r.skipped):
        rows.append({"recipe": name, "seed": s, "trained_with": list(seeds), "diverged": r.diverged,
                     "steps_done": int(r.state.step), "skipped": int(sk), "seconds": r.seconds, **ev})
        print(f"{name}, seed {s}: mean {ev['mean']:.3g}, median {ev['median']:.3g}, max {ev['max']:.3g}, "
              f"skipped {int(sk)}{', DIVERGED' if r.diverged else ''}", flush=True)
  out = {"study": "deep_recipes", "task": dataclasses.asdict(TASK), "model": dataclasses.asdict(MODEL),
         "base": dataclasses.asdict(BASE), "eval_tasks": 4096, "rows": rows, "seconds": time.perf_counter() - t0}
  path = Path(args.results) / "deep_recipes.json"
  io.write_json(path, out)
  print(f"wrote {path} ({out['seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
