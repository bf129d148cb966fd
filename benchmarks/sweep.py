"""Same-run speed ratios: the pruning sweep vs a per-configuration loop, and Algorithm 1's evaluation.

The loop prunes with prune.prune and evaluates each configuration with one jitted function (the
same metrics); the sweep shares the unpruned model's state at the pruned layer across the
configurations of that layer and evaluates blocks of them in one jitted call. Both run the same
configurations on the same tasks in one process:
  cold: compilation included (jax.clear_caches() and the sweep's function caches cleared before each
        timing; the persistent compilation cache is off unless --compile-cache is given),
  warm: compiled functions reused.
Every figure is the median of --repeats timings, wall and CPU seconds (CPU is steadier on a loaded machine). Algorithm 1's evaluation (config_errors on
n_val + n_test tasks) is timed before (every configuration re-runs all layers, 32 configurations
vmapped, as the project did) and after (run.sweep_eval.task_errors).
Targets: sweep ≥ 5× the loop warm and ≥ 1× cold.
Run `flock /tmp/lintheory-bench.lock python benchmarks/sweep.py [--n-eval 1024] [--layers 4] [--seeds 3]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import precision, prune, tasks
from lintheory.core.model import ModelConfig, block, init_params, predict
from lintheory.core.tasks import TaskConfig
from lintheory.run import algorithm1 as alg, compile_cache, runtime, sweep, sweep_eval


def clear_compiled() -> None:
  """Forget every compiled function, so the next call pays compilation again."""
  jax.clear_caches()
  for f in (sweep_eval.make_block_fn, sweep_eval._errors_fn, sweep_eval._base_fn, sweep._sampler, sweep._loop_metrics_fn):
    f.cache_clear()


def median_time(fn, repeats: int, cold: bool) -> tuple[float, float, object]:
  """Median wall and CPU seconds of repeats calls (CPU time is steadier on a shared machine)."""
  ts, cs, out = [], [], None
  for _ in range(repeats):
    if cold:
      clear_compiled()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(out.rows if hasattr(out, "rows") else out))
    ts.append(time.perf_counter() - t0)
    cs.append(time.process_time() - c0)
  return statistics.median(ts), statistics.median(cs), out


def before_config_errors(params_S, model_cfg, configs, batch_S, block_size=32):
  """Algorithm 1's evaluation as it was: every configuration runs all layers, vmapped 32-wide."""
  def one(params, svd, keep, Z, y_q):
    Z, _ = jax.lax.scan(lambda Z, p: (block(p, Z, model_cfg), None), Z, prune.masked_params(params, svd, keep))
    return tasks.normalised_error((predict(Z) - y_q) ** 2, model_cfg.d)

  fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, None, 0, None, None)), in_axes=(0, 0, None, 0, 0)))
  names = sorted(configs.keep)
  svd = sweep_eval.svd_of(params_S, names)
  Z = jax.vmap(tasks.batch_tokens)(batch_S)
  C = len(configs.layer)
  out = []
  for start in range(0, C, block_size):
    idx = np.arange(start, start + block_size).clip(max=C - 1)
    keep = {n: jnp.asarray(configs.keep[n][idx]) for n in names}
    out.append(np.asarray(fn(params_S, svd, keep, Z, batch_S.y_q), np.float64)[:, : min(block_size, C - start)])
  return np.concatenate(out, axis=1)


def main(argv=None) -> int:
  runtime.configure()  # before JAX's first computation
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
  ap.add_argument("--repeats", type=int, default=3, help="timings per figure (the median is reported)")
  ap.add_argument("--alg1-tasks", type=int, default=1280, help="validation + test tasks per seed for Algorithm 1")
  ap.add_argument("--compile-cache", default=None, help="enable the persistent compilation cache in this directory")
  args = ap.parse_args(argv)
  if args.repeats < 1:
    print(f"--repeats must be >= 1, got {args.repeats}", file=sys.stderr)
    return 2
  if args.compile_cache:
    compile_cache.enable(args.compile_cache)
  model = ModelConfig(d=args.d, n_layers=args.layers, init_scale=0.3)
  task = TaskConfig(d=args.d, n_context=args.n_context)
  seeds = tuple(range(args.seeds))
  # Random weights: the timing does not depend on training; every rank gives a distinct model.
  params_S = jax.vmap(lambda k: init_params(k, model))(jnp.stack([jax.random.key(s) for s in seeds]))
  cfg = sweep.SweepConfig(modules=("attn", "q", "k", "v"), rates=(), ranks=tuple(range(model.D)),
                          n_eval=args.n_eval, n_analysis=args.n_analysis, block=args.block, lanes=args.lanes,
                          bounds=args.bounds)
  p0 = jax.tree_util.tree_map(lambda a: a[0], params_S)
  n = len(sweep.configurations(cfg, p0)) * len(seeds)
  print(f"{n} configurations × seeds (L={args.layers}, d={args.d}, N={args.n_context}, modules attn/q/k/v, "
        f"ranks 0..{model.D - 1}, {args.n_eval} held-out tasks each, bounds={args.bounds}), "
        f"{jax.devices()[0].platform}, median of {args.repeats}, compilation cache "
        f"{args.compile_cache or 'off'}", flush=True)
  vec_fn = lambda: sweep.run(params_S, seeds, model, task, cfg, progress=False)
  loop_fn = lambda: sweep.run_loop(params_S, seeds, model, task, cfg)
  vec = loop = None
  for rep in ("cold", "warm"):
    tv, cv, vec = median_time(vec_fn, args.repeats, rep == "cold")
    tl, cl, loop = median_time(loop_fn, args.repeats, rep == "cold")
    print(f"{rep}: sweep {tv:7.2f} s wall, {cv:7.2f} s CPU ({vec.evaluated} distinct); "
          f"loop {tl:7.2f} s wall, {cl:7.2f} s CPU; "
          f"sweep/loop speed-up {tl / tv:.2f}x wall, {cl / cv:.2f}x CPU", flush=True)
  diff = max((abs(a["icl_error"] - b["icl_error"]) / max(abs(b["icl_error"]), 1e-12)
              for a, b in zip(vec.rows, loop.rows) if np.isfinite([a["icl_error"], b["icl_error"]]).all()), default=0.0)
  print(f"largest relative ICL-error difference sweep vs loop: {diff:.1e} ({params_S['W_Q'].dtype}, finite rows)")

  configs = alg.all_configs(p0, cfg.modules)
  batch_S = alg.stacked_batches(task, seeds, args.alg1_tasks, 1)
  before = lambda: before_config_errors(params_S, model, configs, batch_S)
  after = lambda: alg.config_errors(params_S, model, configs, batch_S)
  for rep in ("cold", "warm"):
    tb, cb, eb = median_time(before, args.repeats, rep == "cold")
    ta, ca, ea = median_time(after, args.repeats, rep == "cold")
    print(f"Algorithm 1 evaluation ({len(configs.layer)} configurations × {len(seeds)} seeds × "
          f"{args.alg1_tasks} tasks), {rep}: before {tb:6.2f} s wall, {cb:6.2f} s CPU; "
          f"after {ta:6.2f} s wall, {ca:6.2f} s CPU; speed-up {tb / ta:.2f}x wall, {cb / ca:.2f}x CPU", flush=True)
  # Agreement in float64: these random weights blow up on many tasks, where float32 round-off of
  # values near 1e38 says nothing about the method.
  with precision.x64():
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params_S)
    b64 = alg.stacked_batches(task, seeds, args.alg1_tasks, 1, dtype=jnp.float64)
    eb, ea = before_config_errors(p64, model, configs, b64), alg.config_errors(p64, model, configs, b64)
  ok = np.isfinite(eb) & np.isfinite(ea)
  rel = np.max(np.abs(ea - eb)[ok] / np.maximum(np.abs(eb)[ok], 1e-300))
  print(f"largest relative per-task error difference before vs after, float64: {rel:.1e} "
        f"(finite in both: {ok.mean():.1%}; non-finite in the same places: {bool(np.all(ok == np.isfinite(eb)))})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
