"""Seeds split over processes (hosts) with jax.distributed; process 0 writes one merged table.

Each process computes a contiguous block of the seeds (and may split its block over its own
devices with lintheory.run.sharding); the rows travel to every process over JAX's collectives
(gloo on CPU, NCCL on GPU), so the hosts need no shared file system. Launch, one line per process
(docs/scale-out.md):

  python -m lintheory.run.distributed --coordinator HOST0:PORT --num-processes P --process-id I \\
      --seeds 0-7 --out results/train.csv -- lintheory.run.distributed:train_rows steps=3000

or set LINTHEORY_COORDINATOR, LINTHEORY_NUM_PROCESSES and LINTHEORY_PROCESS_ID and call
`run_sharded(fn, seeds)` from a script. Without them a run is one process, all seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from lintheory.run import io, runtime, tables

ENV = ("LINTHEORY_COORDINATOR", "LINTHEORY_NUM_PROCESSES", "LINTHEORY_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class Cluster:
  coordinator: str  # "host:port" of process 0 ("" for a single process)
  num_processes: int  # processes taking part, one or more per host
  process_id: int  # this process, in [0, num_processes)

  def __post_init__(self):
    for name, lo in (("num_processes", 1), ("process_id", 0)):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if self.process_id >= self.num_processes:
      raise ValueError(f"process_id must be in [0, {self.num_processes - 1}], got {self.process_id}")
    if self.num_processes > 1 and not _is_address(self.coordinator):
      raise ValueError(f"coordinator must be 'host:port' when num_processes > 1, got {self.coordinator!r}")


SINGLE = Cluster("", 1, 0)


def _is_address(s: str) -> bool:
  host, _, port = s.rpartition(":")
  return bool(host) and port.isdigit() and 0 < int(port) < 65536


def from_env(environ=None) -> Cluster:
  """The cluster the LINTHEORY_* variables describe; one process when none is set."""
  environ = os.environ if environ is None else environ
  given = [k for k in ENV if environ.get(k)]
  if not given:
    return SINGLE
  if len(given) < len(ENV):
    raise ValueError(f"set all of {', '.join(ENV)} or none (missing {sorted(set(ENV) - set(given))})")
  try:
    n, i = int(environ[ENV[1]]), int(environ[ENV[2]])
  except ValueError:
    raise ValueError(f"{ENV[1]} and {ENV[2]} must be integers, got {environ[ENV[1]]!r}, "
                     f"{environ[ENV[2]]!r}") from None
  return Cluster(environ[ENV[0]], n, i)


def initialize(cluster: Cluster | None = None, timeout_s: int = 120) -> Cluster:
  """jax.distributed.initialize for cluster (default: from_env()); a single process is a no-op.

  Must run before any JAX computation. On CPU the collectives go over gloo.
  """
  cluster = from_env() if cluster is None else cluster
  if cluster.num_processes == 1 or jax.distributed.is_initialized():
    return cluster
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                             process_id=cluster.process_id, initialization_timeout=timeout_s)
  return cluster


def block_of(seeds: Sequence[int], process_id: int, num_processes: int) -> tuple[int, ...]:
  """The contiguous block of seeds of one process; the first len(seeds) % P blocks are one longer."""
  seeds = tuple(seeds)
  if len(seeds) < num_processes:
    raise ValueError(f"seeds must be at least as many as the processes ({num_processes}), got {len(seeds)}")
  q, r = divmod(len(seeds), num_processes)
  start = process_id * q + min(process_id, r)
  return seeds[start:start + q + (process_id < r)]


def allgather_objects(obj: Any) -> list[Any]:
  """obj of every process, in process order, on every process (pickled, sent as bytes).

  Bytes keep float64 exact whatever this process's x64 mode; pickle is fine between processes of
  one run.
  """
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils
  data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  every = np.asarray(multihost_utils.process_allgather(padded))  # [P, max size]
  return [pickle.loads(every[p, :int(n)].tobytes()) for p, n in enumerate(sizes.reshape(-1))]


def run_sharded(fn: Callable[[tuple[int, ...]], list], seeds: Sequence[int],
                cluster: Cluster | None = None) -> list | None:
  """fn(block) on this process's block of seeds; the rows of all blocks, in seed order, on process 0.

  fn returns a list of rows (one or more per seed, in the order of its seeds); other processes
  get None. Initialises jax.distributed from the environment unless cluster is given.
  """
  cluster = initialize(cluster)
  seeds = tuple(int(s) for s in seeds)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {seeds}")
  rows = list(fn(block_of(seeds, cluster.process_id, cluster.num_processes)))
  blocks = allgather_objects(rows)
  return [r for b in blocks for r in b] if cluster.process_id == 0 else None


# --- the table ------------------------------------------------------------------------------


def table_bytes(rows: list[dict]) -> bytes:
  """CSV of rows (columns from the first row); floats as repr, so the text keeps every bit."""
  if not rows:
    raise ValueError("rows must hold at least one row")
  cols = list(rows[0])
  for r in rows:
    if list(r) != cols:
      raise ValueError(f"every row must have the columns {cols}, got {list(r)}")
  return tables.to_csv(cols, rows).encode()


def write_table(path, rows: list[dict], meta: dict) -> None:
  """path (CSV) and path with .json (meta), both written atomically."""
  path = Path(path)
  for r in rows:
    bad = [k for k, v in r.items() if isinstance(v, (float, np.floating)) and not np.isfinite(v)]
    if bad:
      raise ValueError(f"row {r} has non-finite {bad}; nothing written to {path}")
  io.atomic_write_bytes(path, table_bytes(rows))
  io.write_json(path.with_suffix(".json"), {**meta, "rows": len(rows)})


# --- a job: train every seed, one row per seed and step ---------------------------------------


def train_rows(seeds: tuple[int, ...], d: int = 3, n_context: int = 5, n_layers: int = 2, steps: int = 20,
               batch_size: int = 64, lr: float = 1e-2, warmup: int = 2, chunk: int = 100,
               dtype: str = "float32", local_devices: bool = True) -> list[dict]:
  """Train the given seeds (lintheory.run.train.fit), split over this process's devices.

  Rows: seed, step (from 1), loss, and at the last step the final ‖W_Q‖_F, ‖W_K‖_F, ‖W_V‖_F.
  """
  from lintheory.core import precision
  from lintheory.core.model import ModelConfig
  from lintheory.core.tasks import TaskConfig
  from lintheory.run import sharding, train

  task, model = TaskConfig(d=d, n_context=n_context), ModelConfig(d=d, n_layers=n_layers)
  tc = train.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, chunk=min(chunk, steps),
                         dtype=dtype)
  state = None
  if local_devices:
    with precision.for_dtype(dtype):
      state = sharding.shard_leading(train.init_state(model, tc, seeds), sharding.seed_mesh(len(seeds)))
  res = train.fit(task, model, tc, seeds=seeds, state=state)
  if res.diverged:
    raise RuntimeError(res.diverged)
  params = sharding.gather(res.params)
  rows = []
  for i, s in enumerate(seeds):
    norms = {f"{k}_fro": float(np.linalg.norm(np.asarray(params[k][i], np.float64))) for k in ("W_Q", "W_K", "W_V")}
    for t in range(res.losses.shape[1]):
      last = t == res.losses.shape[1] - 1
      rows.append({"seed": s, "step": t + 1, "loss": float(res.losses[i, t]),
                   **{k: (v if last else "") for k, v in norms.items()}})
  return rows


# --- command line -----------------------------------------------------------------------------


def parse_seeds(text: str) -> tuple[int, ...]:
  """"0-3,7" → (0, 1, 2, 3, 7)."""
  out = []
  try:
    for part in text.split(","):
      lo, _, hi = part.partition("-")
      out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
  except ValueError:
    raise ValueError(f"seeds must look like '0-3,7', got {text!r}") from None
  if not out:
    raise ValueError(f"seeds must name at least one seed, got {text!r}")
  return tuple(out)


def resolve(spec: str) -> Callable:
  """'package.module:function' → the function."""
  mod, _, name = spec.partition(":")
  if not mod or not name:
    raise ValueError(f"job must be 'package.module:function', got {spec!r}")
  try:
    return getattr(importlib.import_module(mod), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"job {spec!r} not found: {e}") from None


def parse_kwargs(items: Sequence[str]) -> dict:
  """key=value pairs; a value is JSON when it parses (3, 1e-2, true), a string otherwise."""
  out = {}
  for item in items:
    k, eq, v = item.partition("=")
    if not eq or not k.isidentifier():
      raise ValueError(f"job arguments must be key=value, got {item!r}")
    try:
      out[k] = json.loads(v)
    except json.JSONDecodeError:
      out[k] = v
  return out


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m lintheory.run.distributed",
                              description="Run a job over seeds split across processes; process 0 writes the table.")
  p.add_argument("--coordinator", default="", help="host:port of process 0 (with --num-processes > 1)")
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--seeds", default="0", help="e.g. 0-7 or 0,2,5")
  p.add_argument("--out", required=True, help="CSV written by process 0 (and its .json)")
  p.add_argument("job", help="package.module:function(seeds, **kwargs) returning rows")
  p.add_argument("kwargs", nargs="*", help="key=value arguments of the job")
  return p


def main(argv=None) -> int:
  runtime.configure()  # before JAX's first computation
  args = parser().parse_args(argv)
  try:
    cluster = Cluster(args.coordinator, args.num_processes, args.process_id)
    seeds, fn, kwargs = parse_seeds(args.seeds), resolve(args.job), parse_kwargs(args.kwargs)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rows = run_sharded(lambda block: fn(block, **kwargs), seeds, cluster)
  if rows is not None:
    write_table(args.out, rows, {"job": args.job, "kwargs": kwargs, "seeds": list(seeds),
                                 "num_processes": cluster.num_processes, "devices": jax.device_count()})
  if cluster.num_processes > 1:
    jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main())
