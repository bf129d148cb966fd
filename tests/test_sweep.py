"""The vectorised pruning sweep: equal to the loop, bit-exact where nothing is pruned, resumable."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.run import sweep, sweep_eval, sweep_files
from lintheory.core import precision, tasks
from lintheory.core.model import ModelConfig, forward, init_params

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
    assert sweep_files.row_key(a) == sweep_files.row_key(b) and a["rank"] == b["rank"]
    for k, v in a.items():
      if isinstance(v, float) and not k.startswith("w_hat_maxabs"):
        np.testing.assert_allclose(v, b[k], rtol=1e-9, atol=1e-12, err_msg=k)
  # distinct kept-rank patterns are evaluated once: ξ = 0.9 and rank 0 coincide on 4×4 matrices
  assert res.evaluated < len(res.rows) // len(SEEDS)


def test_a_float64_sweep_called_in_32_bit_mode_runs_in_float64(params_S, full):
  """The sweep scopes the precision of its weights: the caller's x64 mode changes nothing."""
  res, _ = full
  with precision.x64(False):
    again = sweep.run(params_S, SEEDS, MODEL, TASK, CFG, progress=False)
  assert again.rows == res.rows


def test_unpruned_rows_are_bit_exact_and_earlier_layers_do_not_move(full):
  res, _ = full
  base = [r for r in res.rows if r["mode"] == "rate" and r["xi"] == 0.0]
  assert len(base) == 3 * 2 * len(SEEDS)
  for r in base:
    assert all(r[f"w_hat_maxabs_{t}"] == 0.0 for t in range(3))
    assert r["icl_error"] == next(b for b in base if b["seed"] == r["seed"])["icl_error"]
  for r in res.rows:
    assert all(r[f"w_hat_maxabs_{t}"] == 0.0 for t in range(r["layer"]))  # exactly, t < k
    assert all(r[f"w_hat_rel_{t}"] == 0.0 for t in range(r["layer"]))  # 0, not 0/0
    if r["mode"] == "rank" and r["rank"] == 0:
      assert r[f"G_norm_{r['layer']}"] == 0.0 and r[f"w_hat_maxabs_{r['layer']}"] > 0
      assert r[f"w_hat_rel_{r['layer']}"] > 0


def test_the_trajectory_change_is_the_median_over_tasks_of_each_task_relative_change():
  """A median, so one task whose ŵ blows up moves it by at most one rank."""
  rng = np.random.default_rng(0)
  w0 = rng.standard_normal((3, 7, 4))  # [L, B, d]
  w = w0 + 0.1 * rng.standard_normal((3, 7, 4))
  w[1, 2] *= 1e12  # one task blows up at layer 1
  w[0] = w0[0]  # layer 0 unchanged
  w[2, 4] = np.nan  # one task overflows at layer 2: an infinite change, not a NaN median
  m = sweep_eval.compare({"w_hat": w}, w0)
  per_task = np.linalg.norm(w - w0, axis=-1) / np.linalg.norm(w0, axis=-1)
  per_task[2, 4] = np.inf
  np.testing.assert_allclose(m["w_hat_rel"], np.median(per_task, axis=1), rtol=1e-12)
  assert m["w_hat_rel"][0] == 0.0 and m["w_hat_rel"][1] < 1 and np.isfinite(m["w_hat_rel"][2])
  assert m["w_hat_maxabs"][0] == 0.0 and m["w_hat_maxabs"][1] > 1e9


@pytest.mark.parametrize("n_nan", [2, 3])
def test_an_overflowed_task_error_is_infinite_and_the_median_is_infinite_only_past_half(n_nan):
  """NaN per-task errors (inf − inf in an overflowed forward pass) count as +inf: of 5 tasks, 2 leave the
  median at the third smallest finite error, 3 make it +inf; the mean is +inf either way."""
  err = np.array([0.3, 0.1, 0.2, 0.5, 0.4])
  err[:n_nan] = np.nan
  zeros = np.zeros((1, 5, 2, 2))
  out = sweep_eval.summary(None, jnp.asarray(err), (zeros, zeros, None), None, None, None, False)
  assert float(out["icl_error_median"]) == (0.5 if n_nan == 2 else np.inf)
  assert float(out["icl_error"]) == np.inf


def test_sweep_csv_reads_back_typed_and_writes_the_same_bytes(full, tmp_path):
  res, out = full
  rows = sweep_files.read_csv(out / "sweep.csv")
  # ints for seed/layer/rank, floats for measures, None for the empty xi of a rank row (written as "")
  assert rows == [{**r, "xi": None if r["xi"] == "" else r["xi"]} for r in res.rows]
  cols = sweep.io.read_json(out / "sweep.json")["columns"]
  sweep_files.write_csv(tmp_path / "again.csv", cols, rows)
  assert (tmp_path / "again.csv").read_bytes() == (out / "sweep.csv").read_bytes()


def test_interrupted_sweep_resumes_to_the_same_csv(params_S, full, tmp_path):
  res, out_full = full

  def stop(done, total):
    if done == 2:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    sweep.run(params_S, SEEDS, MODEL, TASK, CFG, out=tmp_path, on_block=stop, progress=False)
  partial = sweep_files.read_csv(tmp_path / "sweep.csv")
  meta = sweep.io.read_json(tmp_path / "sweep.json")
  assert 0 < len(partial) < len(res.rows) and meta["complete"] is False
  again = sweep.run(params_S, SEEDS, MODEL, TASK, CFG, out=tmp_path, progress=False)
  assert 0 < again.evaluated < res.evaluated  # only what was missing
  assert (tmp_path / "sweep.csv").read_bytes() == (out_full / "sweep.csv").read_bytes()
  keys = [sweep_files.row_key(r) for r in sweep_files.read_csv(tmp_path / "sweep.csv")]
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


def test_task_errors_lanes_and_blocks_agree_and_compile_once_per_layer(params_S):
  p0 = jax.tree_util.tree_map(lambda a: a[0], params_S)
  full = sweep_eval.full_ranks(p0)
  keeps = {n: np.full((7, MODEL.n_layers), k, np.int32) for n, k in full.items()}
  for c, (layer, r) in enumerate([(0, 0), (1, 2), (2, 1), (2, 3), (0, 3), (1, 0)], start=1):
    keeps["W_V"][c, layer] = r
  batch_S = sweep.sample_stacked(jnp.stack([jax.random.key(s) for s in SEEDS]), TASK, 5, dtype=jnp.float64)
  e1 = sweep_eval.task_errors(params_S, MODEL, keeps, batch_S, block_size=4, lanes=1)
  e4 = sweep_eval.task_errors(params_S, MODEL, keeps, batch_S, block_size=4, lanes=4)  # vmapped: mixed trip counts
  np.testing.assert_allclose(e4, e1, rtol=1e-12, atol=0)
  assert e1.shape == (len(SEEDS), 7, 5)
  sweep_eval._errors_fn.cache_clear()
  for _ in range(2):  # one program per first pruned layer (0, 1, 2: the unpruned model is k = L − 1)
    sweep_eval.task_errors(params_S, MODEL, keeps, batch_S, block_size=2, lanes=1)
  assert [sweep_eval._errors_fn(MODEL, 1, TASK.n_context, k)._cache_size() for k in range(3)] == [1, 1, 1]
  for s in range(len(SEEDS)):
    p = jax.tree_util.tree_map(lambda a: a[s], params_S)
    b = jax.tree_util.tree_map(lambda a: a[s], batch_S)
    y_hat, _ = forward(sweep.prune.prune(p, 1, "v", rank=2), tasks.batch_tokens(b), MODEL)
    np.testing.assert_allclose(e1[s, 2], (y_hat - b.y_q) ** 2 / MODEL.d, rtol=1e-11, atol=1e-14)


def test_jitted_sampler_draws_what_the_eager_sampler_draws():
  keys = jnp.stack([jax.random.key(s) for s in (7, 8)])
  got = sweep.sample_stacked(keys, TASK, 4, n_context=3, dtype=jnp.float64)
  for i in range(2):
    ref = tasks.sample(keys[i], TASK, 4, n_context=3, dtype=jnp.float64)
    for a, b in zip(got, ref):
      # jit may fuse the sampler's arithmetic differently from eager dispatch: equal to round-off
      np.testing.assert_allclose(a[i], b, rtol=1e-14, atol=1e-15)
  assert got.X.shape == (2, 4, 3, TASK.d)
