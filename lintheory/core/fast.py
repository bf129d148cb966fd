"""The linear-attention forward pass carried through per-task Gram matrices (docs/theory.md §2).

With linear attention and no MLP, a layer maps every token by the same per-task matrix. In the row
layout of `model.attention` (one head; heads add up, W_O multiplies on the left):
  out = Z W_Qᵀ W_K C W_Vᵀ / N,   C = Z_sᵀ Z_s  (the demonstrations' Gram matrix, [D, D]),
so h ← (I + M) h in column form with M = W_O Σ_h W_V C W_Kᵀ W_Q / N. The demonstrations move with
the same map, hence C ← (I + M) C (I + M)ᵀ, and the query q ← (I + M) q. The forward pass needs only
C [B, D, D] and q [B, D]: O(B D³) per layer instead of O(B T D²) for the T = N + 1 tokens, and no
[B, T, D] activations to keep for the backward pass.

XLA:CPU runs a batched product of tiny matrices one task at a time (~0.5 µs each whatever its
size), so the form is arranged to need few of them:
  * the last two layers need C only through matrix-vector products: ŷ reads the y-row of the last
    layer's M, u C_{L-1} with u a parameter row, and u C_{L-1} = ((u A) C_{L-2}) Aᵀ for the previous
    layer's A = I + M. A model of L layers updates C L − 2 times (2 per-task products each);
  * a per-task product of matrices up to UNROLL_MAX wide runs as a sum of outer products (one fused
    elementwise loop over the batch), with a hand-written VJP of the same form: 8× faster than the
    batched dot at D = 6, slower at D = 11 (benchmarks/train_step.py);
  * the layers are unrolled in Python (L is small; a scan body blocks fusion across layers).
ŷ is linear in the query, so `forward_gram` (training) and `w_hat` (evaluation) share one path,
`readout_row`: the row r with ŷ = −r·q, carried back through the layers' A. `layer` and `readout`
are the direct forward form on (C, q) that the tests hold it to.
Training builds C from the tasks (X, y) directly (`gram_tasks`), never forming the [B, T, D] tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lintheory.core.model import ModelConfig, Params, heads


def gram_of(Zs_BND: jax.Array) -> jax.Array:
  """The demonstrations' Gram matrix C = Z_sᵀ Z_s [B, D, D] from their tokens [B, N, D]."""
  return jnp.einsum("bni,bnj->bij", Zs_BND, Zs_BND)


def gram(Z_BTD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Tokens [B, T, D] → (C = Z_sᵀ Z_s [B, D, D] over the demonstrations, the query q [B, D])."""
  return gram_of(Z_BTD[:, :-1]), Z_BTD[:, -1]


def gram_tasks(X_BND: jax.Array, y_BN: jax.Array, x_q_BD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`gram` of `tasks.tokens(X, y, x_q)` without the query token: C [B, d+1, d+1], q = [x_q; 0]."""
  q = jnp.concatenate([x_q_BD, jnp.zeros_like(x_q_BD[:, :1])], axis=-1)
  return gram_of(jnp.concatenate([X_BND, y_BN[..., None]], axis=-1)), q


def _value_maps(p: dict[str, jax.Array], N: int) -> tuple[jax.Array, jax.Array]:
  """(W_O W_V [H, D, D], W_Kᵀ W_Q / N [H, D, D]): the parameter-only factors of M, once per batch."""
  W_Q, W_K, W_V = heads(p["W_Q"]), heads(p["W_K"]), heads(p["W_V"])
  G_HDD = jnp.einsum("hki,hkj->hij", W_K, W_Q) / N
  if "W_O" in p:
    W_V = jnp.einsum("ij,hjk->hik", p["W_O"], W_V)
  return W_V, G_HDD


def layer_map(p: dict[str, jax.Array], C_BDD: jax.Array, N: int) -> jax.Array:
  """M [B, D, D] of one layer: h ← (I + M) h for every token of the task (column form); M = ΔW_t,
  Lemma 1's update (docs/theory.md §4) from the Gram matrix C of the layer's input demonstrations."""
  W_V, G_HDD = _value_maps(p, N)
  if W_V.shape[0] == 1:  # two plain matmuls over the whole batch, no per-task product
    return jnp.einsum("ij,bjk->bik", W_V[0], C_BDD) @ G_HDD[0]
  return jnp.einsum("hij,bjk,hkl->bil", W_V, C_BDD, G_HDD)


UNROLL_MAX = 8  # per-task products of matrices up to this wide run as fused sums of outer products


def _outer_sum(A_BIK: jax.Array, B_BKJ: jax.Array) -> jax.Array:
  """A @ B per task as Σ_k A[:, :, k] ⊗ B[:, k, :]: one elementwise fusion, no batched dot."""
  out = A_BIK[..., :, 0, None] * B_BKJ[..., None, 0, :]
  for k in range(1, A_BIK.shape[-1]):
    out = out + A_BIK[..., :, k, None] * B_BKJ[..., None, k, :]
  return out


def _product(A, B):
  return _outer_sum(A, B) if A.shape[-1] <= UNROLL_MAX else A @ B


@jax.custom_vjp
def bmm(A_BIK: jax.Array, B_BKJ: jax.Array) -> jax.Array:
  """Per-task product A @ B [B, I, J] whose forward and backward both take the faster form."""
  return _product(A_BIK, B_BKJ)


def _bmm_fwd(A, B):
  return _product(A, B), (A, B)


def _bmm_bwd(res, g):
  A, B = res
  return _product(g, jnp.swapaxes(B, -1, -2)), _product(jnp.swapaxes(A, -1, -2), g)


bmm.defvjp(_bmm_fwd, _bmm_bwd)


def moved(A_BDD: jax.Array, C_BDD: jax.Array) -> jax.Array:
  """A C Aᵀ [B, D, D]: the Gram matrix of demonstrations that the map A moved (h ← A h)."""
  return bmm(bmm(A_BDD, C_BDD), jnp.swapaxes(A_BDD, -1, -2))


def _mv(A_BIJ: jax.Array, v_BJ: jax.Array) -> jax.Array:
  """A v per task [B, I]."""
  return jnp.einsum("bij,bj->bi", A_BIJ, v_BJ)


def layer(p: dict[str, jax.Array], C_BDD: jax.Array, q_BD: jax.Array, N: int):
  """One layer on (C, q): C ← (I + M) C (I + M)ᵀ, q ← (I + M) q."""
  M = layer_map(p, C_BDD, N)
  A = M + jnp.eye(C_BDD.shape[-1], dtype=C_BDD.dtype)
  return moved(A, C_BDD), q_BD + _mv(M, q_BD)


def readout(p: dict[str, jax.Array], C_BDD: jax.Array, q_BD: jax.Array, N: int) -> jax.Array:
  """ŷ [B] after a last layer: −(q + M q)[-1], through the last row of M only (O(B D²))."""
  W_V, G_HDD = _value_maps(p, N)
  m_BD = jnp.einsum("hj,bjk,hkl->bl", W_V[:, -1], C_BDD, G_HDD)
  return -(q_BD[:, -1] + jnp.einsum("bj,bj->b", m_BD, q_BD))


def forward_gram(params: Params, C_BDD: jax.Array, q_BD: jax.Array, N: int) -> jax.Array:
  """ŷ [B] from the demonstrations' Gram matrix C and the query q (N demonstrations): −r·q with r
  the readout row (ŷ is linear in the query)."""
  return -jnp.einsum("bi,bi->b", readout_row(params, C_BDD, N), q_BD)


def readout_row(params: Params, C_BDD: jax.Array, N: int) -> jax.Array:
  """r [B, D] with ŷ = −r·q for the input query q of these layers (the model is linear in q).

  ŷ = −(e_y + m)ᵀ A_{L−2} ⋯ A_0 q, with m the y-row of the last layer's M: r is the row vector
  e_y + m carried back through the layers' A = I + M, a matrix-vector product per layer.
  """
  L, D = params["W_Q"].shape[0], C_BDD.shape[-1]
  at = lambda l: {k: v[l] for k, v in params.items()}
  eye = jnp.eye(D, dtype=C_BDD.dtype)
  As = []
  for l in range(L - 2):
    A = layer_map(at(l), C_BDD, N) + eye
    C_BDD = moved(A, C_BDD)
    As.append(A)
  W_V, G_HDD = _value_maps(at(L - 1), N)
  u_HD = W_V[:, -1]
  if L == 1:
    m_BD = jnp.einsum("hj,bjk,hkl->bl", u_HD, C_BDD, G_HDD)
  else:
    M = layer_map(at(L - 2), C_BDD, N)
    uA_BHD = u_HD + jnp.einsum("hj,bjk->bhk", u_HD, M)
    uAC_BHD = jnp.einsum("bhj,bjk->bhk", uA_BHD, C_BDD)
    r_BHD = uAC_BHD + jnp.einsum("bhk,bik->bhi", uAC_BHD, M)  # (u A C) Aᵀ
    m_BD = jnp.einsum("bhk,hkl->bl", r_BHD, G_HDD)
    As.append(M + eye)
  r_BD = m_BD + eye[-1]
  for A in reversed(As):
    r_BD = jnp.einsum("bi,bij->bj", r_BD, A)
  return r_BD


def w_hat(params: Params, C_BDD: jax.Array, N: int) -> jax.Array:
  """The implicit predictor ŵ [B, d] (ŷ = ŵ·x_q, docs/theory.md §5) from the Gram matrix alone."""
  return -readout_row(params, C_BDD, N)[:, :-1]


def prefix(params: Params, C_BDD: jax.Array, N: int, l: int) -> tuple[jax.Array, jax.Array]:
  """(C_l, P_l): the Gram matrix entering layer l and the map P_l = A_{l−1} ⋯ A_0 [B, D, D] of the
  first l layers, so that a model equal to these params before layer l has
  ŵ = −(readout_row(its layers l…, C_l) P_l)[:d]: models that differ from layer l on share them."""
  P_BDD = jnp.broadcast_to(jnp.eye(C_BDD.shape[-1], dtype=C_BDD.dtype), C_BDD.shape)
  for j in range(l):
    A = layer_map({k: v[j] for k, v in params.items()}, C_BDD, N) + jnp.eye(C_BDD.shape[-1], dtype=C_BDD.dtype)
    C_BDD, P_BDD = moved(A, C_BDD), bmm(A, P_BDD)
  return C_BDD, P_BDD


def w_hat_from(params_from_l: Params, C_l: jax.Array, P_l: jax.Array, N: int) -> jax.Array:
  """ŵ [B, d] of a model whose layers from l on are params_from_l and whose first l layers are
  those `prefix` ran (C_l, P_l)."""
  return -jnp.einsum("bi,bij->bj", readout_row(params_from_l, C_l, N), P_l[:, :, :-1])


def forward(params: Params, Z_BTD: jax.Array, cfg: ModelConfig | None = None) -> jax.Array:
  """ŷ [B] of `model.forward` (same tokens, same parameters) through (C, q) only."""
  cfg = ModelConfig.from_params(params) if cfg is None else cfg
  if not cfg.is_linear:
    raise ValueError(f"the Gram-matrix forward needs linear attention without MLP, got "
                     f"attention={cfg.attention!r} mlp={cfg.mlp!r}")
  if Z_BTD.ndim != 3 or Z_BTD.shape[-1] != cfg.D or Z_BTD.shape[1] < 2:
    raise ValueError(f"Z_BTD must have shape (B, N+1, {cfg.D}) with N >= 1, got {Z_BTD.shape}")
  return forward_gram(params, *gram(Z_BTD), Z_BTD.shape[1] - 1)
