"""Training the NNX model on in-context regression tasks (fresh every step, or a fixed pool).

One `LinearTransformer` and its `nnx.Optimizer(model, tx, wrt=nnx.Param)` per seed, held as one
model and one optimiser whose arrays carry a leading seed axis (TrainState). A chunk of steps is
nnx.split, one jitted `lax.scan` over the steps vmapped over the seeds, nnx.merge; Python only runs
between chunks (progress, divergence check). The loss's forward is TrainConfig.forward: linear
attention without MLP trains through the Gram-matrix forward of core/fast.py, other models through
model.forward_query (the reference layers, the last one for the query token only).
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

DRAW_DTYPE = jnp.float32  # training tasks are drawn in float32 and widened to the training dtype (tasks.sample)
# The trainer's revision: part of the model cache's key (run.cache), raised whenever one configuration
# starts to train different weights (here: float32 draws; softmax and MLP models through
# forward_query; 3: a seed whose fit stalls far above its siblings' is re-initialised, run.adequacy), so a
# cache never hands back models of an older trainer.
TRAINER = 3


FORWARDS = ("auto", "query", "full")  # TrainConfig.forward; objective also takes "fast" (core/fast.py or an error)


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
  huber_delta: float = 0.0  # > 0: the loss is the Huber loss of the query error with this δ, doubled (r² for
  #                           |r| <= δ, linear above), instead of the squared error
  forward: str = "auto"  # the loss's forward: "auto" (core/fast.py's Gram form where it applies, else "query"),
  #                        "query" (model.forward_query) or "full" (model.forward: every layer on every token)

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
    if self.dtype is not None and self.dtype not in precision.DTYPES:
      raise ValueError(f"dtype must be one of {tuple(precision.DTYPES)}, got {self.dtype!r}")
    if self.tail_frac is not None and not 0 <= self.tail_frac <= 1:
      raise ValueError(f"tail_frac must be in [0, 1], got {self.tail_frac!r}")
    if self.tail_scale is not None and not (math.isfinite(self.tail_scale) and self.tail_scale >= 1):
      raise ValueError(f"tail_scale must be a finite number >= 1, got {self.tail_scale!r}")
    if not (math.isfinite(self.huber_delta) and self.huber_delta >= 0):
      raise ValueError(f"huber_delta must be a finite number >= 0, got {self.huber_delta!r}")
    if self.forward not in FORWARDS:
      raise ValueError(f"forward must be one of {FORWARDS}, got {self.forward!r}")

  @property
  def resolved(self) -> bool:
    """True when no field is left to the recipe (resolve has run or every field was given)."""
    return all(getattr(self, f) is not None for f in recipes.FIELDS)


def resolve(train_cfg: TrainConfig, model_cfg: ModelConfig) -> TrainConfig:
  """train_cfg with every field left at None set from the recipe for model_cfg's depth (run.recipes)."""
  fields = recipes.recipe(model_cfg.n_layers).train_fields(train_cfg.steps, train_cfg.pool_size)
  return dataclasses.replace(train_cfg, **{k: v for k, v in fields.items() if getattr(train_cfg, k) is None})


class TrainState(NamedTuple):
  model: LinearTransformer  # every seed's model: each nnx.Param with a leading seed axis [S, ...]
  optimizer: nnx.Optimizer  # its nnx.Optimizer(model, tx, wrt=nnx.Param), the same seed axis
  step: int

  @property
  def params(self) -> Params:
    """The parameters [S, ...] as the dict the pure functions take."""
    return params_of(self.model)

  @property
  def opt_state(self):
    """The optimiser's optax state (leaves [S, ...], in optax's order): what a checkpoint stores."""
    return self.optimizer.opt_state


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


def predict(params: Params, batch: tasks.Batch, model_cfg: ModelConfig, forward_kind: str) -> jax.Array:
  """The query predictions [B] the training loss is computed from, through the forward `forward_kind`
  ("fast", "query" or "full"; TrainConfig.forward)."""
  if forward_kind == "fast":  # the Gram matrix straight from the tasks: no [B, T, D] tokens
    C_BDD, q_BD = fast.gram_tasks(batch.X, batch.y, batch.x_q)
    return fast.forward_gram(params, C_BDD, q_BD, batch.X.shape[1])
  if forward_kind == "query":  # the last layer for the query only
    return forward_query(params, tasks.batch_tokens(batch), model_cfg)
  return forward(params, tasks.batch_tokens(batch), model_cfg)[0]


def query_loss(huber_delta: float = 0.0) -> Callable:
  """loss(r): the mean over tasks of the squared query error r, or with huber_delta > 0 of its Huber
  version, doubled so that it is r² for |r| <= δ (TrainConfig.huber_delta)."""
  if huber_delta > 0:
    return lambda r: jnp.mean(optax.huber_loss(r, delta=huber_delta) * 2)
  return lambda r: jnp.mean(r ** 2)


def objective(model_cfg: ModelConfig, forward_kind: str = "auto", huber_delta: float = 0.0) -> Callable:
  """objective(params, batch): the training loss (query_loss of the predictions' error) through the
  forward `forward_kind` (TrainConfig.forward; "fast" insists on core/fast.py)."""
  if forward_kind == "fast" and not model_cfg.is_linear:
    raise ValueError(f"forward 'fast' needs linear attention without MLP, got {model_cfg}")
  if forward_kind not in FORWARDS + ("fast",):
    raise ValueError(f"forward must be one of {FORWARDS + ('fast',)}, got {forward_kind!r}")
  if forward_kind == "auto":
    forward_kind = "fast" if model_cfg.is_linear else "query"
  loss = query_loss(huber_delta)
  return lambda params, batch: loss(predict(params, batch, model_cfg, forward_kind) - batch.y_q)


def loss_fn(model_cfg: ModelConfig, forward_kind: str = "auto", huber_delta: float = 0.0) -> Callable:
  """loss(model, batch): `objective` of the model's parameters."""
  of_params = objective(model_cfg, forward_kind, huber_delta)
  return lambda model, batch: of_params(params_of(model), batch)


def build(model_cfg: ModelConfig, train_cfg: TrainConfig, key: jax.Array) -> tuple[LinearTransformer, nnx.Optimizer]:
  """A fresh model (its weights from `key`, in the training dtype) and its optimiser (train_cfg resolved)."""
  model = LinearTransformer(model_cfg, rngs=nnx.Rngs(params=key), dtype=precision.DTYPES[train_cfg.dtype])
  return model, nnx.Optimizer(model, optimizer(train_cfg), wrt=nnx.Param)


def graphdef(model_cfg: ModelConfig, train_cfg: TrainConfig) -> nnx.GraphDef:
  """The graph of build's (model, optimiser), without computing any array."""
  return nnx.graphdef(nnx.eval_shape(lambda: build(model_cfg, train_cfg, jax.random.key(0))))


def task_pool(key: jax.Array, task_cfg: TaskConfig, train_cfg: TrainConfig) -> tasks.Batch:
  """The fixed pool of train_cfg.pool_size prompts of one seed (pool_size > 0)."""
  return tasks.sample(key, task_cfg, train_cfg.pool_size, dtype=precision.DTYPES[train_cfg.dtype],
                      draw_dtype=DRAW_DTYPE)


def draw(key: jax.Array, task_cfg: TaskConfig, train_cfg: TrainConfig, pool: tasks.Batch | None) -> tasks.Batch:
  """One step's batch: fresh tasks, or batch_size prompts drawn with replacement from the pool."""
  if pool is None and train_cfg.tail_frac:  # None (not resolved) or 0: no tail
    k_b, k_s = jax.random.split(key)
    b = tasks.sample(k_b, task_cfg, train_cfg.batch_size, dtype=precision.DTYPES[train_cfg.dtype],
                     draw_dtype=DRAW_DTYPE)
    return tasks.scale_demonstrations(k_s, b, train_cfg.tail_frac, train_cfg.tail_scale)
  if pool is None:
    return tasks.sample(key, task_cfg, train_cfg.batch_size, dtype=precision.DTYPES[train_cfg.dtype],
                     draw_dtype=DRAW_DTYPE)
  idx = jax.random.randint(key, (train_cfg.batch_size,), 0, train_cfg.pool_size)
  return jax.tree.map(lambda a: a[idx], pool)


def make_chunk(task_cfg: TaskConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, n_steps: int,
               forward_kind: str | None = None) -> Callable:
  """chunk(state, data_keys, pool_keys) → (the TrainState n_steps later, losses [S, n_steps]): nnx.split of
  the models and optimisers, one jitted lax.scan over the steps vmapped over the seeds, nnx.merge.

  forward_kind: the loss's forward (objective; None: train_cfg.forward).
  """
  train_cfg = resolve(train_cfg, model_cfg)
  loss = loss_fn(model_cfg, train_cfg.forward if forward_kind is None else forward_kind, train_cfg.huber_delta)
  graph = graphdef(model_cfg, train_cfg)  # this config's optimiser, whichever built the state

  def one_seed(nodes, key, pool_key, step0):
    pool = task_pool(pool_key, task_cfg, train_cfg) if train_cfg.pool_size else None

    def step(nodes, i):
      model, opt = nnx.merge(graph, nodes)
      batch = draw(jax.random.fold_in(key, step0 + i), task_cfg, train_cfg, pool)
      value, grads = nnx.value_and_grad(loss)(model, batch)
      opt.update(model, grads)
      return nnx.state((model, opt)), value

    return jax.lax.scan(step, nodes, jnp.arange(n_steps))

  run = jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, None)))

  def chunk(state: TrainState, data_keys: jax.Array, pool_keys: jax.Array) -> tuple[TrainState, jax.Array]:
    nodes, losses = run(nnx.state((state.model, state.optimizer)), data_keys, pool_keys, state.step)
    return TrainState(*nnx.merge(graph, nodes), state.step + n_steps), losses

  return chunk


def init_key(seed: int, restart: int = 0) -> jax.Array:
  """The initial weights' key: key(seed), or for a restart r >= 1 fold_in(fold_in(key(seed), 3), r) (a
  restart draws new initial weights; the seed's data and pool stay its own)."""
  key = jax.random.key(seed)
  return key if restart == 0 else jax.random.fold_in(jax.random.fold_in(key, 3), restart)


def init_state(model_cfg: ModelConfig, train_cfg: TrainConfig, seeds, restarts=None) -> TrainState:
  """One model per seed (parameters from init_key(seed, restart), restart 0 unless `restarts` gives one
  per seed) and its fresh optimiser."""
  train_cfg = resolve(train_cfg, model_cfg)
  restarts = (0,) * len(seeds) if restarts is None else tuple(restarts)
  keys = jnp.stack([init_key(s, r) for s, r in zip(seeds, restarts, strict=True)])
  nodes = jax.vmap(lambda k: nnx.state(build(model_cfg, train_cfg, k)))(keys)
  return TrainState(*nnx.merge(graphdef(model_cfg, train_cfg), nodes), 0)


def resumed(fresh: TrainState, params: Params, opt_state, step: int) -> TrainState:
  """`fresh` (init_state's, left as it is) holding a checkpoint: the parameters [S, ...], the optimiser
  state (shaped like fresh.opt_state, as rundir.load_checkpoint rebuilds it) and the step."""
  graph, nodes = nnx.split((fresh.model, fresh.optimizer))
  model, opt = nnx.merge(graph, nodes)
  nnx.update(model, {k: jnp.asarray(v) for k, v in params.items()})
  is_var = lambda x: isinstance(x, nnx.Variable)
  for var, value in zip(jax.tree_util.tree_leaves(opt.opt_state, is_leaf=is_var),
                        jax.tree_util.tree_leaves(opt_state), strict=True):
    var[...] = jnp.asarray(value)
  opt.step[...] = jnp.full_like(opt.step[...], step)
  return TrainState(model, opt, step)


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
    new, chunk_losses = chunks[n](state, data_keys, pool_keys)
    chunk_losses = np.asarray(chunk_losses)
    finite = np.isfinite(chunk_losses)
    params_ok = all(bool(jnp.all(jnp.isfinite(v))) for v in new.params.values())
    if not params_ok or (train_cfg.max_skipped == 0 and not finite.all()):
      bad = int(np.argmax(~np.all(finite, axis=0))) if not finite.all() else n - 1
      diverged = (f"non-finite training loss at step {state.step + bad} (seeds {seeds}); kept the "
                  f"parameters of step {state.step}. Lower --lr or raise --warmup.")
      break
    state = new
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
