"""Implicit gradient descent, layer by layer: trained models against explicit learners of the same depth.

For every depth L and noise level σ: trained models (one per seed) and four explicit references of
depth L fitted on the same task distribution (GD with one η, per-step η_t, GD++, preconditioned GD;
run.references). Reported: the exact per-task population error of each on the same held-out tasks
(squared error ÷ d, docs/theory.md §1; mean with its tail: median, 99th and 99.99th percentiles, maximum), the Theorem-1 identity error,
and per layer t the distance of the implicit predictor ŵ_t to each reference's iterate w_t
(docs/theory.md §3–5, §11). At σ = 0 also the error at test-time context sizes M ≠ N.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import evaluate, learners, precision, stats, tasks
from lintheory.run import analysis, profiles, references
from lintheory.studies import engine, text

NAME = "implicit_gd"
KEYS = ("sigma", "L", "reference", "layer", "M")
KINDS = references.KINDS
EVAL_KEY = 31_415  # held-out tasks (the training streams use the seeds' keys)
CONTEXT_KEY = 31_416  # the tasks of the test-time context sizes M


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds
  depths: tuple[tuple[float, tuple[int, ...]], ...]  # (σ, the depths L trained at that noise level)
  eval_tasks: int  # tasks per model for every reported error (exact per-task errors)
  trajectory_tasks: int  # tasks for the per-layer comparison of ŵ_t with the references
  Ms: tuple[int, ...]  # test-time context sizes at σ = 0
  d: int = 10  # input dimension
  n_context: int = 20  # N at training time
  fit: references.FitConfig = references.FitConfig()  # how the references are fitted


PROFILES = {
    "tiny": Settings(profiles.PROFILES["tiny"], ((0.0, (1, 2)),), eval_tasks=4096, trajectory_tasks=256,
                     Ms=(10, 20), d=3, n_context=8, fit=references.FitConfig(steps=30, n_tasks=512)),
    "default": Settings(profiles.PROFILES["default"], ((0.0, (1, 2, 3, 4, 6)), (0.5, (1, 4))),
                        eval_tasks=100_000, trajectory_tasks=4096, Ms=(5, 10, 20, 40, 80), d=5),
    "long": Settings(profiles.PROFILES["long"], ((0.0, (1, 2, 3, 4, 6)), (0.5, (1, 2, 4))),
                     eval_tasks=100_000, trajectory_tasks=4096, Ms=(5, 10, 20, 40, 80)),
    "full": Settings(profiles.PROFILES["full"], ((0.0, (1, 2, 3, 4, 6, 8)), (0.5, (1, 2, 3, 4, 6, 8))),
                     eval_tasks=1_000_000, trajectory_tasks=16_384, Ms=(5, 10, 15, 20, 30, 40, 80, 160)),
}


def run_setting(s: Settings, sigma: float, L: int, ctx: engine.Context, bayes: dict) -> None:
  """One (σ, L); bayes holds the Bayes errors per task distribution (they do not depend on L)."""
  keys = {"sigma": sigma, "L": L}
  tr = ctx.train(s, keys, d=s.d, n_context=s.n_context, layers=L, noise_std=sigma)
  if tr is None:
    return
  fits = references.fitted(tr.task, L, s.fit, ctx.cache_dir)
  for kind, f in fits.items():  # the certificate of every fit; a refused one is compared with nothing
    ctx.add("ref_grad_norm", f.grad_norm, reference=kind, n_tasks=s.fit.n_tasks, **keys)
    ctx.add("ref_converged", float(f.converged), reference=kind, **keys)
  refs, refused = references.usable(fits)
  for kind, why in refused.items():
    ctx.log(f"σ={sigma} L={L}: reference {kind} refused: {why}")
  key = jax.random.key(EVAL_KEY)
  n = s.eval_tasks
  with precision.x64():
    # The seeds' models and the references on the same tasks, in one evaluation: [S + K, n].
    models = [profiles.seed_params(tr.params, k) for k in range(len(tr.seeds))]
    models += [references.construct(f) for f in refs.values()]
    both = evaluate.errors(profiles.stack_params(models), tr.model, tr.task, key, n, dtype="float64")
    err = both[:len(tr.seeds)]  # [S, n]
    for kind, e in zip(refs, both[len(tr.seeds):]):
      ctx.add_many(stats.summary(e), prefix="ref_", n_tasks=n, reference=kind, **keys)
    if tr.task not in bayes:
      bayes[tr.task] = evaluate.bayes_errors(tr.task, key, n)
    ridge = bayes[tr.task]
    ctx.add_many(stats.summary(ridge), prefix="ref_", n_tasks=n, reference="ridge", **keys)
    batch = tasks.sample(jax.random.fold_in(key, 1), tr.task, s.trajectory_tasks, dtype=jnp.float64)
    context = evaluate.context_errors(tr.params, tr.model, tr.task, jax.random.key(CONTEXT_KEY), s.Ms,
                                      n) if sigma == 0.0 else {}  # {M: [S, n]}
    for k, seed in enumerate(tr.seeds):
      ctx.add_many(stats.summary(err[k]), prefix="model_", seed=seed, n_tasks=n, **keys)
      params = {name: jnp.asarray(v, jnp.float64) for name, v in profiles.seed_params(tr.params, k).items()}
      a = analysis.analyze(params, tr.model, tr.task, refs, batch)
      ctx.add("identity_max_abs_err", a["identity"]["max_abs_err"], seed=seed, n_tasks=s.trajectory_tasks, **keys)
      for kind in refs:
        per_layer = a["layers"]["references"][kind]
        for t in range(L):
          ctx.add("w_rel_dist", per_layer["rel_l2"][t], seed=seed, n_tasks=s.trajectory_tasks, reference=kind,
                  layer=t + 1, **keys)
        ctx.add("model_cos", a["final"]["model_cos"][kind], seed=seed, n_tasks=s.trajectory_tasks, reference=kind,
                **keys)
      if sigma == 0.0:
        for M in s.Ms:
          e = context[M][k]
          ctx.add_many({"mean": e.mean(), "median": np.median(e)}, prefix="context_", seed=seed,
                       n_tasks=e.size, M=M, **keys)
  for M in s.Ms if sigma == 0.0 else ():
    ctx.add("context_gd1_closed_form", learners.gd1_loss_at(s.d, s.n_context, M) / s.d, M=M, **keys)
  ctx.add("eta_star", learners.eta_star(s.d, s.n_context, sigma), **keys)
  ctx.log(f"σ={sigma} L={L}: model mean {np.median(err.mean(1)):.4g} (median over seeds), median "
          f"{np.median(np.median(err, 1)):.4g}, max {err.max():.3g}")


def run(s: Settings, ctx: engine.Context) -> None:
  bayes = {}
  for sigma, Ls in s.depths:
    for L in Ls:
      run_setting(s, sigma, L, ctx, bayes)


# --- reading the table ----------------------------------------------------------------------


def closest(table: engine.Table) -> dict:
  """Per depth at σ = 0: the reference whose final ŵ distance has the smallest median over the seeds whose
  fit converged (engine.training), and that distance per such seed → {L: (reference, [S])}."""
  out = {}
  for L in table.unique("L", measure="w_rel_dist", sigma=0.0):
    fits = engine.training(table, sigma=0.0, L=L)
    s = [x for x in table.seeds(measure="w_rel_dist", sigma=0.0, L=L) if fits.get(x) is None]
    if not s:  # no converged seed: nothing to compare (the claim's row says so)
      out[L] = "no reference", np.array([])
      continue
    kinds = [k for k in KINDS if table.values("w_rel_dist", sigma=0.0, L=L, reference=k, layer=L).size]
    final = {k: np.array([table.value("w_rel_dist", sigma=0.0, L=L, reference=k, layer=L, seed=x) for x in s])
             for k in kinds}  # refused references have no rows
    best = min(kinds, key=lambda k: np.median(final[k]))
    out[L] = best, final[best]
  return out


def claims(table: engine.Table, meta: dict) -> list:
  """The identity is exact; the trajectory claim holds at a depth when the closest reference (by the
  final ŵ distance, median over seeds) is a GD variant whose distance has an interval over seeds below 0.1
  (text.over_seeds). Holds at every depth: holds; at none: fails; else depends on depth. An inexact
  identity fails the claim. No depth at σ = 0: no claim; none with 2 seeds: undecided. The distances are
  those of the seeds whose fit converged (closest); the others are named in the row, not counted."""
  from lintheory.studies.verdicts import NO_INTERVAL, Claim
  ident = table.values("identity_max_abs_err")
  parts, close, seeds = [], [], []
  for L, (best, d) in closest(table).items():
    iv = text.over_seeds(d)
    note = engine.converged_note(engine.training(table, sigma=0.0, L=L),
                                 table.seeds(measure="w_rel_dist", sigma=0.0, L=L))
    parts.append(f"L={L}: {best} {text.interval(d, 2)}" + (f" ({note})" if note else ""))
    seeds.append(iv.n if iv is not None else int(np.sum(~np.isnan(d))))
    if iv is not None:
      close.append(iv.hi < 0.1)
  exact = ident.size == 0 or ident.max() < 1e-9
  if exact and not parts:
    return []
  verdict = ("fails" if not exact else NO_INTERVAL if not close
             else "holds" if all(close) and len(close) == len(parts)
             else "fails" if not any(close) else "depends on depth")
  checked = f"identity exact to {text.num(ident.max(), 2)}" if ident.size else "identity not measured"
  n = min(seeds) if seeds else len(table.seeds(measure="identity_max_abs_err"))
  return [Claim("implicit_gd", verdict, f"{checked}; final ‖ŵ − w_ref‖/‖w_ref‖ to the closest reference",
                "; ".join(parts), n, "σ = 0; 'holds' where the closest reference's distance has a CI below 0.1")]
