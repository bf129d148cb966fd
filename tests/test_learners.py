"""Explicit learners, closed forms (docs/theory.md §9) and the GD construction (§3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lintheory import checks
from lintheory.core import learners, model, tasks
from lintheory.core.tasks import TaskConfig
from conftest import batch64


# --- the construction equals explicit GD, exactly (§3) --------------------------------------


# An L-layer model's per-layer predictions are those of its 1..L-layer prefixes, so L = 6 checks
# every depth 1..6 layer by layer.
@pytest.mark.parametrize("d, N, eta, L", [(1, 1, 0.3, 1), (3, 5, 0.9, 6), (5, 20, 0.5, 6),
                                           pytest.param(10, 4, 0.05, 3, marks=pytest.mark.slow)])
def test_construction_is_gd_for_1_to_6_layers(d, N, eta, L):
  b = batch64(d, N)
  params = learners.construct(d, eta, n_steps=L)
  dev = checks.assert_gd_equivalent(params, b, checks.gd_reference(eta, n_steps=L), tol=1e-10)
  assert dev.per_layer.shape == (L,) and dev.max_rel <= 1e-10


def test_construction_is_gd_with_per_step_eta():
  d, N = 4, 7
  etas = jnp.array([0.9, 0.1, 0.5, 1.3, 0.2, 0.7])
  b = batch64(d, N, noise_std=0.5)
  checks.assert_gd_equivalent(learners.construct(d, etas), b, checks.gd_reference(etas))


@pytest.mark.parametrize("per_step", [False, True])
def test_construction_is_preconditioned_gd(per_step):
  d, N, L = 3, 6, 4
  rng = np.random.default_rng(0)
  P = rng.normal(size=(L, d, d)) if per_step else rng.normal(size=(d, d))  # any matrix, even non-symmetric
  etas = jnp.array([0.4, 0.2, 0.3, 0.1])
  b = batch64(d, N, x_scale=(0.5, 1.0, 2.0))
  checks.assert_gd_equivalent(learners.construct(d, etas, P=P), b, checks.gd_reference(etas, P=jnp.asarray(P)))


def test_construction_is_gd_plus_plus():
  d, N = 3, 8
  etas, gammas = jnp.array([0.5, 0.8, 1.0, 0.6, 0.4]), jnp.array([0.3, 0.2, 0.1, 0.05, 0.0])
  b = batch64(d, N)
  params = learners.construct(d, etas, gamma=gammas)
  checks.assert_gd_equivalent(params, b, checks.gd_plus_plus_reference(etas, gammas))
  # and GD++ is not plain GD: the check would catch the difference
  with pytest.raises(AssertionError):
    checks.assert_gd_equivalent(params, b, checks.gd_reference(etas))


@jax.jit
def _model_and_gd_predictions(etas, b):
  """Per-layer predictions of the constructed model and GD's, in one compiled function."""
  params = learners.construct(b.X.shape[-1], etas, dtype=b.X.dtype)
  _, states = model.forward(params, tasks.batch_tokens(b))
  return model.layer_predictions(states), checks.gd_reference(etas)(b)


# XLA flushes subnormals to zero, so an η near 1e-308 makes predictions whose relative round-off
# means nothing; such η count as 0 here.
ETA = st.floats(-1.5, 1.5).map(lambda e: 0.0 if abs(e) < 1e-100 else e)


@settings(max_examples=15, deadline=None)
@given(etas=st.lists(ETA, min_size=6, max_size=6), seed=st.integers(0, 2**16), scale=st.floats(0.1, 3.0))
def test_construction_is_gd_hypothesis(etas, seed, scale):
  """Any per-step η (negative too) and any data scale. One shape, compiled once (shapes vary above)."""
  b = batch64(4, 7, B=4, seed=seed, noise_std=0.3)
  b = b._replace(X=scale * b.X, x_q=scale * b.x_q)
  y_model, y_gd = _model_and_gd_predictions(jnp.asarray(etas), b)
  rel = np.max(np.abs(y_model - y_gd), axis=1) / np.maximum(np.max(np.abs(y_gd), axis=1), 1e-300)
  assert np.all(rel <= 1e-10), rel


# --- explicit learners ----------------------------------------------------------------------


_from_moments = jax.jit(lambda b, eta, gamma, P: (
    learners.gd_from_moments(*learners.moments(b.X, b.y), eta),
    learners.gd_from_moments(*learners.moments(b.X, b.y), jnp.ones_like(eta), P=P),
    learners.gd_plus_plus_from_moments(*learners.moments(b.X, b.y), eta, gamma)))
_from_data = jax.jit(lambda b, eta, gamma, P: (
    learners.gd(b.X, b.y, eta), learners.gd(b.X, b.y, jnp.ones_like(eta), P=P),
    learners.gd_plus_plus(b.X, b.y, b.x_q, eta, gamma)[0]))


@settings(max_examples=15, deadline=None)
@given(etas=st.lists(ETA, min_size=4, max_size=4), gammas=st.lists(ETA, min_size=4, max_size=4),
       seed=st.integers(0, 2**16))
def test_learners_from_moments_are_the_learners(etas, gammas, seed):
  """GD, preconditioned GD and GD++ see the demonstrations only through Σ̂ and Xᵀy/N: the moment
  forms give every iterate of the data forms to round-off, for any η_t, γ_t and P_t."""
  b = batch64(3, 6, B=8, seed=seed, noise_std=0.3)
  P = jnp.asarray(np.random.default_rng(seed).normal(size=(4, 3, 3)))
  args = (b, jnp.asarray(etas), jnp.asarray(gammas), P)
  for fast, plain in zip(_from_moments(*args), _from_data(*args)):
    scale = np.maximum(np.max(np.abs(plain), axis=-1, keepdims=True), 1.0)
    np.testing.assert_array_less(np.abs(fast - plain) / scale, 1e-10)


def test_one_gd_step_formula():
  b = batch64(4, 9)
  w1 = learners.gd(b.X, b.y, 0.3, n_steps=1)[0]
  np.testing.assert_allclose(w1, 0.3 * jnp.einsum("bnd,bn->bd", b.X, b.y) / 9, rtol=1e-12)


def test_gd_converges_to_least_squares_and_newton_step_is_exact():
  b = batch64(3, 30)
  w_ls = learners.least_squares(b.X, b.y)
  np.testing.assert_allclose(learners.gd(b.X, b.y, 0.5, n_steps=400)[-1], w_ls, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(w_ls, b.w, rtol=1e-8)  # noiseless, N > d: the task is identified
  np.testing.assert_allclose(learners.ridge(b.X, b.y, 1e-12), w_ls, rtol=1e-8)
  Sigma_hat = jnp.einsum("bnd,bne->bde", b.X, b.X) / 30
  w_newton = jax.vmap(lambda X, y, P: learners.gd(X[None], y[None], 1.0, n_steps=1, P=P)[0, 0])(b.X, b.y, jnp.linalg.inv(Sigma_hat))
  np.testing.assert_allclose(w_newton, w_ls, rtol=1e-8)


def test_gd_and_gd_plus_plus_at_zero_gamma_match_the_closed_form():
  """From w_0 = 0, t steps of GD at η give w_t = (I − (I − η Σ̂)^t) Σ̂⁻¹ Xᵀy/N (Σ̂ = XᵀX/N, N > d),
  written here with numpy's matrix power: a formula, not a second copy of the loop."""
  b = batch64(3, 5)
  X, y = np.asarray(b.X), np.asarray(b.y)
  N, d = X.shape[1], X.shape[2]
  eta, t = 0.4, 3
  w_closed = []
  for Xb, yb in zip(X, y):
    S = Xb.T @ Xb / N
    w_closed.append((np.eye(d) - np.linalg.matrix_power(np.eye(d) - eta * S, t)) @ np.linalg.solve(S, Xb.T @ yb / N))
  w_closed = np.array(w_closed)
  np.testing.assert_allclose(learners.gd(b.X, b.y, eta, n_steps=t)[-1], w_closed, rtol=1e-10, atol=1e-12)
  w_pp, _ = learners.gd_plus_plus(b.X, b.y, b.x_q, eta, 0.0, n_steps=t)
  np.testing.assert_allclose(w_pp[-1], w_closed, rtol=1e-10, atol=1e-12)


def test_ridge_is_bayes_posterior_mean():
  b = batch64(3, 4, noise_std=0.5)
  lam = learners.bayes_ridge_lambda(0.5)
  assert lam == 0.25
  w = learners.ridge(b.X, b.y, lam)
  grad = jnp.einsum("bnd,bn->bd", b.X, jnp.einsum("bnd,bd->bn", b.X, w) - b.y) + lam * w
  np.testing.assert_allclose(grad, 0.0, atol=1e-10)


@pytest.mark.parametrize("call, name", [
    (lambda X, y: learners.gd(X, y, 0.1), "n_steps"),
    (lambda X, y: learners.gd(X, y, 0.1, n_steps=0), "n_steps"),
    (lambda X, y: learners.gd(X, y, jnp.ones((2, 2))), "eta"),
    (lambda X, y: learners.gd(X, y, jnp.ones(3), n_steps=2), "eta"),
    (lambda X, y: learners.gd(X, y, jnp.ones(0)), "eta"),
    (lambda X, y: learners.gd(X, y, jnp.ones(3), P=jnp.ones((2, 2, 2))), "eta"),
    (lambda X, y: learners.gd_plus_plus(X, y, X[:, 0], 0.1, jnp.ones(3), n_steps=2), "eta"),
    (lambda X, y: learners.construct(2, 0.1), "n_steps"),
    (lambda X, y: learners.construct(2, jnp.ones(3), n_steps=4), "eta"),
    (lambda X, y: learners.construct(2, jnp.ones(3), gamma=jnp.ones(2)), "eta"),
])
def test_invalid_eta_shapes(call, name):
  b = batch64(2, 3, B=2)
  with pytest.raises(ValueError, match=name):
    call(b.X, b.y)


# --- closed forms against Monte Carlo (§9) -------------------------------------------------


def mc_one_layer(A, N, Sigma, noise_std, w_cov, n_tasks=200_000, seed=0, M=None):
  """Squared errors of ŷ = x_qᵀ A (1/M)Σ y_i x_i on fresh Gaussian tasks (numpy, independent of tasks.py)."""
  rng = np.random.default_rng(seed)
  d = A.shape[0]
  M = N if M is None else M
  Lx, Lw = np.linalg.cholesky(Sigma), np.linalg.cholesky(w_cov)
  w = rng.standard_normal((n_tasks, d)) @ Lw.T
  X = rng.standard_normal((n_tasks, M, d)) @ Lx.T
  x_q = rng.standard_normal((n_tasks, d)) @ Lx.T
  y = np.einsum("bnd,bd->bn", X, w) + noise_std * rng.standard_normal((n_tasks, M))
  y_hat = np.einsum("bd,de,be->b", x_q, A, np.einsum("bnd,bn->bd", X, y) / M)
  return (y_hat - np.einsum("bd,bd->b", x_q, w)) ** 2


def assert_within_se(errors, expected, k=4.0):
  mean, se = errors.mean(), errors.std(ddof=1) / np.sqrt(errors.size)
  assert abs(mean - expected) < k * se, f"Monte Carlo {mean:.5f} ± {se:.5f} vs closed form {expected:.5f}"


@pytest.mark.parametrize("d, N, sigma", [(3, 5, 0.0), (5, 10, 0.5)])
def test_gd1_loss_star_monte_carlo(d, N, sigma):
  eta = learners.eta_star(d, N, sigma)
  e = mc_one_layer(eta * np.eye(d), N, np.eye(d), sigma, np.eye(d))
  assert_within_se(e, learners.gd1_loss_star(d, N, sigma))
  assert learners.gd1_loss_star(d, N, sigma) == pytest.approx(d - d * eta)


def test_gd1_loss_at_other_context_length_monte_carlo():
  d, N, M = 3, 6, 15
  e = mc_one_layer(learners.eta_star(d, N) * np.eye(d), N, np.eye(d), 0.0, np.eye(d), M=M, n_tasks=100_000)
  assert_within_se(e, learners.gd1_loss_at(d, N, M))
  assert learners.gd1_loss_at(d, N, N) == pytest.approx(learners.gd1_loss_star(d, N))


def test_one_layer_loss_general_monte_carlo():
  rng = np.random.default_rng(1)
  d, N, sigma = 3, 5, 0.4
  B = rng.normal(size=(d, d))
  Sigma = B @ B.T + 0.5 * np.eye(d)
  C = rng.normal(size=(d, d))
  w_cov = C @ C.T + 0.2 * np.eye(d)
  A = rng.normal(size=(d, d)) * 0.3  # non-symmetric on purpose
  e = mc_one_layer(A, N, Sigma, sigma, w_cov)
  assert_within_se(e, learners.one_layer_loss(A, N, Sigma, sigma, w_cov))


def test_gamma_star_loss_monte_carlo():
  d, N, sigma = 4, 8, 0.3
  Sigma = np.diag([0.25, 0.5, 1.0, 3.0])
  G = learners.gamma_star(Sigma, N, sigma)
  e = mc_one_layer(G, N, Sigma, sigma, np.eye(d))
  assert_within_se(e, learners.gamma_star_loss(Sigma, N, sigma))


def test_gamma_star_closed_forms():
  d, N = 3, 7
  np.testing.assert_allclose(learners.gamma_star(np.eye(d), N, 0.5), learners.eta_star(d, N, 0.5) * np.eye(d), rtol=1e-12)
  Sigma = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
  G = learners.gamma_star(Sigma, N)
  assert learners.gamma_star_loss(Sigma, N) == pytest.approx(np.trace(Sigma) - np.trace(Sigma @ G @ Sigma), rel=1e-12)


def _fd_grad(f, A, h=1e-5):
  g = np.zeros_like(A)
  for idx in np.ndindex(A.shape):
    E = np.zeros_like(A)
    E[idx] = h
    g[idx] = (f(A + E) - f(A - E)) / (2 * h)
  return g


def test_gamma_star_is_the_stationary_minimum_of_one_layer_loss():
  N, sigma = 6, 0.5
  Sigma = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
  f = lambda A: learners.one_layer_loss(A, N, Sigma, sigma)
  G = learners.gamma_star(Sigma, N, sigma)
  assert np.abs(_fd_grad(f, G)).max() < 1e-7
  assert np.abs(_fd_grad(f, 0.9 * G)).max() > 1e-2  # the test could fail: elsewhere the gradient is not 0
  rng = np.random.default_rng(0)
  for _ in range(5):  # convex quadratic in A: every direction goes up
    assert f(G + 0.05 * rng.normal(size=G.shape)) > f(G)
  eta = learners.eta_star(3, N, sigma)
  iso = lambda e: learners.one_layer_loss(e * np.eye(3), N, noise_std=sigma)
  assert iso(eta) < min(iso(eta - 1e-3), iso(eta + 1e-3))


def test_gd1_loss_for_task():
  t = TaskConfig(d=4, n_context=9, noise_std=0.5)
  assert learners.gd1_loss_for(t) == pytest.approx(learners.gd1_loss_star(4, 9, 0.5), rel=1e-12)


# --- the effective preconditioner -----------------------------------------------------------


def test_effective_preconditioner_of_construction_heads_and_W_O():
  d, eta = 3, 0.7
  P = np.random.default_rng(0).normal(size=(d, d))
  params = learners.construct(d, eta, n_steps=2, P=P)
  np.testing.assert_allclose(learners.effective_preconditioner(params, layer=1), eta * P, rtol=1e-12)
  # two heads each carrying half of W_V, and a W_O = 2 I with W_V halved, give the same Γ_eff
  two = {k: jnp.stack([v, v], axis=1) for k, v in params.items()}
  two["W_V"] = two["W_V"] / 2
  two_cfg = model.ModelConfig(d=d, n_layers=2, n_heads=2)
  np.testing.assert_allclose(learners.effective_preconditioner(two, cfg=two_cfg), eta * P, rtol=1e-12)
  with_O = {**params, "W_V": params["W_V"] / 2, "W_O": 2 * jnp.broadcast_to(jnp.eye(d + 1), (2, d + 1, d + 1))}
  np.testing.assert_allclose(learners.effective_preconditioner(with_O), eta * P, rtol=1e-12)


def test_effective_preconditioner_predicts_one_layer_output():
  """With no cross terms, a one-layer model's ŷ is x_qᵀ Γ_eff (1/N)Σ y_i x_i exactly."""
  d, N = 3, 5
  cfg = model.ModelConfig(d=d)
  params = {k: 20 * v for k, v in model.init_params(jax.random.key(0), cfg, jnp.float64).items()}
  params["W_V"] = params["W_V"].at[0, d, :d].set(0.0)  # W_V's x → y entries
  params["W_K"] = params["W_K"].at[0, :, d].set(0.0)  # W_K's y column
  b = batch64(d, N, B=8)
  y_hat, _ = model.forward(params, tasks.batch_tokens(b), cfg)
  G = learners.effective_preconditioner(params)
  y_gd = jnp.einsum("bd,de,be->b", b.x_q, G, jnp.einsum("bnd,bn->bd", b.X, b.y) / N)
  np.testing.assert_allclose(y_hat, y_gd, rtol=1e-10)
