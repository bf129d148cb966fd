"""The pruning sweep's evaluation in blocks of configurations (run/sweep.py's engine; Algorithm 1's too).

Configurations first pruned at layer k share the unpruned model's state there (core/from_layer.py);
one jitted program per k maps over blocks of equal width, `lanes` configurations vmapped at a time,
and returns per configuration × seed the ICL error, the trajectory norms, the change of ŵ_t against
the unpruned model (configuration 0 of every block) and the bound terms (core/bounds.py).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import implicit, prune, tasks
from lintheory.core.from_layer import base_of, predict_from, trajectory_from
from lintheory.core.model import ModelConfig, Params, forward
from lintheory.core.tasks import TaskConfig


def full_ranks(params: Params) -> dict[str, int]:
  """Every matrix's full rank min(m, n) (its unpruned kept rank)."""
  return {name: min(W.shape[-2:]) for name, W in params.items()}


def svd_of(params_S: Params, names) -> dict:
  """name → (U, s, Vᵀ) of the named matrices, the exact SVD every truncation masks."""
  return {name: jnp.linalg.svd(params_S[name], full_matrices=False) for name in names}


def first_pruned_layer(keep: dict, full: dict, n_layers: int) -> int:
  """The first layer any matrix keeps less than its full rank in; L − 1 when none does."""
  pruned = [l for l in range(n_layers) if any(keep[n][l] < full[n] for n in keep)]
  return pruned[0] if pruned else n_layers - 1


def loop_metrics(p: Params, eval_b: tasks.Batch, ana_b: tasks.Batch, model_cfg: ModelConfig,
                 task_cfg: TaskConfig, with_bounds: bool) -> dict:
  """The plain evaluation: prune-then-forward on every task (the loop's, and the reference)."""
  y_hat, _ = forward(p, tasks.batch_tokens(eval_b), model_cfg)
  traj = implicit.trajectory(p, tasks.batch_tokens(ana_b), model_cfg)
  return summary(p, tasks.normalised_error((y_hat - eval_b.y_q) ** 2, task_cfg.d),
                 (traj.delta_W, traj.G, traj.w_hat), ana_b, model_cfg, task_cfg, with_bounds)


def summary(p, err_B, traj, ana_b, model_cfg, task_cfg, with_bounds) -> dict:
  """One configuration's row: the ICL error's mean, standard error and median over the tasks err_B, the
  mean ‖ΔW_t‖_F and ‖G_t‖_F of traj = (ΔW, G, ŵ) [L, B, …], ŵ itself (for `compare`), the bound terms."""
  dW, G, w_hat = traj
  # A prediction that overflowed (inf − inf inside the forward pass gives NaN) has error +inf: the median
  # is then +inf only where more than half of the tasks overflowed (docs/theory.md §14).
  err_B = jnp.where(jnp.isnan(err_B), jnp.inf, err_B)
  fro = lambda A: jnp.mean(jnp.sqrt(jnp.sum(A**2, (-2, -1))), axis=1)
  out = {"icl_error": jnp.mean(err_B), "icl_error_se": jnp.std(err_B, ddof=1) / math.sqrt(err_B.shape[0]),
         "icl_error_median": jnp.median(err_B), "dW_norm": fro(dW), "G_norm": fro(G), "w_hat": w_hat}
  if with_bounds:
    from lintheory.core import bounds
    out.update({f"bd_{k}": v for k, v in bounds.sweep_metrics(p, ana_b, model_cfg, task_cfg).items()})
  return out


def compare(m: dict, w_hat0: jax.Array) -> dict:
  """Replace ŵ_t [L, B, d] by its change against the unpruned ŵ_t⁰: the median over tasks of
  ‖ŵ_t − ŵ_t⁰‖ / ‖ŵ_t⁰‖ (a median, because a few tasks' ŵ blow up and the analysis tasks are few;
  a task whose ŵ_t overflowed counts as an infinite change) and the largest |ŵ_t − ŵ_t⁰| (exactly 0
  for t before the pruned layer)."""
  m = dict(m)
  w = m.pop("w_hat")
  diff = w - w_hat0
  change = jnp.sqrt(jnp.sum(diff**2, -1))
  rel = jnp.where(change == 0, 0.0, change / jnp.sqrt(jnp.sum(w_hat0**2, -1)))  # 0, not 0/0, where unchanged
  m["w_hat_rel"] = jnp.median(jnp.where(jnp.isnan(rel), jnp.inf, rel), axis=1)
  m["w_hat_maxabs"] = jnp.max(jnp.abs(diff), (1, 2))
  return m


def lanes_for(lanes: int, block_size: int) -> int:
  """Configurations vmapped together: 1 on CPU (a sequential lax.map is fastest there: the tiny
  per-task matmuls do not batch), the block elsewhere."""
  if lanes:
    return lanes
  return 1 if jax.default_backend() == "cpu" else block_size


def _over_configs(f, xs, lanes: int):
  return jax.lax.map(f, xs, batch_size=lanes if lanes > 1 else None)


def block_width(group_sizes, most: int, lanes: int = 0) -> int:
  """One width for every block of a call: the largest group split evenly into the fewest blocks of
  at most `most`, rounded up to a multiple of lanes (lanes = 0: no rounding)."""
  n = max(group_sizes, default=1) or 1
  w = math.ceil(n / math.ceil(n / most))
  return min(most, math.ceil(w / lanes) * lanes) if lanes else w


def chunks(items: list, width: int) -> list[list]:
  """items in blocks of `width`, the last padded with copies of its last item (one compiled shape)."""
  out = [items[i:i + width] for i in range(0, len(items), width)]
  return [c + [c[-1]] * (width - len(c)) for c in out]


@functools.lru_cache(maxsize=64)  # a second sweep of the same shapes in one process does not recompile
def make_block_fn(model_cfg: ModelConfig, task_cfg: TaskConfig, with_bounds: bool, lanes: int, k: int) -> Callable:
  """jit(vmap over seeds of a map over configurations first pruned at layer k, `lanes` vmapped at
  a time).

  Arguments: params, svd (seed axis), keeps (name → [C, L]), base_of the held-out tasks, their y_q,
  base_of the analysis tasks (with analysis=True), the analysis tasks.
  Configuration 0 must be the unpruned one: it is the reference of ŵ_t.
  """
  N = task_cfg.n_context

  def one(params, svd, keep, eval_base, y_q, ana_base, ana_b):
    p = prune.masked_params(params, svd, keep)
    err = tasks.normalised_error((predict_from(p, eval_base, k, model_cfg, N) - y_q) ** 2, task_cfg.d)
    traj = trajectory_from(p, ana_base, k, model_cfg, N)
    return summary(p, err, traj, ana_b, model_cfg, task_cfg, with_bounds)

  def block_fn(params, svd, keeps, eval_base, y_q, ana_base, ana_b):
    m = _over_configs(lambda kp: one(params, svd, kp, eval_base, y_q, ana_base, ana_b), keeps, lanes)
    # The reference is configuration 0 of the same program, so layers before the pruned one
    # compare bit-exactly (the same inputs through the same compiled ops).
    return jax.vmap(compare, in_axes=(0, None))(m, m["w_hat"][0])

  return jax.jit(jax.vmap(block_fn, in_axes=(0, 0, None, 0, 0, 0, 0)))


@functools.lru_cache(maxsize=64)
def _errors_fn(model_cfg: ModelConfig, lanes: int, N: int, k: int) -> Callable:
  def per_seed(params, svd, keeps, base, y_q):
    def one(kp):
      y_hat = predict_from(prune.masked_params(params, svd, kp), base, k, model_cfg, N)
      return tasks.normalised_error((y_hat - y_q) ** 2, model_cfg.d)
    return _over_configs(one, keeps, lanes)
  return jax.jit(jax.vmap(per_seed, in_axes=(0, 0, None, 0, 0)))


@functools.lru_cache(maxsize=16)
def _base_fn(model_cfg: ModelConfig, analysis: bool) -> Callable:
  return jax.jit(jax.vmap(lambda p, b: base_of(p, tasks.batch_tokens(b), model_cfg, analysis)))


def base_states(params_S: Params, batch_S: tasks.Batch, model_cfg: ModelConfig, analysis: bool = False) -> dict:
  """base_of for every seed's model and tasks, stacked [S, ...] (computed once per sweep)."""
  return _base_fn(model_cfg, analysis)(params_S, batch_S)


def task_errors(params_S: Params, model_cfg: ModelConfig, keeps: dict, batch_S: tasks.Batch,
                block_size: int = 32, lanes: int = 0) -> np.ndarray:
  """Per-task normalised squared errors of C configurations → [S, C, B] (float64 numpy).

  keeps: name → int [C, L], the kept rank of every matrix in every layer (a full rank keeps the
  matrix bit-exact). Each configuration reuses the base model's state at its first pruned layer;
  configurations are evaluated in groups of one first pruned layer, blocks of at most block_size.
  """
  names = sorted(keeps)
  p0 = jax.tree_util.tree_map(lambda a: a[0], params_S)
  full, L = full_ranks(p0), p0["W_Q"].shape[0]
  keeps = {n: np.asarray(keeps[n], np.int32) for n in names}
  C = keeps[names[0]].shape[0]
  k_C = np.asarray([first_pruned_layer({n: keeps[n][c] for n in names}, full, L) for c in range(C)], np.int32)
  groups = {k: list(np.flatnonzero(k_C == k)) for k in sorted(set(k_C.tolist()))}
  lanes = lanes_for(lanes, block_size)
  width = block_width([len(g) for g in groups.values()], block_size, lanes if lanes > 1 else 0)
  svd = svd_of(params_S, names)
  base = base_states(params_S, batch_S, model_cfg)
  out = np.empty((params_S["W_Q"].shape[0], C, batch_S.y_q.shape[-1]), np.float64)
  for k, idx in groups.items():
    fn = _errors_fn(model_cfg, lanes, batch_S.X.shape[-2], k)
    for block in chunks(idx, width):
      e = np.asarray(fn(params_S, svd, {n: jnp.asarray(keeps[n][block]) for n in names}, base, batch_S.y_q),
                     np.float64)
      out[:, block] = e  # a padded copy writes its configuration's row again
  return out
