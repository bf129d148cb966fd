"""The importable GD-equivalence checks (lintheory.checks): they pass, fail and refuse correctly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory import checks
from lintheory.core import learners, model, tasks
from conftest import random_params


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


# --- what a check takes as the model, and what it refuses ---------------------------------------


def test_a_seed_axis_is_refused_with_a_way_to_take_one_seed():
  """train.fit(seeds=(0, 1)) of a 1-layer model gives W_Q [2, 1, D, D]: two seeds, not two layers
  of one head; nothing reads it as a model, with or without a cfg of the same depth."""
  one = random_params(model.ModelConfig(d=3, n_layers=1))
  seeds = jax.tree.map(lambda a: jnp.stack([a, a]), one)
  for check in (lambda: checks.assert_trajectory_identity(seeds, batch()),
                lambda: checks.gd_deviation(seeds, batch(), checks.gd_reference(0.1, 2)),
                lambda: learners.effective_preconditioner(seeds),
                lambda: checks.assert_trajectory_identity(seeds, batch(), cfg=model.ModelConfig(d=3, n_layers=2))):
    with pytest.raises(ValueError, match=r"jax.tree.map\(lambda a: a\[i\], params\)"):
      check()
  # two seeds of a 2-layer model are ambiguous (heads or seeds?) until a cfg says heads
  two = jax.tree.map(lambda a: jnp.stack([a, a]), random_params(model.ModelConfig(d=3, n_layers=2)))
  with pytest.raises(ValueError, match=r"ambiguous.*n_heads=2"):
    checks.trajectory_identity(two, batch())
  heads = model.ModelConfig(d=3, n_layers=2, n_heads=2)
  assert checks.assert_trajectory_identity(two, batch(), cfg=heads).per_layer.shape == (2,)
  with pytest.raises(ValueError, match="shapes of the model"):  # a cfg the weights do not have
    checks.assert_trajectory_identity(one, batch(), cfg=model.ModelConfig(d=3, n_layers=2))


def test_every_check_takes_a_path_a_dict_a_module_or_a_run(tmp_path):
  from lintheory.core.tasks import TaskConfig
  from lintheory.run import rundir
  cfg = model.ModelConfig(d=3, n_layers=2, n_heads=2)
  params = random_params(cfg)
  path = rundir.save_run(tmp_path / "run", TaskConfig(d=3, n_context=6), cfg, None, 0,
                         {k: np.asarray(v) for k, v in params.items()}, {})
  run = rundir.load_run(path)
  kinds = {"path": str(path), "Path": path, "Run": run, "module": model.LinearTransformer.from_params(cfg, params),
           "dict with cfg": params}
  want = checks.trajectory_identity(params, batch(), cfg=cfg).per_layer
  for name, m in kinds.items():
    got = checks.assert_trajectory_identity(m, batch(), cfg=cfg if name == "dict with cfg" else None)
    np.testing.assert_allclose(got.per_layer, want, rtol=0, atol=1e-12, err_msg=name)
  with pytest.raises(ValueError, match="differs from the model's own"):
    checks.trajectory_identity(run, batch(), cfg=model.ModelConfig(d=3, n_layers=2, n_heads=2, use_W_O=True))
  with pytest.raises(TypeError, match="run directory path"):
    checks.trajectory_identity([params], batch())


# --- a user's own model against the toolkit's forward -------------------------------------------


def user_forward(Wq, Wk, Wv):
  """A user's own linear attention in the row convention: tokens are rows, Q = Z Wq, K = S Wk and
  V = S Wv over the demonstrations S, Z ← Z + Q Kᵀ V / N per layer, ŷ = −(the query's last entry)."""
  def predict(b):
    N = b.X.shape[1]
    Z = jnp.concatenate([jnp.concatenate([b.X, b.y[..., None]], -1),
                         jnp.concatenate([b.x_q, jnp.zeros_like(b.y_q)[:, None]], -1)[:, None]], 1)
    for l in range(Wq.shape[0]):
      S = Z[:, :N]
      Z = Z + (Z @ Wq[l]) @ jnp.swapaxes(S @ Wk[l], 1, 2) @ (S @ Wv[l]) / N
    return -Z[:, -1, -1]
  return predict


def test_same_predictions_catches_a_wrong_mapping_theorem_1_does_not():
  rng = np.random.default_rng(3)
  Wq, Wk, Wv = (jnp.asarray(0.5 * rng.standard_normal((2, 4, 4))) for _ in range(3))
  T = lambda W: jnp.swapaxes(W, -1, -2)  # row convention → the toolkit's column convention
  right = {"W_Q": T(Wq), "W_K": T(Wk), "W_V": T(Wv)}
  assert checks.assert_same_predictions(user_forward(Wq, Wk, Wv), right, batch(), tol=1e-12) <= 1e-12
  wrong = {"W_Q untransposed": {**right, "W_Q": Wq}, "W_V sign": {**right, "W_V": -right["W_V"]},
           "K/Q swapped": {**right, "W_Q": right["W_K"], "W_K": right["W_Q"]}}
  for name, params in wrong.items():
    checks.assert_trajectory_identity(params, batch())  # Theorem 1 holds for any weights
    with pytest.raises(AssertionError, match="max relative error"):
      checks.assert_same_predictions(user_forward(Wq, Wk, Wv), params, batch(), tol=1e-6)
  with pytest.raises(ValueError, match="shape"):
    checks.assert_same_predictions(lambda b: b.y_q[:, None], right, batch())
