"""The paper's protocol, per task, against a null control: does SVD pruning beat edits that are not SVD?

As in the paper's experiments (docs/theory.md §8, §12): every task gets ONE fixed prompt, and the
edit is chosen per task on V validation queries of that task (ties to the smaller ξ), then scored on
the task's test error. Candidates: the paper's rates × modules {attn, q, k, v, mlp} × layers
{0, 1, L−2, L−1}, plus the unpruned model (ξ = 0). The same search runs over edits of the same
Frobenius size that are not SVD truncations (core.edits: random directions removed, a Gaussian
perturbation, uniform shrinkage), and over the paper's randomized SVD.

Choosing the best of many models per task lowers the chosen test error whenever validation and test
errors agree, whatever the edits are; pruning "enhances" ICL only if SVD gains more than its null
controls. Errors: for linear attention ŷ = ŵ·x_q, so the exact per-task population error
(ŵ − w)ᵀ Σ (ŵ − w); for softmax and MLP models the mean over sampled test queries of the task.
Seeds are the unit of inference.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import edits, evaluate, fast, learners, precision, prune, stats, tasks
from lintheory.core.model import ModelConfig, Params, block, block_over
from lintheory.run import io, profiles
from lintheory.studies import engine, text

NAME = "paper_protocol"
KEYS = ("model", "shots", "edit", "layers", "V", "val_noise")
EVAL_KEY = 27_182  # held-out tasks, disjoint from the training streams
EDIT_KEY = 16_180  # the random edits; each candidate folds in its own hash
GROUPS = ("all", "deep", "shallow")  # layer sets searched: {0, 1, L−2, L−1}, {L−2, L−1}, {0, 1}
TASK_CHUNK = 2000  # tasks evaluated together (the candidates' errors on them are held in memory)
SESOI = 0.05  # smallest effect of interest: 5 % of the headroom (unpruned − Bayes error)
RARE_SHARE_MAX = 0.10  # a sampled model's protocol means stand only if tasks rarer than 1 in n_tasks carry
#                        less than this share of its error on the tail check's tasks (docs/theory.md §11)
QUANTILES = {"p01": 0.01, "p10": 0.10, "median": 0.5, "p90": 0.90, "p99": 0.99}


@dataclasses.dataclass(frozen=True)
class Arch:
  name: str  # label in tables and figures
  attention: str  # "linear" or "softmax"
  mlp: str | None  # None or "relu": an MLP sub-layer after attention
  n_tasks: int  # tasks per seed (the same tasks for every seed)
  test_queries: int  # sampled test queries per task; 0 = exact population error (linear attention only)
  shots: tuple[int, ...]  # prompt sizes given to the model (trained at n_context)


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds
  archs: tuple[Arch, ...]  # the models searched
  d: int = 10  # input dimension
  n_context: int = 20  # N at training time
  layers: int = 4  # L
  Vs: tuple[int, ...] = (16, 64, 256)  # validation queries per task (nested: the first V of the largest)
  val_noise: tuple[float, ...] = (0.0, 0.5)  # label noise std of the validation queries
  rates: tuple[float, ...] = prune.PAPER_RATES  # candidate clipping rates ξ (ranks deduplicated)
  modules: tuple[str, ...] = ("attn", "q", "k", "v", "mlp")  # modules searched (mlp where present)
  kinds: tuple[str, ...] = edits.KINDS  # edit families: SVD, randomized SVD, the null controls
  cumulative: bool = False  # the paper's search: each rate clips the previous rate's weights (svd_rand only differs)
  niter: int = 2  # power iterations of the randomized SVD (q = r)
  unchanged_rel: float = 1e-3  # a task is unchanged when |gain| <= this × its unpruned error
  candidate_chunk: int = 16  # candidate models evaluated per step (memory)
  tail_tasks: int = 100_000  # sampled models: fresh tasks on which the unpruned model's tail is seen ...
  tail_queries: int = 16  # ... each task's error the mean over this many test queries (query noise ~ χ²_q / q)


LINEAR = Arch("linear", "linear", None, 100_000, 0, (20, 10))
PROFILES = {
    "tiny": Settings(profiles.PROFILES["tiny"], (dataclasses.replace(LINEAR, n_tasks=20, shots=(8, 4)),
                                                 Arch("softmax", "softmax", None, 20, 16, (8,))),
                     d=3, n_context=8, layers=2, tail_tasks=2048),
    "default": Settings(profiles.PROFILES["default"], (
        dataclasses.replace(LINEAR, shots=(20,)), Arch("softmax", "softmax", None, 200, 64, (20,)), Arch("linear+relu_mlp", "linear", "relu", 200, 64, (20,))),
        d=5, modules=("attn", "v", "mlp")),
    "long": Settings(profiles.PROFILES["long"], (
        LINEAR, Arch("softmax", "softmax", None, 200, 64, (20,)), Arch("linear+relu_mlp", "linear", "relu", 200, 64, (20,)))),
    "full": Settings(profiles.PROFILES["full"], (
        dataclasses.replace(LINEAR, n_tasks=1_000_000), Arch("softmax", "softmax", None, 2000, 256, (20, 10)),
        Arch("linear+relu_mlp", "linear", "relu", 2000, 256, (20, 10)))),
}


# --- a forward pass with many queries per prompt ----------------------------------------------


def forward_queries(params: Params, Zs_BND: jax.Array, Xq_BQd: jax.Array, cfg: ModelConfig) -> jax.Array:
  """ŷ [B, Q] for Q queries per prompt; the queries never act as keys or values, so each ŷ equals
  core.model.forward on the prompt followed by that one query."""
  N = Zs_BND.shape[1]
  query = jnp.concatenate([Xq_BQd, jnp.zeros_like(Xq_BQd[..., :1])], axis=-1)
  Z = jnp.concatenate([Zs_BND, query], axis=1)
  first, last = ({n: v[:-1] for n, v in params.items()}, {n: v[-1] for n, v in params.items()})
  Z, _ = jax.lax.scan(lambda Z, p: (block(p, Z, cfg, n_demos=N), None), Z, first)
  return -block_over(last, Z[:, N:], Z[:, :N], cfg)[..., -1]  # the last layer for the queries only


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
  """The paper's layers: 0, 1 and the last two (from 0)."""
  return tuple(sorted({0, 1, L - 2, L - 1} & set(range(L))))


def in_group(layer: int, group: str, L: int) -> bool:
  return {"all": True, "deep": layer >= L - 2, "shallow": layer <= 1}[group]


def candidates(params: Params, s: Settings) -> list[Candidate]:
  """Unpruned first, then per family × module × layer the distinct kept ranks, ascending ξ.

  The exact truncation and the controls skip ξ = 0 (the unpruned model itself); the randomized SVD
  keeps it, since there it changes the weights (by round-off)."""
  L = params["W_Q"].shape[-3]  # params may carry a leading seed axis
  out = [UNPRUNED]
  for kind in s.kinds:
    for module in s.modules:
      if module == "mlp" and "W_1" not in params:
        continue
      names = prune.module_names(params, module)
      for layer in layer_set(L):
        seen = set()
        for xi in sorted(s.rates):
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


def _tag(kind: str, module: str, layer: int, rank: int, name: str) -> int:
  """A stable 32-bit id per edit, so each candidate draws its own random edit whatever the order."""
  return zlib.crc32(f"{kind}/{module}/{layer}/{rank}/{name}".encode())


@functools.partial(jax.jit, static_argnames=("kind",))
def _edit_ranks(tags_R, W_SMN, ranks_R, kind):
  """One kind's edits of one matrix at every rank (traced) for every seed → [R, S, m, n]."""
  def one(tag, r):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(EDIT_KEY), tag), W_SMN.shape[0])
    return jax.vmap(lambda k, W: edits.edit_traced(kind, k, W, r))(keys, W_SMN)
  return jax.vmap(one)(tags_R, ranks_R)


@functools.partial(jax.jit, static_argnames=("rank", "niter"))
def _edit_rand(tag, W_SMN, rank, niter):
  """The randomized SVD (q = r is a shape, so one compile per rank) for every seed → [S, m, n]."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(EDIT_KEY), tag), W_SMN.shape[0])
  return jax.vmap(lambda k, W: edits.truncate_randomized(k, W, rank, niter))(keys, W_SMN)


def _edit_grid(tags_KR, W_SMN, kinds, ranks, niter, cumulative):
  """Every kind × rank edit of one matrix for every seed → [K, R, S, m, n]; cumulative chains the
  randomized SVD through the ranks in order (the paper's search clips the previous rate's weights)."""
  out = []
  for i, kind in enumerate(kinds):
    if kind != "svd_rand":
      out.append(_edit_ranks(tags_KR[i], W_SMN, jnp.asarray(ranks), kind))
      continue
    row, prev = [], W_SMN
    for j, r in enumerate(ranks):
      prev = _edit_rand(tags_KR[i, j], prev if cumulative else W_SMN, r, niter)
      row.append(prev)
    out.append(jnp.stack(row))
  return jnp.stack(out)


def edited_params(params_S: Params, cands: list[Candidate], s: Settings) -> Params:
  """Every candidate's parameters stacked → name → [C, S, ...]; the edits of one matrix are made
  in one compiled call."""
  kinds = tuple(sorted({c.kind for c in cands if c.kind != "none"}))
  grids = {}
  for module, layer in dict.fromkeys((c.module, c.layer) for c in cands if c.kind != "none"):
    for name in prune.module_names(params_S, module):
      ranks = distinct_ranks(params_S[name].shape, s.rates)
      tags = np.array([[_tag(k, module, layer, r, name) for r in ranks] for k in kinds], np.uint32)
      grids[module, layer, name] = (ranks, _edit_grid(tags, params_S[name][:, layer], kinds, ranks, s.niter,
                                                      s.cumulative))
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


# --- evaluation: every candidate model once on every task's prompt ----------------------------


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


def evaluate_exact(groups: dict, params_S: Params, data: dict, Sigma, shots: int, s: "Settings", n_cands: int):
  """`evaluate_all` for linear attention, candidates grouped by edited layer (groups: l → (indices,
  their stacked params)) → numpy (validation [C, S, B, nV, nN], test [C, S, B])."""
  moments = val_moments(data, tuple(s.Vs))
  state = prefixes(params_S, data, tuple(sorted(groups)), shots)
  S, B = params_S["W_Q"].shape[0], data["w"].shape[0]
  val = np.empty((n_cands, S, B, len(s.Vs), len(s.val_noise)))
  test = np.empty((n_cands, S, B))
  for l, (idx, params_cS) in groups.items():
    v, t = evaluate_from(params_cS, state[l], data, moments, Sigma, l, shots, tuple(s.Vs), tuple(s.val_noise),
                         s.candidate_chunk)
    val[idx], test[idx] = np.asarray(v, np.float64), np.asarray(t, np.float64)
  return val, test


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
  for iv in range(len(Vs)):
    XX = mom["XX"][:, iv]
    per_noise = {"bayes": [], "ridge": []}
    for sigma in val_noise:
      b = jnp.einsum("bde,be->bd", XX, w) + sigma * mom["Xe"][:, iv]
      per_noise["bayes"].append(err(evaluate.posterior_update(m, C, XX, b, sigma)))
      per_noise["ridge"].append(err(learners.ridge_from_moments(XtX + XX, Xty + b, lam)))
    for k in out:
      out[k].append(jnp.stack(per_noise[k], axis=-1))
  return {k: jnp.stack(v, axis=1) for k, v in out.items()}


# --- per-task selection ----------------------------------------------------------------------


def select(val_CB: np.ndarray, xi_C: np.ndarray) -> np.ndarray:
  """Per task (column), the candidate with the lowest validation error, ties to the smaller ξ
  (then to the earlier candidate); a NaN score never wins → chosen index [B]."""
  val_CB, xi_C = np.asarray(val_CB, np.float64), np.asarray(xi_C, np.float64)
  if val_CB.ndim != 2 or xi_C.shape != val_CB.shape[:1] or xi_C.size == 0:
    raise ValueError(f"val_CB must be [C, B] and xi_C [C] with C >= 1, got {val_CB.shape}, {xi_C.shape}")
  order = np.argsort(xi_C, kind="stable")
  err = np.where(np.isnan(val_CB[order]), np.inf, val_CB[order])
  return order[np.argmin(err, axis=0)]


def family(cands: list[Candidate], kind: str, group: str, L: int) -> np.ndarray:
  """Indices of the unpruned model and one family's candidates in a layer group."""
  return np.array([0] + [i for i, c in enumerate(cands) if c.kind == kind and in_group(c.layer, group, L)])


# --- the study -------------------------------------------------------------------------------


def _gain_rows(ctx, base_SB, chosen_SB, bayes_B, seeds, s: Settings, keys: dict) -> None:
  """Per seed: the gain's mean, tails and fractions; over seeds (layers "all" only, it is the costly
  part): the hierarchical bootstrap CI of the mean gain (stats.paired_gain)."""
  gain_SB = base_SB - chosen_SB
  tol = s.unchanged_rel * base_SB
  for k, seed in enumerate(seeds):
    g, n = gain_SB[k], gain_SB.shape[1]
    headroom = base_SB[k].mean() - bayes_B.mean()
    row = {"gain_mean": g.mean(), "rel_gain_mean": g.mean() / headroom, "headroom": headroom,
           "unpruned_mean": base_SB[k].mean(), "chosen_mean": chosen_SB[k].mean(),
           "frac_improved": np.mean(g > tol[k]), "frac_worsened": np.mean(g < -tol[k]),
           "frac_unchanged": np.mean(np.abs(g) <= tol[k]),
           **{f"gain_{q}": np.quantile(g, p) for q, p in QUANTILES.items()},
           # per task gain ÷ its unpruned error: a rare blow-up of the unpruned model cannot dominate it
           "task_rel_gain_median": np.median(g / base_SB[k]), "task_rel_gain_mean": np.mean(g / base_SB[k])}
    ctx.add_many(row, seed=seed, n_tasks=n, **keys)
  if keys["layers"] == "all" and len(seeds) >= 2:
    pg = stats.paired_gain(base_SB, chosen_SB)
    ctx.add_many({"gain_ci_lo": pg["ci_lo"], "gain_ci_hi": pg["ci_hi"]}, n_tasks=gain_SB.size, **keys)


def run_arch(s: Settings, arch: Arch, ctx: engine.Context) -> None:
  try:
    tr = engine.trained(s, ctx, d=s.d, n_context=s.n_context, layers=s.layers, attention=arch.attention,
                        mlp=arch.mlp)
  except RuntimeError as e:  # a diverged run is recorded, not hidden
    ctx.fail("train", str(e), model=arch.name)
    return
  evaluate_trained(tr, s, arch, ctx)


def evaluate_trained(tr: profiles.Trained, s: Settings, arch: Arch, ctx: engine.Context) -> dict:
  """The protocol on trained models: every candidate of every seed evaluated on arch.n_tasks tasks,
  each family's per-task choice recorded as rows keyed by model=arch.name (the rows claims() and
  compare() read). The positive control runs its planted models through this same function.
  Returns, per shots, the candidates and their summed test errors on the first and the second half
  of every chunk's tasks ("first", "second": [C, S], with "n_first", "n_second"), for a
  population-level choice (one edit for all tasks) made on one half and scored on the other."""
  ctx.add_training(tr, model=arch.name)
  exact = arch.test_queries == 0
  if exact and not tr.model.is_linear:
    raise ValueError(f"arch {arch.name}: test_queries must be >= 1 for a model that is not linear attention")
  L = tr.model.n_layers
  t0 = time.perf_counter()
  # Exact errors (linear attention) in float64; sampled ones in float32, twice as fast on a CPU.
  dtype = jnp.float64 if exact else jnp.float32
  with precision.x64():
    params_S = {n: jnp.asarray(v, dtype) for n, v in tr.params.items()}
    cands = candidates(params_S, s)
    params_CS = edited_params(params_S, cands, s)
    if exact:  # by edited layer; the unpruned model goes with the last layer's edits
      layer_of = np.array([L - 1 if c.layer < 0 else c.layer for c in cands])
      groups = {l: (np.flatnonzero(layer_of == l), {n: v[np.flatnonzero(layer_of == l)] for n, v in params_CS.items()})
                for l in sorted(set(layer_of.tolist()))}
    xi = np.array([c.xi for c in cands])
    Sigma = jnp.asarray(tasks.x_covariance(tr.task), dtype)
    chunk = min(arch.n_tasks, TASK_CHUNK)
    acc = {shots: {"base": [], "bayes": [], "chosen": {}, "rand0": [], "halves": []} for shots in arch.shots}
    for i in range(-(-arch.n_tasks // chunk)):  # the tasks in chunks; chunk i from fold_in(EVAL_KEY, i)
      data = sample_data(jax.random.fold_in(jax.random.key(EVAL_KEY), i), tr.task, chunk, max(s.Vs),
                         arch.test_queries, dtype)
      keep = min(chunk, arch.n_tasks - i * chunk)
      for shots in arch.shots:
        if exact:
          val, test = evaluate_exact(groups, params_S, data, Sigma, shots, s, len(cands))
        else:
          val, test = (np.asarray(a, np.float64) for a in evaluate_all(
              params_CS, data, Sigma, tr.model, shots, tuple(s.Vs), tuple(s.val_noise), s.candidate_chunk))
        val, test = val[:, :, :keep], np.asarray(tasks.normalised_error(test[:, :, :keep], tr.task.d), np.float64)
        _select_chunk(acc[shots], val, test, bayes_errors(data, tr.task, shots)[:keep], cands, xi, s, L)
        for k, v in spent_errors(data, tr.task, shots, tuple(s.Vs), tuple(s.val_noise)).items():
          acc[shots].setdefault(f"{k}_with_val", []).append(np.asarray(v, np.float64)[:keep])
        acc[shots]["halves"].append((test[:, :, :keep // 2].sum(axis=2), test[:, :, keep // 2:].sum(axis=2),
                                     keep // 2, keep - keep // 2))
      done = min(arch.n_tasks, (i + 1) * chunk)
      if (i + 1) % 10 == 0 or done == arch.n_tasks:
        io.progress(f"  {arch.name}: {done:,}/{arch.n_tasks:,} tasks, {time.perf_counter() - t0:.0f} s",
                    final=done == arch.n_tasks)
    if not exact:
      tail_check(ctx, tr, params_S, s, arch, dtype)
    for shots in arch.shots:
      _record(ctx, acc[shots], cands, tr.seeds, s, arch.name, shots, L)
      base = np.concatenate(acc[shots]["base"], axis=1)
      ctx.log(f"{arch.name} N={shots}: {len(cands)} candidates × {len(tr.seeds)} seeds × {arch.n_tasks} tasks; "
              f"unpruned mean {base.mean():.4g}, median {np.median(base):.4g}; "
              f"{time.perf_counter() - t0:.1f} s since the models were loaded")
  return {shots: {"candidates": cands, "first": sum(h[0] for h in acc[shots]["halves"]),
                  "second": sum(h[1] for h in acc[shots]["halves"]), "n_first": sum(h[2] for h in acc[shots]["halves"]),
                  "n_second": sum(h[3] for h in acc[shots]["halves"])} for shots in arch.shots}


TAIL_KEY = 31_415  # the tail check's tasks, disjoint from the protocol's


@functools.partial(jax.jit, static_argnames=("cfg",))
def _query_errors(params_S: Params, data: dict, cfg: ModelConfig) -> jax.Array:
  """Every seed's squared error per task, the mean over its test queries data["Xt"] [S, B] (unnormalised)."""
  Zs = jnp.concatenate([data["X"], data["y"][..., None]], axis=-1)
  y = jax.vmap(lambda p: forward_queries(p, Zs, data["Xt"], cfg))(params_S)  # [S, B, Q]
  return jnp.mean((y - jnp.einsum("bqd,bd->bq", data["Xt"], data["w"])) ** 2, axis=-1)


def tail_check(ctx, tr, params_S: Params, s: "Settings", arch: Arch, dtype) -> None:
  """A model whose errors are sampled is searched on few tasks; its unpruned tail is seen here, on
  s.tail_tasks fresh tasks with s.tail_queries queries each (an unbiased per-task estimate of the
  error ÷ d), with the share of the error that tasks rarer than 1 in arch.n_tasks carry
  (stats.rare_share) and the share query noise alone would give (stats.chi2_rare_share)."""
  name = arch.name
  n, chunk = s.tail_tasks, min(s.tail_tasks, 8192)
  parts = [np.asarray(_query_errors(params_S, sample_data(jax.random.fold_in(jax.random.key(TAIL_KEY), i), tr.task,
                                                          chunk, 0, s.tail_queries, dtype), tr.model), np.float64)
           for i in range(-(-n // chunk))]
  err = tasks.normalised_error(np.concatenate(parts, axis=1)[:, :n], s.d)
  for k, seed in enumerate(tr.seeds):
    ctx.add_many(stats.summary(err[k]), prefix="tail_", seed=seed, n_tasks=n, model=name, shots=s.n_context)
    ctx.add("tail_rare_share", stats.rare_share(err[k], arch.n_tasks), seed=seed, n_tasks=n, model=name,
            shots=s.n_context)
  ctx.add("tail_noise_share", stats.chi2_rare_share(s.tail_queries, arch.n_tasks), n_tasks=n, model=name,
          shots=s.n_context)


def _select_chunk(acc: dict, val, test, bayes, cands, xi, s: Settings, L: int) -> None:
  """One chunk of tasks: each family's per-task choice for every layer group, V and noise level."""
  acc["base"].append(test[0])
  acc["bayes"].append(bayes)
  for kind in s.kinds:
    for group in GROUPS:
      idx = family(cands, kind, group, L)
      val_k, test_k = val[idx], test[idx]  # [c, S, B, nV, nNoise], [c, S, B]
      c, S, B = test_k.shape
      for iv, V in enumerate(s.Vs):
        for iz, sigma in enumerate(s.val_noise):
          pick = select(val_k[..., iv, iz].reshape(c, S * B), xi[idx]).reshape(S, B)  # tasks of all seeds at once
          acc["chosen"].setdefault((kind, group, V, sigma), []).append(
              np.take_along_axis(test_k, pick[None], axis=0)[0])
  if "svd_rand" in s.kinds:  # the randomized SVD at rate 0 is the identity only to round-off
    i0 = [i for i, c in enumerate(cands) if c.kind == "svd_rand" and c.xi == 0.0]
    acc["rand0"].append(np.max(np.abs(test[i0] - test[0]) / test[0], axis=(0, 2)))


def _record(ctx, acc: dict, cands, seeds, s: Settings, name: str, shots: int, L: int) -> None:
  base, bayes = np.concatenate(acc["base"], axis=1), np.concatenate(acc["bayes"])
  ctx.add("bayes_mean", bayes.mean(), n_tasks=bayes.size, model=name, shots=shots)
  ctx.add("n_candidates", len(cands), model=name, shots=shots)
  for kind in s.kinds:
    ctx.add("n_candidates", len(family(cands, kind, "all", L)) - 1, model=name, shots=shots, edit=kind)
  for (kind, group, V, sigma), parts in acc["chosen"].items():
    _gain_rows(ctx, base, np.concatenate(parts, axis=1), bayes, seeds, s,
               dict(model=name, shots=shots, edit=kind, layers=group, V=V, val_noise=sigma))
  for k in ("bayes_with_val", "ridge_with_val"):  # the V validation examples used as demonstrations
    e = np.concatenate(acc[k])
    for iv, V in enumerate(s.Vs):
      for iz, sigma in enumerate(s.val_noise):
        ctx.add(f"{k}_mean", e[:, iv, iz].mean(), n_tasks=e.shape[0], model=name, shots=shots, V=V, val_noise=sigma)
  if acc["rand0"]:
    worst = np.max(np.stack(acc["rand0"]), axis=0)
    for k, seed in enumerate(seeds):
      ctx.add("rand_xi0_max_rel_change", worst[k], seed=seed, n_tasks=base.shape[1], model=name, shots=shots,
              edit="svd_rand")


def run(s: Settings, ctx: engine.Context) -> None:
  for arch in s.archs:
    run_arch(s, arch, ctx)


# --- statistics over seeds -------------------------------------------------------------------


def _equivalent(diff_S: np.ndarray, margin: float) -> bool:
  """TOST over seeds: the mean of diff_S lies within ±margin (stats.equivalence). A seed at ±inf is
  outside any margin, so such a set is never equivalent."""
  d = np.asarray(diff_S, np.float64)
  return bool(np.all(np.isfinite(d)) and stats.equivalence(d, margin)["equivalent"])


# --- reading the table -----------------------------------------------------------------------


def _per_seed(table, measure, **match) -> np.ndarray:
  return table.values(measure, **match)


def rare_share(table: engine.Table, model: str) -> float:
  """The largest share over seeds of a sampled model's error carried by tasks rarer than 1 in its
  protocol's task count (0 for a model searched on exact errors of enough tasks: no tail check)."""
  v = table.values("tail_rare_share", model=model)
  return float(v.max()) if v.size else 0.0


def means_stand(table: engine.Table, model: str) -> bool:
  """Whether the model's protocol means (over its n_tasks) may be reported as means (docs/theory.md §11)."""
  return rare_share(table, model) < RARE_SHARE_MAX


def regimes(table: engine.Table, tailed: bool = False) -> list[dict]:
  """Every (model, shots, V, val_noise) with results, for the claims and the report; a model whose
  protocol misses its tail (means_stand False) only with tailed=True."""
  out = []
  for model in table.unique("model", measure="gain_mean"):
    if not tailed and not means_stand(table, model):
      continue
    for shots in table.unique("shots", measure="gain_mean", model=model):
      for V in table.unique("V", measure="gain_mean", model=model, shots=shots):
        for z in table.unique("val_noise", measure="gain_mean", model=model, shots=shots, V=V):
          out.append(dict(model=model, shots=shots, V=V, val_noise=z))
  return out


def compare(table: engine.Table, reg: dict, layers: str = "all") -> dict:
  """For one regime: SVD's relative gain per seed, and SVD − each control (fractions of headroom), each
  with its centre and interval over every seed (text.centre_interval)."""
  rel = {k: _per_seed(table, "rel_gain_mean", edit=k, layers=layers, **reg)
         for k in table.unique("edit", measure="rel_gain_mean", layers=layers, **reg)}
  svd = rel["svd"]
  centre, lo, hi = text.centre_interval(svd)
  out = {"svd": svd, "svd_center": centre, "svd_ci": (lo, hi), "rel": rel, "vs": {}}
  for ctl in edits.CONTROLS:
    if ctl in rel:
      diff = svd - rel[ctl]
      centre, lo, hi = text.centre_interval(diff)
      out["vs"][ctl] = {"diff": diff, "center": centre, "ci": (lo, hi), "equivalent": _equivalent(diff, SESOI)}
  return out


def _verdict_enhances(c: dict) -> str:
  """"holds" when SVD's gain is positive and beyond every control's by the SESOI (CI), "fails"
  when it is equivalent to or below some control, else "undecided"."""
  vs = c["vs"].values()
  if vs and all(v["ci"][0] > 0 for v in vs) and c["svd_ci"][0] > 0 and all(v["center"] > SESOI for v in vs):
    return "holds"
  if any(v["equivalent"] or v["ci"][1] < 0 for v in vs):
    return "fails"
  return "undecided"


def _verdict_algorithm1(c: dict) -> str:
  """"holds" when SVD's own gain has its CI above 0 and its mean above the SESOI, "fails" when it is
  below 0 or equivalent (TOST) to 0 within ±SESOI, else "undecided"."""
  svd, (lo, hi) = c["svd"], c["svd_ci"]
  return "holds" if lo > 0 and c["svd_center"] > SESOI else "fails" if hi < 0 or _equivalent(svd, SESOI) else "undecided"


VERDICTS = {"pruning_enhances": _verdict_enhances, "algorithm1": _verdict_algorithm1}


def label_value(table: engine.Table, reg: dict, learner: str = "bayes") -> np.ndarray:
  """Per seed, the share of the headroom (unpruned − Bayes error with the prompt) that the V validation
  examples close when used as demonstrations instead (learner: "bayes" or "ridge" on N + V examples;
  docs/theory.md §8): what the labels Algorithm 1 spends are worth used directly. Empty without them."""
  match = dict(edit="svd", layers="all", **reg)
  spent = table.values(f"{learner}_with_val_mean", **reg)
  if spent.size == 0:
    return spent
  return (table.values("unpruned_mean", **match) - spent[0]) / table.values("headroom", **match)


def _label(reg: dict) -> str:
  return f"{reg['model']} N={reg['shots']} V={reg['V']} σ_val={text.num(reg['val_noise'], 2)}"


def most_favourable(cs: dict[str, dict]) -> str:
  """The regime (a key of cs, label → compare()) where SVD's own gain — the chosen SVD edit against the
  unpruned model, mean over seeds in % of headroom — is largest; a NaN mean never wins."""
  return max(cs, key=lambda k: np.nan_to_num(cs[k]["svd_center"], nan=-np.inf))


def strongest_control(c: dict) -> str:
  """The null control SVD beats by the least (the smallest mean SVD − control difference)."""
  return min(c["vs"], key=lambda k: c["vs"][k]["center"])


def _tally(verdicts: dict[str, str]) -> str:
  n_hold = sum(v == "holds" for v in verdicts.values())
  n_fail = sum(v == "fails" for v in verdicts.values())
  n_open = len(verdicts) - n_hold - n_fail
  tally = f"in {n_hold if n_hold else n_fail} of {len(verdicts)} regimes" + (f", undecided in {n_open}" if n_open else "")
  return (f"holds {tally}" if n_fail == 0 and n_hold else f"fails {tally}" if n_hold == 0 and n_fail else
          "undecided" if n_hold == n_fail == 0 else
          f"depends: holds in {n_hold}, fails in {n_fail}, undecided in {n_open} of {len(verdicts)} regimes")


def claims(table: engine.Table, meta: dict) -> list:
  """Both claims are counted over every regime whose means stand (each regime's table row shows its
  decision); the effect quoted is the one in the regime where SVD's own gain is largest, and the seeds
  are those behind that effect's interval."""
  from lintheory.studies.verdicts import NO_INTERVAL, Claim
  regs = regimes(table)
  if not regs:
    return []
  left_out = _left_out(table)
  if len(table.seeds(measure="rel_gain_mean")) < 2:  # no interval over seeds: nothing is decided
    return [Claim(cid, NO_INTERVAL, "SVD's gain over the unpruned model, % of headroom", "(1 seed, no interval)", 1,
                  "per task one fixed prompt, ξ chosen on V validation queries; seeds are the unit of inference")
            for cid in VERDICTS]
  cs = {_label(reg): compare(table, reg) for reg in regs}
  best = most_favourable(cs)
  c = cs[best]
  out = []
  for cid, rule in VERDICTS.items():
    verdict = _tally({k: rule(v) for k, v in cs.items()})
    if cid == "pruning_enhances" and c["vs"]:
      ctl = strongest_control(c)
      diff, (lo, hi) = c["vs"][ctl]["diff"], c["vs"][ctl]["ci"]  # diff: per seed; centre below
      effect = (f"SVD gain − the strongest null control's ({ctl}), % of headroom, in the regime where SVD's own "
                f"gain is largest ({best}, SVD's gain {text.num(100 * c['svd_center'], 2)} %): "
                f"{text.num(100 * c['vs'][ctl]['center'], 2)} %")
      seeds = diff.size
      detail = ("per task one fixed prompt, ξ chosen on V validation queries of the task; 'holds' needs SVD "
                f"to beat every null control (same ‖ΔW‖_F) by > {SESOI:.0%} of the headroom, 'fails' where it "
                "is equivalent (TOST) to or below one; layers {0, 1, L−2, L−1}; every regime counted is in "
                "the study's table")
    elif cid == "pruning_enhances":
      effect, lo, hi, seeds, detail = "no null control searched", np.nan, np.nan, 0, "nothing to compare SVD with"
    else:
      (lo, hi), seeds = c["svd_ci"], c["svd"].size
      worth = label_value(table, next(r for r in regs if _label(r) == best))
      effect = (f"chosen vs unpruned test error, gain in % of headroom, best regime {best}: "
                f"{text.num(100 * c['svd_center'], 2)} %"
                + (f" (its V labels used as demonstrations instead: {text.num(100 * np.median(worth), 3)} %, "
                   "Bayes with N + V)" if worth.size else ""))
      detail = (f"exact SVD, per-task choice; 'holds' where the gain's CI is above 0 and its mean above "
                f"{SESOI:.0%} of the headroom, 'fails' where it is negative or equivalent (TOST) to 0 within "
                f"±{SESOI:.0%} of the headroom (a significant but smaller gain counts as equivalent); every "
                "regime counted is in the study's table")
    ci = text.ci(100 * lo, 100 * hi, 2) + " %"
    out.append(Claim(cid, verdict, effect, ci, seeds, detail + (f"; not counted: {left_out}" if left_out else "")))
  return out


def _left_out(table: engine.Table) -> str:
  """The models whose protocol means do not stand, with the share of their error the protocol misses."""
  n = {m: table.n_tasks("gain_mean", model=m) for m in table.unique("model", measure="gain_mean")}
  return "; ".join(f"{m} (its means rest on {n[m]} tasks per seed, and tasks rarer than 1 in {n[m]} carry up to "
                   f"{100 * rare_share(table, m):.0f} % of its error on {table.n_tasks('tail_rare_share', model=m):,} "
                   f"tasks)" for m in n if not means_stand(table, m))
