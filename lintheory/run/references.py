"""Fitted explicit references: the best L-step GD, GD with per-step η, GD++ and preconditioned GD.

Each reference is an explicit learner of lintheory.core.learners with a handful of parameters, fitted by
minimising the in-context MSE of its L-th iterate on fresh tasks of the training distribution
(Adam, one jitted lax.scan). A trained L-layer transformer is compared with these (docs/theory.md
§3, §5): plain GD (one shared η), a per-step schedule η_t, GD++ (per-layer η_t, γ_t) and
preconditioned GD (per-layer P_t, d×d, with η_t = 1 absorbed in P_t).
Fits are cached per (task: d, N, σ, Σ, prior; L; fit recipe) in runs/cache/references/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lintheory.core import learners, tasks
from lintheory.run import io
from lintheory.core.tasks import Batch, TaskConfig

KINDS = ("gd", "gd_step", "gd_pp", "precond")  # shared η, per-step η_t, GD++ (η_t, γ_t), P_t
LABELS = {"gd": "GD (shared η)", "gd_step": "GD (per-step η_t)", "gd_pp": "GD++ (η_t, γ_t)",
          "precond": "preconditioned GD (P_t)"}


@dataclasses.dataclass(frozen=True)
class FitConfig:
  steps: int = 500  # Adam steps
  batch_size: int = 512  # fresh tasks per step
  lr: float = 0.02  # peak learning rate (cosine decay to lr/100: the last steps average the noise)
  seed: int = 0  # task stream

  def __post_init__(self):
    for name in ("steps", "batch_size"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
      raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")


class Fitted(NamedTuple):
  kind: str  # one of KINDS
  eta: np.ndarray  # [L] step sizes (1 for "precond": the scale is in P)
  gamma: np.ndarray  # [L] GD++ curvature corrections (0 for the others)
  P: np.ndarray  # [L, d, d] preconditioners (I for the others)
  train_loss: float  # MSE on the last 10% of fitting batches


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_layers(L) -> None:
  if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
    raise ValueError(f"L (number of steps/layers) must be an integer >= 1, got {L!r}")


def init_theta(kind: str, d: int, N: int, L: int, noise_std: float) -> dict[str, jax.Array]:
  """Start at a stable fraction of one-step η* (docs/theory.md §9), per-step sizes spread apart.

  The L-step GD loss is symmetric under permuting the η_t (the factors I − η_t Σ̂ commute), so
  equal initial η_t would stay equal forever: the spread breaks that symmetry.
  """
  eta0 = learners.eta_star(d, N, noise_std) / (1.0 if L == 1 else 2.0)
  etas = eta0 * (jnp.linspace(0.5, 1.5, L) if L > 1 else jnp.ones(1))
  if kind == "gd":
    return {"eta": jnp.asarray(eta0)}
  if kind == "gd_step":
    return {"eta": etas}
  if kind == "gd_pp":
    return {"eta": etas, "gamma": jnp.zeros((L,))}
  return {"P": etas[:, None, None] * jnp.eye(d)}


def predict(kind: str, theta: dict, batch: Batch, L: int) -> tuple[jax.Array, jax.Array]:
  """(w_t [L, B, d], ŷ_t [L, B]): the reference's iterates and query predictions."""
  if kind == "gd_pp":
    return learners.gd_plus_plus(batch.X, batch.y, batch.x_q, theta["eta"], theta["gamma"], L)
  if kind == "precond":
    w = learners.gd(batch.X, batch.y, jnp.ones((L,), batch.X.dtype), P=theta["P"])
  else:
    w = learners.gd(batch.X, batch.y, theta["eta"], L)
  return w, jnp.einsum("lbd,bd->lb", w, batch.x_q)


def final_iterate(kind: str, theta: dict, Sigma_hat: jax.Array, b: jax.Array, L: int) -> jax.Array:
  """`predict`'s last iterate w_L [B, d] from the demonstrations' moments (learners.moments), the
  form fitting uses: per task and step O(d²) instead of O(N d) for GD, O(d³) instead of O(N d²) for
  GD++ (docs/theory.md §3)."""
  if kind == "gd_pp":
    return learners.gd_plus_plus_from_moments(Sigma_hat, b, theta["eta"], theta["gamma"], L)[-1]
  if kind == "precond":
    return learners.gd_from_moments(Sigma_hat, b, jnp.ones((L,), b.dtype), P=theta["P"])[-1]
  return learners.gd_from_moments(Sigma_hat, b, theta["eta"], L)[-1]


# GD++ with γ_t = 0 and preconditioned GD with P_t = η_t I are GD with per-step η_t: they start
# from its fit, so they can only improve on it (up to the noise of the fit) instead of stalling
# in a worse basin from a generic start, as they did at L = 4 and 6.
NESTED = {"gd_pp": "gd_step", "precond": "gd_step"}


def _from_parent(kind: str, parent: dict[str, jax.Array], d: int) -> dict[str, jax.Array]:
  eta = parent["eta"]
  if kind == "gd_pp":
    return {"eta": eta, "gamma": jnp.zeros_like(eta)}
  return {"P": eta[:, None, None] * jnp.eye(d, dtype=eta.dtype)}


def fit_many(task: TaskConfig, L: int, kinds=KINDS, cfg: FitConfig = FitConfig()) -> dict[str, Fitted]:
  """Minimise E[(ŷ_L − y_q)²] over each reference's parameters on fresh tasks (not cached).

  Two stages: the kinds that start from init_theta, then those of NESTED, started from their
  fitted parent. Within a stage all kinds share one scan and its batches: their parameters are
  disjoint and Adam is per-coordinate, so fitting the sum of their losses fits each independently.
  """
  for k in kinds:
    _check_kind(k)
  _check_layers(L)
  L, kinds = int(L), tuple(kinds)
  first = tuple(k for k in KINDS if (k in kinds and k not in NESTED) or any(NESTED.get(j) == k for j in kinds))
  second = tuple(k for k in kinds if k in NESTED)
  with jax.enable_x64(False):  # the same fit whether or not the caller enabled 64-bit mode
    theta0 = {k: init_theta(k, task.d, task.n_context, L, task.noise_std) for k in first}
    theta, losses = _adam(task, L, first, theta0, cfg)
    if second:
      theta0 = {k: _from_parent(k, theta[NESTED[k]], task.d) for k in second}
      theta2, losses2 = _adam(task, L, second, theta0, cfg)
      theta, losses = {**theta, **theta2}, {**losses, **losses2}
  tail = max(1, cfg.steps // 10)
  return {k: _as_fitted(k, theta[k], task.d, L, float(losses[k][-tail:].mean())) for k in kinds}


def _adam(task: TaskConfig, L: int, kinds: tuple, theta0: dict, cfg: FitConfig):
  """One jitted scan of Adam on the summed losses → (theta {kind: numpy}, losses {kind: [steps]})."""
  tx = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps, alpha=0.01))
  key = jax.random.key(cfg.seed)

  def losses_fn(theta, batch):
    Sigma_hat, b = learners.moments(batch.X, batch.y)  # once per batch, shared by every kind
    y_hat = lambda k: (final_iterate(k, theta[k], Sigma_hat, b, L) * batch.x_q).sum(-1)
    return jnp.stack([jnp.mean((y_hat(k) - batch.y_q) ** 2) for k in kinds])

  @jax.jit
  def run(theta):
    def step(carry, i):
      theta, opt_state = carry
      batch = tasks.sample(jax.random.fold_in(key, i), task, cfg.batch_size)
      (_, losses), grads = jax.value_and_grad(lambda t: (jnp.sum(losses_fn(t, batch)), losses_fn(t, batch)),
                                              has_aux=True)(theta)
      updates, opt_state = tx.update(grads, opt_state, theta)
      return (optax.apply_updates(theta, updates), opt_state), losses
    (theta, _), losses = jax.lax.scan(step, (theta, tx.init(theta)), jnp.arange(cfg.steps))
    return theta, losses

  theta, losses = run(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), theta0))
  losses = np.asarray(losses, np.float64)  # [steps, kinds]
  if not np.all(np.isfinite(losses)):
    bad = [k for k, ok in zip(kinds, np.all(np.isfinite(losses), axis=0)) if not ok]
    raise RuntimeError(f"fitting the {bad} reference(s) (L={L}) diverged; lower FitConfig.lr")
  return jax.tree_util.tree_map(np.asarray, theta), {k: losses[:, i] for i, k in enumerate(kinds)}


def fit(task: TaskConfig, L: int, kind: str, cfg: FitConfig = FitConfig()) -> Fitted:
  """One reference, fitted on fresh tasks (not cached)."""
  _check_kind(kind)
  return fit_many(task, L, (kind,), cfg)[kind]


def _as_fitted(kind: str, theta: dict, d: int, L: int, train_loss: float) -> Fitted:
  theta = {k: np.asarray(v, np.float64) for k, v in theta.items()}
  eta = np.broadcast_to(theta.get("eta", np.ones(L)), (L,)).copy()
  gamma = theta.get("gamma", np.zeros(L))
  P = theta.get("P", np.broadcast_to(np.eye(d), (L, d, d))).copy()
  return Fitted(kind, eta, gamma, P, train_loss)


def theta_of(f: Fitted) -> dict[str, np.ndarray]:
  """The fitted parameters in the form `predict` takes."""
  if f.kind == "gd":
    return {"eta": f.eta[0]}
  if f.kind == "gd_step":
    return {"eta": f.eta}
  if f.kind == "gd_pp":
    return {"eta": f.eta, "gamma": f.gamma}
  return {"P": f.P}


def iterates(f: Fitted, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(w_t [L, B, d], ŷ_t [L, B]) of a fitted reference on a batch, in the batch's dtype."""
  dt = batch.X.dtype
  theta = {k: jnp.asarray(v, dt) for k, v in theta_of(f).items()}
  return predict(f.kind, theta, batch, len(f.eta))


def construct(f: Fitted, dtype=jnp.float64):
  """Transformer weights (learners.construct) implementing the fitted reference, one step a layer."""
  L, d = len(f.eta), f.P.shape[-1]
  if f.kind == "precond":
    return learners.construct(d, np.ones(L), P=f.P, dtype=dtype)
  return learners.construct(d, f.eta, gamma=f.gamma if f.kind == "gd_pp" else None, dtype=dtype)


def cache_key(task: TaskConfig, L: int, cfg: FitConfig) -> dict:
  return {"task": dataclasses.asdict(task), "L": int(L), "fit": dataclasses.asdict(cfg), "kinds": list(KINDS)}


def cache_path(task: TaskConfig, L: int, cfg: FitConfig, cache_dir="runs/cache") -> Path:
  key = json.dumps(io._jsonable(cache_key(task, L, cfg)), sort_keys=True)
  name = f"d{task.d}_N{task.n_context}_L{L}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
  return Path(cache_dir) / "references" / name


def fitted(task: TaskConfig, L: int, cfg: FitConfig = FitConfig(), cache_dir="runs/cache",
           kinds=KINDS) -> dict[str, Fitted]:
  """Every reference of depth L for this task, fitted once and then read from the cache."""
  _check_layers(L)
  for k in kinds:
    _check_kind(k)
  path = cache_path(task, L, cfg, cache_dir)
  with io.locked(path.with_suffix(".lock"), f"fitting the L={L} references"):
    stored = io.read_json(path)["fits"] if path.exists() else {}
    missing = [k for k in KINDS if k not in stored and k in kinds]
    for k, f in (fit_many(task, L, missing, cfg) if missing else {}).items():
      stored[k] = {"eta": f.eta, "gamma": f.gamma, "P": f.P, "train_loss": f.train_loss}
    if missing:
      io.write_json(path, {"key": cache_key(task, L, cfg), "fits": stored})
  return {k: Fitted(k, np.asarray(stored[k]["eta"], np.float64), np.asarray(stored[k]["gamma"], np.float64),
                    np.asarray(stored[k]["P"], np.float64), float(stored[k]["train_loss"])) for k in kinds}
