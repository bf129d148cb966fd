"""Importable equivalence checks: use them in your own tests.

    from lintheory import checks
    checks.assert_gd_equivalent(params, batch, checks.gd_reference(eta=0.1))
    checks.assert_trajectory_identity(params, batch)
    checks.assert_same_predictions(my_forward, params, batch)  # your model's mapping onto the toolkit's

Every check takes the model as any of: a run directory (str or Path), a parameter dict, a Flax NNX
`LinearTransformer`, or an object with `.params` and `.model` (a ModelConfig), such as a `rundir.Run`
or the result of `lintheory.run.interop.load`; `resolve` turns it into (params, cfg) and checks the
shapes against the config. A dict whose W_Q is 4-D (heads or a seed axis?) needs
`cfg=ModelConfig(n_heads=...)`.

Exact identities (docs/theory.md §3, §5) hold to round-off in float64 (enable jax_enable_x64 and
pass float64 arrays); in float32 expect ~1e-5 relative.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from lintheory.core import learners, implicit
from lintheory.core.model import (LinearTransformer, ModelConfig, Params, config_of, forward, layer_predictions,
                                  params_of)
from lintheory.core.tasks import Batch, batch_tokens

# A reference maps a batch to per-step predictions ŷ_t [S, B] for the query.
Reference = Callable[[Batch], jax.Array]


def gd_reference(eta, n_steps: int | None = None, P=None) -> Reference:
  """(Preconditioned) GD from w_0 = 0 with scalar or per-step η (docs/theory.md §3)."""
  def ref(batch: Batch) -> jax.Array:
    return jnp.einsum("sbd,bd->sb", learners.gd(batch.X, batch.y, eta, n_steps, P), batch.x_q)
  return ref


def gd_plus_plus_reference(eta, gamma, n_steps: int | None = None) -> Reference:
  """GD++ with per-step (η_t, γ_t) (docs/theory.md §3)."""
  def ref(batch: Batch) -> jax.Array:
    return learners.gd_plus_plus(batch.X, batch.y, batch.x_q, eta, gamma, n_steps)[1]
  return ref


def resolve(model: Any, cfg: ModelConfig | None = None) -> tuple[Params, ModelConfig]:
  """(params, cfg) of a run directory path, a params dict, an NNX LinearTransformer or an object with
  .params and .model; ValueError when the shapes do not fit cfg (or are ambiguous without one)."""
  own = None
  if isinstance(model, (str, os.PathLike)):
    from lintheory.run import rundir
    run = rundir.load_run(model)
    params, own = run.params, run.model
  elif isinstance(model, LinearTransformer):
    params, own = params_of(model), model.cfg
  elif hasattr(model, "params") and hasattr(model, "model"):
    params, own = model.params, model.model
    if not isinstance(own, ModelConfig):
      raise TypeError(f"model.model must be a ModelConfig, got {type(own).__name__}")
  elif isinstance(model, dict):
    params = model
  else:
    raise TypeError(f"model must be a run directory path, a params dict, a LinearTransformer or an object "
                    f"with .params and .model, got {type(model).__name__}")
  if not isinstance(params, dict) or "W_Q" not in params:
    raise ValueError(f"params must be a dict holding W_Q, W_K, W_V, got {type(params).__name__}")
  if own is not None and cfg is not None and cfg != own:
    raise ValueError(f"cfg={cfg} differs from the model's own configuration {own}")
  return params, config_of(params, cfg if cfg is not None else own)


class Deviation(NamedTuple):
  per_layer: jax.Array  # [L] max |ŷ_model,t − ŷ_ref,t| / max(max|ŷ_ref,t|, tiny)
  max_rel: float  # the largest of those
  max_abs: float  # the largest absolute deviation


def gd_deviation(params: Any, batch: Batch, reference: Reference,
                 cfg: ModelConfig | None = None) -> Deviation:
  """Deviation between the transformer's per-layer predictions and a reference's iterates.

  params: any model `resolve` takes."""
  params, cfg = resolve(params, cfg)
  # jit: one compilation per shape; called op by op, forward's scan would recompile every call
  _, states = jax.jit(forward, static_argnums=2)(params, batch_tokens(batch), cfg)
  y_model = layer_predictions(states)
  y_ref = reference(batch)
  if y_ref.shape != y_model.shape:
    raise ValueError(f"reference gives {y_ref.shape[0]} steps but the model has {y_model.shape[0]} layers")
  abs_err = jnp.max(jnp.abs(y_model - y_ref), axis=1)
  rel = abs_err / jnp.maximum(jnp.max(jnp.abs(y_ref), axis=1), jnp.finfo(y_ref.dtype).tiny)
  return Deviation(rel, float(jnp.max(rel)), float(jnp.max(abs_err)))


def _check_tol(tol: float, x: jax.Array) -> None:
  if x.dtype == jnp.float32 and tol < 1e-6:
    raise ValueError(f"tol={tol} is below float32 round-off; enable jax_enable_x64 and pass float64 "
                     "arrays, or use tol >= 1e-6")


def assert_gd_equivalent(params: Any, batch: Batch, reference: Reference, tol: float = 1e-10,
                         cfg: ModelConfig | None = None) -> Deviation:
  """Raise AssertionError unless every layer matches the reference to relative `tol`."""
  _check_tol(tol, batch.X)
  dev = gd_deviation(params, batch, reference, cfg)
  return _within(dev, tol, lambda: f"transformer deviates from the reference: per-layer relative error "
                 f"{[f'{e:.2e}' for e in dev.per_layer.tolist()]} > tol={tol}")


def _within(check, tol: float, message: Callable[[], str]):
  """check, unless its max_rel exceeds tol (or is NaN): then AssertionError(message())."""
  if not check.max_rel <= tol:
    raise AssertionError(message())
  return check


class IdentityCheck(NamedTuple):
  per_layer: jax.Array  # [L] max |(I + W_t) h^0 − h^t| over tasks and entries
  max_abs: float
  max_rel: float  # max_abs / max |h^t|
  exact: bool  # True when Theorem 1 applies (linear attention, no MLP)


def trajectory_identity(params: Any, batch_or_Z, cfg: ModelConfig | None = None) -> IdentityCheck:
  """Measure Theorem 1: the query rebuilt as (I + W_t) h^0 against the forward pass's query.
  params: any model `resolve` takes.

  For softmax attention or MLP layers the identity is not a theorem: the deviation is returned
  with exact=False, and `assert_trajectory_identity` refuses such models.
  """
  params, cfg = resolve(params, cfg)
  Z = batch_tokens(batch_or_Z) if isinstance(batch_or_Z, Batch) else batch_or_Z
  traj = implicit.trajectory(params, Z, cfg)
  err = jnp.abs(implicit.reconstructed_queries(traj) - traj.states[1:, :, -1])
  per_layer = jnp.max(err, axis=(1, 2))
  scale = jnp.maximum(jnp.max(jnp.abs(traj.states[1:, :, -1])), jnp.finfo(Z.dtype).tiny)
  return IdentityCheck(per_layer, float(jnp.max(per_layer)), float(jnp.max(per_layer) / scale),
                       cfg.is_linear)


def assert_trajectory_identity(params: Any, batch_or_Z, tol: float = 1e-10,
                               cfg: ModelConfig | None = None) -> IdentityCheck:
  """Raise unless Theorem 1 holds to relative `tol`; refuse models it does not cover."""
  params, cfg = resolve(params, cfg)
  if not cfg.is_linear:
    raise ValueError(f"Theorem 1 covers linear attention without MLP; this model has "
                     f"attention={cfg.attention!r}, mlp={cfg.mlp!r}. Use trajectory_identity() "
                     "to measure the deviation instead.")
  Z = batch_tokens(batch_or_Z) if isinstance(batch_or_Z, Batch) else batch_or_Z
  _check_tol(tol, Z)
  check = trajectory_identity(params, Z, cfg)
  return _within(check, tol, lambda: f"Theorem 1 identity off by {check.max_rel:.2e} (relative) > tol={tol}; "
                 f"per layer {check.per_layer.tolist()}")


def assert_same_predictions(user_predict: Callable[[Batch], Any], model: Any, batch: Batch, tol: float = 1e-5,
                            cfg: ModelConfig | None = None) -> float:
  """Raise AssertionError unless your own forward pass, user_predict(batch) → ŷ [B], matches the
  toolkit's forward on the mapped weights to relative `tol`; returns the max relative error.

  Theorem 1 holds for any weights, so the other checks pass for a wrong mapping of your model
  (W_Q and W_K swapped, a matrix transposed, a sign flipped); this one does not.
  """
  _check_tol(tol, batch.X)
  params, cfg = resolve(model, cfg)
  y_tool = jax.jit(forward, static_argnums=2)(params, batch_tokens(batch), cfg)[0]
  y_user = jnp.asarray(user_predict(batch))
  if y_user.shape != y_tool.shape:
    raise ValueError(f"user_predict must return the query predictions ŷ of shape {y_tool.shape}, got {y_user.shape}")
  scale = jnp.maximum(jnp.max(jnp.abs(y_tool)), jnp.finfo(y_tool.dtype).tiny)
  rel = float(jnp.max(jnp.abs(y_user - y_tool)) / scale)
  if not rel <= tol:
    raise AssertionError(f"your model's predictions differ from the toolkit's on the mapped weights: max relative "
                         f"error {rel:.2e} > tol={tol} (check the mapping: W_Q/W_K swapped, a transpose, a sign, "
                         f"the 1/N scaling)")
  return rel
