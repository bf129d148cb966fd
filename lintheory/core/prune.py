"""SVD pruning of the weight matrices, by clipping rate ξ or by rank (docs/theory.md §7).

W = U S Vᵀ (exact SVD) is replaced by its best rank-r approximation U[:, :r] S[:r] V[:, :r]ᵀ
(Eckart–Young: ‖W − W_r‖_F² = Σ_{i>r} s_i²). A clipping rate ξ ∈ [0, 1) keeps
r = int(min(m, n)·(1 − ξ)); ξ = 0 (or r = min(m, n)) returns the weights bit-identical.
Every function is pure: the parameter dict passed in is never modified.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core.model import Params

# The paper's candidate clipping rates (docs/theory.md §7).
PAPER_RATES = (0.0, 0.1, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995)
# Module name → the parameter names it prunes ("attn" and "all" take what the model has).
MODULES = {"q": ("W_Q",), "k": ("W_K",), "v": ("W_V",), "o": ("W_O",),
           "attn": ("W_Q", "W_K", "W_V", "W_O"), "mlp": ("W_1", "W_2"),
           "all": ("W_Q", "W_K", "W_V", "W_O", "W_1", "W_2")}
# min(m, n)·(1 − ξ) is floored after adding this, so float64 round-off such as 10·(1 − 0.9) =
# 0.9999999999999998 still keeps the rank the exact arithmetic gives (docs/theory.md §7).
_RATE_TOL = 1e-9


def rank_for_rate(m: int, n: int, xi: float) -> int:
  """r = ⌊min(m, n)·(1 − ξ) + 1e-9⌋: the rank kept at clipping rate ξ ∈ [0, 1)."""
  if isinstance(xi, bool) or not isinstance(xi, (int, float, np.floating, np.integer)) \
      or not math.isfinite(xi) or not 0 <= xi < 1:
    raise ValueError(f"xi (clipping rate) must be a number in [0, 1), got {xi!r}")
  for name, v in (("m", m), ("n", n)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
  k = min(m, n)
  return min(k, int(math.floor(k * (1.0 - float(xi)) + _RATE_TOL)))


def _check_rank(rank, k: int, what: str = "rank") -> int:
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank <= k:
    raise ValueError(f"{what} must be an integer in [0, {k}] (= min(m, n)), got {rank!r}")
  return int(rank)


def _one_of(xi, rank) -> None:
  if (xi is None) == (rank is None):
    raise ValueError(f"give exactly one of xi (clipping rate) and rank, got xi={xi!r}, rank={rank!r}")


def kept_rank(shape: Sequence[int], *, xi=None, rank=None) -> int:
  """The rank a matrix of shape [..., m, n] keeps for ξ or r (validated)."""
  _one_of(xi, rank)
  m, n = int(shape[-2]), int(shape[-1])
  return rank_for_rate(m, n, xi) if xi is not None else _check_rank(rank, min(m, n))


def truncate(W, *, xi=None, rank=None):
  """Best rank-r approximation of every trailing [m, n] matrix of W [..., m, n].

  ξ = 0 or r = min(m, n) returns W itself (bit-identical, same object).
  """
  if np.ndim(W) < 2:
    raise ValueError(f"W must have shape [..., m, n], got {np.shape(W)}")
  r = kept_rank(np.shape(W), xi=xi, rank=rank)
  if r == min(np.shape(W)[-2:]):
    return W
  return truncate_with_svd(*jnp.linalg.svd(jnp.asarray(W), full_matrices=False), r)


def truncate_with_svd(U, s, Vh, r) -> jax.Array:
  """U diag(s·[i < r]) Vᵀ: truncation as a mask on the singular values (r may be traced)."""
  keep = jnp.arange(s.shape[-1]) < jnp.asarray(r)[..., None]
  return (U * jnp.where(keep, s, 0)[..., None, :]) @ Vh


def masked_params(params: Params, svd: dict, keep: dict) -> Params:
  """Truncate every matrix to keep[name] [L] via the precomputed SVD; full rank stays bit-exact."""
  out = dict(params)
  for name, (U, s, Vh) in svd.items():
    W, k = params[name], s.shape[-1]
    r = jnp.broadcast_to(keep[name].reshape(keep[name].shape + (1,) * (s.ndim - 2)), s.shape[:-1])
    W_r = truncate_with_svd(U, s, Vh, r)
    out[name] = jnp.where(r[..., None, None] >= k, W, W_r.astype(W.dtype))
  return out


def module_names(params: Params, module: str) -> tuple[str, ...]:
  """The parameter names `module` prunes in this model; ValueError if unknown or absent."""
  if module not in MODULES:
    raise ValueError(f"module must be one of {tuple(MODULES)}, got {module!r}")
  names = tuple(n for n in MODULES[module] if n in params)
  if not names:
    raise ValueError(f"module {module!r} is absent in this model (it needs {MODULES[module]}, "
                     f"the parameters are {tuple(sorted(params))})")
  return names


def layer_list(layers, n_layers: int) -> tuple[int, ...]:
  """An int or a sequence of layer indices (from 0) → a validated tuple."""
  ls = (layers,) if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool) else layers
  try:
    ls = tuple(ls)
  except TypeError:
    raise ValueError(f"layers must be an int or a sequence of ints, got {layers!r}") from None
  if not ls:
    raise ValueError("layers must name at least one layer")
  for l in ls:
    if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or not 0 <= l < n_layers:
      raise ValueError(f"layer index must be an integer in [0, {n_layers - 1}] (layers count from 0), "
                       f"got {l!r}")
  return tuple(int(l) for l in ls)


def prune(params: Params, layers, module: str, *, xi=None, rank=None) -> Params:
  """A new parameter dict with `module` of the given layer(s) truncated to rate ξ or rank r."""
  _one_of(xi, rank)
  names = module_names(params, module)
  ls = layer_list(layers, params["W_Q"].shape[0])
  out = dict(params)
  for name in names:
    W = params[name]
    r = kept_rank(np.shape(W), xi=xi, rank=rank)
    if r == min(np.shape(W)[-2:]):
      continue  # nothing to drop: keep the array itself
    W_new = jnp.asarray(W)
    for l in ls:
      W_new = W_new.at[l].set(truncate(W_new[l], rank=r))
    out[name] = W_new
  return out


# --- spectra and condition numbers (the paper's Fig. 3) -------------------------------------


def spectra(params: Params) -> dict[str, np.ndarray]:
  """Singular values, descending, of every matrix: name → [L, (H,) k] (float64)."""
  return {name: np.linalg.svd(np.asarray(W, np.float64), compute_uv=False)
          for name, W in sorted(params.items())}


def condition_numbers(params: Params) -> dict[str, np.ndarray]:
  """σ_max/σ_min of every matrix: name → [L] ([L, H] with heads); inf when singular.

  Singular means σ_min ≤ σ_max·max(m, n)·ε (numpy's matrix_rank tolerance, ε of the stored dtype).
  """
  out = {}
  for name, s in spectra(params).items():
    W = params[name]
    eps = np.finfo(np.asarray(W).dtype).eps if np.issubdtype(np.asarray(W).dtype, np.floating) else 0.0
    tol = s[..., 0] * max(np.shape(W)[-2:]) * eps
    s_min = s[..., -1]
    with np.errstate(divide="ignore", invalid="ignore"):
      out[name] = np.where(s_min > tol, s[..., 0] / np.where(s_min > 0, s_min, 1), np.inf)
  return out


def apply_edits(params_S: dict, edits: list[tuple]) -> dict:
  """Every edit applied to every seed's parameters ([S, L, D, D] arrays) → [E·S, L, D, D], edit-major.
  An edit is (kind, a, b): ("attn" | "v", layer a, rank b) truncates that module of layer a to rank b,
  ("drop", k, None) zeroes W_V of the last k layers, ("shrink", c, None) scales the last layer's W_V by c.

  The truncations come from one SVD per matrix (docs/theory.md §7), in numpy: no compilation per
  (layer, rank), which would dominate the study's time.
  """
  p = {k: np.asarray(v, np.float64) for k, v in params_S.items()}
  trunc = {}  # name → [rank] the rank-r truncation of every seed's and layer's matrix
  for name in ("W_Q", "W_K", "W_V"):
    U, s, Vh = np.linalg.svd(p[name])
    trunc[name] = [np.asarray(truncate_with_svd(U, s, Vh, r)) for r in range(s.shape[-1])]
  out = []
  for kind, a, b in edits:
    q = {k: v.copy() for k, v in p.items()}
    if kind in ("attn", "v"):
      for name in module_names(p, kind):
        q[name][:, a] = trunc[name][b][:, a] if b < len(trunc[name]) else p[name][:, a]
    elif kind == "drop":  # W_V = 0 makes ΔW_t = 0: the layer passes its tokens on unchanged
      q["W_V"][:, q["W_V"].shape[1] - a:] = 0
    elif kind == "shrink":
      q["W_V"][:, -1] *= a
    else:
      raise ValueError(f"edit kind must be attn, v, drop or shrink, got {kind!r}")
    out.append(q)
  return {k: np.concatenate([q[k] for q in out]) for k in p}


def padded_as_truncated(params_S: dict, M: int, N: int) -> dict:
  """Parameters whose run on an M-demonstration prompt equals these on it zero-padded to N tokens.

  Zero tokens stay zero and add nothing to linear attention's sums, which keep their 1/N: each
  layer is the same with W_V scaled by M/N (tests/test_mismatch.py checks it in float64).
  """
  return {**params_S, "W_V": params_S["W_V"] * (M / N)}
