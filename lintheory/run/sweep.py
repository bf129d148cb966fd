"""Vectorised, resumable pruning sweeps: layers × modules × rates (or ranks) × seeds.

Every matrix is decomposed once (exact SVD); a configuration is a kept rank per matrix and layer,
and truncation is a mask on the singular values (docs/theory.md §7). Unpruned matrices are passed
through bit-exact (`jnp.where`), and configurations that keep the same ranks (e.g. every ξ that
leaves rank 0 of an 11×11 matrix) are evaluated once.
Work is shared across configurations (core/from_layer.py): the unpruned model's inputs to each layer
are computed once per seed, and a configuration first pruned at layer k continues from them at layer
k (the trajectory before layer k is the base model's); run/sweep_eval.py runs the blocks. Configurations are grouped by k, which is static in the compiled program (one program per
k: only layers k … L−1 are in it); within a group one jitted function maps over blocks of equal
width (the last padded); results equal prune-then-forward to round-off.

Per configuration × seed (one CSV row): the ICL error on held-out tasks (normalised squared
error, docs/theory.md §1: mean, standard error, median), for every layer t (from 0, like `layer`;
ŵ_t is the implicit predictor after layer t, the paper's ŵ_{t+1}) the relative change
‖ŵ_t − ŵ_t⁰‖/‖ŵ_t⁰‖ and the largest |ŵ_t − ŵ_t⁰| against the unpruned model, ‖ΔW_t‖_F and
‖G_t‖_F (docs/theory.md §5, means over tasks), and lintheory.core.bounds.sweep_metrics (the bound
terms and the measured gap, docs/theory.md §6) when that module is present.
Results: <out>/sweep.csv (tidy) and <out>/sweep.json (metadata), rewritten atomically after each
block; a restarted sweep skips the configurations already in the CSV.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import precision, prune, tasks
from lintheory.run import io
from lintheory.core.model import ModelConfig, Params, check_ints
from lintheory.core.tasks import TaskConfig
from lintheory.run.sweep_files import SweepResult, columns, fingerprint, read_dir, row_key, write_csv
from lintheory.run.sweep_eval import (base_states, block_width, chunks, compare, first_pruned_layer, full_ranks,
                                      lanes_for, loop_metrics, make_block_fn, svd_of)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  layers: tuple[int, ...] | None = None  # layers to prune, one at a time (from 0); None = all
  modules: tuple[str, ...] = ("attn", "q", "k", "v")  # prune.MODULES names
  rates: tuple[float, ...] = prune.PAPER_RATES  # clipping rates ξ ∈ [0, 1)
  ranks: tuple[int, ...] = ()  # kept ranks r (rows with mode "rank"); both lists may be given
  n_eval: int = 2048  # held-out tasks per seed for the ICL error
  n_analysis: int = 128  # tasks per seed for ŵ_t, ‖ΔW_t‖, ‖G_t‖ and the bound terms
  eval_seed: int = tasks.EVAL_SEED  # key of the held-out tasks (folded with the model seed)
  block: int = 16  # distinct configurations per jitted call (the first lane is the unpruned model)
  lanes: int = 0  # configurations vmapped together inside a call; 0 = auto: 1 on CPU (a sequential
  #   lax.map is fastest there: the tiny per-task matmuls do not batch), the whole block elsewhere
  bounds: bool = True  # add the bound-term columns of core.bounds.sweep_metrics

  def __post_init__(self):
    check_ints(self, {"n_eval": 2, "n_analysis": 2, "block": 2, "lanes": 0})
    if self.lanes and self.block % self.lanes:
      raise ValueError(f"block ({self.block}) must be a multiple of lanes ({self.lanes})")
    if not self.modules:
      raise ValueError("modules must name at least one module")
    for m in self.modules:
      if m not in prune.MODULES:
        raise ValueError(f"module must be one of {tuple(prune.MODULES)}, got {m!r}")
    if not self.rates and not self.ranks:
      raise ValueError("give at least one clipping rate (rates) or rank (ranks)")
    for xi in self.rates:
      prune.rank_for_rate(1, 1, xi)  # validates ξ ∈ [0, 1)
    for r in self.ranks:
      if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
        raise ValueError(f"rank must be an integer >= 0, got {r!r}")


class Config(NamedTuple):
  layer: int  # pruned layer (from 0)
  module: str  # prune.MODULES name
  mode: str  # "rate" or "rank"
  value: float | int  # ξ or r


# --- configurations ------------------------------------------------------------------------


def configurations(cfg: SweepConfig, params: Params) -> list[Config]:
  """Every (layer, module, rate or rank), validated against this model (params without seed axis)."""
  L = params["W_Q"].shape[0]
  layers = prune.layer_list(tuple(range(L)) if cfg.layers is None else cfg.layers, L)
  for m in cfg.modules:
    prune.module_names(params, m)
  out = []
  for layer in layers:
    for m in cfg.modules:
      out += [Config(layer, m, "rate", float(xi)) for xi in cfg.rates]
      out += [Config(layer, m, "rank", int(r)) for r in cfg.ranks]
  for c in out:  # validate ranks against every matrix of the module
    if c.mode == "rank":
      for name in prune.module_names(params, c.module):
        prune.kept_rank(params[name].shape, rank=c.value)
  return out


def keep_pattern(c: Config, params: Params) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """The kept rank of every matrix in every layer under configuration c (hashable)."""
  L = params["W_Q"].shape[0]
  names = prune.module_names(params, c.module)
  pattern = []
  for name, k in sorted(full_ranks(params).items()):
    ks = [k] * L
    if name in names:
      kw = {"xi": c.value} if c.mode == "rate" else {"rank": c.value}
      ks[c.layer] = prune.kept_rank(params[name].shape, **kw)
    pattern.append((name, tuple(ks)))
  return tuple(pattern)


def kept_rank_of(c: Config, params: Params) -> int:
  """The smallest rank kept among the module's matrices (they all share it for D×D blocks)."""
  pat = dict(keep_pattern(c, params))
  return min(pat[name][c.layer] for name in prune.module_names(params, c.module))


# --- tasks ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)  # one compilation per task setting and shape, none per call
def _sampler(task_cfg: TaskConfig, n_tasks: int, n_context: int | None, dtype) -> Callable:
  return jax.jit(jax.vmap(lambda key: tasks.sample(key, task_cfg, n_tasks, n_context, dtype)))


def sample_stacked(keys_S: jax.Array, task_cfg: TaskConfig, n_tasks: int, n_context: int | None = None,
                   dtype=jnp.float32) -> tasks.Batch:
  """tasks.sample for each key of keys_S, jitted and stacked [S, ...] (the same draws as eager)."""
  return _sampler(task_cfg, int(n_tasks), n_context, jnp.dtype(dtype))(keys_S)


def batches(task_cfg: TaskConfig, seeds, cfg: SweepConfig, dtype) -> tuple[tasks.Batch, tasks.Batch]:
  """Held-out and analysis tasks per seed, stacked [S, ...] (the same for every configuration)."""
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(cfg.eval_seed), s))(jnp.asarray(seeds, jnp.uint32))
  fold = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
  return (sample_stacked(fold(0), task_cfg, cfg.n_eval, dtype=dtype),
          sample_stacked(fold(1), task_cfg, cfg.n_analysis, dtype=dtype))


def default_modules(params: Params) -> list[str]:
  """The prune.MODULES the model has, the whole attention first ("all", their union, left out)."""
  return [m for m in sorted(prune.MODULES, key=lambda m: m != "attn")
          if m != "all" and any(n in params for n in prune.MODULES[m])]


def run(params_S: Params, seeds, model_cfg: ModelConfig, task_cfg: TaskConfig, cfg: SweepConfig,
        out=None, on_block: Callable[[int, int], None] | None = None, progress: bool = True) -> SweepResult:
  """The sweep for models params_S (leading seed axis, one per entry of seeds).

  With `out`, rows already in out/sweep.csv are kept and skipped, and the CSV and JSON are
  rewritten atomically after every block; on_block(done, total) runs after each block.
  The sweep runs in the weights' dtype (core.precision.for_dtype), whatever the caller's x64 mode.
  """
  with precision.for_dtype(np.dtype(params_S["W_Q"].dtype).name):
    return _run(params_S, seeds, model_cfg, task_cfg, cfg, out, on_block, progress)


def _run(params_S, seeds, model_cfg, task_cfg, cfg, out, on_block, progress) -> SweepResult:
  seeds = tuple(int(s) for s in seeds)
  if params_S["W_Q"].shape[0] != len(seeds):
    raise ValueError(f"params have {params_S['W_Q'].shape[0]} seeds on axis 0 but seeds has {len(seeds)}")
  p0 = jax.tree_util.tree_map(lambda a: a[0], params_S)
  confs = configurations(cfg, p0)
  L = p0["W_Q"].shape[0]
  with_bounds = cfg.bounds
  dtype = params_S["W_Q"].dtype
  eval_b, ana_b = batches(task_cfg, seeds, cfg, dtype)
  bound_keys = ()
  if with_bounds:
    from lintheory.core import bounds
    shapes = jax.eval_shape(lambda p, b: bounds.sweep_metrics(p, b, model_cfg, task_cfg), p0,
                            jax.tree_util.tree_map(lambda a: a[0], ana_b))
    bound_keys = tuple(f"bd_{k}" for k in shapes)
  cols = columns(L, bound_keys)
  meta = {"model": dataclasses.asdict(model_cfg), "task": dataclasses.asdict(task_cfg),
          "sweep": dataclasses.asdict(cfg), "seeds": list(seeds), "params_fingerprint": fingerprint(params_S),
          "columns": cols, "bounds": bool(with_bounds),
          "rank_rule": "r = floor(min(m, n)·(1 − ξ) + 1e-9) (prune.rank_for_rate)",
          "icl_error": "squared error / d on n_eval held-out tasks per seed (zero predictor = 1)",
          "layer_index": "layer and the _t suffixes count from 0; _t is after layer t (paper's t+1)"}
  done: dict[tuple, dict] = {}
  csv_path = json_path = None
  if out is not None:
    csv_path, json_path = Path(out) / "sweep.csv", Path(out) / "sweep.json"
    old, rows = read_dir(out)
    if csv_path.exists():
      strip = lambda m: {**m, "sweep": {k: v for k, v in (m.get("sweep") or {}).items() if k != "block"}}
      old, new = strip(old), strip(meta)
      for k in ("model", "task", "sweep", "seeds", "params_fingerprint", "columns"):
        if io.jsonable(old.get(k)) != io.jsonable(new[k]):
          raise ValueError(f"out={out} holds a different sweep ({k} differs); use a new --out directory")
      done = {row_key(r): r for r in rows}

  want = {row_key({"seed": s, "layer": c.layer, "module": c.module, "mode": c.mode,
                   "xi": c.value, "rank": c.value}): (i, s, c)
          for i, c in enumerate(confs) for s in seeds}
  todo = [c for c in dict.fromkeys(c for k, (_, _, c) in want.items() if k not in done)]
  patterns = {c: keep_pattern(c, p0) for c in confs}
  full = keep_pattern(Config(0, cfg.modules[0], "rank", min(p0["W_Q"].shape[-2:])), p0)
  names = sorted({n for m in cfg.modules for n in prune.module_names(p0, m)})
  ranks = full_ranks(p0)
  first = lambda pat: first_pruned_layer({n: ks for n, ks in pat if n in names}, ranks, L)
  # Grouped by the first pruned layer k (static in each compiled program); the unpruned model is
  # configuration 0 of every block, the reference its ŵ_t are compared with.
  groups: dict[int, list] = {}
  for pat in dict.fromkeys(patterns[c] for c in todo if patterns[c] != full):
    groups.setdefault(first(pat), []).append(pat)
  if not groups and any(patterns[c] == full for c in todo):
    groups = {L - 1: []}  # only the unpruned model is left to evaluate
  lanes = lanes_for(cfg.lanes, cfg.block)
  width = block_width([len(g) for g in groups.values()], cfg.block - 1)
  if lanes > 1:  # the block (unpruned lane included) must be a multiple of the lanes
    width = math.ceil((width + 1) / lanes) * lanes - 1
  plan = [(k, chunk) for k in sorted(groups) for chunk in (chunks(groups[k], width) if groups[k] else [[]])]
  n_blocks = len(plan)
  n_unique = sum(len(g) for g in groups.values()) + (full in {patterns[c] for c in todo})
  svd = svd_of(params_S, names)
  eval_base, ana_base = base_states(params_S, eval_b, model_cfg), base_states(params_S, ana_b, model_cfg, True)
  results: dict[tuple, dict] = {}
  t0 = time.perf_counter()

  def rows_for(c, s_idx, m):
    r = {"seed": seeds[s_idx], "layer": c.layer, "module": c.module, "mode": c.mode,
         "xi": c.value if c.mode == "rate" else "", "rank": kept_rank_of(c, p0)}
    for k, v in m.items():
      v = np.asarray(v[s_idx])
      if v.ndim == 0:
        r[k] = float(v)
      else:
        r.update({f"{k}_{t}": float(x) for t, x in enumerate(v)})
    return r

  def flush(complete: bool):
    if out is None:
      return
    rows = sorted(list(done.values()), key=lambda r: want[row_key(r)][0] * len(seeds) + seeds.index(r["seed"]))
    write_csv(csv_path, cols, rows)
    bad = sum(1 for r in rows if not all(math.isfinite(r[c]) for c in cols[6:] if r[c] is not None))
    io.write_json(json_path, {**meta, "rows": len(rows), "complete": complete, "nonfinite_rows": bad})

  for b, (k, chunk) in enumerate(plan):
    pats = [full] + chunk
    keeps = {name: jnp.asarray([dict(p)[name] for p in pats], jnp.int32) for name in names}
    fn = make_block_fn(model_cfg, task_cfg, with_bounds, lanes, k)
    m = jax.device_get(fn(params_S, svd, keeps, eval_base, eval_b.y_q, ana_base, ana_b))
    for j, pat in enumerate(pats):
      results.setdefault(pat, jax.tree_util.tree_map(lambda a: a[:, j], m))
    for c in todo:
      if patterns[c] in results:
        for si, s in enumerate(seeds):
          r = rows_for(c, si, results[patterns[c]])
          done.setdefault(row_key(r), r)
    flush(complete=False)
    if progress:
      io.progress(f"  sweep block {b + 1}/{n_blocks} ({n_unique} distinct configurations × {len(seeds)} seeds, "
                  f"{time.perf_counter() - t0:.1f} s)", final=b + 1 == n_blocks)
    if on_block is not None:
      on_block(b + 1, n_blocks)
  rows = sorted(done.values(), key=lambda r: want[row_key(r)][0] * len(seeds) + seeds.index(r["seed"]))
  flush(complete=True)
  meta = {**meta, "rows": len(rows), "complete": True}
  return SweepResult(rows, meta, n_unique, time.perf_counter() - t0)


# --- the straightforward loop (reference for tests and the benchmark) ----------------------


@functools.lru_cache(maxsize=16)
def _loop_metrics_fn(model_cfg: ModelConfig, task_cfg: TaskConfig, with_bounds: bool) -> Callable:
  return jax.jit(lambda p, e, a: loop_metrics(p, e, a, model_cfg, task_cfg, with_bounds))


def run_loop(params_S: Params, seeds, model_cfg: ModelConfig, task_cfg: TaskConfig, cfg: SweepConfig) -> SweepResult:
  """Prune with prune.prune, then evaluate with one jitted function, one configuration at a time."""
  seeds = tuple(int(s) for s in seeds)
  p0 = jax.tree_util.tree_map(lambda a: a[0], params_S)
  confs = configurations(cfg, p0)
  with_bounds = cfg.bounds
  eval_b, ana_b = batches(task_cfg, seeds, cfg, params_S["W_Q"].dtype)
  metrics = _loop_metrics_fn(model_cfg, task_cfg, with_bounds)
  t0 = time.perf_counter()
  rows = []
  for si, s in enumerate(seeds):
    p = jax.tree_util.tree_map(lambda a: a[si], params_S)
    e, a = (jax.tree_util.tree_map(lambda x: x[si], b) for b in (eval_b, ana_b))
    w_hat0 = metrics(p, e, a)["w_hat"]
    for c in confs:
      kw = {"xi": c.value} if c.mode == "rate" else {"rank": c.value}
      m = jax.device_get(compare(metrics(prune.prune(p, c.layer, c.module, **kw), e, a), w_hat0))
      r = {"seed": s, "layer": c.layer, "module": c.module, "mode": c.mode,
           "xi": c.value if c.mode == "rate" else "", "rank": kept_rank_of(c, p0)}
      for k, v in m.items():
        v = np.asarray(v)
        r.update({k: float(v)} if v.ndim == 0 else {f"{k}_{t}": float(x) for t, x in enumerate(v)})
      rows.append(r)
  order = {c: i for i, c in enumerate(confs)}
  rows.sort(key=lambda r: order[Config(r["layer"], r["module"], r["mode"],
                                       r["xi"] if r["mode"] == "rate" else r["rank"])] * len(seeds)
            + seeds.index(r["seed"]))
  return SweepResult(rows, {}, len(confs) * len(seeds), time.perf_counter() - t0)
