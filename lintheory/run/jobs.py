"""The work `lintheory train` and `lintheory prune` do on run directories, callable without a command line.

Each function takes validated configurations (the CLI checks its flags first), writes the run directory
atomically (rundir.save_run) and returns the numbers the CLI prints. Call them inside the run's precision
(core.precision.for_dtype).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import learners, precision, prune
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run import io, rundir, train


def train_run(out: Path, task: TaskConfig, model: ModelConfig, tcfg: train.TrainConfig, seed: int,
              saved: rundir.Run | None, eval_tasks: int, checkpoint_every: int, provenance: dict) -> tuple[dict, dict]:
  """Train into `out` (from `saved`'s checkpoint when resuming), saving the run every checkpoint_every
  steps and at the end; → (metrics.json's contents, train.evaluate's numbers on eval_tasks fresh tasks)."""
  state, prev = None, np.zeros((1, 0), np.float32)
  if saved is not None:
    fresh = train.init_state(model, tcfg, (seed,))
    opt_state, step, prev = rundir.load_checkpoint(saved, fresh.opt_state)
    if step > tcfg.steps:
      raise ValueError(f"--steps {tcfg.steps} is below the {step} steps the run at {out} has done")
    state = train.resumed(fresh, {k: jnp.asarray(v)[None] for k, v in saved.params.items()}, opt_state, step)
    print(f"resuming {out} from step {step}", file=sys.stderr)
  done = [np.asarray(prev)]
  last_save = [state.step if state else 0]

  def on_chunk(st, chunk_losses):
    io.progress(f"  step {st.step:>6}/{tcfg.steps}  loss {float(chunk_losses[0, -1]):.4f}",
                final=st.step >= tcfg.steps)
    done.append(np.asarray(chunk_losses))
    if st.step < tcfg.steps and st.step // checkpoint_every > last_save[0] // checkpoint_every:
      losses = np.concatenate(done, axis=1)
      rundir.save_run(out, task, model, tcfg, seed, {k: np.asarray(v[0]) for k, v in st.params.items()},
                      {"step": st.step, "finished": False}, losses[0],
                      checkpoint=rundir.checkpoint_arrays(st.opt_state, st.step, losses), provenance=provenance)
      last_save[0] = st.step

  res = train.fit(task, model, tcfg, seeds=(seed,), state=state, on_chunk=on_chunk)
  params = {k: np.asarray(v[0]) for k, v in res.params.items()}
  ev = train.evaluate(params, task, model, jax.random.key(10_000 + seed), eval_tasks,
                      dtype=precision.DTYPES[tcfg.dtype])
  losses = np.concatenate(done, axis=1)
  metrics = {
      "final_loss": ev["loss"], "final_loss_se": ev["loss_se"],
      "gd1_loss": ev["gd1_loss"], "gd1_loss_se": ev["gd1_loss_se"],
      "eta_star": learners.eta_star(task.d, task.n_context, task.noise_std),
      "closed_form_loss": learners.gd1_loss_for(task), "ridge_loss": ev["ridge_loss"],
      "eval_tasks": eval_tasks, "seconds": res.seconds, "step": res.state.step,
      "finished": res.diverged is None, "skipped_steps": int(res.skipped[0]), **train.outcome(ev, res.diverged),
  }
  rundir.save_run(out, task, model, tcfg, seed, params, metrics, losses[0],
                  checkpoint=rundir.checkpoint_arrays(res.state.opt_state, res.state.step, losses),
                  provenance=provenance)
  return metrics, ev


def prune_run(run: rundir.Run, out: Path, layers: list[int], module: str, eval_tasks: int, eval_seed: int,
              provenance: dict, xi: float | None = None, rank: int | None = None) -> tuple[dict, dict, dict]:
  """`module` of `layers` SVD-pruned at rate xi or rank (core.prune), evaluated before and after on the
  same eval_tasks held-out tasks of key eval_seed, saved to `out` with where it came from;
  → (before, after: train.evaluate's numbers, kept: matrix → kept rank)."""
  kw = {"xi": xi} if xi is not None else {"rank": rank}
  names = prune.module_names(run.params, module)
  kept = {n: prune.kept_rank(run.params[n].shape, **kw) for n in names}
  params = {k: jax.numpy.asarray(v) for k, v in run.params.items()}
  pruned = {k: np.asarray(v) for k, v in prune.prune(params, layers, module, **kw).items()}
  dtype = params["W_Q"].dtype
  key = jax.random.key(eval_seed)
  before = train.evaluate(params, run.task, run.model, key, eval_tasks, dtype=dtype)
  after = train.evaluate(pruned, run.task, run.model, key, eval_tasks, dtype=dtype)
  for when, ev in (("before", before), ("after", after)):
    if not all(math.isfinite(ev[k]) for k in ("loss", "loss_se")):
      raise ValueError(f"the ICL error {when} pruning is not finite on {eval_tasks} tasks "
                       "(the model overflows); nothing written")
  d = run.task.d
  metrics = {"final_loss": after["loss"], "final_loss_se": after["loss_se"],
             "loss_before": before["loss"], "loss_before_se": before["loss_se"],
             "icl_error": after["loss"] / d, "icl_error_before": before["loss"] / d,
             "gd1_loss": after["gd1_loss"], "ridge_loss": after["ridge_loss"],
             "eval_tasks": eval_tasks, "eval_seed": eval_seed}
  pruning = {"from": str(run.path), "from_params_sha256": run.manifest["files"]["params.npz"],
             "layers": list(layers), "module": module, "matrices": list(names), "xi": xi,
             "rank": rank, "kept_rank": kept}
  rundir.save_run(out, run.task, run.model, run.train, run.seed, pruned, metrics, extra={"pruning": pruning},
                  provenance=provenance)
  return before, after, kept
