"""Training: convergence to the one-step-GD optimum, divergence, resuming, seeds, config errors."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.core import learners, model, precision, tasks
from lintheory.run import profiles, train
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run.train import TrainConfig
from conftest import batch64


def test_one_layer_training_reaches_the_closed_form_optimum():
  """Mahankali et al. / Ahn et al. prove that the global minimiser of the population loss is one GD step
  at η*; whether training reaches it is empirical, and this checks that it does here (docs/theory.md §9)."""
  d, N = 3, 10
  task, cfg = TaskConfig(d=d, n_context=N), ModelConfig(d=d)
  res = train.fit(task, cfg, TrainConfig(steps=300, batch_size=512, lr=1e-2, warmup=30, chunk=300), seeds=(0,))
  assert res.diverged is None and res.losses.shape == (1, 300)
  params = profiles.seed_params(res.params, 0)
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
  rest = train.fit(SMALL["task"], SMALL["model"], tc, seeds=(0, 1),
                   state=train.resumed(fresh, params, opt_state, 20))
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
    (dict(huber_delta=-1.0), "huber_delta"), (dict(forward="fast"), "forward"),
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
  with pytest.raises(ValueError, match="fast"):
    train.make_chunk(SMALL["task"], ModelConfig(d=2, mlp="relu"), tc, 1, forward_kind="fast")


def test_float64_training_needs_no_global_64_bit_mode():
  """fit scopes its precision itself (core.precision.for_dtype)."""
  tc = TrainConfig(steps=2, batch_size=4, chunk=2, dtype="float64")
  with precision.x64(False):
    res = train.fit(SMALL["task"], SMALL["model"], tc)
  assert all(v.dtype == np.float64 for v in res.params.values())


def test_init_state_is_the_pure_init_of_every_seed():
  """One NNX model per seed with the weights model.init_params draws from fold_in(key(seed), 0)."""
  cfg = ModelConfig(d=2, n_layers=2, n_heads=2)
  tc = TrainConfig(max_skipped=3)  # apply_if_finite: optax's state fields are not in name order
  st = train.init_state(cfg, tc, (3, 5))
  assert st.step == 0
  for i, s in enumerate((3, 5)):
    expected = model.init_params(jax.random.fold_in(jax.random.key(s), 0), cfg)
    for k, v in profiles.seed_params(st.params, i).items():
      np.testing.assert_array_equal(v, expected[k])
  # a checkpoint stores the optimiser's leaves in the order of optax's own state for the parameter
  # dict (run directories written before the NNX optimiser stay resumable)
  params0 = profiles.seed_params(st.params, 0)
  expected = jax.tree_util.tree_leaves(train.optimizer(train.resolve(tc, cfg)).init(params0))
  got = jax.tree_util.tree_leaves(profiles.seed_params(st.opt_state, 0))
  assert [(np.shape(a), np.asarray(a).dtype) for a in got] == [(np.shape(a), np.asarray(a).dtype) for a in expected]
  assert [np.shape(a) for a in got].count(params0["W_Q"].shape) == 3 * 2  # W_Q, W_K, W_V in mu and nu


def test_the_model_of_a_training_state_is_a_module_with_a_seed_axis():
  """state.model is the NNX model itself: seed i of it, called on tokens, is model.forward of seed i's weights."""
  tc = TrainConfig(steps=3, batch_size=8, chunk=3, dtype="float64")
  res = train.fit(SMALL["task"], SMALL["model"], tc, seeds=(0, 1))
  assert res.state.optimizer.step[...].tolist() == [3, 3]
  Z = tasks.batch_tokens(batch64(2, 4))
  one = profiles.seed_params(res.state.model, 1)
  assert isinstance(one, model.LinearTransformer)
  np.testing.assert_array_equal(one(Z), model.forward(profiles.seed_params(res.params, 1), Z, SMALL["model"])[0])


def test_training_through_the_gram_forward_is_training_through_the_reference():
  """In float64 the fast, the query-only and the full reference forward train the same weights."""
  task, cfg = TaskConfig(d=3, n_context=5), ModelConfig(d=3, n_layers=3, n_heads=2, use_W_O=True)
  tc = TrainConfig(steps=10, batch_size=8, lr=1e-2, warmup=2, chunk=10, dtype="float64")
  st = train.init_state(cfg, tc, (0,))
  args = (st, train.seed_keys((0,), 1), train.seed_keys((0,), 2))
  fast, l_fast = train.make_chunk(task, cfg, tc, 10)(*args)
  for kind in ("query", "full"):
    ref, l_ref = train.make_chunk(task, cfg, tc, 10, forward_kind=kind)(*args)
    np.testing.assert_allclose(l_fast, l_ref, rtol=1e-11)
    for k, v in ref.params.items():
      np.testing.assert_allclose(fast.params[k], v, rtol=1e-11, atol=1e-14)
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
    params0 = profiles.seed_params(train.init_state(SMALL["model"], tc, (4,)).params, 0)
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


def test_huber_loss_is_the_squared_error_below_delta_and_linear_above():
  r = jnp.array([-0.5, 0.3, 2.0, -4.0])
  want = np.mean([0.25, 0.09, 2 * 2.0 - 1, 2 * 4.0 - 1])
  assert float(train.query_loss(1.0)(r)) == pytest.approx(want, rel=1e-12)
  assert float(train.query_loss()(r)) == pytest.approx(np.mean(np.asarray(r) ** 2), rel=1e-12)


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
