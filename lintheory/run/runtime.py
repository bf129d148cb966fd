"""The XLA CPU runtime settings every entry point applies before JAX's first computation.

jaxlib 0.10's batched LAPACK kernels (LU, SVD, QR, eigh, ...) split their batch over XLA's intra-op
thread pool and block until the parts are done. XLA:CPU's default scheduler lets independent operations
of one program run side by side; when as many such kernels start together as the pool has threads (two
on a 2-core machine: e.g. two independent batched solves), no thread is left for the parts and the
process hangs with every thread idle (seen in a study and in tests/test_runtime.py's reproducer). XLA's
memory-optimising scheduler, which the flag below selects, orders the program so that it does not
happen: the reproducer that hangs in every run without the flag completes with it. The flag is not
enough where a program holds many independent batched solves (the spent-label errors at d = 16 hung with
it): core.evaluate.after orders those by a data dependency, and both are needed there.
"""

from __future__ import annotations

import os

CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def configure() -> None:
  """Add CPU_FLAGS to XLA_FLAGS, keeping a value the user set for the same flag. XLA reads its flags
  once per process, at the first computation: call this before it (entry points do, first thing)."""
  flags = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in CPU_FLAGS if f.split("=")[0] not in flags]
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
