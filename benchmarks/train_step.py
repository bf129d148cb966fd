"""Seconds per training step: the scanned training loop against a naive per-step jitted loop.

Config (issue 2 item 9): L = 3 layers, d = 5, N = 20, batch 2048, float32, Adam + clipping.
  * scanned: lintheory.run.train.make_chunk, the real training loop (lax.scan over a chunk of steps,
    fresh tasks sampled inside every step);
  * naive: jax.jit of one step (sampling inside), called from a Python loop;
  * lower bound: analytic FLOPs of forward + backward per step / a measured large-matmul rate;
  * sampling share: a scan of sampling alone vs a scan of compute alone (fixed batch).

  python benchmarks/train_step.py [--steps 50] [--repeats 3]
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

from lintheory.core import tasks
from lintheory.run import train
from lintheory.core.model import ModelConfig, init_params
from lintheory.core.tasks import TaskConfig

TASK = TaskConfig(d=5, n_context=20)
MODEL = ModelConfig(d=5, n_layers=3)
BATCH = 2048


def best_of(fn, repeats: int) -> float:
  """Best wall time of fn() (which must block until its result is ready) over `repeats` runs."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def flops_per_step(d: int, N: int, L: int, B: int) -> dict[str, float]:
  """Multiply-adds ×2 of the linear-attention forward pass; backward ≈ 2× forward (two matmuls
  per forward matmul: one for the inputs' gradient, one for the weights')."""
  D, T = d + 1, N + 1
  per_layer = 2 * D * D * (T + N + N)  # Q for all T tokens; K, V for the N demonstrations
  per_layer += 2 * N * D * D  # KᵀV, [D, N] × [N, D]
  per_layer += 2 * T * D * D  # Q (KᵀV), [T, D] × [D, D]
  forward = per_layer * L * B
  return {"forward": forward, "step": 3 * forward}


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
  """Measured float32 FLOP/s of one large n×n matmul (the machine's practical peak)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(lambda a, b: a @ b)
  mm(a, b).block_until_ready()
  return 2 * n**3 / best_of(lambda: mm(a, b).block_until_ready(), repeats)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=50, help="steps per timed run")
  ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
  args = ap.parse_args(argv)
  if args.steps < 1 or args.repeats < 1:
    ap.error("--steps and --repeats must be >= 1")
  K = args.steps
  tcfg = train.TrainConfig(steps=10 * K, batch_size=BATCH, chunk=K, dtype="float32")
  state = train.init_state(MODEL, tcfg, (0,))
  key = jnp.stack([jax.random.key(1)])

  # 1. the real scanned loop (one seed, vmapped as in train.fit)
  chunk = train.make_chunk(TASK, MODEL, tcfg, K)
  jax.block_until_ready(chunk(state.params, state.opt_state, key, 0))
  t_scan = best_of(lambda: jax.block_until_ready(chunk(state.params, state.opt_state, key, 0)), args.repeats) / K

  # 2. naive: one jitted step (sampling inside), a Python loop
  tx = train.optimizer(tcfg)
  params = train.seed_params(state.params, 0)
  opt_state = tx.init(params)

  @jax.jit
  def naive_step(params, opt_state, key, i):
    batch = tasks.sample(jax.random.fold_in(key, i), TASK, BATCH)
    loss, grads = jax.value_and_grad(train.mse)(params, batch, MODEL)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def naive_loop():
    p, o = params, opt_state
    for i in range(K):
      p, o, loss = naive_step(p, o, key[0], i)
    jax.block_until_ready(loss)

  naive_loop()
  t_naive = best_of(naive_loop, args.repeats) / K

  # 3. sampling alone vs compute alone, each scanned K times
  @jax.jit
  def sample_only(key):
    def body(acc, i):
      b = tasks.sample(jax.random.fold_in(key, i), TASK, BATCH)
      return acc + b.X[0, 0, 0] + b.y[-1, -1] + b.x_q[0, 0] + b.y_q[-1], None  # keep every output alive
    return jax.lax.scan(body, jnp.float32(0), jnp.arange(K))[0]

  fixed = tasks.sample(jax.random.key(2), TASK, BATCH)

  @jax.jit
  def compute_only(params, opt_state):
    def body(carry, _):
      p, o = carry
      loss, grads = jax.value_and_grad(train.mse)(p, fixed, MODEL)
      updates, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), loss
    return jax.lax.scan(body, (params, opt_state), None, length=K)[1]

  # Not scanned: XLA would hoist a loop-invariant forward pass out of the scan.
  forward_only = jax.jit(train.mse, static_argnums=2)

  def forward_loop():
    for _ in range(K):
      loss = forward_only(params, fixed, MODEL)
    loss.block_until_ready()

  sample_only(key[0]).block_until_ready()
  t_sample = best_of(lambda: sample_only(key[0]).block_until_ready(), args.repeats) / K
  compute_only(params, opt_state).block_until_ready()
  t_compute = best_of(lambda: compute_only(params, opt_state).block_until_ready(), args.repeats) / K
  forward_loop()
  t_forward = best_of(forward_loop, args.repeats) / K

  # 4. the arithmetic lower bound
  rate = matmul_rate()
  flops = flops_per_step(TASK.d, TASK.n_context, MODEL.n_layers, BATCH)
  t_bound = flops["step"] / rate

  print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs visible, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; L={MODEL.n_layers} d={TASK.d} "
        f"N={TASK.n_context} batch={BATCH} float32, {K} steps per timing, best of {args.repeats}")
  print(f"matmul rate (2048×2048 float32): {rate / 1e9:.1f} GFLOP/s; FLOPs per step (fwd+bwd): "
        f"{flops['step'] / 1e6:.1f} M")
  rows = [
      ("scanned train loop (train.make_chunk)", t_scan, ""),
      ("naive per-step jit, Python loop", t_naive, f"{t_naive / t_scan:.2f}× the scanned loop"),
      ("sampling alone", t_sample, f"{t_sample / t_compute:.2f}× compute"),
      ("compute alone (fwd+bwd+Adam)", t_compute, f"{t_compute / t_bound:.1f}× the bound"),
      ("forward alone (loss only)", t_forward, f"{t_forward / (flops['forward'] / rate):.1f}× its bound"),
      ("arithmetic lower bound (FLOPs / matmul rate)", t_bound, ""),
  ]
  print(f"\n| {'what':<46} | {'ms / step':>9} | note")
  print(f"|{'-' * 48}|{'-' * 11}|------")
  for name, t, note in rows:
    print(f"| {name:<46} | {1e3 * t:9.3f} | {note}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
