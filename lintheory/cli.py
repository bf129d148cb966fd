"""Command line: `lintheory train | analyze | prune | sweep | import | export`.

`train`'s flags are generated from the fields of TaskConfig, ModelConfig and TrainConfig (name, type,
default and the field's comment), so a new field appears here by itself; ALIASES keeps older names.
Every command validates its inputs (rundir.load_run, output directories, a memory estimate) before
any work, and a failure a user can cause exits 2 with one line on stderr (`--debug`: traceback).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
from lintheory.run import runtime

INT_MAX = 2**31 - 1  # steps, seeds and sizes are int32 inside JAX programs
ALIASES = {"n_layers": ("--layers",), "n_heads": ("--heads",), "use_W_O": ("--output-proj",),
           "x_cov": ("--x-cov-diag",)}
SWEEP_FILES = ("sweep.csv", "sweep.json", "provenance.json")


class UsageError(Exception):
  """A bad command line; main() prints it as one line and returns 2."""

  def __init__(self, prog: str, message: str):
    super().__init__(message)
    self.prog = prog


class Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


# --- argument types ------------------------------------------------------------------------


def int_arg(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if abs(v) > INT_MAX:
    raise argparse.ArgumentTypeError(f"must be an integer in [-{INT_MAX}, {INT_MAX}], got {text}")
  return v


def float_arg(text: str) -> float:
  try:
    v = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not math.isfinite(v):
    raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
  return v


def optional_str(text: str) -> str | None:
  return None if text.lower() == "none" else text


def _naming(flags: dict[str, str], fn, *a, **kw):
  """fn(*a, **kw), a ValueError prefixed with the flag of the field its message starts with."""
  try:
    return fn(*a, **kw)
  except ValueError as e:
    flag = flags.get(str(e).split(" ", 1)[0])
    raise ValueError(f"{flag}: {e}" if flag else str(e)) from None


PRUNE_FLAGS = {"xi": "--rate", "rank": "--rank", "layer": "--layer", "layers": "--layer", "module": "--module"}
SWEEP_FLAGS = {"n_eval": "--eval-tasks", "n_analysis": "--analysis-tasks", "block": "--block", "xi": "--rates",
               "rank": "--ranks", "layer": "--layers", "layers": "--layers", "module": "--modules",
               "modules": "--modules"}


def _in_range(flag: str, value: int, lo: int, hi: int) -> int:
  if not lo <= value <= hi:
    raise ValueError(f"{flag} must be an integer in [{lo}, {hi}], got {value}")
  return value


# --- flags generated from the configuration dataclasses -------------------------------------


def field_comments(cls) -> dict[str, str]:
  """field name → its trailing comment in the class source.

  A comment line whose text starts in the column of the field's comment text continues it; any
  other line (a section comment, the next field) ends it."""
  out, last, column = {}, None, None
  for line in inspect.getsource(cls).splitlines():
    m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
    c = re.match(r"\s+#\s*(.*)$", line)
    if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
      last, column = m.group(1), m.start(2)
      out[last] = m.group(2).strip()
    elif last and c and c.group(1) and c.start(1) == column:
      out[last] += " " + c.group(1).strip()
    else:
      last = None
  return out


def flag_of(name: str) -> str:
  return "--" + name.replace("_", "-").lower()


def _kind(f: dataclasses.Field) -> tuple[str, bool]:
  """('int'|'float'|'bool'|'str'|'tuple', optional) from a field's annotation (a string here)."""
  t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
  parts = [p.strip() for p in t.split("|")]
  optional = "None" in parts
  base = [p for p in parts if p != "None"][0]
  base = base.split("[")[0]
  if base not in ("int", "float", "bool", "str", "tuple"):
    raise TypeError(f"{f.name}: no command-line type for annotation {t!r}")
  return base, optional


def add_config_flags(p: argparse.ArgumentParser, classes, aliases=ALIASES,
                     defaults: dict[str, str] | None = None) -> dict[str, str]:
  """One flag per field of the dataclasses (a name shared by several is one flag); → dest per field.

  defaults: the text --help gives as a field's default instead of its value (fields whose None
  stands for something else, such as the recipe for the model's depth)."""
  dests = {}
  for cls in classes:
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
      if f.name in dests:
        continue
      kind, optional = _kind(f)
      dest = f"cfg_{f.name}"
      names = [flag_of(f.name), *aliases.get(f.name, ())]
      default = f.default if f.default is not dataclasses.MISSING else None
      help_ = f"{comments.get(f.name, f.name)} (default: {(defaults or {}).get(f.name, default)})"
      kw = {"dest": dest, "default": argparse.SUPPRESS, "help": help_}
      if kind == "bool":
        p.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        # BooleanOptionalAction adds "--no-" forms of every name; aliases of old store_true flags stay valid
      elif kind == "tuple":
        p.add_argument(*names, type=float_arg, nargs="+", metavar="X", **kw)
      else:
        typ = {"int": int_arg, "float": float_arg, "str": optional_str if optional else str}[kind]
        p.add_argument(*names, type=typ, metavar=f.name.upper(), **kw)
      dests[f.name] = dest
  return dests


def _flag_names(name: str) -> str:
  return "/".join([flag_of(name), *ALIASES.get(name, ())])


def build_configs(args, classes: dict, base: dict[str, dict] | None = None) -> dict:
  """section → dataclass instance from the given flags, then `base` (a saved run), then defaults."""
  given = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
  out = {}
  for section, cls in classes.items():
    kw = dict((base or {}).get(section) or {})
    kw = {f.name: kw[f.name] for f in dataclasses.fields(cls) if f.name in kw}
    kw.update({f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})
    for name, v in list(kw.items()):
      if isinstance(v, list):
        kw[name] = _as_cov(v, kw.get("d", given.get("d")))
    try:
      out[section] = cls(**kw)
    except (TypeError, ValueError) as e:
      msg = str(e)
      field = next((f.name for f in dataclasses.fields(cls) if msg.startswith(f.name + " ")), None)
      raise ValueError(f"{_flag_names(field)}: {msg}" if field else msg) from None
  return out


def _as_cov(values: list, d) -> tuple:
  """A flat list of d·d numbers is a matrix (row-major); anything else stays a diagonal."""
  if isinstance(d, int) and d > 1 and len(values) == d * d and all(not isinstance(v, list) for v in values):
    return tuple(tuple(values[i * d:(i + 1) * d]) for i in range(d))
  return tuple(tuple(v) if isinstance(v, list) else v for v in values)


def train_classes() -> dict:
  from lintheory.core.model import ModelConfig
  from lintheory.core.tasks import TaskConfig
  from lintheory.run.train import TrainConfig
  return {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}


# --- checks before any work ------------------------------------------------------------------


def _memory_budget() -> int:
  """Bytes one command may plan to use: the accelerator's limit, or the memory available on a CPU."""
  import jax
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # backends without memory_stats
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _params_bytes(model, itemsize: int) -> int:
  from lintheory.core.model import param_shapes
  return sum(math.prod(s) for s in param_shapes(model).values()) * itemsize


def train_bytes(task, model, batch_size: int, itemsize: int) -> int:
  """About the peak of one training step: tokens through every layer (and back), the optimiser."""
  T, D, L, H = task.n_context + 1, task.d + 1, model.n_layers, model.n_heads
  acts = batch_size * T * D * (L + 1) * (4 + 2 * H) + batch_size * H * D * D * L * 2
  if model.mlp is not None:
    acts += batch_size * T * model.F * L * 2
  return 3 * acts * itemsize + 6 * _params_bytes(model, itemsize)


def eval_bytes(task, model, n_tasks: int, itemsize: int, factor: int = 3) -> int:
  """About the peak of evaluating n_tasks at once (states of every layer, ridge solves)."""
  T, D, L, H = task.n_context + 1, task.d + 1, model.n_layers, model.n_heads
  per_task = T * D * (L + 2) * (1 + H) + D * D * (L + 2) + T * (model.F if model.mlp else 0) * L
  return factor * n_tasks * per_task * itemsize + 2 * _params_bytes(model, itemsize)


def check_memory(flag: str, value: int, lo: int, need, budget: int | None = None) -> None:
  """Refuse `flag`=value when need(value) bytes exceed the budget, naming the range that fits."""
  budget = _memory_budget() if budget is None else budget
  if need(value) <= budget:
    return
  hi = lo
  if need(lo) <= budget:
    top = value
    while hi < top:  # the largest value that fits, by bisection
      mid = (hi + top + 1) // 2
      hi, top = (mid, top) if need(mid) <= budget else (hi, mid - 1)
    allowed = f"allowed range with the other arguments as given: [{lo}, {hi}]"
  else:
    allowed = ("no value fits with the other arguments as given (reduce --d, --n-context, --layers, --heads "
               "or --mlp-hidden)")
  raise ValueError(f"{flag} {value} needs about {need(value) / 2**30:.3g} GiB of memory, more than the "
                   f"{budget / 2**30:.3g} GiB available; {allowed}")


def out_dir(text: str, flag: str = "--out") -> Path:
  if not text or not text.strip():
    raise ValueError(f"{flag} must name a directory, got {text!r}")
  return Path(text)


def protect_out(out: Path, overwrite: bool, flag: str = "--out") -> None:
  """An existing non-empty output needs --overwrite and must be a run directory of this tool."""
  from lintheory.run import io, rundir
  rundir.check_replaceable(out, flag)
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise ValueError(f"{flag} {out} already holds a run; pass --overwrite to replace it")
  io.check_writable_dir(out.parent, f"{flag} {out}: its parent")


def _provenance() -> dict:
  from lintheory.run import provenance
  return provenance.collect()


# --- train ---------------------------------------------------------------------------------


def add_train(sub, common) -> None:
  p = sub.add_parser("train", parents=[common],
                     help="train a linear-attention transformer on in-context regression",
                     epilog="exit status: 0 trained (with a warning on stderr, and learned: false in metrics.json, "
                            "when the final loss does not beat the zero predictor ŷ = 0); 1 training diverged (the "
                            "run is saved, diverged: true); 2 bad input (nothing written)")
  from lintheory.run import recipes
  add_config_flags(p, train_classes().values(),
                   defaults={f: f"by depth, {recipes.describe(f)}" for f in recipes.FIELDS})
  p.add_argument("--seed", type=int_arg, default=None, help="model and data seed, in [0, 2**31 - 1] (default: 0)")
  p.add_argument("--eval-tasks", type=int_arg, default=10_000, help="fresh tasks for the final metrics (>= 1)")
  p.add_argument("--checkpoint-every", type=int_arg, default=1000,
                 help="steps between saves of the run directory while training (>= 1)")
  p.add_argument("--out", required=True, help="run directory to write")
  how = p.add_mutually_exclusive_group()
  how.add_argument("--resume", action="store_true", help="continue from --out's checkpoint up to --steps")
  how.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
  p.set_defaults(func=cmd_train)


def _train_setup(args):
  """Configurations, seed and the saved run (when resuming), all validated; nothing written."""
  from lintheory.run import io, rundir, train
  out = out_dir(args.out)
  saved, base = None, None
  if args.resume:
    saved = rundir.load_run(out)
    if saved.train is None:
      raise rundir.RunError(f"{out}: config.json has no training section; only `lintheory train` runs resume")
    base = rundir.config_dict(saved.task, saved.model, saved.train, saved.seed)
  d = getattr(args, "cfg_d", base["task"]["d"] if base else None)
  if isinstance(d, int) and d >= 1:  # the task's d×d covariances are built as soon as it exists
    check_memory("--d", d, 1, lambda v: 4 * 8 * (v + 1) ** 2)
  cfg = build_configs(args, train_classes(), base)
  task, model, tcfg = cfg["task"], cfg["model"], cfg["train"]
  tcfg = train.resolve(tcfg, model)  # what a flag leaves out comes from the recipe for this depth
  seed = args.seed if args.seed is not None else (saved.seed if saved else 0)
  _in_range("--seed", seed, *rundir.SEED_RANGE)
  _in_range("--checkpoint-every", args.checkpoint_every, 1, INT_MAX)
  if model.d != task.d:
    raise ValueError(f"--d: model d={model.d} differs from task d={task.d}")
  if saved is not None:
    diff = rundir.config_mismatch(saved, task, model, tcfg, seed)
    if diff:
      raise ValueError(f"--resume: the configuration differs from the saved run in {'; '.join(diff)}; "
                       "only --steps may change (use a new --out for a different run)")
  else:
    protect_out(out, args.overwrite)
  io.check_writable_dir(out.parent, f"--out {out}: its parent")
  itemsize = 8 if tcfg.dtype == "float64" else 4
  check_memory("--batch-size", tcfg.batch_size, 1, lambda b: train_bytes(task, model, b, itemsize))
  check_memory("--eval-tasks", _in_range("--eval-tasks", args.eval_tasks, 1, INT_MAX), 1,
               lambda n: eval_bytes(task, model, n, itemsize))
  return out, saved, task, model, tcfg, seed


def cmd_train(args) -> int:
  from lintheory.core import precision
  out, saved, task, model, tcfg, seed = _train_setup(args)
  with precision.for_dtype(tcfg.dtype):
    return _train(args, out, saved, task, model, tcfg, seed)


def _train(args, out, saved, task, model, tcfg, seed) -> int:
  import jax
  import jax.numpy as jnp
  from lintheory.core import learners, precision
  from lintheory.run import io, rundir, train

  prov = _provenance()
  state, prev = None, np.zeros((1, 0), np.float32)
  if saved is not None:
    fresh = train.init_state(model, tcfg, (seed,))
    opt_state, step, prev = rundir.load_checkpoint(saved, fresh.opt_state)
    if step > tcfg.steps:
      raise ValueError(f"--steps {tcfg.steps} is below the {step} steps the run at {out} has done")
    state = train.resumed(fresh, {k: jnp.asarray(v)[None] for k, v in saved.params.items()}, opt_state, step)
    print(f"resuming {out} from step {step}", file=sys.stderr)

  def progress(st, chunk_losses):
    io.progress(f"  step {st.step:>6}/{tcfg.steps}  loss {float(chunk_losses[0, -1]):.4f}",
                final=st.step >= tcfg.steps)

  done = [np.asarray(prev)]
  last_save = [state.step if state else 0]

  def on_chunk(st, chunk_losses):
    progress(st, chunk_losses)
    done.append(np.asarray(chunk_losses))
    if st.step < tcfg.steps and st.step // args.checkpoint_every > last_save[0] // args.checkpoint_every:
      losses = np.concatenate(done, axis=1)
      rundir.save_run(out, task, model, tcfg, seed, {k: np.asarray(v[0]) for k, v in st.params.items()},
                      {"step": st.step, "finished": False}, losses[0],
                      checkpoint=rundir.checkpoint_arrays(st.opt_state, st.step, losses), provenance=prov)
      last_save[0] = st.step

  res = train.fit(task, model, tcfg, seeds=(seed,), state=state, on_chunk=on_chunk)
  params = {k: np.asarray(v[0]) for k, v in res.params.items()}
  ev = train.evaluate(params, task, model, jax.random.key(10_000 + seed), args.eval_tasks,
                      dtype=precision.DTYPES[tcfg.dtype])
  closed = learners.gd1_loss_for(task)
  losses = np.concatenate(done, axis=1)
  metrics = {
      "final_loss": ev["loss"], "final_loss_se": ev["loss_se"],
      "gd1_loss": ev["gd1_loss"], "gd1_loss_se": ev["gd1_loss_se"],
      "eta_star": learners.eta_star(task.d, task.n_context, task.noise_std),
      "closed_form_loss": closed, "ridge_loss": ev["ridge_loss"],
      "eval_tasks": args.eval_tasks, "seconds": res.seconds, "step": res.state.step,
      "finished": res.diverged is None, "skipped_steps": int(res.skipped[0]), **train.outcome(ev, res.diverged),
  }
  rundir.save_run(out, task, model, tcfg, seed, params, metrics, losses[0],
                  checkpoint=rundir.checkpoint_arrays(res.state.opt_state, res.state.step, losses),
                  provenance=prov)
  print(f"{out}: final_loss {ev['loss']:.4f} ± {ev['loss_se']:.4f}, one-step GD at η* "
        f"{ev['gd1_loss']:.4f}, closed form {closed:.4f}, zero predictor {ev['zero_loss']:.4f}, "
        f"{res.seconds:.1f} s")
  if metrics["diverged"]:  # exit 1: the run is saved, but its weights are no trained model
    print(f"lintheory train: error: training diverged: {metrics['divergence']}", file=sys.stderr)
    return 1
  if not metrics["learned"]:  # exit 0: a finished run (an untrained baseline may be wanted), flagged
    print(f"lintheory train: warning: the model did not learn: its final loss {ev['loss']:.4g} is not below the "
          f"zero predictor's (ŷ = 0) {ev['zero_loss']:.4g} by 2 standard errors; train longer (--steps) or check "
          "--lr and --warmup", file=sys.stderr)
  return 0


# --- analyze (implicit-GD analysis) -------------------------------------------------------


def add_analyze(sub, common) -> None:
  p = sub.add_parser("analyze", parents=[common],
                     help="implicit-GD analysis of trained runs: Theorem-1 trajectory vs fitted GD "
                          "references (writes RUN/analysis.json)")
  p.add_argument("runs", nargs="+", help="run directories (from `lintheory train`)")
  p.add_argument("--eval-tasks", type=int_arg, default=4096, help="held-out tasks for the per-layer comparison "
                                                                   "with the references (>= 2)")
  p.add_argument("--tail-tasks", type=int_arg, default=100_000, help="fresh tasks for the expected error and its "
                                                                       "tail (exact per-task errors; >= 2)")
  p.add_argument("--eval-seed", type=int_arg, default=20_240_406, help="key of the held-out tasks")
  p.add_argument("--fit-steps", type=int_arg, default=None, help="solver iterations at most per reference with L >= 2; "
                                                                     "a fit not converged after them is refused "
                                                                     "(default: references.FitConfig's)")
  p.add_argument("--cache-dir", default=None, help="root of every cache, as the studies' --cache-dir: fitted "
                                                   "references go to CACHE_DIR/cache/references (default: runs)")
  p.set_defaults(func=cmd_analyze)


def _tails(params, run, refs, args) -> dict:
  """Exact per-task errors (÷ d) on --tail-tasks fresh tasks: the model, each reference, the Bayes floor."""
  import jax
  from lintheory.core import evaluate, stats
  from lintheory.run import references

  key = jax.random.fold_in(jax.random.key(args.eval_seed), 1)
  n = args.tail_tasks
  out = {"units": "squared error of y_hat / d, exact per task for linear attention (sampled query otherwise)",
         "model": stats.summary(evaluate.errors(params, run.model, run.task, key, n))}
  if run.model.is_linear and run.model.n_heads == 1 and not run.model.use_W_O:
    for kind, f in references.usable(refs)[0].items():
      out[kind] = stats.summary(evaluate.errors(references.construct(f), run.model, run.task, key, n))
  out["bayes"] = stats.summary(evaluate.bayes_errors(run.task, key, n))
  return out


def _analysis_layers(out: dict) -> list[dict]:
  """analysis.analyze's per-layer lists → one record per layer k = 0..L−1 (prune --layer's index),
  holding what the model has after that layer (its iterate ŵ, its prediction's loss)."""
  lay = out["layers"]
  recs = []
  for t in range(len(lay["model_loss"])):
    rec = {"layer": t}
    rec.update({k: v[t] for k, v in lay.items() if k != "references"})
    rec["references"] = {kind: {k: v[t] for k, v in m.items()} for kind, m in lay["references"].items()}
    recs.append(rec)
  return recs


def cmd_analyze(args) -> int:
  from lintheory.core import precision
  from lintheory.run import cache as run_cache
  from lintheory.run import io, references, rundir

  _in_range("--eval-tasks", args.eval_tasks, 2, INT_MAX)
  _in_range("--tail-tasks", args.tail_tasks, 2, INT_MAX)
  _in_range("--eval-seed", args.eval_seed, 0, INT_MAX)
  try:
    fit_cfg = references.FitConfig() if args.fit_steps is None else references.FitConfig(steps=args.fit_steps)
  except ValueError as e:
    raise ValueError(f"--fit-steps: {e}") from None
  root = out_dir(run_cache.ROOT if args.cache_dir is None else args.cache_dir, "--cache-dir")
  io.check_writable_dir(root, "--cache-dir")
  cache = run_cache.dirs(root)[0]
  loaded = [rundir.load_run(r) for r in args.runs]  # fail on a bad run before any work
  for run in loaded:
    io.check_writable_dir(run.path, "run directory")
    check_memory("--eval-tasks", args.eval_tasks, 2,
                 lambda n: eval_bytes(run.task, run.model, n, 8, factor=3 * (1 + len(references.KINDS))))
    check_memory("--tail-tasks", min(args.tail_tasks, 8192), 2, lambda n: eval_bytes(run.task, run.model, n, 8, factor=3))
  with precision.x64():  # the identity is checked, and every metric computed, in float64
    return _analyze(args, loaded, fit_cfg, cache)


def _analyze(args, loaded, fit_cfg, cache) -> int:
  import jax
  import jax.numpy as jnp
  from lintheory.core import tasks
  from lintheory.run import analysis, io, references

  prov = _provenance()
  finals = {}  # architecture (task and model) → the final losses of its runs
  for run in loaded:
    params = {k: jnp.asarray(v, jnp.float64) for k, v in run.params.items()}
    refs = references.fitted(run.task, run.model.n_layers, fit_cfg, cache)
    batch = tasks.sample(jax.random.key(args.eval_seed), run.task, args.eval_tasks, dtype=jnp.float64)
    out = analysis.analyze(params, run.model, run.task, refs, batch)
    tails = _tails(params, run, refs, args)
    ident = dict(out["identity"])
    ident["note"] = ("Theorem 1 holds exactly: deviation is float64 round-off" if ident["exact"] else
                     f"Theorem 1 does not cover attention={run.model.attention!r}, mlp={run.model.mlp!r}: "
                     "this is the measured deviation of (I + W_t) h^0 from the forward pass")
    result = {"run": str(run.path), "task": dataclasses.asdict(run.task), "model": dataclasses.asdict(run.model),
              "seed": run.seed, "eval_tasks": args.eval_tasks, "eval_seed": args.eval_seed, "dtype": "float64",
              "fit": dataclasses.asdict(fit_cfg), "identity": ident, "layers": _analysis_layers(out),
              "final": out["final"], "tails": tails, "interpolation": out["interpolation"],
              "references": {k: references.record(f) for k, f in refs.items()}, "refused": out["refused"],
              "params_sha256": run.manifest["files"]["params.npz"], "provenance": prov}
    io.write_json(run.path / "analysis.json", result)
    fl = out["final"]["losses"]
    finals.setdefault(_architecture(run), []).append(fl)
    t = tails["model"]
    print(f"{run.path}: expected error (÷ d) on {t['n']:,} tasks: mean {t['mean']:.4g} "
          f"[{t['mean_ci_lo']:.4g}, {t['mean_ci_hi']:.4g}], median {t['median']:.4g}, p99 {t['p99']:.4g}, "
          f"p99.99 {t['p9999']:.4g}, max {t['max']:.4g}; Bayes {tails['bayes']['mean']:.4g}")
    print(f"{run.path / 'analysis.json'}: L={run.model.n_layers} identity max |err| {ident['max_abs_err']:.1e} "
          f"(exact={ident['exact']}); loss model {fl['model']:.4f}, "
          + ", ".join(f"{k} {fl[k]:.4f}" for k in (*references.KINDS, "ridge") if k in fl))
    for kind, why in out["refused"].items():
      print(f"{run.path}: reference {kind} refused, not compared: {why}; raise --fit-steps", file=sys.stderr)
  for arch, group in finals.items():  # only runs of one task and model are pooled
    if len(group) > 1:
      print(f"over {len(group)} runs of {arch}:")
      for k in group[0]:
        v = np.array([f[k] for f in group])
        print(f"  {k} loss {v.mean():.4f} ± {v.std(ddof=1):.4f} (sd)")
  return 0


def _architecture(run) -> str:
  """A run's task and model configuration, as the fields that differ from the defaults."""
  parts = [f"{k}={v}" for cfg in (run.task, run.model) for k, v in dataclasses.asdict(cfg).items()
           if v != getattr(type(cfg), k, None) or k in ("d", "n_context", "n_layers")]
  return ", ".join(dict.fromkeys(parts))


# --- prune / sweep (SVD pruning) ----------------------------------------------------------

MODULE_CHOICES = ["q", "k", "v", "o", "attn", "mlp", "all"]


def _dtype_name(params) -> str:
  return str(next(iter(params.values())).dtype)


def add_prune(sub, common) -> None:
  p = sub.add_parser("prune", parents=[common], help="SVD-prune one module of some layers of a trained run")
  p.add_argument("run", help="run directory (from `lintheory train`)")
  p.add_argument("--layer", type=int_arg, nargs="+", required=True, help="layer index(es), counting from 0")
  p.add_argument("--module", required=True, choices=MODULE_CHOICES)
  how = p.add_mutually_exclusive_group(required=True)
  how.add_argument("--rate", type=float_arg, help="clipping rate ξ in [0, 1): keeps int(min(m, n)·(1 − ξ))")
  how.add_argument("--rank", type=int_arg, help="kept rank r in [0, min(m, n)]")
  p.add_argument("--eval-tasks", type=int_arg, default=10_000, help="held-out tasks for the ICL error (>= 2)")
  p.add_argument("--eval-seed", type=int_arg, default=20_240_406, help="key of the held-out tasks")
  p.add_argument("--out", required=True, help="run directory to write the pruned model to")
  p.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
  p.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
  from lintheory.core import precision, prune
  from lintheory.run import rundir

  run = rundir.load_run(args.run)
  out = out_dir(args.out)
  if out.resolve() == run.path.resolve():
    raise ValueError("--out must differ from the run directory (pruning never overwrites its input)")
  protect_out(out, args.overwrite)
  _in_range("--eval-tasks", args.eval_tasks, 2, INT_MAX)
  _in_range("--eval-seed", args.eval_seed, 0, INT_MAX)
  kw = {"xi": args.rate} if args.rate is not None else {"rank": args.rank}
  names = _naming(PRUNE_FLAGS, prune.module_names, run.params, args.module)
  _naming(PRUNE_FLAGS, prune.layer_list, args.layer, run.model.n_layers)
  kept = {n: _naming(PRUNE_FLAGS, prune.kept_rank, run.params[n].shape, **kw) for n in names}
  itemsize = run.params["W_Q"].dtype.itemsize
  check_memory("--eval-tasks", args.eval_tasks, 2, lambda n: eval_bytes(run.task, run.model, n, itemsize))
  with precision.for_dtype(_dtype_name(run.params)):
    return _prune(args, run, out, kw, names, kept)


def _prune(args, run, out, kw, names, kept) -> int:
  import jax
  from lintheory.core import prune
  from lintheory.run import rundir, train

  params = {k: jax.numpy.asarray(v) for k, v in run.params.items()}
  pruned = {k: np.asarray(v) for k, v in prune.prune(params, args.layer, args.module, **kw).items()}
  dtype = params["W_Q"].dtype
  key = jax.random.key(args.eval_seed)
  before = train.evaluate(params, run.task, run.model, key, args.eval_tasks, dtype=dtype)
  after = train.evaluate(pruned, run.task, run.model, key, args.eval_tasks, dtype=dtype)
  for when, ev in (("before", before), ("after", after)):
    if not all(math.isfinite(ev[k]) for k in ("loss", "loss_se")):
      raise ValueError(f"the ICL error {when} pruning is not finite on {args.eval_tasks} tasks "
                       "(the model overflows); nothing written")
  d = run.task.d
  metrics = {"final_loss": after["loss"], "final_loss_se": after["loss_se"],
             "loss_before": before["loss"], "loss_before_se": before["loss_se"],
             "icl_error": after["loss"] / d, "icl_error_before": before["loss"] / d,
             "gd1_loss": after["gd1_loss"], "ridge_loss": after["ridge_loss"],
             "eval_tasks": args.eval_tasks, "eval_seed": args.eval_seed}
  pruning = {"from": str(run.path), "from_params_sha256": run.manifest["files"]["params.npz"],
             "layers": list(args.layer), "module": args.module, "matrices": list(names), "xi": args.rate,
             "rank": args.rank, "kept_rank": kept}
  rundir.save_run(out, run.task, run.model, run.train, run.seed, pruned, metrics, extra={"pruning": pruning},
                  provenance=_provenance())
  what = f"ξ={args.rate}" if args.rate is not None else f"rank {args.rank}"
  print(f"{out}: pruned {args.module} ({', '.join(f'{n}→rank {r}' for n, r in kept.items())}) of layer(s) "
        f"{args.layer} at {what}")
  print(f"  ICL error (MSE/d) before {before['loss'] / d:.4f} ± {before['loss_se'] / d:.4f}, "
        f"after {after['loss'] / d:.4f} ± {after['loss_se'] / d:.4f} ({args.eval_tasks} held-out tasks)")
  return 0


def add_sweep(sub, common) -> None:
  p = sub.add_parser("sweep", parents=[common],
                     help="prune every layer alone, per module and rate/rank (study a for one run)")
  p.add_argument("run", help="run directory (from `lintheory train`)")
  p.add_argument("--modules", nargs="+", default=None, choices=MODULE_CHOICES,
                 help="default: attn, q, k, v, and o / mlp when the model has them")
  p.add_argument("--layers", type=int_arg, nargs="+", default=None, help="layers to prune one at a time (default all)")
  p.add_argument("--rates", type=float_arg, nargs="+", default=None, help="clipping rates (default: the paper's)")
  p.add_argument("--ranks", type=int_arg, nargs="+", default=None, help="kept ranks (instead of or besides rates)")
  p.add_argument("--eval-tasks", type=int_arg, default=4096, help="held-out tasks for the ICL error (>= 2)")
  p.add_argument("--analysis-tasks", type=int_arg, default=128, help="tasks for ŵ_t, norms and bound terms (>= 2)")
  p.add_argument("--block", type=int_arg, default=16, help="configurations per jitted call (>= 2)")
  p.add_argument("--no-bounds", action="store_true", help="skip the bound columns")
  p.add_argument("--out", required=True, help="directory for sweep.csv and sweep.json (resumes if present)")
  p.add_argument("--overwrite", action="store_true", help="start again in an existing sweep directory")
  p.set_defaults(func=cmd_sweep)


def check_sweep_dir(out: Path, overwrite: bool) -> None:
  """A sweep --out is new, empty, or a sweep of this tool that can resume (files named on failure)."""
  from lintheory.run import io, rundir, sweep
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} exists and is not a directory")
  io.check_writable_dir(out, "--out")
  if not out.exists():
    return
  names = {p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}
  if names - set(SWEEP_FILES):
    raise ValueError(f"--out {out} holds files a sweep does not write ({', '.join(sorted(names - set(SWEEP_FILES)))}); "
                     "refusing to write into it")
  if overwrite:
    for name in SWEEP_FILES:
      io.remove_tree(out / name)
    return
  csv_path, json_path = out / "sweep.csv", out / "sweep.json"
  meta = rundir._read_json(json_path) if json_path.exists() else None
  if csv_path.exists() and meta is None:
    raise rundir.RunError(f"{csv_path}: no sweep.json beside it (a sweep interrupted in its first block, or a "
                          "removed file); pass --overwrite to start again")
  if meta is not None and (not isinstance(meta, dict) or not isinstance(meta.get("columns"), list)):
    raise rundir.RunError(f"{json_path}: not a sweep description (no columns)")
  if csv_path.exists():
    try:
      with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
      raise rundir.RunError(f"{csv_path}: cannot be read ({type(e).__name__}: {e})") from None
    if not table or table[0] != meta["columns"]:
      raise rundir.RunError(f"{csv_path}: its header differs from sweep.json's columns")
    for i, row in enumerate(table[1:]):
      if len(row) != len(table[0]) or "" in (row[0], row[1], row[2], row[3], row[5]):
        raise rundir.RunError(f"{csv_path}: row {i + 2} is truncated or malformed")
    try:
      sweep.read_csv(csv_path)
    except (ValueError, TypeError) as e:
      raise rundir.RunError(f"{csv_path}: a value cannot be parsed ({e})") from None


def cmd_sweep(args) -> int:
  from lintheory.core import precision, prune
  from lintheory.run import io, rundir, sweep

  run = rundir.load_run(args.run)
  out = out_dir(args.out)
  modules = args.modules or [m for m in ("attn", "q", "k", "v", "o", "mlp")
                             if any(n in run.params for n in prune.MODULES[m])]
  rates = tuple(args.rates) if args.rates is not None else (() if args.ranks else prune.PAPER_RATES)
  cfg = _naming(SWEEP_FLAGS, sweep.SweepConfig, layers=tuple(args.layers) if args.layers else None,
                modules=tuple(modules), rates=rates, ranks=tuple(args.ranks or ()), n_eval=args.eval_tasks,
                n_analysis=args.analysis_tasks, block=args.block, bounds=not args.no_bounds)
  _naming(SWEEP_FLAGS, sweep.configurations, cfg, run.params)  # layers, modules and ranks against this model
  _in_range("--block", args.block, 2, 4096)
  itemsize = run.params["W_Q"].dtype.itemsize
  check_memory("--eval-tasks", args.eval_tasks, 2, lambda n: eval_bytes(run.task, run.model, n, itemsize, factor=6))
  check_memory("--analysis-tasks", args.analysis_tasks, 2,
               lambda n: eval_bytes(run.task, run.model, n, itemsize, factor=6 * run.model.n_layers * run.task.D))
  check_sweep_dir(out, args.overwrite)
  with precision.for_dtype(_dtype_name(run.params)):
    io.write_json(out / "provenance.json", _provenance())
    return _sweep(args, run, out, cfg, modules)


def _sweep(args, run, out, cfg, modules) -> int:
  import jax
  from lintheory.run import sweep

  params_S = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a)[None], run.params)
  res = sweep.run(params_S, (run.seed,), run.model, run.task, cfg, out=out)
  print(f"{out}/sweep.csv: {len(res.rows)} rows, {res.evaluated} configurations evaluated in "
        f"{res.seconds:.1f} s (bound columns: {'yes' if res.meta['bounds'] else 'no'})")
  base = next((r["icl_error"] for r in res.rows if r["rank"] == min(run.params["W_Q"].shape[-2:])
               and r["module"] in ("attn", "q", "k", "v")), None)
  if base is not None:
    print(f"  unpruned ICL error (MSE/d) {base:.4f}")
  for m in modules:
    rs = [r for r in res.rows if r["module"] == m and r["icl_error"] is not None and math.isfinite(r["icl_error"])]
    n_bad = sum(1 for r in res.rows if r["module"] == m) - len(rs)
    if not rs:
      print(f"  {m:>4}: no configuration has a finite ICL error")
      continue
    best = min(rs, key=lambda r: r["icl_error"])
    what = f"ξ={best['xi']}" if best["mode"] == "rate" else f"rank {best['rank']}"
    print(f"  {m:>4}: best layer {best['layer']} at {what} (rank {best['rank']}): "
          f"{best['icl_error']:.4f} ± {best['icl_error_se']:.4f}"
          + (f" ({n_bad} configurations with a non-finite ICL error left out)" if n_bad else ""))
  return 0


# --- entry point ---------------------------------------------------------------------------


# --- import / export: other codebases' weights (docs/theory.md §16) ------------------------------


def add_import(sub, common) -> None:
  from lintheory.core.tasks import TaskConfig
  from lintheory.run.interop import FORMATS
  p = sub.add_parser("import", parents=[common],
                     help="convert another codebase's weights (Ahn et al., von Oswald et al., npz) into a run "
                          "directory; the task flags say which task family analyze and prune evaluate it on",
                     description="The task flags below (TaskConfig's) set the task family the imported model is "
                                 "analysed and pruned on; their defaults are the library's, except d, which comes "
                                 "from the weights, and --n-context, which von-oswald requires (their weights carry N).")
  p.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="the file's format")
  p.add_argument("path", help="the weights file")
  p.add_argument("--out", required=True, help="run directory to write")
  # The task the model is evaluated on: TaskConfig's flags (d comes from the file; N is required for
  # von-oswald, whose weights carry it, and 20 otherwise). Von Oswald et al. train on --x-dist uniform --x-scale 0.5.
  add_config_flags(p, [TaskConfig])
  p.add_argument("--layers", type=int_arg, default=None,
                 help="von-oswald shared (deq) module: how often it is applied (their config.num_layers; default 1)")
  p.add_argument("--heads", type=int_arg, default=None,
                 help="von-oswald: their config.num_heads (default 1); npz: H of a 4-D W_Q (L, H, D, D)")
  p.add_argument("--allow-pickle", action="store_true",
                 help="read a pickled Haiku dict (unpickling can run code: only files you trust)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
  p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
  import dataclasses as dc
  from lintheory.core.tasks import TaskConfig
  from lintheory.run import interop, rundir
  out = out_dir(args.out)
  protect_out(out, args.overwrite)
  n_context = getattr(args, "cfg_n_context", None)
  for flag, value in (("--n-context", n_context), ("--layers", args.layers), ("--heads", args.heads)):
    if value is not None:
      _in_range(flag, value, 1, INT_MAX)
  got = interop.load(args.fmt, args.path, n_context=n_context, n_layers=args.layers, n_heads=args.heads,
                     allow_pickle=args.allow_pickle)
  d = getattr(args, "cfg_d", got.model.d)
  if d != got.model.d:
    raise ValueError(f"--d {d} differs from the d = {got.model.d} of the weights in {args.path}")
  task = build_configs(args, {"task": TaskConfig}, {"task": dc.asdict(got.task)})["task"]
  rundir.save_run(out, task, got.model, None, 0, got.params, {}, extra={"source": got.source},
                  provenance=_provenance())
  m = got.model
  print(f"{out}: imported {args.fmt} {args.path} (sha256 {got.source['sha256'][:12]}): d={m.d}, "
        f"{m.n_layers} layer(s), {m.n_heads} head(s){', W_O' if m.use_W_O else ''}, N={task.n_context}, "
        f"inputs {task.x_dist}")
  return 0


def add_export(sub, common) -> None:
  from lintheory.run.interop import FORMATS
  p = sub.add_parser("export", parents=[common], help="write a run's weights in another codebase's format")
  p.add_argument("--to", dest="fmt", required=True, choices=FORMATS, help="the format to write")
  p.add_argument("run", help="run directory")
  p.add_argument("path", help="the file to write (its suffix picks the container: .npy/.npz/.pt, .npz/.pkl)")
  p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                 help="dtype of the written arrays (default: the run's)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing file at PATH")
  p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
  from lintheory.run import interop, io, rundir
  run = rundir.load_run(args.run)
  path = Path(args.path)
  if path.is_dir():
    raise ValueError(f"PATH {path} is a directory; expected a file name")
  if path.exists() and not args.overwrite:
    raise ValueError(f"PATH {path} already exists; pass --overwrite to replace it")
  io.check_writable_dir(path.parent, f"PATH {path}: its parent")
  interop.export(args.fmt, run.params, run.model, path, n_context=run.task.n_context, dtype=args.dtype)
  print(f"{path}: {args.fmt} weights of {run.path}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  common = Parser(add_help=False)
  common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
  parser = Parser(prog="lintheory", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for add in (add_train, add_analyze, add_prune, add_sweep, add_import, add_export):
    add(sub, common)
  return parser


# Failures a user can cause (bad values, bad or unwritable files, too little memory): exit 2.
USER_ERRORS = (ValueError, OSError, OverflowError, MemoryError)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
  runtime.configure()  # before JAX's first computation
  try:
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # reported by the subcommand, as its own errors are
      raise UsageError(f"lintheory {args.command}", f"unrecognized arguments: {' '.join(extra)} "
                                                    f"(see lintheory {args.command} --help)")
  except UsageError as e:
    print(f"{e.prog}: error: {e}", file=sys.stderr)
    return 2
  try:
    return args.func(args)
  except KeyboardInterrupt:
    print(f"lintheory {args.command}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 -- the boundary: one line, the traceback only with --debug
    if args.debug:
      raise
    user = isinstance(e, USER_ERRORS) or "RESOURCE_EXHAUSTED" in str(e)
    hint = "" if user else " (an internal error: rerun with --debug for the traceback)"
    print(f"lintheory {args.command}: error: {_one_line(e)}{hint}", file=sys.stderr)
    return 2 if user else 1


if __name__ == "__main__":
  sys.exit(main())
