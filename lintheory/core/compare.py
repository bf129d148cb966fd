"""How close a model's implicit trajectory is to explicit learners (docs/theory.md §3, §5, §9).

Per layer t: cosine and relative L2 distance between the implicit predictor ŵ_t (Theorem 1) and a
reference's iterate w_t, mean |ŷ_model,t − ŷ_ref,t|, and the loss of each; von Oswald's "model
cos" (cosine of ∂ŷ/∂x_q); the interpolation test's aligned merged weights. Pure and jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lintheory.core import implicit
from lintheory.core.model import ModelConfig, Params, forward
from lintheory.core.tasks import Batch, tokens

def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine of the last axis; 0 where either vector is 0."""
  na, nb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
  return jnp.sum(a * b, axis=-1) / jnp.maximum(na * nb, jnp.finfo(a.dtype).tiny)


def rel_l2(a: jax.Array, b: jax.Array) -> jax.Array:
  """‖a − b‖ / ‖b‖ over the last axis (b is the reference)."""
  return jnp.linalg.norm(a - b, axis=-1) / jnp.maximum(jnp.linalg.norm(b, axis=-1), jnp.finfo(b.dtype).tiny)


def mse(y_hat: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared error over the last axis (the tasks)."""
  return jnp.mean((y_hat - y) ** 2, axis=-1)


def query_grad(params: Params, batch: Batch, cfg: ModelConfig | None = None) -> jax.Array:
  """∂ŷ/∂x_q per task → [B, d]; for linear attention it is ŵ_L, in general it is autodiff's."""
  f = lambda x_q: jnp.sum(forward(params, tokens(batch.X, batch.y, x_q), cfg)[0])
  return jax.grad(f)(batch.x_q)  # tasks are independent, so the sum's gradient is per task


def compare(w_hat_LBd, y_model_LB, w_ref_LBd, y_ref_LB, y_q_B) -> dict[str, jax.Array]:
  """Per-layer means over tasks → each [L]: cos, rel_l2, pred_abs_diff, and the reference's loss."""
  return {"cos": jnp.mean(cosine(w_hat_LBd, w_ref_LBd), -1), "rel_l2": jnp.mean(rel_l2(w_hat_LBd, w_ref_LBd), -1),
          "pred_abs_diff": jnp.mean(jnp.abs(y_model_LB - y_ref_LB), -1), "loss": mse(y_ref_LB, y_q_B)}


# --- the interpolation test (von Oswald et al. 2023) -------------------------------------------


def merged(params: Params) -> tuple[jax.Array, jax.Array]:
  """(W_KQ = W_Kᵀ W_Q, W_PV = W_O W_V) per layer → [L, D, D] each; one head only.

  A layer computes (1/N) W_PV H_s H_sᵀ W_KQ h, so (W_K, W_Q, W_V) = (I, W_KQ, W_PV) is the same
  layer: the merged pair removes the rotation symmetry W_K, W_Q → R W_K, R W_Q.
  """
  if params["W_Q"].ndim != 3:
    raise ValueError(f"merged() needs one head per layer (W_Q of shape (L, D, D)), got {params['W_Q'].shape}")
  W_PV = implicit.value_maps(params)[:, 0]
  return jnp.einsum("led,lef->ldf", params["W_K"], params["W_Q"]), W_PV


def align(W_KQ: jax.Array, W_PV: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Rescale (W_KQ/s, W_PV·s) with s = mean diag of W_KQ's x-block, as in the GD construction (s = 1).

  The layer depends only on the product, so this is the same model; the sign goes with s.
  """
  d = W_KQ.shape[-1] - 1
  s = jnp.trace(W_KQ[:, :d, :d], axis1=-2, axis2=-1) / d
  s = jnp.where(jnp.abs(s) > jnp.finfo(W_KQ.dtype).tiny, s, 1.0)
  return W_KQ / s[:, None, None], W_PV * s[:, None, None]


def interpolate(params: Params, params_ref: Params, alpha: float = 0.5) -> Params:
  """(1 − α)·trained + α·reference in the aligned merged form, as (W_K, W_Q, W_V) = (I, W_KQ, W_PV)."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  if params["W_Q"].shape[0] != params_ref["W_Q"].shape[0]:
    raise ValueError(f"the models have {params['W_Q'].shape[0]} and {params_ref['W_Q'].shape[0]} layers")
  (KQ, PV), (KQ_r, PV_r) = align(*merged(params)), align(*merged(params_ref))
  KQ_r, PV_r = KQ_r.astype(KQ.dtype), PV_r.astype(PV.dtype)
  eye = jnp.broadcast_to(jnp.eye(KQ.shape[-1], dtype=KQ.dtype), KQ.shape)
  return {"W_K": eye, "W_Q": (1 - alpha) * KQ + alpha * KQ_r, "W_V": (1 - alpha) * PV + alpha * PV_r}


def effective_steps(params: Params) -> dict[str, jax.Array]:
  """Per layer, the GD++ reading of aligned merged weights → each [L].

  eta_eff = −W_PV[y, y] (the GD step), gamma_eff = −mean diag W_PV[:d, :d] (GD++'s input
  transform), KQ_dev = ‖W_KQ[:d, :d] − I‖_F / √d (how far the aligned W_KQ is from the identity
  that plain and GD++ steps use: a preconditioner shows up here).
  """
  KQ, PV = align(*merged(params))
  d = KQ.shape[-1] - 1
  return {"eta_eff": -PV[:, d, d], "gamma_eff": -jnp.trace(PV[:, :d, :d], axis1=-2, axis2=-1) / d,
          "KQ_dev": jnp.linalg.norm(KQ[:, :d, :d] - jnp.eye(d, dtype=KQ.dtype), axis=(-2, -1)) / jnp.sqrt(d)}


def interpolation_reason(cfg: ModelConfig) -> str | None:
  """Why the interpolation test does not apply to this architecture (None when it does)."""
  if not cfg.is_linear:
    return "interpolation needs linear attention without MLP (the constructed GD weights have neither)"
  if cfg.n_heads != 1:
    return "interpolation needs one head per layer (heads do not merge into one W_KQ, W_PV pair)"
  return None
