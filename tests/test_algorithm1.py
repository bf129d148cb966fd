"""The paper's Algorithm 1 (docs/theory.md §8): layer choice, rate choice, vectorised evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.run import algorithm1 as alg
from lintheory.core import prune, tasks
from lintheory.core.model import ModelConfig, forward, init_params


def test_condition_layer_takes_the_deepest_of_the_top_k():
  kappa = [5.0, 100.0, 3.0, 50.0, 1.0]
  assert alg.condition_layer(kappa, 1) == 1
  assert alg.condition_layer(kappa, 2) == 3
  assert alg.condition_layer(kappa, 5) == 4
  assert alg.condition_layer([np.inf, 2.0, np.inf], 1) in (0, 2)
  assert alg.condition_layer([np.inf, 2.0, np.inf], 2) == 2


@pytest.mark.parametrize("kappa,k,name", [([1.0, 2.0], 0, "top_k"), ([1.0, 2.0], 3, "top_k"),
                                          ([1.0, 2.0], True, "top_k"), ([1.0, np.nan], 1, "kappa_L"),
                                          ([], 1, "kappa_L")])
def test_condition_layer_invalid(kappa, k, name):
  with pytest.raises(ValueError, match=name):
    alg.condition_layer(kappa, k)


def test_select_ties_go_to_the_smaller_rate_and_nan_never_wins():
  assert alg.select([0.3, 0.1, 0.1], [0.0, 0.9, 0.5]) == 2
  assert alg.select([0.2, 0.2], [0.5, 0.0]) == 1
  assert alg.select([np.nan, 0.4], [0.0, 0.5]) == 1
  with pytest.raises(ValueError, match="val_err"):
    alg.select([0.1, 0.2], [0.0])
  with pytest.raises(ValueError, match="xi"):
    alg.select([0.1], [np.nan])


def test_rates_and_ranks():
  k = 11
  assert alg.paper_ranks(k) == tuple(sorted({prune.rank_for_rate(k, k, xi) for xi in prune.PAPER_RATES},
                                            reverse=True))
  for r in range(1, k + 1):  # rank r is kept for ξ ∈ (1 − (r+1)/k, 1 − r/k]
    xi = alg.xi_for_rank(r, k)
    assert prune.rank_for_rate(k, k, xi) == r
    assert prune.rank_for_rate(k, k, xi + 1e-6) == r - 1
  assert alg.xi_for_rank(0, k) == 1.0  # an ordering key only: rank 0 is kept by every ξ > 1 − 1/k
  with pytest.raises(ValueError, match="rank"):
    alg.xi_for_rank(12, 11)


def _model(L=2, d=2, seeds=2):
  cfg = ModelConfig(d=d, n_layers=L, init_scale=0.4)
  ps = [init_params(jax.random.key(s), cfg, jnp.float64) for s in range(seeds)]
  return cfg, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ps)


def test_config_errors_match_prune_then_forward():
  cfg, params_S = _model()
  p0 = jax.tree_util.tree_map(lambda a: a[0], params_S)
  modules = ("attn", "v")
  configs = alg.all_configs(p0, modules)
  D = cfg.D
  assert len(configs.layer) == 1 + cfg.n_layers * len(modules) * D and configs.layer[0] == -1
  task = tasks.TaskConfig(d=cfg.d, n_context=5)
  batch_S = alg.stacked_batches(task, (0, 1), 7, 123, dtype=jnp.float64)
  err = alg.config_errors(params_S, cfg, configs, batch_S, block_size=4)
  assert err.shape == (2, len(configs.layer), 7)
  for s in range(2):
    p = jax.tree_util.tree_map(lambda a: a[s], params_S)
    b = jax.tree_util.tree_map(lambda a: a[s], batch_S)
    for i in (0, 1, 5, len(configs.layer) - 1):
      q = p if configs.layer[i] < 0 else prune.prune(p, int(configs.layer[i]), configs.module[i],
                                                      rank=int(configs.rank[i]))
      y_hat, _ = forward(q, tasks.batch_tokens(b), cfg)
      np.testing.assert_allclose(err[s, i], (y_hat - b.y_q) ** 2 / cfg.d, rtol=1e-12, atol=1e-15)


def test_choose_respects_the_mask_and_module_kappa():
  cfg, params_S = _model()
  p0 = jax.tree_util.tree_map(lambda a: a[0], params_S)
  configs = alg.all_configs(p0, ("v",))
  val = np.arange(len(configs.layer), dtype=float)[::-1]  # the last configuration is best
  mask = np.zeros(len(configs.layer), bool)
  mask[[0, 2]] = True
  ch = alg.choose(configs, val, val + 1, mask)
  assert ch.index == 2 and ch.test == ch.val + 1
  assert alg.choose(configs, val, val, np.ones_like(mask)).index == len(configs.layer) - 1
  with pytest.raises(ValueError, match="mask"):
    alg.choose(configs, val, val, np.zeros_like(mask))
  kq = prune.condition_numbers(p0)
  np.testing.assert_allclose(alg.module_kappa(p0, "attn"), np.max([kq["W_Q"], kq["W_K"], kq["W_V"]], 0))
  np.testing.assert_allclose(alg.module_kappa(p0, "v"), kq["W_V"])
