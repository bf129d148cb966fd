"""Training: convergence to the one-step-GD optimum, divergence, resuming, seeds, config errors."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lintheory.core import learners, model, precision
from lintheory.run import train
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run.train import TrainConfig


def test_one_layer_training_reaches_the_closed_form_optimum():
  """Mahankali et al. / Ahn et al. prove that the global minimiser of the population loss is one GD step
  at η*; whether training reaches it is empirical, and this checks that it does here (docs/theory.md §9)."""
  d, N = 3, 10
  task, cfg = TaskConfig(d=d, n_context=N), ModelConfig(d=d)
  res = train.fit(task, cfg, TrainConfig(steps=300, batch_size=512, lr=1e-2, warmup=30, chunk=300), seeds=(0,))
  assert res.diverged is None and res.losses.shape == (1, 300)
  params = train.seed_params(res.params, 0)
  closed = learners.gd1_loss_star(d, N)
  G = np.asarray(learners.effective_preconditioner(params), np.float64)
  eta = learners.eta_star(d, N)
  assert np.linalg.norm(G - eta * np.eye(d)) / np.linalg.norm(eta * np.eye(d)) < 0.10
  assert learners.one_layer_loss(G, N) < 1.03 * closed  # the exact loss of the learned preconditioner
  ev = train.evaluate(params, task, cfg, jax.random.key(123), n_tasks=20_000)
  assert abs(ev["loss"] - ev["gd1_loss"]) < 0.03 * closed  # same held-out tasks
  assert abs(ev["gd1_loss"] - closed) < 4 * ev["gd1_loss_se"]
  assert ev["ridge_loss"] < 1e-6  # noiseless with N > d: the floor is 0
  assert res.losses[0, -50:].mean() < 0.5 * res.losses[0, :10].mean()  # from ≈ d to ≈ 0.29 d


def test_divergence_stops_and_keeps_finite_parameters():
  task, cfg = TaskConfig(d=2, n_context=3), ModelConfig(d=2, n_layers=2)
  res = train.fit(task, cfg, TrainConfig(steps=60, batch_size=32, lr=1e3, warmup=0, chunk=5), seeds=(0,))
  assert res.diverged is not None and "non-finite" in res.diverged
  assert res.state.step < 60
  assert all(np.all(np.isfinite(np.asarray(v))) for v in res.params.values())
  assert np.all(np.isfinite(res.losses))


SMALL = dict(task=TaskConfig(d=2, n_context=4), model=ModelConfig(d=2, n_layers=1))


def test_resume_continues_exactly_and_seeds_are_independent():
  """Resuming from the state of step 20, its optimiser state rebuilt from its leaves as a checkpoint
  does, gives bit for bit the steps 21..40 of the uninterrupted run."""
  tc = TrainConfig(steps=40, batch_size=16, lr=1e-2, warmup=5, chunk=10, dtype="float64")
  saved = {}
  full = train.fit(SMALL["task"], SMALL["model"], tc, seeds=(0, 1),
                   on_chunk=lambda st, _: saved.setdefault(st.step, st))
  assert sorted(saved) == [10, 20, 30, 40]
  fresh = train.init_state(SMALL["model"], tc, (0, 1))
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(saved[20].opt_state)]
  opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh.opt_state), leaves)
  params = {k: np.asarray(v) for k, v in saved[20].params.items()}
  rest = train.fit(SMALL["task"], SMALL["model"], tc, seeds=(0, 1), state=train.TrainState(params, opt_state, 20))
  assert rest.state.step == 40 and rest.losses.shape == (2, 20)
  np.testing.assert_array_equal(rest.losses, full.losses[:, 20:])
  for k in full.params:
    np.testing.assert_array_equal(rest.params[k], full.params[k])
  # one model per seed, vmapped: different seeds, different models
  assert full.params["W_Q"].shape == (2, 1, 3, 3) and full.losses.shape == (2, 40)
  assert not np.allclose(full.params["W_Q"][0], full.params["W_Q"][1])


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(steps=1.5), "steps"), (dict(batch_size=0), "batch_size"),
    (dict(warmup=-1), "warmup"), (dict(chunk=0), "chunk"), (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(lr=-1e-3), "lr"), (dict(schedule="linear"), "schedule"),
    (dict(optimizer="sgd"), "optimizer"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(clip_norm=-1.0), "clip_norm"), (dict(dtype="bfloat16"), "dtype"),
    (dict(pool_size=-1), "pool_size"), (dict(pool_size=2.0), "pool_size"),
])
def test_invalid_train_config(kwargs, name):
  with pytest.raises(ValueError, match=name):
    TrainConfig(**kwargs)


def test_invalid_fit_arguments():
  tc = TrainConfig(steps=1, batch_size=4)
  with pytest.raises(ValueError, match="d="):
    train.fit(TaskConfig(d=3), ModelConfig(d=2), tc)
  with pytest.raises(ValueError, match="seeds"):
    train.fit(SMALL["task"], SMALL["model"], tc, seeds=())
  with pytest.raises(ValueError, match="use_fast"):
    train.make_chunk(SMALL["task"], ModelConfig(d=2, mlp="relu"), tc, 1, use_fast=True)


def test_float64_training_needs_no_global_64_bit_mode():
  """fit scopes its precision itself (core.precision.for_dtype)."""
  tc = TrainConfig(steps=2, batch_size=4, chunk=2, dtype="float64")
  with precision.x64(False):
    res = train.fit(SMALL["task"], SMALL["model"], tc)
  assert all(v.dtype == np.float64 for v in res.params.values())


def test_init_state_is_the_pure_init_of_every_seed():
  """One NNX model per seed with the weights model.init_params draws from fold_in(key(seed), 0)."""
  cfg = ModelConfig(d=2, n_layers=2, n_heads=2)
  st = train.init_state(cfg, TrainConfig(), (3, 5))
  assert st.step == 0
  for i, s in enumerate((3, 5)):
    expected = model.init_params(jax.random.fold_in(jax.random.key(s), 0), cfg)
    for k, v in train.seed_params(st.params, i).items():
      np.testing.assert_array_equal(v, expected[k])
  # optax's own state for the parameter dict: what a checkpoint stores and restores
  expected = train.optimizer(train.resolve(TrainConfig(), cfg)).init(train.seed_params(st.params, 0))
  assert jax.tree_util.tree_structure(jax.tree.map(lambda x: x[0], st.opt_state)) == \
      jax.tree_util.tree_structure(expected)


def test_training_through_the_gram_forward_is_training_through_the_reference():
  """In float64 the fast and the reference training loops give the same losses and weights."""
  task, cfg = TaskConfig(d=3, n_context=5), ModelConfig(d=3, n_layers=3, n_heads=2, use_W_O=True)
  tc = TrainConfig(steps=10, batch_size=8, lr=1e-2, warmup=2, chunk=10, dtype="float64")
  st = train.init_state(cfg, tc, (0,))
  args = (st.params, st.opt_state, train.seed_keys((0,), 1), train.seed_keys((0,), 2), 0)
  p_fast, _, l_fast = train.make_chunk(task, cfg, tc, 10)(*args)
  p_ref, _, l_ref = train.make_chunk(task, cfg, tc, 10, use_fast=False)(*args)
  np.testing.assert_allclose(l_fast, l_ref, rtol=1e-11)
  for k in p_ref:
    np.testing.assert_allclose(p_fast[k], p_ref[k], rtol=1e-11, atol=1e-14)
  assert train.fit(task, cfg, tc).losses.tolist() == np.asarray(l_fast).tolist()  # fit takes the fast path


def test_a_fixed_pool_trainer_samples_only_its_pool():
  """Every batch is rows of the seed's pool, and the trainer's step-0 loss is that batch's loss."""
  task = TaskConfig(d=2, n_context=4)
  tc = TrainConfig(steps=5, batch_size=16, chunk=5, pool_size=6, dtype="float64")
  with precision.x64():
    pool = train.task_pool(train.seed_keys((4,), 2)[0], task, tc)
    for step in range(5):
      batch = train.draw(jax.random.fold_in(train.seed_keys((4,), 1)[0], step), task, tc, pool)
      hits = np.all(np.asarray(batch.w)[:, None, :] == np.asarray(pool.w)[None], axis=-1)  # [B, P]
      assert np.all(hits.sum(axis=1) >= 1)
      for name in ("X", "y", "x_q", "y_q"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(pool, name)[hits.argmax(axis=1)])
    step0 = train.draw(jax.random.fold_in(train.seed_keys((4,), 1)[0], 0), task, tc, pool)
    params0 = train.seed_params(train.init_state(SMALL["model"], tc, (4,)).params, 0)
    expected = float(train.mse(params0, step0, SMALL["model"]))
  res = train.fit(task, SMALL["model"], tc, seeds=(4,))
  assert res.losses[0, 0] == pytest.approx(expected, rel=1e-12)
  # the pool is not the fresh-task stream
  fresh = train.fit(task, SMALL["model"], dataclasses.replace(tc, pool_size=0), seeds=(4,))
  assert fresh.losses[0, 0] != res.losses[0, 0]


def test_float32_training_does_not_depend_on_the_callers_64_bit_mode(tmp_path):
  """Studies that measure in float64 share cached models with studies that do not."""
  cfg = TrainConfig(steps=20, batch_size=16, lr=5e-3, warmup=2, chunk=10)
  args = (TaskConfig(d=3, n_context=6), ModelConfig(d=3, n_layers=2), cfg, (0, 1))
  assert jax.config.jax_enable_x64  # conftest
  here = train.fit(*args)
  script = ("import sys, numpy as np\nfrom lintheory.run import train\nfrom lintheory.core.model import ModelConfig\n"
            "from lintheory.core.tasks import TaskConfig\nfrom lintheory.run.train import TrainConfig\n"
            f"r = train.fit(TaskConfig(d=3, n_context=6), ModelConfig(d=3, n_layers=2), {cfg!r}, (0, 1))\n"
            "np.savez(sys.argv[1], losses=r.losses, **{k: np.asarray(v) for k, v in r.params.items()})\n")
  subprocess.run([sys.executable, "-c", script, str(tmp_path / "r.npz")], check=True,
                 env={**os.environ, "JAX_ENABLE_X64": "0"})
  with np.load(tmp_path / "r.npz") as there:
    np.testing.assert_array_equal(here.losses, there["losses"])
    for k, v in here.params.items():
      np.testing.assert_array_equal(np.asarray(v), there[k])


def test_defaults_are_the_studies_recipe_for_the_depth_and_flags_override():
  from lintheory.run import profiles, recipes
  for L in (1, 2, 3, 5):
    r = recipes.recipe(L)
    tc = train.resolve(TrainConfig(steps=1500), ModelConfig(n_layers=L))
    assert {k: getattr(tc, k) for k in recipes.FIELDS} == r.train_fields(1500)
  assert train.resolve(TrainConfig(), ModelConfig(n_layers=3)).dtype == "float64"
  assert train.resolve(TrainConfig(), ModelConfig(n_layers=2)).dtype == "float32"
  given = train.resolve(TrainConfig(lr=1e-3, dtype="float32", tail_frac=0.0), ModelConfig(n_layers=4))
  assert (given.lr, given.dtype, given.tail_frac, given.clip_norm) == (1e-3, "float32", 0.0, 0.1)
  assert ModelConfig().init_scale == profiles.Profile(steps=1, batch_size=1, seeds=(0,), eval_tasks=1).init_scale
  with pytest.raises(ValueError, match="resolve"):
    train.optimizer(TrainConfig())


def test_outcome_flags_divergence_and_a_model_that_did_not_learn():
  base = {"loss": 0.2, "zero_loss": 5.0, "zero_loss_se": 0.1, "zero_gap": 4.8, "zero_gap_se": 0.1}
  assert train.outcome(base, None) | {"zero_loss_se": 0} == {
      "diverged": False, "divergence": None, "learned": True, "zero_loss": 5.0, "zero_loss_se": 0}
  flat = train.outcome({**base, "loss": 4.99, "zero_gap": 0.01, "zero_gap_se": 0.02}, None)
  assert not flat["diverged"] and not flat["learned"]
  for ev, msg in (({**base, "loss": 51.0, "zero_gap": -46.0}, "above 10x"), ({**base, "loss": float("nan")}, "finite"),
                  (base, "non-finite training loss")):
    out = train.outcome(ev, "non-finite training loss" if ev is base else None)
    assert out["diverged"] and not out["learned"] and msg in out["divergence"]
