"""Command line: `lintheory train | analyze | prune | sweep`.

Each subcommand has an `add_<name>(subparsers)` that registers it and a `cmd_<name>(args)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _enable_x64_if(dtype: str) -> None:
  import jax
  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)


# --- train ---------------------------------------------------------------------------------


def add_train(sub) -> None:
  p = sub.add_parser("train", help="train a linear-attention transformer on in-context regression")
  p.add_argument("--d", type=int, default=5, help="input dimension d (>= 1)")
  p.add_argument("--n-context", type=int, default=10, help="demonstrations N per task (>= 1)")
  p.add_argument("--layers", type=int, default=1, help="number of layers L (>= 1)")
  p.add_argument("--heads", type=int, default=1, help="attention heads per layer (>= 1)")
  p.add_argument("--attention", default="linear", choices=["linear", "softmax"])
  p.add_argument("--mlp", default=None, choices=["linear", "relu"], help="add an MLP sub-layer")
  p.add_argument("--output-proj", action="store_true", help="add an output projection W_O")
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--batch-size", type=int, default=1024)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--warmup", type=int, default=100)
  p.add_argument("--init-scale", type=float, default=0.02)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--noise-std", type=float, default=0.0, help="label noise σ (>= 0)")
  p.add_argument("--x-cov-diag", type=float, nargs="+", default=None,
                 help="diagonal of the input covariance Σ (d positive numbers); default I")
  p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  p.add_argument("--eval-tasks", type=int, default=10_000, help="fresh tasks for the final metrics")
  p.add_argument("--max-skipped", type=int, default=0,
                 help="skip up to this many consecutive steps with a non-finite loss (deep models)")
  p.add_argument("--out", required=True, help="run directory to write")
  p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint up to --steps")
  p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
  _enable_x64_if(args.dtype)
  import jax
  from lintheory.core import learners
  from lintheory.run import rundir, train
  from lintheory.core.model import ModelConfig
  from lintheory.core.tasks import TaskConfig

  task = TaskConfig(d=args.d, n_context=args.n_context, noise_std=args.noise_std,
                    x_cov=tuple(args.x_cov_diag) if args.x_cov_diag else None)
  model = ModelConfig(d=args.d, n_layers=args.layers, n_heads=args.heads, use_W_O=args.output_proj,
                      mlp=args.mlp, attention=args.attention, init_scale=args.init_scale)
  tcfg = train.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                           dtype=args.dtype, chunk=min(100, args.steps), max_skipped=args.max_skipped)
  if args.eval_tasks < 1:
    raise ValueError(f"--eval-tasks must be >= 1, got {args.eval_tasks}")
  out = Path(args.out)
  state, prev_losses = None, np.zeros(0)
  if args.resume:
    run = rundir.load_run(out)
    fresh = train.init_state(model, tcfg, (args.seed,))
    opt_state, step = rundir.load_checkpoint(out, fresh.opt_state)
    state = train.TrainState({k: v[None] for k, v in run.params.items()}, opt_state, step)
    if (out / "loss_curve.csv").exists():
      prev_losses = np.loadtxt(out / "loss_curve.csv", delimiter=",", skiprows=1, ndmin=2)[:step, 1]
    print(f"resuming {out} from step {step}", file=sys.stderr)

  progress = train.print_progress(tcfg.steps)
  done = [prev_losses]

  def on_chunk(st, chunk_losses):
    progress(st, chunk_losses)
    done.append(chunk_losses[0])
    if st.step % 1000 < tcfg.chunk or st.step == tcfg.steps:  # checkpoint about every 1000 steps
      rundir.save_run(out, task, model, tcfg, args.seed, train.seed_params(st.params, 0),
                  {"step": st.step, "finished": False}, np.concatenate(done))
      rundir.save_checkpoint(out, jax.tree_util.tree_map(lambda x: x, st.opt_state), st.step)

  res = train.fit(task, model, tcfg, seeds=(args.seed,), state=state, on_chunk=on_chunk)
  params = train.seed_params(res.params, 0)
  dtype = train.DTYPES[args.dtype]
  ev = train.evaluate(params, task, model, jax.random.key(10_000 + args.seed), args.eval_tasks, dtype=dtype)
  closed = learners.gd1_loss_for(task)
  metrics = {
      "final_loss": ev["loss"], "final_loss_se": ev["loss_se"],
      "gd1_loss": ev["gd1_loss"], "gd1_loss_se": ev["gd1_loss_se"],
      "eta_star": learners.eta_star(task.d, task.n_context, task.noise_std),
      "closed_form_loss": closed, "ridge_loss": ev["ridge_loss"],
      "eval_tasks": args.eval_tasks, "seconds": res.seconds, "step": res.state.step,
      "finished": res.diverged is None, "diverged": res.diverged, "skipped_steps": int(res.skipped[0]),
  }
  rundir.save_run(out, task, model, tcfg, args.seed, params, metrics, np.concatenate(done))
  rundir.save_checkpoint(out, res.state.opt_state, res.state.step)
  print(f"{out}: final_loss {ev['loss']:.4f} ± {ev['loss_se']:.4f}, one-step GD at η* "
        f"{ev['gd1_loss']:.4f}, closed form {closed:.4f}, {res.seconds:.1f} s")
  if res.diverged:
    print(f"error: {res.diverged}", file=sys.stderr)
    return 1
  return 0


# --- analyze (implicit-GD analysis) -------------------------------------------------------


def add_analyze(sub) -> None:
  p = sub.add_parser("analyze", help="implicit-GD analysis of trained runs: Theorem-1 trajectory vs fitted GD "
                                     "references (writes RUN/analysis.json)")
  p.add_argument("runs", nargs="+", help="run directories (from `lintheory train`)")
  p.add_argument("--eval-tasks", type=int, default=4096, help="held-out tasks for every metric (>= 2)")
  p.add_argument("--eval-seed", type=int, default=20_240_406, help="key of the held-out tasks")
  p.add_argument("--fit-steps", type=int, default=None, help="Adam steps fitting each reference (default: "
                                                                 "references.FitConfig's)")
  p.add_argument("--cache-dir", default="runs/cache", help="where fitted references are cached")
  p.set_defaults(func=cmd_analyze)


def _analysis_layers(out: dict) -> list[dict]:
  """analysis.analyze's per-layer lists → one record per layer t = 1..L."""
  lay = out["layers"]
  recs = []
  for t in range(len(lay["model_loss"])):
    rec = {"layer": t + 1}
    rec.update({k: v[t] for k, v in lay.items() if k != "references"})
    rec["references"] = {kind: {k: v[t] for k, v in m.items()} for kind, m in lay["references"].items()}
    recs.append(rec)
  return recs


def cmd_analyze(args) -> int:
  _enable_x64_if("float64")  # the identity is checked, and every metric computed, in float64
  import dataclasses
  import jax
  import jax.numpy as jnp
  from lintheory.run import analysis, io, references, rundir
  from lintheory.core import tasks

  if args.eval_tasks < 2:
    raise ValueError(f"--eval-tasks must be >= 2, got {args.eval_tasks}")
  fit_cfg = references.FitConfig() if args.fit_steps is None else references.FitConfig(steps=args.fit_steps)
  loaded = [rundir.load_run(r) for r in args.runs]  # fail on a bad path before any work
  finals = []
  for run in loaded:
    if run.model.d != run.task.d:
      raise ValueError(f"{run.path}: model d={run.model.d} differs from task d={run.task.d}")
    params = {k: jnp.asarray(v, jnp.float64) for k, v in run.params.items()}
    refs = references.fitted(run.task, run.model.n_layers, fit_cfg, args.cache_dir)
    batch = tasks.sample(jax.random.key(args.eval_seed), run.task, args.eval_tasks, dtype=jnp.float64)
    out = analysis.analyze(params, run.model, run.task, refs, batch)
    ident = dict(out["identity"])
    ident["note"] = ("Theorem 1 holds exactly: deviation is float64 round-off" if ident["exact"] else
                     f"Theorem 1 does not cover attention={run.model.attention!r}, mlp={run.model.mlp!r}: "
                     "this is the measured deviation of (I + W_t) h^0 from the forward pass")
    result = {"run": str(run.path), "task": dataclasses.asdict(run.task), "model": dataclasses.asdict(run.model),
              "seed": run.seed, "eval_tasks": args.eval_tasks, "eval_seed": args.eval_seed, "dtype": "float64",
              "fit": dataclasses.asdict(fit_cfg), "identity": ident, "layers": _analysis_layers(out),
              "final": out["final"], "interpolation": out["interpolation"],
              "references": {k: {"eta": f.eta, "gamma": f.gamma, "P": f.P, "train_loss": f.train_loss}
                             for k, f in refs.items()}}
    io.write_json(run.path / "analysis.json", result)
    fl = out["final"]["losses"]
    finals.append(fl)
    print(f"{run.path / 'analysis.json'}: L={run.model.n_layers} identity max |err| {ident['max_abs_err']:.1e} "
          f"(exact={ident['exact']}); loss model {fl['model']:.4f}, "
          + ", ".join(f"{k} {fl[k]:.4f}" for k in (*references.KINDS, "ridge")))
  if len(finals) > 1:
    for k in finals[0]:
      v = np.array([f[k] for f in finals])
      print(f"  over {len(v)} runs: {k} loss {v.mean():.4f} ± {v.std(ddof=1):.4f} (sd)")
  return 0


# --- prune / sweep (SVD pruning) ----------------------------------------------------------


def _x64_for_run(path) -> None:
  """Enable float64 before any JAX work when the run's parameters are stored in float64."""
  p = Path(path) / "params.npz"
  if p.exists():
    with np.load(p) as f:
      if any(f[k].dtype == np.float64 for k in f.files):
        _enable_x64_if("float64")


def add_prune(sub) -> None:
  p = sub.add_parser("prune", help="SVD-prune one module of some layers of a trained run")
  p.add_argument("run", help="run directory (from `lintheory train`)")
  p.add_argument("--layer", type=int, nargs="+", required=True, help="layer index(es), counting from 0")
  p.add_argument("--module", required=True, choices=["q", "k", "v", "o", "attn", "mlp", "all"])
  how = p.add_mutually_exclusive_group(required=True)
  how.add_argument("--rate", type=float, help="clipping rate ξ in [0, 1): keeps int(min(m, n)·(1 − ξ))")
  how.add_argument("--rank", type=int, help="kept rank r in [0, min(m, n)]")
  p.add_argument("--eval-tasks", type=int, default=10_000, help="held-out tasks for the ICL error")
  p.add_argument("--eval-seed", type=int, default=20_240_406, help="key of the held-out tasks")
  p.add_argument("--out", required=True, help="run directory to write the pruned model to")
  p.add_argument("--overwrite", action="store_true", help="replace an existing run directory at --out")
  p.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
  _x64_for_run(args.run)
  import jax
  from lintheory.run import rundir, train
  from lintheory.core import prune

  run = rundir.load_run(args.run)
  out = Path(args.out)
  if out.resolve() == run.path.resolve():
    raise ValueError("--out must differ from the run directory (pruning never overwrites its input)")
  if (out / "params.npz").exists() and not args.overwrite:
    raise ValueError(f"--out {out} already holds a run; pass --overwrite to replace it")
  if args.eval_tasks < 2:
    raise ValueError(f"--eval-tasks must be >= 2, got {args.eval_tasks}")
  kw = {"xi": args.rate} if args.rate is not None else {"rank": args.rank}
  pruned = prune.prune(run.params, args.layer, args.module, **kw)
  names = prune.module_names(run.params, args.module)
  kept = {n: prune.kept_rank(run.params[n].shape, **kw) for n in names}
  dtype = run.params["W_Q"].dtype
  key = jax.random.key(args.eval_seed)
  before = train.evaluate(run.params, run.task, run.model, key, args.eval_tasks, dtype=dtype)
  after = train.evaluate(pruned, run.task, run.model, key, args.eval_tasks, dtype=dtype)
  d = run.task.d
  metrics = {"final_loss": after["loss"], "final_loss_se": after["loss_se"],
             "loss_before": before["loss"], "loss_before_se": before["loss_se"],
             "icl_error": after["loss"] / d, "icl_error_before": before["loss"] / d,
             "gd1_loss": after["gd1_loss"], "ridge_loss": after["ridge_loss"],
             "eval_tasks": args.eval_tasks, "eval_seed": args.eval_seed}
  pruning = {"from": str(run.path), "layers": list(args.layer), "module": args.module,
             "matrices": list(names), "xi": args.rate, "rank": args.rank, "kept_rank": kept}
  rundir.save_run(out, run.task, run.model, run.train, run.seed, pruned, metrics, extra={"pruning": pruning})
  what = f"ξ={args.rate}" if args.rate is not None else f"rank {args.rank}"
  print(f"{out}: pruned {args.module} ({', '.join(f'{n}→rank {r}' for n, r in kept.items())}) of layer(s) "
        f"{args.layer} at {what}")
  print(f"  ICL error (MSE/d) before {before['loss'] / d:.4f} ± {before['loss_se'] / d:.4f}, "
        f"after {after['loss'] / d:.4f} ± {after['loss_se'] / d:.4f} ({args.eval_tasks} held-out tasks)")
  return 0


def add_sweep(sub) -> None:
  p = sub.add_parser("sweep", help="prune every layer alone, per module and rate/rank (study a for one run)")
  p.add_argument("run", help="run directory (from `lintheory train`)")
  p.add_argument("--modules", nargs="+", default=None, choices=["q", "k", "v", "o", "attn", "mlp", "all"],
                 help="default: attn, q, k, v, and o / mlp when the model has them")
  p.add_argument("--layers", type=int, nargs="+", default=None, help="layers to prune one at a time (default all)")
  p.add_argument("--rates", type=float, nargs="+", default=None, help="clipping rates (default: the paper's)")
  p.add_argument("--ranks", type=int, nargs="+", default=None, help="kept ranks (instead of or besides rates)")
  p.add_argument("--eval-tasks", type=int, default=4096, help="held-out tasks for the ICL error")
  p.add_argument("--analysis-tasks", type=int, default=128, help="tasks for ŵ_t, norms and bound terms")
  p.add_argument("--block", type=int, default=16, help="configurations per jitted call")
  p.add_argument("--no-bounds", action="store_true", help="skip the bound columns")
  p.add_argument("--out", required=True, help="directory for sweep.csv and sweep.json (resumes if present)")
  p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
  _x64_for_run(args.run)
  import jax
  from lintheory.run import rundir, sweep
  from lintheory.core import prune

  run = rundir.load_run(args.run)
  modules = args.modules or [m for m in ("attn", "q", "k", "v", "o", "mlp")
                             if any(n in run.params for n in prune.MODULES[m])]
  rates = tuple(args.rates) if args.rates is not None else (() if args.ranks else prune.PAPER_RATES)
  cfg = sweep.SweepConfig(layers=tuple(args.layers) if args.layers else None, modules=tuple(modules),
                          rates=rates, ranks=tuple(args.ranks or ()), n_eval=args.eval_tasks,
                          n_analysis=args.analysis_tasks, block=args.block, bounds=not args.no_bounds)
  params_S = jax.tree_util.tree_map(lambda a: a[None], run.params)
  res = sweep.run(params_S, (run.seed,), run.model, run.task, cfg, out=args.out)
  print(f"{args.out}/sweep.csv: {len(res.rows)} rows, {res.evaluated} configurations evaluated in "
        f"{res.seconds:.1f} s (bound columns: {'yes' if res.meta['bounds'] else 'no'})")
  base = next((r["icl_error"] for r in res.rows if r["rank"] == min(run.params["W_Q"].shape[-2:])
               and r["module"] in ("attn", "q", "k", "v")), None)
  if base is not None:
    print(f"  unpruned ICL error (MSE/d) {base:.4f}")
  for m in modules:
    rs = [r for r in res.rows if r["module"] == m]
    best = min(rs, key=lambda r: r["icl_error"])
    what = f"ξ={best['xi']}" if best["mode"] == "rate" else f"rank {best['rank']}"
    print(f"  {m:>4}: best layer {best['layer']} at {what} (rank {best['rank']}): "
          f"{best['icl_error']:.4f} ± {best['icl_error_se']:.4f}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="lintheory", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for add in [add_train] + [globals()[n] for n in ("add_analyze", "add_prune", "add_sweep") if n in globals()]:
    add(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"lintheory {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
