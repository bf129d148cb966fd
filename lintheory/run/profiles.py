"""The trained models the studies share, one recipe per profile.

Every study asks `profiles.trained(...)` for its models, so two studies that need the same model
get it from the cache (cache.cached_fit) instead of training it twice.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.run import cache
from lintheory.core.model import ModelConfig, Params
from lintheory.core.tasks import TaskConfig
from lintheory.run.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Recipe:
  max_layers: int  # the recipe applies to models of up to this many layers
  lr: float  # peak learning rate (Adam, warm-up + cosine)
  warmup: int  # warm-up steps, at most ...
  warmup_frac: float  # ... this fraction of the training steps
  clip_norm: float  # global-norm gradient clipping
  dtype: str = "float32"  # training precision
  tail_frac: float = 0.0  # share of each batch whose demonstrations are scaled up (TrainConfig.tail_frac)
  tail_scale: float = 1.0  # the largest scale s of those demonstrations


# Chosen by the deep_recipes study (python -m lintheory.studies deep_recipes; its numbers are in
# docs/report.md): d = 10, N = 20, 1500 steps of 256 tasks, exact per-task errors on 10^5 fresh tasks
# against the fitted GD++ of each depth. Float32 keeps L <= 2 near GD++. For L >= 3 plain recipes in
# either precision leave a mean that is not finite in practice: a handful of tasks in 10^5, those whose
# demonstrations' covariance has its largest eigenvalue in the extreme tail, carry almost all of the
# summed error. Training in float64 with 1/8 of each batch's demonstrations scaled by U[1, 1.4]
# (TrainConfig.tail_frac / tail_scale: the training spectrum reaches the test tail) makes the means
# GD++-like at every depth searched, so every model of L >= 3 trains that way (pool training
# excepted: its prompts are fixed). The default profile's d = 5 uses the same recipes; it was not
# searched again, and the studies report every model's tail (median, 99.99th percentile, maximum).
RECIPES = (Recipe(2, 5e-3, 100, 0.1, 1.0),
           Recipe(1 << 30, 5e-3, 500, 1 / 3, 0.1, "float64", tail_frac=1 / 8, tail_scale=1.4))


@dataclasses.dataclass(frozen=True)
class Profile:
  steps: int  # training steps per model
  batch_size: int  # fresh tasks per step
  seeds: tuple[int, ...]  # one model per seed (vmapped)
  eval_tasks: int  # held-out tasks for every reported loss
  recipes: tuple[Recipe, ...] = RECIPES  # by depth: the first whose max_layers fits applies
  init_scale: float = 0.1  # std of the initial weights; 0.02 leaves L >= 2 models on a long plateau
  max_skipped: int = 50  # consecutive non-finite steps skipped before a run counts as diverged

  def recipe(self, layers: int) -> Recipe:
    return next(r for r in self.recipes if layers <= r.max_layers)


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


def trained(prof: Profile, *, layers: int = 1, attention: str = "linear", mlp: str | None = None,
            steps: int | None = None, pool_size: int = 0, seeds=None, cache_dir: str = "runs/cache",
            **task) -> Trained:
  """Models trained with the profile's recipe (cached). `task` holds TaskConfig fields (d = 10 and
  N = 20 unless given); steps and seeds override the profile's."""
  task = TaskConfig(**{"d": 10, "n_context": 20, **task})
  model = ModelConfig(d=task.d, n_layers=layers, attention=attention, mlp=mlp, init_scale=prof.init_scale)
  n = prof.steps if steps is None else steps
  r = prof.recipe(layers)
  train = TrainConfig(steps=n, batch_size=prof.batch_size, lr=r.lr, warmup=min(r.warmup, int(n * r.warmup_frac)),
                      clip_norm=r.clip_norm, dtype=r.dtype, chunk=min(250, n), max_skipped=prof.max_skipped,
                      pool_size=pool_size, tail_frac=0.0 if pool_size else r.tail_frac, tail_scale=r.tail_scale)
  seeds = tuple(prof.seeds if seeds is None else seeds)
  extras = [f"mixed from {task.n_context_min}" if task.n_context_min else "",
            f"w0_prob={task.w0_prob}" if task.w0_prob else "", f"pool={pool_size}" if pool_size else ""]
  label = f"L={layers} d={task.d} N={task.n_context} σ={task.noise_std} {attention}{'+' + mlp if mlp else ''}" \
      + "".join(f" {e}" for e in extras if e) + ": "
  params, losses = cache.cached_fit(task, model, train, seeds, cache_dir, label)
  return Trained(task, model, train, seeds, params, losses)


def seed_params(params: Params, i: int) -> Params:
  return jax.tree_util.tree_map(lambda a: a[i], params)


def stack_params(models: list[Params]) -> Params:
  """Models → their parameters on a leading axis [P, ...] (the inverse of seed_params), for one
  paired evaluation of them all."""
  return jax.tree_util.tree_map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *models)
