"""In-context linear regression tasks and their token layout (docs/theory.md §1).

Tokens are rows here: Z_BTD has T = N + 1 tokens h_i = [x_i; y_i] of dimension D = d + 1,
the query token last, [x_q; 0]. The paper writes the same tokens as columns of H.

Families: inputs x ~ N(0, Σ) ("gaussian", Σ = x_cov) or x ~ U(−a, a)^d ("uniform", a = x_scale,
covariance a²/3·I, independent coordinates with fourth cumulant −2a⁴/15); task vectors
w ~ N(0, Σ_w) with Σ_w = w_cov positive semidefinite, so a low-rank prior is a diagonal w_cov
with zeros (w then lies in the span of its nonzero entries).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Key of the held-out tasks that analyze, prune and sweeps evaluate a trained model on (by default):
# every command and run sees the same tasks.
EVAL_SEED = 20_240_406


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  d: int = 10  # input dimension; tokens have d + 1 entries
  n_context: int = 20  # N, demonstrations per task
  noise_std: float = 0.0  # σ, label noise on the demonstrations
  x_cov: tuple | None = None  # Σ of x ~ N(0, Σ) ("gaussian" only): None = I_d, a length-d diagonal, or a d×d SPD matrix
  w_cov: tuple | None = None  # Σ_w of w ~ N(0, Σ_w), same forms but PSD: zero entries give a low-rank prior; None = I_d
  query_noise: bool = False  # add N(0, σ²) to the query target too
  x_dist: str = "gaussian"  # "gaussian" x ~ N(0, x_cov) or "uniform" x ~ U(−a, a)^d with covariance a²/3·I
  x_scale: float = 1.0  # a, the half-width of "uniform" inputs; stays 1.0 for "gaussian" (use x_cov)
  n_context_min: int = 0  # mixed context lengths: each task keeps M ~ U{n_context_min, …, N} demonstrations,
  #                         the others become zero tokens [0; 0] (no term in linear attention's sums); 0: all N
  # In-weights knowledge: with probability w0_prob a task's w is one fixed w₀ (see `w0`), else fresh.
  w0_prob: float = 0.0  # p ∈ [0, 1], the share of tasks whose w is w₀
  w0_seed: int = 0  # seeds the one draw of w₀ from the prior N(0, Σ_w)

  def __post_init__(self):
    validate(self)

  @property
  def D(self) -> int:
    return self.d + 1


X_DISTS = ("gaussian", "uniform")


class Batch(NamedTuple):
  X: jax.Array  # [B, N, d] demonstration inputs
  y: jax.Array  # [B, N] demonstration labels
  x_q: jax.Array  # [B, d] query input
  y_q: jax.Array  # [B] query target
  w: jax.Array  # [B, d] task vector


def _check_int(name, value, lo):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def as_cov(name: str, cov, d: int, psd: bool = False) -> np.ndarray:
  """Σ given as None, a length-d diagonal or a d×d matrix → d×d float64 matrix, SPD (or PSD if psd)."""
  if cov is None:
    return np.eye(d)
  try:
    a = np.asarray(cov, dtype=np.float64)
  except (TypeError, ValueError) as e:  # ragged or non-numeric: name the argument, not numpy's internals
    raise ValueError(f"{name} must be a length-{d} diagonal or a {d}×{d} matrix of numbers: {e}") from None
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} must be finite")
  if a.shape == (d,):
    if np.any(a < 0) if psd else np.any(a <= 0):
      raise ValueError(f"{name} as a diagonal must be {'>= 0' if psd else '> 0'} entrywise, got {a}")
    if not np.any(a > 0):
      raise ValueError(f"{name} must have at least one positive entry, got {a}")
    return np.diag(a)
  if a.shape != (d, d):
    raise ValueError(f"{name} must have shape ({d},) or ({d}, {d}), got {a.shape}")
  if not np.allclose(a, a.T, rtol=1e-10, atol=1e-12):
    raise ValueError(f"{name} must be symmetric")
  lam = np.linalg.eigvalsh(a)
  if psd and (lam.min() < -10 * d * np.finfo(np.float64).eps * lam.max() or lam.max() <= 0):
    raise ValueError(f"{name} must be positive semidefinite and nonzero, got eigenvalues {lam}")
  if not psd and lam.min() <= 0:
    raise ValueError(f"{name} must be positive definite")
  return a


def validate(cfg: TaskConfig) -> None:
  _check_int("d", cfg.d, 1)
  _check_int("n_context", cfg.n_context, 1)
  if not (isinstance(cfg.noise_std, (int, float)) and math.isfinite(cfg.noise_std)) or cfg.noise_std < 0:
    raise ValueError(f"noise_std must be a finite number >= 0, got {cfg.noise_std!r}")
  as_cov("x_cov", cfg.x_cov, cfg.d)
  as_cov("w_cov", cfg.w_cov, cfg.d, psd=True)
  if cfg.x_dist not in X_DISTS:
    raise ValueError(f"x_dist must be one of {X_DISTS}, got {cfg.x_dist!r}")
  a = cfg.x_scale
  if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
    raise ValueError(f"x_scale must be a finite number > 0, got {a!r}")
  if cfg.x_dist == "uniform" and cfg.x_cov is not None:
    raise ValueError("x_cov must be None with x_dist='uniform' (its covariance is x_scale²/3·I)")
  if cfg.x_dist == "gaussian" and a != 1.0:
    raise ValueError(f"x_scale must be 1.0 with x_dist='gaussian' (set x_cov instead), got {a!r}")
  _check_int("n_context_min", cfg.n_context_min, 0)
  if cfg.n_context_min > cfg.n_context:
    raise ValueError(f"n_context_min must be in [0, n_context = {cfg.n_context}], got {cfg.n_context_min}")
  p = cfg.w0_prob
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
    raise ValueError(f"w0_prob must be a number in [0, 1], got {p!r}")
  _check_int("w0_seed", cfg.w0_seed, 0)


def x_covariance(cfg: TaskConfig) -> np.ndarray:
  """Σ_x = E[x xᵀ] of the inputs, d×d float64: x_cov for "gaussian", a²/3·I for "uniform"."""
  if cfg.x_dist == "uniform":
    return cfg.x_scale**2 / 3 * np.eye(cfg.d)
  return as_cov("x_cov", cfg.x_cov, cfg.d)


def x_fourth_cumulant(cfg: TaskConfig) -> float:
  """κ = E[x_k⁴] − 3(E[x_k²])² per coordinate: 0 for "gaussian", a⁴/5 − 3a⁴/9 = −2a⁴/15 for "uniform"."""
  return -2 * cfg.x_scale**4 / 15 if cfg.x_dist == "uniform" else 0.0


def _factor(cov: np.ndarray) -> np.ndarray:
  """F with F Fᵀ = cov: Cholesky when cov is well conditioned, else from its eigendecomposition.

  Cholesky of a numerically singular matrix can succeed with √ε-sized garbage in the null space,
  so low-rank priors drop eigenvalues below d·ε·λ_max instead: w then lies exactly in the span.
  """
  lam, V = np.linalg.eigh(cov)
  if lam.min() > 1e-8 * lam.max():
    return np.linalg.cholesky(cov)
  keep = lam > cov.shape[0] * np.finfo(np.float64).eps * lam.max()
  return V * np.sqrt(np.where(keep, lam, 0.0))


def sample(key: jax.Array, cfg: TaskConfig, batch_size: int, n_context: int | None = None,
           dtype=jnp.float32, draw_dtype=None) -> Batch:
  """A batch of tasks; n_context overrides cfg.n_context (test-time M ≠ N).

  draw_dtype (default: dtype): the precision of the random draws, widened to dtype before any
  arithmetic, so labels are exact functions of the inputs in dtype. Training a float64 model on
  float32 draws costs half the random bits; the tasks differ only below float32 resolution.
  """
  _check_int("batch_size", batch_size, 1)
  N = cfg.n_context if n_context is None else n_context
  _check_int("n_context", N, 1)
  d = cfg.d
  draw = dtype if draw_dtype is None else draw_dtype
  normal = lambda k, shape: jax.random.normal(k, shape, draw).astype(dtype)
  k_w, k_x, k_q, k_e, k_eq = jax.random.split(key, 5)
  w = normal(k_w, (batch_size, d))
  if cfg.w_cov is not None:  # the identity factor is skipped: it returns the same bits
    w = w @ jnp.asarray(_factor(as_cov("w_cov", cfg.w_cov, d, psd=True)), dtype).T
  X, x_q = _inputs(k_x, cfg, (batch_size, N, d), dtype, draw), _inputs(k_q, cfg, (batch_size, d), dtype, draw)
  if cfg.w0_prob > 0:  # a Python branch: with p = 0 the draws are bit-identical to a config without w₀
    is_w0 = jax.random.bernoulli(jax.random.fold_in(key, 6), cfg.w0_prob, (batch_size,))
    w = jnp.where(is_w0[:, None], jnp.asarray(w0(cfg), dtype), w)
  y = jnp.einsum("bnd,bd->bn", X, w)
  if cfg.noise_std > 0:  # σ = 0 adds exact zeros: the draw is skipped, the other keys are unchanged
    y = y + cfg.noise_std * normal(k_e, (batch_size, N))
  y_q = jnp.einsum("bd,bd->b", x_q, w)
  if cfg.query_noise and cfg.noise_std > 0:
    y_q = y_q + cfg.noise_std * normal(k_eq, (batch_size,))
  if cfg.n_context_min:
    X, y = _keep_first(jax.random.fold_in(key, 7), cfg.n_context_min, X, y)
  return Batch(X, y, x_q, y_q, w)


def _keep_first(key: jax.Array, m_min: int, X: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Zero all but the first M ~ U{m_min, …, N} demonstrations of each task (a key of its own, so
  the other draws are those of the fixed-length prompt)."""
  B, N = y.shape
  if m_min > N:
    raise ValueError(f"n_context must be >= n_context_min = {m_min} with mixed lengths, got {N}")
  keep = jnp.arange(N) < jax.random.randint(key, (B, 1), m_min, N + 1)
  return X * keep[..., None], y * keep


def w_factor(cfg: TaskConfig) -> np.ndarray:
  """F [d, d] with F Fᵀ = Σ_w (zero columns where Σ_w is low-rank), so w = F z with z ~ N(0, I_d)."""
  return _factor(as_cov("w_cov", cfg.w_cov, cfg.d, psd=True))


def w0(cfg: TaskConfig) -> np.ndarray:
  """The fixed task vector w₀ ~ N(0, Σ_w) → [d] float64, drawn in numpy from w0_seed so that every
  dtype (training in float32, evaluation in float64) sees the same w₀."""
  z = np.random.default_rng(cfg.w0_seed).standard_normal(cfg.d)
  return w_factor(cfg) @ z


def _inputs(key: jax.Array, cfg: TaskConfig, shape: tuple, dtype, draw_dtype) -> jax.Array:
  if cfg.x_dist == "uniform":
    return jax.random.uniform(key, shape, draw_dtype, -cfg.x_scale, cfg.x_scale).astype(dtype)
  z = jax.random.normal(key, shape, draw_dtype).astype(dtype)
  if cfg.x_cov is None:  # Σ = I: the product with the identity would return z bit for bit, at a cost
    return z
  return z @ jnp.asarray(np.linalg.cholesky(as_cov("x_cov", cfg.x_cov, cfg.d)), dtype).T


def tokens(X: jax.Array, y: jax.Array, x_q: jax.Array) -> jax.Array:
  """[B,N,d], [B,N], [B,d] → Z_BTD with T = N + 1, D = d + 1; the query's y-slot is 0."""
  demos = jnp.concatenate([X, y[..., None]], axis=-1)
  query = jnp.concatenate([x_q, jnp.zeros_like(x_q[..., :1])], axis=-1)
  return jnp.concatenate([demos, query[..., None, :]], axis=-2)


def batch_tokens(batch: Batch) -> jax.Array:
  return tokens(batch.X, batch.y, batch.x_q)


def normalised_error(sq_err: jax.Array, d: int) -> jax.Array:
  """Squared error / d, so that the zero predictor scores 1 for Σ = I, w ~ N(0, I) (§1)."""
  return sq_err / d


def scale_demonstrations(key: jax.Array, batch: Batch, frac: float, scale: float) -> Batch:
  """A share `frac` of the tasks get their demonstrations scaled, x_i ← s·x_i with s ~ U[1, scale],
  labels following (y_i = x_iᵀw + the same noise); queries keep the test distribution.

  Deep linear attention fails on the rare tasks whose demonstrations' covariance has a large top
  eigenvalue (docs/theory.md §11); training on batches that reach into that tail is what keeps the
  expected error of deep models finite (the deep_recipes study).
  """
  k_pick, k_s = jax.random.split(key)
  n, dtype = batch.X.shape[0], batch.X.dtype
  s = jnp.where(jax.random.uniform(k_pick, (n,), dtype) < frac, jax.random.uniform(k_s, (n,), dtype, 1.0, scale), 1.0)
  return batch._replace(X=batch.X * s[:, None, None],
                        y=batch.y + (s[:, None] - 1) * jnp.einsum("bnd,bd->bn", batch.X, batch.w))
