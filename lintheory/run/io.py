"""Atomic file writes, the cache-key digest, the cached directory and the small I/O helpers every floor
above core shares.

Every write goes to a temporary file beside its target and is renamed into place, so a reader never
sees half a file; JSON is strict (NaN → null, ±inf → "inf"/"-inf"). Every write and rename that
commits state goes through `atomic_write_bytes` or `replace`, the two points fault-injection tests
interrupt. Every cache (trained models, fitted references, sweeps, deep_recipes' models) names an
entry by `digest` of its key; the directory caches build and find entries through `cached_dir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io as _io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np


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


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """os.replace, then fsync the parent so the rename survives a crash."""
  os.replace(src, dst)
  fsync_dir(Path(dst).parent)


def fsync_dir(path: str | os.PathLike) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some filesystems do not sync directories
    pass
  finally:
    os.close(fd)


def remove_tree(path: str | os.PathLike) -> None:
  """Remove a file or directory tree if present."""
  path = Path(path)
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path)
  elif path.exists() or path.is_symlink():
    path.unlink()


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
  """Raise ValueError unless `path` is (or could be created as) a directory this process can write.

  Probes the nearest existing ancestor with a real temporary file: os.access says yes on some
  read-only mounts.
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"{what} {path} exists and is not a directory")
  probe = path
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir():
    raise ValueError(f"{what} {path}: {probe} is not a directory")
  try:
    with tempfile.TemporaryFile(dir=probe, prefix=".lintheory-probe-"):
      pass
  except OSError as e:
    raise ValueError(f"{what} {path}: cannot write in {probe} ({e.strerror or e})") from None


def jsonable(x: Any) -> Any:
  """`x` as plain JSON values: arrays as lists, numpy scalars as numbers, NaN → None, ±inf → "inf"/"-inf"."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return jsonable(np.asarray(x).tolist())
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
  atomic_write_bytes(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
  return (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode()


def read_json(path) -> Any:
  return json.loads(Path(path).read_bytes())


def digest(key: Any) -> str:
  """sha256 (hex) of the canonical JSON of a cache key: sorted keys, jsonable's values, so equal keys built
  from tuples or numpy scalars name the same entry."""
  return hashlib.sha256(json.dumps(jsonable(key), sort_keys=True).encode()).hexdigest()


def npz_bytes(arrays: dict[str, Any]) -> bytes:
  """An .npz archive (np.load reads it) whose bytes depend on the arrays alone: no timestamps, so
  the same parameters always have the same sha256."""
  buf = _io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
    for name, value in arrays.items():
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      with z.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
  return buf.getvalue()


def write_npz(path, arrays: dict[str, Any]) -> None:
  atomic_write_bytes(path, npz_bytes(arrays))


def write_npy(path, array) -> None:
  buf = _io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  atomic_write_bytes(path, buf.getvalue())


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


MANIFEST = "MANIFEST.json"  # a cache entry's list of files with their size and sha256, written last
CACHE_FORMAT = "lintheory-cache/1"
UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)  # a file cut short or garbled


def cached_dir(root: str | os.PathLike, key: Any, files: tuple[str, ...], build: Callable[[Path], Any],
               load: Callable[[Path], Any], what: str = "") -> Any:
  """The value of the cache entry root/<digest(key)[:16]>: build(tmp)'s return where the entry is built now,
  else load(entry).

  A hit is decided on the whole entry: its MANIFEST.json records this key and every name of `files` with a
  size and sha256 that the files on disk match (an entry written before manifests, with none, is a hit when
  every name of `files` exists), and load reads it without an error of UNREADABLE. Anything else is a miss:
  build writes `files` (and any others it likes) into an empty temporary directory beside the entry, then
  the manifest is written, everything is fsynced and the directory renamed into place, so a process killed
  at any point leaves no entry, the old one or a complete new one, never a part of one. A lock (root/<name>.lock) makes a second process
  that wants the same entry wait, then find it.
  """
  root = Path(root)
  name = digest(key)[:16]
  path = root / name
  with locked(root / f"{name}.lock", what or name):
    if _is_complete(path, key, files):
      try:
        return load(path)
      except UNREADABLE:
        pass
    for stale in root.glob(f".{name}.*.tmp"):  # left by a build that was killed
      remove_tree(stale)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
    try:
      value = build(tmp)
      _seal(tmp, key, files)
      remove_tree(path)
      replace(tmp, path)
    except BaseException:
      remove_tree(tmp)
      raise
    return value


def _is_complete(path: Path, key: Any, files: tuple[str, ...]) -> bool:
  if not (path / MANIFEST).is_file():
    return all((path / f).is_file() for f in files)
  try:
    manifest = read_json(path / MANIFEST)
    listed = manifest["files"]
    if manifest["key"] != jsonable(key) or not set(files) <= set(listed):
      return False
    return all((path / f).is_file() and (path / f).stat().st_size == rec["size"]
               and sha256_file(path / f) == rec["sha256"] for f, rec in listed.items())
  except (*UNREADABLE, TypeError, AttributeError):  # a manifest cut short or not of this form
    return False


def _seal(tmp: Path, key: Any, files: tuple[str, ...]) -> None:
  """Check build wrote every promised file, fsync them, write the manifest last."""
  missing = [f for f in files if not (tmp / f).is_file()]
  if missing:
    raise RuntimeError(f"building the cache entry {tmp.name}: {', '.join(missing)} not written")
  for f in files:
    with open(tmp / f, "rb") as fh:
      os.fsync(fh.fileno())
  listed = {f: {"size": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files}
  write_json(tmp / MANIFEST, {"format": CACHE_FORMAT, "key": key, "files": listed})
  fsync_dir(tmp)
