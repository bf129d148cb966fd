"""Training adequacy: whether each seed's fit converged, judged from its training alone (docs/theory.md §14).

Per seed, from the training losses and the final parameters, never from what a study measures:
  train_loss        the median per-step training loss over the last TAIL_FRAC of the steps (a median: from
                    L = 3 on, a rare batch holding an extreme task carries a step's mean loss to 10^4 and
                    beyond, and the tail's mean with it);
  train_rel_change  the drop between the window medians of that tail's two halves, relative to the second:
                    a fit still descending;
  grad_norm         the full-batch gradient of the training objective on a fixed batch, relative
                    (‖∇ℓ‖·‖θ‖/ℓ: the % change of ℓ per % change of θ along the gradient), its sampling
                    noise removed (grad_norm). It decides only where it is exact, a pool (the whole
                    objective): on fresh tasks its estimate is as large as the gradient of a settled fit;
  seed_gap          the seed's train_loss over the median seed's of the same configuration, minus 1. Seeds
                    of one configuration train on one objective (fresh tasks), so they restart the same fit:
                    a stall on a plateau or at a saddle of the product W_V·W_Kᵀ·W_Q, flat and with a small
                    gradient, is seen only as a loss far above what other initialisations reach.
A seed whose gap exceeds SEED_GAP_TOL is trained again from RESTARTS new initial weights (train.init_key:
same data) and keeps the fit with the lowest tail loss — the usual practice for non-convex fits; its
restart index is recorded. Pool-trained seeds have an objective each (their own pool): no gap, no restart.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import precision, tasks
from lintheory.core.model import ModelConfig, Params
from lintheory.core.tasks import TaskConfig
from lintheory.run import train
from lintheory.run.train import TrainConfig

# Raised whenever the diagnostic of the same trained model changes: the model cache keeps each model's
# diagnostic with its VERSION and recomputes it (diagnose, from the cached weights and losses) on a mismatch.
VERSION = 2
TAIL_FRAC = 0.1  # the share of the last steps the loss diagnostics read
# Cosine decay ends at lr/10, so a settled fit is flat over its tail up to the batches' noise: the halves'
# medians of settled default models differ by up to 13 % (L = 2, heavy-tailed batch losses).
REL_CHANGE_TOL = 0.25
# Settled seeds of one configuration end within 20 % of the median seed (default profile, L <= 4); the
# stalls seen end 80 % (one layer, anisotropic) to 570 % (L = 3) above it.
SEED_GAP_TOL = 0.5
# On a pool the gradient is exact: a fit whose loss still falls by more than 10 % for a 1 % move of its
# weights along the gradient is not at a stationary point.
GRAD_TOL = 10.0
RESTARTS = 3  # new initial weights tried for a seed whose gap exceeds SEED_GAP_TOL (one round)
OBJECTIVE_TASKS = 8192  # the fixed batch of the gradient (fresh-task training); a pool is used whole
OBJECTIVE_KEY = 27_182  # its tasks, disjoint from every training stream
SPLITS = 4  # the batch's parts whose gradients' cross products estimate ‖∇ℓ‖² free of sampling noise


class Seed(NamedTuple):
  train_loss: float  # median training loss over the last TAIL_FRAC of the steps
  train_rel_change: float  # (first half − second half) / second half of that tail, window medians
  grad_norm: float  # ‖∇ℓ‖·‖θ‖/ℓ on the objective batch (exact on a pool, sampling noise removed otherwise)
  exact_grad: bool  # grad_norm is exact (a pool): it decides
  seed_gap: float | None  # train_loss / the median seed's − 1; None for pool training or a single seed
  restarts: int  # the restart whose fit was kept (0: the seed's own initial weights)

  @property
  def reason(self) -> str | None:
    """Why the seed did not converge (None: it did)."""
    return reason(self.train_rel_change, self.grad_norm if self.exact_grad else None, self.seed_gap)

  @property
  def converged(self) -> bool:
    return self.reason is None


def reason(rel_change: float, grad_norm: float | None, seed_gap: float | None) -> str | None:
  """The thresholds applied to a seed's recorded numbers (None: not measured, or not decisive); None when
  the seed converged. The table's rows are read back through this function."""
  out = []
  if not rel_change <= REL_CHANGE_TOL:
    out.append(f"still descending ({100 * rel_change:.3g} % over the last {TAIL_FRAC:.0%} of steps)")
  if grad_norm is not None and not grad_norm <= GRAD_TOL:
    out.append(f"relative gradient {grad_norm:.3g} > {GRAD_TOL:g}")
  if seed_gap is not None and not seed_gap <= SEED_GAP_TOL:
    out.append(f"stalled: training loss {100 * seed_gap:.3g} % above the median seed's")
  return "; ".join(out) or None


def tail(losses_SN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per seed: the tail's median loss and its relative change between the two halves (window medians)."""
  # A step skipped for a non-finite loss (TrainConfig.max_skipped) records NaN or ±inf: its loss is +inf,
  # so a median is +inf only where more than half of the steps overflowed, and an undefined change
  # (inf − inf) counts as still moving.
  losses = np.asarray(losses_SN, np.float64)
  losses = np.where(np.isfinite(losses), losses, np.inf)
  n = max(2, int(round(TAIL_FRAC * losses.shape[1])))
  first, second = (np.median(h, axis=1) for h in np.array_split(losses[:, -n:], 2, axis=1))
  with np.errstate(invalid="ignore"):
    change = np.nan_to_num((first - second) / second, nan=np.inf, posinf=np.inf, neginf=-np.inf)
  return np.median(losses[:, -n:], axis=1), change


def seed_gaps(tail_loss_S: np.ndarray) -> np.ndarray:
  """Each seed's tail loss over the median seed's, minus 1 (+inf for a seed whose loss is +inf)."""
  with np.errstate(invalid="ignore"):
    gaps = np.asarray(tail_loss_S, np.float64) / np.median(tail_loss_S) - 1
  return np.nan_to_num(gaps, nan=np.inf, posinf=np.inf, neginf=-np.inf)


def fit(task: TaskConfig, model: ModelConfig, cfg: TrainConfig, seeds,
        on_chunk: Callable | None = None) -> tuple[train.TrainResult, np.ndarray]:
  """train.fit, then every seed whose gap exceeds SEED_GAP_TOL trained again from RESTARTS new initial
  weights (vmapped together), keeping per seed the fit with the lowest tail loss → (the result with the
  kept fits, restart index per seed [S])."""
  res = train.fit(task, model, cfg, seeds, on_chunk=on_chunk)
  restarts = np.zeros(len(seeds), int)
  if res.diverged or len(seeds) < 2 or cfg.pool_size:
    return res, restarts
  loss, _ = tail(res.losses)
  stalled = np.flatnonzero(seed_gaps(loss) > SEED_GAP_TOL)
  if stalled.size == 0:
    return res, restarts
  again = [(k, r) for k in stalled for r in range(1, RESTARTS + 1)]
  more = train.fit(task, model, cfg, [seeds[k] for k, _ in again], on_chunk=on_chunk,
                   restarts=[r for _, r in again])
  if more.diverged:  # the originals stand; their gap is recorded
    return res, restarts
  params = {n: np.array(v) for n, v in res.params.items()}
  losses = np.array(res.losses)
  more_loss, _ = tail(more.losses)
  for j, (k, r) in enumerate(again):
    if more_loss[j] < tail(losses[k:k + 1])[0][0]:
      for n in params:
        params[n][k] = np.asarray(more.params[n][j])
      losses[k], restarts[k] = more.losses[j], r
  return res._replace(params=params, losses=losses, seconds=res.seconds + more.seconds), restarts


def objective_batches(task: TaskConfig, cfg: TrainConfig, seeds) -> list[tasks.Batch]:
  """Per seed, the batch the gradient is measured on, in float64: its pool, or OBJECTIVE_TASKS tasks drawn
  as training draws them (with the recipe's scaled demonstrations), the same for every seed."""
  wide = dataclasses.replace(cfg, dtype="float64", batch_size=OBJECTIVE_TASKS)
  if cfg.pool_size:
    return [train.task_pool(k, task, wide) for k in train.seed_keys(seeds, 2)]
  return [train.draw(jax.random.key(OBJECTIVE_KEY), task, wide, None)] * len(seeds)


def grad_norm(params: Params, batch: tasks.Batch, model: ModelConfig, exact: bool) -> float:
  """‖∇ℓ‖·‖θ‖/ℓ in float64. exact (a pool, the whole objective): the batch's gradient; otherwise ‖∇ℓ‖² is the
  mean cross product of SPLITS independent parts' gradients, unbiased for the population's (clipped at 0)."""
  theta = {n: jnp.asarray(v, jnp.float64) for n, v in params.items()}
  value, g_sq, norm = (float(x) for x in _gradient(theta, batch, model, exact))
  out = math.sqrt(max(g_sq, 0.0)) * norm / value if math.isfinite(value) and math.isfinite(g_sq) else math.inf
  return out if math.isfinite(out) else math.inf  # an overflowed objective or gradient: not stationary


@functools.partial(jax.jit, static_argnames=("model", "exact"))
def _gradient(theta: Params, batch: tasks.Batch, model: ModelConfig, exact: bool):
  """(ℓ, the estimate of ‖∇ℓ‖², ‖θ‖) of grad_norm."""
  loss = train.objective(model)
  flat = lambda g: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g)])
  if exact:
    g_sq = jnp.sum(flat(jax.grad(loss)(theta, batch)) ** 2)
  else:
    parts = jax.tree.map(lambda a: a[:a.shape[0] // SPLITS * SPLITS].reshape(SPLITS, -1, *a.shape[1:]), batch)
    G_SP = jax.vmap(lambda b: flat(jax.grad(loss)(theta, b)))(parts)
    cross = G_SP @ G_SP.T
    g_sq = (jnp.sum(cross) - jnp.trace(cross)) / (SPLITS * (SPLITS - 1))
  return loss(theta, batch), g_sq, jnp.linalg.norm(flat(theta))


def diagnose(task: TaskConfig, model: ModelConfig, cfg: TrainConfig, seeds, params: Params,
             losses_SN: np.ndarray, restarts=None) -> tuple[Seed, ...]:
  """The diagnostic of every seed of one trained configuration (params and losses with a seed axis)."""
  seeds = tuple(seeds)
  cfg = train.resolve(cfg, model)
  loss, change = tail(losses_SN)
  gaps = seed_gaps(loss) if len(seeds) >= 2 and not cfg.pool_size else [None] * len(seeds)
  restarts = np.zeros(len(seeds), int) if restarts is None else np.asarray(restarts)
  with precision.x64():
    batches = objective_batches(task, cfg, seeds)
    grads = [grad_norm({n: v[k] for n, v in params.items()}, batches[k], model, bool(cfg.pool_size))
             for k in range(len(seeds))]
  return tuple(Seed(float(loss[k]), float(change[k]), grads[k], bool(cfg.pool_size),
                    None if gaps[k] is None else float(gaps[k]), int(restarts[k])) for k in range(len(seeds)))
