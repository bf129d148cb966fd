"""The XLA CPU settings every entry point applies (lintheory.run.runtime)."""

import os
import subprocess
import sys

import pytest

from lintheory.run import runtime

# Two independent batched solves and two batched pseudo-inverses in one program, run repeatedly: with
# XLA's default CPU scheduler on a 2-thread pool this hangs (jaxlib 0.10's LAPACK kernels wait on the
# pool they occupy); it must finish with runtime.configure().
REPRODUCER = """
import sys
from lintheory.run import runtime
if sys.argv[1] == "on":
  runtime.configure()
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
f = jax.jit(lambda A, B: jnp.linalg.solve(A, A[..., :1]).sum() + jnp.linalg.pinv(B).sum()
            + jnp.linalg.solve(B, B[..., :1]).sum() + jnp.linalg.pinv(A).sum())
A, B = (jax.random.normal(k, (4000, 6, 6)) for k in jax.random.split(jax.random.key(0)))
for i in range(100):
  f(A + i, B * i).block_until_ready()
print("done")
"""


def test_configure_adds_the_flag_once_and_keeps_a_users_value(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  runtime.configure()
  runtime.configure()
  assert os.environ["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=0", *runtime.CPU_FLAGS]
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true")
  runtime.configure()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
  monkeypatch.delenv("XLA_FLAGS")
  runtime.configure()
  assert os.environ["XLA_FLAGS"] == " ".join(runtime.CPU_FLAGS)


@pytest.mark.slow
def test_independent_batched_linear_algebra_in_one_program_finishes_with_the_runtime_settings():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", REPRODUCER, "on"], env=env, capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == "done", out.stderr[-2000:]


# The program that hung a positive_control run with the flag set: the Bayes and ridge errors of the spent
# validation labels at d = 16, a dozen batched solves that no data dependency ordered (evaluate.after now does).
SPENT = """
from lintheory.run import runtime
runtime.configure()
import jax, jax.numpy as jnp
from lintheory.core import precision, protocol
from lintheory.core.tasks import TaskConfig
task = TaskConfig(d=16, n_context=10, noise_std=1.0)
with precision.x64():
  for i in range(3):
    data = protocol.sample_data(jax.random.key(i), task, 2000, 256, 0, jnp.float64)
    jax.block_until_ready(protocol.spent_errors(data, task, 10, (16, 64, 256), (0.0, 0.5)))
print("done")
"""


@pytest.mark.slow
def test_the_spent_label_errors_at_d16_finish():
  out = subprocess.run([sys.executable, "-c", SPENT], capture_output=True, text=True, timeout=180)
  assert out.stdout.strip() == "done", out.stderr[-2000:]
