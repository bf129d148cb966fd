"""Seeds (or configurations) spread over this process's devices with jax.sharding (GSPMD).

A jitted, vmapped function given inputs sharded on the vmapped axis runs each shard on its own
device: one CPU process fills both cores under XLA_FLAGS=--xla_force_host_platform_device_count=2,
and one process fills every local GPU. The batches, seeds and row order stay as they are.

Round-off: a partitioned program goes through XLA's SPMD pipeline, whose algebraic simplifier
rewrites 1/sqrt(x) as rsqrt(x) (optax.clip_by_global_norm has one) and fuses some reductions
differently. Results on 1 and on several devices therefore agree to round-off, not bit for bit
(lintheory.run.device_check measures how far; docs/scale-out.md shows what it measured). One device compiles no partitioned program: the
same bits as no sharding at all.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "seed"  # the mesh axis every leading (vmapped) axis is split over


def seed_mesh(n: int | None = None, devices=None) -> Mesh:
  """A 1-D mesh ("seed",) over this process's devices; with n, the most of them that divide n.

  n is the leading size to split (seeds, configurations); n=None takes every device.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices must name at least one device")
  k = len(devices)
  if n is not None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
      raise ValueError(f"n must be an integer >= 1 (the leading size to split), got {n!r}")
    k = max(c for c in range(1, min(k, int(n)) + 1) if n % c == 0)
  return Mesh(np.array(devices[:k]), (AXIS,))


def _leading(x) -> int | None:
  shape = getattr(x, "shape", None)
  return shape[0] if shape else None  # None for Python scalars and 0-d arrays


def leading_size(tree: Any) -> int:
  """The one leading size every array leaf (ndim >= 1) of tree shares."""
  sizes = {_leading(x) for x in jax.tree_util.tree_leaves(tree)} - {None}
  if len(sizes) != 1:
    raise ValueError(f"tree must have array leaves with one leading size, got sizes {sorted(sizes)}")
  return sizes.pop()


def pad_leading(tree: Any, multiple: int) -> tuple[Any, int]:
  """Pad the leading axis with copies of the last row up to a multiple; also return the old size."""
  n = leading_size(tree)
  extra = -n % multiple

  def pad(x):
    if _leading(x) is None or not extra:
      return x
    return jax.numpy.concatenate([x, jax.numpy.repeat(x[-1:], extra, axis=0)], axis=0)

  return jax.tree_util.tree_map(pad, tree), n


def shard_leading(tree: Any, mesh: Mesh | None = None, pad: bool = False) -> Any:
  """device_put every array leaf split on its leading axis over mesh ("seed"); others replicated.

  The leading size must be a multiple of the mesh size: refused (ValueError) unless pad=True,
  which appends copies of the last row (trim them with gather(tree, n)). 0-d arrays are
  replicated; Python scalars (a step counter) are left as they are. One device: a no-op.
  """
  mesh = seed_mesh() if mesh is None else mesh
  if mesh.axis_names != (AXIS,):
    raise ValueError(f"mesh must be 1-D with axis names ({AXIS!r},), got {mesh.axis_names}")
  k = mesh.devices.size
  if k == 1:
    return tree
  n = leading_size(tree)
  if n % k:
    if not pad:
      raise ValueError(f"leading size {n} is not a multiple of the {k} devices of the mesh; "
                       f"use seed_mesh(n={n}) or pad=True")
    tree, _ = pad_leading(tree, k)
  split, whole = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())

  def put(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      return jax.device_put(x, split if _leading(x) is not None else whole)
    return x

  return jax.tree_util.tree_map(put, tree)


def gather(tree: Any, n: int | None = None) -> Any:
  """Every array leaf as host numpy (assembled across processes if need be), first n rows if n."""
  def get(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)  # keys travel as their raw bits
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      x = np.asarray(jax.device_get(x))
      return x[:n] if n is not None and x.ndim else x
    return x

  return jax.tree_util.tree_map(get, tree)


def is_sharded(x: jax.Array) -> bool:
  """Whether x is split over more than one device."""
  return isinstance(x, jax.Array) and len({s.device for s in x.addressable_shards}) > 1 \
      and not x.sharding.is_fully_replicated
