"""Everything `lintheory analyze` reports for one model: the Theorem-1 identity, per-layer
comparisons with the fitted references (core.compare), the ridge floor and the interpolation test.
Returns plain floats and lists ready for io.write_json.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lintheory.core import evaluate, implicit, learners, stats, tasks
from lintheory.core.compare import (compare, cosine, effective_steps, interpolate, interpolation_reason, mse,
                                    query_grad)
from lintheory.core.model import ModelConfig, Params, check_shapes, forward, layer_predictions
from lintheory.core.tasks import Batch, TaskConfig, batch_tokens
from lintheory.run import references


# --- everything for one model -----------------------------------------------------------------


def _floats(x):
  return np.asarray(x, np.float64).tolist()


@functools.partial(jax.jit, static_argnums=(1, 2))
def _measure(params: Params, cfg: ModelConfig, kinds: tuple, thetas: dict, batch: Batch, lam, avg_params: dict):
  """The array part of `analyze`, one compilation per architecture and reference set."""
  Z = batch_tokens(batch)
  traj = implicit.trajectory(params, Z, cfg)
  q = traj.states[1:, :, -1]
  ident = jnp.max(jnp.abs(implicit.reconstructed_queries(traj) - q), axis=(1, 2))  # as checks.trajectory_identity
  y_layers = layer_predictions(traj.states)
  grad_q = query_grad(params, batch, cfg)
  ridge_w = learners.ridge(batch.X, batch.y, lam)
  L = cfg.n_layers
  out = {"identity": ident, "identity_scale": jnp.max(jnp.abs(q)),
         "delta_W_fro": jnp.mean(jnp.linalg.norm(traj.delta_W, axis=(-2, -1)), -1),
         "G_fro": jnp.mean(jnp.linalg.norm(traj.G, axis=(-2, -1)), -1),
         "w_hat_norm": jnp.mean(jnp.linalg.norm(traj.w_hat, axis=-1), -1),
         "model_loss": mse(y_layers, batch.y_q),
         "ridge_loss": mse(jnp.einsum("bd,bd->b", ridge_w, batch.x_q), batch.y_q),
         "ridge_cos": jnp.mean(cosine(grad_q, ridge_w)), "refs": {}, "model_cos": {}, "interp": {},
         "median": {"model": jnp.median((y_layers[-1] - batch.y_q) ** 2),
                    "ridge": jnp.median((jnp.einsum("bd,bd->b", ridge_w, batch.x_q) - batch.y_q) ** 2)}}
  for kind in kinds:
    w_ref, y_ref = references.predict(kind, thetas[kind], batch, L)
    out["refs"][kind] = compare(traj.w_hat, y_layers, w_ref, y_ref, batch.y_q)
    out["median"][kind] = jnp.median((y_ref[-1] - batch.y_q) ** 2)
    out["model_cos"][kind] = jnp.mean(cosine(grad_q, w_ref[-1]))
  for kind, p in avg_params.items():
    out["interp"][kind] = mse(forward(p, Z)[0], batch.y_q)
  return out


def analyze(params: Params, cfg: ModelConfig, task: TaskConfig, refs: dict[str, references.Fitted],
            batch: Batch) -> dict:
  """All comparison metrics of one model on one batch, as plain floats and lists.

  Keys: identity (the Theorem 1 check, as checks.trajectory_identity), layers (per-layer lists),
  final (losses, model cos, final-layer comparisons), interpolation, refused ({kind: reason} for the
  references whose fit did not converge: they appear nowhere else).
  """
  check_shapes(params, cfg)
  L = cfg.n_layers
  refs, refused = references.usable(refs)  # an uncertified fit is not an optimum: nothing is compared with it
  for kind, f in refs.items():
    if len(f.eta) != L:
      raise ValueError(f"reference {kind!r} has {len(f.eta)} steps but the model has {L} layers")
  dt = batch.X.dtype
  kinds = tuple(refs)
  thetas = {k: {n: jnp.asarray(v, dt) for n, v in references.theta_of(f).items()} for k, f in refs.items()}
  reason = interpolation_reason(cfg)
  avg = {} if reason else {k: interpolate(params, references.construct(f, dt)) for k, f in refs.items()}
  m = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                             _measure(params, cfg, kinds, thetas, batch, learners.bayes_ridge_lambda(task.noise_std), avg))
  scale = max(float(m["identity_scale"]), float(np.finfo(np.dtype(dt)).tiny))
  layers = {"identity_max_abs_err": _floats(m["identity"]), "delta_W_fro": _floats(m["delta_W_fro"]),
            "G_fro": _floats(m["G_fro"]), "w_hat_norm": _floats(m["w_hat_norm"]),
            "model_loss": _floats(m["model_loss"]),
            "references": {k: {n: _floats(v) for n, v in m["refs"][k].items()} for k in kinds}}
  losses = {"model": layers["model_loss"][-1], "ridge": float(m["ridge_loss"])}
  losses.update({k: layers["references"][k]["loss"][-1] for k in kinds})
  # the median squared error too: deep trained models can have a heavy tail of exploding tasks
  final = {"losses": losses, "median_sq_err": {k: float(v) for k, v in m["median"].items()}, "model_cos": {"ridge": float(m["ridge_cos"]), **{k: float(v) for k, v in m["model_cos"].items()}},
           "references": {k: {n: v[-1] for n, v in layers["references"][k].items()} for k in kinds}}
  if reason is None:
    layers.update({k: _floats(v) for k, v in effective_steps(params).items()})
  interp = {"reason": reason, "alpha": 0.5, "loss_model": losses["model"], **{k: float(v) for k, v in m["interp"].items()}}
  max_abs = float(m["identity"].max())
  return {"identity": {"exact": cfg.is_linear, "max_abs_err": max_abs, "max_rel_err": max_abs / scale},
          "layers": layers, "final": final, "interpolation": interp, "refused": refused}


# --- a run directory's analysis.json --------------------------------------------------------


def tails(params: Params, cfg: ModelConfig, task: TaskConfig, refs: dict[str, references.Fitted], key: jax.Array,
          n: int) -> dict:
  """Exact per-task errors (÷ d) on n fresh tasks: the model, each usable reference, the Bayes floor."""
  out = {"units": "squared error of y_hat / d, exact per task for linear attention (sampled query otherwise)",
         "model": stats.summary(evaluate.errors(params, cfg, task, key, n))}
  if cfg.is_linear and cfg.n_heads == 1 and not cfg.use_W_O:
    for kind, f in references.usable(refs)[0].items():
      out[kind] = stats.summary(evaluate.errors(references.construct(f), cfg, task, key, n))
  out["bayes"] = stats.summary(evaluate.bayes_errors(task, key, n))
  return out


def per_layer_records(layers: dict) -> list[dict]:
  """analyze's per-layer lists → one record per layer k = 0..L−1 (prune --layer's index), holding what
  the model has after that layer (its iterate ŵ, its prediction's loss)."""
  recs = []
  for t in range(len(layers["model_loss"])):
    rec = {"layer": t}
    rec.update({k: v[t] for k, v in layers.items() if k != "references"})
    rec["references"] = {kind: {k: v[t] for k, v in m.items()} for kind, m in layers["references"].items()}
    recs.append(rec)
  return recs


def of_run(run, fit_cfg: references.FitConfig, cache_dir, eval_tasks: int, tail_tasks: int, eval_seed: int,
           provenance: dict) -> dict:
  """A run directory's analysis.json (call inside precision.x64()): analyze on eval_tasks held-out tasks
  of key eval_seed, tails on tail_tasks others, the references compared and the run it is of."""
  params = {k: jnp.asarray(v, jnp.float64) for k, v in run.params.items()}
  refs = references.fitted(run.task, run.model.n_layers, fit_cfg, cache_dir)
  batch = tasks.sample(jax.random.key(eval_seed), run.task, eval_tasks, dtype=jnp.float64)
  out = analyze(params, run.model, run.task, refs, batch)
  ident = dict(out["identity"])
  ident["note"] = ("Theorem 1 holds exactly: deviation is float64 round-off" if ident["exact"] else
                   f"Theorem 1 does not cover attention={run.model.attention!r}, mlp={run.model.mlp!r}: "
                   "this is the measured deviation of (I + W_t) h^0 from the forward pass")
  return {"run": str(run.path), "task": dataclasses.asdict(run.task), "model": dataclasses.asdict(run.model),
          "seed": run.seed, "eval_tasks": eval_tasks, "eval_seed": eval_seed, "dtype": "float64",
          "fit": dataclasses.asdict(fit_cfg), "identity": ident, "layers": per_layer_records(out["layers"]),
          "final": out["final"],
          "tails": tails(params, run.model, run.task, refs, jax.random.fold_in(jax.random.key(eval_seed), 1),
                         tail_tasks),
          "interpolation": out["interpolation"], "references": {k: references.record(f) for k, f in refs.items()},
          "refused": out["refused"], "params_sha256": run.manifest["files"]["params.npz"], "provenance": provenance}


def summary(result: dict) -> list[str]:
  """Two lines on an analysis.json: the expected error and its tail, the identity and the final losses."""
  t, bayes, ident, fl = result["tails"]["model"], result["tails"]["bayes"], result["identity"], result["final"]["losses"]
  return [f"{result['run']}: expected error (÷ d) on {t['n']:,} tasks: mean {t['mean']:.4g} "
          f"[{t['mean_ci_lo']:.4g}, {t['mean_ci_hi']:.4g}], median {t['median']:.4g}, p99 {t['p99']:.4g}, "
          f"p99.99 {t['p9999']:.4g}, max {t['max']:.4g}; Bayes {bayes['mean']:.4g}",
          f"{Path(result['run']) / 'analysis.json'}: L={result['model']['n_layers']} identity max |err| "
          f"{ident['max_abs_err']:.1e} (exact={ident['exact']}); loss model {fl['model']:.4f}, "
          + ", ".join(f"{k} {fl[k]:.4f}" for k in (*references.KINDS, "ridge") if k in fl)]


def architecture(run) -> str:
  """A run's task and model configuration, as the fields that differ from the defaults."""
  parts = [f"{k}={v}" for cfg in (run.task, run.model) for k, v in dataclasses.asdict(cfg).items()
           if v != getattr(type(cfg), k, None) or k in ("d", "n_context", "n_layers")]
  return ", ".join(dict.fromkeys(parts))


def pooled(results: list[dict], runs) -> list[str]:
  """Mean ± sd of each final loss over the runs of one task and model (architecture), where there are several."""
  finals = {}
  for result, run in zip(results, runs):
    finals.setdefault(architecture(run), []).append(result["final"]["losses"])
  lines = []
  for arch, group in finals.items():
    if len(group) > 1:
      lines.append(f"over {len(group)} runs of {arch}:")
      for k in group[0]:
        v = np.array([f[k] for f in group])
        lines.append(f"  {k} loss {v.mean():.4f} ± {v.std(ddof=1):.4f} (sd)")
  return lines
