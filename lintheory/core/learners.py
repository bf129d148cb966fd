"""Explicit in-context learners, their closed-form losses, and the GD construction.

docs/theory.md §3 (GD, preconditioned GD, GD++ and the weights that implement them) and §9
(η*, Γ*, ridge floor, the exact loss of any one-layer predictor).
Learners take demonstrations X [B, N, d], y [B, N] and return iterates w_t [S, B, d].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core.model import ModelConfig, Params, config_of, heads
from lintheory.core.tasks import as_cov, w0, x_covariance, x_fourth_cumulant


def _steps(eta, n_steps: int | None) -> jax.Array:
  """η as a scalar (repeated n_steps times) or a per-step vector → [S]."""
  eta = jnp.asarray(eta)
  if eta.ndim == 0:
    if n_steps is None or n_steps < 1:
      raise ValueError(f"n_steps must be >= 1 with a scalar eta, got {n_steps!r}")
    return jnp.full((n_steps,), eta)
  if eta.ndim != 1 or eta.shape[0] < 1 or (n_steps is not None and eta.shape[0] != n_steps):
    raise ValueError(f"eta must be a scalar or a vector of n_steps={n_steps} step sizes, got shape {eta.shape}")
  return eta


def gd(X: jax.Array, y: jax.Array, eta, n_steps: int | None = None, P: jax.Array | None = None):
  """t steps of (preconditioned) GD on (1/2N)Σ(w·x_i − y_i)² from w_0 = 0 → w_t [S, B, d].

  w_t = w_{t-1} + η_t P_t (1/N) Xᵀ(y − X w_{t-1}); P: None, [d, d] or per-step [S, d, d].
  """
  etas = _steps(eta, n_steps if P is None or P.ndim == 2 else P.shape[0])
  S, N, d = etas.shape[0], X.shape[-2], X.shape[-1]
  Ps = jnp.broadcast_to(jnp.eye(d, dtype=X.dtype) if P is None else P, (S, d, d))

  def step(w, eta_P):
    eta_t, P_t = eta_P
    grad = jnp.einsum("bnd,bn->bd", X, y - jnp.einsum("bnd,bd->bn", X, w)) / N
    w = w + eta_t * grad @ P_t.T
    return w, w

  _, ws = jax.lax.scan(step, jnp.zeros(X.shape[:-2] + (d,), X.dtype), (etas, Ps))
  return ws


def gd_plus_plus(X, y, x_q, eta, gamma, n_steps: int | None = None):
  """GD++ (von Oswald): GD on inputs transformed each step by x ← (I − γ_t Σ̂_t) x.

  Returns (ŵ_t [S, B, d], ŷ_t [S, B]) with ŷ_t = ŵ_t·x_q for the untransformed query.
  Both updates of a step use the previous step's inputs, as one attention layer does.
  """
  etas = _steps(eta, n_steps)
  gammas = _steps(gamma, etas.shape[0])
  N, d = X.shape[-2], X.shape[-1]

  def step(carry, eta_gamma):
    Xt, r, A, w = carry  # current inputs, residuals, query map x_q^t = A x_q^0 (docs/theory.md §3's Ψ_t), predictor
    eta_t, gamma_t = eta_gamma
    grad = jnp.einsum("bnd,bn->bd", Xt, r) / N
    w = w + eta_t * jnp.einsum("bed,be->bd", A, grad)
    r = r - eta_t * jnp.einsum("bnd,bd->bn", Xt, grad)
    Sigma_hat = jnp.einsum("bnd,bne->bde", Xt, Xt) / N
    A = A - gamma_t * Sigma_hat @ A
    Xt = Xt - gamma_t * jnp.einsum("bnd,bde->bne", Xt, Sigma_hat)
    return (Xt, r, A, w), w

  eye = jnp.broadcast_to(jnp.eye(d, dtype=X.dtype), X.shape[:-2] + (d, d))
  init = (X, y, eye, jnp.zeros(X.shape[:-2] + (d,), X.dtype))
  _, ws = jax.lax.scan(step, init, (etas, gammas))
  return ws, jnp.einsum("sbd,bd->sb", ws, x_q)


# --- the same learners from the demonstrations' moments (docs/theory.md §3) -----------------------
# GD and GD++ touch the demonstrations only through Σ̂ = XᵀX/N and b = Σ̂_xy = Xᵀy/N, so their iterates
# follow from (Σ̂, b): per task and step O(d²) instead of O(N d) for GD, O(d³) instead of O(N d²) for
# GD++ (it multiplies d×d matrices). Per-task products are written as
# broadcast sums: XLA:CPU runs a batched dot of d×d matrices one task at a time.


def moments(X: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Σ̂ = XᵀX/N [B, d, d], b = Σ̂_xy = Xᵀy/N [B, d]) of demonstrations X [B, N, d], y [B, N]."""
  N = X.shape[-2]
  return (X[..., :, None] * X[..., None, :]).sum(-3) / N, (X * y[..., None]).sum(-2) / N


def _mv(A_BIJ: jax.Array, v_BJ: jax.Array) -> jax.Array:
  return (A_BIJ * v_BJ[..., None, :]).sum(-1)


def gd_from_moments(Sigma_hat: jax.Array, b: jax.Array, eta, n_steps: int | None = None,
                    P: jax.Array | None = None) -> jax.Array:
  """`gd` from (Σ̂, b = Σ̂_xy): w_t = w_{t-1} + η_t P_t (b − Σ̂ w_{t-1}) → w_t [S, B, d]."""
  etas = _steps(eta, n_steps if P is None or P.ndim == 2 else P.shape[0])
  S, d = etas.shape[0], b.shape[-1]
  Ps = jnp.broadcast_to(jnp.eye(d, dtype=b.dtype) if P is None else P, (S, d, d))
  ws, w = [], jnp.zeros_like(b)
  for t in range(S):  # S is small: unrolled, so the per-task products fuse across steps
    grad = b - _mv(Sigma_hat, w)
    w = w + etas[t] * (grad @ Ps[t].T)
    ws.append(w)
  return jnp.stack(ws)


def gd_plus_plus_from_moments(Sigma_hat: jax.Array, b: jax.Array, eta, gamma, n_steps: int | None = None) -> jax.Array:
  """`gd_plus_plus` from (Σ̂, b = Σ̂_xy) → ŵ_t [S, B, d] (docs/theory.md §3).

  With B_t = I − γ_t Σ̂_t the inputs move as X_{t+1} = X_t B_t, so Σ̂_{t+1} = B_t Σ̂_t B_t, the
  gradient g_t = X_tᵀ r_t / N follows g_{t+1} = B_t (g_t − η_t Σ̂_t g_t), and the query map
  Ψ_{t+1} = B_t Ψ_t (`A` below); ŵ_{t+1} = ŵ_t + η_t Ψ_tᵀ g_t. O(d³) per task and step.
  """
  etas = _steps(eta, n_steps)
  gammas = _steps(gamma, etas.shape[0])
  d = b.shape[-1]
  eye = jnp.eye(d, dtype=b.dtype)
  A, g, G, w, ws = jnp.broadcast_to(eye, Sigma_hat.shape), b, Sigma_hat, jnp.zeros_like(b), []
  for t in range(etas.shape[0]):
    w = w + etas[t] * (A * g[..., :, None]).sum(-2)  # Aᵀ g
    Bt = eye - gammas[t] * G
    g = _mv(Bt, g - etas[t] * _mv(G, g))
    BG = (Bt[..., :, :, None] * G[..., None, :, :]).sum(-2)
    A = (Bt[..., :, :, None] * A[..., None, :, :]).sum(-2)
    G = (BG[..., :, :, None] * Bt[..., None, :, :]).sum(-2)
    ws.append(w)
  return jnp.stack(ws)


def ridge(X: jax.Array, y: jax.Array, lam: float) -> jax.Array:
  """(XᵀX + λI)⁻¹ Xᵀy → [B, d]; λ = σ² is the posterior mean for w ~ N(0, I) and Gaussian noise."""
  return ridge_from_moments(jnp.einsum("bnd,bne->bde", X, X), jnp.einsum("bnd,bn->bd", X, y), lam)


def ridge_from_moments(XX_BDD: jax.Array, Xy_BD: jax.Array, lam: float) -> jax.Array:
  """(Σ x xᵀ + λI)⁻¹ Σ x y → [B, d]: ridge from the examples' moments (any number of examples)."""
  d = XX_BDD.shape[-1]
  return jnp.linalg.solve(XX_BDD + lam * jnp.eye(d, dtype=XX_BDD.dtype), Xy_BD[..., None])[..., 0]


def least_squares(X: jax.Array, y: jax.Array) -> jax.Array:
  """Minimum-norm least squares → [B, d]."""
  return jnp.einsum("bdn,bn->bd", jnp.linalg.pinv(X), y)


def bayes_ridge_lambda(noise_std: float) -> float:
  """λ = σ²; with σ = 0 a tiny λ keeps the solve defined (it is then least squares)."""
  return max(noise_std**2, 1e-8)


# --- closed forms (docs/theory.md §9) -------------------------------------------------------
# Each states its family. "Gaussian" means x ~ N(0, Σ); the one-layer forms need only the first
# four moments of x, so `one_layer_loss` also covers inputs with independent coordinates and a
# fourth cumulant κ (uniform inputs: κ = −2a⁴/15), and `gd1_loss_for` reads the family off a task.


def eta_star(d: int, N: int, noise_std: float = 0.0) -> float:
  """η* = N / (N + d + 1 + σ²): the optimal one-step GD size for x, w ~ N(0, I) (Gaussian only)."""
  return N / (N + d + 1 + noise_std**2)


def gd1_loss_star(d: int, N: int, noise_std: float = 0.0) -> float:
  """Expected squared error of one GD step at η*: d(d + 1 + σ²)/(N + d + 1 + σ²); x, w ~ N(0, I) only."""
  return d * (d + 1 + noise_std**2) / (N + d + 1 + noise_std**2)


def gd1_loss_at(d: int, N_train: int, M_test: int) -> float:
  """Noiseless one-step GD at η*(N_train) tested with N′ = M_test demonstrations: d[1 − 2/c(N) + c(N′)/c(N)²]
  with c(n) = (n + d + 1)/n (docs/theory.md §9).

  x, w ~ N(0, I) only.
  """
  c = lambda K: (K + d + 1) / K
  return d * (1 - 2 / c(N_train) + c(M_test) / c(N_train) ** 2)


def gamma_star(Sigma, N: int, noise_std: float = 0.0) -> np.ndarray:
  """Γ* = ((N+1)/N Σ + (tr Σ + σ²)/N I)⁻¹: the optimal one-layer preconditioner.

  x ~ N(0, Σ), w ~ N(0, I) only (Gaussian fourth moments).
  """
  Sigma = np.asarray(Sigma, np.float64)
  d = Sigma.shape[0]
  return np.linalg.inv((N + 1) / N * Sigma + (np.trace(Sigma) + noise_std**2) / N * np.eye(d))


def one_layer_loss(A, N: int, Sigma=None, noise_std: float = 0.0, w_cov=None, kappa: float = 0.0) -> float:
  """Exact E[(x_qᵀ A (1/N)Σ y_i x_i − w·x_q)²] for x with covariance Σ, w ~ N(0, Σ_w), noise σ².

  Needs x's fourth moments: E[x xᵀ M x xᵀ] = 2ΣMΣ + tr(MΣ)Σ + κ·diag(M) for symmetric M, where
  the first two terms are Gaussian (x ~ N(0, Σ), κ = 0) and κ = E[x_k⁴] − 3(E x_k²)² adds the
  non-Gaussian part for inputs with independent coordinates (then Σ must be diagonal). Hence
  E[Σ̂ M Σ̂] = (N+1)/N ΣMΣ + tr(MΣ)/N Σ + κ/N diag(M). The prior Σ_w may be singular.
  """
  A = np.asarray(A, np.float64)
  d = A.shape[0]
  S = np.eye(d) if Sigma is None else np.asarray(Sigma, np.float64)
  Sw = np.eye(d) if w_cov is None else np.asarray(w_cov, np.float64)
  if kappa != 0 and np.any(S != np.diag(np.diag(S))):
    raise ValueError("Sigma must be diagonal when kappa != 0 (independent non-Gaussian coordinates)")
  M = A.T @ S @ A
  E_SMS = (N + 1) / N * S @ M @ S + np.trace(M @ S) / N * S + kappa / N * np.diag(np.diag(M))
  return float(np.trace(Sw @ E_SMS) + noise_std**2 / N * np.trace(M @ S)
               - 2 * np.trace(S @ A @ S @ Sw) + np.trace(S @ Sw))


def gd1_loss_for(task) -> float:
  """Exact squared error of one GD step at η*(d, N, σ) for a TaskConfig: its family, Σ_x and prior.

  Gaussian inputs (any x_cov) and uniform inputs (Σ_x = a²/3·I, κ = −2a⁴/15; the Gaussian
  formula would be off by κ η*² tr(Σ_w)/N) both hold exactly; η* is the isotropic Gaussian step,
  optimal only for x ~ N(0, I). Other families are refused.
  """
  if task.x_dist not in ("gaussian", "uniform"):
    raise ValueError(f"gd1_loss_for holds for x_dist 'gaussian' or 'uniform', got {task.x_dist!r}")
  A = eta_star(task.d, task.n_context, task.noise_std) * np.eye(task.d)
  loss = one_layer_loss(A, task.n_context, x_covariance(task), task.noise_std,
                        as_cov("w_cov", task.w_cov, task.d, psd=True), kappa=x_fourth_cumulant(task))
  return loss + (task.noise_std**2 if task.query_noise else 0.0)


def one_layer_optimum(Sigma, N: int, noise_std: float = 0.0, w_cov=None, kappa: float = 0.0) -> np.ndarray:
  """Γ* = Σ_w Σ K⁻¹, K = ((N+1)/N) Σ Σ_w Σ + (c/N) Σ + (κ/N) Diag(Σ_w), c = tr(Σ Σ_w) + σ²: the minimiser
  over every d×d Γ of `one_layer_loss` (same family and arguments; docs/theory.md §9, §13)."""
  S, Sw, K = _one_layer_normal_equations(Sigma, N, noise_std, w_cov, kappa)
  return np.linalg.solve(K, (Sw @ S).T).T  # K is symmetric


def one_step_optimum(Sigma, N: int, noise_std: float = 0.0, w_cov=None, kappa: float = 0.0) -> float:
  """η* = tr(Σ Σ_w Σ) / tr(Σ K) (K of `one_layer_optimum`): the best one GD step, Γ = η I (docs/theory.md §9)."""
  S, Sw, K = _one_layer_normal_equations(Sigma, N, noise_std, w_cov, kappa)
  return float(np.trace(S @ Sw @ S) / np.trace(S @ K))


def _one_layer_normal_equations(Sigma, N, noise_std, w_cov, kappa):
  """(Σ, Σ_w, K): ∇_Γ one_layer_loss = 2 Σ (Γ K − Σ_w Σ), so the optimum solves Γ K = Σ_w Σ."""
  S = np.asarray(Sigma, np.float64)
  d = S.shape[0]
  Sw = np.eye(d) if w_cov is None else np.asarray(w_cov, np.float64)
  if kappa != 0 and np.any(S != np.diag(np.diag(S))):
    raise ValueError("Sigma must be diagonal when kappa != 0 (independent non-Gaussian coordinates)")
  c = np.trace(S @ Sw) + noise_std**2
  K = (N + 1) / N * S @ Sw @ S + c / N * S + kappa / N * np.diag(np.diag(Sw))
  return S, Sw, K


def one_layer_family(task) -> tuple[np.ndarray, np.ndarray, float] | None:
  """(Σ_x, E[w wᵀ], κ) when `one_layer_loss` is exact for a TaskConfig's family, else None.

  Exact for Gaussian (any x_cov) and uniform inputs with all N demonstrations; the loss sees the
  prior only through E[w wᵀ], which a fixed w₀ drawn with probability p moves to (1 − p)Σ_w + p w₀w₀ᵀ.
  Mixed context lengths (n_context_min > 0) have no closed form here.
  """
  if task.x_dist not in ("gaussian", "uniform") or task.n_context_min:
    return None
  W2 = as_cov("w_cov", task.w_cov, task.d, psd=True)
  if task.w0_prob:
    w_0 = w0(task)
    W2 = (1 - task.w0_prob) * W2 + task.w0_prob * np.outer(w_0, w_0)
  return x_covariance(task), W2, x_fourth_cumulant(task)


def gamma_star_loss(Sigma, N: int, noise_std: float = 0.0) -> float:
  """The loss of Γ* for x ~ N(0, Σ), w ~ N(0, I); for σ = 0 it equals tr Σ − tr(Σ Γ* Σ) (Ahn et al.)."""
  return one_layer_loss(gamma_star(Sigma, N, noise_std), N, Sigma, noise_std)


# --- the construction (docs/theory.md §3) -----------------------------------------------------


def construct(d: int, eta, n_steps: int | None = None, P=None, gamma=None, dtype=jnp.float64) -> Params:
  """Transformer weights implementing GD, preconditioned GD (P) or GD++ (gamma), one step a layer.

  W_K = [[I, 0], [0, 0]], W_Q = [[P_tᵀ, 0], [0, 0]], W_V = [[−γ_t I, 0], [0, −η_t]], so
  W_Kᵀ W_Q = diag(P_tᵀ, 0) and the layer adds −(η_t/N)Σ_i r_i x_iᵀ P_tᵀ x_j to every y-slot.
  """
  etas = _steps(eta, n_steps if P is None or np.ndim(P) == 2 else np.shape(P)[0])
  S, D = etas.shape[0], d + 1
  Ps = jnp.broadcast_to(jnp.eye(d, dtype=dtype) if P is None else jnp.asarray(P, dtype), (S, d, d))
  gammas = jnp.zeros(S, dtype) if gamma is None else _steps(gamma, S).astype(dtype)
  W_K = jnp.zeros((S, D, D), dtype).at[:, :d, :d].set(jnp.eye(d, dtype=dtype))
  W_Q = jnp.zeros((S, D, D), dtype).at[:, :d, :d].set(jnp.swapaxes(Ps, -1, -2))
  W_V = jnp.zeros((S, D, D), dtype).at[:, d, d].set(-etas.astype(dtype))
  W_V = W_V.at[:, :d, :d].set(-gammas[:, None, None] * jnp.eye(d, dtype=dtype))
  return {"W_Q": W_Q, "W_K": W_K, "W_V": W_V}


def effective_preconditioner(params: Params, layer: int = 0, cfg: ModelConfig | None = None) -> jax.Array:
  """Γ_eff = −W_V[y, y] · (W_Qᵀ W_K)[:d, :d], summed over heads and with W_O folded in.

  The GD-like part of one layer's prediction: ŷ ≈ x_qᵀ Γ_eff (1/N) Σ_i y_i x_i; it is exact
  when the other cross terms (W_V's x→y entries, W_K's y-column) vanish, as they do in training.
  Several heads need cfg (a 4-D W_Q could be a seed axis); the shapes are checked against it.
  """
  cfg = config_of(params, cfg)
  if not 0 <= layer < cfg.n_layers:
    raise ValueError(f"layer must be in [0, {cfg.n_layers - 1}], got {layer}")
  W_Q, W_K, W_V = (heads(params[k][layer]) for k in ("W_Q", "W_K", "W_V"))
  if "W_O" in params:
    W_V = jnp.einsum("ef,hfg->heg", params["W_O"][layer], W_V)
  d = W_Q.shape[-1] - 1
  QK = jnp.einsum("hed,hef->hdf", W_Q, W_K)[:, :d, :d]
  return -jnp.einsum("h,hdf->df", W_V[:, d, d], QK)
