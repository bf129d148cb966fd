"""Training the NNX model on in-context regression tasks (fresh every step, or a fixed pool).

One `LinearTransformer` and one `nnx.Optimizer` per seed. The inner loop is one jitted `lax.scan`
over a chunk of steps, vmapped over seeds, carrying the split NNX state (merge/split happen at trace
time only); Python only runs between chunks (progress, divergence check). At the boundary the
parameters are a plain dict with a leading seed axis and the optimiser state is optax's.
Linear attention without MLP trains through the Gram-matrix forward of core/fast.py, other models
through model.forward_query (the reference layers, the last one for the query token only).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lintheory.core import fast, learners, precision, tasks
from lintheory.run import io, recipes
from lintheory.core.model import LinearTransformer, ModelConfig, Params, forward, forward_query, params_of
from lintheory.core.tasks import TaskConfig

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
DRAW_DTYPE = jnp.float32  # training tasks are drawn in float32 and widened to the training dtype (tasks.sample)
# The trainer's revision: part of the model cache's key (run.cache), raised whenever one configuration
# starts to train different weights (here: float32 draws; softmax and MLP models through
# forward_query; 3: a seed whose fit stalls far above its siblings' is re-initialised, run.adequacy), so a
# cache never hands back models of an older trainer.
TRAINER = 3


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 3000  # optimisation steps
  batch_size: int = 1024  # fresh tasks per step
  lr: float | None = None  # peak learning rate; None: the recipe's for the model's depth (run.recipes)
  warmup: int | None = None  # linear warm-up steps; None: the recipe's
  schedule: str = "cosine"  # "cosine" (decay to lr/10 at the end) or "constant"
  optimizer: str = "adam"  # "adam" or "adamw"
  weight_decay: float = 0.0  # AdamW decoupled weight decay
  clip_norm: float | None = None  # global-norm gradient clipping, 0 disables; None: the recipe's
  chunk: int = 100  # steps per jitted scan; progress is reported between chunks
  dtype: str | None = None  # "float32" or "float64" (run under core.precision.for_dtype); None: the recipe's
  max_skipped: int = 0  # consecutive non-finite steps skipped (optax.apply_if_finite) before divergence
  pool_size: int = 0  # 0: fresh tasks every step; P > 0: every step samples its batch from one
  #                     fixed pool of P prompts drawn once from the task distribution (pool key derived from the seed)
  tail_frac: float | None = None  # share of each fresh batch whose demonstrations (their labels follow, the
  #                                 query does not) are scaled by s ~ U[1, tail_scale]; None: the recipe's
  tail_scale: float | None = None  # the largest demonstration scale s of tail_frac (>= 1); None: the recipe's

  def __post_init__(self):
    for name, lo in (("steps", 1), ("batch_size", 1), ("warmup", 0), ("chunk", 1), ("max_skipped", 0),
                     ("pool_size", 0)):
      v = getattr(self, name)
      if v is None and name in recipes.FIELDS:
        continue
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
      raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
    if self.optimizer not in ("adam", "adamw"):
      raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
    if not self.weight_decay >= 0 or not (self.clip_norm is None or self.clip_norm >= 0):
      raise ValueError("weight_decay and clip_norm must be >= 0")
    if self.dtype is not None and self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
    if self.tail_frac is not None and not 0 <= self.tail_frac <= 1:
      raise ValueError(f"tail_frac must be in [0, 1], got {self.tail_frac!r}")
    if self.tail_scale is not None and not (math.isfinite(self.tail_scale) and self.tail_scale >= 1):
      raise ValueError(f"tail_scale must be a finite number >= 1, got {self.tail_scale!r}")

  @property
  def resolved(self) -> bool:
    """True when no field is left to the recipe (resolve has run or every field was given)."""
    return all(getattr(self, f) is not None for f in recipes.FIELDS)


def resolve(train_cfg: TrainConfig, model_cfg: ModelConfig) -> TrainConfig:
  """train_cfg with every field left at None set from the recipe for model_cfg's depth (run.recipes)."""
  fields = recipes.recipe(model_cfg.n_layers).train_fields(train_cfg.steps, train_cfg.pool_size)
  return dataclasses.replace(train_cfg, **{k: v for k, v in fields.items() if getattr(train_cfg, k) is None})


class TrainState(NamedTuple):
  params: Params  # leading seed axis [S, ...]
  opt_state: optax.OptState
  step: int


class TrainResult(NamedTuple):
  params: Params  # [S, ...] the last finite parameters
  losses: np.ndarray  # [S, steps_done] training loss per step
  state: TrainState  # for resuming
  diverged: str | None  # a message when a non-finite loss stopped the run
  skipped: np.ndarray  # [S] steps skipped for a non-finite loss (only with max_skipped > 0)
  seconds: float


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  if not cfg.resolved:
    raise ValueError("the TrainConfig leaves fields to the recipe (None); pass train.resolve(cfg, model_cfg)")
  if cfg.schedule == "cosine":
    warmup = max(cfg.warmup, 1)  # optax needs a warm-up of >= 1 step and a decay of >= 1 step after it
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(cfg.steps, warmup + 1), end_value=cfg.lr / 10)
  else:
    lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup, 1)),
                               optax.constant_schedule(cfg.lr)], [max(cfg.warmup, 1)])
  opt = optax.adamw(lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw" else optax.adam(lr)
  opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt) if cfg.clip_norm else opt
  # Deep linear attention is a high-degree polynomial of its inputs: a rare heavy-tailed batch can
  # overflow float32 long before training is unstable. Skipping such steps is counted, not hidden.
  return optax.apply_if_finite(opt, cfg.max_skipped) if cfg.max_skipped else opt


def mse(params: Params, batch: tasks.Batch, model_cfg: ModelConfig) -> jax.Array:
  """Mean squared error of the query prediction (not halved), through the reference forward."""
  y_hat, _ = forward(params, tasks.batch_tokens(batch), model_cfg)
  return jnp.mean((y_hat - batch.y_q) ** 2)


def predict(params: Params, batch: tasks.Batch, model_cfg: ModelConfig, use_fast: bool) -> jax.Array:
  """The query predictions [B] the training loss is computed from."""
  if use_fast:  # the Gram matrix straight from the tasks: no [B, T, D] tokens
    C_BDD, q_BD = fast.gram_tasks(batch.X, batch.y, batch.x_q)
    return fast.forward_gram(params, C_BDD, q_BD, batch.X.shape[1])
  return forward_query(params, tasks.batch_tokens(batch), model_cfg)  # the last layer for the query only


def objective(model_cfg: ModelConfig, use_fast: bool | None = None) -> Callable:
  """objective(params, batch): the training loss (the MSE of `mse`), through core/fast.py where it applies
  (use_fast None)."""
  use_fast = fast.applies(model_cfg) if use_fast is None else use_fast
  if use_fast and not fast.applies(model_cfg):
    raise ValueError(f"use_fast needs linear attention without MLP, got {model_cfg}")
  return lambda params, batch: jnp.mean((predict(params, batch, model_cfg, use_fast) - batch.y_q) ** 2)


def loss_fn(model_cfg: ModelConfig, use_fast: bool | None = None) -> Callable:
  """loss(model, batch): `objective` of the model's parameters."""
  of_params = objective(model_cfg, use_fast)
  return lambda model, batch: of_params(params_of(model), batch)


def modules(model_cfg: ModelConfig, tx: optax.GradientTransformation, params: Params,
            opt_state: optax.OptState | None = None) -> tuple[LinearTransformer, nnx.Optimizer]:
  """The model holding `params` and its optimiser, holding `opt_state` (fresh when None)."""
  model = LinearTransformer.from_params(model_cfg, params)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  if opt_state is not None:
    nnx.update(opt.opt_state, nnx.state(opt_state))
  return model, opt


def task_pool(key: jax.Array, task_cfg: TaskConfig, train_cfg: TrainConfig) -> tasks.Batch:
  """The fixed pool of train_cfg.pool_size prompts of one seed (pool_size > 0)."""
  return tasks.sample(key, task_cfg, train_cfg.pool_size, dtype=DTYPES[train_cfg.dtype], draw_dtype=DRAW_DTYPE)


def draw(key: jax.Array, task_cfg: TaskConfig, train_cfg: TrainConfig, pool: tasks.Batch | None) -> tasks.Batch:
  """One step's batch: fresh tasks, or batch_size prompts drawn with replacement from the pool."""
  if pool is None and train_cfg.tail_frac:  # None (not resolved) or 0: no tail
    k_b, k_s = jax.random.split(key)
    b = tasks.sample(k_b, task_cfg, train_cfg.batch_size, dtype=DTYPES[train_cfg.dtype], draw_dtype=DRAW_DTYPE)
    return tasks.scale_demonstrations(k_s, b, train_cfg.tail_frac, train_cfg.tail_scale)
  if pool is None:
    return tasks.sample(key, task_cfg, train_cfg.batch_size, dtype=DTYPES[train_cfg.dtype], draw_dtype=DRAW_DTYPE)
  idx = jax.random.randint(key, (train_cfg.batch_size,), 0, train_cfg.pool_size)
  return jax.tree.map(lambda a: a[idx], pool)


def make_chunk(task_cfg: TaskConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, n_steps: int,
               use_fast: bool | None = None):
  """A jitted f(params, opt_state, data_keys, pool_keys, step0) running n_steps for every seed.

  use_fast: None takes the Gram-matrix forward wherever it applies; False forces the reference.
  """
  train_cfg = resolve(train_cfg, model_cfg)
  tx = optimizer(train_cfg)
  loss = loss_fn(model_cfg, use_fast)

  def one_seed(params, opt_state, key, pool_key, step0):
    pool = task_pool(pool_key, task_cfg, train_cfg) if train_cfg.pool_size else None
    graphdef, state = nnx.split(modules(model_cfg, tx, params, opt_state))

    def step(state, i):
      model, opt = nnx.merge(graphdef, state)
      batch = draw(jax.random.fold_in(key, step0 + i), task_cfg, train_cfg, pool)
      value, grads = nnx.value_and_grad(loss)(model, batch)
      opt.update(model, grads)
      return nnx.split((model, opt))[1], value

    state, losses = jax.lax.scan(step, state, jnp.arange(n_steps))
    model, opt = nnx.merge(graphdef, state)
    return params_of(model), optax_state(opt), losses

  return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, 0, None)))


def init_key(seed: int, restart: int = 0) -> jax.Array:
  """The initial weights' key: key(seed), or for a restart r >= 1 fold_in(fold_in(key(seed), 3), r) (a
  restart draws new initial weights; the seed's data and pool stay its own)."""
  key = jax.random.key(seed)
  return key if restart == 0 else jax.random.fold_in(jax.random.fold_in(key, 3), restart)


def init_state(model_cfg: ModelConfig, train_cfg: TrainConfig, seeds, restarts=None) -> TrainState:
  """One model per seed (parameters from init_key(seed, restart), restart 0 unless `restarts` gives one
  per seed) and its fresh optimiser state."""
  train_cfg = resolve(train_cfg, model_cfg)
  dtype = DTYPES[train_cfg.dtype]
  tx = optimizer(train_cfg)
  restarts = (0,) * len(seeds) if restarts is None else tuple(restarts)
  keys = jnp.stack([init_key(s, r) for s, r in zip(seeds, restarts, strict=True)])

  def build(key):
    model = LinearTransformer(model_cfg, rngs=nnx.Rngs(params=key), dtype=dtype)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(keys[0])))
  state = jax.vmap(lambda k: nnx.split(build(k))[1])(keys)
  model, opt = nnx.merge(graphdef, state)
  return TrainState(params_of(model), optax_state(opt), 0)


def optax_state(opt: nnx.Optimizer) -> optax.OptState:
  """The optimiser's state as optax builds it for the parameter dict (plain dicts, plain arrays)."""
  is_state = lambda x: isinstance(x, nnx.State)
  return jax.tree.map(lambda x: nnx.to_pure_dict(x) if is_state(x) else x, nnx.as_pure(opt.opt_state),
                      is_leaf=is_state)


def seed_keys(seeds, stream: int) -> jax.Array:
  """[S] keys fold_in(key(seed), stream): 1 training batches, 2 the task pool (3: restarts, init_key)."""
  return jnp.stack([jax.random.fold_in(jax.random.key(s), stream) for s in seeds])


def fit(task_cfg: TaskConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, seeds=(0,),
        state: TrainState | None = None,
        on_chunk: Callable[[TrainState, np.ndarray], None] | None = None, restarts=None) -> TrainResult:
  """Train one model per seed (vmapped) from scratch or from `state` up to train_cfg.steps.

  restarts: per seed, which initial weights a fresh start draws (init_key; None: restart 0 for every seed).
  on_chunk(state, chunk_losses [S, n]) runs between jitted chunks (progress, checkpoints).
  Fields of train_cfg left at None come from the recipe for the model's depth (resolve).
  Training runs under core.precision.for_dtype(train_cfg.dtype): a float32 model is the same bits
  whether or not the caller enabled 64-bit mode (studies that measure in float64 share cached models).
  """
  if model_cfg.d != task_cfg.d:
    raise ValueError(f"model d={model_cfg.d} differs from task d={task_cfg.d}")
  seeds = tuple(seeds)
  if not seeds:
    raise ValueError("seeds must name at least one seed")
  train_cfg = resolve(train_cfg, model_cfg)
  with precision.for_dtype(train_cfg.dtype):
    return _fit(task_cfg, model_cfg, train_cfg, seeds, state, on_chunk, restarts)


def _fit(task_cfg, model_cfg, train_cfg, seeds, state, on_chunk, restarts) -> TrainResult:
  state = init_state(model_cfg, train_cfg, seeds, restarts) if state is None else state
  data_keys, pool_keys = seed_keys(seeds, 1), seed_keys(seeds, 2)
  chunks: dict[int, Callable] = {}
  losses, diverged, t0 = [], None, time.perf_counter()
  while state.step < train_cfg.steps:
    n = min(train_cfg.chunk, train_cfg.steps - state.step)
    if n not in chunks:  # at most two compilations: the full chunk and the remainder
      chunks[n] = make_chunk(task_cfg, model_cfg, train_cfg, n)
    params, opt_state, chunk_losses = chunks[n](state.params, state.opt_state, data_keys, pool_keys,
                                                 state.step)
    chunk_losses = np.asarray(chunk_losses)
    finite = np.isfinite(chunk_losses)
    params_ok = all(bool(jnp.all(jnp.isfinite(v))) for v in params.values())
    if not params_ok or (train_cfg.max_skipped == 0 and not finite.all()):
      bad = int(np.argmax(~np.all(finite, axis=0))) if not finite.all() else n - 1
      diverged = (f"non-finite training loss at step {state.step + bad} (seeds {seeds}); kept the "
                  f"parameters of step {state.step}. Lower --lr or raise --warmup.")
      break
    state = TrainState(params, opt_state, state.step + n)
    losses.append(chunk_losses)
    if on_chunk is not None:
      on_chunk(state, chunk_losses)
  all_losses = np.concatenate(losses, axis=1) if losses else np.zeros((len(seeds), 0))
  skipped = (~np.isfinite(all_losses)).sum(axis=1)
  return TrainResult(state.params, all_losses, state, diverged, skipped, time.perf_counter() - t0)


def print_progress(total: int, label: str = "") -> Callable[[TrainState, np.ndarray], None]:
  """An on_chunk callback printing progress to stderr (lintheory.run.io.progress)."""
  def report(state: TrainState, chunk_losses: np.ndarray) -> None:
    loss = np.array2string(chunk_losses[:, -1], precision=4, threshold=8)
    io.progress(f"  {label}step {state.step:>6}/{total}  loss {loss}", final=state.step >= total)
  return report


def seed_params(params: Params, i: int) -> Params:
  return {k: v[i] for k, v in params.items()}


def evaluate(params: Params, task_cfg: TaskConfig, model_cfg: ModelConfig, key: jax.Array,
             n_tasks: int = 10_000, n_context: int | None = None, dtype=jnp.float32) -> dict[str, float]:
  """MSE of the model, of one GD step at η*, of the ridge (Bayes) floor and of the zero predictor
  ŷ = 0 (E[y_q²]) on the same tasks, each with its standard error; zero_gap: the model's mean
  improvement over ŷ = 0, paired per task, with its standard error."""
  b = tasks.sample(key, task_cfg, n_tasks, n_context=n_context, dtype=dtype)
  N = b.X.shape[1]
  y_hat, _ = jax.jit(forward, static_argnums=2)(params, tasks.batch_tokens(b), model_cfg)
  eta = learners.eta_star(task_cfg.d, task_cfg.n_context, task_cfg.noise_std)
  y_gd = eta * jnp.einsum("bd,bnd,bn->b", b.x_q, b.X, b.y) / N
  w_ridge = learners.ridge(b.X, b.y, learners.bayes_ridge_lambda(task_cfg.noise_std))
  y_ridge = jnp.einsum("bd,bd->b", w_ridge, b.x_q)
  sq = lambda y: np.asarray((y - b.y_q) ** 2, np.float64)
  out = {}
  se = lambda e: float(e.std(ddof=1) / np.sqrt(e.size))
  for name, y in (("loss", y_hat), ("gd1_loss", y_gd), ("ridge_loss", y_ridge), ("zero_loss", 0 * b.y_q)):
    e = sq(y)
    out[name], out[name + "_se"] = float(e.mean()), se(e)
  gap = sq(0 * b.y_q) - sq(y_hat)
  out["zero_gap"], out["zero_gap_se"] = float(gap.mean()), se(gap)
  return out


# A model whose loss ends above this many times the zero predictor's has diverged (its predictions
# are several times larger than the labels), whether or not a value overflowed.
DIVERGED_VS_ZERO = 10.0


def outcome(ev: dict[str, float], diverged: str | None) -> dict:
  """diverged / learned of a finished run, from evaluate's metrics and fit's divergence message.

  diverged: a non-finite training loss, or a final loss that is not finite or above DIVERGED_VS_ZERO
  times the zero predictor's. learned: not diverged and below the zero predictor's loss by more
  than two standard errors of the paired difference (evaluate's zero_gap)."""
  blown = not math.isfinite(ev["loss"]) or ev["loss"] > DIVERGED_VS_ZERO * ev["zero_loss"]
  if diverged is None and blown:
    vs = "not finite" if not math.isfinite(ev["loss"]) else f"above {DIVERGED_VS_ZERO:g}x the zero predictor's"
    diverged = (f"the final loss {ev['loss']:.4g} is {vs} (ŷ = 0 has {ev['zero_loss']:.4g}); lower --lr or "
                "raise --warmup")
  learned = diverged is None and ev["zero_gap"] > 2 * ev["zero_gap_se"]
  return {"diverged": diverged is not None, "divergence": diverged, "learned": bool(learned),
          "zero_loss": ev["zero_loss"], "zero_loss_se": ev["zero_loss_se"]}
