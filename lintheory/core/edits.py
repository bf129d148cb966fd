"""Weight edits for the pruning protocol: SVD truncations and null controls of the same size.

An SVD edit keeps rank r of W [m, n] and removes ΔW = W − W_r, ‖ΔW‖_F² = Σ_{i>r} s_i²
(docs/theory.md §7). A null control makes an edit that is NOT a truncation, with exactly the same
Frobenius size ‖ΔW‖_F (and, for random directions, the same count k = min(m, n) − r):
  null_dirs    W ← W − c·W P P ᵀ, P [n, k] random orthonormal input directions, c sets the size
  null_gauss   W ← W + ΔW, ΔW Gaussian with ‖ΔW‖_F set
  null_shrink  W ← (1 − α) W, α‖W‖_F set
If pruning helps because it removes the small singular directions, the SVD edit beats these; if the
gain only comes from choosing among many perturbed models per task, the controls match it.

`svd_lowrank` is a JAX port of torch.svd_lowrank (Halko et al. 2009, Algorithm 5.1 with 4.4 for the
basis; torch's current version, M = None), the randomized SVD of the paper's code (q = r, niter = 2).
With q = min(m, n) it reconstructs W to round-off (rate 0 is a no-op only to round-off); with q = r on
a rank-r matrix it is exact to round-off, otherwise an approximation of the best rank-r matrix.
Every function is pure and jittable for a fixed rank (q sets shapes, so r must be static there).
`edit_grid` makes every kind × rank edit of one matrix for a stack of seeds in a few compiled calls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lintheory.core import prune

KINDS = ("svd", "svd_rand", "null_dirs", "null_gauss", "null_shrink")  # edit families
CONTROLS = ("null_dirs", "null_gauss", "null_shrink")  # the edits that are not SVD truncations


def _check_matrix(W) -> tuple[int, int]:
  if jnp.ndim(W) != 2:
    raise ValueError(f"W must be one matrix [m, n], got shape {jnp.shape(W)}")
  return jnp.shape(W)


def _check_rank(rank, k: int) -> int:
  if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= k:
    raise ValueError(f"rank must be an integer in [0, {k}] (= min(m, n)), got {rank!r}")
  return rank


def approximate_basis(key: jax.Array, A_MN: jax.Array, q: int, niter: int = 2) -> jax.Array:
  """Q [m, q] with orthonormal columns, Q Qᵀ A ≈ A: a Gaussian sketch and niter power iterations."""
  R = jax.random.normal(key, (A_MN.shape[-1], q), A_MN.dtype)
  Q = jnp.linalg.qr(A_MN @ R)[0]
  for _ in range(niter):  # re-orthonormalised both ways, as torch does
    Q = jnp.linalg.qr(A_MN.T @ Q)[0]
    Q = jnp.linalg.qr(A_MN @ Q)[0]
  return Q


def svd_lowrank(key: jax.Array, A_MN: jax.Array, q: int, niter: int = 2):
  """Randomized SVD (torch.svd_lowrank with M = None) → U [m, q], s [q], V [n, q]."""
  m, n = _check_matrix(A_MN)
  _check_rank(q, min(m, n))
  if niter < 0:
    raise ValueError(f"niter must be >= 0, got {niter!r}")
  A = A_MN.T if m < n else A_MN  # the sketch works on a tall matrix
  Q = approximate_basis(key, A, q, niter)
  U, s, Vh = jnp.linalg.svd(Q.T @ A, full_matrices=False)
  U, V = Q @ U, Vh.T
  return (V, s, U) if m < n else (U, s, V)


def truncate_exact(W: jax.Array, rank: int) -> jax.Array:
  """The best rank-r approximation (exact SVD); r = min(m, n) returns W itself."""
  m, n = _check_matrix(W)
  return prune.truncate(W, rank=_check_rank(rank, min(m, n)))


def truncate_randomized(key: jax.Array, W: jax.Array, rank: int, niter: int = 2) -> jax.Array:
  """U diag(s) Vᵀ from svd_lowrank with q = r, as the paper's code clips (r = 0: the zero matrix)."""
  m, n = _check_matrix(W)
  if _check_rank(rank, min(m, n)) == 0:
    return jnp.zeros_like(W)
  U, s, V = svd_lowrank(key, W, rank, niter)
  return (U * s) @ V.T


def svd_delta_norm(W: jax.Array, rank: int) -> jax.Array:
  """‖W − W_r‖_F = sqrt(Σ_{i>r} s_i²), from the exact singular values."""
  m, n = _check_matrix(W)
  _check_rank(rank, min(m, n))
  s = jnp.linalg.svd(W, compute_uv=False)
  return jnp.sqrt(jnp.sum(jnp.where(jnp.arange(s.shape[0]) >= rank, s, 0) ** 2))


def _scaled(delta: jax.Array, size: jax.Array) -> jax.Array:
  """delta rescaled to Frobenius norm `size` (0 when size is 0 or delta vanishes)."""
  norm = jnp.linalg.norm(delta)
  return jnp.where(norm > 0, delta * (size / jnp.where(norm > 0, norm, 1)), 0)


def remove_random_directions(key: jax.Array, W: jax.Array, k: int, size: jax.Array) -> jax.Array:
  """W − c·W P Pᵀ, P [n, k] Haar-random orthonormal, c chosen so that ‖ΔW‖_F = size."""
  m, n = _check_matrix(W)
  if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
    raise ValueError(f"k (directions removed) must be an integer in [0, {n}], got {k!r}")
  return _remove_directions(key, W, k, size)


def _remove_directions(key, W, k, size):
  n = W.shape[1]
  # QR of a Gaussian matrix with the signs of R's diagonal fixed: Haar-distributed columns.
  Q, R = jnp.linalg.qr(jax.random.normal(key, (n, n), W.dtype))
  P = Q * jnp.sign(jnp.diag(R)) * (jnp.arange(n) < k)  # the first k columns (a mask: k may be traced)
  return W - _scaled(W @ P @ P.T, size)


def gaussian_perturbation(key: jax.Array, W: jax.Array, size: jax.Array) -> jax.Array:
  """W + ΔW with ΔW Gaussian, rescaled to ‖ΔW‖_F = size."""
  _check_matrix(W)
  return W + _scaled(jax.random.normal(key, W.shape, W.dtype), size)


def shrink(W: jax.Array, size: jax.Array) -> jax.Array:
  """(1 − α) W with α = size / ‖W‖_F, so ‖ΔW‖_F = size."""
  _check_matrix(W)
  norm = jnp.linalg.norm(W)
  return W * (1 - size / jnp.where(norm > 0, norm, 1))


def edit(kind: str, key: jax.Array, W: jax.Array, rank: int, niter: int = 2) -> jax.Array:
  """W edited by `kind` (one of KINDS) for kept rank r; the controls match the exact SVD edit's
  ‖ΔW‖_F and drop k = min(m, n) − r directions. r = min(m, n) returns W itself except for
  svd_rand, which then changes it by round-off."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  m, n = _check_matrix(W)
  _check_rank(rank, min(m, n))
  if kind == "svd":
    return truncate_exact(W, rank)
  if kind == "svd_rand":
    return truncate_randomized(key, W, rank, niter)
  return edit_traced(kind, key, W, rank)


def edit_traced(kind: str, key: jax.Array, W: jax.Array, rank) -> jax.Array:
  """`edit` for every kind but svd_rand with a rank that may be traced (vmap over ranks, one
  compile); unvalidated, and the exact SVD at full rank is W only to round-off."""
  m, n = W.shape
  if kind == "svd":
    return prune.truncate_with_svd(*jnp.linalg.svd(W, full_matrices=False), rank)
  s = jnp.linalg.svd(W, compute_uv=False)
  size = jnp.sqrt(jnp.sum(jnp.where(jnp.arange(s.shape[0]) >= rank, s, 0) ** 2))
  if kind == "null_dirs":
    return _remove_directions(key, W, min(m, n) - rank, size)
  if kind == "null_gauss":
    return gaussian_perturbation(key, W, size)
  if kind == "null_shrink":
    return shrink(W, size)
  raise ValueError(f"kind must be one of {tuple(k for k in KINDS if k != 'svd_rand')}, got {kind!r}")


@functools.partial(jax.jit, static_argnames=("kind",))
def _edit_ranks(key, tags_R, W_SMN, ranks_R, kind):
  """One kind's edits of one matrix at every rank (traced) for every seed → [R, S, m, n]."""
  def one(tag, r):
    keys = jax.random.split(jax.random.fold_in(key, tag), W_SMN.shape[0])
    return jax.vmap(lambda k, W: edit_traced(kind, k, W, r))(keys, W_SMN)
  return jax.vmap(one)(tags_R, ranks_R)


@functools.partial(jax.jit, static_argnames=("rank", "niter"))
def _edit_rand(key, tag, W_SMN, rank, niter):
  """The randomized SVD (q = r is a shape, so one compile per rank) for every seed → [S, m, n]."""
  keys = jax.random.split(jax.random.fold_in(key, tag), W_SMN.shape[0])
  return jax.vmap(lambda k, W: truncate_randomized(k, W, rank, niter))(keys, W_SMN)


def edit_grid(key: jax.Array, tags_KR, W_SMN: jax.Array, kinds: tuple[str, ...], ranks: tuple[int, ...],
              niter: int = 2, cumulative: bool = False) -> jax.Array:
  """Every kind × rank edit of one matrix for every seed → [K, R, S, m, n] (docs/theory.md §7, §12).

  Edit (k, r) of seed s draws its randomness from split(fold_in(key, tags_KR[k, r]), S)[s], so a
  stable tag per edit gives the same edit whatever else is searched. cumulative chains the randomized
  SVD through the ranks in order (the paper's search clips the previous rate's weights); the exact
  truncations are nested, so for them it would change nothing."""
  out = []
  for i, kind in enumerate(kinds):
    if kind != "svd_rand":
      out.append(_edit_ranks(key, tags_KR[i], W_SMN, jnp.asarray(ranks), kind))
      continue
    row, prev = [], W_SMN
    for j, r in enumerate(ranks):
      prev = _edit_rand(key, tags_KR[i, j], prev if cumulative else W_SMN, r, niter)
      row.append(prev)
    out.append(jnp.stack(row))
  return jnp.stack(out)
