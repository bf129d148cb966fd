"""Tail-aware evaluation: exact per-task population errors on 10⁵–10⁶ fresh tasks (docs/theory.md §11).

For linear attention the prediction is linear in the query, ŷ = ŵ·x_q with ŵ the implicit predictor
of Theorem 1 (docs/theory.md §5), so a task's expected squared error over a fresh query is exactly
  e(task) = (ŵ − w)ᵀ Σ_x (ŵ − w) + σ²·[query_noise],
with no query sampling noise. Other models (softmax, MLP) fall back to the sampled query's squared
error. One convention: errors are normalised by d (docs/theory.md §1, the zero predictor scores 1
for Σ_x = I, w ~ N(0, I)) unless `normalise=False`, which gives the raw squared error of the
closed forms in `learners`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import bounds, fast, implicit, precision, tasks
from lintheory.core.model import ModelConfig, Params, forward_query, param_shapes
from lintheory.core.tasks import Batch, TaskConfig


def implicit_predictor(params: Params, cfg: ModelConfig, X_BND: jax.Array, y_BN: jax.Array) -> jax.Array:
  """ŵ = −W_L[y, :d] → [B, d], from the demonstrations alone (linear attention, Theorem 1).

  Every token j gets h_j ← h_j + ΔW_t h_j, so only the demonstrations are carried to find each ΔW_t;
  the query never enters (it is never a key or value).
  """
  if not cfg.is_linear:
    raise ValueError(f"the implicit predictor needs linear attention without MLP, got {cfg}")

  def step(Zs, p):
    dW = implicit.delta_W(p, Zs)
    return Zs + jnp.einsum("bnd,bed->bne", Zs, dW), dW

  Zs = jnp.concatenate([X_BND, y_BN[..., None]], axis=-1)
  _, dW = jax.lax.scan(step, Zs, implicit.layer_weights(params))
  return implicit.predictor(implicit.recurrence(dW)[1][-1])


def per_task_error(params: Params, cfg: ModelConfig, batch: Batch, task_cfg: TaskConfig,
                   normalise: bool = True) -> jax.Array:
  """[B] per-task error: exact population error for linear attention, else the sampled query's.

  Normalised by d unless normalise=False (see the module docstring). ŵ comes from core/fast.py's
  Gram form, equal to `implicit_predictor` to round-off and a few times cheaper.
  """
  if cfg.is_linear:
    C_BDD, _ = fast.gram_tasks(batch.X, batch.y, batch.x_q)
    dw = fast.w_hat(params, C_BDD, batch.X.shape[1]) - batch.w
    Sigma = jnp.asarray(tasks.x_covariance(task_cfg), dw.dtype)
    err = jnp.einsum("bd,de,be->b", dw, Sigma, dw)
    if task_cfg.query_noise:
      err = err + task_cfg.noise_std**2
  else:
    err = (forward_query(params, tasks.batch_tokens(batch), cfg) - batch.y_q) ** 2
  return tasks.normalised_error(err, task_cfg.d) if normalise else err


def per_task_gap(params: Params, cfg: ModelConfig, batch: Batch, task_cfg: TaskConfig) -> jax.Array:
  """[B] per-task generalisation gap of the implicit predictor ŵ (linear attention, docs/theory.md §15):
  its exact population loss (ŵ − w)ᵀΣ(ŵ − w) + σ² minus its loss on the task's own demonstrations
  (unnormalised, as in the Theorem-2 bounds)."""
  if not cfg.is_linear:
    raise ValueError(f"the gap needs the implicit predictor of linear attention without MLP, got {cfg}")
  C_BDD, _ = fast.gram_tasks(batch.X, batch.y, batch.x_q)
  w_hat = fast.w_hat(params, C_BDD, batch.X.shape[1])
  return bounds.gap(w_hat, batch, jnp.asarray(tasks.x_covariance(task_cfg), w_hat.dtype), task_cfg.noise_std)


MEASURES = ("error", "gap")  # what `errors` computes per task: per_task_error or per_task_gap


SUB_BATCH = 2048  # tasks per evaluation pass: larger [B, D, D] intermediates fall out of cache on a CPU


def in_sub_batches(f, batch: Batch) -> jax.Array:
  """f(batch) → [..., B] computed SUB_BATCH tasks at a time (lax.map), the same numbers as f(batch)."""
  B = batch.X.shape[0]
  if B <= SUB_BATCH or B % SUB_BATCH:
    return f(batch)
  parts = jax.tree.map(lambda a: a.reshape((B // SUB_BATCH, SUB_BATCH) + a.shape[1:]), batch)
  out = jax.lax.map(f, parts)  # [n, ..., SUB_BATCH]
  return jnp.moveaxis(out, 0, -2).reshape(out.shape[1:-1] + (B,))


def _check_int(name, value, lo):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def has_seed_axis(params: Params, cfg: ModelConfig) -> bool:
  """True when every array carries one leading seed axis over the shapes cfg implies."""
  shapes = param_shapes(cfg)
  if set(params) != set(shapes):
    raise ValueError(f"params must have the keys {sorted(shapes)} of cfg, got {sorted(params)}")
  lead = {k: tuple(np.shape(v))[: len(np.shape(v)) - len(shapes[k])] for k, v in params.items()}
  for k, v in params.items():
    if tuple(np.shape(v))[len(lead[k]):] != shapes[k] or len(lead[k]) > 1:
      raise ValueError(f"params[{k!r}] must have shape {shapes[k]} or (S, *{shapes[k]}), got {np.shape(v)}")
  if len(set(lead.values())) != 1:
    raise ValueError(f"params must share one leading seed axis, got {lead}")
  return len(next(iter(lead.values()))) == 1


@functools.lru_cache(maxsize=32)
def chunk_fn(cfg: ModelConfig, task_cfg: TaskConfig, chunk: int, dtype_name: str, seeds: bool,
             paired_seeds: bool, normalise: bool, contexts: tuple[int, ...] | None = None, measure: str = "error"):
  """The one jitted, fixed-shape function (params, key, i) → errors [chunk] or [S, chunk]; with
  contexts, [len(contexts), S, chunk]: the first M demonstrations of one draw of max(contexts)."""
  dtype = precision.DTYPES[dtype_name]

  def fn(params, key, i):
    key = jax.random.fold_in(key, i)
    error = (lambda p, b: per_task_error(p, cfg, b, task_cfg, normalise)) if measure == "error" else \
        (lambda p, b: per_task_gap(p, cfg, b, task_cfg))
    if contexts is not None:  # one draw, nested prompts: every M in one program and on the same tasks
      batch = tasks.sample(key, task_cfg, chunk, n_context=max(contexts), dtype=dtype)
      return jnp.stack([in_sub_batches(lambda b: jax.vmap(error, in_axes=(0, None))(params, b),
                                       batch._replace(X=batch.X[:, :M], y=batch.y[:, :M])) for M in contexts])
    if not seeds:
      return in_sub_batches(lambda b: error(params, b), tasks.sample(key, task_cfg, chunk, dtype=dtype))
    if paired_seeds:  # one draw of the tasks, every seed's model on it
      batch = tasks.sample(key, task_cfg, chunk, dtype=dtype)
      return in_sub_batches(lambda b: jax.vmap(error, in_axes=(0, None))(params, b), batch)
    S = jax.tree.leaves(params)[0].shape[0]
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(S) + 1)
    batches = jax.vmap(lambda k: tasks.sample(k, task_cfg, chunk, dtype=dtype))(keys)
    return jax.vmap(lambda p, b: in_sub_batches(lambda c: error(p, c), b))(params, batches)

  return jax.jit(fn)


def errors(params: Params, cfg: ModelConfig, task_cfg: TaskConfig, key: jax.Array, n_tasks: int = 100_000,
           chunk: int = 8192, dtype: str = "float64", normalise: bool = True,
           paired_seeds: bool = True, measure: str = "error") -> np.ndarray:
  """Per-task errors on n_tasks fresh tasks → numpy float64 [n_tasks], or [S, n_tasks] for params with
  a leading seed axis (vmapped).

  Chunks of `chunk` tasks run through one compiled function (the last is padded, then cut);
  chunk i uses tasks from fold_in(key, i). With paired_seeds every seed sees the same tasks (paired
  comparisons, common random numbers); otherwise each seed draws its own. dtype "float64" (default)
  keeps blow-ups of 10⁴⁰ finite; in "float32" they may overflow to inf. measure "gap" gives
  per_task_gap instead of the error (linear attention, unnormalised: normalise must be False).
  """
  _check_int("n_tasks", n_tasks, 1)
  _check_int("chunk", chunk, 1)
  if measure not in MEASURES:
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
  if measure == "gap" and normalise:
    raise ValueError("measure 'gap' is unnormalised: pass normalise=False")
  seeds = has_seed_axis(params, cfg)
  chunk = min(chunk, n_tasks)
  with precision.for_dtype(dtype):
    fn = chunk_fn(cfg, task_cfg, chunk, dtype, seeds, paired_seeds, normalise, None, measure)
    p = jax.tree.map(lambda a: jnp.asarray(a, precision.DTYPES[dtype]), params)
    parts = [fn(p, key, i) for i in range(-(-n_tasks // chunk))]
    out = np.concatenate([np.asarray(e, np.float64) for e in parts], axis=-1)
  return out[..., :n_tasks]


def context_errors(params: Params, cfg: ModelConfig, task_cfg: TaskConfig, key: jax.Array, contexts,
                   n_tasks: int = 100_000, chunk: int = 8192, dtype: str = "float64") -> dict[int, np.ndarray]:
  """Per-task errors at test-time context sizes M ≠ N → {M: numpy float64 [S, n_tasks]} for params
  with a leading seed axis, every seed on the same tasks.

  Each task is drawn once with max(contexts) demonstrations and given its first M, so the sizes are
  compared on the same tasks (nested prompts) and one compiled program serves them all; chunk i uses
  fold_in(key, i), as in `errors`.
  """
  _check_int("n_tasks", n_tasks, 1)
  _check_int("chunk", chunk, 1)
  contexts = tuple(int(M) for M in contexts)
  if not contexts or min(contexts) < 1:
    raise ValueError(f"contexts must be a non-empty list of sizes >= 1, got {contexts!r}")
  if task_cfg.n_context_min:
    raise ValueError("context_errors needs fixed-length prompts (n_context_min = 0): the first M "
                     "demonstrations of a zero-padded prompt are not a prompt of M")
  if not has_seed_axis(params, cfg):
    raise ValueError("context_errors needs params with a leading seed axis")
  chunk = min(chunk, n_tasks)
  with precision.for_dtype(dtype):
    fn = chunk_fn(cfg, task_cfg, chunk, dtype, True, True, True, contexts)
    p = jax.tree.map(lambda a: jnp.asarray(a, precision.DTYPES[dtype]), params)
    out = np.concatenate([np.asarray(fn(p, key, i), np.float64) for i in range(-(-n_tasks // chunk))], axis=-1)
  return {M: out[j, :, :n_tasks] for j, M in enumerate(contexts)}


def task_features(task: TaskConfig, key: jax.Array, n: int, chunk: int = 8192) -> dict[str, np.ndarray]:
  """Per task, in `errors`' order (chunk i from fold_in(key, i), the last one cut): λ_max of the
  demonstrations' covariance X̂ᵀX̂/N and the task norm ‖w‖ → {"lam_max", "w_norm"} [n] float64."""
  chunk = min(chunk, n)

  @jax.jit
  def one(i):
    b = tasks.sample(jax.random.fold_in(key, i), task, chunk, dtype=jnp.float64)
    cov = jnp.einsum("bni,bnj->bij", b.X, b.X) / b.X.shape[1]
    return jnp.linalg.eigvalsh(cov)[:, -1], jnp.linalg.norm(b.w, axis=-1)

  with precision.x64():
    parts = [one(i) for i in range(-(-n // chunk))]
  return {"lam_max": np.concatenate([np.asarray(p[0]) for p in parts])[:n],
          "w_norm": np.concatenate([np.asarray(p[1]) for p in parts])[:n]}


def bayes_predictor(task_cfg: TaskConfig, X_BND: jax.Array, y_BN: jax.Array) -> jax.Array:
  """The posterior mean of w under the task prior N(0, Σ_w) and noise σ² → [B, d] (docs/theory.md §9).

  ŵ = Σ_w Xᵀ(X Σ_w Xᵀ + σ² I)⁻¹ y, which needs no inverse of Σ_w (a low-rank prior is fine). With
  σ = 0 the labels pin w = F z (F Fᵀ = Σ_w) to y = X F z exactly, and the posterior mean is F (X F)⁺ y:
  the interpolant in range Σ_w of least Σ_w⁺-norm vᵀΣ_w⁺v, which is w itself once X F has full column
  rank (N ≥ rank Σ_w for inputs in general position), and X⁺y only in special cases such as Σ_w ∝ I.
  With a Gaussian prior and Gaussian noise no learner beats it in expected error: it is the floor of
  every error curve.
  """
  Sw = jnp.asarray(tasks.as_cov("w_cov", task_cfg.w_cov, task_cfg.d, psd=True), X_BND.dtype)
  if task_cfg.noise_std == 0.0:
    F = jnp.asarray(tasks.w_factor(task_cfg), X_BND.dtype)
    z = jnp.einsum("bkn,bn->bk", jnp.linalg.pinv(jnp.einsum("bnd,dk->bnk", X_BND, F)), y_BN)
    return jnp.einsum("dk,bk->bd", F, z)
  K = jnp.einsum("bnd,de,bme->bnm", X_BND, Sw, X_BND) + task_cfg.noise_std**2 * jnp.eye(X_BND.shape[1], dtype=X_BND.dtype)
  alpha = jnp.linalg.solve(K, y_BN[..., None])[..., 0]
  return jnp.einsum("de,bne,bn->bd", Sw, X_BND, alpha)


def after(x, *deps):
  """x, made available only once every one of deps is computed: a data dependency (an optimisation
  barrier, values unchanged) that keeps batched linear-algebra calls of one program from running side by
  side. jaxlib 0.10's LAPACK kernels split a large batch over XLA's intra-op pool and wait for the parts:
  as many of them at once as the pool has threads (two on 2 cores) hang the process (run/runtime.py)."""
  return jax.lax.optimization_barrier((x, deps))[0]


def bayes_posterior(task_cfg: TaskConfig, X_BND: jax.Array, y_BN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The posterior of w given one prompt: its mean [B, d] (bayes_predictor) and covariance [B, d, d],
  C = Σ_w − Σ_w Xᵀ(X Σ_w Xᵀ + σ² I)⁺ X Σ_w (docs/theory.md §9); the pseudo-inverse covers σ = 0."""
  Sw = jnp.asarray(tasks.as_cov("w_cov", task_cfg.w_cov, task_cfg.d, psd=True), X_BND.dtype)
  SX = jnp.einsum("de,bne->bdn", Sw, X_BND)
  K = jnp.einsum("bnd,bdm->bnm", X_BND, SX) + task_cfg.noise_std**2 * jnp.eye(X_BND.shape[1], dtype=X_BND.dtype)
  m = bayes_predictor(task_cfg, X_BND, y_BN)
  C = Sw - jnp.einsum("bdn,bnm,bem->bde", SX, jnp.linalg.pinv(after(K, m), hermitian=True), SX)
  return m, C


def posterior_update(m_BD: jax.Array, C_BDD: jax.Array, XX_BDD: jax.Array, Xy_BD: jax.Array,
                     noise_std: float) -> jax.Array:
  """The posterior mean after V more examples (y_v = x_v·w + noise_std·ε_v), given by their moments
  XX = Σ x_v x_vᵀ and Xy = Σ x_v y_v → [B, d] (docs/theory.md §8, "What the validation labels are worth").

  m' = m + C (XX C + σ'² I)⁺ (Xy − XX m): the push-through form of the Gaussian update, d × d whatever V;
  with σ' = 0 and V ≥ d the examples pin w (m' = XX⁻¹ Xy = w), with C = 0 the prompt already had.
  """
  d = m_BD.shape[-1]
  A = jnp.einsum("bde,bef->bdf", XX_BDD, C_BDD) + noise_std**2 * jnp.eye(d, dtype=m_BD.dtype)
  r = Xy_BD - jnp.einsum("bde,be->bd", XX_BDD, m_BD)
  return m_BD + jnp.einsum("bde,bef,bf->bd", C_BDD, jnp.linalg.pinv(A), r)


@functools.lru_cache(maxsize=8)
def _bayes_chunk_fn(task_cfg: TaskConfig, chunk: int, dtype_name: str, normalise: bool):
  dtype = precision.DTYPES[dtype_name]
  Sigma = tasks.x_covariance(task_cfg)

  def fn(key, i):
    batch = tasks.sample(jax.random.fold_in(key, i), task_cfg, chunk, dtype=dtype)
    dw = bayes_predictor(task_cfg, batch.X, batch.y) - batch.w
    err = jnp.einsum("bd,de,be->b", dw, jnp.asarray(Sigma, dtype), dw)
    err = err + (task_cfg.noise_std**2 if task_cfg.query_noise else 0.0)
    return tasks.normalised_error(err, task_cfg.d) if normalise else err

  return jax.jit(fn)


def bayes_errors(task_cfg: TaskConfig, key: jax.Array, n_tasks: int = 100_000, chunk: int = 8192,
                 dtype: str = "float64", normalise: bool = True) -> np.ndarray:
  """Per-task exact errors of the Bayes predictor on the very tasks `errors` draws with the same key
  (paired_seeds) → numpy float64 [n_tasks]."""
  _check_int("n_tasks", n_tasks, 1)
  chunk = min(chunk, n_tasks)
  with precision.for_dtype(dtype):
    fn = _bayes_chunk_fn(task_cfg, chunk, dtype, normalise)
    out = np.concatenate([np.asarray(fn(key, i), np.float64) for i in range(-(-n_tasks // chunk))])
  return out[:n_tasks]
