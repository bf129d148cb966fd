"""The linear-attention forward pass carried through per-task Gram matrices (docs/theory.md §2).

With linear attention and no MLP, a layer maps every token by the same per-task matrix. In the row
layout of `model.attention` (one head; heads add up, W_O multiplies on the left):
  out = Z W_Qᵀ W_K C W_Vᵀ / N,   C = Z_sᵀ Z_s  (the demonstrations' Gram matrix, [D, D]),
so h ← (I + M) h in column form with M = W_O Σ_h W_V C W_Kᵀ W_Q / N. The demonstrations move with
the same map, hence C ← (I + M) C (I + M)ᵀ, and the query q ← (I + M) q. The forward pass needs only
C [B, D, D] and q [B, D]: O(B D³) per layer instead of O(B T D²) for the T = N + 1 tokens, and no
[B, T, D] activations to keep for the backward pass.

`model.forward` stays the reference (and the one the analysis uses, since it exposes every token);
this form is for training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lintheory.core.model import ModelConfig, Params, heads


def applies(cfg: ModelConfig) -> bool:
  """True when every layer is linear attention (any heads, with or without W_O) and no MLP."""
  return cfg.attention == "linear" and cfg.mlp is None


def gram(Z_BTD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Tokens [B, T, D] → (C = Z_sᵀ Z_s [B, D, D] over the demonstrations, the query q [B, D])."""
  Zs = Z_BTD[:, :-1]
  return jnp.einsum("bni,bnj->bij", Zs, Zs), Z_BTD[:, -1]


def layer_map(p: dict[str, jax.Array], C_BDD: jax.Array, N: int) -> jax.Array:
  """M [B, D, D] of one layer: h ← (I + M) h for every token of the task (column form)."""
  W_Q, W_K, W_V = heads(p["W_Q"]), heads(p["W_K"]), heads(p["W_V"])
  G_HDD = jnp.einsum("hki,hkj->hij", W_K, W_Q) / N  # W_Kᵀ W_Q / N: parameters only, once per batch
  if W_Q.shape[0] == 1:  # two plain matmuls over the whole batch, no per-task product
    M = jnp.einsum("ij,bjk->bik", W_V[0], C_BDD) @ G_HDD[0]
  else:
    M = jnp.einsum("hij,bjk,hkl->bil", W_V, C_BDD, G_HDD)
  if "W_O" in p:
    M = jnp.einsum("ij,bjk->bik", p["W_O"], M)
  return M


def layer(p: dict[str, jax.Array], C_BDD: jax.Array, q_BD: jax.Array, N: int):
  """One layer on (C, q): C ← (I + M) C (I + M)ᵀ, q ← (I + M) q."""
  M = layer_map(p, C_BDD, N)
  A = M + jnp.eye(C_BDD.shape[-1], dtype=C_BDD.dtype)
  C_BDD = A @ C_BDD @ jnp.swapaxes(A, -1, -2)
  return C_BDD, q_BD + jnp.einsum("bij,bj->bi", M, q_BD)


def forward(params: Params, Z_BTD: jax.Array, cfg: ModelConfig | None = None) -> jax.Array:
  """ŷ [B] of `model.forward` (same tokens, same parameters) through (C, q) only."""
  cfg = ModelConfig.from_params(params) if cfg is None else cfg
  if not applies(cfg):
    raise ValueError(f"the Gram-matrix forward needs linear attention without MLP, got "
                     f"attention={cfg.attention!r} mlp={cfg.mlp!r}")
  if Z_BTD.ndim != 3 or Z_BTD.shape[-1] != cfg.D or Z_BTD.shape[1] < 2:
    raise ValueError(f"Z_BTD must have shape (B, N+1, {cfg.D}) with N >= 1, got {Z_BTD.shape}")
  N = Z_BTD.shape[1] - 1
  C, q = gram(Z_BTD)

  def step(carry, p):
    return layer(p, *carry, N), None

  (_, q), _ = jax.lax.scan(step, (C, q), params)
  return -q[:, -1]
