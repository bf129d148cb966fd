"""Command line: `lintheory train | analyze | prune | sweep | import | export`.

`train`'s flags are generated from the fields of TaskConfig, ModelConfig and TrainConfig (name, type,
default and the field's comment; run.flags), so a new field appears here by itself; ALIASES keeps older
names. Every command validates its inputs (rundir.load_run, output directories, run.memory's estimate)
before any work, which the run modules do, and a failure a user can cause exits 2 with one line on
stderr (`--debug`: traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from lintheory.core import precision, prune
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import EVAL_SEED, TaskConfig
from lintheory.run import interop, io, jobs, memory, provenance, recipes, rundir, runtime, sweep, sweep_files, train
from lintheory.run.flags import (INT_MAX, add_config_flags, build_configs, float_arg, in_range, int_arg, naming,
                                  out_dir)

ALIASES = {"n_layers": ("--layers",), "n_heads": ("--heads",), "use_W_O": ("--output-proj",),
           "x_cov": ("--x-cov-diag",)}
TRAIN_CLASSES = {"task": TaskConfig, "model": ModelConfig, "train": train.TrainConfig}


class UsageError(Exception):
  """A bad command line; main() prints it as one line and returns 2."""

  def __init__(self, prog: str, message: str):
    super().__init__(message)
    self.prog = prog


class Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


# --- checks before any work ------------------------------------------------------------------

PRUNE_FLAGS = {"xi": "--rate", "rank": "--rank", "layer": "--layer", "layers": "--layer", "module": "--module"}
SWEEP_FLAGS = {"n_eval": "--eval-tasks", "n_analysis": "--analysis-tasks", "block": "--block", "xi": "--rates",
               "rank": "--ranks", "layer": "--layers", "layers": "--layers", "module": "--modules",
               "modules": "--modules"}


def protect_out(out: Path, overwrite: bool, flag: str = "--out") -> None:
  """An existing non-empty output needs --overwrite and must be a run directory of this tool."""
  rundir.check_replaceable(out, flag)
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise ValueError(f"{flag} {out} already holds a run; pass --overwrite to replace it")
  io.check_writable_dir(out.parent, f"{flag} {out}: its parent")


# --- train ---------------------------------------------------------------------------------


def add_train(sub, common) -> None:
  p = sub.add_parser("train", parents=[common],
                     help="train a linear-attention transformer on in-context regression",
                     epilog="exit status: 0 trained (with a warning on stderr, and learned: false in metrics.json, "
                            "when the final loss does not beat the zero predictor ŷ = 0); 1 training diverged (the "
                            "run is saved, diverged: true); 2 bad input (nothing written)")
  add_config_flags(p, TRAIN_CLASSES.values(), ALIASES,
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
  out = out_dir(args.out)
  saved, base = None, None
  if args.resume:
    saved = rundir.load_run(out)
    if saved.train is None:
      raise rundir.RunError(f"{out}: config.json has no training section; only `lintheory train` runs resume")
    base = rundir.config_dict(saved.task, saved.model, saved.train, saved.seed)
  d = getattr(args, "cfg_d", base["task"]["d"] if base else None)
  if isinstance(d, int) and d >= 1:
    memory.check("--d", d, 1, memory.cov_bytes)
  cfg = build_configs(args, TRAIN_CLASSES, base, ALIASES)
  task, model = cfg["task"], cfg["model"]
  tcfg = train.resolve(cfg["train"], model)  # what a flag leaves out comes from the recipe for this depth
  seed = args.seed if args.seed is not None else (saved.seed if saved else 0)
  in_range("--seed", seed, *rundir.SEED_RANGE)
  in_range("--checkpoint-every", args.checkpoint_every, 1, INT_MAX)
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
  memory.check("--batch-size", tcfg.batch_size, 1, lambda b: memory.train_bytes(task, model, b, itemsize))
  memory.check("--eval-tasks", in_range("--eval-tasks", args.eval_tasks, 1, INT_MAX), 1,
               lambda n: memory.eval_bytes(task, model, n, itemsize))
  return out, saved, task, model, tcfg, seed


def cmd_train(args) -> int:
  out, saved, task, model, tcfg, seed = _train_setup(args)
  with precision.for_dtype(tcfg.dtype):
    metrics, ev = jobs.train_run(out, task, model, tcfg, seed, saved, args.eval_tasks, args.checkpoint_every,
                                 provenance.collect())
  print(f"{out}: final_loss {ev['loss']:.4f} ± {ev['loss_se']:.4f}, one-step GD at η* "
        f"{ev['gd1_loss']:.4f}, closed form {metrics['closed_form_loss']:.4f}, zero predictor {ev['zero_loss']:.4f}, "
        f"{metrics['seconds']:.1f} s")
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
  p.add_argument("--eval-seed", type=int_arg, default=EVAL_SEED, help="key of the held-out tasks")
  p.add_argument("--fit-steps", type=int_arg, default=None, help="solver iterations at most per reference with L >= 2; "
                                                                     "a fit not converged after them is refused "
                                                                     "(default: references.FitConfig's)")
  p.add_argument("--cache-dir", default=None, help="root of every cache, as the studies' --cache-dir: fitted "
                                                   "references go to CACHE_DIR/cache/references (default: runs)")
  p.set_defaults(func=cmd_analyze)


def cmd_analyze(args) -> int:
  # Fitting references needs scipy.optimize, which no other command imports.
  from lintheory.run import analysis, references
  from lintheory.run import cache as run_cache

  in_range("--eval-tasks", args.eval_tasks, 2, INT_MAX)
  in_range("--tail-tasks", args.tail_tasks, 2, INT_MAX)
  in_range("--eval-seed", args.eval_seed, 0, INT_MAX)
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
    memory.check("--eval-tasks", args.eval_tasks, 2,
                 lambda n: memory.eval_bytes(run.task, run.model, n, 8, factor=3 * (1 + len(references.KINDS))))
    memory.check("--tail-tasks", min(args.tail_tasks, 8192), 2,
                 lambda n: memory.eval_bytes(run.task, run.model, n, 8, factor=3))
  prov = provenance.collect()
  results = []
  for run in loaded:
    with precision.x64():  # the identity is checked, and every metric computed, in float64
      result = analysis.of_run(run, fit_cfg, cache, args.eval_tasks, args.tail_tasks, args.eval_seed, prov)
    io.write_json(run.path / "analysis.json", result)
    results.append(result)
    print("\n".join(analysis.summary(result)))
    for kind, why in result["refused"].items():
      print(f"{run.path}: reference {kind} refused, not compared: {why}; raise --fit-steps", file=sys.stderr)
  for line in analysis.pooled(results, loaded):  # only runs of one task and model are pooled
    print(line)
  return 0


# --- prune / sweep (SVD pruning) ----------------------------------------------------------


def add_prune(sub, common) -> None:
  p = sub.add_parser("prune", parents=[common], help="SVD-prune one module of some layers of a trained run")
  p.add_argument("run", help="run directory (from `lintheory train`)")
  p.add_argument("--layer", type=int_arg, nargs="+", required=True, help="layer index(es), counting from 0")
  p.add_argument("--module", required=True, choices=list(prune.MODULES))
  how = p.add_mutually_exclusive_group(required=True)
  how.add_argument("--rate", type=float_arg, help="clipping rate ξ in [0, 1): keeps int(min(m, n)·(1 − ξ))")
  how.add_argument("--rank", type=int_arg, help="kept rank r in [0, min(m, n)]")
  p.add_argument("--eval-tasks", type=int_arg, default=10_000, help="held-out tasks for the ICL error (>= 2)")
  p.add_argument("--eval-seed", type=int_arg, default=EVAL_SEED, help="key of the held-out tasks")
  p.add_argument("--out", required=True, help="run directory to write the pruned model to")
  p.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
  p.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
  run = rundir.load_run(args.run)
  out = out_dir(args.out)
  if out.resolve() == run.path.resolve():
    raise ValueError("--out must differ from the run directory (pruning never overwrites its input)")
  protect_out(out, args.overwrite)
  in_range("--eval-tasks", args.eval_tasks, 2, INT_MAX)
  in_range("--eval-seed", args.eval_seed, 0, INT_MAX)
  kw = {"xi": args.rate} if args.rate is not None else {"rank": args.rank}
  names = naming(PRUNE_FLAGS, prune.module_names, run.params, args.module)
  naming(PRUNE_FLAGS, prune.layer_list, args.layer, run.model.n_layers)
  for n in names:
    naming(PRUNE_FLAGS, prune.kept_rank, run.params[n].shape, **kw)
  memory.check("--eval-tasks", args.eval_tasks, 2,
               lambda n: memory.eval_bytes(run.task, run.model, n, run.params["W_Q"].dtype.itemsize))
  with precision.for_dtype(str(run.params["W_Q"].dtype)):
    before, after, kept = jobs.prune_run(run, out, args.layer, args.module, args.eval_tasks, args.eval_seed,
                                         provenance.collect(), xi=args.rate, rank=args.rank)
  d = run.task.d
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
  p.add_argument("--modules", nargs="+", default=None, choices=list(prune.MODULES),
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


def cmd_sweep(args) -> int:
  run = rundir.load_run(args.run)
  out = out_dir(args.out)
  modules = args.modules or sweep.default_modules(run.params)
  rates = tuple(args.rates) if args.rates is not None else (() if args.ranks else prune.PAPER_RATES)
  cfg = naming(SWEEP_FLAGS, sweep.SweepConfig, layers=tuple(args.layers) if args.layers else None,
                modules=tuple(modules), rates=rates, ranks=tuple(args.ranks or ()), n_eval=args.eval_tasks,
                n_analysis=args.analysis_tasks, block=args.block, bounds=not args.no_bounds)
  naming(SWEEP_FLAGS, sweep.configurations, cfg, run.params)  # layers, modules and ranks against this model
  in_range("--block", args.block, 2, 4096)
  itemsize, L, D = run.params["W_Q"].dtype.itemsize, run.model.n_layers, run.task.D
  memory.check("--eval-tasks", args.eval_tasks, 2,
               lambda n: memory.eval_bytes(run.task, run.model, n, itemsize, factor=6))
  memory.check("--analysis-tasks", args.analysis_tasks, 2,
               lambda n: memory.eval_bytes(run.task, run.model, n, itemsize, factor=6 * L * D))
  sweep_files.check_dir(out, args.overwrite)
  with precision.for_dtype(str(run.params["W_Q"].dtype)):
    io.write_json(out / "provenance.json", provenance.collect())
    params_S = {k: np.asarray(v)[None] for k, v in run.params.items()}
    res = sweep.run(params_S, (run.seed,), run.model, run.task, cfg, out=out)
  print("\n".join(sweep_files.summary(res, modules, min(run.params["W_Q"].shape[-2:]), out / "sweep.csv")))
  return 0


# --- import / export: other codebases' weights (docs/theory.md §16) ------------------------------


def add_import(sub, common) -> None:
  p = sub.add_parser("import", parents=[common],
                     help="convert another codebase's weights (Ahn et al., von Oswald et al., npz) into a run "
                          "directory; the task flags say which task family analyze and prune evaluate it on",
                     description="The task flags below (TaskConfig's) set the task family the imported model is "
                                 "analysed and pruned on; their defaults are the library's, except d, which comes "
                                 "from the weights, and --n-context, which von-oswald requires (their weights carry N).")
  p.add_argument("--from", dest="fmt", required=True, choices=interop.FORMATS, help="the file's format")
  p.add_argument("path", help="the weights file")
  p.add_argument("--out", required=True, help="run directory to write")
  # The task the model is evaluated on: TaskConfig's flags (d comes from the file; N is required for
  # von-oswald, whose weights carry it, and 20 otherwise). Von Oswald et al. train on --x-dist uniform --x-scale 0.5.
  add_config_flags(p, [TaskConfig], ALIASES)
  p.add_argument("--layers", type=int_arg, default=None,
                 help="von-oswald shared (deq) module: how often it is applied (their config.num_layers; default 1)")
  p.add_argument("--heads", type=int_arg, default=None,
                 help="von-oswald: their config.num_heads (default 1); npz: H of a 4-D W_Q (L, H, D, D)")
  p.add_argument("--allow-pickle", action="store_true",
                 help="read a pickled Haiku dict (unpickling can run code: only files you trust)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
  p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
  out = out_dir(args.out)
  protect_out(out, args.overwrite)
  n_context = getattr(args, "cfg_n_context", None)
  for flag, value in (("--n-context", n_context), ("--layers", args.layers), ("--heads", args.heads)):
    if value is not None:
      in_range(flag, value, 1, INT_MAX)
  got = interop.load(args.fmt, args.path, n_context=n_context, n_layers=args.layers, n_heads=args.heads,
                     allow_pickle=args.allow_pickle)
  d = getattr(args, "cfg_d", got.model.d)
  if d != got.model.d:
    raise ValueError(f"--d {d} differs from the d = {got.model.d} of the weights in {args.path}")
  task = build_configs(args, {"task": TaskConfig}, {"task": dataclasses.asdict(got.task)}, ALIASES)["task"]
  rundir.save_run(out, task, got.model, None, 0, got.params, {}, extra={"source": got.source},
                  provenance=provenance.collect())
  m = got.model
  print(f"{out}: imported {args.fmt} {args.path} (sha256 {got.source['sha256'][:12]}): d={m.d}, "
        f"{m.n_layers} layer(s), {m.n_heads} head(s){', W_O' if m.use_W_O else ''}, N={task.n_context}, "
        f"inputs {task.x_dist}")
  return 0


def add_export(sub, common) -> None:
  p = sub.add_parser("export", parents=[common], help="write a run's weights in another codebase's format")
  p.add_argument("--to", dest="fmt", required=True, choices=interop.FORMATS, help="the format to write")
  p.add_argument("run", help="run directory")
  p.add_argument("path", help="the file to write (its suffix picks the container: .npy/.npz/.pt, .npz/.pkl)")
  p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                 help="dtype of the written arrays (default: the run's)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing file at PATH")
  p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
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


# --- entry point ---------------------------------------------------------------------------


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
