"""The Gram-matrix forward (core/fast.py) is the reference forward (model.forward) rewritten exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lintheory.core import fast, implicit, model, tasks
from lintheory.core.model import ModelConfig


def rel_err(a, b) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def draw_problem(key, cfg: ModelConfig, B: int, N: int, scale: float):
  key_p, key_z = jax.random.split(key)
  params = {k: v * (scale / cfg.init_scale) for k, v in model.init_params(key_p, cfg, jnp.float64).items()}
  Z = jax.random.normal(key_z, (B, N + 1, cfg.D), jnp.float64).at[:, -1, -1].set(0.0)
  y = jax.random.normal(jax.random.fold_in(key_z, 1), (B,), jnp.float64)
  return params, Z, y


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(1, 5), N=st.integers(1, 7), L=st.integers(1, 4), H=st.integers(1, 3),
       W_O=st.booleans(), seed=st.integers(0, 2**16))
def test_fast_forward_and_gradients_equal_the_reference(d, N, L, H, W_O, seed):
  """ŷ and ∂loss/∂params agree to round-off in float64 over shapes (d, N, L, heads, W_O)."""
  cfg = ModelConfig(d=d, n_layers=L, n_heads=H, use_W_O=W_O)
  params, Z, y = draw_problem(jax.random.key(seed), cfg, 3, N, 0.3)
  y_ref = model.forward(params, Z, cfg)[0]
  assert rel_err(fast.forward(params, Z, cfg), y_ref) <= 1e-12

  def loss(f):
    return lambda p: jnp.mean((f(p) - y) ** 2)

  g_ref = jax.grad(loss(lambda p: model.forward(p, Z, cfg)[0]))(params)
  g_fast = jax.grad(loss(lambda p: fast.forward(p, Z, cfg)))(params)
  for k in params:
    assert rel_err(g_fast[k], g_ref[k]) <= 1e-12, k


@pytest.mark.parametrize("d,L,H", [(10, 4, 1), (9, 3, 2)], ids=["D=11", "D=10-heads"])
def test_wide_models_take_the_batched_dot_and_still_equal_the_reference(d, L, H):
  """Above UNROLL_MAX the per-task products are batched dots: ŷ and gradients still agree (1e-12)."""
  cfg = ModelConfig(d=d, n_layers=L, n_heads=H)
  assert cfg.D > fast.UNROLL_MAX
  params, Z, y = draw_problem(jax.random.key(d), cfg, 4, 12, 0.3)
  assert rel_err(fast.forward(params, Z, cfg), model.forward(params, Z, cfg)[0]) <= 1e-12
  loss = lambda f: (lambda p: jnp.mean((f(p) - y) ** 2))
  g_ref = jax.grad(loss(lambda p: model.forward(p, Z, cfg)[0]))(params)
  g_fast = jax.grad(loss(lambda p: fast.forward(p, Z, cfg)))(params)
  for k in params:
    assert rel_err(g_fast[k], g_ref[k]) <= 1e-12, k


@settings(max_examples=6, deadline=None)
@given(I=st.integers(1, 12), K=st.integers(1, 12), J=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_bmm_and_its_vjp_are_the_per_task_matmul(I, K, J, seed):
  """bmm = A @ B per task, and its hand-written VJP = autodiff's, on both sides of UNROLL_MAX."""
  kA, kB, kG = jax.random.split(jax.random.key(seed), 3)
  A = jax.random.normal(kA, (3, I, K), jnp.float64)
  B = jax.random.normal(kB, (3, K, J), jnp.float64)
  G = jax.random.normal(kG, (3, I, J), jnp.float64)
  out, vjp = jax.vjp(fast.bmm, A, B)
  ref, vjp_ref = jax.vjp(jnp.matmul, A, B)
  np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)
  for a, b in zip(vjp(G), vjp_ref(G)):
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_the_readout_row_is_the_forward_pass_run_forwards(L):
  """forward_gram (−r·q, r carried back through the layers, no C update for the last two) equals
  `layer` applied L − 1 times to (C, q), then `readout`."""
  cfg = ModelConfig(d=4, n_layers=L, n_heads=2, use_W_O=True)
  params, Z, _ = draw_problem(jax.random.key(4), cfg, 5, 7, 0.5)
  C, q = fast.gram(Z)
  for l in range(L - 1):
    C, q = fast.layer({k: v[l] for k, v in params.items()}, C, q, 7)
  expected = fast.readout({k: v[L - 1] for k, v in params.items()}, C, q, 7)
  assert rel_err(fast.forward_gram(params, *fast.gram(Z), 7), expected) <= 1e-13
  if L > 1:  # the earlier layers matter
    assert rel_err(expected, fast.readout({k: v[L - 1] for k, v in params.items()}, *fast.gram(Z), 7)) > 1e-3


def test_a_layer_maps_every_token_by_one_matrix():
  """states[1] = states[0] (I + M)ᵀ for every token, demonstrations and query (docs/theory.md §2)."""
  cfg = ModelConfig(d=3, n_layers=1, n_heads=2, use_W_O=True)
  params, Z, _ = draw_problem(jax.random.key(0), cfg, 4, 6, 0.4)
  _, states = model.forward(params, Z, cfg)
  C, _ = fast.gram(Z)
  M = fast.layer_map({k: v[0] for k, v in params.items()}, C, 6)
  expected = jnp.einsum("btj,bij->bti", Z, jnp.eye(cfg.D) + M)
  assert rel_err(states[1], expected) <= 1e-13
  assert rel_err(M, jnp.zeros_like(M)) > 0.1  # the layer does something


def test_the_layer_map_on_the_gram_matrix_is_lemma1s_delta_W_from_the_tokens():
  """M = fast.layer_map(C) is ΔW_t of Lemma 1 (implicit.delta_W, from the demonstrations' tokens), float64."""
  cfg = ModelConfig(d=3, n_layers=2, n_heads=2, use_W_O=True)
  params = {k: 0.4 * v for k, v in model.init_params(jax.random.key(0), cfg, jnp.float64).items()}
  Zs = jax.random.normal(jax.random.key(1), (3, 5, 4), jnp.float64)
  want = implicit.delta_W({k: v[1] for k, v in implicit.layer_weights(params).items()}, Zs)
  got = fast.layer_map({k: v[1] for k, v in params.items()}, fast.gram_of(Zs), 5)
  assert rel_err(got, want) <= 1e-13


def test_gram_is_over_the_demonstrations_only():
  Z = jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float64)
  C, q = fast.gram(Z)
  np.testing.assert_allclose(C, np.einsum("bni,bnj->bij", Z[:, :4], Z[:, :4]), rtol=1e-14)
  np.testing.assert_array_equal(q, Z[:, -1])
  np.testing.assert_array_equal(C, np.swapaxes(C, 1, 2))


def test_gram_from_the_tasks_is_the_gram_of_their_tokens():
  """gram_tasks(X, y, x_q) = gram(tokens(X, y, x_q)): the blocks XᵀX, Xᵀy, yᵀy and q = [x_q; 0]."""
  b = tasks.sample(jax.random.key(2), tasks.TaskConfig(d=3, n_context=6, noise_std=0.5), 4, dtype=jnp.float64)
  C, q = fast.gram_tasks(b.X, b.y, b.x_q)
  C_ref, q_ref = fast.gram(tasks.batch_tokens(b))
  assert rel_err(C, C_ref) <= 1e-14
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_allclose(C[:, :3, 3], np.einsum("bnd,bn->bd", b.X, b.y), rtol=1e-13)


def test_readout_is_the_last_layer_applied_to_the_query():
  """readout = −(q after one more `layer`)[-1]: the last layer needs only the last row of M."""
  cfg = ModelConfig(d=3, n_layers=1, n_heads=2, use_W_O=True)
  params, Z, _ = draw_problem(jax.random.key(3), cfg, 5, 4, 0.5)
  p = {k: v[0] for k, v in params.items()}
  C, q = fast.gram(Z)
  _, q_next = fast.layer(p, C, q, 4)
  assert rel_err(fast.readout(p, C, q, 4), -q_next[:, -1]) <= 1e-13
  assert rel_err(q_next, q) > 1e-3  # the layer moves the query


@pytest.mark.parametrize("cfg", [ModelConfig(d=2, attention="softmax"), ModelConfig(d=2, mlp="relu"),
                                 ModelConfig(d=2, mlp="linear")], ids=["softmax", "relu", "linear-mlp"])
def test_only_linear_attention_without_mlp(cfg):
  assert not cfg.is_linear
  params = model.init_params(jax.random.key(0), cfg)
  with pytest.raises(ValueError, match="attention"):
    fast.forward(params, jnp.zeros((1, 3, 3)), cfg)


def test_bad_tokens():
  cfg = ModelConfig(d=2)
  params = model.init_params(jax.random.key(0), cfg)
  with pytest.raises(ValueError, match="Z_BTD"):
    fast.forward(params, jnp.zeros((2, 4, 5)), cfg)
  with pytest.raises(ValueError, match="Z_BTD"):
    fast.forward(params, jnp.zeros((2, 1, 3)), cfg)
