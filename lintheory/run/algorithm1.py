"""The paper's Algorithm 1, derivative-free choice of the clipping rate (docs/theory.md §8).

Data: each task's demonstrations are its context; a validation task set scores the candidates
and a disjoint test task set reports the chosen one. The paper picks the layer among the top-k
layers by condition number σ_max/σ_min of the module, the deepest of them, then the best ξ on the
validation set (ties to the smaller ξ). Our extension picks the best (layer, module, ξ) over all.

Candidates are kept ranks: every ξ keeps r = ⌊D(1 − ξ)⌋ of a D×D matrix, and a larger rank
always means a smaller ξ, so "paper rates plus all ranks" is the rank set {0, …, D} with ties
broken towards the larger rank (the smaller ξ). The evaluation is the sweep's (sweep_eval.task_errors):
one jitted call per block of configurations, SVD once per matrix, the unpruned model's state at
the pruned layer shared by every configuration of that layer, the last layer for the query only.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import prune, tasks
from lintheory.run import sweep, sweep_eval
from lintheory.core.model import ModelConfig, Params


def module_kappa(params: Params, module: str) -> np.ndarray:
  """σ_max/σ_min per layer of a module → [L]; for several matrices (attn), the worst (largest)."""
  kappa = prune.condition_numbers(params)
  names = prune.module_names(params, module)
  ks = np.stack([np.asarray(kappa[n]).reshape(kappa[n].shape[0], -1).max(-1) for n in names])
  return ks.max(0)


def condition_layer(kappa_L, top_k: int) -> int:
  """Among the top_k layers by condition number, the deepest (layers count from 0)."""
  kappa_L = np.asarray(kappa_L, np.float64)
  if kappa_L.ndim != 1 or kappa_L.size == 0 or np.any(np.isnan(kappa_L)):
    raise ValueError(f"kappa_L must be a non-empty vector without NaN, got {kappa_L!r}")
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= kappa_L.size:
    raise ValueError(f"top_k must be an integer in [1, {kappa_L.size}], got {top_k!r}")
  order = np.argsort(-kappa_L, kind="stable")  # ties: the shallower first, as any fixed rule
  return int(np.max(order[:top_k]))


def select(val_err, xi) -> int:
  """Index of the candidate with the lowest validation error, ties to the smaller ξ."""
  val_err, xi = np.asarray(val_err, np.float64), np.asarray(xi, np.float64)
  if val_err.ndim != 1 or val_err.shape != xi.shape or val_err.size == 0:
    raise ValueError(f"val_err and xi must be vectors of the same non-zero length, got {val_err.shape}, {xi.shape}")
  if np.any(np.isnan(xi)):
    raise ValueError("xi must not contain NaN")
  err = np.where(np.isnan(val_err), np.inf, val_err)  # a NaN score never wins
  order = np.argsort(xi, kind="stable")
  return int(order[np.argmin(err[order])])


def xi_for_rank(r: int, k: int) -> float:
  """The largest clipping rate that keeps rank r of a matrix with min(m, n) = k: 1 − r/k.

  Rank r is kept for ξ ∈ (1 − (r+1)/k, 1 − r/k], so a larger rank always means a smaller ξ, which
  is all the tie rule needs. For r = 0 the value 1 is not a valid rate (rank 0 is kept by every
  ξ > 1 − 1/k): there it only orders the candidates.
  """
  if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r <= k:
    raise ValueError(f"rank must be an integer in [0, {k}], got {r!r}")
  return 1.0 - r / k


def paper_ranks(k: int, rates: Sequence[float] = prune.PAPER_RATES) -> tuple[int, ...]:
  """The distinct ranks the paper's rates keep for a k×k matrix, descending."""
  return tuple(sorted({prune.rank_for_rate(k, k, xi) for xi in rates}, reverse=True))


class Configs(NamedTuple):
  layer: np.ndarray  # [C] pruned layer (−1: unpruned)
  module: list  # [C] module name ("none" for unpruned)
  rank: np.ndarray  # [C] kept rank
  keep: dict  # name → int [C, L] kept rank per matrix and layer


def all_configs(params: Params, modules: Sequence[str]) -> Configs:
  """The unpruned model (index 0), then every (layer, module, rank < full) (params without seed axis)."""
  L = params["W_Q"].shape[0]
  full = sweep_eval.full_ranks(params)
  layer, module, rank, keeps = [-1], ["none"], [min(full.values())], [dict(full)]
  for l in range(L):
    for m in modules:
      names = prune.module_names(params, m)
      k = min(full[n] for n in names)
      for r in range(k):
        layer.append(l), module.append(m), rank.append(r)
        keeps.append({**full, **{n: r for n in names}, "_layer": l})
  keep = {}
  for name, k in full.items():
    arr = np.full((len(keeps), L), k, np.int32)
    for c, kp in enumerate(keeps):
      if "_layer" in kp:
        arr[c, kp["_layer"]] = kp[name]
    keep[name] = arr
  return Configs(np.asarray(layer), module, np.asarray(rank), keep)


def config_errors(params_S: Params, model_cfg: ModelConfig, configs: Configs, batch_S: tasks.Batch,
                  block_size: int = 32) -> np.ndarray:
  """Per-task normalised errors of every configuration → [S, C, B] (float64 numpy), by the sweep's
  evaluation (sweep_eval.task_errors: the base model's state at the pruned layer is shared)."""
  return sweep_eval.task_errors(params_S, model_cfg, configs.keep, batch_S, block_size=block_size)


def stacked_batches(task_cfg: tasks.TaskConfig, seeds, n_tasks: int, key_seed: int, n_context: int | None = None,
                    dtype=jnp.float32) -> tasks.Batch:
  """One task set per model seed, stacked [S, ...]; key_seed separates validation from test."""
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(key_seed), s))(jnp.asarray(seeds, jnp.uint32))
  return sweep.sample_stacked(keys, task_cfg, n_tasks, n_context, dtype)


class Choice(NamedTuple):
  index: int  # configuration index chosen
  val: float  # its validation error
  test: float  # its test error


def choose(configs: Configs, val_C, test_C, mask) -> Choice:
  """Best validation error among configs[mask] (ties to the smaller ξ, i.e. the larger rank)."""
  idx = np.flatnonzero(mask)
  if idx.size == 0:
    raise ValueError("mask selects no configuration")
  k = max(int(configs.rank.max()), 1)
  xi = np.array([0.0 if configs.layer[i] < 0 else xi_for_rank(int(configs.rank[i]), k) for i in idx])
  j = idx[select(np.asarray(val_C)[idx], xi)]
  return Choice(int(j), float(val_C[j]), float(test_C[j]))
