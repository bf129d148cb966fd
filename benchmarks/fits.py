"""Same-run speed ratio: one step of fitting the explicit references, data form vs moment form.

Fitting (run.references.fit_many) minimises the summed query MSE of the four references by Adam on
fresh tasks. Its loss can run the learners on the demonstrations (references.predict: O(N d) per task
and step) or on their moments Σ̂ = XᵀX/N, b = Xᵀy/N (references.final_iterate: O(d²), docs/theory.md
§3); the fit uses the second. Both are timed here in one process, on the same batches, as a jitted
loss-and-gradient step with the batch sampled inside (as in the fit): the median of --repeats
timings of --steps steps, wall and CPU seconds, warm (compiled once before timing), and the compile
time of each. The two forms' losses are printed to show they agree.
Run `flock /tmp/lintheory-bench.lock python benchmarks/fits.py [--d 5] [--n-context 20] [--layers 1 4 6]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from lintheory.core import learners, tasks
from lintheory.run import references, runtime


def losses(form: str, theta: dict, batch: tasks.Batch, L: int) -> jax.Array:
  """The four references' query MSE on one batch, through one form."""
  if form == "data":
    y_hat = {k: references.predict(k, theta[k], batch, L)[1][-1] for k in references.KINDS}
  else:
    Sigma_hat, b = learners.moments(batch.X, batch.y)
    y_hat = {k: (references.final_iterate(k, theta[k], Sigma_hat, b, L) * batch.x_q).sum(-1)
             for k in references.KINDS}
  return jnp.stack([jnp.mean((y_hat[k] - batch.y_q) ** 2) for k in references.KINDS])


def steps_fn(form: str, task: tasks.TaskConfig, L: int, batch_size: int, n_steps: int):
  """jit(theta → (losses of the first step, summed gradient norm)) over n_steps fresh batches."""
  def run(theta):
    def step(acc, i):
      batch = tasks.sample(jax.random.fold_in(jax.random.key(0), i), task, batch_size)
      value, grads = jax.value_and_grad(lambda t: jnp.sum(losses(form, t, batch, L)))(theta)
      return acc + sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads)), value
    acc, values = jax.lax.scan(step, jnp.zeros(()), jnp.arange(n_steps))
    return values[0], acc
  return jax.jit(run)


def main(argv=None) -> int:
  runtime.configure()  # before JAX's first computation
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--d", type=int, default=5)
  ap.add_argument("--n-context", type=int, default=20)
  ap.add_argument("--layers", type=int, nargs="+", default=[1, 4, 6])
  ap.add_argument("--batch-size", type=int, default=512)
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args(argv)
  if min(args.d, args.n_context, args.batch_size, args.steps, args.repeats, *args.layers) < 1:
    print("--d, --n-context, --layers, --batch-size, --steps and --repeats must be >= 1", file=sys.stderr)
    return 2
  task = tasks.TaskConfig(d=args.d, n_context=args.n_context)
  print(f"d={args.d} N={args.n_context} batch {args.batch_size}, {args.steps} steps per timing, median of "
        f"{args.repeats}; float32 (as the fit)")
  for L in args.layers:
    theta = {k: references.init_theta(k, args.d, L, learners.eta_star(args.d, args.n_context)) for k in references.KINDS}
    out = {}
    for form in ("data", "moments"):
      fn = steps_fn(form, task, L, args.batch_size, args.steps)
      t0 = time.perf_counter()
      loss0, _ = jax.block_until_ready(fn(theta))
      compile_s = time.perf_counter() - t0
      walls, cpus = [], []
      for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(theta))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
      out[form] = (statistics.median(walls) / args.steps * 1e3, statistics.median(cpus) / args.steps * 1e3,
                   compile_s, loss0)
    (dw, dc, dcomp, dl), (mw, mc, mcomp, ml) = out["data"], out["moments"]
    print(f"L={L}: data form {dw:.2f} ms/step wall ({dc:.2f} CPU), moments {mw:.2f} ({mc:.2f}); "
          f"speed-up {dw / mw:.2f}× wall, {dc / mc:.2f}× CPU; first call (compile + one run) {dcomp:.1f} s vs "
          f"{mcomp:.1f} s; largest relative loss difference {float(jnp.max(jnp.abs(dl - ml) / dl)):.1e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
