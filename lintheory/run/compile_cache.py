"""A persistent compilation cache: compiled XLA programs kept on disk across processes.

A study, a sweep or the test suite compiles the same programs in every process; with the cache
on, a second process loads them instead. Entry points call `enable()` explicitly (nothing happens
at import). A program read from the cache is the one the compiler wrote, so results are the same
bits with the cache on or off (tests/test_compile_cache.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

DEFAULT_DIR = "runs/jax_cache"


def enable(dir=DEFAULT_DIR, min_compile_time_s: float = 0.0) -> Path:
  """Cache every program that takes at least min_compile_time_s to compile (default: all, however
  small) under dir, created if missing; returns the absolute directory."""
  if isinstance(min_compile_time_s, bool) or not isinstance(min_compile_time_s, (int, float)) \
      or not math.isfinite(min_compile_time_s) or min_compile_time_s < 0:
    raise ValueError(f"min_compile_time_s must be a finite number >= 0, got {min_compile_time_s!r}")
  path = Path(dir).expanduser().resolve()
  if path.exists() and not path.is_dir():
    raise ValueError(f"dir must be a directory, got the file {path}")
  path.mkdir(parents=True, exist_ok=True)
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # 0 would mean jax's default size
  if before and before != str(path):
    _jax_cache.reset_cache()  # jax opens its cache once per process: reopen it at the new place
  return path


def disable() -> None:
  """Stop reading and writing the persistent cache in this process."""
  jax.config.update("jax_compilation_cache_dir", None)
  _jax_cache.reset_cache()


def directory() -> Path | None:
  """The cache directory in use, or None when the cache is off."""
  d = jax.config.jax_compilation_cache_dir
  return Path(d) if d else None
