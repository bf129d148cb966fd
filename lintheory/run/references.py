"""Fitted explicit references: the best L-step GD, GD with per-step η, GD++ and preconditioned GD.

Each reference is an explicit learner of lintheory.core.learners with a handful of parameters, fitted to
the minimum of the in-context MSE of its L-th iterate on the training distribution. A trained L-layer
transformer is compared with these (docs/theory.md §3, §5): plain GD (one shared η), a per-step schedule
η_t, GD++ (per-layer η_t, γ_t) and preconditioned GD (per-layer P_t, d×d, with η_t = 1 absorbed in P_t).

Every fit carries a certificate (docs/theory.md §9 "Fitted references"). One step (L = 1) has a closed
form wherever the family's moments give one (Gaussian and uniform inputs at any scale): η* and Γ*, with
gradient norm 0. Deeper references minimise the exact query error on a fixed sample of tasks with a
trust-region Newton method in float64, in units where the loss and the step sizes are scale-free, and
stop on the gradient norm; a fit whose gradient norm is still above FitConfig.tol is marked
`converged=False`, and analysis and the studies refuse it (`usable`) instead of comparing with it.
Fits are cached per (task; L; fit recipe; kinds) in runs/cache/references/, through io.cached_dir like
every cache (an entry is whole or absent, and is never changed once written). The kinds a fit computes
depend only on the kind (fit_many), so an entry of more kinds holds the same fit of each.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lintheory.core import learners, precision, tasks
from lintheory.run import io
from lintheory.core.tasks import Batch, TaskConfig

KINDS = ("gd", "gd_step", "gd_pp", "precond")  # shared η, per-step η_t, GD++ (η_t, γ_t), P_t
LABELS = {"gd": "GD (shared η)", "gd_step": "GD (per-step η_t)", "gd_pp": "GD++ (η_t, γ_t)",
          "precond": "preconditioned GD (P_t)"}
VERSION = 2  # of the fit and its cache entries: 2 = closed form / certified solver (1 was Adam on fresh tasks)


@dataclasses.dataclass(frozen=True)
class FitConfig:
  steps: int = 300  # trust-region Newton iterations at most; a fit still above tol after them is refused
  n_tasks: int = 8192  # tasks of the fixed sample GD and GD++ (at most 2L parameters) are fitted on
  precond_tasks: int = 32_768  # tasks of preconditioned GD's sample: its L·d² parameters overfit a smaller one
  tol: float = 1e-6  # certificate: largest accepted ‖∇ loss‖ (loss ÷ the zero predictor's, steps ÷ η₀)
  seed: int = 0  # key of the fixed sample

  def __post_init__(self):
    for name in ("steps", "n_tasks", "precond_tasks"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol > 0):
      raise ValueError(f"tol must be a finite number > 0, got {self.tol!r}")


class Fitted(NamedTuple):
  kind: str  # one of KINDS
  eta: np.ndarray  # [L] step sizes (1 for "precond": the scale is in P)
  gamma: np.ndarray  # [L] GD++ curvature corrections (0 for the others)
  P: np.ndarray  # [L, d, d] preconditioners (I for the others)
  train_loss: float  # expected query MSE: exact for a closed form, else on the fixed sample (query integrated out)
  grad_norm: float = 0.0  # ‖∇ loss‖ at the fit in FitConfig.tol's units (0: closed form, or built by hand)
  converged: bool = True  # grad_norm <= FitConfig.tol: only a converged reference is compared with
  method: str = "given"  # "closed form", "trust-region Newton", or "given" (built by hand)


def usable(refs: dict[str, Fitted]) -> tuple[dict[str, Fitted], dict[str, str]]:
  """(the converged references, {kind: why each other one is refused})."""
  ok = {k: f for k, f in refs.items() if f.converged}
  refused = {k: f"not converged: gradient norm {f.grad_norm:.2g} above the tolerance after the solver's budget "
                f"({f.method})" for k, f in refs.items() if not f.converged}
  return ok, refused


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_layers(L) -> None:
  if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
    raise ValueError(f"L (number of steps/layers) must be an integer >= 1, got {L!r}")


def init_theta(kind: str, d: int, L: int, eta0: float = 1.0) -> dict[str, jax.Array]:
  """Start at a stable fraction of the one-step optimum η₀, per-step sizes spread apart.

  The L-step GD loss is symmetric under permuting the η_t (the factors I − η_t Σ̂ commute), so
  equal initial η_t would stay equal under any gradient method: the spread breaks that symmetry.
  """
  base = eta0 / (1.0 if L == 1 else 2.0)
  etas = base * (jnp.linspace(0.5, 1.5, L) if L > 1 else jnp.ones(1))
  if kind == "gd":
    return {"eta": jnp.asarray(base)}
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
# from its fit, so on the shared sample they end at or below its loss instead of stalling in a
# worse basin from a generic start, as they did at L = 4 and 6.
NESTED = {"gd_pp": "gd_step", "precond": "gd_step"}


def _from_parent(kind: str, parent: dict[str, jax.Array], d: int) -> dict[str, jax.Array]:
  eta = jnp.asarray(parent["eta"])
  if kind == "gd_pp":
    return {"eta": eta, "gamma": jnp.zeros_like(eta)}
  if kind == "gd_step":  # from shared-η GD: its fit is a point of the per-step family
    return {"eta": eta}
  return {"P": eta[:, None, None] * jnp.eye(d, dtype=eta.dtype)}


def fit_many(task: TaskConfig, L: int, kinds=KINDS, cfg: FitConfig = FitConfig()) -> dict[str, Fitted]:
  """Each reference at the minimum of E[(ŷ_L − y_q)²] over its parameters (not cached).

  L = 1 on a family with a closed form: η* (gd, gd_step, gd_pp, whose γ does not act in one step)
  and Γ* (precond), docs/theory.md §9. Otherwise `_solve` on one fixed sample shared by every kind;
  per-step GD also starts from shared-η GD's fit, and the kinds of NESTED from per-step GD's, so each
  ends at or below the loss of the learners it contains (preconditioned GD on a larger sample of its own,
  where per-step GD's fit is its start).
  """
  for k in kinds:
    _check_kind(k)
  _check_layers(L)
  L, kinds = int(L), tuple(kinds)
  family = learners.one_layer_family(task) if L == 1 else None
  if family is not None:
    return {k: _closed_form(k, task, family) for k in kinds}
  with precision.x64():  # the same fit whether or not the caller enabled 64-bit mode
    data = _sample(task, cfg.n_tasks, cfg.seed)
    fits = {"gd": _solve("gd", L, data, cfg, [init_theta("gd", task.d, L, data.eta0)])}
    if any(k != "gd" for k in kinds):
      starts = [init_theta("gd_step", task.d, L, data.eta0), _from_parent("gd_step", fits["gd"][0], task.d)]
      fits["gd_step"] = _solve("gd_step", L, data, cfg, starts)
    for k in (k for k in kinds if k in NESTED):
      sample = _sample(task, cfg.precond_tasks, cfg.seed) if k == "precond" else data
      fits[k] = _solve(k, L, sample, cfg, [_from_parent(k, fits[NESTED[k]][0], task.d)])
  return {k: _as_fitted(k, *fits[k], task.d, L, cfg.tol) for k in kinds}


def _closed_form(kind: str, task: TaskConfig, family) -> Fitted:
  Sigma, W2, kappa = family
  N, sigma = task.n_context, task.noise_std
  if kind == "precond":
    A = learners.one_layer_optimum(Sigma, N, sigma, W2, kappa)
    theta = {"P": A[None]}
  else:
    A = learners.one_step_optimum(Sigma, N, sigma, W2, kappa) * np.eye(task.d)
    theta = {"eta": np.array([A[0, 0]]), "gamma": np.zeros(1)}
  loss = learners.one_layer_loss(A, N, Sigma, sigma, W2, kappa) + (sigma**2 if task.query_noise else 0.0)
  return _as_fitted(kind, theta, loss, 0.0, "closed form", task.d, 1)


class _Sample(NamedTuple):
  Sigma_hat: jax.Array  # [B, d, d] the demonstrations' second moments
  b: jax.Array  # [B, d] Xᵀy/N
  w: jax.Array  # [B, d] the tasks' vectors
  Sigma_x: jax.Array  # [d, d] E[x_q x_qᵀ]: the query is integrated out exactly
  lam: jax.Array  # [B, d] eigenvalues of Σ̂ (Σ̂ = U diag(λ) Uᵀ)
  c: jax.Array  # [B, d] Uᵀ b
  M: jax.Array  # [B, d, d] Uᵀ Σ_x U
  h: jax.Array  # [B, d] Uᵀ Σ_x w
  eta0: float  # the sample's one-step optimum, the unit of every step size
  zero_loss: float  # the zero predictor's loss, the unit of the loss
  floor: float  # σ² with a noisy query target, else 0


def _sample(task: TaskConfig, n_tasks: int, seed: int) -> _Sample:
  """The fixed sample, with the moment-matched η₀ = Σ bᵀΣw / Σ bᵀΣb (the sample's best one step)."""
  batch = tasks.sample(jax.random.key(seed), task, n_tasks, dtype=jnp.float64)
  Sigma_hat = jnp.einsum("bnd,bne->bde", batch.X, batch.X) / task.n_context
  b = jnp.einsum("bnd,bn->bd", batch.X, batch.y) / task.n_context
  S = jnp.asarray(tasks.x_covariance(task))
  lam, U = jnp.linalg.eigh(Sigma_hat)
  bS = b @ S
  eta0 = float(jnp.sum(bS * batch.w) / jnp.sum(bS * b))
  zero = float(jnp.mean(jnp.sum((batch.w @ S) * batch.w, -1)))
  floor = task.noise_std**2 if task.query_noise else 0.0
  return _Sample(Sigma_hat, b, batch.w, S, lam, jnp.einsum("bde,bd->be", U, b),
                 jnp.einsum("bdi,de,bej->bij", U, S, U), jnp.einsum("bde,bd->be", U, batch.w @ S),
                 eta0, zero + floor, floor)


def _spectral_error(theta: dict, data: _Sample, L: int) -> jax.Array:
  """E over the query of (w_L − w)ᵀ Σ_x (w_L − w) − wᵀ Σ_x w per task → [B], for GD and GD++.

  Every matrix of these learners is a polynomial in Σ̂ (docs/theory.md §3: B_t = I − γ_t Σ̂_t,
  Σ̂_{t+1} = B_t Σ̂_t B_t), so in Σ̂'s eigenbasis each step acts coordinatewise: O(L d) per task.
  """
  eta = theta["eta"]
  gamma = theta.get("gamma", jnp.zeros_like(eta))
  lam, g, A, u = data.lam, data.c, jnp.ones_like(data.c), jnp.zeros_like(data.c)
  for t in range(L):
    u = u + eta[t] * A * g
    B = 1 - gamma[t] * lam
    g, A, lam = B * (1 - eta[t] * lam) * g, B * A, B * B * lam
  return (u[:, :, None] * data.M * u[:, None, :]).sum((-2, -1)) - 2 * jnp.sum(u * data.h, -1)


def _unpack(kind: str, v: jax.Array, L: int, d: int) -> dict[str, jax.Array]:
  """The flat solver vector (step sizes in units of η₀) → theta in the same units."""
  if kind == "gd":
    return {"eta": jnp.full((L,), v[0])}
  if kind == "gd_step":
    return {"eta": v}
  if kind == "gd_pp":  # γ_L acts after the last iterate: it is held at 0, not a free direction
    return {"eta": v[:L], "gamma": jnp.concatenate([v[L:], jnp.zeros((1,), v.dtype)])}
  return {"P": v.reshape(L, d, d)}


def _pack(kind: str, theta: dict) -> np.ndarray:
  if kind == "gd":
    return np.atleast_1d(np.asarray(theta["eta"], np.float64)).ravel()[:1]
  if kind == "gd_pp":
    return np.concatenate([np.asarray(theta["eta"], np.float64), np.asarray(theta["gamma"], np.float64)[:-1]])
  return np.concatenate([np.asarray(theta[n], np.float64).ravel() for n in ("eta", "P") if n in theta])


def _objective(kind: str, L: int, data: _Sample):
  """(value_and_grad, Hessian or Hessian-vector product) of the scale-free loss on the flat vector, jitted.

  The loss is E[(w_L − w)ᵀ Σ_x (w_L − w)] (the exact error over queries, docs/theory.md §11) ÷ the
  zero predictor's, with every step size (η_t, γ_t, P_t) a multiple of η₀: x → s·x leaves it unchanged
  at σ = 0, so one tolerance means the same at every input scale.
  """
  d = data.b.shape[-1]
  keep = ("Sigma_hat", "b", "w", "Sigma_x") if kind == "precond" else ("lam", "c", "M", "h", "w", "Sigma_x")
  arrays = {n: getattr(data, n) for n in keep}

  def f(v, arrays):
    part = data._replace(**arrays)
    theta = {n: a * data.eta0 for n, a in _unpack(kind, v, L, d).items()}
    if kind == "precond":
      e = final_iterate(kind, theta, part.Sigma_hat, part.b, L) - part.w
      err = jnp.sum((e @ part.Sigma_x) * e, -1)
    else:
      err = _spectral_error(theta, part, L) + jnp.sum((part.w @ part.Sigma_x) * part.w, -1)
    return (jnp.mean(err) + data.floor) / data.zero_loss

  vg = jax.jit(jax.value_and_grad(f))
  as_np = lambda o: np.asarray(o, np.float64)

  def value_grad(v):
    # A trial step into overflow (large γ_t or η_t) must read as a bad step, not crash the solver:
    # an infinite loss is rejected by the trust region, which then shrinks.
    value, grad = map(as_np, vg(jnp.asarray(v), arrays))
    return (value, grad) if np.isfinite(value) and np.all(np.isfinite(grad)) else (np.float64(1e300), 0 * v)

  def finite(H):
    return H if np.all(np.isfinite(H)) else np.eye(H.shape[0]) if H.ndim == 2 else np.zeros_like(H)

  if kind == "precond":  # L d² parameters: Hessian-vector products
    hvp = jax.jit(lambda v, p, a: jax.jvp(lambda u: jax.grad(f)(u, a), (v,), (p,))[1])
    return value_grad, {"hessp": lambda v, p: finite(as_np(hvp(jnp.asarray(v), jnp.asarray(p), arrays))),
                        "method": "trust-krylov"}
  hess = jax.jit(jax.hessian(f))  # at most 2L parameters: the whole Hessian
  return value_grad, {"hess": lambda v: finite(as_np(hess(jnp.asarray(v), arrays))), "method": "trust-exact"}


def _solve(kind: str, L: int, data: _Sample, cfg: FitConfig, starts: list[dict]):
  """Trust-region Newton with exact second derivatives (scipy's trust-exact, or trust-krylov on Hessian-vector
  products for P_t) from each start, stopping when ‖∇‖ <= cfg.tol → (theta in absolute units, loss, ‖∇‖,
  method) of the lowest loss reached."""
  vg, second = _objective(kind, L, data)
  best = None
  for start in starts:
    x0 = _pack(kind, {n: np.asarray(a, np.float64) / data.eta0 for n, a in start.items()})
    if vg(x0)[0] >= 1e300:
      continue
    with np.errstate(over="ignore", invalid="ignore"):  # rejected trial steps may overflow inside scipy
      res = scipy.optimize.minimize(vg, x0, jac=True, **second, options={"gtol": cfg.tol, "maxiter": cfg.steps})
    value, grad = vg(res.x)
    if value < 1e300 and (best is None or value < best[1]):
      best = (res.x, float(value), float(np.linalg.norm(grad)))
  if best is None:
    raise RuntimeError(f"fitting the {kind} reference (L={L}): the loss is not finite at any start")
  v, value, gnorm = best
  theta = {n: np.asarray(a, np.float64) * data.eta0 for n, a in _unpack(kind, jnp.asarray(v), L, data.b.shape[-1]).items()}
  return theta, value * data.zero_loss, gnorm, "trust-region Newton"


def fit(task: TaskConfig, L: int, kind: str, cfg: FitConfig = FitConfig()) -> Fitted:
  """One reference (not cached)."""
  _check_kind(kind)
  return fit_many(task, L, (kind,), cfg)[kind]


def _as_fitted(kind: str, theta: dict, train_loss: float, grad_norm: float, method: str, d: int, L: int,
               tol: float | None = None) -> Fitted:
  theta = {k: np.asarray(v, np.float64) for k, v in theta.items()}
  eta = np.broadcast_to(theta.get("eta", np.ones(L)), (L,)).copy() if kind != "precond" else np.ones(L)
  gamma = np.broadcast_to(theta["gamma"], (L,)).copy() if kind == "gd_pp" else np.zeros(L)
  P = theta["P"].reshape(L, d, d).copy() if kind == "precond" else np.broadcast_to(np.eye(d), (L, d, d)).copy()
  converged = bool(np.isfinite(grad_norm) and (tol is None or grad_norm <= tol))
  return Fitted(kind, eta, gamma, P, float(train_loss), float(grad_norm), converged, method)


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


def cache_key(task: TaskConfig, L: int, cfg: FitConfig, kinds=KINDS) -> dict:
  return {"version": VERSION, "task": dataclasses.asdict(task), "L": int(L), "fit": dataclasses.asdict(cfg),
          "kinds": [k for k in KINDS if k in kinds]}


def cache_path(task: TaskConfig, L: int, cfg: FitConfig, cache_dir="runs/cache", kinds=KINDS) -> Path:
  """The cache entry (a directory, io.cached_dir) of these fits."""
  return Path(cache_dir) / "references" / io.digest(cache_key(task, L, cfg, kinds))[:16]


def record(f: Fitted) -> dict:
  """A fit as plain values (the cache entry and analysis.json's "references")."""
  return {"eta": f.eta, "gamma": f.gamma, "P": f.P, "train_loss": f.train_loss, "grad_norm": f.grad_norm,
          "converged": f.converged, "method": f.method}


def fitted(task: TaskConfig, L: int, cfg: FitConfig = FitConfig(), cache_dir="runs/cache",
           kinds=KINDS) -> dict[str, Fitted]:
  """Every reference of depth L for this task, fitted once and then read from the cache (converged or not:
  callers take `usable`)."""
  _check_layers(L)
  for k in kinds:
    _check_kind(k)
  key = cache_key(task, L, cfg, kinds)

  def build(tmp: Path) -> dict:
    stored = {k: record(f) for k, f in fit_many(task, L, key["kinds"], cfg).items()}
    io.write_json(tmp / "fits.json", stored)
    return stored

  stored = io.cached_dir(Path(cache_dir) / "references", key, ("fits.json",), build,
                         lambda path: io.read_json(path / "fits.json"), f"fitting the L={L} references")
  return {k: Fitted(k, np.asarray(stored[k]["eta"], np.float64), np.asarray(stored[k]["gamma"], np.float64),
                    np.asarray(stored[k]["P"], np.float64), float(stored[k]["train_loss"]),
                    float(stored[k]["grad_norm"]), bool(stored[k]["converged"]), str(stored[k]["method"]))
          for k in kinds}
