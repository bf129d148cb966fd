"""The linear self-attention transformer (docs/theory.md §2) against a literal column-form reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lintheory.core import model
from lintheory.core.model import LinearTransformer, ModelConfig

forward = jax.jit(model.forward, static_argnums=2)  # one compilation per config, not per primitive


def reference_forward(params, Z_BTD, cfg):
  """§2 written literally with column tokens H [D, T], one task at a time, in numpy."""
  Z = np.asarray(Z_BTD, np.float64)
  B, T, D = Z.shape
  N = T - 1
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  out = np.empty(B)
  for b in range(B):
    H = Z[b].T.copy()
    for l in range(cfg.n_layers):
      Hs = H[:, :N]  # the query is never a key or value
      W_Q, W_K, W_V = (p[k][l] if p[k][l].ndim == 3 else p[k][l][None] for k in ("W_Q", "W_K", "W_V"))
      attn = np.zeros_like(H)
      for h in range(W_Q.shape[0]):
        if cfg.attention == "linear":
          attn += W_V[h] @ Hs @ (W_K[h] @ Hs).T @ W_Q[h] @ H / N
        else:
          S = (W_K[h] @ Hs).T @ (W_Q[h] @ H)  # [N, T] scores, softmax over keys
          A = np.exp(S - S.max(0))
          attn += W_V[h] @ Hs @ (A / A.sum(0))
      if "W_O" in p:
        attn = p["W_O"][l] @ attn
      H = H + attn
      if cfg.mlp is not None:
        hid = p["W_1"][l] @ H
        H = H + p["W_2"][l] @ (np.maximum(hid, 0) if cfg.mlp == "relu" else hid)
    out[b] = -H[-1, -1]
  return out


CONFIGS = [
    ModelConfig(d=3, n_layers=1),
    ModelConfig(d=3, n_layers=3),
    ModelConfig(d=2, n_layers=2, n_heads=3),
    ModelConfig(d=3, n_layers=2, use_W_O=True),
    ModelConfig(d=3, n_layers=2, mlp="relu", mlp_hidden=5),
    ModelConfig(d=3, n_layers=2, mlp="linear"),
    ModelConfig(d=3, n_layers=2, attention="softmax", n_heads=2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"L{c.n_layers}H{c.n_heads}O{int(c.use_W_O)}"
                         f"{c.mlp}{c.attention}")
def test_forward_matches_column_form(cfg):
  key_p, key_z = jax.random.split(jax.random.key(0))
  params = {k: v * 15 for k, v in model.init_params(key_p, cfg, jnp.float64).items()}  # O(0.3) weights
  Z = jax.random.normal(key_z, (4, 6, cfg.D), jnp.float64).at[:, -1, -1].set(0.0)
  y_hat, states = forward(params, Z, cfg)
  assert y_hat.shape == (4,) and states.shape == (cfg.n_layers + 1, 4, 6, cfg.D)
  np.testing.assert_array_equal(states[0], Z)
  np.testing.assert_allclose(y_hat, reference_forward(params, Z, cfg), rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(model.layer_predictions(states)[-1], y_hat)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"L{c.n_layers}H{c.n_heads}O{int(c.use_W_O)}"
                         f"{c.mlp}{c.attention}")
def test_forward_query_is_the_literal_forward_with_a_query_only_last_layer(cfg):
  """Training's forward (the last layer for the query token only) against the column form, float64."""
  key_p, key_z = jax.random.split(jax.random.key(1))
  params = {k: v * 15 for k, v in model.init_params(key_p, cfg, jnp.float64).items()}
  Z = jax.random.normal(key_z, (5, 7, cfg.D), jnp.float64).at[:, -1, -1].set(0.0)
  y_hat = jax.jit(model.forward_query, static_argnums=2)(params, Z, cfg)
  np.testing.assert_allclose(y_hat, reference_forward(params, Z, cfg), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cfg", [ModelConfig(d=2, n_layers=3, n_heads=2, use_W_O=True),
                                 ModelConfig(d=2, n_layers=3, attention="softmax", mlp="relu", mlp_hidden=3)],
                         ids=["linear", "softmax+mlp"])
def test_forward_from_layer_k_with_Q_queries_is_forward_on_each_prompt_with_that_query(cfg):
  """Q queries per prompt, continued from the tokens entering layer k, are each `forward` of the prompt
  followed by that one query (queries are never keys or values), float64."""
  params = {k: v * 4 for k, v in model.init_params(jax.random.key(1), cfg, jnp.float64).items()}
  Zs = jax.random.normal(jax.random.key(2), (3, 5, cfg.D), jnp.float64)
  Zq = jax.random.normal(jax.random.key(3), (3, 4, cfg.D), jnp.float64).at[..., -1].set(0.0)
  one = lambda q: forward(params, jnp.concatenate([Zs, Zq[:, q:q + 1]], axis=1), cfg)
  want = jnp.stack([one(q)[0] for q in range(4)], axis=1)
  close = lambda got: np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want))))
  close(model.forward_from(params, Zs, Zq, cfg))
  for k in (1, 2):
    states = jnp.stack([one(q)[1][k] for q in range(4)], axis=1)  # [B, Q, T, D] entering layer k
    close(model.forward_from({n: v[k:] for n, v in params.items()}, states[:, 0, :5], states[:, :, 5], cfg))


def test_query_is_not_a_key_or_value():
  cfg = ModelConfig(d=3, n_layers=3)
  params = {k: v * 20 for k, v in model.init_params(jax.random.key(1), cfg, jnp.float64).items()}
  Z = jax.random.normal(jax.random.key(2), (2, 5, 4), jnp.float64)
  _, s1 = forward(params, Z, cfg)
  _, s2 = forward(params, Z.at[:, -1, :3].add(1.0), cfg)
  np.testing.assert_array_equal(s1[:, :, :-1], s2[:, :, :-1])  # demonstrations never see the query
  assert not np.allclose(s1[-1, :, -1], s2[-1, :, -1])


@pytest.mark.parametrize("cfg", CONFIGS[1:5], ids=lambda c: f"H{c.n_heads}O{int(c.use_W_O)}{c.mlp}")
def test_param_shapes(cfg):
  params = model.init_params(jax.random.key(0), cfg)
  L, D, H, F = cfg.n_layers, cfg.D, cfg.n_heads, cfg.F
  attn = (L, D, D) if H == 1 else (L, H, D, D)
  expected = {"W_Q": attn, "W_K": attn, "W_V": attn}
  if cfg.use_W_O:
    expected["W_O"] = (L, D, D)
  if cfg.mlp:
    expected |= {"W_1": (L, F, D), "W_2": (L, D, F)}
  assert {k: v.shape for k, v in params.items()} == expected
  assert all(v.dtype == jnp.float32 for v in params.values())
  if H > 1:  # a 4-D W_Q could be a seed axis: the head count must be given
    with pytest.raises(ValueError, match=f"ambiguous.*n_heads={H}"):
      ModelConfig.from_params(params)
  inferred = ModelConfig.from_params(params, attention=cfg.attention, mlp_act=cfg.mlp or "relu",
                                     n_heads=H if H > 1 else None)
  assert (inferred.d, inferred.n_layers, inferred.n_heads, inferred.use_W_O, inferred.mlp, inferred.F) == \
      (cfg.d, L, H, cfg.use_W_O, cfg.mlp, F)


def test_default_mlp_width_is_4D():
  assert ModelConfig(d=5, mlp="relu").F == 24


def test_nnx_module_matches_forward_and_round_trips():
  cfg = ModelConfig(d=2, n_layers=2, n_heads=2, use_W_O=True, mlp="relu", mlp_hidden=3)  # every option
  m = LinearTransformer(cfg, rngs=nnx.Rngs(3), dtype=jnp.float64)
  params = model.params_of(m)
  assert set(params) == set(model.param_shapes(cfg))
  Z = jax.random.normal(jax.random.key(4), (3, 5, cfg.D), jnp.float64)
  y_hat, states = m(Z, return_states=True)
  y_ref, states_ref = model.forward(params, Z, cfg)  # the module runs forward op by op too
  np.testing.assert_array_equal(y_hat, y_ref)
  np.testing.assert_array_equal(states, states_ref)
  m2 = LinearTransformer.from_params(cfg, params)
  for k, v in model.params_of(m2).items():
    np.testing.assert_array_equal(v, params[k])
  np.testing.assert_array_equal(m2(Z), y_hat)
  # nnx state holds exactly the parameter dict
  assert len(jax.tree_util.tree_leaves(nnx.state(m, nnx.Param))) == len(params)
  assert all(isinstance(getattr(m, k), nnx.Param) for k in params)


def test_module_init_is_init_params_of_the_rngs_params_stream():
  """Rngs(params=k) draws fold_in(k, 0): the module and the pure init give the same weights."""
  cfg = ModelConfig(d=3, n_layers=2)
  m = LinearTransformer(cfg, rngs=nnx.Rngs(params=jax.random.key(7)))
  expected = model.init_params(jax.random.fold_in(jax.random.key(7), 0), cfg)
  for k, v in model.params_of(m).items():
    np.testing.assert_array_equal(v, expected[k])


def test_from_params_rejects_params_of_another_config():
  params = model.init_params(jax.random.key(0), ModelConfig(d=2, n_layers=2))
  with pytest.raises(ValueError, match="params"):
    LinearTransformer.from_params(ModelConfig(d=3, n_layers=2), params)
  with pytest.raises(ValueError, match="params"):
    LinearTransformer.from_params(ModelConfig(d=2, n_layers=2, use_W_O=True), params)


def test_forward_infers_config_from_params():
  cfg = ModelConfig(d=2, n_layers=2)
  params = model.init_params(jax.random.key(0), cfg, jnp.float64)
  Z = jax.random.normal(jax.random.key(1), (2, 4, 3), jnp.float64)
  np.testing.assert_array_equal(model.forward(params, Z)[0], model.forward(params, Z, cfg)[0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(d=0), "d"), (dict(n_layers=0), "n_layers"), (dict(n_layers=1.0), "n_layers"),
    (dict(n_heads=0), "n_heads"), (dict(mlp_hidden=-1), "mlp_hidden"),
    (dict(attention="cosine"), "attention"), (dict(mlp="gelu"), "mlp"),
    (dict(init_scale=0.0), "init_scale"), (dict(init_scale=-1.0), "init_scale"),
])
def test_invalid_model_config(kwargs, name):
  with pytest.raises(ValueError, match=name):
    ModelConfig(**kwargs)


def test_invalid_params_and_tokens():
  params = model.init_params(jax.random.key(0), ModelConfig(d=2, n_layers=1))
  with pytest.raises(ValueError, match="W_K"):
    ModelConfig.from_params({**params, "W_K": params["W_K"][:, :2, :2]})
  with pytest.raises(ValueError, match="W_Q"):
    ModelConfig.from_params({**params, "W_Q": params["W_Q"][0]})
  with pytest.raises(ValueError, match="Z_BTD"):
    model.forward(params, jnp.zeros((2, 4, 5)))  # wrong D
  with pytest.raises(ValueError, match="Z_BTD"):
    model.forward(params, jnp.zeros((2, 1, 3)))  # no demonstration
