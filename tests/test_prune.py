"""SVD pruning (docs/theory.md §7): identity at ξ = 0, Eckart–Young, kept ranks, purity, closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lintheory.core import learners, implicit, prune, tasks
from lintheory.core.model import ModelConfig, forward, init_params


def _random_params(L=3, d=4, seed=0, **kw):
  cfg = ModelConfig(d=d, n_layers=L, init_scale=0.5, **kw)
  return init_params(jax.random.key(seed), cfg, jnp.float64), cfg


# --- rank rule --------------------------------------------------------------------------------


def test_ranks_for_paper_rates_on_small_matrices():
  # floor(k(1 − ξ)) computed by hand, exact arithmetic: 11·0.9 = 9.9, 11·0.5 = 5.5, 11·0.25 = 2.75,
  # 11·0.1 = 1.1, 11·0.05 = 0.55, ...; 10·0.9 = 9 and 10·0.1 = 1 and 20·0.05 = 1 are exact
  # integers that naive float arithmetic rounds down to 8 / 0 / 0.
  assert [prune.rank_for_rate(11, 11, x) for x in prune.PAPER_RATES] == [11, 9, 5, 2, 1, 0, 0, 0]
  assert [prune.rank_for_rate(10, 10, x) for x in prune.PAPER_RATES] == [10, 9, 5, 2, 1, 0, 0, 0]
  assert [prune.rank_for_rate(20, 20, x) for x in prune.PAPER_RATES] == [20, 18, 10, 5, 2, 1, 0, 0]
  assert prune.rank_for_rate(11, 44, 0.5) == 5 and prune.rank_for_rate(44, 11, 0.5) == 5


@given(st.integers(1, 300), st.integers(0, 999))
def test_rank_rule_matches_exact_rational_arithmetic(k, permille):
  xi = permille / 1000
  assert prune.rank_for_rate(k, k, xi) == (k * (1000 - permille)) // 1000


# --- truncation -------------------------------------------------------------------------------


def test_rate_zero_and_full_rank_return_the_input_itself():
  W = np.random.default_rng(0).normal(size=(2, 5, 5))
  assert prune.truncate(W, xi=0.0) is W
  assert prune.truncate(W, rank=5) is W
  params, _ = _random_params()
  out = prune.prune(params, [0, 1, 2], "all", xi=0.0)
  assert all(out[k] is params[k] for k in params)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**31 - 1), st.data())
def test_eckart_young(m, n, seed, data):
  W = np.random.default_rng(seed).normal(size=(m, n))
  r = data.draw(st.integers(0, min(m, n)))
  W_r = np.asarray(prune.truncate(jnp.asarray(W), rank=r))
  s = np.linalg.svd(W, compute_uv=False)
  err = np.sum((W - W_r) ** 2)
  np.testing.assert_allclose(err, np.sum(s[r:] ** 2), rtol=1e-10, atol=1e-12 * np.sum(s**2))
  assert np.linalg.matrix_rank(W_r, tol=1e-9 * s[0]) <= r
  # the kept singular values are W's largest r
  np.testing.assert_allclose(np.linalg.svd(W_r, compute_uv=False)[:r], s[:r], rtol=1e-10)


def test_truncation_is_per_trailing_matrix():
  W = np.random.default_rng(1).normal(size=(3, 2, 6, 6))  # [L, H, D, D]
  W_r = np.asarray(prune.truncate(jnp.asarray(W), rank=2))
  for idx in np.ndindex(3, 2):
    np.testing.assert_allclose(W_r[idx], np.asarray(prune.truncate(jnp.asarray(W[idx]), rank=2)), atol=1e-12)
    assert np.linalg.matrix_rank(W_r[idx], tol=1e-9) == 2


# --- prune ------------------------------------------------------------------------------------


def test_prune_never_mutates_its_input():
  params, _ = _random_params(use_W_O=True, mlp="relu")
  params = {k: np.asarray(v) for k, v in params.items()}
  copies = {k: v.copy() for k, v in params.items()}
  out = prune.prune(params, (0, 2), "all", rank=1)
  assert out is not params
  for k in params:
    np.testing.assert_array_equal(params[k], copies[k])
    assert not np.array_equal(np.asarray(out[k]), copies[k])


@pytest.mark.parametrize("module,changed", [
    ("q", {"W_Q"}), ("k", {"W_K"}), ("v", {"W_V"}), ("o", {"W_O"}),
    ("attn", {"W_Q", "W_K", "W_V", "W_O"}), ("mlp", {"W_1", "W_2"}),
    ("all", {"W_Q", "W_K", "W_V", "W_O", "W_1", "W_2"})])
def test_modules_prune_exactly_their_matrices_in_the_chosen_layer(module, changed):
  params, _ = _random_params(use_W_O=True, mlp="relu")
  out = prune.prune(params, 1, module, xi=0.5)
  for name in params:
    for l in range(3):
      same = np.array_equal(np.asarray(out[name][l]), np.asarray(params[name][l]))
      assert same == (name not in changed or l != 1), (name, l)
      if not same:
        assert np.linalg.matrix_rank(np.asarray(out[name][l]), tol=1e-9) == 2  # ⌊5·0.5⌋


def test_pruning_layer_k_leaves_earlier_implicit_predictors_unchanged():
  params, cfg = _random_params(L=4, d=3)
  params = {k: 0.4 * v for k, v in params.items()}
  b = tasks.sample(jax.random.key(3), tasks.TaskConfig(d=3, n_context=9), 64, dtype=jnp.float64)
  Z = tasks.batch_tokens(b)
  w_hat = jax.jit(lambda p: implicit.trajectory(p, Z, cfg).w_hat)
  base = w_hat(params)
  for k in range(4):
    w = w_hat(prune.prune(params, k, "attn", rank=1))
    np.testing.assert_array_equal(np.asarray(w[:k]), np.asarray(base[:k]))  # exactly
    assert np.max(np.abs(np.asarray(w[k] - base[k]))) > 1e-6  # and layer k itself moves


# --- closed form: the one-layer optimum A* = c I (docs/theory.md §9) -----------------------------


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_rank_k_truncation_of_the_optimum_gives_d_minus_k_c(k):
  d, N = 5, 12
  c = learners.eta_star(d, N)
  params = learners.construct(d, c, n_steps=1)
  pruned = prune.prune(params, 0, "q", rank=k)
  # With W_Q = diag(I_d, 0), rank-k truncation keeps a k-dimensional projector P_k, the layer's
  # preconditioner becomes c·P_k, and for x, w ~ N(0, I) its loss is rotation-invariant:
  # one_layer_loss(c·diag(1_k, 0)) = d − 2ck + c²k(N + d + 1)/N = d − k·c at c = η*.
  closed = learners.one_layer_loss(c * np.diag([1.0] * k + [0.0] * (d - k)), N)
  np.testing.assert_allclose(closed, d - k * c, rtol=1e-12)
  Gamma = np.asarray(learners.effective_preconditioner(pruned))
  np.testing.assert_allclose(learners.one_layer_loss(Gamma, N), d - k * c, rtol=1e-10)
  np.testing.assert_allclose(np.linalg.matrix_rank(Gamma, tol=1e-9), k)
  # The pruned model's predictions are exactly x_qᵀ Γ (1/N) Σ y_i x_i, and Monte Carlo agrees.
  b = tasks.sample(jax.random.key(k), tasks.TaskConfig(d=d, n_context=N), 20_000, dtype=jnp.float64)
  y_hat, _ = jax.jit(forward)(pruned, tasks.batch_tokens(b))
  y_lin = jnp.einsum("bd,de,bne,bn->b", b.x_q, Gamma, b.X, b.y) / N
  np.testing.assert_allclose(np.asarray(y_hat), np.asarray(y_lin), rtol=1e-10, atol=1e-12)
  sq = np.asarray((y_hat - b.y_q) ** 2)
  assert abs(sq.mean() - (d - k * c)) < 4 * sq.std(ddof=1) / np.sqrt(sq.size)


# --- spectra and condition numbers -------------------------------------------------------------


def test_condition_numbers_and_spectra():
  params, _ = _random_params(L=2, d=4, n_heads=2)
  cond, spec = prune.condition_numbers(params), prune.spectra(params)
  assert spec["W_Q"].shape == (2, 2, 5) and cond["W_Q"].shape == (2, 2)
  assert np.all(np.diff(spec["W_V"], axis=-1) <= 0)
  np.testing.assert_allclose(cond["W_K"], np.linalg.cond(np.asarray(params["W_K"])), rtol=1e-10)
  constructed = learners.construct(4, 0.3, n_steps=2)  # W_K = diag(I, 0) is singular
  c2 = prune.condition_numbers(constructed)
  assert np.all(np.isinf(c2["W_K"])) and c2["W_K"].shape == (2,)


# --- invalid arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("xi", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_bad_rates_raise(xi):
  with pytest.raises(ValueError, match="xi"):
    prune.rank_for_rate(11, 11, xi)


def test_invalid_arguments_raise_naming_them():
  params, _ = _random_params(L=3, d=4)
  W = params["W_Q"][0]
  for kw, match in [({"xi": 1.0}, "xi"), ({"rank": -1}, "rank"), ({"rank": 6}, "rank"),
                    ({"rank": 1.5}, "rank"), ({}, "exactly one"), ({"xi": 0.5, "rank": 1}, "exactly one")]:
    with pytest.raises(ValueError, match=match):
      prune.truncate(W, **kw)
    with pytest.raises(ValueError, match=match):
      prune.prune(params, 0, "q", **kw)
  with pytest.raises(ValueError, match="W must"):
    prune.truncate(jnp.ones(3), rank=1)
  with pytest.raises(ValueError, match="module must be one of"):
    prune.prune(params, 0, "x", rank=1)
  with pytest.raises(ValueError, match="'o' is absent"):
    prune.prune(params, 0, "o", rank=1)
  with pytest.raises(ValueError, match="'mlp' is absent"):
    prune.prune(params, 0, "mlp", rank=1)
  for layers in (3, -1, [0, 3], [], "a", 1.0, [True]):
    with pytest.raises(ValueError, match="layer"):
      prune.prune(params, layers, "v", rank=1)
  with pytest.raises(ValueError, match="m must"):
    prune.rank_for_rate(0, 3, 0.5)
