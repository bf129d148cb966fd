"""Training deep models: which recipe gives L ≥ 3 linear attention a finite, GD++-like expected error.

Deep linear attention is a polynomial of degree 3^L in its inputs, so a model whose median task is
fine can still have an enormous mean: a few tasks in 10⁴ blow up. For each depth L and candidate
recipe (precision, warm-up, clipping, learning rate, and a tail-aware one that trains on
demonstrations whose covariance spectrum reaches the tail), per seed: the exact per-task population
error on ≥ 10⁵ fresh tasks (mean with median, p99, p99.99, max, share above 10× the median) beside
the fitted GD++ of the same depth on the same tasks (docs/theory.md §5, §11), the training curve,
and where the mean comes from: the share of the summed error carried by the worst 0.01 % of tasks,
and by the tasks whose demonstrations' covariance X̂ᵀX̂/N has its largest eigenvalue in the top
0.1 %. Every recipe trains through train.fit: the plain ones through run.profiles.trained (the path
every study uses, a stalled seed restarted), the tail-aware ones (tail batches, Huber loss) straight
from fit_own, through the full reference forward (TrainConfig.forward "full").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import evaluate, precision, stats, tasks
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run import io, profiles, references, train
from lintheory.studies import engine

NAME = "deep_recipes"
KEYS = ("L", "recipe", "step", "lam_q")
EVAL_KEY = 31_415  # held-out tasks, the same for every model and for GD++
TAIL_FRACS = (1e-4, 1e-3, 1e-2)  # worst-task shares of the summed error that are reported
EXTREME = 1e-3  # "extreme" demonstration spectrum / task norm: the top 0.1 % of tasks
WINDOWS = 30  # points per training curve
LAM_BINS = (0.5, 0.9, 0.99, 0.999, 0.9999, 1.0)  # upper λ_max quantiles of the bins of tasks


@dataclasses.dataclass(frozen=True)
class Candidate:
  label: str  # one line for tables and legends
  lr: float  # peak learning rate (Adam, linear warm-up, cosine decay to lr/10)
  warmup: int  # warm-up steps (at most a third of the training steps)
  clip_norm: float  # global-norm gradient clipping
  dtype: str = "float64"  # training precision
  batch_mult: int = 1  # tasks per step = batch_mult × the profile's batch size
  tail_frac: float = 0.0  # share of each batch whose demonstrations are rescaled (tail-aware)
  tail_scale: float = 1.0  # their scale s ~ U[1, tail_scale]: X̂ᵀX̂/N's spectrum grows by s²
  huber: float = 0.0  # > 0: Huber loss with this δ on the query error instead of the squared error

  @property
  def own_loop(self) -> bool:
    """True for a tail-aware batch or loss: fit_own trains those (train.fit without profiles.trained's
    restarts, through the full forward), cached by cached_own."""
    return self.tail_frac > 0 or self.huber > 0


# λ_max of the demonstrations' covariance (d = 10, N = 20) has median 2.43 and 99.99th
# percentile 4.23 (1.74×): scales up to 1.4 (spectrum × 1.96) put 1/8 of each batch in that tail.
CANDIDATES = {
    "f32_lr5e-3_clip1": Candidate("float32, lr 5e-3, warm-up 100, clip 1", 5e-3, 100, 1.0, "float32"),
    "f32_lr1e-3_clip1": Candidate("float32, lr 1e-3, warm-up 100, clip 1", 1e-3, 100, 1.0, "float32"),
    "f64_lr5e-3_clip0.1": Candidate("float64, lr 5e-3, warm-up 500, clip 0.1", 5e-3, 500, 0.1),
    "f64_lr2e-3_clip0.1": Candidate("float64, lr 2e-3, warm-up 500, clip 0.1", 2e-3, 500, 0.1),
    "f64_batch4x": Candidate("float64, lr 5e-3, warm-up 500, clip 0.1, 4× batch", 5e-3, 500, 0.1, batch_mult=4),
    "f64_tail": Candidate("float64, lr 5e-3, warm-up 500, clip 0.1, 1/8 of demos × U[1, 1.4]", 5e-3, 500, 0.1,
                          tail_frac=0.125, tail_scale=1.4),
    "f64_huber": Candidate("float64, lr 5e-3, warm-up 500, clip 0.1, Huber δ = 1", 5e-3, 500, 0.1, huber=1.0),
}


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # steps, batch size and seeds (the recipes come from CANDIDATES)
  grid: tuple[tuple[int, tuple[str, ...]], ...]  # (L, the candidate recipes trained at that depth)
  eval_tasks: int  # fresh tasks per model for every reported error
  d: int = 10  # input dimension
  n_context: int = 20  # N
  fit: references.FitConfig = references.FitConfig()  # how GD++ is fitted


_ALL = tuple(CANDIDATES)


PROFILES = {
    "tiny": Settings(profiles.Profile(steps=40, batch_size=32, seeds=(0, 1), eval_tasks=4096),
                     ((2, ("f32_lr5e-3_clip1", "f64_lr5e-3_clip0.1", "f64_tail")),), eval_tasks=4096, d=3,
                     n_context=8, fit=references.FitConfig(steps=30, n_tasks=512)),
    # 11 recipes × depths of 5 seeds, 1500 steps: training dominates, so it runs on its own, when the
    # recipes change (its measured time is in the report's cost table), not in `make figures`.
    "default": Settings(profiles.Profile(steps=1500, batch_size=256, seeds=(0, 1, 2, 3, 4), eval_tasks=100_000),
                        ((3, ("f32_lr5e-3_clip1", "f64_lr5e-3_clip0.1", "f64_tail")),
                         (4, ("f32_lr5e-3_clip1", "f64_lr5e-3_clip0.1", "f64_tail")),
                         (6, ("f64_lr5e-3_clip0.1", "f64_tail")),
                         (8, ("f32_lr1e-3_clip1", "f64_lr5e-3_clip0.1", "f64_tail"))), eval_tasks=100_000),
    "full": Settings(profiles.Profile(steps=1500, batch_size=256, seeds=tuple(range(10)), eval_tasks=1_000_000),
                     tuple((L, _ALL) for L in (3, 4, 6, 8)), eval_tasks=1_000_000),
}


# --- training -------------------------------------------------------------------------------


def train_config(c: Candidate, prof: profiles.Profile):
  """The profile with only this candidate's recipe (for run.profiles.trained)."""
  r = profiles.Recipe(1 << 30, c.lr, c.warmup, 1 / 3, c.clip_norm, c.dtype)
  return dataclasses.replace(prof, batch_size=prof.batch_size * c.batch_mult, recipes=(r,))


def own_config(c: Candidate, prof: profiles.Profile) -> train.TrainConfig:
  """train.fit's configuration of a tail-aware candidate: Adam after global-norm clipping, warm-up (at most
  a third of the steps) then cosine decay to lr/10, non-finite steps skipped up to the profile's
  max_skipped, the loss through the full forward (model.forward), all steps in one jitted scan."""
  return train.TrainConfig(steps=prof.steps, batch_size=prof.batch_size * c.batch_mult, lr=c.lr,
                           warmup=min(c.warmup, prof.steps // 3), clip_norm=c.clip_norm, chunk=prof.steps,
                           dtype=c.dtype, max_skipped=prof.max_skipped, tail_frac=c.tail_frac,
                           tail_scale=c.tail_scale, huber_delta=c.huber, forward="full")


def fit_own(task: TaskConfig, model: ModelConfig, c: Candidate, prof: profiles.Profile) -> tuple[dict, np.ndarray]:
  """train.fit of one model per seed with the candidate's batch and loss (own_config) → (params [S, ...],
  losses [S, steps]); a run stopped on non-finite parameters → RuntimeError."""
  res = train.fit(task, model, own_config(c, prof), prof.seeds)
  if res.diverged is not None:
    raise RuntimeError(f"{res.diverged}")
  return jax.tree_util.tree_map(np.asarray, res.params), np.asarray(res.losses, np.float64)


def cached_own(task, model, c: Candidate, prof: profiles.Profile, cache_dir: str, label: str):
  """fit_own, once per configuration (an io.cached_dir entry, runs/cache/deep_recipes/<digest>/); non-finite →
  RuntimeError."""
  key = {"task": dataclasses.asdict(task), "model": dataclasses.asdict(model), "candidate": dataclasses.asdict(c),
         "steps": prof.steps, "batch_size": prof.batch_size, "seeds": list(prof.seeds), "trainer": train.TRAINER}

  def build(path: Path):
    engine.Context.log(f"  {label}: training {prof.steps} steps, seeds {prof.seeds} (own loop)")
    params, losses = fit_own(task, model, c, prof)
    if not all(np.all(np.isfinite(v)) for v in params.values()):
      bad = int(np.argmax(~np.all(np.isfinite(losses), axis=0)))
      raise RuntimeError(f"{label}: non-finite parameters (first non-finite loss at step {bad})")
    io.write_json(path / "key.json", key)
    io.write_npz(path / "params.npz", params)
    io.write_npy(path / "losses.npy", losses)
    return params, losses

  def load(path: Path):
    with np.load(path / "params.npz") as f:
      params = {k: f[k] for k in f.files}
    return params, np.load(path / "losses.npy")

  return io.cached_dir(Path(cache_dir) / NAME, key, ("key.json", "params.npz", "losses.npy"), build, load,
                       f"training {label}")


def train_models(s: Settings, L: int, name: str, cache_dir: str):
  """(params [S, ...], losses [S, steps], task, model) of one candidate at depth L."""
  c = CANDIDATES[name]
  label = f"L={L} {name}"
  if c.own_loop:
    task = TaskConfig(d=s.d, n_context=s.n_context)
    model = ModelConfig(d=s.d, n_layers=L, init_scale=s.train.init_scale)
    params, losses = cached_own(task, model, c, s.train, cache_dir, label)
    return params, losses, task, model
  with precision.x64(c.dtype == "float64"):  # train.fit scopes its own precision; float64 asks for the switch
    tr = profiles.trained(train_config(c, s.train), d=s.d, n_context=s.n_context, layers=L, cache_dir=cache_dir)
  return tr.params, tr.losses, tr.task, tr.model


# --- where the mean comes from --------------------------------------------------------------


def attribution(err: np.ndarray, feats: dict[str, np.ndarray]) -> dict[str, float]:
  """Shares of the summed error: of the worst tasks, and of the tasks with an extreme spectrum or norm;
  where the single worst task's λ_max ranks among all tasks (1 = the largest)."""
  e = np.asarray(err, np.float64)
  total = e.sum()
  order = np.sort(e)[::-1]
  out = {}
  for q in TAIL_FRACS:
    k = max(1, int(round(q * e.size)))
    out[f"share_worst_{q:g}"] = float(order[:k].sum() / total) if np.isfinite(total) and total > 0 else 1.0
  for name, v in feats.items():
    extreme = v >= np.quantile(v, 1 - EXTREME)
    out[f"share_{name}_top"] = float(e[extreme].sum() / total) if np.isfinite(total) and total > 0 else float(
        np.isinf(e[extreme]).any())
    worst = int(np.argmax(e))
    out[f"{name}_rank_of_worst"] = float(np.mean(v <= v[worst]))
  return out


def by_spectrum(err: np.ndarray, lam: np.ndarray) -> dict[float, tuple[float, float]]:
  """Per bin of tasks by the quantile of their λ_max (LAM_BINS): (mean error, share of the summed error)."""
  e = np.asarray(err, np.float64)
  edges = np.quantile(lam, (0.0, *LAM_BINS))
  total = e.sum()
  out = {}
  for q, lo, hi in zip(LAM_BINS, edges[:-1], edges[1:]):
    inside = (lam > lo) & (lam <= hi) if q != LAM_BINS[0] else lam <= hi
    part = e[inside]
    out[q] = (float(part.mean()), float(part.sum() / total) if np.isfinite(total) and total > 0 else float("inf"))
  return out


# --- the study ------------------------------------------------------------------------------


def curve(losses_S: np.ndarray, windows: int = WINDOWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(window end steps, median and max of the finite training losses per window) → each [S, W] but steps [W]."""
  S, n = losses_S.shape
  edges = np.linspace(0, n, min(windows, n) + 1).astype(int)
  med = np.full((S, len(edges) - 1), np.nan)
  top = np.full_like(med, np.nan)
  for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
    for i in range(S):
      w = losses_S[i, a:b]
      w = w[np.isfinite(w)]
      if w.size:
        med[i, j], top[i, j] = np.median(w), w.max()
  return edges[1:], med, top


def run_setting(s: Settings, L: int, name: str, ctx: engine.Context, key, feats) -> None:
  keys = {"L": L, "recipe": name}
  c = CANDIDATES[name]
  try:
    params, losses, task, model = train_models(s, L, name, ctx.cache_dir)
  except RuntimeError as e:  # a diverged run is recorded, with the reason, not hidden
    ctx.fail("train", str(e), **keys)
    return
  seeds = s.train.seeds
  err = evaluate.errors({k: jnp.asarray(v) for k, v in params.items()}, model, task, key, s.eval_tasks,
                        dtype="float64")
  for k, seed in enumerate(seeds):
    ctx.add_many(_summary(err[k]), prefix="model_", seed=seed, n_tasks=s.eval_tasks, **keys)
    ctx.add_many(attribution(err[k], feats), seed=seed, n_tasks=s.eval_tasks, **keys)
    _add_bins(ctx, err[k], feats, seed=seed, **keys)
    ctx.add("skipped_steps", int((~np.isfinite(losses[k])).sum()), seed=seed, **keys)
  steps, med, top = curve(losses)
  for j, step in enumerate(steps):
    for k, seed in enumerate(seeds):
      if np.isfinite(med[k, j]):
        ctx.add("train_loss_median", med[k, j], seed=seed, step=int(step), **keys)
        ctx.add("train_loss_max", top[k, j], seed=seed, step=int(step), **keys)
  ctx.add_many({"lr": c.lr, "warmup": c.warmup, "clip_norm": c.clip_norm, "float64": c.dtype == "float64",
                "batch_size": s.train.batch_size * c.batch_mult, "tail_frac": c.tail_frac,
                "tail_scale": c.tail_scale, "huber": c.huber, "steps": s.train.steps}, prefix="cfg_", **keys)
  ctx.log(f"L={L} {name}: mean per seed {', '.join(f'{m:.3g}' for m in err.mean(1))}; median "
          f"{', '.join(f'{m:.3g}' for m in np.median(err, 1))}")


def _add_bins(ctx: engine.Context, err, feats, seed=None, **keys) -> None:
  for q, (mean, share) in by_spectrum(err, feats["lam_max"]).items():
    ctx.add("bin_mean", mean, seed=seed, n_tasks=err.size, lam_q=q, **keys)
    if np.isfinite(share):
      ctx.add("bin_share", share, seed=seed, n_tasks=err.size, lam_q=q, **keys)


def _summary(err: np.ndarray) -> dict[str, float]:
  out = stats.summary(err, n_boot=200)
  return {k: out[k] for k in ("mean", "median", "p99", "p9999", "max", "frac_gt_10x_median", "n_inf",
                              "mean_ci_lo", "mean_ci_hi")}


def run_reference(s: Settings, L: int, ctx: engine.Context, key, feats) -> None:
  task = TaskConfig(d=s.d, n_context=s.n_context)
  f = references.fitted(task, L, s.fit, ctx.cache_dir, kinds=("gd_pp",))["gd_pp"]
  if not f.converged:  # an uncertified fit is no yardstick: the depth's recipes are judged against nothing
    raise RuntimeError(f"L={L}: the fitted GD++ is refused: {references.usable({'gd_pp': f})[1]['gd_pp']}; "
                       "raise Settings.fit.steps")
  model = ModelConfig(d=s.d, n_layers=L)
  with precision.x64():
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], references.construct(f))
    err = evaluate.errors(params, model, task, key, s.eval_tasks, dtype="float64")[0]
  keys = {"L": L, "recipe": "gd_pp"}
  ctx.add_many(_summary(err), prefix="model_", n_tasks=s.eval_tasks, **keys)
  ctx.add_many(attribution(err, feats), n_tasks=s.eval_tasks, **keys)
  _add_bins(ctx, err, feats, **keys)
  ctx.log(f"L={L} GD++: mean {err.mean():.3g}, median {np.median(err):.3g}, max {err.max():.3g}")


def run(s: Settings, ctx: engine.Context) -> None:
  for name in (n for _, names in s.grid for n in names):
    if name not in CANDIDATES:
      raise ValueError(f"recipe must be one of {tuple(CANDIDATES)}, got {name!r}")
  key = jax.random.key(EVAL_KEY)
  feats = evaluate.task_features(TaskConfig(d=s.d, n_context=s.n_context), key, s.eval_tasks)
  for L, names in s.grid:
    run_reference(s, L, ctx, key, feats)
    for name in names:
      run_setting(s, L, name, ctx, key, feats)


# --- the decision ---------------------------------------------------------------------------

GDPP_LIKE = 10.0  # a recipe is GD++-like at L when every seed's mean is within this factor of GD++'s
L8_FACTOR = 2.0  # L = 8 succeeds when its median task error is within this factor of L = 4's


def worst_mean(table: engine.Table, L: int, recipe: str) -> float:
  """The largest mean over seeds (inf when a seed failed to train or overflowed)."""
  m = table.values("model_mean", L=L, recipe=recipe)
  return float(m.max()) if m.size == len(table.seeds(measure="model_mean")) and m.size else float("inf")


def decide(table: engine.Table) -> dict[int, dict]:
  """Per depth: the recipe whose worst seed has the smallest mean, its worst mean, GD++'s mean,
  whether it is GD++-like, and the median task error (median over seeds)."""
  out = {}
  for L in table.unique("L", measure="model_mean"):
    names = [r for r in table.unique("recipe", measure="model_mean", L=L) if r != "gd_pp"]
    if not names:
      continue
    rank = lambda r: (worst_mean(table, L, r), np.median(table.values("model_median", L=L, recipe=r)))
    best = min(names, key=rank)
    by_median = min(names, key=lambda r: np.median(table.values("model_median", L=L, recipe=r)))
    plain = [r for r in names if r in CANDIDATES and not CANDIDATES[r].own_loop]
    best_plain = min(plain, key=rank) if plain else None
    ref = table.value("model_mean", L=L, recipe="gd_pp", seed=None)
    wm = worst_mean(table, L, best)
    out[L] = {"recipe": best, "worst_mean": wm, "gd_pp_mean": ref, "gd_pp_like": wm <= GDPP_LIKE * ref,
              "median": float(np.median(table.values("model_median", L=L, recipe=best))),
              "best_median_recipe": by_median, "best_train_fit_recipe": best_plain,
              "best_median": float(np.median(table.values("model_median", L=L, recipe=by_median))),
              "gd_pp_median": table.value("model_median", L=L, recipe="gd_pp", seed=None)}
  return out


# --- claims ---------------------------------------------------------------------------------


def claims(table: engine.Table, meta: dict) -> list:
  """No claim of the paper rests on this study: it chooses the training recipe (run.profiles.RECIPES)."""
  return []
