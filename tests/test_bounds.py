"""Theorem 2, its finite versions (subspace V_t, supersample CMI), the gap and Example 1 (docs/theory.md §6, §10)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lintheory.core import bounds, learners, implicit, prune, tasks
from lintheory.core.model import ModelConfig, init_params
from conftest import sym_image


# Jitted once per shape: eager op-by-op dispatch would compile every small op separately.
_trajectory = jax.jit(implicit.trajectory, static_argnums=2)
_per_demo = jax.jit(bounds.per_demo_gradients)
_noisy = jax.jit(bounds.noisy_trajectory)


def _noisy_traj(params, batch, bb):
  """The noisy learner's trajectory as `theorem2` draws it (noise_seed 0, b shots of N)."""
  N = batch.X.shape[1]
  return _noisy(params, tasks.batch_tokens(batch), jax.random.key(0), (N - bb) / (bb * N))


def _random_params(key, d, L, heads=1, W_O=False, scale=0.3):
  cfg = ModelConfig(d=d, n_layers=L, n_heads=heads, use_W_O=W_O, init_scale=scale)
  return init_params(key, cfg, jnp.float64), cfg


def _batch(d, N, B=16, noise=0.0, seed=0):
  tc = tasks.TaskConfig(d=d, n_context=N, noise_std=noise)
  return tc, tasks.sample(jax.random.key(seed), tc, B, dtype=jnp.float64)


def _metrics(params, batch, cfg, tc, **kw):
  return bounds.sweep_metrics(params, batch, cfg, tc, **{"cmi_seed": None, **kw})


# --- per-demonstration gradients and C_t --------------------------------------------------------


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
  assert bounds.covariance_scale(1, 20) == pytest.approx(19 / 20)
  assert bounds.covariance_scale(10, 20) == pytest.approx(10 / (10 * 20))


@pytest.mark.parametrize("N,b", [(7, 1), (7, 3), (8, 5)])
def test_one_bessel_correction_against_every_subset(N, b):
  """Cov of the mean of b of N vectors drawn without replacement, over all C(N, b) subsets (exact),
  equals covariance_scale(b, N)·S with S the divisor-(N − 1) sample covariance; the factor
  (N − b)/(b(N − 1)) with the same S (Bessel counted twice) is off by N/(N − 1)."""
  g = np.random.default_rng(N + b).normal(size=(N, 3))
  means = np.array([g[list(s)].mean(0) for s in itertools.combinations(range(N), b)])
  cov_mean = np.cov(means, rowvar=False, bias=True)  # the subsets are the whole population
  S = np.cov(g, rowvar=False)  # divisor N − 1
  np.testing.assert_allclose(cov_mean, bounds.covariance_scale(b, N) * S, rtol=1e-12, atol=1e-15)
  if b < N:
    twice = (N - b) / (b * (N - 1)) * S
    np.testing.assert_allclose(twice / cov_mean, N / (N - 1), rtol=1e-10)


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
      ref = np.sort(np.linalg.eigvalsh(np.cov(G[l, i], rowvar=False)))[::-1][: lam.shape[-1]]
      np.testing.assert_allclose(lam[l, i], np.maximum(ref, 0), rtol=1e-8, atol=1e-10 * ref[0])


def test_paper_as_written_infinite_and_floor_matches_direct_logdet():
  """As written: +inf. Floor surrogate against slogdet of the full d'×d' matrix C + εI."""
  params, cfg = _random_params(jax.random.key(3), 2, 2)
  tc, b = _batch(2, 6)
  eps, bb = 1e-3, 2
  bd = bounds.theorem2(params, b, cfg, tc, b=bb, eps=eps)
  assert np.isinf(bd.paper_as_written) and np.all(np.isinf(bd.paper_terms))
  traj = _noisy_traj(params, b, bb)
  G = np.asarray(_per_demo(params, traj)).reshape(2, 16, 6, -1)
  dp, c = 9, (6 - bb) / (bb * 6)
  for l in range(2):
    for i in range(3):
      C = c * np.cov(G[l, i], rowvar=False)
      s = float(bd.spectrum.sensitive[l, i])
      ref = dp * np.log((s + np.trace(C) + dp * eps) / dp) - np.linalg.slogdet(C + eps * np.eye(dp))[1]
      assert float(bd.floor_terms[l, i]) == pytest.approx(ref, rel=1e-9)
      assert float(bd.trC[l, i]) == pytest.approx(np.trace(C), rel=1e-10)


def test_sensitive_part_matches_definition_on_the_noisy_iterate():
  """ζ_t = ‖ΔW_t‖²‖I + W_{t−1}‖² with ΔW_t recomputed in numpy from the tokens (I + W_{t−1}) h⁰ of the
  noisy learner's previous iterate (docs/theory.md §6: the gradient is taken where the noisy learner is)."""
  params, cfg = _random_params(jax.random.key(4), 2, 2)
  tc, b = _batch(2, 6, noise=0.5)
  bd = bounds.theorem2(params, b, cfg, tc)
  W = np.asarray(_noisy_traj(params, b, 3).W_traj)
  h0, I = np.asarray(tasks.batch_tokens(b))[:, :6], np.eye(3)
  for t in range(2):
    W_prev = W[t - 1] if t else np.zeros((16, 3, 3))
    H = h0 + np.einsum("bde,bne->bnd", W_prev, h0)
    Wq, Wk, Wv = (np.asarray(params[n][t]) for n in ("W_Q", "W_K", "W_V"))
    dW = np.einsum("ef,bnf,bng,kg,kl->bel", Wv, H, H, Wk, Wq) / 6
    ref = np.sum(dW**2, (-2, -1)) * np.sum((I + W_prev) ** 2, (-2, -1))
    np.testing.assert_allclose(bd.spectrum.sensitive[t], ref, rtol=1e-10)
  assert not np.allclose(W[0], np.asarray(_noisy_traj(params, b, 6).W_traj[0]))  # b < N: the iterate is noisy


# --- the subspace V_t ----------------------------------------------------------------------------


def _one_layer(W_Q, W_K, W_V):
  return {"W_Q": jnp.asarray(W_Q)[None], "W_K": jnp.asarray(W_K)[None], "W_V": jnp.asarray(W_V)[None]}


def _dimV(W_Q, W_K, W_V, W_prev=None):
  return int(bounds.subspace_dim(_one_layer(W_Q, W_K, W_V), W_prev))


def test_subspace_dim_generic_bound_and_rank_one_value_map():
  """dim V_t ≤ D(D+1)/2, with equality for generic weights; W_V = u vᵀ gives V = {u (vᵀX) M} = u ⊗ R^D: D."""
  rng = np.random.default_rng(0)
  for D in (2, 3, 4):
    W = [rng.normal(size=(D, D)) for _ in range(3)]
    assert _dimV(*W) == D * (D + 1) // 2
    assert _dimV(*W, W_prev=rng.normal(size=(D, D))) == D * (D + 1) // 2
    u, v = rng.normal(size=(2, D))
    assert _dimV(W[0], W[1], np.outer(u, v)) == D
    assert _dimV(W[0], W[1], np.zeros((D, D))) == 0


def test_subspace_dim_of_the_gd_construction_is_d():
  """W_V = diag(0, −η), W_Kᵀ W_Q = diag(I_d, 0): W_V X W_Kᵀ W_Q = −η e_D (X_{D,:d}, 0), the y-row with
  an arbitrary x-part, dim d; I + W_{t−1} = [[I, 0], [−w_{t−1}ᵀ, 1]] maps (a, 0) to (a, 0): d for every t."""
  d, N = 3, 6
  tc, b = _batch(d, N, B=4)
  params = learners.construct(d, 0.5, 3)
  cfg = ModelConfig(d=d, n_layers=3)
  traj = _trajectory(params, tasks.batch_tokens(b), cfg)
  W_prev = np.concatenate([np.zeros_like(traj.W_traj[:1]), traj.W_traj[:-1]])
  for t in range(3):
    np.testing.assert_array_equal(bounds.subspace_dim(params, W_prev[t], layer=t), d)
  m = _metrics(params, b, cfg, tc)
  assert m["dimV"] == d and m["dimV_max"] == d


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), D=st.integers(2, 4), data=st.data())
def test_pruning_never_raises_subspace_dim(seed, D, data):
  """dim V_t = dim Sym − dim{X : X·range(M) ⊂ ker W_V}, M = W_Kᵀ W_Q (I + W_prev): it cannot grow when
  ker W_V grows (W_V pruned), range(M) shrinks (W_Q pruned, I + W_prev invertible), or, with W_V
  invertible, rank M drops (W_K pruned). Low-rank weights make the inequality non-trivial."""
  rng = np.random.default_rng(seed)
  ranks = [data.draw(st.integers(1, D)) for _ in range(3)]
  W_Q, W_K, W_V = [rng.normal(size=(D, r)) @ rng.normal(size=(r, D)) for r in ranks]
  W_prev = 0.3 * rng.normal(size=(D, D))  # I + W_prev invertible almost surely
  r = data.draw(st.integers(0, D))
  cut = lambda W: np.asarray(prune.truncate(jnp.asarray(W), rank=r))
  base = _dimV(W_Q, W_K, W_V, W_prev)
  assert _dimV(W_Q, W_K, cut(W_V), W_prev) <= base
  assert _dimV(cut(W_Q), W_K, W_V, W_prev) <= base
  W_V_inv = rng.normal(size=(D, D))
  assert _dimV(W_Q, cut(W_K), W_V_inv, W_prev) <= _dimV(W_Q, W_K, W_V_inv, W_prev)


def test_pruning_W_K_can_raise_subspace_dim_when_W_V_is_singular():
  """The limit of the claim: W_V = diag(1, 1, 0), range(W_Kᵀ W_Q) = span(e1, e2) (dim V = 3); cutting
  W_K's smallest direction (e2 − e3)/√2 maps that range to span(e1, e2 + e3), which meets
  ker(W_V)^⊥ in one dimension only: dim V = 4 > 3."""
  c = 2**-0.5
  V = np.array([[1, 0, 0], [0, c, c], [0, c, -c]]).T
  U = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
  W_K = U @ np.diag([3.0, 2.0, 1.0]) @ V.T
  W_Q = np.linalg.solve(W_K.T, np.diag([1.0, 1.0, 0.0]))
  W_V = np.diag([1.0, 1.0, 0.0])
  assert _dimV(W_Q, W_K, W_V) == 3
  assert _dimV(W_Q, np.asarray(prune.truncate(jnp.asarray(W_K), rank=2)), W_V) == 4


@pytest.mark.parametrize("heads,W_O", [(1, False), (2, True)])
def test_per_demo_gradients_lie_in_V_t(heads, W_O):
  """g_{t,i} = Σ_h W_V^h (h_i h_iᵀ) W_K^hᵀ W_Q^h (I + W_{t−1}) ∈ V_t: the residual after projecting on
  the weights-only basis is round-off (float64), and a random matrix is far outside V_t."""
  params, cfg = _random_params(jax.random.key(11), 2, 3, heads, W_O)
  tc, b = _batch(2, 5, B=4, noise=0.3)
  bd = bounds.theorem2(params, b, cfg, tc)
  assert float(bd.spectrum.residual.max()) < 1e-13
  assert np.all(np.asarray(bd.spectrum.dimV) == 6)  # D = 3: D(D+1)/2 < D² = 9
  A = bounds.subspace_map(implicit.layer_weights(params)["W_Q"][0], implicit.layer_weights(params)["W_K"][0],
                          implicit.layer_weights(params)["W_V"][0], jnp.zeros((3, 3)))
  Q, k = bounds.subspace_basis(A)
  x = np.random.default_rng(0).normal(size=9)
  assert int(k) == 6 and np.linalg.norm(x - Q @ (Q.T @ x)) > 0.1 * np.linalg.norm(x)


def _numpy_subspace_pieces(params_l, W_prev, G_ND, c, s):
  """Independent recomputation: basis by loops and numpy SVD, C restricted, slogdet → (k, ζ + tr C, log det C|V)."""
  D = W_prev.shape[0]
  Omega = params_l["W_K"].T @ params_l["W_Q"] @ (np.eye(D) + W_prev)
  U, sv, _ = np.linalg.svd(sym_image(params_l["W_V"], Omega), full_matrices=False)
  Q = U[:, sv > 1e-10 * sv[0]]
  C = c * np.cov(G_ND @ Q, rowvar=False)
  return Q.shape[1], s + np.trace(C), np.linalg.slogdet(C)[1]


def test_subspace_terms_and_the_theorems_upper_confidence_bound_match_independent_computation():
  """d = 1 (D = 2, dim V = 3 < d' = 4), N = 12 ≥ 4, noisy labels: C_t is non-singular on V_t. Per prompt the
  paper's placement k log(X/k) − log det; the bound is sqrt((R²/N) Σ_t [k log(UCB(E X)/k) + UCB(−E log det)]),
  UCB = mean + z·se with z the normal quantile at 1 − 0.05/(2L) (docs/theory.md §15.1)."""
  from scipy.stats import norm
  params, cfg = _random_params(jax.random.key(5), 1, 2)
  tc, b = _batch(1, 12, B=8, noise=0.5)
  bd = bounds.theorem2(params, b, cfg, tc, b=4)
  traj = _noisy_traj(params, b, 4)
  G = np.asarray(_per_demo(params, traj)).reshape(2, 8, 12, 4)
  W_prev = np.concatenate([np.zeros_like(traj.W_traj[:1]), traj.W_traj[:-1]])
  c, z = (12 - 4) / (4 * 12), norm.ppf(1 - 0.05 / 4)
  ucb = lambda v: np.mean(v) + z * np.std(v, ddof=1) / np.sqrt(v.size)
  total, point = 0.0, 0.0
  for t in range(2):
    pl = {n: np.asarray(params[n][t]) for n in ("W_Q", "W_K", "W_V")}
    k, X, ld = np.array([_numpy_subspace_pieces(pl, W_prev[t, i], G[t, i], c, float(bd.spectrum.sensitive[t, i]))
                         for i in range(8)]).T
    np.testing.assert_allclose(np.asarray(bd.subspace_terms[t]), k * np.log(X / k) - ld, rtol=1e-9)
    total += k[0] * np.log(ucb(X) / k[0]) + ucb(-ld)
    point += k[0] * np.log(np.mean(X) / k[0]) - np.mean(ld)
  assert np.all(np.asarray(bd.reason) == 0) and np.isfinite(bd.bound_subspace)
  assert float(bd.bound_subspace) == pytest.approx(float(bd.R) * np.sqrt(total / 12), rel=1e-9)
  assert float(bd.bound_subspace_point) == pytest.approx(float(bd.R) * np.sqrt(point / 12), rel=1e-9)
  assert float(bd.bound_subspace_per_prompt) == pytest.approx(
      float(bd.R) * np.sqrt(np.sum(np.mean(np.asarray(bd.subspace_terms), 1)) / 12), rel=1e-12)


@settings(max_examples=12, deadline=None)  # few shapes: each new (k, B) is traced again
@given(st.sampled_from((1, 4)), st.sampled_from((3, 8)), st.integers(0, 2**31 - 1))
def test_log_of_the_mean_is_at_least_the_mean_of_the_log(k, B, seed):
  """Jensen: the theorem's placement k log(E X/k) − E log det ≥ E[k log(X/k) − log det], the paper's, for
  any positive second moments X and spectra; and the upper confidence bound is ≥ the point estimate."""
  rng = np.random.default_rng(seed)
  lam = np.sort(rng.lognormal(0, 2, (1, B, k)), -1)[..., ::-1]
  spec = bounds.SubspaceSpectrum(jnp.asarray(lam), jnp.full((1, B), k), jnp.asarray(rng.lognormal(0, 3, (1, B))),
                                 jnp.zeros((1, B)))
  pieces = bounds.subspace_pieces(spec, 0.3, 0.0, 100, False, 1e-300)
  per_prompt = float(jnp.mean(bounds.subspace_terms(spec, 0.3, 0.0, 100, False, 1e-300)[0]))
  point, upper = (float(bounds.log_mean_terms(pieces, z)[0]) for z in (0.0, 1.96))
  assert point >= per_prompt - 1e-9 * abs(per_prompt) and upper >= point


def test_noisy_learner_without_noise_is_the_implicit_learner_and_its_noise_has_covariance_C_t():
  """c = 0: the noisy learner's trajectory is Theorem 1's (h^t = (I + W_t) h⁰, docs/theory.md §5). c > 0,
  one layer: W_1 − G_1 over 20,000 noise draws has the covariance C_1 = c·S_1 (Monte Carlo, 3 % of ‖C_1‖)."""
  params, cfg = _random_params(jax.random.key(11), 1, 2, heads=2, W_O=True)
  tc, b = _batch(1, 6, B=4, noise=0.5)
  Z = tasks.batch_tokens(b)
  det, noisy = _trajectory(params, Z, cfg), _noisy(params, Z, jax.random.key(1), 0.0)
  for a, n in zip(det, noisy):
    np.testing.assert_allclose(np.asarray(n), np.asarray(a), rtol=1e-10, atol=1e-12)
  p1 = {k: v[:1] for k, v in params.items()}
  c = 0.2
  draws = jax.jit(jax.vmap(lambda k: bounds.noisy_trajectory(p1, Z[:1], k, c).W_traj[0, 0]))(
      jax.random.split(jax.random.key(2), 20_000))
  xi = np.asarray(draws).reshape(20_000, -1) - np.asarray(det.G[0, 0]).ravel()
  g = np.asarray(_per_demo(p1, _trajectory(p1, Z[:1], ModelConfig(d=1, n_layers=1, n_heads=2, use_W_O=True))))
  C = c * np.cov(g[0, 0].reshape(6, -1), rowvar=False)
  assert np.abs(xi.mean(0)).max() < 0.03 * np.sqrt(np.abs(C).max())
  assert np.linalg.norm(np.cov(xi, rowvar=False) - C) < 0.03 * np.linalg.norm(C)


def test_subspace_bound_infinite_with_its_reason():
  params, cfg = _random_params(jax.random.key(6), 2, 2)
  tc, b = _batch(2, 4, B=4, noise=0.3)  # N − 1 = 3 < dim V = 6
  m = _metrics(params, b, cfg, tc)
  assert np.isinf(m["bound_subspace"]) and m["subspace_inf_reason"] == 2 and m["subspace_inf_frac"] == 1
  m = _metrics(params, b, cfg, tc, b=4)
  assert m["subspace_inf_reason"] == 1 and m["b_is_N"] == 1 and m["trC"] == 0
  # d = 1, σ = 0: h_i = x_i·(1, w), every h_i h_iᵀ ∝ one matrix, so C_t has rank ≤ 1 on the 3-dim V_t
  p1, cfg1 = _random_params(jax.random.key(7), 1, 2)
  tc1, b1 = _batch(1, 12, B=8)
  m = _metrics(p1, b1, cfg1, tc1)
  assert m["subspace_inf_reason"] == 3 and np.isinf(m["bound_subspace"]) and m["dimV"] == 3
  assert np.isinf(m["paper_as_written"]) and np.isfinite(m["floor_surrogate"])


def test_sensitivity_grid():
  """One layer (W_0 = 0: the spectrum does not depend on the learner's noise), so every grid point's
  bound is computable from theorem2's spectrum."""
  from scipy.stats import norm
  params, cfg = _random_params(jax.random.key(8), 1, 1)
  tc, b = _batch(1, 8, B=8, noise=0.5)
  grid = bounds.sensitivity(params, b, cfg, tc, bs=[1, 2, 4, 8], epss=[0.0, 1e-6, 1e-2])
  assert grid["bound_subspace"].shape == (4, 3) and grid["floor_surrogate"].shape == (4, 3)
  for i, bb in enumerate([1, 2, 4]):
    ref = float(_metrics(params, b, cfg, tc, b=bb)["bound_subspace"])
    assert grid["bound_subspace"][i, 0] == pytest.approx(ref, rel=1e-9)
  assert np.isinf(grid["bound_subspace"][3, 0])  # b = N: C_t = 0
  assert np.all(np.isfinite(grid["bound_subspace"][:, 1:])) and np.all(np.isnan(grid["floor_surrogate"][:, 0]))
  # b = N with ε: the noise is ε·P_V only: X = ζ + kε and log det = k log ε, the same for every prompt
  bd = bounds.theorem2(params, b, cfg, tc)
  k, s = float(bd.spectrum.dimV[0, 0]), np.asarray(bd.spectrum.sensitive[0])
  ucb = np.mean(s) + norm.ppf(1 - 0.05 / 2) * np.std(s, ddof=1) / np.sqrt(s.size)
  for j, e in ((1, 1e-6), (2, 1e-2)):
    ref = float(bd.R) * np.sqrt((k * np.log((ucb + k * e) / k) - k * np.log(e)) / 8)
    assert grid["bound_subspace"][3, j] == pytest.approx(ref, rel=1e-9)


# --- R ------------------------------------------------------------------------------------------


def test_R_is_fixed_across_pruned_configurations():
  params, cfg = _random_params(jax.random.key(9), 1, 2)
  tc, b = _batch(1, 8, B=8, noise=0.5)
  pruned = dict(params, W_V=params["W_V"].at[0].set(prune.truncate(params["W_V"][0], rank=1)))
  m0 = _metrics(params, b, cfg, tc, R_params=params)
  m1 = _metrics(pruned, b, cfg, tc, R_params=params)
  assert m1["R"] == m0["R"] == m0["R_unpruned"] == m1["R_unpruned"]
  assert m1["R_zero"] == m0["R_zero"]
  w0 = _trajectory(params, tasks.batch_tokens(b), cfg).w_hat[-1]
  assert float(m0["R"]) == pytest.approx(float(bounds.estimate_R(w0, b.w, jnp.eye(1), 0.5)), rel=1e-12)
  # default: the zero predictor's R, sqrt(E 2 (wᵀw + σ²)²), the same for every configuration
  s2 = np.sum(np.asarray(b.w) ** 2, -1) + 0.25
  ref = np.sqrt(np.mean(2 * s2**2))
  assert float(_metrics(pruned, b, cfg, tc)["R"]) == pytest.approx(ref, rel=1e-12)


def test_population_loss_and_R_against_fresh_queries():
  d, N, sigma = 2, 6, 0.5
  params, cfg = _random_params(jax.random.key(8), d, 2)
  tc, b = _batch(d, N, B=4, noise=sigma)
  w_hat = _trajectory(params, tasks.batch_tokens(b), cfg).w_hat[-1]
  pop = bounds.population_loss(w_hat, b.w, jnp.eye(d), sigma)
  k1, k2 = jax.random.split(jax.random.key(9))
  M = 50_000
  x = jax.random.normal(k1, (4, M, d), jnp.float64)
  y = jnp.einsum("bmd,bd->bm", x, b.w) + sigma * jax.random.normal(k2, (4, M), jnp.float64)
  loss = (jnp.einsum("bmd,bd->bm", x, w_hat) - y) ** 2
  np.testing.assert_allclose(loss.mean(1), pop, rtol=2e-2)
  R = bounds.estimate_R(w_hat, b.w, jnp.eye(d), sigma)
  assert float(R) == pytest.approx(float(jnp.sqrt(jnp.mean(loss.var(1)))), rel=5e-2)


# --- the supersample CMI bound -------------------------------------------------------------------


def test_cmi_gap_unbiased_for_least_squares_and_bound_holds():
  """N < d, σ = 0: minimum-norm least squares interpolates, E gap = E‖(I − P)w‖² = d − N (exact).
  The training loss is 0 and the test loss is not, so Δ_i reveals U_i: I(Δ_i; U_i) ≈ log 2."""
  d, N = 6, 3
  tc = tasks.TaskConfig(d=d, n_context=N)
  cm = bounds.supersample_cmi(jax.random.key(0), learners.least_squares, tc, clip_M=1000.0, n_tasks=2000,
                              n_coins=2, levels=10_000, dtype=jnp.float64)
  assert abs(float(cm.gap) - (d - N)) < 4 * float(cm.gap_se)
  assert float(cm.gap_clipped) <= float(cm.gap)  # the training loss is 0: clipping only lowers the test side
  assert float(cm.mi) > 0.5 * np.log(2) and float(cm.mi) <= np.log(2) + 1e-12
  assert float(cm.gap_clipped) <= float(cm.bound) <= cm.cap


def test_cmi_zero_for_a_learner_that_ignores_the_data():
  tc = tasks.TaskConfig(d=2, n_context=4, noise_std=0.5)
  zero = lambda X, y: jnp.zeros((X.shape[0], X.shape[2]), X.dtype)
  cm = bounds.supersample_cmi(jax.random.key(1), zero, tc, clip_M=20.0, n_tasks=500, n_coins=4,
                              levels=8, dtype=jnp.float64)
  assert abs(float(cm.gap)) < 4 * float(cm.gap_se)
  assert float(cm.mi) < 4 * float(cm.mi_bias)  # only the plug-in bias: Δ_i ⊥ U_i
  assert float(cm.bound_point) <= 20.0 * np.sqrt(2 * float(cm.mi)) + 20.0 / 8 + 1e-12  # Jensen: mean √ ≤ √ mean
  assert float(cm.bound_point) <= float(cm.bound) <= cm.cap


def test_cmi_bound_finite_and_above_the_gap_for_the_gd_transformer():
  d, N = 2, 6
  tc, b = _batch(d, N, B=8, noise=0.3)
  params = learners.construct(d, 0.5, 2)
  m = bounds.sweep_metrics(params, b, ModelConfig(d=d, n_layers=2), tc, cmi_tasks=128, cmi_coins=4)
  assert np.isfinite(m["cmi_bound"]) and m["cmi_bound"] <= m["cmi_cap"]
  assert m["cmi_bound"] >= m["cmi_gap_clipped"] + 2 * m["cmi_gap_clipped_se"]
  assert m["clip_M"] == pytest.approx(10 * (d + 0.09))


# --- sweep interface ----------------------------------------------------------------------------


def test_sweep_metrics_jittable_and_vmappable():
  params, cfg = _random_params(jax.random.key(7), 1, 2)
  tc, b = _batch(1, 8, B=8, noise=0.5)  # the shapes of test_sensitivity_grid: one compilation
  kw = {"b": 2, "eps": 1e-4, "cmi_seed": None}
  eager = bounds.sweep_metrics(params, b, cfg, tc, **kw)
  jitted = jax.jit(lambda p, bb: bounds.sweep_metrics(p, bb, cfg, tc, **kw))(params, b)
  for k in ("bound_subspace", "floor_surrogate", "dimV", "trC", "gap", "R"):
    assert eager[k].shape == () and jitted[k].shape == ()
    assert float(jitted[k]) == pytest.approx(float(eager[k]), rel=1e-9)
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a]), params)
  vm = jax.jit(jax.vmap(lambda p: bounds.sweep_metrics(p, b, cfg, tc, **kw)))(stacked)
  one = bounds.sweep_metrics(jax.tree_util.tree_map(lambda a: 0.5 * a, params), b, cfg, tc, **kw)
  for k, v in one.items():
    np.testing.assert_allclose(vm[k][1], v, rtol=1e-8)
  Rs = jnp.array([1.0, 2.0])
  vr = jax.vmap(lambda R: bounds.sweep_metrics(params, b, cfg, tc, R=R, **kw))(Rs)
  np.testing.assert_allclose(vr["R"], Rs)
  np.testing.assert_allclose(vr["bound_subspace"][1] / vr["bound_subspace"][0], 2.0, rtol=1e-10)


# --- gap and Example 1 ---------------------------------------------------------------------------


def test_gap_zero_for_the_true_task_vector_and_closed_form_for_least_squares():
  d, N = 8, 3
  tc, b = _batch(d, N, B=4000, seed=3)
  Sigma = jnp.eye(d)
  np.testing.assert_allclose(bounds.gap(b.w, b, Sigma, 0.0), 0.0, atol=1e-10)
  w_ls = learners.least_squares(b.X, b.y)
  np.testing.assert_allclose(bounds.demo_loss(w_ls, b.X, b.y), 0.0, atol=1e-10)
  g = np.asarray(bounds.gap(w_ls, b, Sigma, 0.0))
  assert abs(g.mean() - (d - N)) < 4 * g.std() / np.sqrt(g.size)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), D=st.integers(2, 4), N=st.integers(1, 8), which=st.integers(0, 2),
       data=st.data())
def test_example1_UB_never_increases_under_truncation(seed, D, N, which, data):
  rng = np.random.default_rng(seed)
  Ws, H = [rng.normal(size=(D, D)) for _ in range(3)], rng.normal(size=(N, D))
  r = data.draw(st.integers(0, D))
  ub = float(bounds.example1_UB(*Ws, H))
  Ws[which] = np.asarray(prune.truncate(jnp.asarray(Ws[which]), rank=r))
  ub_r = float(bounds.example1_UB(*Ws, H))
  assert ub_r <= ub * (1 + 1e-12) + 1e-300
  if r == 0:
    assert ub_r == 0.0


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,name", [({"b": 0}, "b"), ({"b": 7}, "b"), ({"b": 2.5}, "b"),
                                     ({"eps": 0.0}, "eps"), ({"eps": float("nan")}, "eps"),
                                     ({"R": -1.0}, "R"), ({"R": float("inf")}, "R"), ({"R": "x"}, "R"),
                                     ({"rtol": 1.5}, "rtol"), ({"clip_M": 0.0}, "clip_M"),
                                     ({"cmi_seed": 0, "cmi_tasks": 1}, "cmi_tasks"),
                                     ({"cmi_seed": 0, "cmi_coins": 0}, "cmi_coins"),
                                     ({"cmi_seed": 0, "cmi_levels": 0}, "cmi_levels"),
                                     ({"cmi_seed": -1}, "cmi_seed")])
def test_invalid_arguments_raise(kw, name):
  params, cfg = _random_params(jax.random.key(0), 2, 1)
  tc, b = _batch(2, 6)
  with pytest.raises(ValueError, match=name):
    bounds.sweep_metrics(params, b, cfg, tc, **{"cmi_seed": None, **kw})


def test_invalid_N_grid_layer_and_shapes_raise():
  params, cfg = _random_params(jax.random.key(0), 2, 1)
  tc, b = _batch(2, 6)
  tc1, b1 = _batch(2, 1)
  with pytest.raises(ValueError, match="N"):
    _metrics(params, b1, cfg, tc1)
  with pytest.raises(ValueError, match="eps"):
    bounds.sensitivity(params, b, cfg, tc, bs=[2], epss=[-1.0])
  with pytest.raises(ValueError, match="bs and epss"):
    bounds.sensitivity(params, b, cfg, tc, bs=[], epss=[0.0])
  with pytest.raises(ValueError, match="layer"):
    bounds.subspace_dim(params, layer=1)
  with pytest.raises(ValueError, match="W_prev"):
    bounds.subspace_dim(params, np.zeros((2, 2)))
  with pytest.raises(ValueError, match="W_K"):
    bounds.example1_UB(np.eye(3), np.eye(2), np.eye(3), np.ones((4, 3)))
  with pytest.raises(ValueError, match="H_ND"):
    bounds.example1_UB(np.eye(3), np.eye(3), np.eye(3), np.ones(3))
