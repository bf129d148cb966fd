"""The cache of trained models that studies share (runs/cache/<digest>/).

Keyed by every field of the task, model and training configurations, the seeds and the trainer's
revision (train.TRAINER); an entry is an io.cached_dir (atomic, verified on its manifest, and locked, so a
model that two parallel studies need gets trained once).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lintheory.core.model import ModelConfig, Params
from lintheory.core.tasks import TaskConfig
from lintheory.run import adequacy
from lintheory.run import train as _train
from lintheory.run.io import cached_dir, digest, read_json, write_json, write_npy, write_npz
from lintheory.run.train import TrainConfig


ROOT = "runs"  # the root of every cache (--cache-dir): trained models and fitted references, compiled programs


def dirs(root=ROOT) -> tuple[Path, Path]:
  """Under one cache root: the models and fitted references (ROOT/cache), compiled XLA programs (ROOT/jax_cache)."""
  return Path(root) / "cache", Path(root) / "jax_cache"


def cache_key(task: TaskConfig, model: ModelConfig, train_cfg: TrainConfig, seeds) -> dict:
  """Every field of the three configurations, the seeds and the trainer's revision."""
  return {"task": dataclasses.asdict(task), "model": dataclasses.asdict(model),
          "train": dataclasses.asdict(train_cfg), "seeds": list(seeds), "trainer": _train.TRAINER}


FILES = ("key.json", "losses.npy", "params.npz")  # an entry's product; adequacy.json beside it is derived from them


def cached_fit(task: TaskConfig, model: ModelConfig, train_cfg: TrainConfig, seeds, cache_dir="runs/cache",
               label: str = "") -> tuple[Params, np.ndarray, tuple[adequacy.Seed, ...]]:
  """Train one model per seed (vmapped; a stalled seed restarted, run.adequacy.fit), or load them if this
  exact configuration was trained.

  Studies share trained models through this cache (keyed by every config field and the seeds; an entry of
  io.cached_dir), so a study that needs a model another study trained does not retrain it.
  Returns (params with a leading seed axis, as numpy arrays in the training dtype, losses [S, steps],
  the training diagnostic per seed): the same whether trained now or read back, whatever the caller's x64 mode.
  """
  train_cfg = _train.resolve(train_cfg, model)  # a field left to the recipe keys as its value
  key = cache_key(task, model, train_cfg, seeds)

  def build(path: Path):
    res, restarts = adequacy.fit(task, model, train_cfg, seeds, on_chunk=_train.print_progress(train_cfg.steps, label))
    if res.diverged:
      raise RuntimeError(f"{label}{res.diverged}")
    params = {k: np.asarray(v) for k, v in res.params.items()}
    diagnosed = adequacy.diagnose(task, model, train_cfg, seeds, params, res.losses, restarts)
    write_json(path / "key.json", key)
    write_npy(path / "losses.npy", res.losses)
    write_npz(path / "params.npz", params)
    _write_adequacy(path, diagnosed)
    return params, res.losses, diagnosed

  def load(path: Path):
    with np.load(path / "params.npz") as f:
      params = {k: f[k] for k in f.files}
    losses, saved = np.load(path / "losses.npy"), read_json(path / "adequacy.json")
    if isinstance(saved, dict) and saved.get("version") == adequacy.VERSION:
      return params, losses, tuple(adequacy.Seed(**_floats(s)) for s in saved["seeds"])
    # the diagnostic changed since this model was trained: recompute it, keeping the restarts it chose
    old = saved["seeds"] if isinstance(saved, dict) else saved
    diagnosed = adequacy.diagnose(task, model, train_cfg, seeds, params, losses, [s["restarts"] for s in old])
    _write_adequacy(path, diagnosed)
    return params, losses, diagnosed

  return cached_dir(cache_dir, key, FILES, build, load, f"training {label or digest(key)[:16]}")


def _write_adequacy(path: Path, diagnosed) -> None:
  write_json(path / "adequacy.json", {"version": adequacy.VERSION, "seeds": [s._asdict() for s in diagnosed]})


def _floats(seed: dict) -> dict:
  """A diagnostic read back from JSON: ±inf was written as a string (io.write_json)."""
  return {k: float(v) if isinstance(v, str) else v for k, v in seed.items()}
