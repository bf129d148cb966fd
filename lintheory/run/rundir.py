"""Run directories: what `lintheory train` and `prune` write and every other command reads.

A run directory holds config.json, params.npz (W_Q, W_K, W_V [L, D, D], plus W_O, W_1, W_2 when
present), metrics.json, provenance.json, optionally loss_curve.csv and checkpoint.npz (optimiser
state and the losses so far, for resuming), and MANIFEST.json (the step and the sha256 of every
other file). A save is one commit: every file is written into a sibling `.NAME.new`, the manifest
last, then two renames swap it in, so a reader sees the old run or the new one, never a mix.
`load_run` verifies the manifest, then the contents, and raises `RunError` naming file and problem.
A model's nnx.state is saved as params.npz (its arrays by name, readable with numpy alone) and loads
into a fresh module with nnx.update(LinearTransformer(run.model, ...), run.params).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from flax import nnx

from lintheory.core.model import ModelConfig, Params, param_shapes
from lintheory.core.tasks import TaskConfig
from lintheory.run import io, recipes
from lintheory.run.train import TrainConfig, resolve

FORMAT = "lintheory-run/1"
MANIFEST = "MANIFEST.json"
REQUIRED = ("config.json", "params.npz")
FLOATS = (np.float32, np.float64)
SEED_RANGE = (0, 2**31 - 1)
# Fields that may differ when resuming: the step budget may grow, the chunk only sets the
# progress cadence (a step's update depends on the step index alone).
RESUMABLE_CHANGES = {"train.steps", "train.chunk"}


class RunError(ValueError):
  """A run directory that cannot be used as it is; the message names the file and the problem."""


class Run(NamedTuple):
  path: Path
  task: TaskConfig
  model: ModelConfig
  train: TrainConfig | None
  seed: int
  params: Params  # numpy arrays, in the dtype they were saved in
  metrics: dict
  config: dict  # config.json as saved (pruning provenance and the like included)
  manifest: dict


def _tuplify(x):
  return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def task_config_from_dict(d: dict) -> TaskConfig:
  return TaskConfig(**{k: _tuplify(v) for k, v in d.items()})


def config_dict(task: TaskConfig, model: ModelConfig, train: TrainConfig | None, seed: int,
                extra: dict | None = None) -> dict:
  return {"task": dataclasses.asdict(task), "model": dataclasses.asdict(model),
          "train": dataclasses.asdict(train) if train else None, "seed": seed, **(extra or {})}


def loss_curve_bytes(losses: np.ndarray) -> bytes:
  lines = ["step,loss"] + [f"{i + 1},{l:.8g}" for i, l in enumerate(np.asarray(losses))]
  return ("\n".join(lines) + "\n").encode()


def checkpoint_arrays(opt_state, step: int, losses: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Optimiser-state leaves (train.TrainState.opt_state: optax's order), the step, and the exact losses
  so far (for a bit-identical resume, train.resumed)."""
  import jax
  leaves = jax.tree_util.tree_leaves(opt_state)
  arrays = {"step": np.asarray(step, np.int64), **{f"opt_{i}": np.asarray(l) for i, l in enumerate(leaves)}}
  if losses is not None:
    arrays["losses"] = np.asarray(losses)
  return arrays


# --- saving: one commit per save ---------------------------------------------------------------


def _siblings(path: Path) -> tuple[Path, Path]:
  return path.parent / f".{path.name}.new", path.parent / f".{path.name}.old"


def is_run_dir(path) -> bool:
  """True when `path` holds a MANIFEST.json of this tool (whatever the state of the other files)."""
  try:
    return io.read_json(Path(path) / MANIFEST).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def check_replaceable(path, what: str = "--out") -> None:
  """Raise RunError unless `path` is absent, an empty directory, or a run directory of this tool."""
  path = Path(path)
  if not path.exists():
    return
  if not path.is_dir():
    raise RunError(f"{what} {path} exists and is not a directory")
  if any(path.iterdir()) and not is_run_dir(path):
    raise RunError(f"{what} {path} is a non-empty directory that is not a lintheory run directory "
                   f"(no {MANIFEST}); refusing to write into it")


def commit(out, files: dict[str, bytes], step: int | None = None) -> Path:
  """Write `files` (name → bytes) as the whole content of run directory `out`, atomically."""
  out = Path(out)
  recover(out)
  check_replaceable(out)
  new, old = _siblings(out)
  io.remove_tree(new)
  new.mkdir(parents=True)
  digests = {}
  for name, data in files.items():
    io.atomic_write_bytes(new / name, data)
    digests[name] = io.sha256_file(new / name)
  io.atomic_write_bytes(new / MANIFEST, io.json_bytes({"format": FORMAT, "step": step, "files": digests}))
  if out.exists():
    io.remove_tree(old)
    io.replace(out, old)
  io.replace(new, out)
  io.remove_tree(old)
  return out


def recover(path) -> None:
  """Finish a save interrupted between its two renames (the run directory itself is missing)."""
  path = Path(path)
  if path.exists():
    return
  for candidate in _siblings(path):  # the newer complete state first
    if candidate.is_dir():
      try:
        verify(candidate)
      except RunError:
        continue
      io.replace(candidate, path)
      for other in _siblings(path):
        io.remove_tree(other)
      return


def save_run(out, task: TaskConfig, model: ModelConfig, train: TrainConfig | None, seed: int,
             params: Params | nnx.State, metrics: dict, losses: np.ndarray | None = None, extra: dict | None = None,
             checkpoint: dict[str, np.ndarray] | None = None, provenance: dict | None = None) -> Path:
  """Commit a whole run directory; params: the parameter dict or the model's nnx.state; `checkpoint` is
  checkpoint_arrays(...) when it can be resumed. A training field left to the recipe (None) is saved as
  the recipe's value (train.resolve)."""
  train = None if train is None else resolve(train, model)
  params = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
  files = {"config.json": io.json_bytes(config_dict(task, model, train, seed, extra)),
           "params.npz": io.npz_bytes(params), "metrics.json": io.json_bytes(metrics)}
  if losses is not None:
    files["loss_curve.csv"] = loss_curve_bytes(losses)
  if checkpoint is not None:
    files["checkpoint.npz"] = io.npz_bytes(checkpoint)
  if provenance is None:
    from lintheory.run import provenance as prov
    provenance = prov.collect()
  files["provenance.json"] = io.json_bytes(provenance)
  step = int(checkpoint["step"]) if checkpoint is not None else metrics.get("step")
  return commit(out, files, step)


# --- loading: verify, then validate -------------------------------------------------------------


def read_json(path: Path) -> Any:
  """io.read_json, with a file that cannot be read or parsed as a RunError naming it."""
  try:
    return io.read_json(path)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RunError(f"{path}: not valid JSON ({e})") from None
  except OSError as e:
    raise RunError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
  try:
    f = np.load(path, allow_pickle=False)
    if not hasattr(f, "files"):
      raise ValueError("a single array, not an .npz archive")
    with f:
      return {k: f[k] for k in f.files}
  except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
    why = str(e).split("\n")[0]
    if "allow_pickle" in why or "pickle" in why:
      why = "holds no arrays numpy can read without pickle"
    raise RunError(f"{path}: not a readable .npz archive ({type(e).__name__}: {why})") from None


def verify(path) -> dict:
  """The manifest of run directory `path`, after checking every listed file against its sha256."""
  path = Path(path)
  if not path.exists():
    raise RunError(f"{path}: no such run directory")
  if not path.is_dir():
    raise RunError(f"{path} is not a run directory (not a directory)")
  if not (path / MANIFEST).exists():
    raise RunError(f"{path} is not a run directory of this lintheory ({MANIFEST} is missing)")
  manifest = read_json(path / MANIFEST)
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
    raise RunError(f"{path / MANIFEST}: not a manifest of format {FORMAT}")
  for name in REQUIRED:
    if name not in manifest["files"]:
      raise RunError(f"{path / MANIFEST}: does not list {name}")
  bad = []
  for name, digest in manifest["files"].items():
    f = path / name
    if Path(name).name != name:
      raise RunError(f"{path / MANIFEST}: lists a path outside the run directory: {name!r}")
    if not f.is_file():
      bad.append(f"{name} is missing")
    elif io.sha256_file(f) != digest:
      bad.append(f"{name} differs from its checksum")
  if bad:
    raise RunError(f"{path}: {'; '.join(bad)} (an interrupted save or an edited file; the manifest "
                   f"of step {manifest.get('step')} does not match)")
  return manifest


def _config(path: Path, config: Any) -> tuple[TaskConfig, ModelConfig, TrainConfig | None, int]:
  where = path / "config.json"
  if not isinstance(config, dict):
    raise RunError(f"{where}: expected a JSON object")
  for key in ("task", "model"):
    if not isinstance(config.get(key), dict):
      raise RunError(f"{where}: the {key!r} section is missing")
  try:
    task = task_config_from_dict(config["task"])
    model = ModelConfig(**config["model"])
    train = TrainConfig(**config["train"]) if config.get("train") else None
  except (TypeError, ValueError) as e:
    raise RunError(f"{where}: {e}") from None
  seed = config.get("seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
    raise RunError(f"{where}: seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {seed!r}")
  if model.d != task.d:
    raise RunError(f"{where}: model d={model.d} differs from task d={task.d}")
  return task, model, train, seed


def check_params(where, params: dict[str, np.ndarray], model: ModelConfig, dtype: str | None = None) -> None:
  """Names, shapes against the model, one floating dtype, finiteness; RunError naming `where`."""
  want = param_shapes(model)
  missing, extra = sorted(set(want) - set(params)), sorted(set(params) - set(want))
  if missing:
    raise RunError(f"{where}: {', '.join(missing)} missing (the model in config.json needs {sorted(want)})")
  if extra:
    raise RunError(f"{where}: unexpected arrays {extra} for the model in config.json")
  for name, shape in sorted(want.items()):
    a = params[name]
    if a.shape != shape:
      raise RunError(f"{where}: {name} has shape {a.shape}, the model in config.json needs {shape}")
    if a.dtype not in FLOATS:
      raise RunError(f"{where}: {name} has dtype {a.dtype}, expected float32 or float64")
    if dtype is not None and a.dtype != np.dtype(dtype):
      raise RunError(f"{where}: {name} has dtype {a.dtype}, config.json trains in {dtype}")
    n_bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if n_bad:
      raise RunError(f"{where}: {name} holds {n_bad} non-finite value(s) (NaN or inf)")
  if len({params[n].dtype for n in want}) > 1:
    raise RunError(f"{where}: arrays of mixed dtypes {sorted({str(params[n].dtype) for n in want})}")


def load_run(path) -> Run:
  """A verified and validated run directory (completing an interrupted save first)."""
  path = Path(path)
  recover(path)
  manifest = verify(path)
  config = read_json(path / "config.json")
  task, model, train, seed = _config(path, config)
  params = _read_npz(path / "params.npz")
  check_params(path / "params.npz", params, model, train.dtype if train else None)
  metrics = read_json(path / "metrics.json") if "metrics.json" in manifest["files"] else {}
  if not isinstance(metrics, dict):
    raise RunError(f"{path / 'metrics.json'}: expected a JSON object")
  return Run(path, task, model, train, seed, params, metrics, config, manifest)


def load_checkpoint(run: Run, opt_state_like) -> tuple[Any, int, np.ndarray]:
  """(optimiser state shaped like `opt_state_like`, step, losses [S, step]) of a verified run."""
  import jax
  where = run.path / "checkpoint.npz"
  if "checkpoint.npz" not in run.manifest["files"]:
    raise RunError(f"{where}: missing; this run cannot be resumed (it was not written by `lintheory train`)")
  arrays = _read_npz(where)
  like = jax.tree_util.tree_leaves(opt_state_like)
  names = {"step", "losses", *(f"opt_{i}" for i in range(len(like)))}
  if set(arrays) != names:
    raise RunError(f"{where}: holds {len(arrays)} arrays, the optimiser of config.json needs "
                   f"{len(names)} (step, losses, opt_0..opt_{len(like) - 1})")
  leaves = []
  for i, ref in enumerate(like):
    a = arrays[f"opt_{i}"]
    if a.shape != np.shape(ref) or a.dtype != np.asarray(ref).dtype:
      raise RunError(f"{where}: opt_{i} has {a.dtype}{list(a.shape)}, the optimiser needs "
                     f"{np.asarray(ref).dtype}{list(np.shape(ref))}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
      raise RunError(f"{where}: opt_{i} holds non-finite values")
    leaves.append(a)
  step, losses = arrays["step"], arrays["losses"]
  if step.shape != () or not np.issubdtype(step.dtype, np.integer) or not 0 <= int(step) <= run.train.steps:
    raise RunError(f"{where}: step must be an integer in [0, {run.train.steps}], got {step!r}")
  if losses.ndim != 2 or losses.shape[1] != int(step) or not np.issubdtype(losses.dtype, np.floating):
    raise RunError(f"{where}: losses must have shape (seeds, {int(step)}), got {losses.shape}")
  if run.manifest.get("step") != int(step):
    raise RunError(f"{where}: step {int(step)} differs from {MANIFEST}'s step {run.manifest.get('step')}")
  treedef = jax.tree_util.tree_structure(opt_state_like)
  return jax.tree_util.tree_unflatten(treedef, leaves), int(step), losses


def config_mismatch(run: Run, task: TaskConfig, model: ModelConfig, train: TrainConfig, seed: int) -> list[str]:
  """Fields (as section.field) where a resumed run's configuration would differ from the saved one."""
  if run.train is not None:  # a field left to the recipe continues the saved run (whose warm-up had its steps)
    train = dataclasses.replace(train, **{k: getattr(run.train, k) for k in recipes.FIELDS if getattr(train, k) is None})
  saved = config_dict(run.task, run.model, run.train, run.seed)
  new = config_dict(task, model, resolve(train, model), seed)
  out = []
  for section in ("task", "model", "train"):
    a, b = io.jsonable(saved[section] or {}), io.jsonable(new[section] or {})
    out += [f"{section}.{k} (saved {a.get(k)!r}, given {b.get(k)!r})" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and f"{section}.{k}" not in RESUMABLE_CHANGES]
  if seed != run.seed:
    out.append(f"seed (saved {run.seed}, given {seed})")
  return out
