"""The shared model recipes: every depth gets one, and the cache key is the full training config."""

import pytest

from lintheory.run import profiles


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_every_depth_has_a_recipe_and_depths_are_ordered(name):
  prof = profiles.profile(name)
  bounds = [r.max_layers for r in prof.recipes]
  assert bounds == sorted(bounds)
  for L in range(1, 65):
    r = prof.recipe(L)
    assert L <= r.max_layers and r.lr > 0 and 0 < r.warmup_frac < 1 and r.clip_norm >= 0
    assert r.dtype in ("float32", "float64")
    assert all(L > q.max_layers for q in prof.recipes[:prof.recipes.index(r)])


def test_unknown_profile_names_the_choices():
  with pytest.raises(ValueError, match="profile must be one of"):
    profiles.profile("huge")


def test_a_study_models_cache_key_is_pinned(monkeypatch):
  """The default profile's models (d = 5, L = 1 and 3) keep their cache directories until the trainer's
  revision (train.TRAINER) is raised or TrainConfig gains a field (the key holds every field: it did when
  the loss's `forward` and `huber_delta` became fields, so that deep_recipes trains through train.fit).
  A change of these digests is deliberate: it retrains every cached model once."""
  from lintheory.run import cache, io
  keys = {}
  monkeypatch.setattr(cache, "cached_fit", lambda task, model, tc, seeds, *a: keys.setdefault(
      model.n_layers, io.digest(cache.cache_key(task, model, tc, seeds))[:16]) and (None, None, ()))
  for L in (1, 3):
    profiles.trained(profiles.profile("default"), layers=L, d=5)
  assert keys == {1: "5d5db70b575978fd", 3: "6e9d009797e42832"}
