"""The trained models the studies share, one recipe per profile.

Every study asks `profiles.trained(...)` for its models, so two studies that need the same model
get it from the cache (cache.cached_fit) instead of training it twice.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.run import adequacy, cache, recipes
from lintheory.run.recipes import RECIPES, Recipe  # noqa: F401 -- Recipe is part of this module's interface
from lintheory.core.model import ModelConfig, Params
from lintheory.core.tasks import TaskConfig
from lintheory.run.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Profile:
  steps: int  # training steps per model
  batch_size: int  # fresh tasks per step
  seeds: tuple[int, ...]  # one model per seed (vmapped)
  eval_tasks: int  # held-out tasks for every reported loss
  recipes: tuple[Recipe, ...] = RECIPES  # by depth: the first whose max_layers fits applies (run.recipes)
  init_scale: float = ModelConfig.init_scale  # std of the initial weights (ModelConfig's default)
  max_skipped: int = 50  # consecutive non-finite steps skipped before a run counts as diverged

  def recipe(self, layers: int) -> Recipe:
    return recipes.recipe(layers, self.recipes)


PROFILES = {
    # Smoke tests: every study end to end in seconds; the numbers mean nothing.
    "tiny": Profile(steps=40, batch_size=32, seeds=(0, 1), eval_tasks=1024),
    # 2 CPU cores, 5 seeds per model. The studies' `default` settings use it at d = 5 (the setting of
    # Ahn et al.) with fewer regimes, so that `make figures` takes minutes, not an hour (docs/report.md
    # gives the time); their `long` settings, at d = 10 with more regimes, take several times longer.
    "default": Profile(steps=1500, batch_size=256, seeds=(0, 1, 2, 3, 4), eval_tasks=100_000),
    "long": Profile(steps=1500, batch_size=256, seeds=(0, 1, 2, 3, 4), eval_tasks=100_000),
    # An accelerator: converged models, many seeds.
    "full": Profile(steps=20_000, batch_size=2048, seeds=tuple(range(20)), eval_tasks=1_000_000),
}


def profile(name: str) -> Profile:
  if name not in PROFILES:
    raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {name!r}")
  return PROFILES[name]


class Trained(NamedTuple):
  task: TaskConfig
  model: ModelConfig
  train: TrainConfig
  seeds: tuple[int, ...]
  params: Params  # leading seed axis [S, ...]
  losses: np.ndarray  # [S, steps]
  adequacy: tuple[adequacy.Seed, ...]  # per seed: did the fit converge (run.adequacy)


def trained(prof: Profile, *, layers: int = 1, attention: str = "linear", mlp: str | None = None,
            steps: int | None = None, pool_size: int = 0, seeds=None, cache_dir: str = "runs/cache",
            **task) -> Trained:
  """Models trained with the profile's recipe (cached). `task` holds TaskConfig fields (d = 10 and
  N = 20 unless given); steps and seeds override the profile's."""
  task = TaskConfig(**{"d": 10, "n_context": 20, **task})
  model = ModelConfig(d=task.d, n_layers=layers, attention=attention, mlp=mlp, init_scale=prof.init_scale)
  n = prof.steps if steps is None else steps
  r = prof.recipe(layers)
  train = TrainConfig(steps=n, batch_size=prof.batch_size, chunk=min(250, n), max_skipped=prof.max_skipped,
                      pool_size=pool_size, **r.train_fields(n, pool_size))
  seeds = tuple(prof.seeds if seeds is None else seeds)
  extras = [f"mixed from {task.n_context_min}" if task.n_context_min else "",
            f"w0_prob={task.w0_prob}" if task.w0_prob else "", f"pool={pool_size}" if pool_size else ""]
  label = f"L={layers} d={task.d} N={task.n_context} σ={task.noise_std} {attention}{'+' + mlp if mlp else ''}" \
      + "".join(f" {e}" for e in extras if e) + ": "
  params, losses, diagnosed = cache.cached_fit(task, model, train, seeds, cache_dir, label)
  for seed, s in zip(seeds, diagnosed):
    if not s.converged:
      print(f"  {label}seed {seed} did not converge: {s.reason}", file=sys.stderr, flush=True)
  return Trained(task, model, train, seeds, params, losses, diagnosed)


def seed_params(params: Params, i: int) -> Params:
  return jax.tree_util.tree_map(lambda a: a[i], params)


def stack_params(models: list[Params]) -> Params:
  """Models → their parameters on a leading axis [P, ...] (the inverse of seed_params), for one
  paired evaluation of them all."""
  return jax.tree_util.tree_map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *models)
