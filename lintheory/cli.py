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
  p.add_argument("--out", required=True, help="run directory to write")
  p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint up to --steps")
  p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
  _enable_x64_if(args.dtype)
  import jax
  from lintheory import gd, io, train
  from lintheory.model import ModelConfig
  from lintheory.tasks import TaskConfig

  task = TaskConfig(d=args.d, n_context=args.n_context, noise_std=args.noise_std,
                    x_cov=tuple(args.x_cov_diag) if args.x_cov_diag else None)
  model = ModelConfig(d=args.d, n_layers=args.layers, n_heads=args.heads, use_W_O=args.output_proj,
                      mlp=args.mlp, attention=args.attention, init_scale=args.init_scale)
  tcfg = train.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                           dtype=args.dtype, chunk=min(100, args.steps))
  if args.eval_tasks < 1:
    raise ValueError(f"--eval-tasks must be >= 1, got {args.eval_tasks}")
  out = Path(args.out)
  state, prev_losses = None, np.zeros(0)
  if args.resume:
    run = io.load_run(out)
    fresh = train.init_state(model, tcfg, (args.seed,))
    opt_state, step = io.load_checkpoint(out, fresh.opt_state)
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
      io.save_run(out, task, model, tcfg, args.seed, train.seed_params(st.params, 0),
                  {"step": st.step, "finished": False}, np.concatenate(done))
      io.save_checkpoint(out, jax.tree_util.tree_map(lambda x: x, st.opt_state), st.step)

  res = train.fit(task, model, tcfg, seeds=(args.seed,), state=state, on_chunk=on_chunk)
  params = train.seed_params(res.params, 0)
  dtype = train.DTYPES[args.dtype]
  ev = train.evaluate(params, task, model, jax.random.key(10_000 + args.seed), args.eval_tasks, dtype=dtype)
  closed = gd.gd1_loss_for(task)
  metrics = {
      "final_loss": ev["loss"], "final_loss_se": ev["loss_se"],
      "gd1_loss": ev["gd1_loss"], "gd1_loss_se": ev["gd1_loss_se"],
      "eta_star": gd.eta_star(task.d, task.n_context, task.noise_std),
      "closed_form_loss": closed, "ridge_loss": ev["ridge_loss"],
      "eval_tasks": args.eval_tasks, "seconds": res.seconds, "step": res.state.step,
      "finished": res.diverged is None, "diverged": res.diverged,
  }
  io.save_run(out, task, model, tcfg, args.seed, params, metrics, np.concatenate(done))
  io.save_checkpoint(out, res.state.opt_state, res.state.step)
  print(f"{out}: final_loss {ev['loss']:.4f} ± {ev['loss_se']:.4f}, one-step GD at η* "
        f"{ev['gd1_loss']:.4f}, closed form {closed:.4f}, {res.seconds:.1f} s")
  if res.diverged:
    print(f"error: {res.diverged}", file=sys.stderr)
    return 1
  return 0


# --- analyze (implicit-GD analysis) -------------------------------------------------------

# --- prune / sweep (SVD pruning) ----------------------------------------------------------


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
