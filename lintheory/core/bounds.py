"""The paper's Theorem 2 (mutual-information generalisation bound) and Example 1 (docs/theory.md §6).

Everything is computed from the weights and the demonstrations, per task, then averaged over the
batch's tasks (the E[...] of the theorem). Conventions (all documented choices are ours):

- Loss: the squared error (ŷ − y)², not halved, not normalised, as in `train.mse`.
- Per-demonstration implicit gradients g_{t,i} = N · (the i-th term of G_t), vectorised to
  d' = (d+1)² entries, so that G_t is their MEAN (`implicit.per_demo_G` gives the terms whose
  SUM is G_t). S_t is their sample covariance (divisor N − 1) and, for b shots out of a pool of
  N, C_t = (N − b)/(b(N − 1)) · S_t, the covariance of the mean of b demonstrations drawn without
  replacement. b = N gives C_t = 0 (flagged: `b_is_N`); the default is b = N // 2.
- C_t has rank ≤ N − 1 < d' for the usual N, so −tr log C_t = +∞ and the bound as written
  ('bound_exact') is infinite. Two finite versions:
  (i) range: restricted to range(C_t), i.e. to the eigenvalues above rtol·λ_max (rtol defaults to
      max(N, d')·machine-eps, numpy's matrix-rank rule); d' is then replaced by that numerical
      rank r_t (the dimension the Gaussian noise lives in), so the layer term is
      r_t·log((‖ΔW_t‖²‖I + W_{t−1}‖² + tr C_t)/r_t) − Σ_{kept} log λ_k (0 when r_t = 0). A
      heuristic, not a theorem: the parameter moves outside the range too.
  (ii) floor: C_t + εI with ε an argument (default 1e-6): d' stays (d+1)², and the d' − r_t null
      directions contribute −log ε each, so this version is dominated by (d' − N)·log(1/ε).
- The pruning-sensitive part Σ_t ‖ΔW_t‖_F²‖I + Σ_{j<t} G_j‖_F² (Σ_{j<t} G_j = W_{t−1}).
- R: the loss is a squared Gaussian, ℓ = s²·χ²₁ with s² = (ŵ − w)ᵀΣ(ŵ − w) + σ² for a fixed
  task, so Var(ℓ | task) = 2s⁴ exactly for Gaussian x. We take R = sqrt(E_task 2s⁴), the standard
  deviation of the per-query loss on fresh queries (a sub-Gaussian proxy: the squared loss is
  sub-exponential, not sub-Gaussian). An explicit R overrides it.
- The gap: ŵ_L's population loss on its task, (ŵ − w)ᵀΣ(ŵ − w) + σ² (closed form for Gaussian
  x, the demonstrations' own label noise included), minus its mean loss on that task's N
  demonstrations; averaged over tasks.
- Vacuous: the bound ≥ the population loss of the zero predictor, E[wᵀΣw] + σ² (measured on the
  batch's tasks), a trivial bound on the gap of any predictor no worse than predicting 0.
Non-finite values are returned as they are (inf / NaN) and flagged, never clipped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import implicit
from lintheory.core.model import ModelConfig, Params
from lintheory.core.tasks import Batch, TaskConfig, batch_tokens, x_covariance


# --- validation ----------------------------------------------------------------------------


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_b(b, N: int) -> int:
  """b shots out of a pool of N: an integer in [1, N] (N ≥ 2 for the sample covariance)."""
  if not _is_int(N) or N < 2:
    raise ValueError(f"n_context N must be an integer >= 2 for a sample covariance, got {N!r}")
  if not _is_int(b) or not 1 <= b <= N:
    raise ValueError(f"b must be an integer in [1, N={N}], got {b!r}")
  return int(b)


def check_eps(eps) -> float:
  if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (math.isfinite(eps) and eps > 0):
    raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
  return float(eps)


def check_rtol(rtol) -> float:
  if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating)) or not 0 < rtol < 1:
    raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
  return float(rtol)


def check_R(R):
  """None (estimate R), or a finite number > 0; a traced array (under jit/vmap) passes unchecked."""
  if R is None or isinstance(R, jax.core.Tracer):
    return R
  try:
    v = float(R)
  except (TypeError, ValueError):
    raise ValueError(f"R must be None (estimate it) or a finite number > 0, got {R!r}") from None
  if isinstance(R, bool) or not (math.isfinite(v) and v > 0):
    raise ValueError(f"R must be None (estimate it) or a finite number > 0, got {R!r}")
  return v


# --- the covariance C_t ----------------------------------------------------------------------


def covariance_scale(b: int, N: int) -> float:
  """(N − b)/(b(N − 1)): C_t = this · S_t for b shots out of N without replacement."""
  b = check_b(b, N)
  return (N - b) / (b * (N - 1))


def per_demo_gradients(params: Params, traj: implicit.Trajectory) -> jax.Array:
  """g_{t,i} = N · (i-th term of G_t), so G_t = mean_i g_{t,i} → [L, B, N, D, D]."""
  N = traj.states.shape[2] - 1
  return N * implicit.per_demo_G(params, traj)


def sample_cov_eigvals(g_LBNDD: jax.Array) -> jax.Array:
  """Eigenvalues of S_t (sample covariance over i of vec g_{t,i}), descending, ≥ 0 → [L, B, K].

  K = min(N, d'): the other d' − K eigenvalues are exactly 0. For N ≤ d' we use the N×N Gram
  matrix of the centred gradients (same nonzero spectrum, much smaller than d'×d').
  """
  L, B, N, D, _ = g_LBNDD.shape
  dp = D * D
  A = g_LBNDD.reshape(L, B, N, dp)
  A = A - A.mean(axis=2, keepdims=True)
  M = (jnp.einsum("lbnk,lbmk->lbnm", A, A) if N <= dp else jnp.einsum("lbnk,lbnj->lbkj", A, A)) / (N - 1)
  lam = jnp.linalg.eigvalsh(M)[..., ::-1]
  return jnp.maximum(lam, 0.0)  # round-off can make the zero eigenvalues slightly negative


def sensitive_terms(traj: implicit.Trajectory) -> jax.Array:
  """‖ΔW_t‖_F² · ‖I + Σ_{j<t} G_j‖_F² per layer and task → [L, B]."""
  D = traj.G.shape[-1]
  W_prev = jnp.concatenate([jnp.zeros_like(traj.W_traj[:1]), traj.W_traj[:-1]], axis=0)
  eye = jnp.eye(D, dtype=W_prev.dtype)
  return jnp.sum(traj.delta_W**2, axis=(-2, -1)) * jnp.sum((eye + W_prev) ** 2, axis=(-2, -1))


class LayerTerms(NamedTuple):
  exact: jax.Array  # [L, B] d'·log((s + tr C)/d') − tr log C as written (+inf when C is singular)
  floor: jax.Array  # [L, B] the same with C + εI
  range: jax.Array  # [L, B] restricted to range(C): d' → rank r_t, log det over kept eigenvalues
  rank: jax.Array  # [L, B] numerical rank r_t of C_t
  trC: jax.Array  # [L, B] tr C_t


def layer_terms(sens_LB: jax.Array, lamC_LBK: jax.Array, d_prime: int, eps: float, rtol: float) -> LayerTerms:
  """Theorem 2's per-layer terms from the sensitive part and the eigenvalues of C_t (docs/theory.md §6)."""
  K = lamC_LBK.shape[-1]
  trC = lamC_LBK.sum(-1)
  num = sens_LB + trC
  # As written: the d' − K structural zeros (and any zero among the K) give log 0 = −∞; round-off
  # can leave a true zero slightly negative, which must read as 0, not as log(<0) = NaN.
  logdet_exact = jnp.sum(jnp.log(jnp.maximum(lamC_LBK, 0.0)), -1) + (-jnp.inf if d_prime > K else 0.0)
  # C_t singular (always, for d' > K) makes −tr log C_t = +∞ and the bound infinite whatever the
  # first term is, even −∞ (a layer pruned to rank 0): report +∞, never ∞ − ∞ = NaN.
  exact = jnp.where(jnp.isneginf(logdet_exact), jnp.inf, d_prime * jnp.log(num / d_prime) - logdet_exact)
  floor = d_prime * jnp.log((num + d_prime * eps) / d_prime) - (
      jnp.sum(jnp.log(lamC_LBK + eps), -1) + (d_prime - K) * math.log(eps))
  keep = lamC_LBK > rtol * lamC_LBK[..., :1]
  r = keep.sum(-1)
  r_f = jnp.maximum(r, 1).astype(num.dtype)
  logdet_r = jnp.sum(jnp.where(keep, jnp.log(jnp.where(keep, lamC_LBK, 1.0)), 0.0), -1)
  rng = jnp.where(r > 0, r_f * jnp.log(num / r_f) - logdet_r, 0.0)
  return LayerTerms(exact, floor, rng, r, trC)


# --- loss, gap, R ----------------------------------------------------------------------------


def population_loss(w_hat_BD: jax.Array, w_BD: jax.Array, Sigma: jax.Array, noise_std: float) -> jax.Array:
  """E_{x~N(0,Σ), ε}[(ŵ·x − w·x − ε)²] = (ŵ − w)ᵀΣ(ŵ − w) + σ² per task → [B]."""
  e = w_hat_BD - w_BD
  return jnp.einsum("bd,de,be->b", e, Sigma, e) + noise_std**2


def demo_loss(w_hat_BD: jax.Array, X_BND: jax.Array, y_BN: jax.Array) -> jax.Array:
  """(1/N) Σ_i (ŵ·x_i − y_i)² on the task's own demonstrations → [B]."""
  return jnp.mean((jnp.einsum("bnd,bd->bn", X_BND, w_hat_BD) - y_BN) ** 2, axis=-1)


def gap(w_hat_BD: jax.Array, batch: Batch, Sigma: jax.Array, noise_std: float) -> jax.Array:
  """The measured generalisation gap of ŵ: population loss − loss on its demonstrations → [B]."""
  return population_loss(w_hat_BD, batch.w, Sigma, noise_std) - demo_loss(w_hat_BD, batch.X, batch.y)


def estimate_R(w_hat_BD: jax.Array, w_BD: jax.Array, Sigma: jax.Array, noise_std: float) -> jax.Array:
  """R = sqrt(E_task Var(ℓ | task)) = sqrt(E_task 2s⁴), s² the task's population loss (exact for Gaussian x)."""
  s2 = population_loss(w_hat_BD, w_BD, Sigma, noise_std)
  return jnp.sqrt(jnp.mean(2.0 * s2**2))


def zero_predictor_loss(w_BD: jax.Array, Sigma: jax.Array, noise_std: float) -> jax.Array:
  """The trivial scale: E_task[wᵀΣw] + σ², the population loss of predicting 0."""
  return jnp.mean(jnp.einsum("bd,de,be->b", w_BD, Sigma, w_BD)) + noise_std**2


# --- Theorem 2 -------------------------------------------------------------------------------


class Bound(NamedTuple):
  terms: LayerTerms  # per-layer, per-task terms [L, B]
  sensitive: jax.Array  # [L, B] ‖ΔW_t‖²‖I + W_{t−1}‖²
  R: jax.Array  # the R used (estimated or given)
  bound_exact: jax.Array  # sqrt((R²/N) Σ_t E[exact_t]) (inf when C_t is singular)
  bound_floor: jax.Array  # ... with C_t + εI
  bound_range: jax.Array  # ... restricted to range(C_t)
  gap: jax.Array  # [B] measured gap of ŵ_L
  trivial: jax.Array  # zero predictor's population loss (the vacuity scale)
  c: float  # (N − b)/(b(N − 1))


def _sqrt_bound(R, N, terms_LB):
  """sqrt((R²/N)·Σ_t mean_B term): NaN (not clipped) if the sum is negative, inf if it is."""
  s = jnp.sum(jnp.mean(terms_LB, axis=1), axis=0)
  return jnp.where(s >= 0, jnp.sqrt(jnp.abs(s) * R**2 / N), jnp.nan)


def theorem2(params: Params, batch: Batch, model_cfg: ModelConfig, task_cfg: TaskConfig, *, b: int | None = None,
             eps: float = 1e-6, R=None, rtol: float | None = None) -> Bound:
  """Theorem 2 of the paper for the implicit learner of `params` on `batch` (docs/theory.md §6).

  b defaults to N // 2; rtol (the range version's relative eigenvalue threshold) to max(N, d')·ε_mach.
  """
  N = batch.X.shape[1]
  b = N // 2 if b is None else b
  c = covariance_scale(b, N)
  eps, R = check_eps(eps), check_R(R)
  d_prime = model_cfg.D**2
  dtype = batch.X.dtype
  rtol = check_rtol(rtol) if rtol is not None else max(N, d_prime) * float(jnp.finfo(dtype).eps)
  Sigma = jnp.asarray(x_covariance(task_cfg), dtype)
  R = None if R is None else jnp.asarray(R, dtype)
  return _theorem2(params, batch, Sigma, R, model_cfg, float(task_cfg.noise_std), c, eps, rtol)


@jax.jit(static_argnums=(4, 5, 6, 7, 8))
def _theorem2(params, batch, Sigma, R, model_cfg, noise_std, c, eps, rtol) -> Bound:
  N = batch.X.shape[1]
  d_prime = model_cfg.D**2
  traj = implicit.trajectory(params, batch_tokens(batch), model_cfg)
  lamC = c * sample_cov_eigvals(per_demo_gradients(params, traj))
  sens = sensitive_terms(traj)
  terms = layer_terms(sens, lamC, d_prime, eps, rtol)
  w_hat = traj.w_hat[-1]
  R = estimate_R(w_hat, batch.w, Sigma, noise_std) if R is None else R
  return Bound(terms, sens, R, _sqrt_bound(R, N, terms.exact), _sqrt_bound(R, N, terms.floor),
               _sqrt_bound(R, N, terms.range), gap(w_hat, batch, Sigma, noise_std),
               zero_predictor_loss(batch.w, Sigma, noise_std), c)


def sweep_metrics(params: Params, batch: Batch, model_cfg: ModelConfig, task_cfg: TaskConfig, *, b: int | None = None,
                  eps: float = 1e-6, R=None) -> dict[str, jax.Array]:
  """Scalar bound metrics (means over the batch's tasks) for one parameter set; jittable, vmappable.

  b defaults to N // 2 (half the pool: C_t is then S_t/(N − 1)·1). Keys:
  bound_exact/floor/range (Theorem 2's total, three versions), bound_sensitive
  (E Σ_t ‖ΔW_t‖²‖I + W_{t−1}‖²), trC (E Σ_t tr C_t), rank_C (E mean_t rank C_t), gap, R,
  trivial (vacuity scale), R2_over_N, flags as 0/1 floats: {exact,floor,range}_nonfinite,
  {floor,range}_vacuous (bound ≥ trivial), b_is_N.
  """
  N = batch.X.shape[1]
  b = N // 2 if b is None else b
  bd = theorem2(params, batch, model_cfg, task_cfg, b=b, eps=eps, R=R)
  f = lambda x: x.astype(bd.R.dtype)
  out = {
      "bound_exact": bd.bound_exact, "bound_floor": bd.bound_floor, "bound_range": bd.bound_range,
      "bound_sensitive": jnp.mean(jnp.sum(bd.sensitive, 0)), "trC": jnp.mean(jnp.sum(bd.terms.trC, 0)),
      "rank_C": jnp.mean(f(bd.terms.rank)), "gap": jnp.mean(bd.gap), "R": bd.R, "trivial": bd.trivial,
      "R2_over_N": bd.R**2 / N,
      "b_is_N": jnp.asarray(float(b == N), bd.R.dtype),
  }
  for name in ("exact", "floor", "range"):
    out[f"{name}_nonfinite"] = f(~jnp.isfinite(out[f"bound_{name}"]))
  for name in ("floor", "range"):
    v = out[f"bound_{name}"]
    out[f"{name}_vacuous"] = f(jnp.isfinite(v) & (v >= bd.trivial))
  return out


# --- Example 1 -------------------------------------------------------------------------------


def example1_UB(W_Q: jax.Array, W_K: jax.Array, W_V: jax.Array, H_ND: jax.Array) -> jax.Array:
  """UB = Σ_i ‖W_V h_i‖² ‖W_K h_i‖² ‖W_Q‖_F² over the demonstrations h_i (rows of H_ND)."""
  for name, W in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V)):
    if W.ndim != 2 or W.shape[1] != H_ND.shape[-1]:
      raise ValueError(f"{name} must be a matrix with {H_ND.shape[-1]} columns, got shape {W.shape}")
  if H_ND.ndim != 2:
    raise ValueError(f"H_ND must be a matrix [N, D], got shape {H_ND.shape}")
  v = jnp.sum((H_ND @ W_V.T) ** 2, -1)
  k = jnp.sum((H_ND @ W_K.T) ** 2, -1)
  return jnp.sum(v * k) * jnp.sum(W_Q**2)
