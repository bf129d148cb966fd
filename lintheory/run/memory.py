"""What a command will need in memory, estimated before any work, against what the machine has.

The estimates are rough upper bounds (a few copies of every tensor a step or an evaluation holds at
once): a command refuses an input that cannot fit (check) instead of failing inside XLA.
"""

from __future__ import annotations

import math
import os

import jax

from lintheory.core.model import param_shapes


def budget() -> int:
  """Bytes one command may plan to use: the accelerator's limit, or the memory available on a CPU."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # backends without memory_stats
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def params_bytes(model, itemsize: int) -> int:
  return sum(math.prod(s) for s in param_shapes(model).values()) * itemsize


def train_bytes(task, model, batch_size: int, itemsize: int) -> int:
  """About the peak of one training step: tokens through every layer (and back), the optimiser."""
  T, D, L, H = task.n_context + 1, task.d + 1, model.n_layers, model.n_heads
  acts = batch_size * T * D * (L + 1) * (4 + 2 * H) + batch_size * H * D * D * L * 2
  if model.mlp is not None:
    acts += batch_size * T * model.F * L * 2
  return 3 * acts * itemsize + 6 * params_bytes(model, itemsize)


def eval_bytes(task, model, n_tasks: int, itemsize: int, factor: int = 3) -> int:
  """About the peak of evaluating n_tasks at once (states of every layer, ridge solves)."""
  T, D, L, H = task.n_context + 1, task.d + 1, model.n_layers, model.n_heads
  per_task = T * D * (L + 2) * (1 + H) + D * D * (L + 2) + T * (model.F if model.mlp else 0) * L
  return factor * n_tasks * per_task * itemsize + 2 * params_bytes(model, itemsize)


def cov_bytes(d: int) -> int:
  """The task's d×d covariances (built as soon as a TaskConfig exists), with room to spare."""
  return 4 * 8 * (d + 1) ** 2


def check(flag: str, value: int, lo: int, need, available: int | None = None) -> None:
  """Refuse `flag`=value when need(value) bytes exceed the budget, naming the range that fits."""
  available = budget() if available is None else available
  if need(value) <= available:
    return
  hi = lo
  if need(lo) <= available:
    top = value
    while hi < top:  # the largest value that fits, by bisection
      mid = (hi + top + 1) // 2
      hi, top = (mid, top) if need(mid) <= available else (hi, mid - 1)
    allowed = f"allowed range with the other arguments as given: [{lo}, {hi}]"
  else:
    allowed = ("no value fits with the other arguments as given (reduce --d, --n-context, --layers, --heads "
               "or --mlp-hidden)")
  raise ValueError(f"{flag} {value} needs about {need(value) / 2**30:.3g} GiB of memory, more than the "
                   f"{available / 2**30:.3g} GiB available; {allowed}")
