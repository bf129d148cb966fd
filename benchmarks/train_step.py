"""Milliseconds per training step: the reference forward against the Gram-matrix forward (core/fast.py).

Every row times train.make_chunk, the real training loop (the NNX model and optimiser in one jitted
lax.scan over a chunk of steps, fresh tasks sampled inside every step, Adam + clipping, one seed
vmapped as in train.fit), as the MEDIAN of --repeats timings, the paths interleaved:
  * plain: the loop before the NNX model (a plain parameter dict, optax directly) on the reference
    forward (model.forward, every token through every layer): the baseline of the ratios;
  * query-only: make_chunk(forward_kind="query"), the reference layers with the last one run for the query
    token only (model.forward_query), which softmax and MLP models train with;
  * fast: make_chunk(), the Gram-matrix forward train.fit and `lintheory train` use for linear
    attention (C built from the tasks' X, y; layers unrolled; the last layer reads out only the
    query's y-slot);
  * bound: analytic FLOPs of the reference forward + backward / a measured large-matmul rate
    (linear attention).
Settings: the benchmark's (L=3, d=5, N=20, batch 2048) and the studies' (L=4, d=10, N=20,
batch 256 and 512) in float32, and the studies' in float64 with the tail recipe their L >= 3 models
train with; then the softmax and ReLU-MLP models of the default profile (d=5, batch 256, 5 seeds).

  flock /tmp/lintheory-bench.lock python benchmarks/train_step.py [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lintheory.core import precision
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run import runtime, train

SETTINGS = [  # (L, d, N, batch, dtype, tail_frac, attention, mlp, seeds)
    (3, 5, 20, 2048, "float32", 0.0, "linear", None, 1),  # the benchmark's setting
    (4, 10, 20, 256, "float32", 0.0, "linear", None, 1),  # the studies' model and batch (default profile)
    (4, 10, 20, 512, "float32", 0.0, "linear", None, 1),
    (4, 10, 20, 256, "float64", 1 / 8, "linear", None, 1),  # the recipe for L >= 3 (profiles.RECIPES)
    (4, 5, 20, 256, "float64", 1 / 8, "softmax", None, 5),  # the default profile's general-path models
    (4, 5, 20, 256, "float64", 1 / 8, "linear", "relu", 5),
    (2, 5, 20, 256, "float32", 0.0, "linear", "relu", 5),
]
PLAIN = "plain: optax loop, model.forward"


def medians(fns: dict, repeats: int) -> dict[str, float]:
  """Median wall time of each fn() (which must block), the fns interleaved so load drifts hit all."""
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}


def flops_per_step(d: int, N: int, L: int, B: int) -> dict[str, float]:
  """Multiply-adds ×2 of the reference linear-attention forward pass; backward ≈ 2× forward (two
  matmuls per forward matmul: one for the inputs' gradient, one for the weights')."""
  D, T = d + 1, N + 1
  per_layer = 2 * D * D * (T + N + N)  # Q for all T tokens; K, V for the N demonstrations
  per_layer += 2 * N * D * D  # KᵀV, [D, N] × [N, D]
  per_layer += 2 * T * D * D  # Q (KᵀV), [T, D] × [D, D]
  forward = per_layer * L * B
  return {"forward": forward, "step": 3 * forward}


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
  """Measured float32 FLOP/s of one large n×n matmul (median; the machine's practical peak)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(lambda a, b: a @ b)
  mm(a, b).block_until_ready()
  return 2 * n**3 / medians({"mm": lambda: mm(a, b).block_until_ready()}, repeats)["mm"]


def optax_chunk(task_cfg: TaskConfig, model_cfg: ModelConfig, train_cfg: train.TrainConfig, n_steps: int):
  """The training loop as it was before the NNX model: parameter dict + optax, same signature."""
  train_cfg = train.resolve(train_cfg, model_cfg)
  tx = train.optimizer(train_cfg)

  def one_seed(params, opt_state, key, pool_key, step0):
    def step(carry, i):
      params, opt_state = carry
      batch = train.draw(jax.random.fold_in(key, step0 + i), task_cfg, train_cfg, None)
      loss, grads = jax.value_and_grad(train.mse)(params, batch, model_cfg)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jnp.arange(n_steps))
    return params, opt_state, losses

  return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, 0, None)))


def time_setting(L: int, d: int, N: int, B: int, dtype: str, tail_frac: float, attention: str, mlp, S: int,
                 K: int, repeats: int, rate: float) -> list[tuple]:
  with precision.for_dtype(dtype):
    return _time_setting(L, d, N, B, dtype, tail_frac, attention, mlp, S, K, repeats, rate)


def _time_setting(L, d, N, B, dtype, tail_frac, attention, mlp, S, K, repeats, rate) -> list[tuple]:
  task, model = TaskConfig(d=d, n_context=N), ModelConfig(d=d, n_layers=L, attention=attention, mlp=mlp)
  tcfg = train.TrainConfig(steps=10 * K, batch_size=B, chunk=K, dtype=dtype, tail_frac=tail_frac,
                           tail_scale=1.4 if tail_frac else 1.0)
  seeds = tuple(range(S))
  state = train.init_state(model, tcfg, seeds)
  keys, pool_keys = train.seed_keys(seeds, 1), train.seed_keys(seeds, 2)
  plain = optax_chunk(task, model, tcfg, K)
  opt_state = jax.vmap(train.optimizer(train.resolve(tcfg, model)).init)(state.params)
  chunks = {"query-only: NNX loop, model.forward_query": train.make_chunk(task, model, tcfg, K, forward_kind="query")}
  if model.is_linear:
    chunks["fast: NNX loop, core/fast.py"] = train.make_chunk(task, model, tcfg, K)
  run = {PLAIN: lambda: jax.block_until_ready(plain(state.params, opt_state, keys, pool_keys, 0)),
         **{name: (lambda c=c: jax.block_until_ready(c(state, keys, pool_keys))) for name, c in chunks.items()}}
  for fn in run.values():
    fn()  # compile
  t = {name: v / K for name, v in medians(run, repeats).items()}
  t_bound = flops_per_step(d, N, L, B)["step"] / rate
  where = f"L={L} d={d} N={N} B={B} {dtype}" + ("" if model.is_linear else f" {attention}{'+' + mlp if mlp else ''}") \
      + (f" S={S}" if S > 1 else "")
  rows = [(where, name, v, f"{t[PLAIN] / v:.2f}×", f"{v / t_bound:.1f}×" if model.is_linear else "")
          for name, v in t.items()]
  if model.is_linear:
    rows.append((where, "bound: plain FLOPs / matmul rate", t_bound, "", ""))
  return rows


def main(argv=None) -> int:
  runtime.configure()  # before JAX's first computation
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
  ap.add_argument("--repeats", type=int, default=5, help="timed runs per path (>= 5); the median is reported")
  args = ap.parse_args(argv)
  if args.steps < 1 or args.repeats < 5:
    ap.error("--steps must be >= 1 and --repeats >= 5")
  rate = matmul_rate()
  print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs visible, load "
        f"average {os.getloadavg()[0]:.1f}, JAX {jax.__version__} on {jax.devices()[0].platform}; "
        f"{args.steps} steps per timing, median of {args.repeats}, paths interleaved")
  print(f"matmul rate (2048×2048 float32): {rate / 1e9:.1f} GFLOP/s")
  print(f"\n| {'setting':<44} | {'path':<42} | {'ms / step':>9} | {'plain / this':>12} | {'this / bound':>12}")
  print(f"|{'-' * 46}|{'-' * 44}|{'-' * 11}|{'-' * 14}|{'-' * 14}")
  for setting in SETTINGS:
    for where, name, t, speedup, bound in time_setting(*setting, args.steps, args.repeats, rate):
      print(f"| {where:<44} | {name:<42} | {1e3 * t:9.3f} | {speedup:>12} | {bound:>12}", flush=True)
  print(f"\nload average after: {os.getloadavg()[0]:.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
