"""Models equal before layer k continue from the base model's state there: the same as prune-then-forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.core import from_layer, implicit, prune, tasks
from lintheory.core.model import ModelConfig, forward, init_params

VARIANTS = {"linear": ModelConfig(d=3, n_layers=3, init_scale=0.4),
            "heads+W_O": ModelConfig(d=3, n_layers=3, n_heads=2, use_W_O=True, init_scale=0.4),
            "softmax": ModelConfig(d=3, n_layers=3, attention="softmax", init_scale=0.4),
            "relu MLP": ModelConfig(d=3, n_layers=3, mlp="relu", mlp_hidden=5, init_scale=0.4)}


def _pruned(cfg, dtype, layer, module="attn", rank=1, B=9, N=6):
  p = init_params(jax.random.key(3), cfg, dtype)
  b = tasks.sample(jax.random.key(4), tasks.TaskConfig(d=cfg.d, n_context=N), B, dtype=dtype)
  return p, prune.prune(p, layer, module, rank=rank), tasks.batch_tokens(b)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_shared_state_evaluation_is_prune_then_forward_in_float64(name):
  cfg = VARIANTS[name]
  close = lambda got, ref: np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(ref))))
  p, _, Z = _pruned(cfg, jnp.float64, 0)
  N = Z.shape[1] - 1
  base = from_layer.base_of(p, Z, cfg, analysis=True)
  shared = jax.jit(lambda q, k: (from_layer.predict_from(q, base, k, cfg, N), from_layer.trajectory_from(q, base, k, cfg, N)),
                   static_argnums=1)
  plain = jax.jit(lambda q: (forward(q, Z, cfg)[0], implicit.trajectory(q, Z, cfg)))
  base_traj = plain(p)[1]
  for layer in range(cfg.n_layers):
    q = prune.prune(p, layer, "attn", rank=1)
    (y, (dW, G, w_hat)), (y_ref, traj) = shared(q, layer), plain(q)
    close(y, y_ref)
    for got, ref in ((dW, traj.delta_W), (G, traj.G), (w_hat, traj.w_hat)):
      close(got, ref)
    assert jnp.array_equal(w_hat[:layer], base_traj.w_hat[:layer])  # the base model's, bit for bit
  close(shared(p, cfg.n_layers - 1)[0], plain(p)[0])  # the unpruned model (k = L − 1), same path


@pytest.mark.parametrize("name", ["linear", "softmax"])
def test_shared_state_evaluation_in_float32_is_round_off(name):
  cfg = VARIANTS[name]
  p, q, Z = _pruned(cfg, jnp.float32, 0, module="v", rank=2)
  y = from_layer.predict_from(q, from_layer.base_of(p, Z, cfg), 0, cfg, Z.shape[1] - 1)
  y_ref, _ = forward(q, Z, cfg)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, y_ref, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(y_ref))))
