"""The paper's per-task pruning protocol as pure functions (docs/theory.md §8, §12).

Every task has ONE fixed prompt, V validation queries and test queries (or, for linear attention, its
exact population error). The candidates are the unpruned model and every edit family × module × layer
× distinct kept rank (core.edits); every candidate is evaluated on every task, and per task Algorithm 1
keeps the candidate with the lowest validation error (ties to the smaller ξ). Arrays carry a seed axis
S after the candidate axis C: params_CS name → [C, S, ...], errors [C, S, B, ...].
For ŷ = ŵ·x (linear attention, §5) the validation error is a quadratic form in ŵ − w and the test error
is exact: (ŵ − w)ᵀ Σ (ŵ − w); other models are scored on sampled queries (core.model.forward_queries).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import edits, evaluate, fast, learners, prune, tasks
from lintheory.core.model import ModelConfig, Params, forward_queries

GROUPS = ("all", "deep", "shallow")  # layer sets searched: {0, 1, L−2, L−1}, {L−2, L−1}, {0, 1}
QUANTILES = {"p01": 0.01, "p10": 0.10, "median": 0.5, "p90": 0.90, "p99": 0.99}  # the gain's tails reported


# --- candidates ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidate:
  kind: str  # an edits.KINDS family, or "none" for the unpruned model
  module: str  # a prune.MODULES name ("" when unpruned)
  layer: int  # edited layer (−1 when unpruned)
  xi: float  # the smallest paper rate that keeps this rank (the tie rule orders by it)
  ranks: tuple[int, ...]  # kept rank of each of the module's matrices


UNPRUNED = Candidate("none", "", -1, 0.0, ())


def layer_set(L: int) -> tuple[int, ...]:
  """The paper's layers: 0, 1 and the last two (from 0), docs/theory.md §12."""
  return tuple(sorted({0, 1, L - 2, L - 1} & set(range(L))))


def in_group(layer: int, group: str, L: int) -> bool:
  """Whether an edited layer belongs to a GROUPS layer set of an L-layer model."""
  return {"all": True, "deep": layer >= L - 2, "shallow": layer <= 1}[group]


def candidates(params: Params, kinds, modules, rates) -> list[Candidate]:
  """Unpruned first, then per family × module × layer the distinct kept ranks, ascending ξ.

  The exact truncation and the controls skip ξ = 0 (the unpruned model itself); the randomized SVD
  keeps it, since there it changes the weights (by round-off)."""
  L = params["W_Q"].shape[-3]  # params may carry a leading seed axis
  out = [UNPRUNED]
  for kind in kinds:
    for module in modules:
      if module == "mlp" and "W_1" not in params:
        continue
      names = prune.module_names(params, module)
      for layer in layer_set(L):
        seen = set()
        for xi in sorted(rates):
          ranks = tuple(prune.kept_rank(params[n].shape, xi=xi) for n in names)
          full = all(r == min(params[n].shape[-2:]) for r, n in zip(ranks, names))
          if ranks in seen or (full and kind != "svd_rand"):
            continue
          seen.add(ranks)
          out.append(Candidate(kind, module, layer, float(xi), ranks))
  return out


def distinct_ranks(shape, rates) -> tuple[int, ...]:
  """The distinct ranks the rates keep for a matrix of this shape, in ascending ξ (descending rank)."""
  return tuple(dict.fromkeys(prune.kept_rank(shape, xi=xi) for xi in sorted(rates)))


def tag(kind: str, module: str, layer: int, rank: int, name: str) -> int:
  """A stable 32-bit id per edit, so each candidate draws its own random edit whatever the order."""
  return zlib.crc32(f"{kind}/{module}/{layer}/{rank}/{name}".encode())


def edited_params(key: jax.Array, params_S: Params, cands: list[Candidate], rates, niter: int = 2,
                  cumulative: bool = False) -> Params:
  """Every candidate's parameters stacked → name → [C, S, ...]; the edits of one matrix are made
  in one compiled call (edits.edit_grid, randomness from key and each edit's tag)."""
  kinds = tuple(sorted({c.kind for c in cands if c.kind != "none"}))
  grids = {}
  for module, layer in dict.fromkeys((c.module, c.layer) for c in cands if c.kind != "none"):
    for name in prune.module_names(params_S, module):
      ranks = distinct_ranks(params_S[name].shape, rates)
      tags = np.array([[tag(k, module, layer, r, name) for r in ranks] for k in kinds], np.uint32)
      grids[module, layer, name] = (ranks, edits.edit_grid(key, tags, params_S[name][:, layer], kinds, ranks,
                                                           niter, cumulative))
  stacked = {n: [] for n in params_S}
  for c in cands:
    edited = {}
    if c.kind != "none":
      for name, r in zip(prune.module_names(params_S, c.module), c.ranks):
        ranks, grid = grids[c.module, c.layer, name]
        edited[name] = grid[kinds.index(c.kind), ranks.index(r)]
    for n, W in params_S.items():
      stacked[n].append(W.at[:, c.layer].set(edited[n]) if n in edited else W)
  return {n: jnp.stack(v) for n, v in stacked.items()}


def layer_groups(cands: list[Candidate], params_CS: Params, L: int) -> dict:
  """The candidates by edited layer l → (their indices, their stacked params); the unpruned model goes
  with the last layer's edits. Candidates of layer l equal the unpruned model before l (evaluate_exact)."""
  layer_of = np.array([L - 1 if c.layer < 0 else c.layer for c in cands])
  return {l: (np.flatnonzero(layer_of == l), {n: v[np.flatnonzero(layer_of == l)] for n, v in params_CS.items()})
          for l in sorted(set(layer_of.tolist()))}


def family(cands: list[Candidate], kind: str, group: str, L: int) -> np.ndarray:
  """Indices of the unpruned model and one family's candidates in a layer group."""
  return np.array([0] + [i for i, c in enumerate(cands) if c.kind == kind and in_group(c.layer, group, L)])


# --- data and errors: every candidate model once on every task's prompt -----------------------


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def sample_data(key: jax.Array, task: tasks.TaskConfig, n_tasks: int, V: int, n_test: int, dtype) -> dict:
  """One fixed prompt per task (docs/theory.md §1), its V validation queries with a unit noise draw
  (scaled per label-noise level) and n_test test queries, all inputs from the task's x distribution."""
  k_t, k_v, k_e, k_q = jax.random.split(key, 4)
  b = tasks.sample(k_t, task, n_tasks, dtype=dtype)
  inputs = lambda k, n: tasks.sample(k, task, n_tasks, n_context=max(n, 1), dtype=dtype).X[:, :n]
  return {"X": b.X, "y": b.y, "w": b.w, "Xv": inputs(k_v, V), "eps": jax.random.normal(k_e, (n_tasks, V), dtype),
          "Xt": inputs(k_q, n_test)}


@functools.partial(jax.jit, static_argnames=("Vs",))
def val_moments(data: dict, Vs) -> dict:
  """Per task and V, the validation queries' moments Σ x xᵀ [B, nV, d, d], Σ x ε [B, nV, d] and Σ ε²
  [B, nV] over the first V queries: for ŷ = ŵ·x the validation error is a quadratic form in ŵ − w."""
  Xv, eps = data["Xv"], data["eps"]
  return {"XX": jnp.stack([jnp.einsum("bvd,bve->bde", Xv[:, :V], Xv[:, :V]) for V in Vs], axis=1),
          "Xe": jnp.stack([jnp.einsum("bvd,bv->bd", Xv[:, :V], eps[:, :V]) for V in Vs], axis=1),
          "ee": jnp.stack([jnp.sum(eps[:, :V] ** 2, axis=1) for V in Vs], axis=1)}


def exact_errors(w_hat: jax.Array, data: dict, moments: dict, Vs, val_noise, Sigma):
  """Validation errors [B, nV, nNoise] and the exact test error [B] of ŷ = ŵ·x: with δ = ŵ − w,
  mean over v < V of (x_v·δ − σ ε_v)² = (δᵀ XX_V δ − 2σ δᵀ Xe_V + σ² ee_V) / V."""
  delta = w_hat - data["w"]
  quad = jnp.einsum("bd,bvde,be->bv", delta, moments["XX"], delta)
  cross = jnp.einsum("bd,bvd->bv", delta, moments["Xe"])
  V = jnp.asarray(Vs, delta.dtype)
  val = jnp.stack([(quad - 2 * sigma * cross + sigma**2 * moments["ee"]) / V for sigma in val_noise], axis=-1)
  return val, jnp.einsum("bd,de,be->b", delta, Sigma, delta)


def task_errors(params: Params, data: dict, cfg: ModelConfig, shots: int, Vs, val_noise, Sigma):
  """One model → validation errors [B, nV, nNoise] and the test error [B] on every task."""
  Zs = jnp.concatenate([data["X"][:, :shots], data["y"][:, :shots, None]], axis=-1)
  Vmax = data["Xv"].shape[1]
  if data["Xt"].shape[1] == 0:  # linear attention: ŷ = ŵ·x_q, ŵ from the prompt's Gram matrix
    return exact_errors(fast.w_hat(params, fast.gram_of(Zs), shots), data, val_moments(data, Vs), Vs,
                        val_noise, Sigma)
  y_hat = forward_queries(params, Zs, jnp.concatenate([data["Xv"], data["Xt"]], axis=1), cfg)
  y_val = y_hat[:, :Vmax]
  test = jnp.mean((y_hat[:, Vmax:] - jnp.einsum("bqd,bd->bq", data["Xt"], data["w"])) ** 2, axis=-1)
  clean = jnp.einsum("bvd,bd->bv", data["Xv"], data["w"])
  sq = jnp.stack([(y_val - clean - sigma * data["eps"]) ** 2 for sigma in val_noise], axis=-1)  # [B, V, nN]
  csum = jnp.cumsum(sq, axis=1)
  val = jnp.stack([csum[:, V - 1] / V for V in Vs], axis=1)  # [B, nV, nN]
  return val, test


@functools.partial(jax.jit, static_argnames=("cfg", "shots", "Vs", "val_noise", "chunk"))
def evaluate_all(params_CS: Params, data: dict, Sigma, cfg: ModelConfig, shots: int, Vs, val_noise, chunk: int):
  """Every candidate × seed → (validation errors [C, S, B, nV, nNoise], test errors [C, S, B])."""
  per_seed = jax.vmap(lambda p: task_errors(p, data, cfg, shots, Vs, val_noise, Sigma))
  return jax.lax.map(per_seed, params_CS, batch_size=chunk)


@functools.partial(jax.jit, static_argnames=("layers", "shots"))
def prefixes(params_S: Params, data: dict, layers, shots: int) -> dict:
  """For each layer l: every seed's unpruned (C_l, P_l) (core.fast.prefix) on the tasks' prompts."""
  C0 = fast.gram_of(jnp.concatenate([data["X"][:, :shots], data["y"][:, :shots, None]], axis=-1))
  return {l: jax.vmap(lambda p: fast.prefix(p, C0, shots, l))(params_S) for l in layers}


@functools.partial(jax.jit, static_argnames=("l", "shots", "Vs", "val_noise", "chunk"))
def evaluate_from(params_CS: Params, state_S, data: dict, moments: dict, Sigma, l: int, shots: int, Vs,
                  val_noise, chunk: int):
  """`evaluate_all` (linear attention) for candidates equal to the unpruned model before layer l:
  they start from its state at layer l, computed once (prefixes)."""
  def per_seed(p, C, P):
    w = fast.w_hat_from({n: v[l:] for n, v in p.items()}, C, P, shots)
    return exact_errors(w, data, moments, Vs, val_noise, Sigma)
  return jax.lax.map(lambda p: jax.vmap(per_seed)(p, *state_S), params_CS, batch_size=chunk)


def evaluate_exact(groups: dict, params_S: Params, data: dict, Sigma, shots: int, Vs, val_noise, chunk: int,
                   n_cands: int):
  """`evaluate_all` for linear attention, candidates grouped by edited layer (layer_groups) → numpy
  (validation [C, S, B, nV, nN], test [C, S, B]); chunk candidates are evaluated per step."""
  moments = val_moments(data, tuple(Vs))
  state = prefixes(params_S, data, tuple(sorted(groups)), shots)
  S, B = params_S["W_Q"].shape[0], data["w"].shape[0]
  val = np.empty((n_cands, S, B, len(Vs), len(val_noise)))
  test = np.empty((n_cands, S, B))
  for l, (idx, params_cS) in groups.items():
    v, t = evaluate_from(params_cS, state[l], data, moments, Sigma, l, shots, tuple(Vs), tuple(val_noise), chunk)
    val[idx], test[idx] = np.asarray(v, np.float64), np.asarray(t, np.float64)
  return val, test


def chunk_errors(params_S: Params, params_CS: Params, groups: dict | None, data: dict, task: tasks.TaskConfig,
                 cfg: ModelConfig, shots: int, Vs, val_noise, chunk: int, keep: int) -> dict[str, np.ndarray]:
  """Every candidate on the first `keep` tasks of data, float64 numpy: "val" [C, S, B, nV, nN], "test"
  ÷ d [C, S, B] (evaluate_exact over the layer groups where given, else evaluate_all), "bayes" [B] and
  the spent errors "bayes_with_val", "ridge_with_val" [B, nV, nN]."""
  Sigma = jnp.asarray(tasks.x_covariance(task), params_S["W_Q"].dtype)
  if groups is not None:
    val, test = evaluate_exact(groups, params_S, data, Sigma, shots, Vs, val_noise, chunk, params_CS["W_Q"].shape[0])
  else:
    val, test = (np.asarray(a, np.float64) for a in evaluate_all(params_CS, data, Sigma, cfg, shots, tuple(Vs),
                                                                  tuple(val_noise), chunk))
  out = {"val": val[:, :, :keep], "test": np.asarray(tasks.normalised_error(test[:, :, :keep], task.d), np.float64),
         "bayes": bayes_errors(data, task, shots)[:keep]}
  spent = spent_errors(data, task, shots, tuple(Vs), tuple(val_noise))
  return out | {f"{k}_with_val": np.asarray(v, np.float64)[:keep] for k, v in spent.items()}


@functools.partial(jax.jit, static_argnames=("cfg",))
def query_errors(params_S: Params, data: dict, cfg: ModelConfig) -> jax.Array:
  """Every seed's squared error per task, the mean over its test queries data["Xt"] [S, B] (unnormalised)."""
  Zs = jnp.concatenate([data["X"], data["y"][..., None]], axis=-1)
  y = jax.vmap(lambda p: forward_queries(p, Zs, data["Xt"], cfg))(params_S)  # [S, B, Q]
  return jnp.mean((y - jnp.einsum("bqd,bd->bq", data["Xt"], data["w"])) ** 2, axis=-1)


def sampled_errors(key: jax.Array, params_S: Params, task: tasks.TaskConfig, cfg: ModelConfig, n_tasks: int,
                   n_queries: int, dtype, chunk: int = 8192) -> np.ndarray:
  """Every seed's error ÷ d on n_tasks fresh tasks [S, n_tasks], each the mean over n_queries test
  queries (an unbiased estimate; docs/theory.md §11); chunk i of the tasks from fold_in(key, i)."""
  chunk = min(n_tasks, chunk)
  parts = [np.asarray(query_errors(params_S, sample_data(jax.random.fold_in(key, i), task, chunk, 0, n_queries, dtype),
                                   cfg), np.float64) for i in range(-(-n_tasks // chunk))]
  return tasks.normalised_error(np.concatenate(parts, axis=1)[:, :n_tasks], task.d)


# --- what the validation labels are worth -----------------------------------------------------


def bayes_errors(data: dict, task: tasks.TaskConfig, shots: int) -> np.ndarray:
  """Per task, the exact error of the Bayes predictor (posterior mean; ridge with λ = σ² for an
  isotropic prior) on the same prompt, ÷ d."""
  X, y, w = (jnp.asarray(data[k], jnp.float64) for k in ("X", "y", "w"))
  delta = evaluate.bayes_predictor(task, X[:, :shots], y[:, :shots]) - w
  Sigma = jnp.asarray(tasks.x_covariance(task), delta.dtype)
  return np.asarray(tasks.normalised_error(jnp.einsum("bd,de,be->b", delta, Sigma, delta), task.d), np.float64)


@functools.partial(jax.jit, static_argnames=("task", "shots", "Vs", "val_noise"))
def spent_errors(data: dict, task: tasks.TaskConfig, shots: int, Vs, val_noise) -> dict[str, jax.Array]:
  """Per task, V and validation noise, the exact errors [B, nV, nNoise] (÷ d) of the Bayes predictor and
  of ridge on the prompt plus the V validation examples used as demonstrations: what the labels
  Algorithm 1 spends are worth used directly (docs/theory.md §8)."""
  X, y, w = (jnp.asarray(data[k], jnp.float64) for k in ("X", "y", "w"))
  X, y = X[:, :shots], y[:, :shots]
  mom = {k: jnp.asarray(v, jnp.float64) for k, v in val_moments(data, Vs).items()}
  m, C = evaluate.bayes_posterior(task, X, y)
  Sigma = jnp.asarray(tasks.x_covariance(task), jnp.float64)
  lam = learners.bayes_ridge_lambda(task.noise_std)
  XtX, Xty = jnp.einsum("bnd,bne->bde", X, X), jnp.einsum("bnd,bn->bd", X, y)
  err = lambda w_hat: tasks.normalised_error(jnp.einsum("bd,de,be->b", w_hat - w, Sigma, w_hat - w), task.d)
  out = {"bayes": [], "ridge": []}
  last = C  # each solve waits for the one before (evaluate.after): never two batched solves at once
  for iv in range(len(Vs)):
    XX = mom["XX"][:, iv]
    per_noise = {"bayes": [], "ridge": []}
    for sigma in val_noise:
      b = jnp.einsum("bde,be->bd", XX, w) + sigma * mom["Xe"][:, iv]
      w_bayes = evaluate.posterior_update(m, evaluate.after(C, last), XX, b, sigma)
      last = learners.ridge_from_moments(evaluate.after(XtX + XX, w_bayes), Xty + b, lam)
      per_noise["bayes"].append(err(w_bayes))
      per_noise["ridge"].append(err(last))
    for k in out:
      out[k].append(jnp.stack(per_noise[k], axis=-1))
  return {k: jnp.stack(v, axis=1) for k, v in out.items()}


# --- per-task selection (Algorithm 1, docs/theory.md §8) ---------------------------------------


def select(val_CB: np.ndarray, xi_C: np.ndarray) -> np.ndarray:
  """Per task (column), the candidate with the lowest validation error, ties to the smaller ξ
  (then to the earlier candidate); a NaN score never wins → chosen index [B]."""
  val_CB, xi_C = np.asarray(val_CB, np.float64), np.asarray(xi_C, np.float64)
  if val_CB.ndim != 2 or xi_C.shape != val_CB.shape[:1] or xi_C.size == 0:
    raise ValueError(f"val_CB must be [C, B] and xi_C [C] with C >= 1, got {val_CB.shape}, {xi_C.shape}")
  order = np.argsort(xi_C, kind="stable")
  err = np.where(np.isnan(val_CB[order]), np.inf, val_CB[order])
  return order[np.argmin(err, axis=0)]


def chosen_errors(val_CSBVN: np.ndarray, test_CSB: np.ndarray, xi_C: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """Algorithm 1 per task among the candidates idx: for every V and validation noise level, each task's
  test error under its validation-best candidate (select, every seed's tasks at once) → [nV, nN, S, B]."""
  val_k, test_k = val_CSBVN[idx], test_CSB[idx]
  c, S, B = test_k.shape
  out = np.empty(val_k.shape[-2:] + (S, B), test_k.dtype)
  for iv, iz in np.ndindex(*val_k.shape[-2:]):
    pick = select(val_k[..., iv, iz].reshape(c, S * B), xi_C[idx]).reshape(S, B)
    out[iv, iz] = np.take_along_axis(test_k, pick[None], axis=0)[0]
  return out


def choices(val_CSBVN: np.ndarray, test_CSB: np.ndarray, xi_C: np.ndarray, cands: list[Candidate], kinds, Vs,
            val_noise, L: int) -> dict[tuple, np.ndarray]:
  """Algorithm 1 per task for every family × layer group (GROUPS) × V × noise level:
  (kind, group, V, σ) → each task's test error under its choice [S, B] (chosen_errors)."""
  out = {}
  for kind in kinds:
    for group in GROUPS:
      chosen = chosen_errors(val_CSBVN, test_CSB, xi_C, family(cands, kind, group, L))
      for iv, V in enumerate(Vs):
        for iz, sigma in enumerate(val_noise):
          out[kind, group, V, sigma] = chosen[iv, iz]
  return out


def rand0_change(test_CSB: np.ndarray, cands: list[Candidate]) -> np.ndarray:
  """Per seed [S], the largest relative change of a task's test error that the randomized SVD at ξ = 0
  (the identity only to round-off) makes to the unpruned model's."""
  i0 = [i for i, c in enumerate(cands) if c.kind == "svd_rand" and c.xi == 0.0]
  return np.max(np.abs(test_CSB[i0] - test_CSB[0]) / test_CSB[0], axis=(0, 2))


def chunk_summary(e: dict, cands: list[Candidate], kinds, Vs, val_noise, L: int) -> dict:
  """What the protocol keeps of one chunk's errors (chunk_errors): the unpruned model's "base" [S, B],
  "bayes" [B], every choice (choices), "rand0" (rand0_change, where svd_rand is searched), the spent
  errors, and the candidates' test errors summed over the first and second half of the tasks [C, S]."""
  test, B = e["test"], e["test"].shape[2]
  return {"base": test[0], "bayes": e["bayes"],
          "chosen": choices(e["val"], test, np.array([c.xi for c in cands]), cands, kinds, Vs, val_noise, L),
          "rand0": rand0_change(test, cands) if "svd_rand" in kinds else None,
          "bayes_with_val": e["bayes_with_val"], "ridge_with_val": e["ridge_with_val"],
          "first": test[:, :, :B // 2].sum(axis=2), "second": test[:, :, B // 2:].sum(axis=2),
          "n_first": B // 2, "n_second": B - B // 2}


def pool(chunks: list[dict]) -> dict:
  """chunk_summary over every chunk, in order: tasks concatenated, half sums added, rand0 its maximum
  over chunks (None where absent)."""
  cat = lambda k, axis: np.concatenate([c[k] for c in chunks], axis=axis)
  return {"base": cat("base", 1), "bayes": cat("bayes", 0),
          "chosen": {k: np.concatenate([c["chosen"][k] for c in chunks], axis=1) for k in chunks[0]["chosen"]},
          "rand0": None if chunks[0]["rand0"] is None else np.max(np.stack([c["rand0"] for c in chunks]), axis=0),
          "bayes_with_val": cat("bayes_with_val", 0), "ridge_with_val": cat("ridge_with_val", 0),
          **{k: sum(c[k] for c in chunks) for k in ("first", "second", "n_first", "n_second")}}


def gain_summary(base_B: np.ndarray, chosen_B: np.ndarray, bayes_B: np.ndarray, unchanged_rel: float) -> dict:
  """One seed's per-task gain g = unpruned − chosen error: its mean, in units of the headroom (unpruned
  − Bayes mean error), tails, and the fractions of tasks improved, worsened and unchanged (|g| at most
  unchanged_rel × the task's unpruned error)."""
  g, tol = base_B - chosen_B, unchanged_rel * base_B
  headroom = base_B.mean() - bayes_B.mean()
  return {"gain_mean": g.mean(), "rel_gain_mean": g.mean() / headroom, "headroom": headroom,
          "unpruned_mean": base_B.mean(), "chosen_mean": chosen_B.mean(),
          "frac_improved": np.mean(g > tol), "frac_worsened": np.mean(g < -tol),
          "frac_unchanged": np.mean(np.abs(g) <= tol),
          **{f"gain_{q}": np.quantile(g, p) for q, p in QUANTILES.items()},
          # per task gain ÷ its unpruned error: a rare blow-up of the unpruned model cannot dominate it
          "task_rel_gain_median": np.median(g / base_B), "task_rel_gain_mean": np.mean(g / base_B)}
