"""The study engine: every study gets the same flags, timing, failure record and atomic writes.

A study is a module of lintheory.studies with
  NAME: str
  KEYS: tuple[str, ...]                    the table's key columns, in order (Table, Context)
  Settings: a frozen dataclass (a comment per field), and PROFILES: {profile: Settings} for some of
    PROFILE_NAMES ("tiny" | "default" | "long" | "full"; tiny and default always, deep_recipes has no long)
  run(settings, ctx: Context) -> None      adds rows to ctx (never draws)
  claims(table, meta) -> list[verdicts.Claim]   optional: its verdicts on the paper's claims
and a view, the module lintheory.studies.views.NAME (view_module), which only reads what run wrote:
  plot(table, meta, figures: Path) -> list[Path]   reads only the table (never trains)
  report(table, meta) -> str                 Markdown; every number comes from the table
  summary(table) -> str                      one line: the main number with its CI and seed/task counts

Results are one tidy table per study, RESULTS/<NAME>.csv, one row per setting × seed × measure:
  the study's key columns, then seed ("" for a row that is not per seed), measure, value, n_tasks
and RESULTS/<NAME>.json with the profile, settings, provenance, seconds and the failure record.
RESULTS is results/ for the default profile (the committed results) and results/PROFILE/ otherwise
(results_dir); a run never overwrites another profile's file. Every cache lives under one root
(--cache-dir, default runs/): ROOT/cache and ROOT/jax_cache (run.cache.dirs).

Freshness (studies/freshness.py): RESULTS/<NAME>.json's "code" records what produced the rows, and a
results file whose code differs from the code here is stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Iterable

import numpy as np

from lintheory.core import precision
from lintheory.run import adequacy
from lintheory.run import cache as run_cache
from lintheory.run import compile_cache, io, provenance, tables
from lintheory.run import flags as run_flags
from lintheory.run import profiles as run_profiles
from lintheory.studies import freshness

FIXED = ("seed", "measure", "value", "n_tasks")


# --- the table ------------------------------------------------------------------------------


class Table:
  """A study's rows (dicts) with the few selections plots and reports need."""

  def __init__(self, rows: list[dict], keys: tuple[str, ...]):
    self.rows, self.keys = rows, keys

  def where(self, **match) -> "Table":
    return Table([r for r in self.rows if all(r.get(k) == v for k, v in match.items())], self.keys)

  def values(self, measure: str, **match) -> np.ndarray:
    """Every matching value of one measure, in row order, as float64."""
    return np.array([r["value"] for r in self.where(measure=measure, **match).rows], np.float64)

  def value(self, measure: str, **match) -> float:
    v = self.values(measure, **match)
    if v.size != 1:
      raise KeyError(f"{v.size} rows match {measure!r} {match}, expected one")
    return float(v[0])

  def n_tasks(self, measure: str, **match) -> int:
    rows = self.where(measure=measure, **match).rows
    return int(rows[0]["n_tasks"]) if rows and rows[0]["n_tasks"] is not None else 0

  def unique(self, column: str, **match) -> list:
    seen = []
    for r in self.where(**match).rows:
      if r.get(column) not in seen:
        seen.append(r.get(column))
    return seen

  def seeds(self, **match) -> list[int]:
    return [s for s in self.unique("seed", **match) if s is not None]

  def to_csv(self) -> str:
    return tables.to_csv(self.keys + FIXED, self.rows)

  @classmethod
  def from_csv(cls, text: str, keys: tuple[str, ...]) -> "Table":
    cols, rows = tables.from_csv(text)
    if tuple(cols) != keys + FIXED:
      raise ValueError(f"columns {cols} differ from the study's {list(keys + FIXED)}")
    for r in rows:
      r["value"] = float(r["value"]) if r["value"] is not None else float("nan")
    return cls(rows, keys)


def training(table: Table, **match) -> dict[int, str | None]:
  """Per seed with a training diagnostic among the matching rows (Context.add_training): None where its fit
  converged, else why not (run.adequacy.reason on the recorded numbers). A table without the diagnostic (an
  older run) gives {}: nothing is known against any seed."""
  out = {}
  for seed in table.seeds(measure="converged", **match):
    one = lambda m: table.values(m, seed=seed, **match)
    gap, exact = one("seed_gap"), one("grad_exact")
    why = adequacy.reason(float(one("train_rel_change")[0]),
                          float(one("grad_norm")[0]) if exact.size and exact[0] else None,
                          float(gap[0]) if gap.size else None)
    out[seed] = None if one("converged")[0] else why or "did not converge"
  return out


def converged_note(reasons: dict[int, str | None], seeds) -> str:
  """'4/5 seeds converged; seed 3 did not: <reason>' for the seeds a claim read, or '' when all converged."""
  bad = {s: r for s, r in reasons.items() if s in seeds and r is not None}
  if not bad:
    return ""
  return (f"{len(seeds) - len(bad)}/{len(seeds)} seeds converged; "
          + "; ".join(f"seed {s} did not: {r}" for s, r in bad.items()))


# --- what a study's run() writes into -------------------------------------------------------


class Context:
  """Collects a study's rows and failures; `log` prints a progress line on stderr."""

  def __init__(self, keys: tuple[str, ...], cache_dir: str):
    self.keys, self.cache_dir = keys, cache_dir
    self.rows: list[dict] = []
    self.failures: list[dict] = []

  def add(self, measure: str, value, *, seed: int | None = None, n_tasks: int | None = None, **keys) -> None:
    """One row. NaN is refused: a failed measurement goes to `fail`, never into the table."""
    unknown = set(keys) - set(self.keys)
    if unknown:
      raise ValueError(f"measure {measure!r}: unknown key columns {sorted(unknown)}; declared {self.keys}")
    v = float(value)
    if math.isnan(v):
      raise ValueError(f"measure {measure!r} at {keys} seed {seed} is NaN; record a failure instead")
    self.rows.append({**{k: keys.get(k) for k in self.keys}, "seed": seed, "measure": measure, "value": v,
                      "n_tasks": n_tasks})

  def add_many(self, values: dict[str, float], *, seed=None, n_tasks=None, prefix: str = "", **keys) -> None:
    for name, v in values.items():
      self.add(prefix + name, v, seed=seed, n_tasks=n_tasks, **keys)

  def add_training(self, tr: run_profiles.Trained, **keys) -> None:
    """Per seed, the training diagnostic of run.adequacy (TRAINING measures): every model of every study
    records whether its fit converged, beside what the study measures on it (read back by `training`)."""
    for seed, a in zip(tr.seeds, tr.adequacy):
      row = {"train_tail_loss": a.train_loss, "train_rel_change": a.train_rel_change, "grad_norm": a.grad_norm,
             "grad_exact": a.exact_grad, "restarts": a.restarts, "converged": a.converged}
      if a.seed_gap is not None:
        row["seed_gap"] = a.seed_gap
      self.add_many(row, seed=seed, **keys)
      if not a.converged:
        self.log(f"{keys} seed {seed}: training did not converge ({a.reason})")

  def train(self, settings, keys: dict, **model) -> run_profiles.Trained | None:
    """The study's trained models (`trained`) with their diagnostic recorded under keys (add_training);
    None where training diverged, which is recorded as a failure of the stage "train", never hidden."""
    try:
      tr = trained(settings, self, **model)
    except RuntimeError as e:
      self.fail("train", str(e), **keys)
      return None
    self.add_training(tr, **keys)
    return tr

  def fail(self, stage: str, reason: str, *, seed: int | None = None, **keys) -> None:
    self.failures.append({"stage": stage, "reason": reason, "seed": seed, **keys})
    self.log(f"FAILED {stage} {keys} seed={seed}: {reason}")

  @staticmethod
  def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the runner -----------------------------------------------------------------------------

# The profiles a study may have: tiny (tests), default and long (2 CPU cores), full (GPU). Every study has
# tiny and default; deep_recipes has no long (--profile names only a study's own: parse_flags).
PROFILE_NAMES = ("tiny", "default", "long", "full")


SMOKE_PROFILES = ("tiny",)  # too few training steps and seeds to decide anything: the report says so
RESULTS_ROOT, FIGURES_ROOT = "results", "figures"


def results_dir(profile: str, root=RESULTS_ROOT) -> Path:
  """Where a profile's results files go: root itself for `default` (the committed results), root/PROFILE
  otherwise, so that no other profile's run lands on the committed files."""
  return Path(root) if profile == "default" else Path(root) / profile


def results_root(results, profile: str) -> Path:
  """The root a profile's results directory hangs from (results_dir's inverse); its profiles/ holds every
  profile's time record and its device_check.json the device check."""
  results = Path(results)
  return results.parent if profile != "default" and results.name == profile else results


def figures_dir(profile: str, root=FIGURES_ROOT) -> Path:
  """Where a profile's figures go (as results_dir)."""
  return results_dir(profile, root)


def report_path(profile: str) -> Path:
  """docs/report.md for `default`, docs/report-PROFILE.md otherwise."""
  return Path("docs/report.md" if profile == "default" else f"docs/report-{profile}.md")


@dataclasses.dataclass(frozen=True)
class Flags:
  profile: str = "default"  # the study's PROFILES: tiny (tests), default and long (2 CPU cores), full (GPU)
  seeds: int = 0  # train seeds 0..S-1 instead of the profile's (0 keeps the profile's)
  results: str = ""  # directory for <study>.csv and <study>.json (default: results/ for the default profile, results/PROFILE/ for another)
  cache_dir: str = run_cache.ROOT  # root of every cache: trained models and fitted references in ROOT/cache, XLA programs in ROOT/jax_cache
  compile_cache: bool = True  # keep compiled XLA programs in CACHE_DIR/jax_cache across processes

  @property
  def results_path(self) -> Path:
    return Path(self.results) if self.results else results_dir(self.profile)


def study_module(name: str):
  from lintheory import studies
  if name not in studies.STUDIES:
    raise ValueError(f"unknown study {name!r}; studies: {', '.join(studies.STUDIES)}")
  return importlib.import_module(f"lintheory.studies.{name}")


def view_module(name: str):
  """The study's view (lintheory.studies.views): its plot, report and summary."""
  study_module(name)  # an unknown name is refused here
  return importlib.import_module(f"lintheory.studies.views.{name}")


def with_seeds(settings, n: int):
  """The settings with the training profile's seeds replaced by 0..n-1 (n = 0: unchanged)."""
  if n == 0:
    return settings
  return dataclasses.replace(settings, train=dataclasses.replace(settings.train, seeds=tuple(range(n))))


def settings_for(study, flags: Flags):
  if flags.profile not in study.PROFILES:
    raise ValueError(f"--profile must be one of {sorted(study.PROFILES)}, got {flags.profile!r}")
  return with_seeds(study.PROFILES[flags.profile], flags.seeds)


def run_study(name: str, flags: Flags) -> Path:
  """Run one study and write results/<name>.csv and .json atomically; returns the CSV path."""
  study = study_module(name)
  settings = settings_for(study, flags)
  out = flags.results_path
  refuse_other_profile(out / f"{name}.json", flags.profile)
  ctx = Context(study.KEYS, str(run_cache.dirs(flags.cache_dir)[0]))
  prov = provenance.collect()  # the code that runs is the code at the start
  code = freshness.code_of(name)
  t0 = time.perf_counter()
  with precision.x64():  # analysis in float64; training and sweeps scope the precision of their weights
    study.run(settings, ctx)
  seconds = time.perf_counter() - t0
  table = Table(ctx.rows, study.KEYS)
  meta = {"study": name, "profile": flags.profile, "settings": dataclasses.asdict(settings),
          "seeds": list(settings.train.seeds), "seconds": round(seconds, 1), "failures": ctx.failures,
          "n_rows": len(ctx.rows), "code": code, "provenance": prov}
  end = provenance.git_state()
  if end != prov["git"]:  # the tree changed while the study ran: say so rather than pick one
    meta["git_at_end"] = end
  prov["load_avg"] = provenance.load_avg()  # the load the study ran under, not the load before it
  io.atomic_write_bytes(out / f"{name}.csv", table.to_csv().encode())
  io.write_json(out / f"{name}.json", meta)
  ctx.log(f"{name}: {len(ctx.rows)} rows, {len(ctx.failures)} failures, {seconds:.1f} s → {out / name}.csv")
  smoke = f" (profile {flags.profile}: a smoke test, it decides nothing)" if flags.profile in SMOKE_PROFILES else ""
  ctx.log(f"{name}: {summary_line(view_module(name), table)}{smoke}")
  return out / f"{name}.csv"


def summary_line(view, table: Table) -> str:
  """The study's main number (its view's summary(table)); a table it cannot summarise says why, in the same line."""
  try:
    return view.summary(table)
  except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as e:  # the results are written already
    return f"no summary ({type(e).__name__}: {e})"


def refuse_other_profile(meta_path: Path, profile: str) -> None:
  """A results file of another profile is never overwritten (the committed default results above all)."""
  if not meta_path.exists():
    return
  try:
    held = io.read_json(meta_path).get("profile")
  except (OSError, ValueError, AttributeError) as e:
    raise ValueError(f"{meta_path} is not a study's results file ({e}); move it or pass another --results") from None
  if held != profile:
    raise ValueError(f"{meta_path} holds profile {held!r}'s results, not --profile {profile!r}'s; "
                     f"pass --results {results_dir(profile)} (the default for {profile!r}) or another directory")


def load(results: str | Path, name: str) -> tuple[Table, dict]:
  """A study's table and metadata as written by run_study."""
  study = study_module(name)
  results = Path(results)
  try:
    text = (results / f"{name}.csv").read_text()
    meta = io.read_json(results / f"{name}.json")
    return Table.from_csv(text, study.KEYS), meta
  except (OSError, ValueError) as e:
    raise ValueError(f"{results / name}.csv/.json: {e}") from None


def load_all(results: str | Path) -> dict[str, tuple[Table, dict]]:
  """Every study with a results file in the directory, in the report's order."""
  from lintheory import studies
  return {name: load(results, name) for name in studies.STUDIES if (Path(results) / f"{name}.csv").exists()}


def results_parser(doc: str, verb: str) -> argparse.ArgumentParser:
  """The parser of a command that reads a profile's results to `verb` them (plots, report): its
  description the first line of doc, with --profile and --results (results_of)."""
  ap = argparse.ArgumentParser(description=doc.splitlines()[0])
  ap.add_argument("--profile", choices=PROFILE_NAMES, default=None,
                  help=f"the profile whose results to {verb} (default: default, or the one --results holds)")
  ap.add_argument("--results", default=None, help="directory of the studies' results files (default: the profile's, "
                  "results/ or results/PROFILE/)")
  return ap


def results_of(args) -> Path:
  """The results directory results_parser's flags name."""
  return Path(args.results) if args.results else results_dir(args.profile or "default")


def checked_profile(loaded: dict[str, tuple[Table, dict]], results, profile: str | None) -> str:
  """The loaded results' one profile (profile_of), which must be `profile` when one was asked for."""
  held = profile_of(loaded, results)
  if profile and held != profile:
    raise ValueError(f"{results} holds profile {held!r}'s results, not --profile {profile!r}'s")
  return held


def profile_of(loaded: dict[str, tuple[Table, dict]], where) -> str:
  """The one profile the loaded results were run at; a directory that mixes profiles is refused."""
  held = sorted({meta.get("profile") for _, meta in loaded.values()}, key=str)
  if len(held) != 1:
    raise ValueError(f"{where} holds results of {len(held)} profiles ({', '.join(map(str, held)) or 'none'}); "
                     "a report or a set of figures is of one profile")
  return held[0]


# --- the command line, generated from Flags -------------------------------------------------


def parse_flags(name: str, argv: Iterable[str] | None) -> tuple[Flags, bool]:
  """The study's Flags and --debug from argv (exit 2 on a bad flag, argparse's usage error)."""
  study = study_module(name)
  ap = argparse.ArgumentParser(prog=f"python -m lintheory.studies {name}",
                               description=(study.__doc__ or name).strip().splitlines()[0])
  run_flags.add_dataclass_flags(ap, Flags)
  ap.add_argument("--debug", action="store_true", help="full tracebacks")
  args = ap.parse_args(list(argv) if argv is not None else None)
  if args.profile not in study.PROFILES:
    ap.error(f"--profile must be one of {sorted(study.PROFILES)}, got {args.profile!r}")
  if not 0 <= args.seeds <= 1000:
    ap.error(f"--seeds must be in [0, 1000] (0 keeps the profile's), got {args.seeds}")
  return Flags(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Flags)}), args.debug


def main(name: str, argv: Iterable[str] | None = None) -> int:
  flags, debug = parse_flags(name, argv)
  try:
    if flags.compile_cache:
      compile_cache.enable(run_cache.dirs(flags.cache_dir)[1])
    run_study(name, flags)
  except (ValueError, OSError, RuntimeError) as e:
    if debug:
      traceback.print_exc()
    print(f"study {name}: error: {e}", file=sys.stderr)
    return 2
  return 0


def trained(settings, ctx: Context, **model):
  """The study's trained models from the shared cache (run.profiles.trained), one per seed."""
  return run_profiles.trained(settings.train, cache_dir=ctx.cache_dir, **model)
