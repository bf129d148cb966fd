"""Models that agree before layer k share their state there (docs/theory.md §5, §7).

A pruning sweep evaluates many edits of one model; an edit first changing layer k leaves the tokens
entering layer k as they were, and so ŵ_t for t < k (the trajectory is read off those tokens). So
`base_of` runs the unedited model once and keeps the input of every layer; `predict_from` and
`trajectory_from` continue an edited model from its first changed layer k. For linear attention
without MLP the state is the demonstrations' Gram matrix C and the query token z (every token moves
by the layer's map, so C ↦ A C Aᵀ, z ↦ A z: core/fast.py); otherwise the tokens Z.
k is a Python int: the compiled program holds layers k … L−1 only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lintheory.core import fast, implicit
from lintheory.core.model import ModelConfig, Params, block, forward, forward_from


def layer_of(p: Params, j: jax.Array) -> dict:
  """Layer j's matrices of a parameter dict (j may be traced)."""
  return {name: jax.lax.dynamic_index_in_dim(W, j, keepdims=False) for name, W in p.items()}


def base_of(p: Params, Z_BTD: jax.Array, cfg: ModelConfig, analysis: bool = False) -> dict:
  """The unedited model's input to each layer: for linear attention without MLP the Gram matrices
  C [L, B, D, D] and query tokens z [L, B, D], otherwise the tokens Z [L, B, T, D]; with analysis,
  also its trajectory dW, G, W [L, B, D, D] (`implicit.trajectory`)."""
  _, states = forward(p, Z_BTD, cfg)
  states, N = states[:-1], Z_BTD.shape[1] - 1
  if cfg.is_linear:
    out = {"C": jnp.einsum("lbnd,lbne->lbde", states[:, :, :N], states[:, :, :N]), "z": states[:, :, -1]}
  else:
    out = {"Z": states}
  if analysis:
    traj = implicit.trajectory(p, Z_BTD, cfg)
    out.update(dW=traj.delta_W, G=traj.G, W=traj.W_traj)
  return out


def predict_from(p: Params, base: dict, k: int, cfg: ModelConfig, N: int) -> jax.Array:
  """ŷ [B] of params p that equal the base model's in layers < k, from base_of's inputs to layer k.

  The layers from k on run through `model.forward_from` (the last for the query only), or for linear
  attention its Gram fast path `fast.forward_gram`. k = L − 1 for the unedited model. Equals
  model.forward of p to round-off.
  """
  k = int(k)
  p_k = {n: v[k:] for n, v in p.items()}
  if cfg.is_linear:
    return fast.forward_gram(p_k, base["C"][k], base["z"][k], N)
  Z = base["Z"][k]
  return forward_from(p_k, Z[:, :N], Z[:, N:], cfg)[:, 0]


def trajectory_from(p: Params, base: dict, k: int, cfg: ModelConfig, N: int):
  """(ΔW_t, G_t, ŵ_t) [L, B, …] of params p that equal the base model's in layers < k, as
  `implicit.trajectory`: the base model's for t < k (bit-exact), recomputed from layer k on."""
  k = int(k)
  L = base["dW"].shape[0]
  if not cfg.is_linear:
    step = lambda j, S: S.at[j + 1].set(block(layer_of(p, j), S[j], cfg))
    S = jax.lax.fori_loop(k, L - 1, step, base["Z"])
    dW = jax.vmap(implicit.delta_W)(implicit.layer_weights(p), S[:, :, :N])
    G, W = implicit.recurrence(dW)
    return dW, G, implicit.predictor(W)
  C, dW = base["C"][k], []
  for j in range(k, L):
    dW.append(fast.layer_map({n: v[j] for n, v in p.items()}, C, N))
    if j < L - 1:
      C = fast.moved(dW[-1] + jnp.eye(C.shape[-1], dtype=C.dtype), C)
  G, W = implicit.recurrence(jnp.stack(dW), base["W"][k - 1] if k > 0 else None)
  join = lambda b, new: jnp.concatenate([b[:k], new])
  return join(base["dW"], jnp.stack(dW)), join(base["G"], G), implicit.predictor(join(base["W"], W))
