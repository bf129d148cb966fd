"""Fitted explicit references: optima with a certificate (docs/theory.md §9, §13), caching, refusal, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory import checks
from lintheory.core import learners, model, precision, tasks
from lintheory.run import analysis, references as R
from lintheory.core.tasks import TaskConfig
from conftest import batch64


def _eta_star_beta(N, d, nu, beta2, sigma):
  """docs/theory.md §13: η* = N / (ν (N + d + β₂ − 2) + σ²) for independent coordinates of variance ν."""
  return N / (nu * (N + d + beta2 - 2) + sigma**2)


@pytest.mark.parametrize("noise_std", [0.0, 0.5])
@pytest.mark.parametrize("family, scale", [("gaussian", 0.5), ("gaussian", 1.0), ("gaussian", 2.0),
                                           ("uniform", 0.5), ("uniform", 1.0), ("uniform", 2.0)])
def test_fitted_one_step_gd_is_the_optimum_at_every_input_scale(family, scale, noise_std):
  d, N = 10, 10
  if family == "gaussian":
    task, nu, beta2 = TaskConfig(d=d, n_context=N, noise_std=noise_std, x_cov=(scale**2,) * d), scale**2, 3.0
  else:
    task, nu, beta2 = TaskConfig(d=d, n_context=N, noise_std=noise_std, x_dist="uniform", x_scale=scale), scale**2 / 3, 1.8
  fs = R.fit_many(task, 1)
  star = _eta_star_beta(N, d, nu, beta2, noise_std)
  for kind in ("gd", "gd_step", "gd_pp"):
    assert fs[kind].eta[0] == pytest.approx(star, rel=1e-4) and fs[kind].converged
  # GD++ with γ = 0, per-step GD and (isotropic inputs) the best preconditioner are the same one-step learner
  losses = [fs[k].train_loss for k in R.KINDS]
  np.testing.assert_allclose(losses, losses[0], rtol=1e-10)
  assert losses[0] == pytest.approx(d * nu * (1 - star * nu), rel=1e-10)  # §13: loss(η*) = dν(1 − η*ν)


def test_one_layer_optimum_is_gamma_star_and_a_minimum():
  """Γ* from the normal equations is Ahn et al.'s Γ* (Σ_w = I, Gaussian), and for a prior, uniform κ and
  noise every random perturbation raises the exact loss."""
  rng = np.random.default_rng(0)
  A = rng.standard_normal((4, 4))
  Sigma = A @ A.T + 0.5 * np.eye(4)
  np.testing.assert_allclose(learners.one_layer_optimum(Sigma, 7, 0.3), learners.gamma_star(Sigma, 7, 0.3), rtol=1e-10)
  S, Sw, kappa = np.diag([3.0, 1.0, 0.3, 0.7]), np.diag([1.0, 2.0, 0.0, 0.5]), -0.4
  G = learners.one_layer_optimum(S, 6, 0.5, Sw, kappa)
  best = learners.one_layer_loss(G, 6, S, 0.5, Sw, kappa)
  for _ in range(20):
    assert learners.one_layer_loss(G + 1e-3 * rng.standard_normal((4, 4)), 6, S, 0.5, Sw, kappa) > best
  eta = learners.one_step_optimum(S, 6, 0.5, Sw, kappa)
  at = lambda e: learners.one_layer_loss(e * np.eye(4), 6, S, 0.5, Sw, kappa)
  assert at(eta) < min(at(eta * 0.999), at(eta * 1.001)) and at(eta) >= best


def test_solver_reaches_the_sample_optimum_where_there_is_no_closed_form():
  """Mixed context lengths have no closed form: the solver's one step is the fixed sample's least-squares η."""
  task, cfg = TaskConfig(d=3, n_context=8, n_context_min=4), R.FitConfig(n_tasks=2048, seed=3)
  f = R.fit(task, 1, "gd", cfg)
  assert f.method == "trust-region Newton" and f.converged and f.grad_norm <= cfg.tol
  with precision.x64():
    b = tasks.sample(jax.random.key(3), task, 2048, dtype=jnp.float64)
  g = np.einsum("bnd,bn->bd", np.asarray(b.X), np.asarray(b.y)) / 8  # Xᵀy/N, the one-step direction
  assert f.eta[0] == pytest.approx(float(np.sum(g * np.asarray(b.w)) / np.sum(g * g)), rel=1e-6)


@pytest.mark.parametrize("kind", ["gd_step", "gd_pp"])
def test_eigenbasis_error_equals_the_moment_form(kind):
  """The fit's O(L d) eigenbasis recursion gives the same error as the moment-form learner, for any η_t, γ_t."""
  task, L = TaskConfig(d=3, n_context=6, x_cov=(0.5, 1.0, 2.0), noise_std=0.3), 3
  with precision.x64():
    data = R._sample(task, 64, 0)
    theta = {"eta": jnp.array([0.4, 0.9, 0.3]), "gamma": jnp.array([0.2, -0.1, 0.5] if kind == "gd_pp" else [0.0] * 3)}
    e = R.final_iterate("gd_pp", theta, data.Sigma_hat, data.b, L) - data.w
    direct = jnp.sum((e @ data.Sigma_x) * e, -1)
    spectral = R._spectral_error(theta, data, L) + jnp.sum((data.w @ data.Sigma_x) * data.w, -1)
  np.testing.assert_allclose(spectral, direct, rtol=1e-10, atol=1e-12)


def test_deeper_references_are_certified_and_nested_learners_fit_no_worse():
  """On the shared sample: per-step GD ≤ shared-η GD, and GD++ / preconditioned GD ≤ per-step GD (they
  contain it), each with a gradient norm below the tolerance."""
  cfg = R.FitConfig(n_tasks=1024, precond_tasks=1024)
  fs = R.fit_many(TaskConfig(d=3, n_context=8, x_dist="uniform", x_scale=0.5), 2, cfg=cfg)
  assert all(f.converged and f.grad_norm <= cfg.tol for f in fs.values()), {k: f.grad_norm for k, f in fs.items()}
  loss = {k: f.train_loss for k, f in fs.items()}
  assert loss["gd_step"] <= loss["gd"] * (1 + 1e-9)
  assert max(loss["gd_pp"], loss["precond"]) <= loss["gd_step"] * (1 + 1e-9), loss  # one sample here


def test_a_fit_that_did_not_converge_is_refused():
  task, L = TaskConfig(d=3, n_context=8), 2
  fs = R.fit_many(task, L, cfg=R.FitConfig(steps=1, n_tasks=128, tol=1e-12))
  assert not any(f.converged for f in fs.values())
  ok, refused = R.usable(fs)
  assert ok == {} and set(refused) == set(R.KINDS) and "gradient norm" in refused["gd"]
  with precision.x64():
    params = learners.construct(3, np.full(L, 0.3))
    out = analysis.analyze(params, model.ModelConfig(d=3, n_layers=L), task, fs, batch64(3, 8))
  assert set(out["refused"]) == set(R.KINDS)
  assert set(out["final"]["losses"]) == {"model", "ridge"} and not out["layers"]["references"]


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
    g = R._as_fitted(kind, R.theta_of(f), 0.0, 0.0, "given", 3, 3)
    w2, _ = R.iterates(g, batch64(3, 6))
    np.testing.assert_array_equal(w1, w2)


def test_init_breaks_the_permutation_symmetry():
  theta = R.init_theta("gd_step", 10, 4, 0.5)
  assert len(set(np.asarray(theta["eta"]).round(8).tolist())) == 4


def test_fitted_is_cached(tmp_path, monkeypatch):
  task, cfg = TaskConfig(d=2, n_context=4), R.FitConfig(steps=20, n_tasks=64)
  first = R.fitted(task, 2, cfg, tmp_path)
  files = [p for p in (tmp_path / "references").iterdir() if p.is_dir() and not p.name.startswith(".")]
  assert len(files) == 1 and set(first) == set(R.KINDS)
  monkeypatch.setattr(R, "fit_many", lambda *a, **k: pytest.fail("refitted a cached reference"))
  again = R.fitted(task, 2, cfg, tmp_path)
  for k in R.KINDS:
    np.testing.assert_allclose(again[k].eta, first[k].eta)
    np.testing.assert_allclose(again[k].P, first[k].P)
    assert (again[k].grad_norm, again[k].converged, again[k].method) == (first[k].grad_norm, first[k].converged,
                                                                         first[k].method)
  # another depth, noise or Σ is another entry
  assert R.cache_path(task, 2, cfg, tmp_path) == files[0]
  assert R.cache_path(task, 1, cfg, tmp_path) != files[0]
  assert R.cache_path(TaskConfig(d=2, n_context=4, noise_std=0.5), 2, cfg, tmp_path) != files[0]
  assert R.cache_path(TaskConfig(d=2, n_context=4, x_cov=(1.0, 2.0)), 2, cfg, tmp_path) != files[0]
  assert R.cache_path(task, 2, R.FitConfig(steps=21, n_tasks=64), tmp_path) != files[0]
  assert R.cache_key(task, 2, cfg)["version"] == R.VERSION
  # a subset of the kinds is its own entry, and holds the same fit of each kind it has
  monkeypatch.undo()
  only = R.fitted(task, 2, cfg, tmp_path / "other", kinds=("gd_pp",))
  np.testing.assert_array_equal(only["gd_pp"].eta, first["gd_pp"].eta)


def test_bad_inputs():
  task = TaskConfig(d=2, n_context=4)
  with pytest.raises(ValueError, match="kind must be one of"):
    R.fit(task, 1, "adam")
  with pytest.raises(ValueError, match="L .* must be an integer >= 1"):
    R.fit(task, 0, "gd")
  with pytest.raises(ValueError, match="steps must be an integer >= 1"):
    R.FitConfig(steps=0)
  with pytest.raises(ValueError, match="tol must be a finite number > 0"):
    R.FitConfig(tol=float("nan"))


@pytest.mark.slow
def test_two_step_references_are_ordered(tmp_path):
  """More freedom fits better: GD++ ≤ per-step GD ≤ shared-η GD < one step at η*."""
  task = TaskConfig(d=5, n_context=10)
  fs = R.fitted(task, 2, R.FitConfig(), cache_dir=tmp_path)
  b = tasks.sample(jax.random.key(7), task, 20_000)
  loss = {k: float(jnp.mean((R.iterates(f, b)[1][-1] - b.y_q) ** 2)) for k, f in fs.items()}
  assert loss["gd_pp"] < loss["gd_step"] * 1.02 < loss["gd"] * 1.04
  assert loss["gd"] < learners.gd1_loss_star(5, 10)


@pytest.mark.slow
def test_nested_references_do_not_fit_worse_than_per_step_gd():
  """GD++ contains per-step GD (γ = 0) and starts from its fit: no worse on fresh tasks either."""
  task = TaskConfig(d=5, n_context=20)
  fs = R.fit_many(task, 4, cfg=R.FitConfig(n_tasks=4096))
  b = tasks.sample(jax.random.key(8), task, 20_000)
  loss = {k: float(jnp.mean((R.iterates(f, b)[1][-1] - b.y_q) ** 2)) for k, f in fs.items()}
  assert loss["gd_pp"] <= loss["gd_step"] * 1.01, loss
  alone = R.fit(task, 4, "gd_pp", R.FitConfig(n_tasks=4096))  # fits its parent first
  np.testing.assert_allclose(alone.eta, fs["gd_pp"].eta, rtol=1e-8)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known limitation: preconditioned GD's L·d² parameters fit the heavy tail of "
                                       "its fixed sample; on fresh tasks it lands a few % above per-step GD at L = 4")
def test_preconditioned_gd_is_no_worse_than_per_step_gd_on_fresh_tasks():
  task = TaskConfig(d=5, n_context=20)
  fs = R.fit_many(task, 4, ("gd_step", "precond"))
  b = tasks.sample(jax.random.key(8), task, 20_000)
  loss = {k: float(jnp.mean((R.iterates(f, b)[1][-1] - b.y_q) ** 2)) for k, f in fs.items()}
  assert loss["precond"] <= loss["gd_step"] * 1.01, loss
