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
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import edits, precision, protocol, prune, stats
from lintheory.core.model import Params
from lintheory.run import io, profiles
from lintheory.studies import engine, figures, text

NAME = "paper_protocol"
KEYS = ("model", "shots", "edit", "layers", "V", "val_noise")
EVAL_KEY = 27_182  # held-out tasks, disjoint from the training streams
EDIT_KEY = 16_180  # the random edits; each candidate folds in its own hash
TAIL_KEY = 31_415  # the tail check's tasks, disjoint from the protocol's
GROUPS = protocol.GROUPS  # layer sets searched: {0, 1, L−2, L−1}, {L−2, L−1}, {0, 1}
TASK_CHUNK = 2000  # tasks evaluated together (the candidates' errors on them are held in memory)
SESOI = 0.05  # smallest effect of interest: 5 % of the headroom (unpruned − Bayes error)
RARE_SHARE_MAX = 0.10  # a sampled model's protocol means stand only if tasks rarer than 1 in n_tasks carry
#                        less than this share of its error on the tail check's tasks (docs/theory.md §11)


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


# --- the study -------------------------------------------------------------------------------


def run(s: Settings, ctx: engine.Context) -> None:
  for arch in s.archs:
    try:
      tr = engine.trained(s, ctx, d=s.d, n_context=s.n_context, layers=s.layers, attention=arch.attention,
                          mlp=arch.mlp)
    except RuntimeError as e:  # a diverged run is recorded, not hidden
      ctx.fail("train", str(e), model=arch.name)
      continue
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
  L, t0 = tr.model.n_layers, time.perf_counter()
  # Exact errors (linear attention) in float64; sampled ones in float32, twice as fast on a CPU.
  dtype = jnp.float64 if exact else jnp.float32
  with precision.x64():
    params_S = {n: jnp.asarray(v, dtype) for n, v in tr.params.items()}
    cands = protocol.candidates(params_S, s.kinds, s.modules, s.rates)
    params_CS = protocol.edited_params(jax.random.key(EDIT_KEY), params_S, cands, s.rates, s.niter, s.cumulative)
    groups = protocol.layer_groups(cands, params_CS, L) if exact else None  # exact: start from the edited layer
    chunk = min(arch.n_tasks, TASK_CHUNK)
    parts = {shots: [] for shots in arch.shots}
    for i in range(-(-arch.n_tasks // chunk)):  # the tasks in chunks; chunk i from fold_in(EVAL_KEY, i)
      data = protocol.sample_data(jax.random.fold_in(jax.random.key(EVAL_KEY), i), tr.task, chunk, max(s.Vs),
                                  arch.test_queries, dtype)
      for shots in arch.shots:
        e = protocol.chunk_errors(params_S, params_CS, groups, data, tr.task, tr.model, shots, s.Vs, s.val_noise,
                                  s.candidate_chunk, min(chunk, arch.n_tasks - i * chunk))
        parts[shots].append(protocol.chunk_summary(e, cands, s.kinds, s.Vs, s.val_noise, L))
      done = min(arch.n_tasks, (i + 1) * chunk)
      if (i + 1) % 10 == 0 or done == arch.n_tasks:
        io.progress(f"  {arch.name}: {done:,}/{arch.n_tasks:,} tasks, {time.perf_counter() - t0:.0f} s",
                    final=done == arch.n_tasks)
    if not exact:
      tail_check(ctx, tr, params_S, s, arch, dtype)
    pooled = {shots: protocol.pool(parts[shots]) for shots in arch.shots}
    for shots, p in pooled.items():
      _record(ctx, p, cands, tr.seeds, s, arch.name, shots, L)
      ctx.log(f"{arch.name} N={shots}: {len(cands)} candidates × {len(tr.seeds)} seeds × {arch.n_tasks} tasks; "
              f"unpruned mean {p['base'].mean():.4g}, median {np.median(p['base']):.4g}; "
              f"{time.perf_counter() - t0:.1f} s since the models were loaded")
  return {shots: {"candidates": cands, **{k: p[k] for k in ("first", "second", "n_first", "n_second")}}
          for shots, p in pooled.items()}


def tail_check(ctx, tr, params_S: Params, s: "Settings", arch: Arch, dtype) -> None:
  """A model whose errors are sampled is searched on few tasks; its unpruned tail is seen here, on
  s.tail_tasks fresh tasks with s.tail_queries queries each (an unbiased per-task estimate of the
  error ÷ d), with the share of the error that tasks rarer than 1 in arch.n_tasks carry
  (stats.rare_share) and the share query noise alone would give (stats.chi2_rare_share)."""
  name, n = arch.name, s.tail_tasks
  err = protocol.sampled_errors(jax.random.key(TAIL_KEY), params_S, tr.task, tr.model, n, s.tail_queries, dtype)
  for k, seed in enumerate(tr.seeds):
    ctx.add_many(stats.summary(err[k]), prefix="tail_", seed=seed, n_tasks=n, model=name, shots=s.n_context)
    ctx.add("tail_rare_share", stats.rare_share(err[k], arch.n_tasks), seed=seed, n_tasks=n, model=name,
            shots=s.n_context)
  ctx.add("tail_noise_share", stats.chi2_rare_share(s.tail_queries, arch.n_tasks), n_tasks=n, model=name,
          shots=s.n_context)


def _record(ctx, p: dict, cands, seeds, s: Settings, name: str, shots: int, L: int) -> None:
  """The rows of one model and prompt size from its pooled chunks (core.protocol.pool)."""
  base, bayes = p["base"], p["bayes"]
  ctx.add("bayes_mean", bayes.mean(), n_tasks=bayes.size, model=name, shots=shots)
  ctx.add("n_candidates", len(cands), model=name, shots=shots)
  for kind in s.kinds:
    ctx.add("n_candidates", len(protocol.family(cands, kind, "all", L)) - 1, model=name, shots=shots, edit=kind)
  for (kind, group, V, sigma), chosen in p["chosen"].items():
    keys = dict(model=name, shots=shots, edit=kind, layers=group, V=V, val_noise=sigma)
    for k, seed in enumerate(seeds):
      ctx.add_many(protocol.gain_summary(base[k], chosen[k], bayes, s.unchanged_rel), seed=seed, n_tasks=base.shape[1],
                   **keys)
    if group == "all" and len(seeds) >= 2:  # over seeds: the hierarchical bootstrap CI of the mean gain (costly)
      pg = stats.paired_gain(base, chosen)
      ctx.add_many({"gain_ci_lo": pg["ci_lo"], "gain_ci_hi": pg["ci_hi"]}, n_tasks=base.size, **keys)
  for k in ("bayes_with_val", "ridge_with_val"):  # the V validation examples used as demonstrations
    for iv, V in enumerate(s.Vs):
      for iz, sigma in enumerate(s.val_noise):
        ctx.add(f"{k}_mean", p[k][:, iv, iz].mean(), n_tasks=p[k].shape[0], model=name, shots=shots, V=V,
                val_noise=sigma)
  for k, seed in enumerate(seeds if p["rand0"] is not None else ()):
    ctx.add("rand_xi0_max_rel_change", p["rand0"][k], seed=seed, n_tasks=base.shape[1], model=name, shots=shots,
            edit="svd_rand")


# --- statistics over seeds -------------------------------------------------------------------


def _equivalent(diff_S: np.ndarray, margin: float) -> bool:
  """TOST over seeds: the mean of diff_S lies within ±margin (stats.equivalence). A seed at ±inf is
  outside any margin, so such a set is never equivalent."""
  d = np.asarray(diff_S, np.float64)
  return bool(np.all(np.isfinite(d)) and stats.equivalence(d, margin)["equivalent"])


def _over_seeds(v) -> tuple[float, float, float]:
  """(centre, lo, hi) of stats.seed_interval over every seed: the mean and its t-interval, or, where a
  seed is ±inf, the median and its order-statistic interval (docs/theory.md §14); NaN below 2 seeds."""
  iv = text.over_seeds(v)
  return (math.nan,) * 3 if iv is None else (iv.center, iv.lo, iv.hi)


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
  with its centre and interval over every seed (_over_seeds)."""
  rel = {k: _per_seed(table, "rel_gain_mean", edit=k, layers=layers, **reg)
         for k in table.unique("edit", measure="rel_gain_mean", layers=layers, **reg)}
  svd = rel["svd"]
  centre, lo, hi = _over_seeds(svd)
  out = {"svd": svd, "svd_center": centre, "svd_ci": (lo, hi), "rel": rel, "vs": {}}
  for ctl in edits.CONTROLS:
    if ctl in rel:
      diff = svd - rel[ctl]
      centre, lo, hi = _over_seeds(diff)
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


def summary(table: engine.Table) -> str:
  """In the regime where SVD's own gain is largest: its gain over the strongest null control, and
  Algorithm 1's gain over the unpruned model, in % of the headroom with 95 % CIs over seeds."""
  regs = regimes(table)
  if not regs:
    return "no regime whose means stand"
  cs = {_label(r): compare(table, r) for r in regs}
  best = most_favourable(cs)
  reg, c = next(r for r in regs if _label(r) == best), cs[best]
  ctl = strongest_control(c)
  return (f"{best}: SVD − {ctl} {text.num(100 * c['vs'][ctl]['center'], 2)} % "
          f"{text.ci(*(100 * x for x in c['vs'][ctl]['ci']), 2)} %, chosen vs unpruned "
          f"{text.num(100 * c['svd_center'], 2)} % {text.ci(*(100 * x for x in c['svd_ci']), 2)} % of the headroom "
          f"({c['svd'].size} seeds, {table.n_tasks('gain_mean', model=reg['model']):,} tasks per seed)")


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


# --- figures and report ----------------------------------------------------------------------

COLORS = {"svd": "C3", "svd_rand": "C1", "null_dirs": "C0", "null_gauss": "C2", "null_shrink": "C4"}
LABELS = {"svd": "SVD (exact)", "svd_rand": "SVD (randomized, q = r)", "null_dirs": "null: random directions",
          "null_gauss": "null: Gaussian ΔW", "null_shrink": "null: shrink (1 − α)W"}


def _panels(table, tailed: bool = True):
  return [(m, n) for m in table.unique("model", measure="gain_mean") if tailed or means_stand(table, m)
          for n in table.unique("shots", measure="gain_mean", model=m)]


def plot(table: engine.Table, meta: dict, out) -> list:
  plt = figures.pyplot()
  panels = _panels(table, tailed=False)  # the gain figure shows means: only where they stand
  kinds = table.unique("edit", measure="rel_gain_mean")
  paths = []
  fig, axes = plt.subplots(len(GROUPS), len(panels), figsize=(max(3.4 * len(panels), 8.0), 2.5 * len(GROUPS)),
                           squeeze=False, sharey=True, layout="constrained")
  for col, (model, shots) in enumerate(panels):
    Vs = table.unique("V", measure="gain_mean", model=model, shots=shots)
    zs = table.unique("val_noise", measure="gain_mean", model=model, shots=shots)
    for row, group in enumerate(GROUPS):
      ax = axes[row, col]
      for iv, V in enumerate(Vs):
        for ik, kind in enumerate(kinds):
          for iz, z in enumerate(zs):
            x = iv * (len(kinds) + 1) + ik + (iz - (len(zs) - 1) / 2) * 0.35
            v = 100 * table.values("rel_gain_mean", model=model, shots=shots, V=V, val_noise=z, edit=kind,
                                   layers=group)
            ax.plot(x + np.zeros(v.size), v, "o" if iz == len(zs) - 1 else "^", ms=3, alpha=0.8,
                    color=COLORS.get(kind, "k"), mfc="none" if iz < len(zs) - 1 else COLORS.get(kind, "k"),
                    label=(LABELS.get(kind, kind) if iz == len(zs) - 1 else None) if (iv, row, col) == (0, 0, 0)
                    else None)
      ax.axhline(0, color="k", lw=0.8)
      ax.set_yscale("symlog", linthresh=0.1, linscale=0.5)
      ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
      ax.set_xticks([iv * (len(kinds) + 1) + (len(kinds) - 1) / 2 for iv in range(len(Vs))])
      ax.set_xticklabels([f"V = {V}" for V in Vs])
      ax.set_title(f"{model}, N = {shots}, layers: {_GROUP_TEXT[group]}", fontsize=7)
      if col == 0:
        ax.set_ylabel("mean gain per seed\n(% of headroom, symlog)")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  noise = ", ".join(f"{text.num(z, 2)}" for z in table.unique("val_noise", measure="gain_mean"))
  fig.legend(handles, labels, loc="outside lower center", ncol=len(kinds) if len(panels) > 2 else 3, fontsize=7,
             title=f"each dot one seed; filled: validation label noise {noise.split(', ')[-1]}, "
                   f"hollow triangles: {noise.split(', ')[0]}", title_fontsize=7)
  paths += figures.save(fig, out, "paper_protocol_gain")

  panels = _panels(table)  # fractions of tasks need no tail: every model
  fig, axes = plt.subplots(1, len(panels), figsize=(max(3.4 * len(panels), 8.0), 2.9), squeeze=False, sharey=True,
                           layout="constrained")
  z = max(table.unique("val_noise", measure="gain_mean"))
  for ax, (model, shots) in zip(axes[0], panels):
    Vs = table.unique("V", measure="gain_mean", model=model, shots=shots)
    for iv, V in enumerate(Vs):
      for ik, kind in enumerate(kinds):
        x = iv * (len(kinds) + 1) + ik
        f = {m: table.values(f"frac_{m}", model=model, shots=shots, V=V, val_noise=z, edit=kind, layers="all").mean()
             for m in ("improved", "unchanged", "worsened")}
        ax.bar(x, f["improved"], color=COLORS.get(kind, "k"), width=0.85)
        ax.bar(x, f["unchanged"], bottom=f["improved"], color="0.85", width=0.85)
        ax.bar(x, f["worsened"], bottom=f["improved"] + f["unchanged"], color=COLORS.get(kind, "k"), alpha=0.35,
               width=0.85, hatch="//")
    ax.set_xticks([iv * (len(kinds) + 1) + (len(kinds) - 1) / 2 for iv in range(len(Vs))])
    ax.set_xticklabels([f"V = {V}" for V in Vs])
    ax.set_ylim(0, 1)
    ax.set_title(f"{model}, N = {shots}, σ_val = {text.num(z, 2)}, layers 0, 1, L−2, L−1", fontsize=7)
  axes[0, 0].set_ylabel("fraction of tasks (mean over seeds)")
  handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS.get(k, "k")) for k in kinds]
  handles += [plt.Rectangle((0, 0), 1, 1, color="0.85"), plt.Rectangle((0, 0), 1, 1, color="0.5", alpha=0.35, hatch="//")]
  fig.legend(handles, [LABELS.get(k, k) + ": improved" for k in kinds] + ["unchanged", "worsened (hatched)"],
             loc="outside lower center", ncol=4 if len(panels) > 2 else 3, fontsize=7)
  paths += figures.save(fig, out, "paper_protocol_fraction")
  return paths


_GROUP_TEXT = {"all": "0, 1, L−2, L−1", "deep": "L−2, L−1 (deep)", "shallow": "0, 1 (shallow)"}


def pct_interval(v) -> str:
  """Per-seed fractions → 'centre % [lo, hi] %' over every seed (_over_seeds: the mean and its t-interval, or the
  median and its order-statistic interval where a seed is ±inf)."""
  centre, lo, hi = _over_seeds(v)
  return f"{text.num(100 * centre, 2)} % {text.ci(100 * lo, 100 * hi, 2)}"


def _pct(v) -> str:
  return f"{text.num(100 * float(np.mean(v)), 2)} %"


def regime_table(table: engine.Table) -> tuple[list[str], list[list[str]]]:
  """The study's table: one row per regime (model, N, V, σ_val), every one the verdicts count and the
  models they leave out, with each regime's own decision under both claims' rules."""
  kinds = table.unique("edit", measure="rel_gain_mean")
  head = ["model", "N", "V", "σ_val", "SVD gain [CI over seeds]", *(LABELS[k] for k in kinds if k != "svd"),
          "SVD beats every null control", "Algorithm 1 gains", "SVD: improved / unchanged / worsened",
          "SVD deep vs shallow", "SVD per-task gain ÷ unpruned error, median",
          "the V labels as demonstrations: Bayes / ridge with N + V, % of headroom"]
  rows = []
  for reg in regimes(table, tailed=True):
    c = compare(table, reg)
    f = [table.values(f"frac_{m}", edit="svd", layers="all", **reg).mean() for m in ("improved", "unchanged", "worsened")]
    deep, shallow = (table.values("rel_gain_mean", edit="svd", layers=g, **reg) for g in ("deep", "shallow"))
    stand = means_stand(table, reg["model"])
    unseen = "tail not seen"
    decided = [rule(c) if stand else "not counted" for rule in VERDICTS.values()]
    rows.append([reg["model"], str(reg["shots"]), str(reg["V"]), text.num(reg["val_noise"], 2),
                 pct_interval(c["svd"]) if stand else unseen,
                 *(_pct(c["rel"][k]) if stand else unseen for k in kinds if k != "svd"), *decided,
                 " / ".join(f"{100 * x:.0f} %" for x in f), f"{_pct(deep)} vs {_pct(shallow)}" if stand else unseen,
                 _pct(np.median(table.values("task_rel_gain_median", edit="svd", layers="all", **reg))),
                 " / ".join(_pct(np.median(label_value(table, reg, k))) for k in ("bayes", "ridge"))
                 if label_value(table, reg).size else "not measured"])
  return head, rows


def report(table: engine.Table, meta: dict) -> str:
  s = meta["settings"]
  head, rows = regime_table(table)
  archs = ", ".join(f"{a['name']} ({a['n_tasks']} tasks per seed, "
                    f"{'exact errors' if a['test_queries'] == 0 else str(a['test_queries']) + ' test queries per task'})"
                    for a in s["archs"])
  n_cand = {m: int(table.value("n_candidates", model=m, shots=table.unique("shots", model=m, measure="n_candidates")[0],
                               edit="svd", seed=None)) for m in table.unique("model", measure="n_candidates")}
  rand0 = table.values("rand_xi0_max_rel_change")
  tails, noise = [], table.values("tail_noise_share")
  for m in table.unique("model", measure="tail_mean"):
    t = {q: table.values(f"tail_{q}", model=m) for q in ("mean", "median", "p9999", "max")}
    few = table.values("unpruned_mean", model=m, shots=s["n_context"], edit="svd", layers="all", V=s["Vs"][0],
                       val_noise=s["val_noise"][0])
    share = table.values("tail_rare_share", model=m)
    tails.append(f"{m}: mean {text.num(np.median(t['mean']), 3)} (median over seeds; seeds "
                 f"{text.num(t['mean'].min(), 3)} to {text.num(t['mean'].max(), 3)}), median {text.num(np.median(t['median']), 3)}, "
                 f"99.99th percentile {text.num(np.median(t['p9999']), 3)}, max {text.num(t['max'].max(), 3)}"
                 + (f"; on the protocol's tasks its mean was {text.num(np.median(few), 3)}" if len(few) else "")
                 + f"; tasks rarer than 1 in {table.n_tasks('gain_mean', model=m)} carry {100 * share.min():.0f} to "
                 f"{100 * share.max():.0f} % of its error")
  n_tail = table.n_tasks("tail_mean") if tails else 0
  return (f"The paper's protocol per task (docs/theory.md §8, §12), profile `{meta['profile']}`, "
          f"{len(meta['seeds'])} seeds, L = {s['layers']}, d = {s['d']}, trained at N = {s['n_context']}. Models: "
          f"{archs}. Each task has one fixed prompt; the edit is chosen on its first V validation queries "
          f"(V ∈ {tuple(s['Vs'])}, label noise σ_val ∈ {tuple(s['val_noise'])}), ties to the smaller ξ; "
          f"candidates: the paper's rates (distinct kept ranks) × modules {tuple(s['modules'])} (mlp where the "
          f"model has one) × layers "
          f"{{0, 1, L−2, L−1}} = {', '.join(f'{m}: {n}' for m, n in n_cand.items())} SVD edits per family "
          f"plus the unpruned model; every null control searches as many edits of the same ‖ΔW‖_F. "
          f"Cumulative rate search: {'on' if s['cumulative'] else 'off'}. Gains are error_unpruned − "
          f"error_chosen per task (positive: the edit helped), in % of the headroom (unpruned − Bayes error), "
          f"the mean over tasks per seed, then the mean over seeds.\n\n"
          f"One row per regime (model, N, V, σ_val): every regime behind the verdicts' counts, each with its own "
          f"decision under the verdict table's two rules (SVD against every null control; Algorithm 1's gain "
          f"against the unpruned model), and the models the verdicts leave out ('not counted'). Layers "
          f"{{0, 1, L−2, L−1}} (the deep vs shallow column searches "
          f"only layers L−2, L−1 or only 0, 1); a task is unchanged when |gain| ≤ {s['unchanged_rel']:g} × its "
          f"unpruned error. Gains in % of headroom are means over tasks, so a few tasks on which the "
          f"unpruned model blows up can carry them; the last column (median over tasks, then over seeds, "
          f"of each task's gain ÷ its unpruned error) cannot be carried that way. Algorithm 1 spends V labelled "
          f"examples per task; the table's last column says what the same examples are worth used as "
          f"demonstrations instead: the share of the headroom closed by the Bayes predictor and by ridge on the "
          f"prompt plus the V examples (exact errors, docs/theory.md §8; median over seeds). The models are "
          f"trained at N = {s['n_context']} only, so the model itself is not given N + V examples.\n\n"
          + text.table(head, rows) +
          (f"\n\nTails of the models whose errors are sampled: on {n_tail:,} fresh tasks per seed (each task's "
           f"error the mean over {s['tail_queries']} queries, ÷ d), the unpruned " + "; ".join(tails) +
           f". A model's protocol means stand only where that share stays below {RARE_SHARE_MAX:.0%} in every "
           f"seed (query noise alone would give {100 * noise.max():.1f} %, docs/theory.md §11); elsewhere the "
           f"table says 'tail not seen', the gain figure leaves the "
           f"model out and the verdicts do not count it"
           + (f": {_left_out(table)}" if _left_out(table) else "") + "." if tails else "") +
          (f"\n\nThe randomized SVD at ξ = 0 changes a task's error by at most {text.num(rand0.max(), 2)} "
           f"(relative, float64): a no-op only to round-off." if rand0.size else "") +
          "\n\n![gain](../figures/paper_protocol_gain.png)\n\n*Per-seed mean gain (% of headroom, symlog) of "
          "the per-task choice, for SVD and its null controls; rows search all four layers, the deep two, the "
          "shallow two. Look at whether the red SVD dots sit above the null controls' dots: if they sit "
          "together, the gain comes from choosing among many edited models per task, not from SVD. Where the "
          "unpruned model blows up on a few tasks (deep linear attention given fewer shots than it was trained "
          "on), every family recovers nearly 100 % of the headroom: read the per-task median in the table.*\n\n"
          "![fraction](../figures/paper_protocol_fraction.png)\n\n*Fractions of tasks improved (solid), "
          "unchanged (grey) and worsened (hatched) by the chosen edit, per family and V; compare the SVD bar "
          "with the controls beside it.*\n")
