"""The forward pass as implicit gradient descent: Lemma 1 and Theorem 1 (docs/theory.md §4–5).

For layer t with input tokens h_i^{t-1}:
  ΔW_t = (1/N) Σ_i (W_V h_i)(W_K h_i)ᵀ W_Q          (per head, summed; W_O folded into W_V)
  G_t  = ΔW_t (I + W_{t-1}),  W_t = W_{t-1} + G_t,  W_0 = 0,  ŵ_t = −W_t[y, :d]
and the query obeys h_{N+1}^t = (I + W_t) h_{N+1}^0 exactly for linear attention without MLP.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lintheory.core.model import ModelConfig, Params, config_of, forward, heads


class Trajectory(NamedTuple):
  delta_W: jax.Array  # [L, B, D, D] ΔW_t
  G: jax.Array  # [L, B, D, D] G_t
  W_traj: jax.Array  # [L, B, D, D] W_t (after layer t = 1..L)
  w_hat: jax.Array  # [L, B, d] implicit predictor ŵ_t = −W_t[y, :d]
  states: jax.Array  # [L+1, B, T, D] forward-pass token states


def value_maps(params: Params) -> jax.Array:
  """W_V per head with W_O folded in → [L, H, D, D] (the attention output is W_O Σ_h …)."""
  W_V = jax.vmap(heads)(params["W_V"])
  if "W_O" in params:
    W_V = jnp.einsum("lef,lhfg->lheg", params["W_O"], W_V)
  return W_V


def per_demo_delta_W(params_t: dict, Zs_BND: jax.Array) -> jax.Array:
  """Lemma 1's terms (1/N)(W_V h_i)(W_K h_i)ᵀ W_Q, summed over heads → [B, N, D, D]."""
  N = Zs_BND.shape[1]
  v = jnp.einsum("hef,bnf->bhne", params_t["W_V"], Zs_BND)
  k = jnp.einsum("hef,bnf->bhne", params_t["W_K"], Zs_BND)
  return jnp.einsum("bhne,bhnf,hfg->bneg", v, k, params_t["W_Q"]) / N


def delta_W(params_t: dict, Zs_BND: jax.Array) -> jax.Array:
  """ΔW_t = (1/N) W_V (H_s H_sᵀ) W_Kᵀ W_Q summed over heads → [B, D, D]."""
  N = Zs_BND.shape[1]
  C = jnp.einsum("bnd,bne->bde", Zs_BND, Zs_BND)
  return jnp.einsum("hef,bfg,hkg,hkl->bel", params_t["W_V"], C, params_t["W_K"], params_t["W_Q"]) / N


def layer_weights(params: Params) -> dict:
  """What Lemma 1 needs of every layer: W_Q and W_K per head, W_V per head with W_O folded in → each
  [L, H, D, D] (one head gets a head axis of 1)."""
  return {"W_Q": jax.vmap(heads)(params["W_Q"]), "W_K": jax.vmap(heads)(params["W_K"]),
          "W_V": value_maps(params)}


def recurrence(dW_LBDD: jax.Array, W_prev_BDD: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Theorem 1's recurrence over the layers of dW_LBDD: G_t = ΔW_t (I + W_{t−1}), W_t = W_{t−1} + G_t,
  from W_prev (default W_0 = 0) → (G, W) [L, B, D, D] (docs/theory.md §5)."""
  eye = jnp.eye(dW_LBDD.shape[-1], dtype=dW_LBDD.dtype)

  def step(W_prev, dW_t):
    G_t = dW_t @ (eye + W_prev)
    W_t = W_prev + G_t
    return W_t, (G_t, W_t)

  _, (G, W) = jax.lax.scan(step, jnp.zeros_like(dW_LBDD[0]) if W_prev_BDD is None else W_prev_BDD, dW_LBDD)
  return G, W


def predictor(W_BDD: jax.Array) -> jax.Array:
  """ŵ = −W[y, :d] [..., d]: the implicit predictor of the accumulated W_t (ŷ = ŵ·x_q)."""
  D = W_BDD.shape[-1]
  return -W_BDD[..., D - 1, : D - 1]


def trajectory(params: Params, Z_BTD: jax.Array, cfg: ModelConfig | None = None) -> Trajectory:
  """Theorem 1's (ΔW_t, G_t, W_t, ŵ_t) for every layer, read off the forward pass's states.

  For softmax or MLP models the quantities are still defined from the attention weights, but
  the identity h^t = (I + W_t) h^0 does not hold; see `checks.trajectory_identity`.
  """
  cfg = config_of(params, cfg)
  _, states = forward(params, Z_BTD, cfg)
  N = Z_BTD.shape[1] - 1
  dW = jax.vmap(delta_W)(layer_weights(params), states[:-1, :, :N])
  G, W_traj = recurrence(dW)
  return Trajectory(dW, G, W_traj, predictor(W_traj), states)


def per_demo_G(params: Params, traj: Trajectory) -> jax.Array:
  """Per-demonstration terms of G_t, g_{t,i} = ΔW_{t,i}(I + W_{t-1}), Σ_i g_{t,i} = G_t → [L, B, N, D, D]."""
  N = traj.states.shape[2] - 1
  D = traj.states.shape[-1]
  dW_i = jax.vmap(per_demo_delta_W)(layer_weights(params), traj.states[:-1, :, :N])
  W_prev = jnp.concatenate([jnp.zeros_like(traj.W_traj[:1]), traj.W_traj[:-1]], axis=0)
  return jnp.einsum("lbnde,lbef->lbndf", dW_i, jnp.eye(D, dtype=W_prev.dtype) + W_prev)


def implicit_predictions(traj: Trajectory, x_q_BD: jax.Array) -> jax.Array:
  """ŷ_t = ŵ_t·x_q → [L, B]."""
  return jnp.einsum("lbd,bd->lb", traj.w_hat, x_q_BD)


def reconstructed_queries(traj: Trajectory) -> jax.Array:
  """(I + W_t) h_{N+1}^0 for every layer → [L, B, D]."""
  h0 = traj.states[0, :, -1]
  return h0[None] + jnp.einsum("lbde,be->lbd", traj.W_traj, h0)
