"""Atomic file writes and the small I/O helpers every floor above core shares.

Every write goes to a temporary file beside its target and is renamed into place, so a reader never
sees half a file; JSON is strict (NaN → null, ±inf → "inf"/"-inf"). Every write and rename that
commits state goes through `atomic_write_bytes` or `replace`, the two points fault-injection tests
interrupt.
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
from typing import Any

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
  atomic_write_bytes(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
  return (json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n").encode()


def read_json(path) -> Any:
  return json.loads(Path(path).read_text())


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
