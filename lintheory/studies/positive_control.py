"""Positive control: the headline's own pipeline (paper_protocol) on a planted effect, and its power.

A one-layer model fitted to P prompts under a rank-k prior w ~ N(0, diag(1 ×k, ε ×(d − k))) with
label noise σ overfits its pool; truncating its attention to rank k removes most of that excess
(docs/theory.md §17 derives when, and by how much, and when it beats a uniform shrink). Those models
go through paper_protocol.evaluate_trained, the function behind "SVD pruning enhances ICL": per task
one fixed prompt, the edit chosen on V validation queries among the paper's rates × modules, with the
null controls (random directions, Gaussian ΔW, uniform shrink) searched alike, and the same decision
rule (paper_protocol.compare, _verdict_enhances). The model with P = ∞ (fresh tasks every step) has no
excess for a truncation to remove: there the same rule must say "fails" (SVD's gain equivalent, TOST
within ±SESOI of the headroom, to or below a null control's: no SVD-specific gain).

Rows are paper_protocol's, the model column naming the pool ("P=500", "P=∞"); beside them, per pool,
an independent numpy computation of the planted effect (a least-squares fit of the one-layer
predictor's Γ to P prompts, docs/theory.md §17) predicting the unpruned error and the rank-k gain.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from lintheory.core import learners
from lintheory.core.protocol import family, select
from lintheory.run import profiles
from lintheory.studies import engine, paper_protocol as pp, text

NAME = "positive_control"
KEYS = pp.KEYS
INF_POOL = 0  # pool = 0: fresh tasks every step (P = ∞), the negative control
SIM_KEY = 20_240  # seeds the numpy least-squares simulation (independent of JAX's streams)
POWER = 0.80  # the power at which the minimal detectable effect is stated


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds
  pools: tuple[int, ...]  # P, prompts in the fixed training pool (the planted regimes); 0 = fresh tasks (P = ∞)
  n_tasks: int  # tasks per seed on which the protocol chooses and scores (exact errors)
  d: int = 16  # input dimension
  k: int = 1  # directions of the prior with variance 1; the other d − k have variance eps
  eps: float = 1e-4  # prior variance of the small directions
  n_context: int = 10  # N
  noise_std: float = 1.0  # σ, label noise of the demonstrations
  modules: tuple[str, ...] = ("attn", "q", "k", "v")  # modules searched (the headline profile's, mlp left out)
  Vs: tuple[int, ...] = (16, 64, 256)  # validation queries per task (the headline's)
  val_noise: tuple[float, ...] = (0.0, 0.5)  # label noise std of the validation queries (the headline's)
  sim_fits: int = 16  # independent least-squares fits per pool in the numpy simulation


PROFILES = {  # default and long: docs/theory.md §17 (d = 16, k = 1, σ = 1, N = 10, P = 3d²)
    "tiny": Settings(profiles.PROFILES["tiny"], (40, INF_POOL), n_tasks=64, d=3, n_context=6, Vs=(16,),
                     val_noise=(0.0,), modules=("attn",), sim_fits=4),
    "default": Settings(profiles.PROFILES["default"], (768, INF_POOL), n_tasks=10_000,
                        modules=pp.PROFILES["default"].modules[:2]),
    "long": Settings(profiles.PROFILES["long"], (768, INF_POOL), n_tasks=50_000,
                     modules=pp.PROFILES["long"].modules[:4]),
    "full": Settings(profiles.PROFILES["full"], (768, 1280, INF_POOL), n_tasks=200_000,
                     modules=pp.PROFILES["full"].modules[:4], sim_fits=64),
}


def w_cov(s: Settings) -> tuple[float, ...]:
  return (1.0,) * s.k + (s.eps,) * (s.d - s.k)


def label(pool: int) -> str:
  return "P=∞" if pool == INF_POOL else f"P={pool}"


def protocol(s: Settings) -> pp.Settings:
  """paper_protocol's settings for the control's one-layer models (its rates, kinds and tie rule)."""
  return pp.Settings(s.train, (), d=s.d, n_context=s.n_context, layers=1, Vs=s.Vs, val_noise=s.val_noise,
                     modules=s.modules)


# --- the independent computation: least squares for Γ (docs/theory.md §17) -------------------


def ls_simulation(s: Settings, pool: int, fits: int, seed: int = SIM_KEY) -> dict:
  """numpy only: Γ fitted by least squares to `pool` prompts (one query each, noiseless target), `fits`
  times; its exact loss, its rank-k truncation's and its best uniform shrink's, and the P = ∞ optimum
  Γ*_w, all normalised by d. The model's function class is larger than Γ (docs/theory.md §17): this
  predicts the planted effect, it does not copy the trained model."""
  rng, d, N, s2 = np.random.default_rng(seed), s.d, s.n_context, s.noise_std ** 2
  sw = np.asarray(w_cov(s))
  loss = functools.partial(learners.one_layer_loss, N=N, noise_std=s.noise_std, w_cov=np.diag(sw))
  g_inf = np.diag(sw / ((N + 1) / N * sw + (sw.sum() + s2) / N))  # Γ*_w (docs/theory.md §9)
  out = {"sim_inf": loss(g_inf) / d}
  if pool == INF_POOL:
    return out
  l0, lk, lsh = [], [], []
  for _ in range(fits):
    w = rng.normal(size=(pool, d)) * np.sqrt(sw)
    X = rng.normal(size=(pool, N, d))
    b = np.einsum("pnd,pn->pd", X, np.einsum("pnd,pd->pn", X, w) + s.noise_std * rng.normal(size=(pool, N))) / N
    xq = rng.normal(size=(pool, d))
    F = np.einsum("pi,pj->pij", xq, b).reshape(pool, d * d)
    G = np.linalg.lstsq(F, np.einsum("pd,pd->p", xq, w), rcond=None)[0].reshape(d, d)
    U, sv, Vt = np.linalg.svd(G)
    l0.append(loss(G))
    lk.append(loss((U[:, :s.k] * sv[:s.k]) @ Vt[:s.k]))
    # loss(αΓ) is a parabola in α: its minimum over α from three values
    f0, f1, f2 = (loss(a * G) for a in (0.0, 0.5, 1.0))
    A = 2 * (f2 - 2 * f1 + f0)  # loss(αΓ) = A α² − 2B α + f0
    B = (A + f0 - f2) / 2
    lsh.append(f0 - B ** 2 / A)
  l0, lk, lsh = (np.asarray(v) / d for v in (l0, lk, lsh))
  return {**out, "sim_unpruned": l0.mean(), "sim_unpruned_se": l0.std(ddof=1) / np.sqrt(fits),
          "sim_gain_rank_k": (l0 - lk).mean(), "sim_gain_shrink": (l0 - lsh).mean()}


# --- the study -------------------------------------------------------------------------------


def run(s: Settings, ctx: engine.Context) -> None:
  ps = protocol(s)
  for pool in s.pools:
    arch = pp.Arch(label(pool), "linear", None, s.n_tasks, 0, (s.n_context,))
    tr = ctx.train(s, {"model": arch.name}, d=s.d, n_context=s.n_context, layers=1, noise_std=s.noise_std,
                   w_cov=w_cov(s), pool_size=pool)
    if tr is None:
      continue
    halves = pp.evaluate_trained(tr, ps, arch, ctx)[s.n_context]
    population_rows(ctx, halves, tr.seeds, ps, arch.name, s.n_context)
    ctx.add_many(ls_simulation(s, pool, s.sim_fits), n_tasks=s.sim_fits, model=arch.name, shots=s.n_context)


def population_rows(ctx, halves: dict, seeds, ps: pp.Settings, name: str, shots: int) -> None:
  """The population-level choice per family and seed: the one candidate (the unpruned model among them)
  with the lowest mean test error on the first half of the protocol's tasks, scored on the second half
  (pop_gain: unpruned − chosen there, normalised errors; ties to the smaller ξ, as core.protocol.select)."""
  cands = halves["candidates"]
  first, second = halves["first"] / halves["n_first"], halves["second"] / halves["n_second"]  # [C, S]
  xi = np.array([c.xi for c in cands])
  for kind in ps.kinds:
    idx = family(cands, kind, "all", 1)
    pick = idx[select(first[idx], xi[idx])]  # [S]
    gain = second[0] - second[pick, np.arange(len(seeds))]
    for i, seed in enumerate(seeds):
      ctx.add("pop_gain", gain[i], seed=seed, n_tasks=halves["n_second"], model=name, shots=shots, edit=kind,
              layers="all")


# --- reading the table -----------------------------------------------------------------------


def pools(table: engine.Table) -> list[str]:
  """The model labels with protocol rows, P ascending, P = ∞ last."""
  labels = table.unique("model", measure="rel_gain_mean")
  return sorted(labels, key=lambda m: np.inf if m == label(INF_POOL) else int(m[2:]))


def planted(table: engine.Table) -> list[str]:
  return [m for m in pools(table) if m != label(INF_POOL)]


def _regimes(table, model: str) -> list[dict]:
  return [r for r in pp.regimes(table) if r["model"] == model]


def mde(diff_S) -> float:
  """The smallest true mean of a per-seed difference that the rule 'CI above 0 and mean above SESOI'
  detects with probability POWER at this many seeds, taking the seeds' spread as known (t-quantiles
  stand in for the noncentral t): max((t_.975 + t_POWER)·se, SESOI + t_POWER·se) (docs/theory.md §17).
  NaN below 2 seeds."""
  from scipy import stats as st
  v = np.asarray(diff_S, np.float64)
  if v.size < 2 or not np.all(np.isfinite(v)):
    return float("nan")
  se, df = v.std(ddof=1) / np.sqrt(v.size), v.size - 1
  t_a, t_b = st.t.ppf(0.975, df), st.t.ppf(POWER, df)
  return float(max((t_a + t_b) * se, pp.SESOI + t_b * se))


def weakest(table: engine.Table) -> tuple[str, dict, str] | None:
  """The planted regime where SVD's margin over its strongest null control is smallest (the centre over
  seeds, paper_protocol.compare): (its label, its compare(), that control); None without a control."""
  cs = {pp._label(r): pp.compare(table, r) for m in planted(table) for r in _regimes(table, m)}
  cs = {k: c for k, c in cs.items() if c["vs"]}
  if not cs:
    return None
  margin = lambda c: c["vs"][pp.strongest_control(c)]["center"]
  label_ = min(cs, key=lambda k: margin(cs[k]))
  return label_, cs[label_], pp.strongest_control(cs[label_])


def power(table: engine.Table) -> tuple[float, int] | None:
  """The largest minimal detectable effect (fraction of headroom, mde) over the planted regimes of
  SVD − its strongest null control, with the seed count: the smallest gain over every null control
  the pipeline detects at POWER in all of them. None without a planted regime with 2 seeds."""
  worst, n = np.nan, 0
  for m in planted(table):
    for reg in _regimes(table, m):
      c = pp.compare(table, reg)
      if c["vs"]:
        diff = c["vs"][pp.strongest_control(c)]["diff"]
        worst, n = np.nanmax([worst, mde(diff)]), diff.size
  return None if np.isnan(worst) else (float(worst), n)


def power_text(table: engine.Table) -> str:
  p = power(table)
  return "" if p is None else f"detects ≥ {text.num(100 * p[0], 2)} % of headroom at {p[1]} seeds"


def decisions(table: engine.Table) -> dict:
  """paper_protocol's rule (_verdict_enhances) in every regime: label → verdict, planted pools and P = ∞
  apart. At P = ∞ SVD has no gain of its own to find: the rule must say "fails" there (SVD's gain
  equivalent, TOST within ±SESOI, to or below a null control's), its equivalence branch."""
  out = {"planted": {}, "null": {}}
  for m in pools(table):
    for reg in _regimes(table, m):
      out["null" if m == label(INF_POOL) else "planted"][pp._label(reg)] = pp._verdict_enhances(pp.compare(table, reg))
  return out


def control_verdict(dec: dict) -> str:
  """The control's verdict from decisions(): see claims()."""
  v, null = list(dec["planted"].values()), list(dec["null"].values())
  n_fail, n_seen = v.count("fails"), null.count("holds")
  if n_fail:
    return f"fails: the planted effect is missed in {n_fail} of {len(v)} regimes"
  if n_seen:
    return f"fails: at P = ∞ the rule finds an SVD gain where none is planted, in {n_seen} of {len(null)} regimes"
  if v.count("holds") == len(v) and null and null.count("fails") == len(null):
    return "holds"
  return "undecided"


def claims(table: engine.Table, meta: dict) -> list:
  """Holds when paper_protocol's rule says "holds" (SVD beats every null control) in every planted
  regime and "fails" (SVD's gain equivalent to or below a null control's) in every P = ∞ regime; fails
  when a planted regime fails (the pipeline misses its planted effect) or a P = ∞ regime holds (it
  sees an effect where none is planted); else undecided. No protocol rows: no claim."""
  from lintheory.studies.verdicts import NO_INTERVAL, Claim
  if not planted(table):
    return []
  detail = ("one-layer models fitted to P prompts under a rank-k prior, through paper_protocol's per-task "
            "choice with its null controls and its rule; P = ∞ (fresh tasks) the negative control")
  if len(table.seeds(measure="rel_gain_mean")) < 2:
    return [Claim("positive_control", NO_INTERVAL, "SVD − strongest null control, % of headroom",
                  "(1 seed, no interval)", 1, detail)]
  verdict = control_verdict(decisions(table))
  worst, c, ctl = weakest(table)
  diff, (lo, hi) = c["vs"][ctl]["diff"], c["vs"][ctl]["ci"]
  effect = (f"SVD − the strongest null control ({ctl}), % of headroom, in the planted regime where it is "
            f"smallest ({worst}): {text.num(100 * c['vs'][ctl]['center'], 2)} % (every regime's decision is in the "
            "study's table)")
  pw = power_text(table) if verdict == "holds" else ""  # a control that does not hold states no power
  return [Claim("positive_control", verdict, effect, text.ci(100 * lo, 100 * hi, 2) + " %", diff.size,
                detail + (f"; power: {pw} (80 %)" if pw else ""), pw)]
