"""Theorem 2's bound, the measured gap and Example 1 (docs/theory.md §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lintheory.core import bounds, learners, implicit, prune, tasks
from lintheory.core.model import ModelConfig, init_params


# Jitted once per shape: eager op-by-op dispatch would compile every small op separately.
_trajectory = jax.jit(implicit.trajectory, static_argnums=2)
_per_demo = jax.jit(bounds.per_demo_gradients)


def _random_params(key, d, L, heads=1, W_O=False, scale=0.3):
  cfg = ModelConfig(d=d, n_layers=L, n_heads=heads, use_W_O=W_O, init_scale=scale)
  return init_params(key, cfg, jnp.float64), cfg


def _batch(d, N, B=16, noise=0.0, seed=0):
  tc = tasks.TaskConfig(d=d, n_context=N, noise_std=noise)
  return tc, tasks.sample(jax.random.key(seed), tc, B, dtype=jnp.float64)


@pytest.mark.parametrize("heads,W_O", [(1, False), (2, True)])
def test_per_demo_gradients_average_to_G(heads, W_O):
  params, cfg = _random_params(jax.random.key(1), 2, 2, heads, W_O)
  _, b = _batch(2, 6)
  traj = _trajectory(params, tasks.batch_tokens(b), cfg)
  g = _per_demo(params, traj)
  assert g.shape == (2, 16, 6, 3, 3)
  np.testing.assert_allclose(g.mean(2), traj.G, rtol=1e-10, atol=1e-12 * float(jnp.abs(traj.G).max()))


def test_covariance_scale():
  assert bounds.covariance_scale(20, 20) == 0.0
  assert bounds.covariance_scale(1, 20) == 1.0
  assert bounds.covariance_scale(10, 20) == pytest.approx(10 / (10 * 19))


@pytest.mark.parametrize("d,N", [(2, 6), (1, 9)])  # N ≤ d' (Gram path) and N > d' (covariance path)
def test_cov_eigvals_match_numpy(d, N):
  params, cfg = _random_params(jax.random.key(2), d, 2)
  _, b = _batch(d, N, B=4)
  traj = _trajectory(params, tasks.batch_tokens(b), cfg)
  g = _per_demo(params, traj)
  lam = jax.jit(bounds.sample_cov_eigvals)(g)
  G = np.asarray(g).reshape(2, 4, N, -1)
  for l in range(2):
    for i in range(4):
      S = np.cov(G[l, i], rowvar=False)  # divisor N − 1, b = 1: C = S
      ref = np.sort(np.linalg.eigvalsh(S))[::-1][: lam.shape[-1]]
      np.testing.assert_allclose(lam[l, i], np.maximum(ref, 0), rtol=1e-8, atol=1e-10 * ref[0])


def test_layer_terms_match_direct_logdet():
  """Floor version against slogdet of the full d'×d' matrix C + εI, in float64."""
  params, cfg = _random_params(jax.random.key(3), 2, 2)
  tc, b = _batch(2, 6)
  eps, bb = 1e-3, 2
  bd = bounds.theorem2(params, b, cfg, tc, b=bb, eps=eps)
  traj = _trajectory(params, tasks.batch_tokens(b), cfg)
  G = np.asarray(_per_demo(params, traj)).reshape(2, 16, 6, -1)
  dp = 9
  c = (6 - bb) / (bb * 5)
  for l in range(2):
    for i in range(3):
      C = c * np.cov(G[l, i], rowvar=False)
      s = float(bd.sensitive[l, i])
      ref = dp * np.log((s + np.trace(C) + dp * eps) / dp) - np.linalg.slogdet(C + eps * np.eye(dp))[1]
      assert float(bd.terms.floor[l, i]) == pytest.approx(ref, rel=1e-9)
      assert float(bd.terms.trC[l, i]) == pytest.approx(np.trace(C), rel=1e-10)


def test_sensitive_part_matches_definition():
  params, cfg = _random_params(jax.random.key(4), 2, 2)
  tc, b = _batch(2, 6)
  bd = bounds.theorem2(params, b, cfg, tc)
  traj = _trajectory(params, tasks.batch_tokens(b), cfg)
  I = np.eye(3)
  for t in range(2):
    Gsum = sum(np.asarray(traj.G[j]) for j in range(t)) if t else np.zeros((16, 3, 3))
    ref = np.sum(np.asarray(traj.delta_W[t]) ** 2, (-2, -1)) * np.sum((I + Gsum) ** 2, (-2, -1))
    np.testing.assert_allclose(bd.sensitive[t], ref, rtol=1e-10)


def test_bound_finite_with_floor_and_flagged_without():
  """GD construction: g_{t,i} lives in the y-row, so C_t has rank d < d' = (d+1)²: singular."""
  d, N = 2, 6
  tc, b = _batch(d, N)
  params = learners.construct(d, 0.5, 2)
  m = bounds.sweep_metrics(params, b, ModelConfig(d=d, n_layers=2), tc)
  assert np.isinf(m["bound_exact"]) and m["exact_nonfinite"] == 1.0
  assert np.isfinite(m["bound_floor"]) and m["floor_nonfinite"] == 0.0
  assert np.isfinite(m["bound_range"]) and m["range_nonfinite"] == 0.0
  assert m["rank_C"] == d  # the range has the dimension of the y-row's x-part
  assert m["floor_vacuous"] in (0.0, 1.0) and m["b_is_N"] == 0.0


def test_C_is_singular_for_any_N_rank_at_most_D_D_plus_1_over_2():
  """g_{t,i} = (A ⊗ B)(h_i ⊗ h_i) lies in the image of the symmetric tensors (dim D(D+1)/2 < d' = D²),
  so even with N − 1 ≥ d' the bound as written is infinite; the floor makes it finite."""
  params, cfg = _random_params(jax.random.key(5), 1, 2)
  tc, b = _batch(1, 12, B=8, noise=0.5)  # noise: with d = 1 and σ = 0 every h_i ∝ [1, w]
  m = bounds.sweep_metrics(params, b, cfg, tc, eps=1e-10)
  assert m["rank_C"] == 3.0  # D = 2: D(D+1)/2 = 3 < 4 = d'
  assert m["exact_nonfinite"] == 1.0 and np.isfinite(m["bound_floor"]) and np.isfinite(m["bound_range"])


def test_b_equal_N_gives_zero_covariance_flagged():
  params, cfg = _random_params(jax.random.key(6), 2, 2)
  tc, b = _batch(2, 6)
  m = bounds.sweep_metrics(params, b, cfg, tc, b=6)
  assert m["trC"] == 0.0 and m["b_is_N"] == 1.0 and m["rank_C"] == 0.0
  assert m["exact_nonfinite"] == 1.0 and m["bound_range"] == 0.0


def test_sweep_metrics_jittable_and_vmappable():
  params, cfg = _random_params(jax.random.key(7), 2, 2)
  tc, b = _batch(2, 6)
  eager = bounds.sweep_metrics(params, b, cfg, tc, b=2, eps=1e-4)
  jitted = jax.jit(bounds.sweep_metrics, static_argnums=(2, 3), static_argnames=("b", "eps"))(
      params, b, cfg, tc, b=2, eps=1e-4)
  for k in ("bound_sensitive", "bound_floor", "bound_range", "trC", "gap", "R"):
    assert eager[k].shape == () and jitted[k].shape == ()
    assert float(jitted[k]) == pytest.approx(float(eager[k]), rel=1e-9)
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a, 2 * a]), params)
  vm = jax.jit(jax.vmap(lambda p: bounds.sweep_metrics(p, b, cfg, tc, b=2, eps=1e-4)))(stacked)
  for s, scale in enumerate((1.0, 0.5, 2.0)):
    one = bounds.sweep_metrics(jax.tree_util.tree_map(lambda a: scale * a, params), b, cfg, tc, b=2, eps=1e-4)
    for k, v in one.items():
      np.testing.assert_allclose(vm[k][s], v, rtol=1e-8)
  # R may be traced (vmapped) too
  Rs = jnp.array([1.0, 2.0])
  vr = jax.vmap(lambda R: bounds.sweep_metrics(params, b, cfg, tc, R=R))(Rs)
  np.testing.assert_allclose(vr["R"], Rs)
  np.testing.assert_allclose(vr["bound_floor"][1] / vr["bound_floor"][0], 2.0, rtol=1e-10)


def test_gap_zero_for_the_true_task_vector_and_closed_form_for_least_squares():
  d, N = 8, 3
  tc, b = _batch(d, N, B=4000, seed=3)
  Sigma = jnp.eye(d)
  np.testing.assert_allclose(bounds.gap(b.w, b, Sigma, 0.0), 0.0, atol=1e-10)
  # N < d, σ = 0: least squares interpolates (demo loss 0) and ŵ = P w, P the projection onto
  # the N-dim row space of X, so E gap = E‖(I − P)w‖² = d − N.
  w_ls = learners.least_squares(b.X, b.y)
  np.testing.assert_allclose(bounds.demo_loss(w_ls, b.X, b.y), 0.0, atol=1e-10)
  g = np.asarray(bounds.gap(w_ls, b, Sigma, 0.0))
  assert abs(g.mean() - (d - N)) < 4 * g.std() / np.sqrt(g.size)


def test_population_loss_and_R_against_fresh_queries():
  d, N, sigma = 2, 6, 0.5
  params, cfg = _random_params(jax.random.key(8), d, 2)
  tc, b = _batch(d, N, B=4, noise=sigma)
  traj = _trajectory(params, tasks.batch_tokens(b), cfg)
  w_hat = traj.w_hat[-1]
  pop = bounds.population_loss(w_hat, b.w, jnp.eye(d), sigma)
  k1, k2 = jax.random.split(jax.random.key(9))
  M = 50_000
  x = jax.random.normal(k1, (4, M, d), jnp.float64)
  y = jnp.einsum("bmd,bd->bm", x, b.w) + sigma * jax.random.normal(k2, (4, M), jnp.float64)
  loss = (jnp.einsum("bmd,bd->bm", x, w_hat) - y) ** 2
  np.testing.assert_allclose(loss.mean(1), pop, rtol=2e-2)
  R = bounds.estimate_R(w_hat, b.w, jnp.eye(d), sigma)
  assert float(R) == pytest.approx(float(jnp.sqrt(jnp.mean(loss.var(1)))), rel=5e-2)
  assert float(bounds.theorem2(params, b, cfg, tc).R) == pytest.approx(float(R), rel=1e-12)


def _svd_rank(seed, D, N):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(D, D)) for _ in range(3)], rng.normal(size=(N, D))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), D=st.integers(2, 4), N=st.integers(1, 8), which=st.integers(0, 2),
       data=st.data())
def test_example1_UB_never_increases_under_truncation(seed, D, N, which, data):
  (W_Q, W_K, W_V), H = _svd_rank(seed, D, N)
  r = data.draw(st.integers(0, D))
  ub = float(bounds.example1_UB(W_Q, W_K, W_V, H))
  Ws = [W_Q, W_K, W_V]
  Ws[which] = np.asarray(prune.truncate(jnp.asarray(Ws[which]), rank=r))
  ub_r = float(bounds.example1_UB(*Ws, H))
  assert ub_r <= ub * (1 + 1e-12) + 1e-300
  if r == 0:
    assert ub_r == 0.0


@pytest.mark.parametrize("kw,name", [({"b": 0}, "b"), ({"b": 7}, "b"), ({"b": 2.5}, "b"),
                                     ({"eps": 0.0}, "eps"), ({"eps": float("nan")}, "eps"),
                                     ({"R": -1.0}, "R"), ({"R": float("inf")}, "R"), ({"R": "x"}, "R")])
def test_invalid_arguments_raise(kw, name):
  params, cfg = _random_params(jax.random.key(0), 2, 2)
  tc, b = _batch(2, 6)
  with pytest.raises(ValueError, match=name):
    bounds.sweep_metrics(params, b, cfg, tc, **kw)


def test_invalid_rtol_N_and_shapes_raise():
  params, cfg = _random_params(jax.random.key(0), 2, 1)
  tc, b = _batch(2, 6)
  with pytest.raises(ValueError, match="rtol"):
    bounds.theorem2(params, b, cfg, tc, rtol=1.5)
  tc1, b1 = _batch(2, 1)
  with pytest.raises(ValueError, match="N"):
    bounds.sweep_metrics(params, b1, cfg, tc1)
  with pytest.raises(ValueError, match="W_K"):
    bounds.example1_UB(np.eye(3), np.eye(2), np.eye(3), np.ones((4, 3)))
  with pytest.raises(ValueError, match="H_ND"):
    bounds.example1_UB(np.eye(3), np.eye(3), np.eye(3), np.ones(3))
