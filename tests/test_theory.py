"""The closed forms of docs/theory.md §1–§15 that no other test file checks, each against an exact
float64 computation or a numpy Monte Carlo with a fixed seed and a tolerance of several standard
errors. The table at the top of docs/theory.md names the test behind every closed form."""

from fractions import Fraction

import numpy as np
import pytest

from lintheory.core import learners, prune
from conftest import sym_image


def assert_within_se(errors, expected, k=4.0):
  mean, se = errors.mean(), errors.std(ddof=1) / np.sqrt(errors.size)
  assert abs(mean - expected) < k * se, f"Monte Carlo {mean:.5f} ± {se:.5f} vs closed form {expected:.5f}"


# --- §5: the degree of the prediction ---------------------------------------------------------------


def test_prediction_is_a_polynomial_of_degree_3_to_the_L_in_the_prompt():
  """Scaling every token of the prompt by c, ŷ(c) of an L-layer linear-attention model is a polynomial
  in c of degree 3^L (L = 2: 9), with a nonzero leading coefficient for generic weights."""
  rng = np.random.default_rng(17)
  d, N, L = 2, 4, 2
  D = d + 1
  W = [[rng.standard_normal((D, D)) * 0.5 for _ in range(3)] for _ in range(L)]
  H0 = np.concatenate([rng.standard_normal((d, N + 1)), np.append(rng.standard_normal(N), 0.0)[None]], 0)

  def y_hat(c):
    H = c * H0
    for W_Q, W_K, W_V in W:
      Hs = H[:, :N]
      H = H + W_V @ Hs @ Hs.T @ W_K.T @ W_Q @ H / N
    return -H[-1, -1]

  cs = np.cos(np.pi * (np.arange(24) + 0.5) / 24)  # Chebyshev nodes: a well-conditioned fit
  coef = np.polynomial.chebyshev.chebfit(cs, [y_hat(c) for c in cs], 13)
  scale = np.abs(coef).max()
  assert np.abs(coef[10:]).max() < 1e-10 * scale
  assert abs(coef[9]) > 1e-6 * scale


# --- §6: the max-entropy step puts the expectation inside the log ------------------------------------


def _gaussian_mixture_entropy(atoms, probs, C, lo=-14.0, hi=24.0, n=400_001):
  """h(G + n), n ~ N(0, C), G discrete, by the trapezoid rule (error far below the gaps tested)."""
  y = np.linspace(lo, hi, n)
  p = sum(q * np.exp(-(y - a) ** 2 / (2 * C)) / np.sqrt(2 * np.pi * C) for a, q in zip(atoms, probs))
  return -np.trapezoid(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), y)


def test_max_entropy_step_bounds_the_information_by_the_log_of_the_mean_not_the_mean_of_the_log():
  """d' = 1, C = 1, G ∈ {0 w.p. 0.99, 10 w.p. 0.01}, Y = G + N(0, C): I(G; Y) = h(Y) − ½ log(2πeC) lies
  above ½ E[log((G² + C)/C)] (the per-task form: not a bound) and below ½ log((E G² + C)/C) (the theorem)."""
  atoms, probs, C = np.array([0.0, 10.0]), np.array([0.99, 0.01]), 1.0
  mi = _gaussian_mixture_entropy(atoms, probs, C) - 0.5 * np.log(2 * np.pi * np.e * C)
  per_task = 0.5 * np.sum(probs * np.log((atoms**2 + C) / C))
  log_of_mean = 0.5 * np.log((np.sum(probs * atoms**2) + C) / C)
  assert mi == pytest.approx(0.0560, abs=5e-5)
  assert per_task == pytest.approx(0.5 * 0.01 * np.log(101), rel=1e-12)  # 0.0231
  assert log_of_mean == pytest.approx(0.5 * np.log(2), rel=1e-12)  # 0.3466
  assert per_task < mi < log_of_mean
  # Jensen on any sample: the mean of the logs never exceeds the log of the mean.
  x = np.random.default_rng(0).exponential(size=1000)
  assert np.mean(np.log(x)) <= np.log(np.mean(x))


def test_term_t_is_scale_invariant_and_splits_into_snr_and_am_over_gm():
  """term = d'·log((ζ + tr C)/d') − log det C: unchanged by (ζ, C) → (c²ζ, c²C), and equal to
  d'·log(1 + ζ/tr C) + d'·log(AM/GM of C's eigenvalues)."""
  rng = np.random.default_rng(1)
  lam, zeta = rng.exponential(size=7), 3.3
  term = lambda z, l: l.size * np.log((z + l.sum()) / l.size) - np.log(l).sum()
  assert term(4 * zeta, 4 * lam) == pytest.approx(term(zeta, lam), rel=1e-12)
  am_gm = lam.mean() / np.exp(np.log(lam).mean())
  assert term(zeta, lam) == pytest.approx(lam.size * (np.log1p(zeta / lam.sum()) + np.log(am_gm)), rel=1e-12)


# --- §9: ridge, the Bayes error, the noiseless limit --------------------------------------------------


def test_ridge_is_the_posterior_mean_only_under_a_gaussian_prior_and_the_best_linear_estimator_always():
  """d = N = 1, σ = 1, uniform input, Rademacher prior w = ±1 (E w² = 1): the posterior mean is
  tanh(x y/σ²), strictly better than ridge x y/(x² + σ²); ridge keeps the error σ²/(x² + σ²) it has
  under w ~ N(0, 1), since a linear-in-y estimator's error sees only the prior's second moment."""
  rng = np.random.default_rng(2)
  n = 400_000
  x = rng.uniform(-np.sqrt(3), np.sqrt(3), n)
  w = rng.choice([-1.0, 1.0], n)
  y = w * x + rng.standard_normal(n)
  ridge_err, bayes_err = (x * y / (x**2 + 1) - w) ** 2, (np.tanh(x * y) - w) ** 2
  assert_within_se(ridge_err, np.mean(1.0 / (x**2 + 1)))  # σ² E[(x² + σ²)⁻¹]: the Gaussian-prior Bayes error
  diff = ridge_err - bayes_err
  assert diff.mean() > 10 * diff.std(ddof=1) / np.sqrt(n)


def test_ridge_error_is_the_bayes_error_formula_for_uniform_inputs():
  """w ~ N(0, I), Gaussian noise, x ~ U(−a, a)^d: E[(ŵ_ridge − w)ᵀ Σ (ŵ_ridge − w)] = σ² E tr(Σ (XᵀX + σ² I)⁻¹),
  and ridge at λ = σ²/2 or 2σ² does worse on the same tasks."""
  rng = np.random.default_rng(3)
  T, N, d, sigma, a = 100_000, 4, 3, 0.7, 1.2
  X = rng.uniform(-a, a, (T, N, d))
  w = rng.standard_normal((T, d))
  y = np.einsum("tnd,td->tn", X, w) + sigma * rng.standard_normal((T, N))
  S = a**2 / 3
  XtX = np.einsum("tnd,tne->tde", X, X)
  err = lambda lam: S * np.sum((np.linalg.solve(XtX + lam * np.eye(d), np.einsum("tnd,tn->td", X, y)[..., None])[..., 0] - w) ** 2, -1)
  bayes = S * sigma**2 * np.trace(np.linalg.inv(XtX + sigma**2 * np.eye(d)), axis1=1, axis2=2)
  e = err(sigma**2)
  assert_within_se(e - bayes, 0.0)
  for lam in (sigma**2 / 2, 2 * sigma**2):
    diff = err(lam) - e
    assert diff.mean() > 4 * diff.std(ddof=1) / np.sqrt(T)


def test_least_squares_and_noiseless_bayes_errors():
  """Σ = I: least squares has error σ² d/(N − d − 1) (inverse-Wishart mean, N ≥ d + 2); with σ = 0 the
  posterior mean (minimum-norm interpolant for Σ_w = I) has error max(d − N, 0)."""
  rng = np.random.default_rng(4)
  T, d, N, sigma = 100_000, 3, 8, 0.5
  X = rng.standard_normal((T, N, d))
  eps = sigma * rng.standard_normal((T, N))
  e_ls = np.sum(np.linalg.solve(np.einsum("tnd,tne->tde", X, X), np.einsum("tnd,tn->td", X, eps)[..., None])[..., 0] ** 2, -1)
  assert_within_se(e_ls, sigma**2 * d / (N - d - 1))
  X2, w = rng.standard_normal((50_000, 2, 5)), rng.standard_normal((50_000, 5))
  w_hat = np.einsum("tdn,tn->td", np.linalg.pinv(X2), np.einsum("tnd,td->tn", X2, w))
  assert_within_se(np.sum((w_hat - w) ** 2, -1), 5 - 2)


def test_noiseless_bayes_predictor_is_the_least_prior_norm_interpolant_in_the_range_of_the_prior():
  """σ = 0, prior N(0, Σ_w) of rank 3 in d = 5, N = 2 < rank Σ_w: ŵ = F (X F)⁺ y = Σ_w Xᵀ (X Σ_w Xᵀ)⁻¹ y
  interpolates, lies in range Σ_w, has the least vᵀ Σ_w⁺ v among such interpolants, and is not X⁺ y;
  with N ≥ rank Σ_w it is w itself."""
  import jax.numpy as jnp
  from lintheory.core import evaluate, tasks
  rng = np.random.default_rng(5)
  d, diag = 5, (2.0, 1.0, 0.5, 0.0, 0.0)
  R = np.linalg.qr(rng.standard_normal((d, d)))[0]
  cfg = tasks.TaskConfig(d=d, n_context=2, w_cov=diag)  # an axis-aligned prior; rotate the inputs instead
  Sw = np.diag(diag)
  X = rng.standard_normal((1, 2, d)) @ R
  w = np.sqrt(np.asarray(diag)) * rng.standard_normal(d)
  y = X[0] @ w
  w_hat = np.asarray(evaluate.bayes_predictor(cfg, jnp.asarray(X), jnp.asarray(y[None])))[0]
  kkt = Sw @ X[0].T @ np.linalg.solve(X[0] @ Sw @ X[0].T, y)
  np.testing.assert_allclose(w_hat, kkt, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(X[0] @ w_hat, y, atol=1e-10)
  np.testing.assert_allclose(w_hat[3:], 0.0, atol=1e-12)  # in range Σ_w
  pnorm = lambda v: v @ np.linalg.pinv(Sw) @ v
  F = np.sqrt(Sw)[:, :3]
  null = np.linalg.svd(X[0] @ F)[2][2:].T  # directions z with X F z = 0: other interpolants F (z* + null t)
  for t in rng.standard_normal((20, null.shape[1])):
    assert pnorm(w_hat + F @ null @ t) > pnorm(w_hat)
  assert np.linalg.norm(w_hat - np.linalg.pinv(X[0]) @ y) > 0.1  # not the Euclidean minimum-norm interpolant
  for N in (3, 4):  # N ≥ rank Σ_w: X F has full column rank and the labels pin w
    XN = rng.standard_normal((1, N, d))
    w_N = np.asarray(evaluate.bayes_predictor(tasks.TaskConfig(d=d, n_context=N, w_cov=diag), jnp.asarray(XN),
                                              jnp.asarray((XN[0] @ w)[None])))[0]
    np.testing.assert_allclose(w_N, w, rtol=1e-9, atol=1e-10)


# --- §9: fourth moments and the one-layer optimum --------------------------------------------------


def test_gaussian_fourth_moment():
  """x ~ N(0, Σ), symmetric M: E[x xᵀ M x xᵀ] = 2ΣMΣ + tr(MΣ)Σ; Σ = M = I gives (d + 2) I."""
  rng = np.random.default_rng(6)
  d, n = 3, 400_000
  L = rng.standard_normal((d, d))
  Sigma = L @ L.T / d + 0.3 * np.eye(d)
  Mh = rng.standard_normal((d, d))
  M = Mh + Mh.T
  x = rng.standard_normal((n, d)) @ np.linalg.cholesky(Sigma).T
  samples = np.einsum("ni,n,nj->nij", x, np.einsum("ni,ij,nj->n", x, M, x), x)
  expected = 2 * Sigma @ M @ Sigma + np.trace(M @ Sigma) * Sigma
  se = samples.std(0, ddof=1) / np.sqrt(n)
  assert np.all(np.abs(samples.mean(0) - expected) < 5 * se)
  z = rng.standard_normal((n, d))
  s2 = np.einsum("ni,n,nj->nij", z, np.sum(z * z, -1), z)
  assert np.all(np.abs(s2.mean(0) - (d + 2) * np.eye(d)) < 5 * s2.std(0, ddof=1) / np.sqrt(n))


def test_one_step_loss_is_a_parabola_minimised_at_eta_star():
  """Σ = Σ_w = I: loss(η) = d[η²(N + d + 1 + σ²)/N − 2η + 1], exactly `one_layer_loss(ηI)`; minimum
  at η* = N/(N + d + 1 + σ²) with value d(1 − η*)."""
  for d, N, sigma in ((3, 5, 0.0), (10, 20, 0.0), (4, 9, 0.8)):
    eta_star = N / (N + d + 1 + sigma**2)
    parabola = lambda e: d * (e**2 * (N + d + 1 + sigma**2) / N - 2 * e + 1)
    for e in (0.0, 0.8 * eta_star, eta_star, 1.2 * eta_star):
      assert learners.one_layer_loss(e * np.eye(d), N, noise_std=sigma) == pytest.approx(parabola(e), rel=1e-12)
    assert parabola(eta_star) == pytest.approx(d * (1 - eta_star), rel=1e-12)
    assert parabola(eta_star) < min(parabola(0.8 * eta_star), parabola(1.2 * eta_star))
  assert (10 + 1) / (20 + 10 + 1) == pytest.approx(0.355, abs=5e-4)  # the normalised example, 11/31


def test_rank_k_preconditioner_loses_k_eta_star_with_or_without_noise():
  """Σ = Σ_w = I, preconditioner η* P_k (P_k a rank-k projector): loss = d − 2η*k + η*² k(N + d + 1 + σ²)/N
  = d − kη*, for every σ ≥ 0; exact, and by Monte Carlo with noise."""
  d, N = 4, 8
  for sigma in (0.0, 0.5, 1.3):
    eta = N / (N + d + 1 + sigma**2)
    for k in range(d + 1):
      Pk = np.diag([1.0] * k + [0.0] * (d - k))
      assert learners.one_layer_loss(eta * Pk, N, noise_std=sigma) == pytest.approx(d - k * eta, rel=1e-12)
  rng = np.random.default_rng(7)
  T, sigma, k = 200_000, 0.7, 2
  eta = N / (N + d + 1 + sigma**2)
  Q = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :k]  # any rank-k projector: rotation invariance
  X, w, x_q = rng.standard_normal((T, N, d)), rng.standard_normal((T, d)), rng.standard_normal((T, d))
  y = np.einsum("tnd,td->tn", X, w) + sigma * rng.standard_normal((T, N))
  w_hat = eta * np.einsum("tnd,tn->td", X, y) @ (Q @ Q.T) / N
  assert_within_se(np.einsum("td,td->t", w_hat - w, x_q) ** 2, d - k * eta)


def test_gamma_star_w_is_the_stationary_minimum_for_an_anisotropic_prior():
  """Γ*_w = Σ_w((N + 1)/N Σ Σ_w + (c_w/N) I)⁻¹, c_w = tr(Σ Σ_w) + σ², is where the exact one-layer loss is
  stationary, and loss(Γ*_w) = tr(Σ Σ_w) − tr(Σ Γ*_w Σ Σ_w)."""
  rng = np.random.default_rng(8)
  d, N, sigma = 3, 6, 0.5
  A, B = rng.standard_normal((d, d)), rng.standard_normal((d, d))
  Sigma, Sw = A @ A.T / d + 0.4 * np.eye(d), B @ B.T / d + 0.2 * np.eye(d)
  c = np.trace(Sigma @ Sw) + sigma**2
  G = Sw @ np.linalg.inv((N + 1) / N * Sigma @ Sw + c / N * np.eye(d))
  f = lambda M: learners.one_layer_loss(M, N, Sigma, sigma, Sw)
  h = 1e-5
  grad = np.array([[(f(G + h * E) - f(G - h * E)) / (2 * h) for E in np.eye(d * d).reshape(d * d, d, d)[i * d:(i + 1) * d]]
                   for i in range(d)])
  assert np.abs(grad).max() < 1e-7
  assert f(G) == pytest.approx(np.trace(Sigma @ Sw) - np.trace(Sigma @ G @ Sigma @ Sw), rel=1e-12)
  for _ in range(5):
    assert f(G + 0.05 * rng.standard_normal((d, d))) > f(G)


def test_noise_aware_gamma_star_beats_the_noise_free_one():
  """With σ > 0 the σ² inside Γ* matters: the noise-free Γ* has a strictly larger exact loss."""
  Sigma, N, sigma = np.diag([0.25, 0.5, 1.0, 3.0]), 8, 0.8
  loss = lambda G: learners.one_layer_loss(G, N, Sigma, sigma)
  assert loss(learners.gamma_star(Sigma, N, sigma)) < loss(learners.gamma_star(Sigma, N, 0.0)) - 1e-3


# --- §13: uniform inputs ------------------------------------------------------------------------------


def test_uniform_fourth_moment_formula():
  """Independent coordinates of variance ν and kurtosis β₂ (U(−a, a): ν = a²/3, β₂ = 9/5), symmetric M:
  E[x xᵀ M x xᵀ] = ν²(2M + tr(M) I) + (β₂ − 3)ν² diag(M), so E[(x xᵀ)²] = ν²(d + β₂ − 1) I."""
  rng = np.random.default_rng(9)
  d, n, a = 3, 400_000, 1.3
  nu, beta2 = a**2 / 3, 9 / 5
  x = rng.uniform(-a, a, (n, d))
  assert_within_se(x[:, 0] ** 4, beta2 * nu**2)
  Mh = rng.standard_normal((d, d))
  M = Mh + Mh.T
  samples = np.einsum("ni,n,nj->nij", x, np.einsum("ni,ij,nj->n", x, M, x), x)
  expected = nu**2 * (2 * M + np.trace(M) * np.eye(d)) + (beta2 - 3) * nu**2 * np.diag(np.diag(M))
  assert np.all(np.abs(samples.mean(0) - expected) < 5 * samples.std(0, ddof=1) / np.sqrt(n))
  np.testing.assert_allclose(nu**2 * (2 * np.eye(d) + d * np.eye(d)) + (beta2 - 3) * nu**2 * np.eye(d),
                             nu**2 * (d + beta2 - 1) * np.eye(d), rtol=1e-14)


def test_uniform_one_step_optimum():
  """x ~ U(−√3, √3)^d (ν = 1, β₂ = 9/5), w ~ N(0, I): η*_U = N/(N + d − 1/5 + σ²) with loss
  d(d − 1/5 + σ²)/(N + d − 1/5 + σ²); the example d = 5, N = 10, σ = 0 by Monte Carlo, by the code's
  `one_layer_loss` with the fourth cumulant κ = (β₂ − 3)ν² = −6/5, and the stated decimals."""
  d, N = 5, 10
  eta_u, loss_u = N / (N + d - 0.2), d * (d - 0.2) / (N + d - 0.2)
  kappa = (9 / 5 - 3) * 1.0
  loss = lambda e, s=0.0: learners.one_layer_loss(e * np.eye(d), N, noise_std=s, kappa=kappa)
  assert loss(eta_u) == pytest.approx(loss_u, rel=1e-12)
  assert loss(eta_u) < min(loss(eta_u - 1e-3), loss(eta_u + 1e-3))
  assert (eta_u, loss_u) == (pytest.approx(0.6757, abs=5e-5), pytest.approx(1.6216, abs=5e-5))
  assert (learners.eta_star(d, N), learners.gd1_loss_star(d, N)) == (0.625, 1.875)
  assert loss(learners.eta_star(d, N)) == pytest.approx(1.6406, abs=5e-5)
  sigma = 0.6  # with noise too
  eta_s = N / (N + d - 0.2 + sigma**2)
  assert loss(eta_s, sigma) == pytest.approx(d * (d - 0.2 + sigma**2) / (N + d - 0.2 + sigma**2), rel=1e-12)
  rng = np.random.default_rng(10)
  T = 200_000
  X, x_q = rng.uniform(-np.sqrt(3), np.sqrt(3), (T, N, d)), rng.uniform(-np.sqrt(3), np.sqrt(3), (T, d))
  w = rng.standard_normal((T, d))
  w_hat = eta_u * np.einsum("tnd,tn->td", X, np.einsum("tnd,td->tn", X, w)) / N
  assert_within_se(np.einsum("td,td->t", w_hat - w, x_q) ** 2, loss_u)


def _independent_coordinates_loss(G, N, lam, kappa4, sigma):
  """Exact one-layer loss for x_j = √λ_j u_j, u_j independent with fourth cumulant κ_j·(λ_j²), w ~ N(0, I):
  E[Σ̂ M Σ̂] = (N + 1)/N ΣMΣ + tr(MΣ)/N Σ + (1/N) diag(κ_j M_jj)."""
  S = np.diag(lam)
  M = G.T @ S @ G
  E = (N + 1) / N * S @ M @ S + np.trace(M @ S) / N * S + np.diag(kappa4 * np.diag(M)) / N
  return np.trace(E) + sigma**2 / N * np.trace(M @ S) - 2 * np.trace(S @ G @ S) + np.trace(S)


def test_gamma_star_kappa_for_axis_scaled_uniform_inputs():
  """x_j = √λ_j u_j, u_j ~ U(−√3, √3): Γ*_β = ((N + β₂ − 2)/N Σ + (tr Σ + σ²)/N I)⁻¹ with loss
  tr Σ − tr(Σ Γ*_β Σ); it is the minimum over all Γ (numerical minimisation), the Gaussian Γ* is worse,
  and the loss formula agrees with Monte Carlo."""
  from scipy.optimize import minimize
  N, sigma, lam = 6, 0.3, np.array([3.0, 1.0, 0.3])
  beta2, d = 9 / 5, 3
  kappa4 = (beta2 - 3) * lam**2
  S = np.diag(lam)
  G_beta = np.linalg.inv((N + beta2 - 2) / N * S + (lam.sum() + sigma**2) / N * np.eye(d))
  f = lambda G: _independent_coordinates_loss(G, N, lam, kappa4, sigma)
  assert f(G_beta) == pytest.approx(np.trace(S) - np.trace(S @ G_beta @ S), rel=1e-12)
  best = minimize(lambda v: f(v.reshape(d, d)), np.zeros(d * d), method="BFGS", options={"gtol": 1e-10})
  assert best.fun == pytest.approx(f(G_beta), abs=1e-9)
  assert f(learners.gamma_star(S, N, sigma)) > f(G_beta) + 1e-2
  assert (f(learners.gamma_star(S, N, sigma)), f(G_beta)) == (pytest.approx(1.2015, abs=5e-5), pytest.approx(1.1449, abs=5e-5))
  rng = np.random.default_rng(11)
  T = 200_000
  G = rng.standard_normal((d, d)) * 0.3
  u = lambda *shape: rng.uniform(-np.sqrt(3), np.sqrt(3), shape) * np.sqrt(lam)
  X, x_q, w = u(T, N, d), u(T, d), rng.standard_normal((T, d))
  y = np.einsum("tnd,td->tn", X, w) + sigma * rng.standard_normal((T, N))
  y_hat = np.einsum("td,de,te->t", x_q, G, np.einsum("tnd,tn->td", X, y) / N)
  assert_within_se((y_hat - np.einsum("td,td->t", x_q, w)) ** 2, f(G))


def test_uniform_per_query_loss_variance():
  """Fixed e = ŵ − w, σ = 0, x ~ U(−a, a)^d: Var((e·x)²) = 2ν²‖e‖⁴ + (β₂ − 3)ν² Σ_j e_j⁴ (−6/5 ν² Σ e_j⁴)."""
  rng = np.random.default_rng(12)
  a, e = 1.1, np.array([0.9, -0.4, 1.5])
  nu = a**2 / 3
  l = (rng.uniform(-a, a, (1_000_000, 3)) @ e) ** 2
  expected = 2 * nu**2 * np.sum(e**2) ** 2 - 6 / 5 * nu**2 * np.sum(e**4)
  c = (l - l.mean()) ** 2
  assert_within_se(c, expected, k=5.0)


def test_query_noise_share_of_a_sampled_error():
  """Pure query noise, the mean of n_q squared errors (χ²_{n_q}/n_q): the share of the mean beyond the
  (1 − 1/n) quantile is P(χ²_{n_q+2} > c_n), 4.9 % for n_q = 1 and 1.2 % for n_q = 16 at n = 200."""
  from scipy.stats import chi2
  from lintheory.core import stats
  for n_q, pct in ((1, 0.049), (16, 0.012)):
    closed = chi2.sf(chi2.ppf(1 - 1 / 200, n_q), n_q + 2)
    assert closed == pytest.approx(pct, abs=5e-4)
    assert stats.chi2_rare_share(n_q, 200) == pytest.approx(closed, rel=1e-9)


# --- §7, §8: the kept rank -------------------------------------------------------------------------


def test_kept_rank_guards_the_float_rounding_of_the_clipping_rate():
  """r = min(k, ⌊k(1 − ξ) + 10⁻⁹⌋) in float64: 10·(1 − 0.9) is 0.9999999999999998 (a bare floor would keep 0,
  exact arithmetic 1) and 20·(1 − 0.95) is 1.0000000000000009; the guarded rule equals the exact floor for
  every paper rate and k ≤ 500, and 1 − r/k is the largest rate keeping rank r."""
  assert 20 * (1 - 0.95) == 1.0000000000000009
  assert 10 * (1 - 0.9) == 0.9999999999999998 and int(10 * (1 - 0.9)) == 0
  assert prune.rank_for_rate(10, 10, 0.9) == 1 and prune.rank_for_rate(20, 20, 0.95) == 1
  for k in range(1, 501):
    for xi in prune.PAPER_RATES:
      exact = int(Fraction(k) * (1 - Fraction(str(xi))))
      assert prune.rank_for_rate(k, k + 3, xi) == exact, (k, xi)
  for k in (11, 20):
    for r in range(1, k):
      assert prune.rank_for_rate(k, k, 1 - r / k) == r
      assert prune.rank_for_rate(k, k, 1 - r / k + 1e-6) == r - 1


# --- §15.1: ranks of products, dim V_t ------------------------------------------------------------


def _dim_V(W_V, Omega):
  """dim {W_V X Ω : X symmetric} as the numpy rank of the linear map on a basis of Sym(D)."""
  return np.linalg.matrix_rank(sym_image(W_V, Omega), tol=1e-9)


def _truncate(W, r):
  U, s, Vt = np.linalg.svd(W)
  return U[:, :r] * s[:r] @ Vt[:r]


def test_rank_of_a_product_falls_when_an_end_factor_is_truncated_not_when_a_middle_one_is():
  """rank(Π A B) ≤ rank(A B) and rank(A B Π) ≤ rank(A B) for projectors at an end; a middle factor's
  truncation can raise the rank: A = [1, 2], W = diag(2, 1), B = [1, −1]ᵀ: A W B = 0, A W_1 B = 2."""
  rng = np.random.default_rng(13)
  rank = lambda M: np.linalg.matrix_rank(M, tol=1e-9)
  for _ in range(50):
    A = rng.standard_normal((4, 2)) @ rng.standard_normal((2, 4))
    B = rng.standard_normal((4, 3)) @ rng.standard_normal((3, 4))
    r = int(rng.integers(0, 5))
    assert rank(_truncate(A, r) @ B) <= rank(A @ B) and rank(A @ _truncate(B, r)) <= rank(A @ B)
  A, W, B = np.array([[1.0, 2.0]]), np.diag([2.0, 1.0]), np.array([[1.0], [-1.0]])
  assert rank(A @ W @ B) == 0 and rank(A @ _truncate(W, 1) @ B) == 1
  # The truncation W_r = Π_L W = W Π_R puts a projector at an end of Ω = W_Kᵀ W_Q (I + W_{t−1}) for W_K
  # (W_K,rᵀ = Π_R W_Kᵀ) always, and for W_Q (W_Q Π_R, then (I + W_{t−1})) only when I + W_{t−1} is invertible.
  W_K, W_Q, I_W = np.array([[1.0, 0.0], [1.0, 0.0]]), np.diag([2.0, 1.0]), np.array([[1.0, 0.0], [-2.0, 0.0]])
  Omega = W_K.T @ W_Q @ I_W
  Omega_r = W_K.T @ _truncate(W_Q, 1) @ I_W
  assert rank(Omega) == 0 and rank(Omega_r) == 1  # I + W_{t−1} singular: W_Q's projector is in the middle
  assert _dim_V(np.eye(2), Omega) == 0 and _dim_V(np.eye(2), Omega_r) == 2  # and dim V_t rises


def test_dim_V_formula_and_the_W_K_example():
  """dim V_t = r_V·r_Ω − k(k − 1)/2, k = dim(row W_V ∩ col Ω), on random low-rank cases; the D = 3
  example where truncating W_K raises dim V_t from 3 to 4; the values d (GD) and d(d + 3)/2 (GD++)."""
  rng = np.random.default_rng(14)
  D = 5
  for _ in range(60):
    rV, rO = (int(v) for v in rng.integers(0, D + 1, 2))
    k = int(rng.integers(max(0, rV + rO - D), min(rV, rO) + 1))
    Q = np.linalg.qr(rng.standard_normal((D, D)))[0]
    rows = Q[:, :rV]  # row space of W_V
    cols = np.concatenate([Q[:, :k], Q[:, rV:rV + rO - k]], 1)  # col space of Ω, meeting rows in Q[:, :k]
    W_V = rng.standard_normal((D, rV)) @ rows.T
    Omega = cols @ rng.standard_normal((rO, D))
    inter = rV + rO - np.linalg.matrix_rank(np.concatenate([rows, cols], 1), tol=1e-9)
    assert inter == k
    assert _dim_V(W_V, Omega) == rV * rO - k * (k - 1) // 2
  W_K = np.diag([3.0, 2.0, 1.0])
  W_Q = np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])
  W_V = np.array([[3.0, 0, 1], [0, 2, 1], [0, 0, 0]])
  assert _dim_V(W_V, W_K.T @ W_Q) == 3
  assert _dim_V(W_V, _truncate(W_K, 2).T @ W_Q) == 4
  for d in (2, 3, 5):  # GD++ at t = 1: W_V = diag(−γI_d, −η), Ω = diag(I_d, 0): d(d + 3)/2; GD (γ = 0): d
    Omega = np.diag([1.0] * d + [0.0])
    assert _dim_V(np.diag([-0.3] * d + [-0.7]), Omega) == d * (d + 3) // 2
    assert _dim_V(np.diag([0.0] * d + [-0.7]), Omega) == d


def test_noiseless_labels_confine_the_gradients_to_d_d_plus_1_over_2_dimensions():
  """Full-rank weights, d = 3 (dim V_1 = D(D+1)/2 = 10): the covariance of g_i = W_V h_i h_iᵀ Ω over
  N = 30 demonstrations has rank d(d + 1)/2 = 6 with σ = 0 and rank 10 with σ = 0.5."""
  rng = np.random.default_rng(15)
  d, N = 3, 30
  D = d + 1
  W_V, W_K, W_Q = (rng.standard_normal((D, D)) for _ in range(3))
  Omega = W_K.T @ W_Q
  assert _dim_V(W_V, Omega) == D * (D + 1) // 2
  w = rng.standard_normal(d)
  X = rng.standard_normal((N, d))
  for sigma, expected in ((0.0, d * (d + 1) // 2), (0.5, D * (D + 1) // 2)):
    H = np.concatenate([X, (X @ w + sigma * rng.standard_normal(N))[:, None]], 1)
    g = np.einsum("ab,nb,nc,cd->nad", W_V, H, H, Omega).reshape(N, D * D)
    assert np.linalg.matrix_rank(g - g.mean(0), tol=1e-9) == expected


# --- §15.2: the supersample CMI of a deterministic learner ---------------------------------------


def test_cmi_of_a_deterministic_learner_is_log_2_and_quantisation_gives_a_valid_bound():
  """One GD step at η*, d = 2, N = 6, σ = 0.5, loss clipped at ℓ_max = 8, all 2⁶ coin vectors of each of
  400 tasks (seed 16): I^{Z̃}(Δ_i; J_i) = log 2 for almost every (task, i), so the bound is ℓ_max·√(2 log 2)
  up to clipping ties; quantised to width ℓ_max/K the exact bound plus the width bounds the clipped gap."""
  rng = np.random.default_rng(16)
  d, N, sigma, l_max, T = 2, 6, 0.5, 8.0, 400
  eta = N / (N + d + 1 + sigma**2)
  J = ((np.arange(2**N)[:, None] >> np.arange(N)) & 1)  # [64, N] all coin vectors
  w = rng.standard_normal((T, d))
  X = rng.standard_normal((T, N, 2, d))
  y = np.einsum("tnjd,td->tnj", X, w) + sigma * rng.standard_normal((T, N, 2))
  idx = np.arange(N)
  Xs, ys = X[:, idx, J], y[:, idx, J]  # [T, 64, N, d], [T, 64, N]
  w_hat = eta * np.einsum("tcnd,tcn->tcd", Xs, ys) / N
  loss = np.minimum((np.einsum("tnjd,tcd->tcnj", X, w_hat) - y[:, None]) ** 2, l_max)  # [T, 64, N, 2]
  sign = 1 - 2 * J  # (−1)^{J_i}

  def bound_and_gap(l):
    delta = l[..., 1] - l[..., 0]  # [T, 64, N]
    gap = np.mean(sign * delta, axis=(1, 2))  # exact per task: all coin vectors
    mi = np.zeros((T, N))
    for t in range(T):
      for i in range(N):
        inv = np.unique(np.round(delta[t, :, i], 12), return_inverse=True)[1].ravel()
        joint = np.zeros((inv.max() + 1, 2))
        np.add.at(joint, (inv, J[:, i]), 1.0 / 2**N)  # P(Δ_i = v, J_i = j); J_i is a fair bit
        ratio = np.where(joint > 0, joint / (0.5 * joint.sum(1, keepdims=True)), 1.0)
        mi[t, i] = np.sum(joint * np.log(ratio))
    return np.mean(l_max * np.mean(np.sqrt(2 * mi), 1)), gap.mean(), mi

  cap = l_max * np.sqrt(2 * np.log(2))
  bound, gap, mi = bound_and_gap(loss)
  assert np.mean(np.isclose(mi, np.log(2))) > 0.9 and bound <= cap + 1e-12
  assert bound > 0.9 * cap and abs(gap) <= bound  # vacuous: it is near ℓ_max·√(2 log 2) ≥ ℓ_max
  for K in (8, 2):  # widths 1 and 4
    width = l_max / K
    lq = width * np.floor(loss / width)
    bq, gq, _ = bound_and_gap(lq)
    assert np.all(np.abs(lq - loss) < width)
    assert abs(gap) <= bq + width  # |gap| ≤ |gap_q| + width ≤ bound_q + width
    assert bq < bound
