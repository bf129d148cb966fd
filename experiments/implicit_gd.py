"""Study: do trained L-layer linear transformers follow gradient descent? (issue 3, docs/theory.md §3–5, §9)

For L = 1, 2, 3, 4, 6 layers (d = 10, N = 20, σ = 0, and a noisy setting σ = 0.5) and several
seeds: trains the models (lintheory.run.profiles, cached), fits the explicit references of depth L
(lintheory.run.references, cached), reads every model's implicit trajectory (Theorem 1) and compares
it layer by layer with each reference (lintheory.run.analysis). Also the loss at test-time context
sizes M ≠ N against the one-layer closed form. Writes results/implicit_gd.json (data only).

  python experiments/implicit_gd.py --profile default --results results
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # every metric in float64; training stays float32

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lintheory.core import learners, tasks  # noqa: E402
from lintheory.run import io, analysis, references, profiles  # noqa: E402
from lintheory.core.model import forward  # noqa: E402

D_IN, N_CTX = 10, 20
# Per profile: layers trained for each noise level, and the test-time context sizes M.
SETTINGS = {
    "default": {"layers": {0.0: (1, 2, 3, 4, 6), 0.5: (1, 2, 4)}, "M": (5, 10, 20, 40, 80)},
    "full": {"layers": {0.0: (1, 2, 3, 4, 6), 0.5: (1, 2, 3, 4, 6)}, "M": (5, 10, 15, 20, 30, 40, 80, 160)},
}
EVAL_SEED = 31_415


def stack(records: list):
  """A list (over seeds) of equally nested dicts of floats/lists → one dict of [S, ...] lists."""
  first = records[0]
  if isinstance(first, dict):
    return {k: stack([r[k] for r in records]) for k in first}
  if first is None or isinstance(first, (str, bool)):
    return first
  return np.asarray(records, np.float64)


def summary(x):
  """Mean and sd over the seed axis of every array in a stacked dict."""
  if isinstance(x, dict):
    return {k: summary(v) for k, v in x.items()}
  if isinstance(x, np.ndarray):
    return {"mean": x.mean(0), "sd": x.std(0, ddof=1) if x.shape[0] > 1 else np.zeros_like(x[0])}
  return x


def m_sweep(tr: profiles.Trained, Ms, n_tasks: int) -> dict:
  """Loss of every seed's model at test-time context sizes M, beside the ridge floor."""
  loss, ridge = [], []
  for M in Ms:
    b = tasks.sample(jax.random.key(EVAL_SEED + M), tr.task, n_tasks, n_context=M, dtype=jnp.float64)
    Z = tasks.batch_tokens(b)
    per_seed = [float(analysis.mse(forward(profiles.seed_params(tr.params, i), Z, tr.model)[0].astype(jnp.float64),
                                  b.y_q)) for i in range(len(tr.seeds))]
    loss.append(per_seed)
    w = learners.ridge(b.X, b.y, learners.bayes_ridge_lambda(tr.task.noise_std))
    ridge.append(float(analysis.mse(jnp.einsum("bd,bd->b", w, b.x_q), b.y_q)))
  return {"M": list(Ms), "loss": np.asarray(loss).T, "ridge": ridge}


def run_setting(prof: profiles.Profile, noise: float, L: int, Ms, fit_cfg, cache_dir: str) -> dict:
  t0 = time.perf_counter()
  tr = profiles.trained(prof, d=D_IN, n_context=N_CTX, layers=L, noise_std=noise, cache_dir=cache_dir)
  t_train = time.perf_counter() - t0
  refs = references.fitted(tr.task, L, fit_cfg, cache_dir)
  batch = tasks.sample(jax.random.key(EVAL_SEED), tr.task, prof.eval_tasks, dtype=jnp.float64)
  per_seed = []
  for i in range(len(tr.seeds)):
    params = {k: jnp.asarray(v, jnp.float64) for k, v in profiles.seed_params(tr.params, i).items()}
    per_seed.append(analysis.analyze(params, tr.model, tr.task, refs, batch))
  st = stack(per_seed)
  out = {"noise_std": noise, "L": L, "seeds": list(tr.seeds), "train_steps": tr.train.steps,
         "train_loss_tail": tr.losses[:, -max(1, tr.losses.shape[1] // 20):].mean(1),
         "identity_max_abs_err": st["identity"]["max_abs_err"], "layers": st["layers"], "final": st["final"],
         "interpolation": {k: v for k, v in st["interpolation"].items() if k not in ("reason", "alpha")},
         "summary": summary({"final": st["final"], "layers": st["layers"]}),
         "references": {k: {"eta": f.eta, "gamma": f.gamma, "P_diag_mean": f.P.diagonal(0, 1, 2).mean(-1),
                            "train_loss": f.train_loss} for k, f in refs.items()},
         "closed_form": {"gd1_loss_star": learners.gd1_loss_star(D_IN, N_CTX, noise), "eta_star": learners.eta_star(D_IN, N_CTX, noise)}}
  if noise == 0.0:
    out["m_sweep"] = m_sweep(tr, Ms, prof.eval_tasks)
    out["m_sweep"]["gd1_closed_form"] = [learners.gd1_loss_at(D_IN, N_CTX, M) for M in Ms]
  fl = out["summary"]["final"]["losses"]
  print(f"σ={noise} L={L}: model {fl['model']['mean']:.4f} ± {fl['model']['sd']:.4f}; "
        + ", ".join(f"{k} {fl[k]['mean']:.4f}" for k in (*references.KINDS, "ridge"))
        + f"  ({t_train:.0f} s train, {time.perf_counter() - t0:.0f} s total)", flush=True)
  return out


def main(argv=None) -> int:
  ap = profiles.study_parser(__doc__)
  ap.add_argument("--cache-dir", default="runs/cache", help="trained models and fitted references")
  args = ap.parse_args(argv)
  prof, setting = profiles.profile(args.profile), SETTINGS[args.profile]
  fit_cfg = references.FitConfig()
  t0 = time.perf_counter()
  runs, failed = [], []
  for noise, Ls in setting["layers"].items():
    for L in Ls:
      try:
        runs.append(run_setting(prof, noise, L, setting["M"], fit_cfg, args.cache_dir))
      except RuntimeError as e:  # a diverged training run is reported, not hidden
        print(f"σ={noise} L={L}: {e}", file=sys.stderr)
        failed.append({"noise_std": noise, "L": L, "error": str(e)})
  out = {"study": "implicit_gd", "profile": args.profile, "d": D_IN, "N": N_CTX, "kinds": list(references.KINDS),
         "labels": references.LABELS, "train": {"steps": prof.steps, "batch_size": prof.batch_size, "init_scale": prof.init_scale,
                                                 "seeds": list(prof.seeds),
                                                 "recipes": [dataclasses.asdict(r) for r in prof.recipes]},
         "eval_tasks": prof.eval_tasks, "fit": dataclasses.asdict(fit_cfg),
         "runs": runs, "failed": failed, "seconds": time.perf_counter() - t0}
  path = Path(args.results) / "implicit_gd.json"
  io.write_json(path, out)
  print(f"wrote {path} ({out['seconds']:.0f} s)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
