"""How close a model's implicit trajectory is to explicit learners (theory-notes §3, §5, §9).

Per layer t: cosine and relative L2 distance between the implicit predictor ŵ_t (Theorem 1) and a
reference's iterate w_t, mean |ŷ_model,t − ŷ_ref,t|, and the loss of each. For the final
prediction also von Oswald's "model cos" (cosine of ∂ŷ/∂x_q), the ridge (Bayes) floor, and the
interpolation test: average the trained weights, aligned, with a reference's constructed weights.
Pure functions; `analyze` returns plain floats/lists ready for io.write_json.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lintheory import gd, implicit, references
from lintheory.model import ModelConfig, Params, forward, layer_predictions
from lintheory.tasks import Batch, TaskConfig, batch_tokens, tokens


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


# --- everything for one model -----------------------------------------------------------------


def _floats(x):
  return np.asarray(x, np.float64).tolist()


@functools.partial(jax.jit, static_argnums=(1, 2))
def _measure(params: Params, cfg: ModelConfig, kinds: tuple, thetas: dict, batch: Batch, lam, avg_params: dict):
  """The array part of `analyze`, one compilation per architecture and reference set."""
  Z = batch_tokens(batch)
  traj = implicit.trajectory(params, Z, cfg)
  q = traj.states[1:, :, -1]
  ident = jnp.max(jnp.abs(implicit.reconstructed_queries(traj) - q), axis=(1, 2))  # as checks.trajectory_identity
  y_layers = layer_predictions(traj.states)
  grad_q = query_grad(params, batch, cfg)
  ridge_w = gd.ridge(batch.X, batch.y, lam)
  L = cfg.n_layers
  out = {"identity": ident, "identity_scale": jnp.max(jnp.abs(q)),
         "delta_W_fro": jnp.mean(jnp.linalg.norm(traj.delta_W, axis=(-2, -1)), -1),
         "G_fro": jnp.mean(jnp.linalg.norm(traj.G, axis=(-2, -1)), -1),
         "w_hat_norm": jnp.mean(jnp.linalg.norm(traj.w_hat, axis=-1), -1),
         "model_loss": mse(y_layers, batch.y_q),
         "ridge_loss": mse(jnp.einsum("bd,bd->b", ridge_w, batch.x_q), batch.y_q),
         "ridge_cos": jnp.mean(cosine(grad_q, ridge_w)), "refs": {}, "model_cos": {}, "interp": {},
         "median": {"model": jnp.median((y_layers[-1] - batch.y_q) ** 2),
                    "ridge": jnp.median((jnp.einsum("bd,bd->b", ridge_w, batch.x_q) - batch.y_q) ** 2)}}
  for kind in kinds:
    w_ref, y_ref = references.predict(kind, thetas[kind], batch, L)
    out["refs"][kind] = compare(traj.w_hat, y_layers, w_ref, y_ref, batch.y_q)
    out["median"][kind] = jnp.median((y_ref[-1] - batch.y_q) ** 2)
    out["model_cos"][kind] = jnp.mean(cosine(grad_q, w_ref[-1]))
  for kind, p in avg_params.items():
    out["interp"][kind] = mse(forward(p, Z)[0], batch.y_q)
  return out


def analyze(params: Params, cfg: ModelConfig, task: TaskConfig, refs: dict[str, references.Fitted],
            batch: Batch) -> dict:
  """All comparison metrics of one model on one batch, as plain floats and lists.

  Keys: identity (the Theorem 1 check, as checks.trajectory_identity), layers (per-layer lists),
  final (losses, model cos, final-layer comparisons), interpolation.
  """
  L = cfg.n_layers
  for kind, f in refs.items():
    if len(f.eta) != L:
      raise ValueError(f"reference {kind!r} has {len(f.eta)} steps but the model has {L} layers")
  dt = batch.X.dtype
  kinds = tuple(refs)
  thetas = {k: {n: jnp.asarray(v, dt) for n, v in references.theta_of(f).items()} for k, f in refs.items()}
  reason = interpolation_reason(cfg)
  avg = {} if reason else {k: interpolate(params, references.construct(f, dt)) for k, f in refs.items()}
  m = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                             _measure(params, cfg, kinds, thetas, batch, gd.bayes_ridge_lambda(task.noise_std), avg))
  scale = max(float(m["identity_scale"]), float(np.finfo(np.dtype(dt)).tiny))
  layers = {"identity_max_abs_err": _floats(m["identity"]), "delta_W_fro": _floats(m["delta_W_fro"]),
            "G_fro": _floats(m["G_fro"]), "w_hat_norm": _floats(m["w_hat_norm"]),
            "model_loss": _floats(m["model_loss"]),
            "references": {k: {n: _floats(v) for n, v in m["refs"][k].items()} for k in kinds}}
  losses = {"model": layers["model_loss"][-1], "ridge": float(m["ridge_loss"])}
  losses.update({k: layers["references"][k]["loss"][-1] for k in kinds})
  # the median squared error too: deep trained models can have a heavy tail of exploding tasks
  final = {"losses": losses, "median_sq_err": {k: float(v) for k, v in m["median"].items()}, "model_cos": {"ridge": float(m["ridge_cos"]), **{k: float(v) for k, v in m["model_cos"].items()}},
           "references": {k: {n: v[-1] for n, v in layers["references"][k].items()} for k in kinds}}
  if reason is None:
    layers.update({k: _floats(v) for k, v in effective_steps(params).items()})
  interp = {"reason": reason, "alpha": 0.5, "loss_model": losses["model"], **{k: float(v) for k, v in m["interp"].items()}}
  max_abs = float(m["identity"].max())
  return {"identity": {"exact": cfg.is_linear, "max_abs_err": max_abs, "max_rel_err": max_abs / scale},
          "layers": layers, "final": final, "interpolation": interp}
