"""Fitted explicit references: the closed form η* (docs/theory.md §9), caching, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory import checks
from lintheory.core import learners, tasks
from lintheory.run import references as R
from lintheory.core.tasks import TaskConfig
from conftest import batch64


@pytest.mark.parametrize("noise_std", [0.0, 1.0])
def test_fitted_one_step_eta_recovers_eta_star(noise_std):
  task = TaskConfig(d=5, n_context=10, noise_std=noise_std)
  f = R.fit(task, 1, "gd", R.FitConfig(steps=300, batch_size=1024))
  star = learners.eta_star(5, 10, noise_std)
  assert f.eta.shape == (1,)
  assert abs(f.eta[0] / star - 1) < 0.03, (f.eta[0], star)
  # and its loss is the closed-form minimum, up to the Monte Carlo error of the fitting batches
  assert f.train_loss == pytest.approx(learners.gd1_loss_star(5, 10, noise_std), rel=0.1)


def hand_made(kind, L=3, d=3, seed=0):
  rng = np.random.default_rng(seed)
  eta = rng.uniform(0.2, 0.8, L) if kind != "gd" else np.full(L, 0.5)
  gamma = rng.uniform(0, 0.3, L) if kind == "gd_pp" else np.zeros(L)
  P = rng.standard_normal((L, d, d)) * 0.3 + np.eye(d) if kind == "precond" else np.broadcast_to(np.eye(d), (L, d, d))
  return R.Fitted(kind, np.ones(L) if kind == "precond" else eta, gamma, np.array(P), 0.0)


@pytest.mark.parametrize("kind", R.KINDS)
def test_reference_weights_implement_the_reference(kind):
  """construct(f) is a transformer whose per-layer predictions are iterates(f), exactly."""
  f, b = hand_made(kind), batch64(3, 6)
  _, y_ref = R.iterates(f, b)
  checks.assert_gd_equivalent(R.construct(f), b, lambda batch: R.iterates(f, batch)[1], tol=1e-10)
  assert y_ref.shape == (3, 16)


def test_theta_round_trip():
  for kind in R.KINDS:
    f = hand_made(kind)
    w1, _ = R.iterates(f, batch64(3, 6))
    g = R._as_fitted(kind, R.theta_of(f), 3, 3, 0.0)
    w2, _ = R.iterates(g, batch64(3, 6))
    np.testing.assert_array_equal(w1, w2)


def test_init_breaks_the_permutation_symmetry():
  theta = R.init_theta("gd_step", 10, 20, 4, 0.0)
  assert len(set(np.asarray(theta["eta"]).round(8).tolist())) == 4


def test_fitted_is_cached(tmp_path, monkeypatch):
  task, cfg = TaskConfig(d=2, n_context=4), R.FitConfig(steps=20, batch_size=32)
  first = R.fitted(task, 1, cfg, tmp_path)
  files = list((tmp_path / "references").glob("*.json"))
  assert len(files) == 1 and set(first) == set(R.KINDS)
  monkeypatch.setattr(R, "fit_many", lambda *a, **k: pytest.fail("refitted a cached reference"))
  again = R.fitted(task, 1, cfg, tmp_path)
  for k in R.KINDS:
    np.testing.assert_allclose(again[k].eta, first[k].eta)
    np.testing.assert_allclose(again[k].P, first[k].P)
  # another depth, noise or Σ is another entry
  assert R.cache_path(task, 1, cfg, tmp_path) == files[0]
  assert R.cache_path(task, 2, cfg, tmp_path) != files[0]
  assert R.cache_path(TaskConfig(d=2, n_context=4, noise_std=0.5), 1, cfg, tmp_path) != files[0]
  assert R.cache_path(TaskConfig(d=2, n_context=4, x_cov=(1.0, 2.0)), 1, cfg, tmp_path) != files[0]
  assert R.cache_path(task, 1, R.FitConfig(steps=21, batch_size=32), tmp_path) != files[0]


def test_bad_inputs():
  task = TaskConfig(d=2, n_context=4)
  with pytest.raises(ValueError, match="kind must be one of"):
    R.fit(task, 1, "adam")
  with pytest.raises(ValueError, match="L .* must be an integer >= 1"):
    R.fit(task, 0, "gd")
  with pytest.raises(ValueError, match="steps must be an integer >= 1"):
    R.FitConfig(steps=0)
  with pytest.raises(ValueError, match="lr must be a finite number > 0"):
    R.FitConfig(lr=float("nan"))


@pytest.mark.slow
def test_two_step_references_are_ordered(tmp_path):
  """More freedom fits better: GD++ ≤ per-step GD ≤ shared-η GD < one step at η*."""
  task = TaskConfig(d=5, n_context=10)
  fs = R.fitted(task, 2, R.FitConfig(steps=600, batch_size=1024), cache_dir=tmp_path)
  b = tasks.sample(jax.random.key(7), task, 20_000)
  loss = {k: float(jnp.mean((R.iterates(f, b)[1][-1] - b.y_q) ** 2)) for k, f in fs.items()}
  assert loss["gd_pp"] < loss["gd_step"] * 1.02 < loss["gd"] * 1.04
  assert loss["gd"] < learners.gd1_loss_star(5, 10)


@pytest.mark.slow
def test_nested_references_do_not_fit_worse_than_per_step_gd():
  """GD++ and preconditioned GD contain per-step GD (γ = 0, P_t = η_t I) and start from its fit."""
  task = TaskConfig(d=5, n_context=10)
  fs = R.fit_many(task, 4, cfg=R.FitConfig(steps=300, batch_size=256))
  b = tasks.sample(jax.random.key(8), task, 20_000)
  loss = {k: float(jnp.mean((R.iterates(f, b)[1][-1] - b.y_q) ** 2)) for k, f in fs.items()}
  assert loss["gd_pp"] <= loss["gd_step"] * 1.01 and loss["precond"] <= loss["gd_step"] * 1.01, loss
  alone = R.fit(task, 4, "gd_pp", R.FitConfig(steps=300, batch_size=256))  # fits its parent first
  np.testing.assert_allclose(alone.eta, fs["gd_pp"].eta, rtol=1e-5)  # float32 fits: joint and alone round differently
