"""Configurations evaluated per second: the vectorised pruning sweep vs a straightforward loop.

The loop prunes with prune.prune and evaluates each configuration with one jitted function (the
same metrics); the sweep evaluates blocks of configurations in one jitted, vmapped call.
Both run the same configurations on the same tasks in one process, twice: cold (compilation
included) and warm (compiled functions reused).
Run `python benchmarks/sweep.py [--n-eval 1024] [--layers 4] [--seeds 3]`.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.run import sweep
from lintheory.core.model import ModelConfig, init_params
from lintheory.core.tasks import TaskConfig


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--d", type=int, default=10)
  ap.add_argument("--n-context", type=int, default=20)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--n-eval", type=int, default=1024, help="held-out tasks per configuration")
  ap.add_argument("--n-analysis", type=int, default=64, help="tasks for ŵ_t and the norms")
  ap.add_argument("--block", type=int, default=32)
  ap.add_argument("--lanes", type=int, default=0, help="configurations vmapped together (0 = auto: 1 on CPU)")
  ap.add_argument("--bounds", action="store_true", help="include the bound columns (lintheory.core.bounds)")
  args = ap.parse_args(argv)
  model = ModelConfig(d=args.d, n_layers=args.layers, init_scale=0.3)
  task = TaskConfig(d=args.d, n_context=args.n_context)
  seeds = tuple(range(args.seeds))
  # Random weights: the timing does not depend on training; every rank gives a distinct model.
  params_S = jax.vmap(lambda k: init_params(k, model))(jnp.stack([jax.random.key(s) for s in seeds]))
  cfg = sweep.SweepConfig(modules=("attn", "q", "k", "v"), rates=(), ranks=tuple(range(model.D)),
                          n_eval=args.n_eval, n_analysis=args.n_analysis, block=args.block, lanes=args.lanes,
                          bounds=args.bounds)
  n = len(sweep.configurations(cfg, jax.tree_util.tree_map(lambda a: a[0], params_S))) * len(seeds)
  print(f"{n} configurations × seeds (L={args.layers}, d={args.d}, N={args.n_context}, modules attn/q/k/v, "
        f"ranks 0..{model.D - 1}, {args.n_eval} held-out tasks each, bounds={args.bounds}), "
        f"{jax.devices()[0].platform}", flush=True)
  times = {}
  for rep in ("cold", "warm"):  # cold: compilation included; warm: the same call again
    t0 = time.perf_counter()
    vec = sweep.run(params_S, seeds, model, task, cfg, progress=False)
    times["vectorised", rep] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = sweep.run_loop(params_S, seeds, model, task, cfg)
    times["loop", rep] = time.perf_counter() - t0
  diff = max(abs(a["icl_error"] - b["icl_error"]) / max(abs(b["icl_error"]), 1e-12)
             for a, b in zip(vec.rows, loop.rows))
  for rep in ("cold", "warm"):
    tv, tl = times["vectorised", rep], times["loop", rep]
    print(f"{rep}: vectorised {tv:7.2f} s = {n / tv:7.1f} configurations/s ({vec.evaluated} distinct); "
          f"loop {tl:7.2f} s = {n / tl:7.1f} configurations/s;  speed-up {tl / tv:.1f}x")
  print(f"largest relative ICL-error difference between the two: {diff:.1e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
