"""Run directories: what `lintheory train` and `prune` write and every other command reads.

A run directory holds config.json, params.npz (W_Q, W_K, W_V [L, D, D], plus W_O, W_1, W_2 when
present), metrics.json, loss_curve.csv and checkpoint.npz (optimiser state, for resuming).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from lintheory.core.model import ModelConfig, Params
from lintheory.core.tasks import TaskConfig
from lintheory.run.io import atomic_write_bytes, read_json, write_json, write_npz
from lintheory.run.train import TrainConfig


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
