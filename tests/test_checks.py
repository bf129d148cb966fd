"""The importable GD-equivalence checks (lintheory.checks): they pass, fail and refuse correctly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory import checks
from lintheory.core import learners, model, tasks


def batch(d=3, N=6, B=8, dtype=np.float64, seed=0):
  rng = np.random.default_rng(seed)
  X, w, x_q = rng.standard_normal((B, N, d)), rng.standard_normal((B, d)), rng.standard_normal((B, d))
  arrays = (X, np.einsum("bnd,bd->bn", X, w), x_q, np.einsum("bd,bd->b", x_q, w), w)
  return tasks.Batch(*(jnp.asarray(a, dtype) for a in arrays))


# The README's example, verbatim: what a researcher pastes into their own pytest file.
def test_readme_example():
  """The README's Python snippet, read from the README and run as written."""
  import re
  from pathlib import Path
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  code = re.search(r"```python\n(.*?)```", readme, flags=re.S).group(1)
  scope: dict = {}
  exec(compile(code, "README.md", "exec"), scope)
  tests = [f for name, f in scope.items() if name.startswith("test_")]
  assert tests, "the README snippet defines no test"
  for f in tests:
    f()


def test_passing_check_reports_per_layer_deviation():
  dev = checks.assert_gd_equivalent(learners.construct(3, 0.4, n_steps=3), batch(), checks.gd_reference(0.4, 3))
  assert dev.per_layer.shape == (3,)
  assert 0 <= dev.max_rel <= 1e-10 and 0 <= dev.max_abs <= 1e-10


def test_wrong_learner_fails_with_assertion_error():
  params = learners.construct(3, 0.4, n_steps=2)
  with pytest.raises(AssertionError, match="tol"):
    checks.assert_gd_equivalent(params, batch(), checks.gd_reference(0.41, 2))
  # a perturbation of one weight by 1e-6 is caught as well
  bad = {**params, "W_V": params["W_V"].at[1, -1, -1].add(1e-6)}
  with pytest.raises(AssertionError):
    checks.assert_gd_equivalent(bad, batch(), checks.gd_reference(0.4, 2))
  dev = checks.gd_deviation(bad, batch(), checks.gd_reference(0.4, 2))
  assert dev.per_layer[0] <= 1e-10 < dev.per_layer[1]  # the per-layer report points at layer 2


def test_float32_with_float64_tolerance_is_refused():
  b32 = batch(dtype=np.float32)
  params = learners.construct(3, 0.4, n_steps=2, dtype=jnp.float32)
  with pytest.raises(ValueError, match="float32"):
    checks.assert_gd_equivalent(params, b32, checks.gd_reference(0.4, 2), tol=1e-10)
  checks.assert_gd_equivalent(params, b32, checks.gd_reference(0.4, 2), tol=1e-5)


def test_reference_with_wrong_step_count_is_refused():
  with pytest.raises(ValueError, match="steps"):
    checks.gd_deviation(learners.construct(3, 0.4, n_steps=2), batch(), checks.gd_reference(0.4, 3))


def test_trajectory_identity_check():
  cfg = model.ModelConfig(d=3, n_layers=3)
  params = {k: 15 * v for k, v in model.init_params(jax.random.key(0), cfg, jnp.float64).items()}
  chk = checks.assert_trajectory_identity(params, batch())
  assert chk.exact and chk.per_layer.shape == (3,) and chk.max_rel <= 1e-10
  soft = model.ModelConfig(d=3, n_layers=3, attention="softmax")
  with pytest.raises(ValueError, match="softmax"):
    checks.assert_trajectory_identity(params, batch(), cfg=soft)
  measured = checks.trajectory_identity(params, batch(), cfg=soft)
  assert not measured.exact and measured.max_rel > 1e-6  # not a theorem there, and it shows
