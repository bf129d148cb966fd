"""Atomic file writes and the small I/O helpers every floor above core shares.

Every write goes to a temporary file beside its target and is renamed into place, so a reader never
sees half a file; JSON is strict (NaN → null, ±inf → "inf"/"-inf").
"""

from __future__ import annotations

import contextlib
import fcntl
import io as _io
import json
import os
import sys
import tempfile
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
