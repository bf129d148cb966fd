"""The paper's Theorem 2 and finite versions of it that are theorems (docs/theory.md §6, §10).

Conventions (all documented choices are ours):

- Loss: the squared error (ŷ − y)², not halved, as in `train.mse`. The implicit learner of a
  task is ŵ_L (docs/theory.md §5), a deterministic function of the N demonstrations.
- Per-demonstration implicit gradients g_{t,i} = N · (the i-th term of G_t), so G_t is their MEAN
  (`implicit.per_demo_G` gives the terms whose SUM is G_t). In the code's convention (matrices act
  on column tokens, h ↦ W h; heads summed, W_O folded into W_V):
    g_{t,i} = Σ_h W_V^h (h_i h_iᵀ) W_K^hᵀ W_Q^h (I + W_{t−1}),  h_i the token after layer t − 1.
- ONE Bessel correction. S_t is the sample covariance of vec g_{t,i} with divisor N − 1. Drawing b
  of the N demonstrations without replacement, the mean's covariance is
    (σ²_pop / b)·(N − b)/(N − 1) with σ²_pop the divisor-N covariance = (N − 1)/N · S_t, so
    C_t = (N − b)/(b N) · S_t   (`covariance_scale`; b = N gives C_t = 0, flagged `b_is_N`).
- R is held fixed across the configurations compared, never taken from a pruned model's own loss:
  R_zero (the zero predictor's loss) by default, or R_unpruned (pass the unpruned weights as
  `R_params`), both sqrt(E_task Var(ℓ | task)) = sqrt(E_task 2 s⁴) with s² the task's population
  loss (exact for Gaussian x: ℓ = s²·χ²₁). The squared loss of Gaussian data is sub-exponential,
  NOT sub-Gaussian, so the MI bounds below read as theorems for a loss that is R-sub-Gaussian;
  the `*_clipped` columns use the clipped loss min(ℓ, M), which is M/2-sub-Gaussian (Hoeffding):
  for it they are theorems.

Versions (docs/theory.md §6, §10):

1. `paper_as_written`: d' = D² and −tr log C_t over all of R^{D×D}. C_t has rank ≤ N − 1 and, for
   linear attention, ≤ D(D+1)/2 < D² whatever N, so this is +∞: reported, never clipped.
2. `bound_subspace` (a theorem, docs/theory.md §6, §15.1, for the paper's NOISY learner
   W_t = W_{t−1} + G_t + ξ_t, ξ_t ~ N(0, C_t), simulated by `noisy_trajectory`): every g_{t,i} lies in the
   data-independent subspace
     V_t = {Σ_h W_V^h X W_K^hᵀ W_Q^h (I + W_{t−1}) : X symmetric D×D}
   (proof: h_i h_iᵀ is symmetric, and the map is linear in X). V_t depends on the weights and on
   the previous iterate W_{t−1} only, on which the chain rule I(W; S) ≤ Σ_t I(W_t; S | W_{t−1})
   conditions, so the paper's Gaussian max-entropy argument holds inside V_t with d' → m_t = dim V_t:
     term_t = m̄ log(E[ζ_t + tr C_t]/m̄) − E log det(C_t|V_t),  ζ_t = ‖ΔW_t‖²‖I + W_{t−1}‖²,
   E over (task, demonstrations, noise), the log of the mean; each mean is reported at its one-sided
   upper confidence bound (`log_mean_terms`). The per-prompt placement E[log …] (`subspace_terms`) is
   below it by Jensen and is NOT a bound: kept for comparison.
   Finite iff C_t|V_t is non-singular, which needs N − 1 ≥ k_t; otherwise +∞ with a reason code
   (`subspace_inf_reason`: 0 finite, 1 b = N, 2 N − 1 < dim V_t, 3 C_t singular on V_t). With
   ε > 0 (`sensitivity`) it is the theorem for the noisier learner with noise C_t + ε·P_{V_t}.
   The range of C_t, by contrast, depends on the data of step t itself: the law of W_t is then a
   mixture over subspaces with no common reference measure, and restricting to it is not a bound.
3. `cmi_bound` (a theorem, no log det): the unconditional supersample loss-difference CMI bound
   (Steinke & Zakynthinou 2020; Harutyunyan et al. 2021; Wang & Mao 2023) for the deterministic ŵ_L's
   clipped, quantised loss, at its bootstrap upper confidence bound; see `supersample_cmi`.
   Finite: ≤ M·sqrt(2 log 2) + M/K whatever the learner.
- `floor_surrogate` (NOT a bound for the ICL learner): C_t + εI over all D² entries, the bound for a
  noisier surrogate learner, dominated by (D² − rank C_t)·log(1/ε).
- The pruning-sensitive part Σ_t ‖ΔW_t‖_F²‖I + W_{t−1}‖_F² (on the noisy iterate).
- The gap: ŵ's population loss (ŵ − w)ᵀΣ(ŵ − w) + σ² minus its loss on its N demonstrations, for ŵ_L
  (`gap`) and for the noisy learner's ŵ (`gap_noisy`).
- Vacuity: bound ÷ the zero predictor's population loss E[wᵀΣw] + σ² (≥ 1: vacuous).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import implicit
from lintheory.core.model import ModelConfig, Params
from lintheory.core.tasks import Batch, TaskConfig, as_cov, batch_tokens, sample, tokens, x_covariance

ALPHA = 0.05  # one-sided level of each bound's Monte-Carlo upper confidence bound (jointly over its estimates)
REASONS = {0: "finite", 1: "b = N: C_t = 0", 2: "N - 1 < dim V_t: C_t singular on V_t for any data",
           3: "C_t numerically singular on V_t (degenerate demonstrations)"}


# --- validation ----------------------------------------------------------------------------


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def check_b(b, N: int) -> int:
  """b shots out of a pool of N: an integer in [1, N] (N ≥ 2 for the sample covariance)."""
  if not _is_int(N) or N < 2:
    raise ValueError(f"n_context N must be an integer >= 2 for a sample covariance, got {N!r}")
  if not _is_int(b) or not 1 <= b <= N:
    raise ValueError(f"b must be an integer in [1, N={N}], got {b!r}")
  return int(b)


def check_eps(eps, allow_zero: bool = False) -> float:
  ok = _is_num(eps) and math.isfinite(eps) and (eps >= 0 if allow_zero else eps > 0)
  if not ok:
    raise ValueError(f"eps must be a finite number {'>=' if allow_zero else '>'} 0, got {eps!r}")
  return float(eps)


def check_rtol(rtol) -> float:
  if not (_is_num(rtol) and 0 < rtol < 1):
    raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
  return float(rtol)


def check_positive_int(name: str, v, lo: int = 1) -> int:
  if not _is_int(v) or v < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
  return int(v)


def check_M(M) -> float:
  if not (_is_num(M) and math.isfinite(M) and M > 0):
    raise ValueError(f"clip_M must be a finite number > 0, got {M!r}")
  return float(M)


def check_R(R):
  """None (use R_zero / R_unpruned), or a finite number > 0; a traced array passes unchecked."""
  if R is None or isinstance(R, jax.core.Tracer):
    return R
  try:
    v = float(R)
  except (TypeError, ValueError):
    raise ValueError(f"R must be None (fixed reference R) or a finite number > 0, got {R!r}") from None
  if isinstance(R, bool) or not (math.isfinite(v) and v > 0):
    raise ValueError(f"R must be None (fixed reference R) or a finite number > 0, got {R!r}")
  return v


def _default_rtol(n: int, dtype) -> float:
  """numpy's matrix-rank rule: max(shape) · machine epsilon, relative to the largest value."""
  return n * float(jnp.finfo(dtype).eps)


# --- the covariance C_t ----------------------------------------------------------------------


def covariance_scale(b: int, N: int) -> float:
  """(N − b)/(b N): C_t = this · S_t (S_t with divisor N − 1), b shots of N without replacement."""
  b = check_b(b, N)
  return (N - b) / (b * N)


def per_demo_gradients(params: Params, traj: implicit.Trajectory) -> jax.Array:
  """g_{t,i} = N · (i-th term of G_t), so G_t = mean_i g_{t,i} → [L, B, N, D, D]."""
  N = traj.states.shape[2] - 1
  return N * implicit.per_demo_G(params, traj)


def sample_cov_eigvals(g_LBNDD: jax.Array) -> jax.Array:
  """Eigenvalues of S_t (divisor N − 1) over all D² entries, descending, ≥ 0 → [L, B, min(N, D²)].

  For N ≤ D² the N×N Gram matrix of the centred gradients has the same nonzero spectrum.
  """
  L, B, N, D, _ = g_LBNDD.shape
  dp = D * D
  A = g_LBNDD.reshape(L, B, N, dp)
  A = A - A.mean(axis=2, keepdims=True)
  M = (jnp.einsum("lbnk,lbmk->lbnm", A, A) if N <= dp else jnp.einsum("lbnk,lbnj->lbkj", A, A)) / (N - 1)
  return jnp.maximum(jnp.linalg.eigvalsh(M)[..., ::-1], 0.0)  # round-off can make zeros negative


def sensitive_terms(traj: implicit.Trajectory) -> jax.Array:
  """‖ΔW_t‖_F² · ‖I + Σ_{j<t} G_j‖_F² per layer and task → [L, B]."""
  D = traj.G.shape[-1]
  eye = jnp.eye(D, dtype=traj.W_traj.dtype)
  return jnp.sum(traj.delta_W**2, axis=(-2, -1)) * jnp.sum((eye + _W_prev(traj)) ** 2, axis=(-2, -1))


def _W_prev(traj: implicit.Trajectory) -> jax.Array:
  """W_{t−1} for every layer t (W_0 = 0) → [L, B, D, D]."""
  return jnp.concatenate([jnp.zeros_like(traj.W_traj[:1]), traj.W_traj[:-1]], axis=0)


# --- the data-independent subspace V_t --------------------------------------------------------


def sym_basis(D: int) -> np.ndarray:
  """An orthonormal (Frobenius) basis of the symmetric D×D matrices → [D(D+1)/2, D, D]."""
  out = []
  for i in range(D):
    for j in range(i, D):
      E = np.zeros((D, D))
      E[i, j] = E[j, i] = 1.0 if i == j else 2**-0.5
      out.append(E)
  return np.stack(out)


def subspace_map(W_Q_HDD: jax.Array, W_K_HDD: jax.Array, W_V_HDD: jax.Array, W_prev_DD: jax.Array) -> jax.Array:
  """The matrix of X ↦ Σ_h W_V^h X W_K^hᵀ W_Q^h (I + W_prev) on `sym_basis` → [D², D(D+1)/2].

  Column j is vec (row-major) of the image of the j-th basis matrix; its column space is V_t.
  """
  D = W_prev_DD.shape[-1]
  E = jnp.asarray(sym_basis(D), W_prev_DD.dtype)
  P = jnp.einsum("hba,hbc->hac", W_K_HDD, W_Q_HDD) @ (jnp.eye(D, dtype=W_prev_DD.dtype) + W_prev_DD)
  return jnp.einsum("hab,jbc,hcd->jad", W_V_HDD, E, P).reshape(E.shape[0], D * D).T


def subspace_basis(A: jax.Array, rtol: float | None = None) -> tuple[jax.Array, jax.Array]:
  """(Q, k): the left singular vectors of A with σ > rtol·σ_max (columns past k zeroed), k = dim.

  rtol defaults to max(A.shape)·ε_mach (numpy's matrix-rank rule). Batched over leading axes.
  """
  rtol = _default_rtol(max(A.shape[-2:]), A.dtype) if rtol is None else rtol
  U, s, _ = jnp.linalg.svd(A, full_matrices=False)
  keep = s > rtol * s[..., :1]
  return U * keep[..., None, :], keep.sum(-1)


def subspace_dim(params: Params, W_prev: jax.Array | None = None, *, layer: int = 0,
                 rtol: float | None = None) -> jax.Array:
  """dim V_t of `layer` (from 0) from the weights alone; W_prev [..., D, D] (default 0: the first layer).

  The SVD rank of `subspace_map` with relative tolerance rtol (default max(D², D(D+1)/2)·ε_mach).
  dim V_t ≤ D(D+1)/2. Writing V_t as the image of Sym under X ↦ W_V X M (M = W_Kᵀ W_Q (I + W_prev),
  one head), its kernel is {X : X·range(M) ⊂ ker W_V}, so dim V_t never increases when ker W_V
  grows or range(M) shrinks: rank-r truncation of W_V (W_V → P_U W_V), of W_Q when I + W_prev is
  invertible (range(W_Kᵀ W_Q P (I + W)) ⊂ range(W_Kᵀ W_Q)), and of W_K when W_V is invertible (dim
  then depends on rank M alone). Truncating W_K with W_V singular can RAISE it (range(M) → P·range(M)
  is not nested; tests/test_bounds.py has a 3×3 example, 3 → 4).
  """
  lw = implicit.layer_weights(params)
  L, D = lw["W_Q"].shape[0], lw["W_Q"].shape[-1]
  if not _is_int(layer) or not 0 <= layer < L:
    raise ValueError(f"layer must be an integer in [0, {L - 1}], got {layer!r}")
  W_prev = jnp.zeros((D, D), lw["W_Q"].dtype) if W_prev is None else jnp.asarray(W_prev, lw["W_Q"].dtype)
  if W_prev.shape[-2:] != (D, D):
    raise ValueError(f"W_prev must have shape (..., {D}, {D}), got {W_prev.shape}")
  rtol = _default_rtol(max(D * D, D * (D + 1) // 2), W_prev.dtype) if rtol is None else check_rtol(rtol)
  return _subspace_dim(lw["W_Q"][layer], lw["W_K"][layer], lw["W_V"][layer], W_prev, rtol)


@jax.jit
def _subspace_dim(W_Q, W_K, W_V, W_prev, rtol):
  A = jnp.vectorize(lambda Wp: subspace_map(W_Q, W_K, W_V, Wp), signature="(d,d)->(p,m)")(W_prev)
  return subspace_basis(A, rtol)[1]


class SubspaceSpectrum(NamedTuple):
  lamS: jax.Array  # [L, B, m] eigenvalues of S_t restricted to V_t, descending (m = D(D+1)/2; zeros past k)
  dimV: jax.Array  # [L, B] k_t = dim V_t
  sensitive: jax.Array  # [L, B] ‖ΔW_t‖²‖I + W_{t−1}‖²
  residual: jax.Array  # [L, B] max_i ‖g_{t,i} − P_{V_t} g_{t,i}‖ / max_i ‖g_{t,i}‖ (round-off: g ∈ V_t)


def subspace_spectrum(params: Params, traj: implicit.Trajectory, rtol: float) -> SubspaceSpectrum:
  """Project the per-demonstration gradients on a weights-only orthonormal basis of V_t."""
  lw = implicit.layer_weights(params)
  A = jax.vmap(lambda q, k, v, Wp: jax.vmap(lambda w: subspace_map(q, k, v, w))(Wp))(
      lw["W_Q"], lw["W_K"], lw["W_V"], _W_prev(traj))  # [L, B, D², m]
  Q, k = subspace_basis(A, rtol)
  g = per_demo_gradients(params, traj)
  L, B, N, D, _ = g.shape
  g = g.reshape(L, B, N, D * D)
  coords = jnp.einsum("lbnp,lbpm->lbnm", g, Q)
  resid = jnp.linalg.norm(g - jnp.einsum("lbnm,lbpm->lbnp", coords, Q), axis=-1).max(-1)
  scale = jnp.linalg.norm(g, axis=-1).max(-1)
  coords = coords - coords.mean(2, keepdims=True)
  S = jnp.einsum("lbnm,lbnj->lbmj", coords, coords) / (N - 1)
  lamS = jnp.maximum(jnp.linalg.eigvalsh(S)[..., ::-1], 0.0)
  return SubspaceSpectrum(lamS, k, sensitive_terms(traj), resid / jnp.where(scale > 0, scale, 1.0))


def noisy_trajectory(params: Params, Z_BTD: jax.Array, key: jax.Array, c, eps=None, rtol=None) -> implicit.Trajectory:
  """The paper's noisy learner, the one Theorem 2 concerns (docs/theory.md §6), as a Trajectory.

  W_t = W_{t−1} + G_t + ξ_t, W_0 = 0, ξ_t ~ N(0, C_t + ε·P_{V_t}) given the past, C_t = c·S_t; G_t and the
  per-demonstration gradients are those at the noisy iterate, from the tokens h^{t−1} = (I + W_{t−1}) h^0
  (Theorem 1's identity, docs/theory.md §5), so c = ε = 0 gives `implicit.trajectory`. ξ_t = sqrt(c/(N − 1))·
  Σ_i z_i (g_{t,i} − G_t) with z ~ N(0, I_N) has covariance C_t exactly. ŵ = −W_L[y, :d] as for ŵ_L.
  eps (None: no floor) adds sqrt(ε)·Q_t z' with Q_t the orthonormal basis of V_t (relative rtol).
  """
  lw = implicit.layer_weights(params)
  B, T, D = Z_BTD.shape
  N = T - 1
  eye = jnp.eye(D, dtype=Z_BTD.dtype)

  def step(W_prev, xs):
    lw_t, k = xs
    H = Z_BTD + jnp.einsum("bde,bte->btd", W_prev, Z_BTD)
    dW_i = implicit.per_demo_delta_W(lw_t, H[:, :N])  # terms summing to ΔW_t
    g = N * jnp.einsum("bnde,bef->bndf", dW_i, eye + W_prev)
    G = g.mean(1)
    k_c, k_e = jax.random.split(k)
    zc = jax.random.normal(k_c, (B, N), Z_BTD.dtype)
    xi = jnp.sqrt(c / (N - 1)) * jnp.einsum("bn,bnde->bde", zc, g - G[:, None])
    if eps is not None:
      A = jax.vmap(lambda w: subspace_map(lw_t["W_Q"], lw_t["W_K"], lw_t["W_V"], w))(W_prev)
      Q, _ = subspace_basis(A, _default_rtol(max(A.shape[-2:]), A.dtype) if rtol is None else rtol)
      ze = jax.random.normal(k_e, Q.shape[::2], Z_BTD.dtype)
      xi = xi + jnp.sqrt(eps) * jnp.einsum("bpm,bm->bp", Q, ze).reshape(B, D, D)
    W = W_prev + G + xi
    return W, (dW_i.sum(1), G, W, H)

  keys = jax.random.split(key, lw["W_Q"].shape[0])
  _, (dW, G, W_traj, H) = jax.lax.scan(step, jnp.zeros((B, D, D), Z_BTD.dtype), (lw, keys))
  last = Z_BTD + jnp.einsum("bde,bte->btd", W_traj[-1], Z_BTD)
  return implicit.Trajectory(dW, G, W_traj, -W_traj[..., D - 1, : D - 1], jnp.concatenate([H, last[None]]))


def subspace_pieces(spec: SubspaceSpectrum, c, eps, N: int, b_is_N: bool, rtol) -> dict:
  """Per layer and prompt, the parts of the bound inside V_t with noise C_t + ε·P_{V_t}, C_t = c·S_t:
  X = ζ_t + tr C_t + kε (the second moment of the step), logdet = Σ_{j<k} log(λ_j(C|V) + ε), k = dim V_t,
  singular (ε = 0 only: λ_j ≤ rtol·λ_max for some j < k, or b = N) and its REASONS code → each [L, B]."""
  k = spec.dimV
  m = spec.lamS.shape[-1]
  lamC = c * spec.lamS + eps
  in_V = jnp.arange(m) < k[..., None]
  trC = jnp.sum(jnp.where(in_V, c * spec.lamS, 0.0), -1)
  logdet = jnp.sum(jnp.where(in_V, jnp.log(jnp.where(in_V & (lamC > 0), lamC, 1.0)), 0.0), -1)
  singular = (eps <= 0) & (jnp.any(in_V & (spec.lamS <= rtol * spec.lamS[..., :1]), -1) | (b_is_N & (k > 0)))
  reason = jnp.where(k == 0, 0, jnp.where(b_is_N, 1, jnp.where(N - 1 < k, 2, 3)))
  return {"X": spec.sensitive + trC + k * eps, "logdet": logdet, "k": k, "singular": singular,
          "reason": jnp.where(singular, reason, 0)}


def subspace_terms(spec: SubspaceSpectrum, c, eps, N: int, b_is_N: bool, rtol) -> tuple[jax.Array, jax.Array]:
  """(term_t [L, B], reason [L, B]): the per-prompt placement k log(X/k) − logdet of `subspace_pieces`.

  NOT an upper bound when averaged (E log X ≤ log E X, docs/theory.md §6); kept to show by how much
  the paper's placement falls below `log_mean_terms`. 0 when k = 0; +∞ (with its reason) when singular.
  """
  pc = subspace_pieces(spec, c, eps, N, b_is_N, rtol)
  kf = jnp.maximum(pc["k"], 1).astype(pc["X"].dtype)
  term = jnp.where(pc["k"] > 0, kf * jnp.log(pc["X"] / kf) - pc["logdet"], 0.0)
  return jnp.where(pc["singular"], jnp.inf, term), pc["reason"]


def z_one_sided(alpha: float, n_estimates: int) -> float:
  """The normal quantile for n one-sided bounds holding jointly at level 1 − alpha (Bonferroni)."""
  if not (_is_num(alpha) and 0 < alpha < 1):
    raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
  return statistics.NormalDist().inv_cdf(1 - alpha / n_estimates)


def log_mean_terms(pieces: dict, z) -> jax.Array:
  """Per layer, the theorem's term m̄ log(E X/m̄) − E logdet (docs/theory.md §6, §15.1) → [L].

  E over the B prompts (each a task, its demonstrations and one draw of the learner's noise), the
  task average inside the log (Jensen: above the per-task form), m̄ = E dim V_t (joint concavity of
  m log(x/m): valid when dim V_t varies). z = 0: the point estimate; z > 0: each mean replaced by
  its upper confidence bound mean + z·se (one-sided, asymptotically normal). +∞ when a prompt's C_t
  is singular on V_t.
  """
  X, nld, k = pieces["X"], -pieces["logdet"], pieces["k"].astype(pieces["X"].dtype)
  B = X.shape[1]
  se = lambda v: jnp.std(v, axis=1, ddof=1) / math.sqrt(B) if B > 1 else jnp.full(v.shape[:1], jnp.inf, v.dtype)
  m = jnp.mean(k, 1)
  mf = jnp.where(m > 0, m, 1.0)
  ucb_X, ucb_L = jnp.mean(X, 1) + z * se(X), jnp.mean(nld, 1) + z * se(nld)
  term = jnp.where(m > 0, mf * jnp.log(ucb_X / mf) + ucb_L, 0.0)
  return jnp.where(jnp.any(pieces["singular"], 1), jnp.inf, term)


def paper_terms(sens_LB: jax.Array, lamC_LBK: jax.Array, d_prime: int, eps: float) -> tuple[jax.Array, jax.Array]:
  """(as written, floor surrogate) per layer and task, over all d' = D² entries.

  As written: −tr log C_t = +∞ whenever C_t is singular (always for linear attention); reported
  +∞, never ∞ − ∞ = NaN. Floor: C_t + εI, a bound for a noisier surrogate learner only.
  """
  K = lamC_LBK.shape[-1]
  trC = lamC_LBK.sum(-1)
  num = sens_LB + trC
  logdet = jnp.sum(jnp.log(lamC_LBK), -1) + (-jnp.inf if d_prime > K else 0.0)
  exact = jnp.where(jnp.isneginf(logdet), jnp.inf, d_prime * jnp.log(num / d_prime) - logdet)
  floor = d_prime * jnp.log((num + d_prime * eps) / d_prime) - (
      jnp.sum(jnp.log(lamC_LBK + eps), -1) + (d_prime - K) * jnp.log(eps))
  return exact, floor


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
  """sqrt(E_task Var(ℓ | task)) = sqrt(E_task 2s⁴) for the predictor ŵ (exact for Gaussian x)."""
  s2 = population_loss(w_hat_BD, w_BD, Sigma, noise_std)
  return jnp.sqrt(jnp.mean(2.0 * s2**2))


def R_zero(batch: Batch, Sigma: jax.Array, noise_std: float) -> jax.Array:
  """R of the zero predictor on the batch's tasks: the same for every configuration."""
  return estimate_R(jnp.zeros_like(batch.w), batch.w, Sigma, noise_std)


def R_unpruned(params_ref: Params, batch: Batch, model_cfg: ModelConfig, Sigma: jax.Array,
               noise_std: float) -> jax.Array:
  """R of the UNPRUNED model's ŵ_L on the batch's tasks: pass it to every pruned configuration."""
  w_hat = implicit.trajectory(params_ref, batch_tokens(batch), model_cfg).w_hat[-1]
  return estimate_R(w_hat, batch.w, Sigma, noise_std)


def zero_predictor_loss(w_BD: jax.Array, Sigma: jax.Array, noise_std: float) -> jax.Array:
  """The trivial scale: E_task[wᵀΣw] + σ², the population loss of predicting 0."""
  return jnp.mean(jnp.einsum("bd,de,be->b", w_BD, Sigma, w_BD)) + noise_std**2


def default_clip_M(task_cfg: TaskConfig) -> float:
  """M = 10·(tr(Σ_w Σ_x) + σ²): ten times the zero predictor's expected loss, from the config alone."""
  Sx = x_covariance(task_cfg)
  Sw = as_cov("w_cov", task_cfg.w_cov, task_cfg.d, psd=True)
  return 10.0 * (float(np.trace(Sw @ Sx)) + float(task_cfg.noise_std) ** 2)


# --- the supersample CMI bound -----------------------------------------------------------------


class CMI(NamedTuple):
  bound: jax.Array  # bound_point's one-sided upper confidence bound at 1 − alpha (bootstrap over tasks)
  bound_point: jax.Array  # M·mean_i sqrt(2 Î(Δ_i; J_i)) + M/K (plug-in): |gap of min(ℓ, M)| ≤ it at the true I
  mi: jax.Array  # mean_i Î(Δ_i; J_i) in nats (plug-in, ≤ log 2)
  mi_bias: jax.Array  # Miller–Madow size of the plug-in bias, (cells − 1)/(2n), for scale
  gap_clipped: jax.Array  # Monte Carlo gap of min(ℓ, M): mean of (−1)^{J_i} Δ_i
  gap_clipped_se: jax.Array  # its standard error over tasks
  gap: jax.Array  # Monte Carlo gap of the unclipped loss (unbiased for E gap at N shots)
  gap_se: jax.Array  # its standard error over tasks
  clipped_frac: jax.Array  # fraction of losses above M
  cap: float  # M·sqrt(2 log 2) + M/K, the bound for any learner


def supersample(key: jax.Array, task_cfg: TaskConfig, n_tasks: int, dtype=jnp.float32):
  """2N demonstrations per task as N pairs: X [T, N, 2, d], y [T, N, 2], w [T, d].

  Drawn by tasks.sample with 2N demonstrations, so every task family (inputs, prior) is supported.
  """
  N, d = task_cfg.n_context, task_cfg.d
  b = sample(key, task_cfg, n_tasks, n_context=2 * N, dtype=dtype)
  return b.X.reshape(n_tasks, N, 2, d), b.y.reshape(n_tasks, N, 2), b.w


def _plugin_mi(counts: jax.Array) -> jax.Array:
  """Plug-in mutual information (nats) of a joint count table [..., a, b]."""
  n = counts.sum((-2, -1), keepdims=True)
  p = counts / n
  pa, pb = p.sum(-1, keepdims=True), p.sum(-2, keepdims=True)
  ratio = jnp.where(p > 0, p / jnp.where(pa * pb > 0, pa * pb, 1.0), 1.0)
  return jnp.sum(jnp.where(p > 0, p * jnp.log(ratio), 0.0), (-2, -1))


def supersample_cmi(key: jax.Array, learner: Callable, task_cfg: TaskConfig, *, clip_M: float,
                    n_tasks: int = 128, n_coins: int = 8, levels: int = 16, n_boot: int = 200,
                    alpha: float = ALPHA, dtype=jnp.float32) -> CMI:
  """The loss-difference supersample CMI bound in its unconditional form, estimated by Monte Carlo with a
  one-sided error (docs/theory.md §10, §15.2).

  Per task: 2N demonstrations z̃_{i,0}, z̃_{i,1} (i ≤ N); fair coins J_i (`U` below) pick z̃_{i,J_i}
  for the training set; ŵ = learner(chosen N) is deterministic; Δ_i = ℓ(ŵ, z̃_{i,1}) − ℓ(ŵ, z̃_{i,0}).
  Then gap = E[(1/N) Σ_i (−1)^{J_i} Δ_i] exactly. Theorem (docs/theory.md §15.2): for a loss in [0, M],
  under the product of the marginal laws of Δ_i and J_i, (−1)^{J'}Δ is mean-zero in [−M, M],
  cosh(λδ) ≤ e^{λ²M²/2}, and Donsker–Varadhan gives |E (−1)^{J_i} Δ_i| ≤ sqrt(2M² I(Δ_i; J_i)), the
  information taken over the task, its supersample and the coins together; so |gap| ≤ (M/N)
  Σ_i sqrt(2 I(Δ_i; J_i)) ≤ M·sqrt(2 log 2). The loss is ℓ_q = (M/K)·⌊K·min(ℓ, M)/M⌋ (K = levels), whose
  Δ takes 2K + 1 values; since min(ℓ, M) − M/K < ℓ_q ≤ min(ℓ, M), |gap of min(ℓ, M)| ≤ that bound + M/K.
  Î is the plug-in estimate per i over n_tasks × n_coins draws of (Δ_i, J_i) (bound_point); `bound` is its
  one-sided upper confidence bound: the (1 − alpha) quantile over n_boot resamples of the tasks with
  replacement (the coins of a task share its supersample, so the task is the resampled unit).
  learner: (X [B, N, d], y [B, N]) → ŵ [B, d].
  """
  M = check_M(clip_M)
  n_tasks, n_coins = check_positive_int("n_tasks", n_tasks, 2), check_positive_int("n_coins", n_coins)
  K = check_positive_int("levels", levels)
  n_boot = check_positive_int("n_boot", n_boot, 2)
  z_one_sided(alpha, 1)
  core = functools.partial(_cmi_core, learner=learner, task_cfg=task_cfg, M=M, n_tasks=n_tasks,
                           n_coins=n_coins, K=K, n_boot=n_boot, q=1 - alpha, dtype=dtype)
  return CMI(*jax.jit(core)(key),
             M * math.sqrt(2 * math.log(2)) + M / K)


def _cmi_core(key, *, learner, task_cfg, M, n_tasks, n_coins, K, n_boot, q, dtype):
  N, d = task_cfg.n_context, task_cfg.d
  k_s, k_u, k_b = jax.random.split(key, 3)
  X, y, _ = supersample(k_s, task_cfg, n_tasks, dtype)
  U = jax.random.bernoulli(k_u, 0.5, (n_tasks, n_coins, N)).astype(jnp.int32)
  Xc = jnp.take_along_axis(X[:, None], U[..., None, None], axis=3)[..., 0, :]  # [T, C, N, d]
  yc = jnp.take_along_axis(y[:, None], U[..., None], axis=3)[..., 0]
  w_hat = learner(Xc.reshape(-1, N, d), yc.reshape(-1, N)).reshape(n_tasks, n_coins, d)
  loss = (jnp.einsum("tnkd,tcd->tcnk", X, w_hat) - y[:, None]) ** 2  # [T, C, N, 2]
  sign = (1 - 2 * U).astype(loss.dtype)
  per_task = lambda l: jnp.mean(sign * (l[..., 1] - l[..., 0]), axis=(1, 2))  # [T]
  mean_se = lambda v: (jnp.mean(v), jnp.std(v, ddof=1) / math.sqrt(n_tasks))
  g, g_se = mean_se(per_task(loss))
  gc, gc_se = mean_se(per_task(jnp.minimum(loss, M)))
  qz = jnp.floor(jnp.minimum(loss, M) * (K / M)).astype(jnp.int32)  # 0..K
  dq = qz[..., 1] - qz[..., 0] + K  # 0..2K
  i = jnp.broadcast_to(jnp.arange(N), dq.shape)
  counts = jnp.zeros((N, 2 * K + 1, 2), loss.dtype).at[i, dq, U].add(1.0)  # joint table of (Δ_i, U_i) per i
  mi_i = _plugin_mi(counts)
  point = M * jnp.mean(jnp.sqrt(2.0 * mi_i)) + M / K
  # the bootstrap: each resample weighs task t by how often it was drawn
  draws = jax.random.randint(k_b, (n_boot, n_tasks), 0, n_tasks)
  weight = jnp.zeros((n_boot, n_tasks), loss.dtype).at[jnp.arange(n_boot)[:, None], draws].add(1.0)
  t = jnp.broadcast_to(jnp.arange(n_tasks)[:, None, None], dq.shape)
  counts_b = jnp.zeros((n_boot, N, 2 * K + 1, 2), loss.dtype).at[:, i, dq, U].add(weight[:, t])
  boot = M * jnp.mean(jnp.sqrt(2.0 * _plugin_mi(counts_b)), -1) + M / K
  cells = jnp.sum(counts.sum(-1) > 0, -1).astype(loss.dtype)  # occupied Δ values per i
  mi_bias = jnp.mean((cells - 1) / (2.0 * n_tasks * n_coins))
  return (jnp.maximum(jnp.quantile(boot, q), point), point, jnp.mean(mi_i), mi_bias, gc, gc_se, g, g_se,
          jnp.mean(loss > M))


def implicit_learner(params: Params, model_cfg: ModelConfig) -> Callable:
  """The model's implicit predictor ŵ_L (docs/theory.md §5) as a learner (X [B,N,d], y [B,N]) → [B, d]."""
  def learner(X, y):
    Z = tokens(X, y, jnp.zeros_like(X[:, 0]))  # the query never enters ŵ: it is not a key or value
    return implicit.trajectory(params, Z, model_cfg).w_hat[-1]
  return learner


# --- Theorem 2 and its finite versions -------------------------------------------------------


class Bound(NamedTuple):
  spectrum: SubspaceSpectrum  # S_t inside V_t, dim V_t, ζ_t, on the noisy learner's trajectory
  subspace_terms: jax.Array  # [L, B] the per-prompt placement (not a bound; +inf where C_t|V_t is singular)
  reason: jax.Array  # [L, B] REASONS code of an infinite term (0: finite)
  log_mean_terms: jax.Array  # [L] the theorem's term per layer, at the point estimates
  log_mean_ucb: jax.Array  # [L] the same with each mean at its one-sided upper confidence bound
  paper_terms: jax.Array  # [L, B] as written over all D² entries (+inf)
  floor_terms: jax.Array  # [L, B] C_t + εI over all D² entries (surrogate learner, not a bound for ŵ)
  trC: jax.Array  # [L, B] tr C_t
  R: jax.Array  # the R used (given, R_unpruned or R_zero)
  R_zero: jax.Array  # R of the zero predictor
  bound_subspace: jax.Array  # sqrt((R²/N) Σ_t log_mean_ucb): the theorem, at one-sided confidence 1 − alpha
  bound_subspace_point: jax.Array  # sqrt((R²/N) Σ_t log_mean_terms): its point estimate
  bound_subspace_per_prompt: jax.Array  # the paper's placement E log: below the point estimate, not a bound
  paper_as_written: jax.Array  # +inf
  floor_surrogate: jax.Array  # NOT a bound for the ICL learner
  gap: jax.Array  # [B] measured gap of the deterministic ŵ_L
  gap_noisy: jax.Array  # [B] measured gap of the noisy learner (one draw of its noise per prompt)
  trivial: jax.Array  # zero predictor's population loss (the vacuity scale)
  c: jax.Array  # (N − b)/(b N)


def _sqrt_sum(R, N, s):
  """sqrt((R²/N)·s): +inf if s is, NaN (not clipped) if s is negative."""
  return jnp.where(s >= 0, jnp.sqrt(jnp.abs(s) * R**2 / N), jnp.nan)


def _sqrt_bound(R, N, terms_LB):
  """sqrt((R²/N)·Σ_t mean_B term): the per-prompt placement's value."""
  return _sqrt_sum(R, N, jnp.sum(jnp.mean(terms_LB, axis=1), axis=0))


def _prepare(batch, model_cfg, task_cfg, b, eps, R, rtol, eps_zero_ok=False):
  N = batch.X.shape[1]
  b = N // 2 if b is None else b
  c = covariance_scale(b, N)
  eps, R = check_eps(eps, eps_zero_ok), check_R(R)
  dtype = batch.X.dtype
  rtol = check_rtol(rtol) if rtol is not None else _default_rtol(max(N, model_cfg.D**2), dtype)
  Sigma = jnp.asarray(x_covariance(task_cfg), dtype)
  R = None if R is None else jnp.asarray(R, dtype)
  return N, b, c, eps, R, rtol, Sigma


def theorem2(params: Params, batch: Batch, model_cfg: ModelConfig, task_cfg: TaskConfig, *, b: int | None = None,
             eps: float = 1e-6, R=None, R_params: Params | None = None, rtol: float | None = None,
             noise_seed: int = 0, alpha: float = ALPHA) -> Bound:
  """Theorem 2 of the paper and its subspace version, a theorem, for the paper's noisy learner built on
  the implicit learner of `params` (docs/theory.md §6, §15.1).

  Every prompt of the batch runs the noisy learner once (`noisy_trajectory`, noise from key(noise_seed)),
  so the batch is a Monte-Carlo sample of (task, demonstrations, noise). bound_subspace is the log of
  the mean with each mean at its one-sided upper confidence bound (2L means, Bonferroni, jointly at
  1 − alpha). b defaults to N // 2. R: given, else R_unpruned(R_params) when R_params (the unpruned
  weights) is given, else R_zero. rtol (dim V_t and the singularity of C_t|V_t, relative) defaults to
  max(N, D²)·ε_mach. eps only enters the floor surrogate.
  """
  N, b, c, eps, R, rtol, Sigma = _prepare(batch, model_cfg, task_cfg, b, eps, R, rtol)
  check_positive_int("noise_seed", noise_seed, 0)
  z = z_one_sided(alpha, 2 * model_cfg.n_layers)
  return _theorem2(params, R_params, batch, Sigma, R, float(task_cfg.noise_std), c, eps, rtol,
                   jax.random.key(noise_seed), z, model_cfg, b == N)


@functools.partial(jax.jit, static_argnums=(11, 12))
def _theorem2(params, R_params, batch, Sigma, R, noise_std, c, eps, rtol, key, z, model_cfg, b_is_N) -> Bound:
  N = batch.X.shape[1]
  Z = batch_tokens(batch)
  traj = noisy_trajectory(params, Z, key, c)
  spec = subspace_spectrum(params, traj, rtol)
  pieces = subspace_pieces(spec, c, 0.0, N, b_is_N, rtol)
  sub, reason = subspace_terms(spec, c, 0.0, N, b_is_N, rtol)
  point, ucb = log_mean_terms(pieces, 0.0), log_mean_terms(pieces, z)
  lamC = c * sample_cov_eigvals(per_demo_gradients(params, traj))
  exact, floor = paper_terms(spec.sensitive, lamC, model_cfg.D**2, eps)
  Rz = R_zero(batch, Sigma, noise_std)
  c = jnp.asarray(c, lamC.dtype)
  if R is None:
    R = Rz if R_params is None else R_unpruned(R_params, batch, model_cfg, Sigma, noise_std)
  w_hat = implicit.trajectory(params, Z, model_cfg).w_hat[-1]
  return Bound(spec, sub, reason, point, ucb, exact, floor, lamC.sum(-1), R, Rz, _sqrt_sum(R, N, ucb.sum()),
               _sqrt_sum(R, N, point.sum()), _sqrt_bound(R, N, sub), _sqrt_bound(R, N, exact),
               _sqrt_bound(R, N, floor), gap(w_hat, batch, Sigma, noise_std),
               gap(traj.w_hat[-1], batch, Sigma, noise_std), zero_predictor_loss(batch.w, Sigma, noise_std), c)


def sensitivity(params: Params, batch: Batch, model_cfg: ModelConfig, task_cfg: TaskConfig, *, bs, epss,
                R=None, R_params: Params | None = None, rtol: float | None = None, noise_seed: int = 0,
                alpha: float = ALPHA) -> dict[str, np.ndarray]:
  """The bounds over a grid of b (shots) and ε (noise floor): arrays [len(bs), len(epss)].

  bound_subspace: the theorem inside V_t (as `theorem2`) for the noisy learner with noise C_t + ε·P_{V_t}
  (ε = 0: C_t alone; +inf where C_t|V_t is singular); each grid point runs its own learner, from the
  same key. floor_surrogate: C_t + εI over all D² entries on that point's trajectory (not a bound for
  the ICL learner; ε must be > 0).
  """
  bs, epss = list(bs), list(epss)
  if not bs or not epss:
    raise ValueError("bs and epss must be non-empty sequences")
  N = batch.X.shape[1]
  for bb in bs:
    check_b(bb, N)
  for e in epss:
    check_eps(e, allow_zero=True)
  base = theorem2(params, batch, model_cfg, task_cfg, b=bs[0], R=R, R_params=R_params, rtol=rtol,
                  noise_seed=noise_seed, alpha=alpha)
  rtol = rtol if rtol is not None else _default_rtol(max(N, model_cfg.D**2), batch.X.dtype)
  z = z_one_sided(alpha, 2 * model_cfg.n_layers)
  sub, floor = np.full((len(bs), len(epss)), np.nan), np.full((len(bs), len(epss)), np.nan)
  for i, bb in enumerate(bs):
    for j, e in enumerate(epss):
      s_ij, f_ij = _grid_point(params, batch, jax.random.key(noise_seed), covariance_scale(bb, N), e, rtol, base.R,
                               z, model_cfg.D**2, bb == N, e > 0)
      sub[i, j], floor[i, j] = float(s_ij), float(f_ij) if e > 0 else np.nan
  return {"b": np.asarray(bs), "eps": np.asarray(epss, float), "bound_subspace": sub, "floor_surrogate": floor,
          "R": float(base.R)}


@functools.partial(jax.jit, static_argnums=(8, 9, 10))
def _grid_point(params, batch, key, c, eps, rtol, R, z, d_prime, b_is_N, with_eps):
  N = batch.X.shape[1]
  traj = noisy_trajectory(params, batch_tokens(batch), key, c, eps=eps if with_eps else None, rtol=rtol)
  spec = subspace_spectrum(params, traj, rtol)
  sub = _sqrt_sum(R, N, log_mean_terms(subspace_pieces(spec, c, eps, N, b_is_N, rtol), z).sum())
  lamC = c * sample_cov_eigvals(per_demo_gradients(params, traj))
  floor = _sqrt_bound(R, N, paper_terms(spec.sensitive, lamC, d_prime, jnp.maximum(eps, 1e-300))[1])
  return sub, floor


def sweep_metrics(params: Params, batch: Batch, model_cfg: ModelConfig, task_cfg: TaskConfig, *, b: int | None = None,
                  eps: float = 1e-6, R=None, R_params: Params | None = None, rtol: float | None = None,
                  clip_M: float | None = None, noise_seed: int = 0, alpha: float = ALPHA, cmi_seed: int | None = 0,
                  cmi_tasks: int = 128, cmi_coins: int = 8, cmi_levels: int = 16,
                  cmi_boot: int = 200) -> dict[str, jax.Array]:
  """Scalar bound metrics (means over tasks) for one parameter set; jittable, vmappable over params.

  b defaults to N // 2; R to R_zero (or R_unpruned when R_params, the unpruned weights, is given):
  fixed across configurations. clip_M defaults to `default_clip_M(task_cfg)`. The noisy learner draws
  its noise from key(noise_seed), the CMI estimate its own cmi_tasks supersampled tasks from task_cfg
  with key(cmi_seed), the same for every configuration (cmi_seed=None drops the cmi_* columns). Keys:
    bound_subspace     the theorem inside V_t for the paper's noisy learner (docs/theory.md §6, §15.1): the log
                       of the mean, each mean at its one-sided upper confidence bound, jointly at 1 − alpha
                       (+inf: see subspace_inf_*); bound_subspace_point at the point estimates;
                       bound_subspace_per_prompt the paper's E log placement (below the point: NOT a bound)
    bound_subspace_clipped   bound_subspace at R = M/2: a theorem for the clipped loss min(ℓ, M)
    subspace_sum       Σ_t of the theorem's terms at their upper confidence bounds (R-free)
    subspace_nonfinite, subspace_inf_frac, subspace_inf_reason (max REASONS code over layers, tasks)
    dimV, dimV_max     mean and max of dim V_t over layers and tasks; subspace_residual (max)
    subspace_vacuity   bound_subspace ÷ trivial; subspace_vacuous (≥ 1)
    gap, gap_se        the deterministic ŵ_L's gap on this batch and its standard error over tasks
    gap_noisy, gap_noisy_se   the noisy learner's (the learner bound_subspace concerns), one noise draw per task
    cmi_bound (upper confidence bound at 1 − alpha), cmi_bound_point (plug-in), cmi_mi, cmi_mi_bias,
    cmi_gap_clipped(_se), cmi_gap(_se), cmi_clipped_frac, cmi_cap, cmi_vacuity, cmi_vacuous: see
                       `supersample_cmi` (a bound on ŵ_L's clipped loss's gap)
    paper_as_written   +inf (C_t singular), floor_surrogate (NOT a bound: C_t + εI, a noisier learner)
    bound_sensitive (E Σ_t ‖ΔW_t‖²‖I + W_{t−1}‖²), trC (E Σ_t tr C_t), both on the noisy trajectory,
    R (used), R_zero, R_unpruned (only with R_params), R2_over_N, clip_M, trivial, b_is_N, c, alpha.
  Flags are 0/1 floats.
  """
  N = batch.X.shape[1]
  b = N // 2 if b is None else b
  M = default_clip_M(task_cfg) if clip_M is None else check_M(clip_M)
  if cmi_seed is not None:  # cheap checks before the heavy work
    check_positive_int("cmi_seed", cmi_seed, 0), check_positive_int("cmi_tasks", cmi_tasks, 2)
    check_positive_int("cmi_coins", cmi_coins), check_positive_int("cmi_levels", cmi_levels)
    check_positive_int("cmi_boot", cmi_boot, 2)
  bd = theorem2(params, batch, model_cfg, task_cfg, b=b, eps=eps, R=R, R_params=R_params, rtol=rtol,
                noise_seed=noise_seed, alpha=alpha)
  dt = bd.R.dtype
  f = lambda x: jnp.asarray(x, dt)
  se = lambda v: jnp.std(v, ddof=1) / math.sqrt(v.shape[0]) if v.shape[0] > 1 else f(jnp.nan)
  out = {
      "bound_subspace": bd.bound_subspace, "bound_subspace_point": bd.bound_subspace_point,
      "bound_subspace_per_prompt": bd.bound_subspace_per_prompt,
      "bound_subspace_clipped": _sqrt_sum(f(M / 2), N, bd.log_mean_ucb.sum()),
      "subspace_sum": bd.log_mean_ucb.sum(), "subspace_nonfinite": f(~jnp.isfinite(bd.bound_subspace)),
      "subspace_inf_frac": jnp.mean(f(~jnp.isfinite(bd.subspace_terms))),
      "subspace_inf_reason": f(jnp.max(bd.reason)), "dimV": jnp.mean(f(bd.spectrum.dimV)),
      "dimV_max": f(jnp.max(bd.spectrum.dimV)), "subspace_residual": jnp.max(bd.spectrum.residual),
      "subspace_vacuity": bd.bound_subspace / bd.trivial, "subspace_vacuous": f(bd.bound_subspace >= bd.trivial),
      "paper_as_written": bd.paper_as_written, "floor_surrogate": bd.floor_surrogate,
      "bound_sensitive": jnp.mean(jnp.sum(bd.spectrum.sensitive, 0)), "trC": jnp.mean(jnp.sum(bd.trC, 0)),
      "gap": jnp.mean(bd.gap), "gap_se": se(bd.gap), "gap_noisy": jnp.mean(bd.gap_noisy),
      "gap_noisy_se": se(bd.gap_noisy), "R": bd.R, "R_zero": bd.R_zero, "R2_over_N": bd.R**2 / N,
      "clip_M": f(M), "trivial": bd.trivial, "b_is_N": f(float(b == N)), "c": f(bd.c), "alpha": f(alpha),
  }
  if R_params is not None:
    Sigma = jnp.asarray(x_covariance(task_cfg), dt)
    out["R_unpruned"] = R_unpruned(R_params, batch, model_cfg, Sigma, float(task_cfg.noise_std))
  if cmi_seed is not None:
    cfg_N = dataclasses.replace(task_cfg, n_context=N)
    cm = supersample_cmi(jax.random.key(int(cmi_seed)),
                         implicit_learner(params, model_cfg), cfg_N, clip_M=M, n_tasks=cmi_tasks,
                         n_coins=cmi_coins, levels=cmi_levels, n_boot=cmi_boot, alpha=alpha, dtype=batch.X.dtype)
    out.update({"cmi_bound": cm.bound, "cmi_bound_point": cm.bound_point, "cmi_mi": cm.mi,
                "cmi_mi_bias": cm.mi_bias, "cmi_gap_clipped": cm.gap_clipped,
                "cmi_gap_clipped_se": cm.gap_clipped_se, "cmi_gap": cm.gap, "cmi_gap_se": cm.gap_se,
                "cmi_clipped_frac": cm.clipped_frac, "cmi_cap": f(cm.cap), "cmi_vacuity": cm.bound / bd.trivial,
                "cmi_vacuous": f(cm.bound >= bd.trivial)})
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
