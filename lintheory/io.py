"""Run directories and results files, written atomically.

A run directory holds config.json, params.npz (W_Q, W_K, W_V [L, D, D], plus W_O, W_1, W_2 when
present), metrics.json, loss_curve.csv and checkpoint.npz (optimiser state, for resuming).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io as _io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from lintheory.model import ModelConfig, Params
from lintheory.tasks import TaskConfig
from lintheory.train import TrainConfig


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Write to a temporary file beside `path`, then rename: readers never see half a file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(x).tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    if not np.isfinite(x):
      return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_json(path, obj: Any) -> None:
  """JSON with NaN written as null and ±inf as strings, so files stay strict JSON."""
  atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n").encode())


def read_json(path) -> Any:
  return json.loads(Path(path).read_text())


def write_npz(path, arrays: dict[str, Any]) -> None:
  buf = _io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  atomic_write_bytes(path, buf.getvalue())


def _tuplify(x):
  return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def task_config_from_dict(d: dict) -> TaskConfig:
  return TaskConfig(**{k: _tuplify(v) for k, v in d.items()})


class Run(NamedTuple):
  path: Path
  task: TaskConfig
  model: ModelConfig
  train: TrainConfig | None
  seed: int
  params: Params
  metrics: dict


def save_run(out, task: TaskConfig, model: ModelConfig, train: TrainConfig | None, seed: int,
             params: Params, metrics: dict, losses: np.ndarray | None = None, extra: dict | None = None) -> Path:
  out = Path(out)
  config = {"task": dataclasses.asdict(task), "model": dataclasses.asdict(model),
            "train": dataclasses.asdict(train) if train else None, "seed": seed, **(extra or {})}
  write_json(out / "config.json", config)
  write_npz(out / "params.npz", params)
  write_json(out / "metrics.json", metrics)
  if losses is not None:
    lines = ["step,loss"] + [f"{i + 1},{l:.8g}" for i, l in enumerate(np.asarray(losses))]
    atomic_write_bytes(out / "loss_curve.csv", ("\n".join(lines) + "\n").encode())
  return out


def load_run(path) -> Run:
  path = Path(path)
  for name in ("config.json", "params.npz"):
    if not (path / name).exists():
      raise FileNotFoundError(f"{path} is not a run directory: {name} is missing")
  config = read_json(path / "config.json")
  with np.load(path / "params.npz") as f:
    params = {k: jax.numpy.asarray(f[k]) for k in f.files}
  metrics = read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
  train = TrainConfig(**config["train"]) if config.get("train") else None
  return Run(path, task_config_from_dict(config["task"]), ModelConfig(**config["model"]), train,
             int(config.get("seed", 0)), params, metrics)


def save_checkpoint(out, opt_state, step: int) -> None:
  leaves = jax.tree_util.tree_leaves(opt_state)
  write_npz(Path(out) / "checkpoint.npz", {"step": np.asarray(step), **{f"opt_{i}": l for i, l in enumerate(leaves)}})


def load_checkpoint(path, opt_state_like):
  """Optimiser state shaped like `opt_state_like`, and the step it was saved at."""
  with np.load(Path(path) / "checkpoint.npz") as f:
    leaves = [jax.numpy.asarray(f[f"opt_{i}"]) for i in range(len(f.files) - 1)]
    step = int(f["step"])
  treedef = jax.tree_util.tree_structure(opt_state_like)
  return jax.tree_util.tree_unflatten(treedef, leaves), step


def progress(msg: str, final: bool) -> None:
  """A progress line on stderr: updated in place on a terminal, one line per update in a log."""
  tty = sys.stderr.isatty()
  print(("\r" if tty else "") + msg, end="" if tty and not final else "\n", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str = ""):
  """Hold an exclusive lock on `path` (created if needed), so that studies running in parallel
  train or fit a shared cached item once: the second waits, then finds it in the cache."""
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"  waiting for another process to finish {what or path}", file=sys.stderr, flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def cached_fit(task: TaskConfig, model: ModelConfig, train_cfg: TrainConfig, seeds, cache_dir="runs/cache",
               label: str = "") -> tuple[Params, np.ndarray]:
  """Train one model per seed (vmapped), or load them if this exact configuration was trained.

  Studies share trained models through this cache (keyed by every config field and the seeds),
  so a study that needs a model another study trained does not retrain it.
  Returns (params with a leading seed axis, losses [S, steps]).
  """
  import hashlib
  from lintheory import train as _train

  key = {"task": dataclasses.asdict(task), "model": dataclasses.asdict(model),
         "train": dataclasses.asdict(train_cfg), "seeds": list(seeds)}
  digest = hashlib.sha256(json.dumps(_jsonable(key), sort_keys=True).encode()).hexdigest()[:16]
  path = Path(cache_dir) / digest
  with locked(Path(cache_dir) / f"{digest}.lock", f"training {label or digest}"):
    if (path / "params.npz").exists() and (path / "losses.npy").exists():
      with np.load(path / "params.npz") as f:
        params = {k: jax.numpy.asarray(f[k]) for k in f.files}
      return params, np.load(path / "losses.npy")
    res = _train.fit(task, model, train_cfg, seeds, on_chunk=_train.print_progress(train_cfg.steps, label))
    if res.diverged:
      raise RuntimeError(f"{label}{res.diverged}")
    write_json(path / "key.json", key)
    buf = _io.BytesIO()
    np.save(buf, res.losses)
    atomic_write_bytes(path / "losses.npy", buf.getvalue())
    write_npz(path / "params.npz", res.params)
    return res.params, res.losses
