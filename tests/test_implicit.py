"""Lemma 1 / Theorem 1 (docs/theory.md §4–5): the implicit trajectory read off the forward pass."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lintheory import checks
from lintheory.core import learners, implicit, tasks
from lintheory.core.model import ModelConfig, layer_predictions
from conftest import batch64, random_params


# --- Theorem 1 is exact for any weights of the linear-attention model ---------------------------


@settings(max_examples=4, deadline=None)
@given(d=st.integers(1, 4), N=st.integers(1, 6), L=st.integers(1, 4), H=st.integers(1, 3),
       W_O=st.booleans(), seed=st.integers(0, 2**16))
def test_theorem1_identity_random_weights(d, N, L, H, W_O, seed):
  cfg = ModelConfig(d=d, n_layers=L, n_heads=H, use_W_O=W_O)
  params = random_params(cfg, seed)
  check = checks.assert_trajectory_identity(params, batch64(d, N, seed=seed), tol=1e-10, cfg=cfg)
  assert check.exact and check.per_layer.shape == (L,)
  assert check.max_rel <= 1e-10


def test_the_recurrence_multiplies_the_layers_maps():
  """G_t = ΔW_t (I + W_{t−1}), W_t = W_{t−1} + G_t is I + W_t = (I + ΔW_t)(I + W_{t−1}): from any W_prev,
  I + W_L = (I + ΔW_L) ⋯ (I + ΔW_1)(I + W_prev), float64."""
  rng = np.random.default_rng(0)
  dW, W_prev = jnp.asarray(0.5 * rng.standard_normal((3, 2, 4, 4))), jnp.asarray(rng.standard_normal((2, 4, 4)))
  G, W = implicit.recurrence(dW, W_prev)
  P = jnp.eye(4) + W_prev
  for t in range(3):
    P = (jnp.eye(4) + dW[t]) @ P
    np.testing.assert_allclose(jnp.eye(4) + W[t], P, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(P))))
  np.testing.assert_allclose(G[0], dW[0] @ (jnp.eye(4) + W_prev), rtol=0, atol=1e-13)
  np.testing.assert_array_equal(implicit.recurrence(dW)[1][0], dW[0])  # W_0 = 0 by default: W_1 = ΔW_1


def test_implicit_predictions_are_the_forward_pass():
  cfg = ModelConfig(d=3, n_layers=3, n_heads=2, use_W_O=True)
  params, b = random_params(cfg, 1), batch64(3, 5, B=8)
  traj = implicit.trajectory(params, tasks.batch_tokens(b), cfg)
  y_fwd = layer_predictions(traj.states)
  y_imp = implicit.implicit_predictions(traj, b.x_q)
  np.testing.assert_allclose(y_imp, y_fwd, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(y_fwd))))
  assert traj.delta_W.shape == traj.G.shape == traj.W_traj.shape == (3, 8, 4, 4)
  assert traj.w_hat.shape == (3, 8, 3)


def test_the_identity_check_catches_a_wrong_trajectory(monkeypatch):
  """The check is not vacuous: with W_t = Σ ΔW_t (the (I + W_{t-1}) factor of G_t dropped), the
  importable checker itself raises for L > 1."""
  cfg = ModelConfig(d=3, n_layers=2)
  params, b = random_params(cfg, 2), batch64(3, 5)
  right = implicit.trajectory

  def wrong(*args, **kw):
    traj = right(*args, **kw)
    return traj._replace(W_traj=jnp.cumsum(traj.delta_W, axis=0))

  checks.assert_trajectory_identity(params, b, cfg=cfg)  # the true trajectory passes
  monkeypatch.setattr(implicit, "trajectory", wrong)
  with pytest.raises(AssertionError, match="Theorem 1 identity off"):
    checks.assert_trajectory_identity(params, b, cfg=cfg)


# --- under the GD construction the trajectory is GD ---------------------------------------------


@pytest.mark.parametrize("kind", ["gd", "per_step", "precond"])
def test_constructed_trajectory_is_gd(kind):
  d, N, L = 4, 7, 5
  rng = np.random.default_rng(3)
  etas = jnp.asarray(rng.uniform(0.1, 0.9, L))
  P = jnp.asarray(rng.standard_normal((L, d, d))) if kind == "precond" else None
  eta = 0.4 if kind == "gd" else etas
  params = learners.construct(d, eta, n_steps=L if kind == "gd" else None, P=P)
  b = batch64(d, N)
  traj = implicit.trajectory(params, tasks.batch_tokens(b))
  w_gd = learners.gd(b.X, b.y, eta, L if kind == "gd" else None, P)
  scale = float(jnp.max(jnp.abs(w_gd)))
  np.testing.assert_allclose(traj.w_hat, w_gd, rtol=0, atol=1e-10 * scale)
  np.testing.assert_allclose(traj.G, traj.delta_W, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(traj.G))))


def test_constructed_gd_plus_plus_trajectory():
  d, N = 3, 6
  etas, gammas = jnp.array([0.6, 0.9, 0.4]), jnp.array([0.3, 0.1, 0.0])
  b = batch64(d, N)
  traj = implicit.trajectory(learners.construct(d, etas, gamma=gammas), tasks.batch_tokens(b))
  w_pp, _ = learners.gd_plus_plus(b.X, b.y, b.x_q, etas, gammas)
  np.testing.assert_allclose(traj.w_hat, w_pp, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(w_pp))))
  # GD++ transforms the inputs too, so after the first layer G_t ≠ ΔW_t.
  assert float(jnp.max(jnp.abs(traj.G[1] - traj.delta_W[1]))) > 1e-3


# --- Lemma 1's structure ---------------------------------------------------------------------------


@pytest.mark.parametrize("N", [1, 4])
def test_rank_of_delta_W_is_at_most_N(N):
  d = 7  # D = 8 > N
  cfg = ModelConfig(d=d, n_layers=2)
  traj = implicit.trajectory(random_params(cfg, N), tasks.batch_tokens(batch64(d, N, B=4)), cfg)
  ranks = np.linalg.matrix_rank(np.asarray(traj.delta_W), tol=1e-9)
  assert np.all(ranks <= N)
  assert np.all(ranks == N)  # random weights: the bound is attained, so the test can fail
  assert np.all(np.linalg.matrix_rank(np.asarray(traj.W_traj[0]), tol=1e-9) == N)


def test_per_demo_terms_sum_to_delta_W_and_G():
  cfg = ModelConfig(d=3, n_layers=3, n_heads=2, use_W_O=True)
  params, b = random_params(cfg, 4), batch64(3, 5, B=8)
  traj = implicit.trajectory(params, tasks.batch_tokens(b), cfg)
  g = implicit.per_demo_G(params, traj)
  assert g.shape == (3, 8, 5, 4, 4)
  np.testing.assert_allclose(g.sum(2), traj.G, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(traj.G))))
  dW_i = g[0]  # W_0 = 0, so the first layer's terms are Lemma 1's (1/N)(W_V h_i)(W_K h_i)ᵀ W_Q
  np.testing.assert_allclose(dW_i.sum(1), traj.delta_W[0], rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(dW_i))))
  # each demonstration's term has rank ≤ H = 2 (one outer product per head)
  assert np.all(np.linalg.matrix_rank(np.asarray(dW_i), tol=1e-10) <= 2)


# --- softmax and MLP models are outside Theorem 1 -----------------------------------------------


@pytest.mark.parametrize("arch", [{"attention": "softmax"}, {"mlp": "relu"}, {"mlp": "linear"}])
def test_identity_refused_or_flagged_outside_theorem1(arch):
  cfg = ModelConfig(d=3, n_layers=2, **arch)
  params, b = random_params(cfg, 5), batch64(3, 5)
  with pytest.raises(ValueError, match="Theorem 1 covers linear attention"):
    checks.assert_trajectory_identity(params, b, cfg=cfg)
  check = checks.trajectory_identity(params, b, cfg)
  assert check.exact is False
  assert check.max_abs > 1e-6  # the deviation is real and reported, not hidden


def test_identity_rejects_float32_at_float64_tolerance():
  cfg = ModelConfig(d=2, n_layers=1)
  params = {k: v.astype(jnp.float32) for k, v in random_params(cfg).items()}
  Z = tasks.batch_tokens(batch64(2, 3)).astype(jnp.float32)
  with pytest.raises(ValueError, match="float32"):
    checks.assert_trajectory_identity(params, Z, tol=1e-12)
