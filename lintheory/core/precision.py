"""The one precision switch. float64 work runs inside `x64()`; nothing flips it at import time.

Exact identities (docs/theory.md §3, §5) are checked in float64; training may run in float32.
`jax.enable_x64` is scoped, so a float32 model trained inside or outside `x64()` is the same bits.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


@contextlib.contextmanager
def x64(enabled: bool = True):
  """Run the block with 64-bit JAX types on (or off)."""
  with jax.enable_x64(enabled):
    yield


def for_dtype(name: str):
  """The scope a computation in dtype `name` needs: x64() for "float64", 32-bit mode otherwise."""
  if name not in DTYPES:
    raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
  return x64(name == "float64")
