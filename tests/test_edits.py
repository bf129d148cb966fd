"""SVD truncations and their null controls (docs/theory.md §7): sizes, counts and exactness in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory.core import edits, prune

SHAPES = [(5, 5), (7, 4), (3, 6)]


def matrix(shape, seed=0, rank=None):
  rng = np.random.default_rng(seed)
  m, n = shape
  if rank is None:
    return jnp.asarray(rng.standard_normal(shape))
  return jnp.asarray(rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)))


def eckart_young(W, r) -> float:
  s = np.linalg.svd(np.asarray(W), compute_uv=False)
  return float(np.sqrt(np.sum(s[r:] ** 2)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", edits.CONTROLS + ("svd",))
def test_every_control_has_the_svd_edits_frobenius_size(shape, kind):
  W = matrix(shape, seed=1)
  for r in range(min(shape) + 1):
    delta = edits.edit(kind, jax.random.key(r), W, r) - W
    np.testing.assert_allclose(np.linalg.norm(delta), eckart_young(W, r), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
def test_random_directions_drop_as_many_directions_as_the_svd_edit(shape):
  W = matrix(shape, seed=2)
  k_full = min(shape)
  for r in range(k_full + 1):
    delta = np.asarray(edits.edit("null_dirs", jax.random.key(7), W, r) - W)
    svd_delta = np.asarray(edits.edit("svd", jax.random.key(7), W, r) - W)
    assert np.linalg.matrix_rank(delta, tol=1e-10) == np.linalg.matrix_rank(svd_delta, tol=1e-10) == k_full - r


def test_random_directions_are_not_the_singular_directions():
  W = matrix((6, 6), seed=3)
  a = edits.edit("null_dirs", jax.random.key(0), W, 3)
  assert np.linalg.norm(a - edits.truncate_exact(W, 3)) > 1e-3


def test_shrink_is_a_multiple_of_W():
  W = matrix((4, 6), seed=4)
  out = edits.edit("null_shrink", jax.random.key(0), W, 2)
  alpha = eckart_young(W, 2) / np.linalg.norm(W)
  np.testing.assert_allclose(out, (1 - alpha) * W, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind", ("svd",) + edits.CONTROLS)
def test_keeping_the_full_rank_is_a_no_op(kind):
  W = matrix((5, 5), seed=5)
  out = edits.edit(kind, jax.random.key(0), W, 5)
  np.testing.assert_array_equal(out, W)


def test_rate_zero_exact_svd_returns_W_itself():
  W = matrix((5, 3), seed=6)
  assert edits.truncate_exact(W, prune.rank_for_rate(5, 3, 0.0)) is W


@pytest.mark.parametrize("shape", SHAPES)
def test_randomized_svd_is_exact_on_a_matrix_of_rank_q(shape):
  """q = r on a rank-r matrix: the sketch spans its range, so U S Vᵀ = W to round-off."""
  for r in (1, min(shape)):
    W = matrix(shape, seed=10 + r, rank=r)
    out = edits.truncate_randomized(jax.random.key(r), W, r)
    np.testing.assert_allclose(out, W, atol=1e-12 * np.linalg.norm(W))
    np.testing.assert_allclose(out, edits.truncate_exact(W, r), atol=1e-12 * np.linalg.norm(W))


@pytest.mark.parametrize("shape", SHAPES)
def test_randomized_svd_never_beats_eckart_young(shape):
  W = matrix(shape, seed=8)
  for r in (1, min(shape) - 1):
    err = np.linalg.norm(edits.truncate_randomized(jax.random.key(r), W, r) - W)
    assert err >= eckart_young(W, r) * (1 - 1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_lowrank_factors_are_orthonormal(shape):
  W = matrix(shape, seed=9)
  q = min(shape) - 1
  U, s, V = edits.svd_lowrank(jax.random.key(0), W, q)
  assert U.shape == (shape[0], q) and V.shape == (shape[1], q) and s.shape == (q,)
  np.testing.assert_allclose(U.T @ U, np.eye(q), atol=1e-13)
  np.testing.assert_allclose(V.T @ V, np.eye(q), atol=1e-13)
  assert np.all(np.diff(np.asarray(s)) <= 0)


def test_rank_zero_randomized_is_the_zero_matrix():
  np.testing.assert_array_equal(edits.truncate_randomized(jax.random.key(0), matrix((3, 4)), 0), 0)


@pytest.mark.parametrize("kind", edits.KINDS)
def test_edits_are_seeded_and_jittable(kind):
  W = matrix((5, 4), seed=11)
  f = jax.jit(lambda key, W: edits.edit(kind, key, W, 2))
  np.testing.assert_allclose(f(jax.random.key(3), W), edits.edit(kind, jax.random.key(3), W, 2), atol=1e-12)
  np.testing.assert_array_equal(f(jax.random.key(3), W), f(jax.random.key(3), W))
  if kind in ("null_dirs", "null_gauss"):
    assert np.linalg.norm(f(jax.random.key(3), W) - f(jax.random.key(4), W)) > 1e-6


def test_bad_inputs_name_the_argument():
  W = matrix((4, 4))
  with pytest.raises(ValueError, match="rank must be an integer in \\[0, 4\\]"):
    edits.edit("svd", jax.random.key(0), W, 5)
  with pytest.raises(ValueError, match="kind must be one of"):
    edits.edit("prune", jax.random.key(0), W, 2)
  with pytest.raises(ValueError, match="W must be one matrix"):
    edits.edit("svd", jax.random.key(0), jnp.zeros((2, 4, 4)), 2)
  with pytest.raises(ValueError, match="k \\(directions removed\\)"):
    edits.remove_random_directions(jax.random.key(0), W, 5, 1.0)
  with pytest.raises(ValueError, match="niter must be >= 0"):
    edits.svd_lowrank(jax.random.key(0), W, 2, niter=-1)
