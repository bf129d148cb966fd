"""Mismatch: where pruning could help — fewer shots than trained, untrained-for noise, short training.

A model trained on unlimited fresh tasks and tested in distribution sits near the population optimum,
where no edit can lower the population error; so every regime here is a mismatch between training
and test (docs/theory.md §7, §11):
  shots            trained at N_train, tested at M < N_train demonstrations. A fixed-length model sees
                   the short prompt with its natural 1/M scaling (out of distribution); a mixed-length
                   model (TaskConfig.n_context_min) was trained on prompts that keep M ~ U{M_min, …, N}
                   demonstrations as zero-padded tokens, and is tested the same way (in distribution).
  noise            trained at σ = 0, tested at σ_test > 0; a matched control is trained at σ_test.
  training_length  the in-distribution model after a short training run against the full one.
Edits, in three families (FAMILIES) decided apart, since only the first is the paper's pruning:
  svd     a layer's attn or v truncated to a rank r ≥ 1 (docs/theory.md §7);
  drop    the last k layers dropped (W_V = 0), or one layer's attn or v truncated to rank 0: either
          zeroes W_V, so ΔW_t = 0 and the layer passes its tokens on unchanged (docs/theory.md §2);
  shrink  the last W_V scaled by a factor c < 1.
Per (condition, seed) the edit with the lowest mean error on one task set is scored on a disjoint set
(exact per-task errors); ties keep the unpruned model. That choice is made over every edit (the
report's "any edit") and within each family (gain_svd, gain_shrink, gain_drop), each scored on the
same disjoint tasks. gain = error_unpruned − error_edited (> 0: the edit helps), also as a fraction
of the headroom, unpruned − Bayes. Seeds are the unit: t-intervals over seeds, and a null is called
only when the equivalence test puts the mean gain within ±5 % of the headroom. "Pruning helps"
verdicts count SVD truncation only; another family that wins gets a row of its own.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from lintheory.core import evaluate, precision, prune, stats, tasks
from lintheory.core.tasks import TaskConfig
from lintheory.run import profiles
from lintheory.studies import engine, text
from lintheory.studies.verdicts import Claim

NAME = "mismatch"
KEYS = ("regime", "L", "model", "N_train", "M", "sigma_train", "sigma_test", "steps", "edit")
REGIMES = ("shots", "noise", "training_length")
SELECT_KEY, CONFIRM_KEY = 2718, 3141  # disjoint task streams (the training streams use the seeds' keys)
BAYES_CHUNK = 8192  # the confirmation tasks are drawn in chunks of this size, as bayes_errors draws them
MARGIN = 0.05  # equivalence margin, as a fraction of the headroom (unpruned − Bayes)
FAMILIES = ("svd", "shrink", "drop")  # edit families, each chosen and scored on its own


@dataclasses.dataclass(frozen=True)
class Settings:
  train: profiles.Profile  # training recipe and seeds; its steps are the full training length
  depths: tuple[int, ...]  # L
  n_trains: tuple[int, ...]  # N_train of the shots regime
  Ms: tuple[int, ...]  # test-time demonstrations M; each N_train uses those below it (M >= d: Bayes is exact)
  mixed_min: int  # n_context_min of the mixed-length models (M ~ U{mixed_min, …, N_train})
  sigmas: tuple[float, ...]  # σ_test against models trained at σ = 0
  matched: tuple[float, ...]  # σ_test that also get a control trained at σ_train = σ_test
  short_steps: tuple[int, ...]  # short training lengths, against the profile's steps
  select_tasks: int  # tasks on which each seed's edit is chosen
  confirm_tasks: int  # disjoint tasks on which the chosen edit is scored
  d: int = 10  # input dimension
  n_context: int = 20  # N of the noise and training-length regimes
  drops: tuple[int, ...] = (1, 2)  # k: drop the last k layers
  shrinks: tuple[float, ...] = (0.5, 0.8)  # c: the last W_V ← c·W_V
  chunk: int = 256  # tasks per compiled evaluation step of the selection (× edits × seeds in memory)


PROFILES = {
    "tiny": Settings(profiles.PROFILES["tiny"], (2,), (8,), (4,), mixed_min=3, sigmas=(0.5,), matched=(),
                     short_steps=(10,), select_tasks=256, confirm_tasks=1024, d=3, n_context=8, drops=(1,),
                     shrinks=(0.5,)),
    "default": Settings(profiles.PROFILES["default"], (4,), (15, 20), (10, 15), mixed_min=10,
                        sigmas=(0.25, 0.5, 1.0), matched=(0.5,), short_steps=(150, 500), select_tasks=2048,
                        confirm_tasks=100_000, d=5),
    "long": Settings(profiles.PROFILES["long"], (4,), (15, 20), (10, 15), mixed_min=10,
                     sigmas=(0.25, 0.5, 1.0), matched=(0.5,), short_steps=(150, 500), select_tasks=2048,
                     confirm_tasks=100_000),
    "full": Settings(profiles.PROFILES["full"], (2, 4, 6), (12, 15, 20), (10, 12, 15), mixed_min=10,
                     sigmas=(0.25, 0.5, 1.0), matched=(0.25, 0.5, 1.0), short_steps=(150, 500),
                     select_tasks=16_384, confirm_tasks=1_000_000, chunk=512),
}


# --- models ---------------------------------------------------------------------------------


def trained_mixed(s: Settings, ctx: engine.Context, L: int, N: int) -> profiles.Trained:
  """Models trained on mixed context lengths with the profile's recipe (cached)."""
  return engine.trained(s, ctx, d=s.d, n_context=N, n_context_min=s.mixed_min, layers=L)


# --- edits ----------------------------------------------------------------------------------


def edit_list(s: Settings, L: int, D: int) -> list[tuple]:
  """(kind, a, b): ("attn" | "v", layer, rank) for every layer and rank < D, ("drop", k, None),
  ("shrink", c, None)."""
  out = [(m, l, r) for m in ("attn", "v") for l in range(L) for r in range(D)]
  return out + [("drop", k, None) for k in s.drops if k <= L] + [("shrink", c, None) for c in s.shrinks]


def family(edit: tuple) -> str:
  """svd, shrink or drop (module docstring): a truncation to rank 0 zeroes W_V, so it drops the layer."""
  kind, _, b = edit
  return "shrink" if kind == "shrink" else "drop" if kind == "drop" or b == 0 else "svd"


def family_of_label(name: str) -> str | None:
  """The family of a recorded edit label (`label`'s form); None for "none", the unpruned model."""
  if name == "none":
    return None
  drop = name.startswith("drop") or name.endswith(" rank 0")  # a truncation to rank 0 drops the layer
  return "drop" if drop else "shrink" if name.startswith("last W_V") else "svd"


def choose(sel_ES: np.ndarray, mask_E: np.ndarray) -> np.ndarray:
  """Per seed, the index into [unpruned, *edits] of the masked edit with the lowest selection error
  (the first of equals), or 0 (the unpruned model) unless it is strictly lower; sel_ES [1 + E, S]."""
  cand = np.where(np.asarray(mask_E, bool)[:, None], sel_ES[1:], np.inf)
  j = np.argmin(cand, axis=0)
  return np.where(cand[j, np.arange(cand.shape[1])] < sel_ES[0], 1 + j, 0)


def label(edit: tuple) -> str:
  kind, a, b = edit
  if kind == "drop":
    return f"drop last {a}"
  if kind == "shrink":
    return f"last W_V ×{a:g}"
  return f"{kind}[{a}] rank {b}"


# --- one condition --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Condition:
  regime: str  # one of REGIMES
  model: str  # "fixed" | "mixed" (shots), "clean" | "matched" (noise), "fixed" (training_length)
  tr: profiles.Trained  # the trained models
  test: TaskConfig  # the test distribution, as a prompt of M demonstrations
  pad_to: int = 0  # > 0: the prompt is zero-padded to this many tokens (the mixed models)

  def keys(self) -> dict:
    t = self.tr.task
    return {"regime": self.regime, "L": self.tr.model.n_layers, "model": self.model, "N_train": t.n_context,
            "M": self.test.n_context, "sigma_train": t.noise_std, "sigma_test": self.test.noise_std,
            "steps": self.tr.train.steps}


def _errors(params_P: dict, c: Condition, key: jax.Array, n: int, chunk: int) -> np.ndarray:
  """Exact per-task errors ÷ d of P models on the same n tasks → [P, n] float64."""
  if c.pad_to:
    params_P = prune.padded_as_truncated(params_P, c.test.n_context, c.pad_to)
  chunk = min(chunk, n)
  # one draw of the tasks, every model on it: sampling once is what makes a hundred edits affordable
  fn = evaluate.chunk_fn(c.tr.model, c.test, chunk, "float64", seeds=True, paired_seeds=True, normalise=True)
  parts = [np.asarray(fn(params_P, key, i)) for i in range(-(-n // chunk))]
  return np.concatenate(parts, axis=-1)[:, :n]


def run_condition(s: Settings, c: Condition, ctx: engine.Context, bayes_of: dict) -> None:
  """One condition; bayes_of holds the Bayes errors per test distribution (shared by conditions)."""
  keys = c.keys()
  tr = c.tr
  ctx.add_training(tr, **keys)
  S, L = len(tr.seeds), tr.model.n_layers
  edits = edit_list(s, L, tr.model.D)
  fams = np.array([family(e) for e in edits])
  names = ["none"] + [label(e) for e in edits]
  with precision.x64():
    p0 = {k: np.asarray(v, np.float64) for k, v in tr.params.items()}
    both = {k: np.concatenate([p0[k], v]) for k, v in prune.apply_edits(p0, edits).items()}  # [(1 + E)·S, ...]
    sel = _errors(both, c, jax.random.key(SELECT_KEY), s.select_tasks, s.chunk)
    sel = sel.reshape(len(edits) + 1, S, -1).mean(-1)  # [1 + E, S] mean error on the selection tasks
    # per seed, an index into names: the best of all edits (also its own family's best), then each family's
    pick = {"any": choose(sel, np.ones(len(edits), bool))}
    pick.update({f: choose(sel, fams == f) for f in FAMILIES})
    # the unpruned models, then each family's choices: one shape for every condition (one compile)
    rows = [int(j) * S + i for js in [np.zeros(S, int), *(pick[f] for f in FAMILIES)] for i, j in enumerate(js)]
    at = {r: n for n, r in reversed(list(enumerate(rows)))}
    p1 = {k: v[rows] for k, v in both.items()}
    key = jax.random.key(CONFIRM_KEY)
    err = _errors(p1, c, key, s.confirm_tasks, BAYES_CHUNK)
    if c.test not in bayes_of:
      bayes_of[c.test] = evaluate.bayes_errors(c.test, key, s.confirm_tasks, chunk=BAYES_CHUNK)
    bayes = bayes_of[c.test]
  n = s.confirm_tasks
  for i, seed in enumerate(tr.seeds):
    for e, v in zip(edits, sel[1:, i]):
      g = 0.0 if v == sel[0, i] else sel[0, i] - v  # both inf (overflowed) counts as no difference
      ctx.add("select_gain", g, seed=seed, n_tasks=s.select_tasks, edit=label(e), **keys)
    e0 = err[at[i]]
    head = e0.mean() - bayes.mean()
    for f, js in pick.items():
      if f != "any" and not np.any(fams == f):  # no edit of this family in the list (e.g. shrinks=())
        continue
      tag = "" if f == "any" else f"_{f}"
      e1 = err[at[int(js[i]) * S + i]]
      ctx.add(f"chosen{tag}", 1.0, seed=seed, edit=names[js[i]], **keys)
      if np.isinf(e0.mean()) and np.isinf(e1.mean()):
        ctx.fail("confirm", f"unpruned and edited ({'any edit' if f == 'any' else f}) mean errors both overflow "
                 "float64", seed=seed, **keys)
        continue
      if f == "any":
        ctx.add_many(stats.summary(e0), prefix="unpruned_", seed=seed, n_tasks=n, **keys)
        ctx.add_many(stats.summary(e1), prefix="edited_", seed=seed, n_tasks=n, **keys)
        ctx.add("headroom", head, seed=seed, n_tasks=n, **keys)
      ctx.add(f"gain{tag}", e0.mean() - e1.mean(), seed=seed, n_tasks=n, **keys)
      ctx.add(f"gain_frac{tag}", (e0.mean() - e1.mean()) / head if head > 0 else 0.0, seed=seed, n_tasks=n, **keys)
  ctx.add_many(stats.summary(bayes), prefix="bayes_", n_tasks=n, **keys)
  g = {f: np.array([err[at[i]].mean() - err[at[int(js[i]) * S + i]].mean() for i in range(S)])
       for f, js in pick.items()}
  ctx.log(f"{keys}: gain per seed " + ", ".join(f"{f} {np.array2string(v, precision=3)}" for f, v in g.items())
          + f", unpruned {np.array2string(np.array([err[at[i]].mean() for i in range(S)]), precision=3)}, "
          f"Bayes {bayes.mean():.3g}")


def conditions(s: Settings, L: int, ctx: engine.Context):
  """Every condition at depth L, each built (and its models trained) only when it runs."""
  train = lambda **kw: engine.trained(s, ctx, d=s.d, layers=L, **kw)
  test = lambda N, sigma=0.0: TaskConfig(d=s.d, n_context=N, noise_std=sigma)
  for N in s.n_trains:
    Ms = [M for M in s.Ms if M < N]
    if not Ms:
      continue
    yield lambda N=N, Ms=Ms: [Condition("shots", "fixed", train(n_context=N), test(M)) for M in Ms]
    yield lambda N=N, Ms=Ms: [Condition("shots", "mixed", trained_mixed(s, ctx, L, N), test(M), pad_to=N)
                              for M in Ms]
  yield lambda: [Condition("noise", "clean", train(n_context=s.n_context), test(s.n_context, sg))
                 for sg in s.sigmas]
  for sg in s.matched:
    yield lambda sg=sg: [Condition("noise", "matched", train(n_context=s.n_context, noise_std=sg),
                                   test(s.n_context, sg))]
  for steps in (*s.short_steps, s.train.steps):
    yield lambda steps=steps: [Condition("training_length", "fixed", train(n_context=s.n_context, steps=steps),
                                         test(s.n_context))]


def run(s: Settings, ctx: engine.Context) -> None:
  bayes_of = {}
  for L in s.depths:
    for build in conditions(s, L, ctx):
      t0 = time.perf_counter()
      try:
        conds = build()
      except RuntimeError as e:  # a diverged training run is recorded, not hidden
        ctx.fail("train", str(e), L=L)
        continue
      ctx.log(f"models ready in {time.perf_counter() - t0:.1f} s (training or the cache)")
      for c in conds:
        t0 = time.perf_counter()
        run_condition(s, c, ctx, bayes_of)
        ctx.log(f"evaluated in {time.perf_counter() - t0:.1f} s")


# --- reading the table ----------------------------------------------------------------------


def condition_keys(table: engine.Table, regime: str) -> list[dict]:
  """The conditions of one regime, in run order, as key dicts (without edit)."""
  out = []
  for r in table.where(measure="gain", regime=regime).rows:
    k = {c: r[c] for c in KEYS if c != "edit"}
    if k not in out:
      out.append(k)
  return out


def family_values(table: engine.Table, k: dict, fam: str | None):
  """Per seed, the gain and gain / headroom of the edit chosen in family `fam` (None: among every edit),
  and the seeds whose value the table lacks; None where the condition has no edit of that family.

  A table written before choices were made per family holds only the choice among every edit. That is
  the family's own choice too where it is of the family (the best of all is the best of its family) and
  where the unpruned model was kept (no edit of any family beat it); elsewhere the family's gain is missing.
  """
  if fam is None:
    return table.values("gain", **k), table.values("gain_frac", **k), []
  if any(table.where(measure=f"chosen_{f}", **k).rows for f in FAMILIES):
    if not table.where(measure=f"chosen_{fam}", **k).rows:
      return None
    return table.values(f"gain_{fam}", **k), table.values(f"gain_frac_{fam}", **k), []
  g, f, missing = [], [], []
  for seed in table.seeds(measure="gain", **k):
    chosen = table.where(measure="chosen", seed=seed, **k).rows
    ok = bool(chosen) and family_of_label(chosen[0]["edit"]) in (None, fam)
    g.append(table.value("gain", seed=seed, **k) if ok else np.nan)
    f.append(table.value("gain_frac", seed=seed, **k) if ok else np.nan)
    missing += [] if ok else [seed]
  return np.array(g), np.array(f), missing


def verdict_of(table: engine.Table, k: dict, fam: str | None = None) -> dict | None:
  """One condition's per-seed gains, in error units and as a fraction of the headroom, and its call,
  for the edit chosen in family `fam` (None: among every edit); None where it has no edit of the family.

  The call reads the fraction: seeds whose unpruned errors differ by orders of magnitude (a blow-up
  at M < N) make a t-interval in error units meaningless, while each seed's share of its own headroom
  is comparable. helps / hurts: the 95 % interval over seeds of the share (text.over_seeds: the mean's
  t-interval, or the median's order-statistic interval where a seed is ±inf) excludes 0; null: TOST
  within ±5 % of the headroom (never with a seed at ±inf); else inconclusive; "not recorded" where some
  seed's value is missing.
  """
  vals = family_values(table, k, fam)
  if vals is None:
    return None
  g, f, missing = vals
  if missing or f.size < 2:  # a seed's value is missing, or no interval over seeds
    nan = float("nan")
    return {"gain": g, "gain_ci": (nan, nan), "frac": f, "center": nan, "lo": nan, "hi": nan, "equivalent": False,
            "call": "not recorded" if missing else "inconclusive (1 seed, no interval)", "missing": missing}
  iv, g_iv = text.over_seeds(f), text.over_seeds(g)
  eq = stats.equivalence(f, MARGIN) if np.all(np.isfinite(f)) else {"equivalent": False}
  call = "helps" if iv.lo > 0 else "hurts" if iv.hi < 0 else "null" if eq["equivalent"] else "inconclusive"
  return {"gain": g, "gain_ci": (g_iv.lo, g_iv.hi), "frac": f, "center": iv.center, "lo": iv.lo, "hi": iv.hi,
          "equivalent": eq["equivalent"], "call": call, "missing": []}


def call_text(v: dict) -> str:
  if v["missing"]:
    return f"not recorded (seed{'s' * (len(v['missing']) > 1)} {', '.join(map(str, v['missing']))})"
  return v["call"]


def describe(k: dict) -> str:
  if k["regime"] == "shots":
    return f"{k['model']} N={k['N_train']} M={k['M']}"
  if k["regime"] == "noise":
    return f"σ_train={k['sigma_train']:g} σ_test={k['sigma_test']:g}"
  return f"{k['steps']} steps"


def mismatched(k: dict, full_steps: int) -> bool:
  """Is the condition a train/test mismatch, rather than its in-distribution control?"""
  if k["regime"] == "shots":
    return k["model"] == "fixed"
  if k["regime"] == "noise":
    return k["model"] == "clean"
  return k["steps"] < full_steps


def _wins(table: engine.Table, mism: list, fam: str) -> bool:
  """Does the family help in some mismatched condition, or hold some seed's choice among every edit?"""
  return any(v["call"] == "helps" for _, v in mism) or any(
      family_of_label(r["edit"]) == fam for k, _ in mism for r in table.where(measure="chosen", **k).rows)


def _verdict(vs: list, mism: list, fam: str) -> str:
  missing = [(k, v) for k, v in mism if v["missing"]]
  if missing:  # a table written before each family's choice was recorded (see family_values)
    return (f"undecided: {len(missing)} of {len(mism)} mismatched conditions lack the gain of this family's own "
            "choice (the table holds it only where the best edit of any family was of this family); rerun mismatch")
  helps = [k for k, v in mism if v["call"] == "helps"]
  controls = [k for k, v in vs if k not in [m for m, _ in mism] and v["call"] == "helps"]
  if helps:
    verdict = ("holds" if len(helps) == len(mism) else f"depends: helps in {len(helps)} of {len(mism)} "
               "mismatched conditions")
    return verdict + (f", and in {len(controls)} in-distribution control(s)" if controls else ", never in distribution")
  nulls, hurts = (sum(v["call"] == c for _, v in mism) for c in ("null", "hurts"))
  n = len(mism)
  if nulls == n:
    return "fails: every mismatched condition is equivalent to no gain"
  if hurts == n:
    return "fails: the chosen edit raises the error in every mismatched condition"
  if nulls + hurts == n:
    return f"fails: no mismatched condition gains ({hurts} of {n} hurt, the rest equivalent to no gain)"
  return (f"not shown: no mismatched condition gains ({nulls} of {n} equivalent to no gain, "
          + (f"{hurts} hurt, " if hurts else "") + "the rest inconclusive)")


def _claim(table: engine.Table, regime: str, full_steps: int, fam: str):
  """The regime's verdict for one family: SVD truncation always (the paper's pruning), another family only
  where it wins (helps somewhere, or is some seed's choice among every edit)."""
  vs = [(k, v) for k in condition_keys(table, regime) if (v := verdict_of(table, k, fam)) is not None]
  mism = [(k, v) for k, v in vs if mismatched(k, full_steps)]
  if not mism or (fam != "svd" and not _wins(table, mism, fam)):
    return None
  cid = regime if fam == "svd" else f"{regime}_{fam}"
  verdict = _verdict(vs, mism, fam)
  calls = "; ".join(f"{describe(k)}, L={k['L']}: {call_text(v)}" for k, v in vs)
  known = [(k, v) for k, v in mism if not v["missing"]]
  if not known:
    return Claim(cid, verdict, "not recorded", "n/a", len(mism[0][1]["frac"]), calls)
  k, v = max(known, key=lambda kv: kv[1]["center"])
  lo, hi = 100 * v["lo"], 100 * v["hi"]
  return Claim(cid, verdict, f"{text.num(100 * v['center'], 2)} % of the headroom ({describe(k)}, "
               f"L={k['L']}, the largest)", f"{text.ci(lo, hi, 2)} %", len(v["frac"]), calls)


def claims(table: engine.Table, meta: dict) -> list:
  """Per regime: does the SVD truncation chosen per seed lower the error (95 % t-interval over seeds
  above 0) where training and test differ? Then, per regime, each other family that wins there, as its
  own claim (id regime_family). The in-distribution controls (mixed lengths, matched noise, full
  training) and every condition's call (helps / hurts / null / inconclusive) are in the detail."""
  full = meta["settings"]["train"]["steps"]
  out = [_claim(table, r, full, "svd") for r in REGIMES]
  out += [_claim(table, r, full, f) for r in REGIMES for f in FAMILIES if f != "svd"]
  return [c for c in out if c is not None]
