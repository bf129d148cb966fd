"""Exact per-task population errors and the chunked evaluator (docs/theory.md §5, §9, §11)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.core import evaluate, implicit, learners, model, tasks
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig

F64 = jnp.float64
# One compilation per shape instead of one dispatch per primitive (slow on CPU).
forward = jax.jit(model.forward, static_argnums=2)
trajectory = jax.jit(implicit.trajectory, static_argnums=2)
per_task_error = jax.jit(evaluate.per_task_error, static_argnums=(1, 3, 4))
sample = jax.jit(tasks.sample, static_argnums=(1, 2), static_argnames=("n_context", "dtype"))


def random_model(key, **kw):
  cfg = ModelConfig(init_scale=0.3, **kw)
  return model.init_params(jax.random.key(key), cfg, F64), cfg


def assert_mean_within(e, target, n_se=4.0):
  se = e.std(ddof=1) / np.sqrt(e.size)
  assert abs(e.mean() - target) < n_se * se, (e.mean(), target, se)


def test_implicit_predictor_is_theorem1_and_the_forward_pass():
  """ŵ from the lean recursion = Theorem 1's ŵ_L, and ŵ·x_q = the forward pass's ŷ (float64 round-off)."""
  params, cfg = random_model(0, d=3, n_layers=3, n_heads=2, use_W_O=True)
  b = sample(jax.random.key(1), TaskConfig(d=3, n_context=5, noise_std=0.3), 16, dtype=F64)
  w_hat = evaluate.implicit_predictor(params, cfg, b.X, b.y)
  traj = trajectory(params, tasks.batch_tokens(b), cfg)
  scale = float(jnp.abs(w_hat).max())
  np.testing.assert_allclose(w_hat, traj.w_hat[-1], atol=1e-12 * scale)
  y_hat, _ = forward(params, tasks.batch_tokens(b), cfg)
  np.testing.assert_allclose(jnp.einsum("bd,bd->b", w_hat, b.x_q), y_hat, atol=1e-12 * scale)
  with pytest.raises(ValueError, match="linear attention without MLP"):
    evaluate.implicit_predictor(params, dataclasses.replace(cfg, attention="softmax"), b.X, b.y)


@pytest.mark.parametrize("task", [
    TaskConfig(d=3, n_context=5, noise_std=0.4, x_cov=((1.5, 0.3, 0.0), (0.3, 0.8, 0.0), (0.0, 0.0, 0.5)),
               query_noise=True),
    pytest.param(TaskConfig(d=3, n_context=5, noise_std=0.2, x_dist="uniform", x_scale=2.0), marks=pytest.mark.slow),
])
def test_exact_error_is_the_average_over_fresh_queries(task):
  """For two fixed tasks, the exact error = the Monte-Carlo mean over 20,000 fresh queries (CLT)."""
  params, cfg = random_model(2, d=3, n_layers=2, n_heads=2)
  b = sample(jax.random.key(3), task, 2, dtype=F64)
  exact = per_task_error(params, cfg, b, task, False)
  Q = 20_000
  for i in range(2):
    q = sample(jax.random.fold_in(jax.random.key(4), i), task, Q, dtype=F64)  # fresh x_q and noise
    X, y = jnp.broadcast_to(b.X[i], (Q,) + b.X.shape[1:]), jnp.broadcast_to(b.y[i], (Q,) + b.y.shape[1:])
    y_q = q.x_q @ b.w[i] + (q.y_q - jnp.einsum("bd,bd->b", q.x_q, q.w))  # this task's w, fresh query noise
    y_hat, _ = forward(params, tasks.tokens(X, y, q.x_q), cfg)
    assert_mean_within(np.asarray((y_hat - y_q) ** 2), float(exact[i]))


def test_gd_construction_at_eta_star_matches_the_one_layer_closed_form():
  """Mean exact error of one GD step at η* = d(d+1+σ²)/(N+d+1+σ²), reported as MSE/d."""
  d, N, sigma = 4, 6, 0.5
  task = TaskConfig(d=d, n_context=N, noise_std=sigma)
  P = learners.construct(d, learners.eta_star(d, N, sigma), 1)
  e = evaluate.errors(P, ModelConfig(d=d), task, jax.random.key(0), n_tasks=50_000)
  assert_mean_within(e, learners.gd1_loss_star(d, N, sigma) / d)
  raw = evaluate.errors(P, ModelConfig(d=d), task, jax.random.key(0), n_tasks=1000, normalise=False)
  np.testing.assert_allclose(raw / d, e[:1000], rtol=1e-14)


@pytest.mark.parametrize("task", [
    pytest.param(TaskConfig(d=4, n_context=5, noise_std=0.5, x_cov=(2.0, 1.0, 0.5, 0.5), w_cov=(1.0, 2.0, 0.0, 0.0),
                            query_noise=True), marks=pytest.mark.slow),  # anisotropic inputs, rank-2 prior
    TaskConfig(d=4, n_context=5, noise_std=0.5, x_dist="uniform", x_scale=1.7, w_cov=(1.0, 2.0, 0.0, 0.5)),
])
def test_gd1_loss_for_each_family(task):
  P = learners.construct(task.d, learners.eta_star(task.d, task.n_context, task.noise_std), 1)
  e = evaluate.errors(P, ModelConfig(d=task.d), task, jax.random.key(1), n_tasks=100_000, normalise=False)
  assert_mean_within(e, learners.gd1_loss_for(task))
  if task.x_dist == "uniform":  # the Gaussian fourth moments would be rejected by the same data
    A = learners.eta_star(task.d, task.n_context, task.noise_std) * np.eye(task.d)
    gaussian = learners.one_layer_loss(A, task.n_context, tasks.x_covariance(task), task.noise_std,
                                       tasks.as_cov("w_cov", task.w_cov, task.d, psd=True))
    assert abs(e.mean() - gaussian) > 10 * e.std() / np.sqrt(e.size)


@pytest.mark.slow
def test_sampled_fallback_agrees_with_the_exact_error_on_average():
  """A zero MLP (W_2 = 0) leaves the model linear; its sampled-query errors average to the exact ones."""
  params, cfg = random_model(5, d=3, n_layers=2)
  mlp_cfg = ModelConfig(d=3, n_layers=2, mlp="relu", mlp_hidden=4, init_scale=0.3)
  mlp_params = dict(params, W_1=jnp.ones((2, 4, 4), F64), W_2=jnp.zeros((2, 4, 4), F64))
  task = TaskConfig(d=3, n_context=5, noise_std=0.3, query_noise=True)
  exact = evaluate.errors(params, cfg, task, jax.random.key(6), n_tasks=60_000)
  sampled = evaluate.errors(mlp_params, mlp_cfg, task, jax.random.key(6), n_tasks=60_000)
  assert_mean_within(sampled - exact, 0.0)
  assert not np.allclose(sampled, exact)  # per task they differ by the query's sampling noise


@pytest.mark.slow
def test_softmax_model_uses_the_sampled_query():
  params, cfg = random_model(7, d=2, attention="softmax")
  task = TaskConfig(d=2, n_context=4)
  e = evaluate.errors(params, cfg, task, jax.random.key(8), n_tasks=50, chunk=50)
  b = sample(jax.random.fold_in(jax.random.key(8), 0), task, 50, dtype=F64)
  y_hat, _ = forward(params, tasks.batch_tokens(b), cfg)
  np.testing.assert_allclose(e, (y_hat - b.y_q) ** 2 / 2, rtol=1e-12)


def test_errors_chunks_seeds_and_one_compilation():
  params, cfg = random_model(9, d=2, n_layers=2)
  task = TaskConfig(d=2, n_context=3)
  evaluate.chunk_fn.cache_clear()
  e = evaluate.errors(params, cfg, task, jax.random.key(0), n_tasks=250, chunk=100)
  assert e.shape == (250,) and e.dtype == np.float64
  (fn,) = [evaluate.chunk_fn(cfg, task, 100, "float64", False, True, True, None, "error")]
  assert fn._cache_size() == 1  # three chunks (the last padded), one compiled shape
  longer = evaluate.errors(params, cfg, task, jax.random.key(0), n_tasks=300, chunk=100)
  np.testing.assert_array_equal(longer[:250], e)  # the padded last chunk is the next chunk's start
  other, _ = random_model(10, d=2, n_layers=2)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
  eS = evaluate.errors(stacked, cfg, task, jax.random.key(0), n_tasks=250, chunk=100)
  assert eS.shape == (2, 250)
  np.testing.assert_allclose(eS[0], e, rtol=1e-12)
  np.testing.assert_allclose(eS[1], evaluate.errors(other, cfg, task, jax.random.key(0), 250, 100), rtol=1e-12)
  indep = evaluate.errors(stacked, cfg, task, jax.random.key(0), n_tasks=250, chunk=100, paired_seeds=False)
  assert not np.allclose(indep[0], eS[0])


def test_gap_is_the_bounds_gap_of_the_implicit_predictor():
  """per_task_gap = population loss − demonstration loss of Theorem 1's ŵ_L (core.bounds.gap), and
  errors(measure="gap") gives it chunk by chunk."""
  from lintheory.core import bounds
  params, cfg = random_model(14, d=3, n_layers=3)
  task = TaskConfig(d=3, n_context=6, noise_std=0.4)
  key = jax.random.key(5)
  b = sample(jax.random.fold_in(key, 0), task, 64, dtype=F64)
  w_hat = trajectory(params, tasks.batch_tokens(b), cfg).w_hat[-1]
  expect = bounds.gap(w_hat, b, jnp.eye(3, dtype=F64), 0.4)
  np.testing.assert_allclose(evaluate.per_task_gap(params, cfg, b, task), expect, rtol=1e-10, atol=1e-12)
  g = evaluate.errors(params, cfg, task, key, n_tasks=64, chunk=64, normalise=False, measure="gap")
  np.testing.assert_allclose(g, expect, rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError, match="normalise"):
    evaluate.errors(params, cfg, task, key, n_tasks=64, measure="gap")
  with pytest.raises(ValueError, match="measure"):
    evaluate.errors(params, cfg, task, key, n_tasks=64, measure="loss")
  soft, soft_cfg = random_model(15, d=3, attention="softmax")
  with pytest.raises(ValueError, match="linear attention"):
    evaluate.per_task_gap(soft, soft_cfg, b, task)


def test_context_errors_are_the_first_M_demonstrations_of_one_draw():
  params, cfg = random_model(12, d=2, n_layers=2)
  other, _ = random_model(13, d=2, n_layers=2)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
  task = TaskConfig(d=2, n_context=3, noise_std=0.3)
  key, Ms = jax.random.key(4), (2, 5, 7)
  out = evaluate.context_errors(stacked, cfg, task, key, Ms, n_tasks=150, chunk=100)
  assert sorted(out) == list(Ms) and all(e.shape == (2, 150) for e in out.values())
  # the largest M is an ordinary evaluation at that context size
  full = dataclasses.replace(task, n_context=7)
  np.testing.assert_allclose(out[7], evaluate.errors(stacked, cfg, full, key, 150, 100), rtol=1e-12)
  # a smaller M is the same model on the first M demonstrations of the same tasks (chunk 1, tasks 0-49)
  b = sample(jax.random.fold_in(key, 1), full, 100, dtype=F64)
  first = b._replace(X=b.X[:, :2], y=b.y[:, :2])
  np.testing.assert_allclose(out[2][1, 100:], per_task_error(other, cfg, first, task)[:50], rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(contexts=()), "contexts"), (dict(contexts=(0, 3)), "contexts"), (dict(n_tasks=0), "n_tasks"),
    (dict(task=TaskConfig(d=2, n_context=4, n_context_min=2)), "n_context_min"),
    (dict(seed_axis=False), "seed axis"),
])
def test_invalid_context_errors_arguments(kwargs, match):
  params, cfg = random_model(0, d=2)
  stacked = params if kwargs.pop("seed_axis", True) is False else jax.tree.map(lambda a: a[None], params)
  args = dict(task=TaskConfig(d=2, n_context=4), contexts=(2, 4), n_tasks=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    evaluate.context_errors(stacked, cfg, args["task"], jax.random.key(0), args["contexts"], args["n_tasks"])


@pytest.mark.slow
def test_float32_evaluation_is_close_to_float64():
  params, cfg = random_model(11, d=2, n_layers=2)
  task = TaskConfig(d=2, n_context=3)
  b = sample(jax.random.key(0), task, 100, dtype=F64)
  e64 = per_task_error(params, cfg, b, task)
  f32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
  e32 = per_task_error(f32(params), cfg, f32(b), task)
  assert e32.dtype == jnp.float32
  np.testing.assert_allclose(e32, e64, rtol=1e-4, atol=1e-6)
  e = evaluate.errors(params, cfg, task, jax.random.key(0), n_tasks=100, dtype="float32")
  assert e.dtype == np.float64 and np.all(np.isfinite(e))


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_tasks=0), "n_tasks"), (dict(n_tasks=2.5), "n_tasks"), (dict(chunk=0), "chunk"),
    (dict(dtype="float16"), "dtype"),
])
def test_invalid_errors_arguments(kwargs, name):
  params, cfg = random_model(0, d=2)
  with pytest.raises(ValueError, match=name):
    evaluate.errors(params, cfg, TaskConfig(d=2, n_context=3), jax.random.key(0), **kwargs)


def test_params_that_do_not_fit_the_config_are_refused():
  params, _ = random_model(0, d=2)
  with pytest.raises(ValueError, match=r"params\['W_.'\] must have shape \(1, 4, 4\)"):
    evaluate.errors(params, ModelConfig(d=3), TaskConfig(d=3, n_context=3), jax.random.key(0), n_tasks=4)
  with pytest.raises(ValueError, match="keys"):
    evaluate.errors(params, ModelConfig(d=2, use_W_O=True), TaskConfig(d=2, n_context=3), jax.random.key(0), 4)


def test_bayes_predictor_is_ridge_for_an_isotropic_prior():
  """Posterior mean with w ~ N(0, I) and noise σ² is ridge with λ = σ² (docs/theory.md §9)."""
  import jax
  import jax.numpy as jnp
  from lintheory.core import evaluate, learners, tasks
  cfg = tasks.TaskConfig(d=3, n_context=5, noise_std=0.5)
  b = tasks.sample(jax.random.key(0), cfg, 16, dtype=jnp.float64)
  np.testing.assert_allclose(evaluate.bayes_predictor(cfg, b.X, b.y), learners.ridge(b.X, b.y, 0.25), rtol=1e-10)


@pytest.mark.parametrize("N,w_cov", [(2, None), (6, None), (5, (1.0, 1.0, 0.0, 0.0))])
def test_noiseless_bayes_predictor_is_the_least_norm_interpolant(N, w_cov):
  """σ = 0: ŵ = F (X F)⁺ y (docs/theory.md §9). With N < d and Σ_w = I it is numpy's minimum-norm
  interpolant; once X F has full column rank (N ≥ d, or N ≥ rank Σ_w) it is w itself."""
  import jax
  import jax.numpy as jnp
  from lintheory.core import evaluate, tasks
  cfg = tasks.TaskConfig(d=4, n_context=N, w_cov=w_cov)
  b = tasks.sample(jax.random.key(3), cfg, 8, dtype=jnp.float64)
  w_hat = np.asarray(evaluate.bayes_predictor(cfg, b.X, b.y))
  np.testing.assert_allclose(np.einsum("bnd,bd->bn", b.X, w_hat), b.y, atol=1e-10)  # it interpolates
  if N < cfg.d and w_cov is None:
    ref = np.stack([np.linalg.lstsq(np.asarray(x), np.asarray(y), rcond=None)[0] for x, y in zip(b.X, b.y)])
    np.testing.assert_allclose(w_hat, ref, rtol=1e-9, atol=1e-12)
    assert np.abs(w_hat - np.asarray(b.w)).max() > 0.1  # and it is not w: two shots cannot pin four weights
  else:
    np.testing.assert_allclose(w_hat, b.w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("w_cov", [None, (1.0, 2.0, 0.5, 1e-2)])
def test_posterior_update_equals_the_bayes_predictor_on_prompt_and_examples(w_cov):
  """Adding V examples with the prompt's own noise through their moments gives the posterior mean of
  the concatenated prompt, computed in the (N + V)-dimensional form (docs/theory.md §8)."""
  cfg = TaskConfig(d=4, n_context=6, noise_std=0.5, w_cov=w_cov)
  b = tasks.sample(jax.random.key(0), cfg, 32, dtype=F64)
  Xv = tasks.sample(jax.random.key(1), cfg, 32, n_context=9, dtype=F64).X
  yv = jnp.einsum("bnd,bd->bn", Xv, b.w) + 0.5 * jax.random.normal(jax.random.key(2), (32, 9), F64)
  m, C = evaluate.bayes_posterior(cfg, b.X, b.y)
  got = evaluate.posterior_update(m, C, jnp.einsum("bnd,bne->bde", Xv, Xv), jnp.einsum("bnd,bn->bd", Xv, yv), 0.5)
  want = evaluate.bayes_predictor(cfg, jnp.concatenate([b.X, Xv], 1), jnp.concatenate([b.y, yv], 1))
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_noiseless_examples_pin_w_and_a_pinned_posterior_stays():
  """σ′ = 0 with V ≥ d: m′ = w; a noiseless prompt with N ≥ d has C = 0, and noisy examples leave m = w."""
  cfg = TaskConfig(d=4, n_context=6, noise_std=0.5)
  b = tasks.sample(jax.random.key(3), cfg, 16, dtype=F64)
  Xv = tasks.sample(jax.random.key(4), cfg, 16, n_context=5, dtype=F64).X
  XX = jnp.einsum("bnd,bne->bde", Xv, Xv)
  m, C = evaluate.bayes_posterior(cfg, b.X, b.y)
  exact = evaluate.posterior_update(m, C, XX, jnp.einsum("bde,be->bd", XX, b.w), 0.0)
  np.testing.assert_allclose(exact, b.w, atol=1e-10)
  clean = dataclasses.replace(cfg, noise_std=0.0)
  m0, C0 = evaluate.bayes_posterior(clean, b.X, jnp.einsum("bnd,bd->bn", b.X, b.w))
  assert np.abs(np.asarray(C0)).max() < 1e-10
  noisy = jnp.einsum("bde,be->bd", XX, b.w) + 3.0
  np.testing.assert_allclose(evaluate.posterior_update(m0, C0, XX, noisy, 0.5), b.w, atol=1e-8)


def test_ridge_from_moments_is_ridge_on_the_examples():
  b = tasks.sample(jax.random.key(5), TaskConfig(d=3, n_context=7, noise_std=0.3), 8, dtype=F64)
  XX, Xy = jnp.einsum("bnd,bne->bde", b.X, b.X), jnp.einsum("bnd,bn->bd", b.X, b.y)
  ref = np.stack([np.linalg.solve(np.asarray(x).T @ np.asarray(x) + 0.09 * np.eye(3), np.asarray(x).T @ np.asarray(y))
                  for x, y in zip(b.X, b.y)])
  np.testing.assert_allclose(learners.ridge_from_moments(XX, Xy, 0.09), ref, rtol=1e-10)


def test_bayes_errors_are_below_every_learner_on_average():
  """No predictor beats the posterior mean in expected error: one GD step at η* on the same tasks."""
  import jax
  from lintheory.core import evaluate, learners, tasks
  cfg = tasks.TaskConfig(d=3, n_context=6, noise_std=0.5, w_cov=(1.0, 1.0, 1e-3))
  key = jax.random.key(1)
  bayes = evaluate.bayes_errors(cfg, key, 20_000)
  gd1 = evaluate.errors(learners.construct(3, learners.eta_star(3, 6, 0.5), n_steps=1), _one_layer(3), cfg, key, 20_000)
  assert bayes.mean() < gd1.mean()


def _one_layer(d):
  from lintheory.core.model import ModelConfig
  return ModelConfig(d=d, n_layers=1)


def test_seed_ci_covers_the_mean_at_about_its_level():
  from lintheory.core import stats
  rng = np.random.default_rng(0)
  hits = sum(lo <= 1.0 <= hi for lo, hi in (stats.seed_ci(rng.normal(1.0, 2.0, 5)) for _ in range(2000)))
  assert 0.93 < hits / 2000 < 0.97


def test_fourth_cumulant_needs_independent_coordinates():
  with pytest.raises(ValueError, match="Sigma must be diagonal when kappa"):
    learners.one_layer_loss(np.eye(2), 4, np.array([[1.0, 0.5], [0.5, 1.0]]), kappa=-0.1)
