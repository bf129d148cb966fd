"""Do 1 and K devices give the same numbers? The same seeds trained, and the same configurations
swept, on a mesh of 1 device and on a mesh of K forced host devices, and how far apart they land.

  python -m lintheory.run.device_check [--devices 4] [--out results/device_check.json]

XLA_FLAGS must be set before JAX starts, so the runs happen in a subprocess (`--worker`). The table
in docs/scale-out.md is written from the JSON by `make report`; tests/test_sharding.py holds the
same runs to TOLERANCE and ULPS.

The setting: 4 seeds of `train.fit` (d = 3, N = 5, L = 2, 20 steps, batch 64, lr 1e-2, clipping at
1) with the state sharded over the mesh, and 8 SVD truncations of W_Q vmapped over the mesh (ICL
error on 256 tasks and ‖ΔW_t‖_F of the implicit trajectory, docs/theory.md §5); float64 and float32.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from lintheory.run import runtime

DTYPES = ("float64", "float32")
SEEDS = (0, 1, 2, 3)
# Parameters may differ by this much relative to each matrix's largest weight: the partitioned
# program is compiled through XLA's SPMD pipeline, whose simplifier rewrites optax's 1/sqrt as rsqrt
# and fuses some reductions differently, and training carries that round-off forward.
TOLERANCE = {"float64": 1e-13, "float32": 2e-5}
ULPS = 2  # losses and sweep metrics, in units in the last place


def worker(out: str, sizes: list[int]) -> None:
  """Run the setting on jax.devices()[:k] for each k in sizes; save every array to out (.npz)."""
  import jax
  jax.config.update("jax_enable_x64", True)  # float32 work below runs in 32-bit scopes
  import jax.numpy as jnp
  from lintheory.core import implicit, model, precision, prune, tasks
  from lintheory.run import sharding, train

  task, cfg = tasks.TaskConfig(d=3, n_context=5), model.ModelConfig(d=3, n_layers=2, init_scale=0.02)  # the init the recorded checks ran with
  arrays = {}
  for k, dtype in [(k, dt) for k in sizes for dt in DTYPES]:
    mesh = sharding.seed_mesh(devices=jax.devices()[:k])
    tc = train.TrainConfig(steps=20, batch_size=64, lr=1e-2, warmup=2, chunk=10, dtype=dtype)
    with precision.for_dtype(dtype):
      state = sharding.shard_leading(train.init_state(cfg, tc, SEEDS), mesh)
    res = train.fit(task, cfg, tc, seeds=SEEDS, state=state)
    if res.diverged is not None:
      raise RuntimeError(f"training diverged on {k} devices ({dtype}): {res.diverged}")
    arrays[f"{k}/{dtype}/train/losses"] = res.losses
    arrays[f"{k}/{dtype}/train/sharded"] = np.asarray(sharding.is_sharded(res.params["W_Q"]))
    arrays.update({f"{k}/{dtype}/train/{n}": v for n, v in sharding.gather(res.params).items()})
    with precision.for_dtype(dtype):
      dt = jnp.dtype(dtype)
      p = model.init_params(jax.random.key(7), cfg, dt)
      b = tasks.sample(jax.random.key(8), task, 256, dtype=dt)
      Z = tasks.batch_tokens(b)
      U, s, Vh = jnp.linalg.svd(p["W_Q"], full_matrices=False)
      keeps = jnp.asarray([[r0, r1] for r0 in (4, 3, 2, 1) for r1 in (4, 1)], jnp.int32)  # [C=8, L]

      def evaluate(keep_L):
        q = {**p, "W_Q": prune.truncate_with_svd(U, s, Vh, keep_L)}
        y_hat, _ = model.forward(q, Z, cfg)
        err = tasks.normalised_error((y_hat - b.y_q) ** 2, task.d)
        dW = implicit.trajectory(q, Z, cfg).delta_W
        return {"icl_error": jnp.mean(err), "dW_norm": jnp.mean(jnp.sqrt(jnp.sum(dW**2, (-2, -1))), 1)}

      m = jax.jit(jax.vmap(evaluate))(sharding.shard_leading(keeps, mesh))
      arrays[f"{k}/{dtype}/sweep/sharded"] = np.asarray(sharding.is_sharded(m["icl_error"]))
      arrays.update({f"{k}/{dtype}/sweep/{n}": v for n, v in sharding.gather(m).items()})
  np.savez(out, **arrays)


def run(n_devices: int, sizes: str, workdir: str | os.PathLike) -> dict[str, np.ndarray]:
  """worker(sizes) in a fresh process that sees n_devices forced host (CPU) devices."""
  out = Path(workdir) / f"devices_{n_devices}_{sizes.replace(',', '_')}.npz"
  root = Path(__file__).resolve().parents[2]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
         "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}"}
  r = subprocess.run([sys.executable, "-m", "lintheory.run.device_check", "--worker", str(out), sizes], env=env,
                     capture_output=True, text=True, timeout=600)
  if r.returncode != 0:
    raise RuntimeError(f"the {n_devices}-device worker failed:\n{r.stderr[-3000:]}")
  return dict(np.load(out))


def by_mesh(arrays: dict, k: int) -> dict:
  """The arrays of the mesh of k devices, keyed "dtype/part/name"."""
  return {name.split("/", 1)[1]: v for name, v in arrays.items() if name.startswith(f"{k}/")}


def ulps(a: np.ndarray, b: np.ndarray) -> float:
  """The largest difference in units of the last place of the larger magnitude."""
  return float(np.max(np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b)))))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
  """max |a − b| relative to the largest |a|, per leading row (one model), then the largest."""
  axes = tuple(range(1, a.ndim))
  return float(np.max(np.max(np.abs(a - b), axis=axes) / np.max(np.abs(a), axis=axes)))


def compare(one: dict, many: dict) -> dict:
  """Per dtype: how far the many-device numbers are from the 1-device ones, and, for scale, how far
  apart two different seeds' models are and the two closest configurations' ICL errors, which is
  what a seed or configuration out of place would show."""
  out = {}
  for dt in DTYPES:
    tr = lambda n, d: d[f"{dt}/train/{n}"]  # noqa: E731
    sw = lambda n, d: d[f"{dt}/sweep/{n}"]  # noqa: E731
    losses = tr("losses", one), tr("losses", many)
    e = np.sort(sw("icl_error", one))
    W = {n: (tr(n, one), tr(n, many)) for n in ("W_Q", "W_K", "W_V")}
    out[dt] = {
        "losses": {"n": int(losses[0].size), "differ": int(np.sum(losses[0] != losses[1])),
                   "max_ulps": ulps(*losses)},
        "params": {"steps": 20, "max_rel": max(_rel(a, b) for a, b in W.values()),
                   "share_differ": [float(np.mean(a != b)) for a, b in W.values()]},
        "sweep": {n: ulps(sw(n, one), sw(n, many)) for n in ("icl_error", "dW_norm")},
        "misplaced": {"params_rel": min(_rel(a, np.roll(a, 1, axis=0)) for a, _ in W.values()),
                      "icl_error_ulps": min(ulps(x, y) for x, y in zip(e[:-1], e[1:]))},
        "sharded": bool(tr("sharded", many)) and bool(sw("sharded", many)),
    }
  return out


def within_tolerance(c: dict) -> bool:
  return all(c[dt]["params"]["max_rel"] <= TOLERANCE[dt] and c[dt]["losses"]["max_ulps"] <= ULPS
             and max(c[dt]["sweep"].values()) <= ULPS for dt in DTYPES)


def cpu_model() -> dict:
  """The CPU's name and whether it has AVX-512 (Linux /proc/cpuinfo; None elsewhere): round-off of
  vectorised code depends on the instruction set."""
  try:
    info = Path("/proc/cpuinfo").read_text()
  except OSError:
    return {"model": None, "avx512": None}
  names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
  flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
  return {"model": names[0] if names else None, "avx512": " avx512f" in flags}


def main(argv=None) -> int:
  runtime.configure()  # before JAX's first computation
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["--worker"]:
    worker(argv[1], [int(k) for k in argv[2].split(",")])
    return 0
  ap = argparse.ArgumentParser(prog="python -m lintheory.run.device_check", description=__doc__.splitlines()[0])
  # the mesh must divide the 4 seeds and the 8 configurations
  ap.add_argument("--devices", type=int, default=4, choices=(2, 4), help="forced host devices of the sharded run")
  ap.add_argument("--out", default="results/device_check.json")
  args = ap.parse_args(argv)
  from lintheory.run import io, provenance
  with tempfile.TemporaryDirectory() as tmp:
    arrays = run(args.devices, f"1,{args.devices}", tmp)
  c = compare(by_mesh(arrays, 1), by_mesh(arrays, args.devices))
  io.write_json(args.out, {"devices": args.devices, "seeds": len(SEEDS), "configurations": 8, "compare": c,
                           "tolerance": {"params_rel": TOLERANCE, "ulps": ULPS}, "within_tolerance": within_tolerance(c),
                           "cpu": cpu_model(), "provenance": provenance.collect()})
  print(f"{args.out}: within tolerance: {within_tolerance(c)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
