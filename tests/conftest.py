"""Shared fixtures. Tests run in float64 through the project's one precision switch."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# Tests compile hundreds of small programs and run each once: XLA's cheapest CPU pipeline halves
# compile time, and every assertion is a tolerance or a comparison of two programs compiled alike.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
from lintheory.run import runtime  # noqa: E402  (after the flags above: configure() adds to them)

runtime.configure()  # as every entry point does, before the first computation


@pytest.fixture(scope="session", autouse=True)
def _float64():
  """Exact identities are stated in float64; code that trains in float32 scopes its own precision.
  Session-wide, so module-scoped fixtures are built in float64 too."""
  from lintheory.core import precision
  with precision.x64():
    yield


def batch64(d, N, B=16, seed=0, noise_std=0.0, x_scale=None):
  """A float64 batch drawn with numpy (no sampler compilation per shape: keeps the tests fast)."""
  import jax.numpy as jnp
  import numpy as np
  from lintheory.core import tasks
  rng = np.random.default_rng(seed)
  s = np.ones(d) if x_scale is None else np.sqrt(np.asarray(x_scale))
  w = rng.standard_normal((B, d))
  X = rng.standard_normal((B, N, d)) * s
  x_q = rng.standard_normal((B, d)) * s
  y = np.einsum("bnd,bd->bn", X, w) + noise_std * rng.standard_normal((B, N))
  return tasks.Batch(*(jnp.asarray(a) for a in (X, y, x_q, np.einsum("bd,bd->b", x_q, w), w)))


def random_params(cfg, seed=0, scale=0.4):
  """Generic float64 weights of the architecture cfg (every identity must hold for any weights)."""
  import jax.numpy as jnp
  import numpy as np
  from lintheory.core.model import param_shapes
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(scale * rng.standard_normal(s)) for k, s in param_shapes(cfg).items()}


def sym_image(left, right):
  """[D_out, D(D+1)/2]: columns (left E right).ravel() for the basis E of the symmetric D×D matrices,
  the matrix of the linear map X ↦ left X right on Sym(D) (numpy, an independent recomputation)."""
  import numpy as np
  D = left.shape[1]
  cols = []
  for i in range(D):
    for j in range(i, D):
      E = np.zeros((D, D))
      E[i, j] = E[j, i] = 1.0
      cols.append((left @ E @ right).ravel())
  return np.stack(cols, 1)
