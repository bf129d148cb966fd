"""Task sampler and token layout (docs/theory.md §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.core import tasks
from lintheory.core.tasks import TaskConfig

# One compilation per shape instead of one per primitive (op-by-op dispatch is slow on CPU).
sample = jax.jit(tasks.sample, static_argnums=(1, 2), static_argnames=("n_context", "dtype"))


def test_shapes_and_token_layout():
  cfg = TaskConfig(d=4, n_context=7)
  b = sample(jax.random.key(0), cfg, 5, dtype=jnp.float64)
  assert b.X.shape == (5, 7, 4) and b.y.shape == (5, 7) and b.x_q.shape == (5, 4)
  assert b.y_q.shape == (5,) and b.w.shape == (5, 4)
  Z = tasks.batch_tokens(b)
  assert Z.shape == (5, 8, 5)
  np.testing.assert_array_equal(Z[:, :7, :4], b.X)
  np.testing.assert_array_equal(Z[:, :7, 4], b.y)
  np.testing.assert_array_equal(Z[:, 7, :4], b.x_q)
  np.testing.assert_array_equal(Z[:, 7, 4], 0.0)  # the query's y-slot is empty


def test_noiseless_labels_are_linear_and_sampling_is_seeded():
  cfg = TaskConfig(d=3, n_context=6)
  b = sample(jax.random.key(1), cfg, 4, dtype=jnp.float64)
  np.testing.assert_allclose(b.y, jnp.einsum("bnd,bd->bn", b.X, b.w), rtol=1e-12)
  np.testing.assert_allclose(b.y_q, jnp.einsum("bd,bd->b", b.x_q, b.w), rtol=1e-12)
  b2 = sample(jax.random.key(1), cfg, 4, dtype=jnp.float64)
  np.testing.assert_array_equal(b.X, b2.X)
  b3 = sample(jax.random.key(2), cfg, 4, dtype=jnp.float64)
  assert not np.allclose(b.X, b3.X)


def test_n_context_override():
  b = sample(jax.random.key(0), TaskConfig(d=2, n_context=5), 3, n_context=9)
  assert b.X.shape == (3, 9, 2)


def test_moments_noise_and_covariance():
  """Label-noise variance σ², x covariance Σ, w covariance Σ_w, within ~4 standard errors."""
  Sigma = np.array([[2.0, 0.5], [0.5, 1.0]])
  cfg = TaskConfig(d=2, n_context=4, noise_std=0.7, x_cov=tuple(map(tuple, Sigma)), w_cov=(3.0, 0.5),
                   query_noise=True)
  b = sample(jax.random.key(3), cfg, 50_000, dtype=jnp.float64)
  eps = np.asarray(b.y - jnp.einsum("bnd,bd->bn", b.X, b.w)).ravel()
  assert abs(eps.var() - 0.49) < 4 * 0.49 * np.sqrt(2 / eps.size)
  X = np.asarray(b.X).reshape(-1, 2)
  np.testing.assert_allclose(X.T @ X / len(X), Sigma, atol=4 * 2.0 * np.sqrt(2 / len(X)))
  w = np.asarray(b.w)
  np.testing.assert_allclose(w.T @ w / len(w), np.diag([3.0, 0.5]), atol=4 * 3.0 * np.sqrt(2 / len(w)))
  q_eps = np.asarray(b.y_q - jnp.einsum("bd,bd->b", b.x_q, b.w))
  assert abs(q_eps.var() - 0.49) < 4 * 0.49 * np.sqrt(2 / q_eps.size)


def test_zero_predictor_scores_one():
  b = sample(jax.random.key(4), TaskConfig(d=5, n_context=3), 40_000, dtype=jnp.float64)
  e = np.asarray(tasks.normalised_error(b.y_q**2, 5))
  assert abs(e.mean() - 1.0) < 4 * e.std() / np.sqrt(e.size)


@pytest.mark.parametrize("kwargs, name", [
    (dict(d=0), "d"), (dict(d=True), "d"), (dict(d=2.5), "d"),
    (dict(n_context=0), "n_context"),
    (dict(noise_std=-0.1), "noise_std"), (dict(noise_std=float("nan")), "noise_std"),
    (dict(noise_std=float("inf")), "noise_std"),
    (dict(d=2, x_cov=(1.0, 2.0, 3.0)), "x_cov"),  # wrong shape
    (dict(d=2, x_cov=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))), "x_cov"),  # wrong shape
    (dict(d=2, x_cov=((1.0, 0.5), (0.0, 1.0))), "x_cov"),  # not symmetric
    (dict(d=2, x_cov=((1.0, 2.0), (2.0, 1.0))), "x_cov"),  # indefinite
    (dict(d=2, x_cov=(1.0, 0.0)), "x_cov"),  # singular diagonal
    (dict(d=2, x_cov=(1.0, float("nan"))), "x_cov"),  # non-finite
    (dict(d=2, w_cov=((1.0, float("inf")), (float("inf"), 1.0))), "w_cov"),
    (dict(d=2, w_cov=(-1.0, 1.0)), "w_cov"),
    (dict(d=2, x_cov=((1.0, 0.0), (0.0,))), "x_cov"),  # ragged
    (dict(d=2, x_cov=("a", "b")), "x_cov"),  # not numbers
    (dict(d=2, w_cov=(0.0, 0.0)), "w_cov"),  # no direction at all
    (dict(d=2, w_cov=((1.0, 1.0), (1.0, 0.5))), "w_cov"),  # indefinite
    (dict(x_dist="laplace"), "x_dist"),
    (dict(x_dist="uniform", x_scale=0.0), "x_scale"), (dict(x_dist="uniform", x_scale=float("nan")), "x_scale"),
    (dict(x_dist="uniform", x_scale=True), "x_scale"),
    (dict(d=2, x_dist="uniform", x_cov=(1.0, 2.0)), "x_cov"),  # uniform has its own covariance
    (dict(x_scale=2.0), "x_scale"),  # a gaussian is scaled by x_cov, not x_scale
])
def test_invalid_task_config(kwargs, name):
  with pytest.raises(ValueError, match=name):
    TaskConfig(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-3), "batch_size"),
    (dict(batch_size=2, n_context=0), "n_context"),
])
def test_invalid_sample_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    tasks.sample(jax.random.key(0), TaskConfig(d=2, n_context=3), **kwargs)


def test_uniform_inputs_have_the_stated_moments():
  """x ~ U(−a, a)^d: inside the box, E[x xᵀ] = a²/3·I, fourth cumulant −2a⁴/15, within ~4 standard errors."""
  a = 1.5
  cfg = TaskConfig(d=3, n_context=5, x_dist="uniform", x_scale=a)
  b = sample(jax.random.key(5), cfg, 20_000, dtype=jnp.float64)
  X = np.concatenate([np.asarray(b.X).reshape(-1, 3), np.asarray(b.x_q)])
  assert np.abs(X).max() <= a
  np.testing.assert_allclose(X.T @ X / len(X), tasks.x_covariance(cfg), atol=4 * a**2 * np.sqrt(1 / len(X)))
  np.testing.assert_allclose(tasks.x_covariance(cfg), a**2 / 3 * np.eye(3), rtol=1e-15)
  k4 = (X**4).mean(0) - 3 * (X**2).mean(0) ** 2
  np.testing.assert_allclose(k4, tasks.x_fourth_cumulant(cfg), atol=4 * a**4 * np.sqrt(1 / len(X)))
  assert tasks.x_fourth_cumulant(TaskConfig()) == 0.0
  np.testing.assert_array_equal(tasks.x_covariance(TaskConfig(d=2, x_cov=(2.0, 3.0))), np.diag([2.0, 3.0]))


def test_low_rank_prior_keeps_w_in_its_span():
  diag = sample(jax.random.key(6), TaskConfig(d=3, n_context=2, w_cov=(2.0, 0.0, 0.5)), 20_000, dtype=jnp.float64)
  w = np.asarray(diag.w)
  np.testing.assert_array_equal(w[:, 1], 0.0)  # exactly: a zero variance is a zero coordinate
  np.testing.assert_allclose(w.T @ w / len(w), np.diag([2.0, 0.0, 0.5]), atol=4 * 2.0 * np.sqrt(2 / len(w)))
  v = np.array([1.0, -2.0, 0.5])
  rank1 = sample(jax.random.key(7), TaskConfig(d=3, n_context=2, w_cov=tuple(map(tuple, np.outer(v, v)))), 2000,
                 dtype=jnp.float64)
  w = np.asarray(rank1.w)
  np.testing.assert_allclose(np.cross(w, v), 0.0, atol=1e-12 * np.abs(w).max())  # every w is a multiple of v
  assert np.var(w @ v / (v @ v)) == pytest.approx(1.0, abs=4 * np.sqrt(2 / len(w)))


def test_full_rank_priors_sample_as_before():
  """An SPD w_cov still uses its Cholesky factor, so existing seeds give the same tasks."""
  cfg = TaskConfig(d=2, n_context=2, w_cov=((2.0, 0.5), (0.5, 1.0)))
  b = sample(jax.random.key(8), cfg, 4, dtype=jnp.float64)
  k_w = jax.random.split(jax.random.key(8), 5)[0]
  z = jax.random.normal(k_w, (4, 2), jnp.float64)
  np.testing.assert_allclose(b.w, z @ np.linalg.cholesky(np.array(cfg.w_cov)).T, rtol=1e-12)


def test_scaled_demonstrations_stay_exact_linear_tasks():
  """Scaling a task's demonstrations keeps y_i − x_iᵀw (the noise) unchanged and the query untouched;
  frac = 0 changes nothing, frac = 1 scales every task by s ∈ [1, scale]."""
  import jax
  import jax.numpy as jnp
  cfg = TaskConfig(d=3, n_context=5, noise_std=0.3)
  b = tasks.sample(jax.random.key(0), cfg, 64, dtype=jnp.float64)
  noise = b.y - jnp.einsum("bnd,bd->bn", b.X, b.w)
  for frac in (0.0, 0.5, 1.0):
    t = tasks.scale_demonstrations(jax.random.key(1), b, frac, 1.4)
    np.testing.assert_allclose(t.y - jnp.einsum("bnd,bd->bn", t.X, t.w), noise, atol=1e-12)
    assert (t.x_q == b.x_q).all() and (t.y_q == b.y_q).all() and (t.w == b.w).all()
    s = jnp.linalg.norm(t.X, axis=(1, 2)) / jnp.linalg.norm(b.X, axis=(1, 2))
    assert bool(jnp.all((s >= 1 - 1e-12) & (s <= 1.4 + 1e-12)))
    if frac == 0.0:
      assert bool(jnp.all(s == 1))
    if frac == 1.0:
      assert bool(jnp.all(s > 1))


def test_skipped_identity_factors_and_zero_noise_change_no_bit():
  """Σ_x = I, Σ_w = I and σ = 0 skip work in `sample`; spelled out explicitly they give the same bits."""
  import jax
  explicit = TaskConfig(d=3, n_context=4, x_cov=(1.0, 1.0, 1.0), w_cov=(1.0, 1.0, 1.0))
  implicit_ = TaskConfig(d=3, n_context=4)
  a, b = tasks.sample(jax.random.key(3), explicit, 32), tasks.sample(jax.random.key(3), implicit_, 32)
  for x, y in zip(a, b):
    assert (np.asarray(x) == np.asarray(y)).all()


def test_float32_draws_widened_keep_labels_exact_in_float64():
  """draw_dtype=float32 with dtype=float64: the inputs, task vector and noise are the float32 draws
  widened, and the labels are computed from them in float64 (a noiseless y is X w to the last bit)."""
  from lintheory.core import precision
  from lintheory.run import train
  cfg = tasks.TaskConfig(d=3, n_context=5, noise_std=0.0, x_cov=(1.0, 2.0, 0.5))
  with precision.x64():
    key = jax.random.key(4)
    b32 = tasks.sample(key, cfg, 7, dtype=jnp.float32)
    b = tasks.sample(key, cfg, 7, dtype=jnp.float64, draw_dtype=jnp.float32)
    assert b.X.dtype == jnp.float64
    z = jax.random.normal(jax.random.split(key, 5)[1], (7, 5, 3), jnp.float32).astype(jnp.float64)
    L = jnp.asarray(np.linalg.cholesky(np.diag([1.0, 2.0, 0.5])), jnp.float64)
    np.testing.assert_array_equal(b.X, z @ L.T)
    np.testing.assert_array_equal(b.y, jnp.einsum("bnd,bd->bn", b.X, b.w))
    np.testing.assert_allclose(b.X, b32.X, rtol=1e-6)  # the same tasks up to float32 resolution
    same = tasks.sample(key, cfg, 7, dtype=jnp.float64)
    np.testing.assert_array_equal(tasks.sample(key, cfg, 7, dtype=jnp.float64, draw_dtype=jnp.float64).X, same.X)
    tcfg = train.TrainConfig(batch_size=7, dtype="float64")
    np.testing.assert_array_equal(train.draw(key, cfg, tcfg, None).X, b.X)  # training draws in float32
