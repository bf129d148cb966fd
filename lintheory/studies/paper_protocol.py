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
import time

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import edits, precision, protocol, prune, stats
from lintheory.core.model import Params
from lintheory.run import io, profiles
from lintheory.studies import engine, text

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
    tr = ctx.train(s, {"model": arch.name}, d=s.d, n_context=s.n_context, layers=s.layers,
                   attention=arch.attention, mlp=arch.mlp)
    if tr is not None:
      evaluate_trained(tr, s, arch, ctx)


def evaluate_trained(tr: profiles.Trained, s: Settings, arch: Arch, ctx: engine.Context) -> dict:
  """The protocol on trained models: every candidate of every seed evaluated on arch.n_tasks tasks,
  each family's per-task choice recorded as rows keyed by model=arch.name (the rows claims() and
  compare() read). The positive control runs its planted models through this same function.
  Returns, per shots, the candidates and their summed test errors on the first and the second half
  of every chunk's tasks ("first", "second": [C, S], with "n_first", "n_second"), for a
  population-level choice (one edit for all tasks) made on one half and scored on the other. The
  models' training diagnostic is the caller's to record (Context.train)."""
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
  with its centre and interval over every seed (text.centre_interval)."""
  rel = {k: _per_seed(table, "rel_gain_mean", edit=k, layers=layers, **reg)
         for k in table.unique("edit", measure="rel_gain_mean", layers=layers, **reg)}
  svd = rel["svd"]
  centre, lo, hi = text.centre_interval(svd)
  out = {"svd": svd, "svd_center": centre, "svd_ci": (lo, hi), "rel": rel, "vs": {}}
  for ctl in edits.CONTROLS:
    if ctl in rel:
      diff = svd - rel[ctl]
      centre, lo, hi = text.centre_interval(diff)
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
