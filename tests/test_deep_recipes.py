"""The deep-recipes study: its tail-aware batches and loss, the attribution of the mean to tail
tasks, the decision rule, and the tiny profile end to end."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.core import evaluate, learners, tasks
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run import profiles, train
from lintheory.studies import deep_recipes as dr
from lintheory.studies import engine
from lintheory.studies.views import deep_recipes as dr_view


def test_tail_batch_rescales_demonstrations_consistently():
  """A tail-aware batch (TrainConfig.tail_frac, what the tail recipes train on) is still a noiseless
  linear task: y_i = x_iᵀw, its query untouched, the spectrum of X̂ᵀX̂/N scaled by s² ∈ [1, tail_scale²]."""
  task = TaskConfig(d=4, n_context=9)
  c = dataclasses.replace(dr.CANDIDATES["f64_tail"], tail_frac=0.5, tail_scale=1.4)
  cfg = dr.own_config(c, profiles.Profile(steps=9, batch_size=512, seeds=(0,), eval_tasks=1))
  key = jax.random.key(3)
  b = train.draw(key, task, cfg, None)
  plain = tasks.sample(jax.random.split(key, 3)[0], task, 512, dtype=jnp.float64, draw_dtype=train.DRAW_DTYPE)
  np.testing.assert_allclose(b.y, jnp.einsum("bnd,bd->bn", b.X, b.w), rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(b.x_q, plain.x_q)
  np.testing.assert_array_equal(b.y_q, plain.y_q)
  s = np.asarray(b.X[:, 0, 0] / plain.X[:, 0, 0])
  assert np.all(s >= 1 - 1e-12) and np.all(s <= 1.4 + 1e-12)
  assert 0.4 < np.mean(s > 1 + 1e-12) < 0.6
  off = dataclasses.replace(cfg, tail_frac=0.0)
  np.testing.assert_array_equal(train.draw(key, task, off, None).X,
                                tasks.sample(key, task, 512, dtype=jnp.float64, draw_dtype=train.DRAW_DTYPE).X)


def test_a_tail_recipe_trains_through_train_fit_with_its_loss_on_the_full_forward():
  """fit_own is train.fit with the candidate's batch, Huber loss and the full reference forward; in float64
  that trains, up to round-off, the weights of the fast forward (the forward changes no arithmetic identity)."""
  task, model = TaskConfig(d=2, n_context=4), ModelConfig(d=2, n_layers=2, init_scale=0.1)
  c = dataclasses.replace(dr.CANDIDATES["f64_huber"], warmup=3)
  prof = profiles.Profile(steps=9, batch_size=8, seeds=(0, 1), eval_tasks=1)
  cfg = dr.own_config(c, prof)
  assert (cfg.huber_delta, cfg.forward, cfg.warmup, cfg.chunk, cfg.dtype) == (c.huber, "full", 3, 9, "float64")
  params, losses = dr.fit_own(task, model, c, prof)
  ref = train.fit(task, model, dataclasses.replace(cfg, forward="auto"), seeds=(0, 1))
  np.testing.assert_allclose(losses, ref.losses, rtol=1e-10)
  for k in ref.params:
    np.testing.assert_allclose(params[k], ref.params[k], rtol=1e-10, atol=1e-14)


def test_task_features_are_those_of_the_tasks_evaluate_scores():
  """Chunk i of evaluate.errors is tasks.sample(fold_in(key, i)); the features follow the same tasks:
  the one-step-GD error recomputed on those tasks equals evaluate.errors' task by task."""
  task = TaskConfig(d=3, n_context=6)
  key, n, chunk = jax.random.key(7), 300, 128
  eta = learners.eta_star(3, 6)
  params = learners.construct(3, np.array([eta]), dtype=jnp.float64)
  err = evaluate.errors(params, ModelConfig(d=3), task, key, n, chunk=chunk, dtype="float64")
  feats = evaluate.task_features(task, key, n, chunk)
  X, y, w = [], [], []
  for i in range(-(-n // chunk)):
    b = tasks.sample(jax.random.fold_in(key, i), task, chunk, dtype=jnp.float64)
    X.append(b.X), y.append(b.y), w.append(b.w)
  X, y, w = (np.concatenate(a)[:n] for a in (X, y, w))
  w_hat = eta * np.einsum("bnd,bn->bd", X, y) / 6
  np.testing.assert_allclose(err, np.sum((w_hat - w) ** 2, -1) / 3, rtol=1e-10)
  lam = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X, X) / 6)[:, -1]
  np.testing.assert_allclose(feats["lam_max"], lam, rtol=1e-12)
  np.testing.assert_allclose(feats["w_norm"], np.linalg.norm(w, axis=-1), rtol=1e-12)


def test_attribution_finds_the_task_that_makes_the_mean():
  n = 20_000
  rng = np.random.default_rng(0)
  lam = rng.uniform(size=n)
  e = np.ones(n)
  e[np.argmax(lam)] = 1e9  # one blow-up, on the most extreme spectrum
  a = dr.attribution(e, {"lam_max": lam, "w_norm": rng.uniform(size=n)})
  assert a["share_worst_0.0001"] == pytest.approx((1e9 + 1) / (1e9 + n - 1), rel=1e-12)  # the 2 worst tasks
  assert a["share_lam_max_top"] > 0.9999 and a["lam_max_rank_of_worst"] == 1.0
  flat = dr.attribution(np.ones(n), {"lam_max": lam})
  assert flat["share_worst_0.01"] == pytest.approx(0.01) and flat["share_lam_max_top"] == pytest.approx(1e-3, abs=1e-4)
  inf = dr.attribution(np.r_[np.ones(n - 1), np.inf], {"lam_max": lam})
  assert inf["share_worst_0.0001"] == 1.0


def _table(means: dict) -> engine.Table:
  ctx = engine.Context(dr.KEYS, "unused")
  for (L, recipe), vals in means.items():
    for seed, v in enumerate(vals):
      ctx.add("model_mean", v, seed=None if recipe == "gd_pp" else seed, L=L, recipe=recipe)
      ctx.add("model_median", v / 10, seed=None if recipe == "gd_pp" else seed, L=L, recipe=recipe)
  return engine.Table(ctx.rows, ctx.keys)


def test_decision_takes_the_recipe_with_the_best_worst_seed():
  t = _table({(4, "gd_pp"): [1.0], (4, "a"): [0.5, 1e9], (4, "b"): [3.0, 4.0], (4, "c"): [0.1]})
  d = dr.decide(t)[4]
  assert d["recipe"] == "b" and d["worst_mean"] == 4.0 and d["gd_pp_like"]  # "c" lost a seed: inf
  assert not dr.decide(_table({(4, "gd_pp"): [1.0], (4, "a"): [20.0, 0.1]}))[4]["gd_pp_like"]


def test_an_unknown_recipe_is_refused_by_name():
  s = dataclasses.replace(dr.PROFILES["tiny"], grid=((2, ("no_such_recipe",)),))
  with pytest.raises(ValueError, match="recipe must be one of"):
    dr.run(s, engine.Context(dr.KEYS, "unused"))


@pytest.mark.slow  # an end-to-end tiny run, like tests/test_studies.py under `make test-all`
def test_tiny_profile_end_to_end(tmp_path):
  flags = engine.Flags(profile="tiny", results=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
  engine.run_study("deep_recipes", flags)
  table, meta = engine.load(flags.results, "deep_recipes")
  assert not meta["failures"]
  (L, names), = dr.PROFILES["tiny"].grid
  for r in (*names, "gd_pp"):
    assert table.values("model_mean", L=L, recipe=r).size == (1 if r == "gd_pp" else 2)
    shares = table.values("share_worst_0.0001", L=L, recipe=r)
    assert np.all((shares > 0) & (shares <= 1))
  assert table.values("train_loss_median", L=L, recipe="f64_tail", seed=0).size == dr.WINDOWS
  assert dr.decide(table)[L]["recipe"] in names
  paths = dr_view.plot(table, meta, tmp_path / "figures")
  assert len(paths) == 8 and all(p.stat().st_size > 0 for p in paths)
  assert "Decision" in dr_view.report(table, meta)


def test_spectrum_bands_partition_the_tasks():
  """The bands hold 50, 40, 9, 0.9, 0.09 and 0.01 % of the tasks: their shares sum to 1 and their
  means, weighted by those fractions, give the overall mean."""
  rng = np.random.default_rng(1)
  n = 100_000
  lam, e = rng.uniform(size=n), rng.exponential(size=n)
  bands = dr.by_spectrum(e, lam)
  assert list(bands) == list(dr.LAM_BINS)
  frac = np.diff((0.0, *dr.LAM_BINS))
  assert sum(share for _, share in bands.values()) == pytest.approx(1.0, rel=1e-12)
  assert sum(f * m for f, (m, _) in zip(frac, bands.values())) == pytest.approx(e.mean(), rel=1e-9)
