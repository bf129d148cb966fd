"""The vectorised pruning sweep: equal to the loop, bit-exact where nothing is pruned, resumable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.run import sweep
from lintheory.core import tasks
from lintheory.core.model import ModelConfig, init_params

MODEL = ModelConfig(d=3, n_layers=3, init_scale=0.4)
TASK = tasks.TaskConfig(d=3, n_context=6)
SEEDS = (0, 5)
CFG = sweep.SweepConfig(modules=("attn", "v"), rates=(0.0, 0.5, 0.9), ranks=(0, 2), n_eval=64,
                        n_analysis=8, block=4, bounds=False)


@pytest.fixture(scope="module")
def params_S():
  keys = jnp.stack([jax.random.key(s) for s in SEEDS])
  return jax.vmap(lambda k: init_params(k, MODEL, jnp.float64))(keys)


@pytest.fixture(scope="module")
def full(params_S, tmp_path_factory):
  out = tmp_path_factory.mktemp("full")
  return sweep.run(params_S, SEEDS, MODEL, TASK, CFG, out=out, progress=False), out


def test_vectorised_sweep_equals_the_loop(params_S, full):
  res, _ = full
  loop = sweep.run_loop(params_S, SEEDS, MODEL, TASK, CFG)
  assert len(res.rows) == len(loop.rows) == 3 * 2 * 5 * len(SEEDS)
  for a, b in zip(res.rows, loop.rows):
    assert sweep.row_key(a) == sweep.row_key(b) and a["rank"] == b["rank"]
    for k, v in a.items():
      if isinstance(v, float) and not k.startswith("w_hat_maxabs"):
        np.testing.assert_allclose(v, b[k], rtol=1e-9, atol=1e-12, err_msg=k)
  # distinct kept-rank patterns are evaluated once: ξ = 0.9 and rank 0 coincide on 4×4 matrices
  assert res.evaluated < len(res.rows) // len(SEEDS)


def test_unpruned_rows_are_bit_exact_and_earlier_layers_do_not_move(full):
  res, _ = full
  base = [r for r in res.rows if r["mode"] == "rate" and r["xi"] == 0.0]
  assert len(base) == 3 * 2 * len(SEEDS)
  for r in base:
    assert all(r[f"w_hat_maxabs_{t}"] == 0.0 for t in range(3))
    assert r["icl_error"] == next(b for b in base if b["seed"] == r["seed"])["icl_error"]
  for r in res.rows:
    assert all(r[f"w_hat_maxabs_{t}"] == 0.0 for t in range(r["layer"]))  # exactly, t < k
    if r["mode"] == "rank" and r["rank"] == 0:
      assert r[f"G_norm_{r['layer']}"] == 0.0 and r[f"w_hat_maxabs_{r['layer']}"] > 0


def test_interrupted_sweep_resumes_to_the_same_csv(params_S, full, tmp_path):
  res, out_full = full

  def stop(done, total):
    if done == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    sweep.run(params_S, SEEDS, MODEL, TASK, CFG, out=tmp_path, on_block=stop, progress=False)
  partial = sweep.read_csv(tmp_path / "sweep.csv")
  meta = sweep.io.read_json(tmp_path / "sweep.json")
  assert 0 < len(partial) < len(res.rows) and meta["complete"] is False
  again = sweep.run(params_S, SEEDS, MODEL, TASK, CFG, out=tmp_path, progress=False)
  assert 0 < again.evaluated < res.evaluated  # only what was missing
  assert (tmp_path / "sweep.csv").read_bytes() == (out_full / "sweep.csv").read_bytes()
  keys = [sweep.row_key(r) for r in sweep.read_csv(tmp_path / "sweep.csv")]
  assert len(keys) == len(set(keys)) == len(res.rows)
  assert sweep.run(params_S, SEEDS, MODEL, TASK, CFG, out=tmp_path, progress=False).evaluated == 0
  # a different sweep into the same directory is refused rather than mixed in
  other = jax.tree_util.tree_map(lambda a: 2 * a, params_S)
  with pytest.raises(ValueError, match="different sweep"):
    sweep.run(other, SEEDS, MODEL, TASK, CFG, out=tmp_path, progress=False)


@pytest.mark.parametrize("kw,match", [
    ({"modules": ("x",)}, "module"), ({"modules": ()}, "modules"), ({"rates": (), "ranks": ()}, "at least one"),
    ({"rates": (1.0,)}, "xi"), ({"ranks": (-1,)}, "rank"), ({"block": 1}, "block"), ({"n_eval": 1}, "n_eval")])
def test_bad_sweep_configs_raise(kw, match):
  with pytest.raises(ValueError, match=match):
    sweep.SweepConfig(**kw)


def test_sweep_rejects_what_the_model_lacks(params_S):
  for kw, match in [({"modules": ("o",)}, "absent"), ({"modules": ("mlp",)}, "absent"),
                    ({"layers": (3,)}, "layer"), ({"ranks": (5,), "rates": ()}, "rank")]:
    with pytest.raises(ValueError, match=match):
      sweep.run(params_S, SEEDS, MODEL, TASK, sweep.SweepConfig(**{**dict(modules=("v",)), **kw}), progress=False)
  with pytest.raises(ValueError, match="seeds"):
    sweep.run(params_S, (0,), MODEL, TASK, CFG, progress=False)
