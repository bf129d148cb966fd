"""Comparison metrics: distances, model cos, the interpolation test, one-model analysis."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lintheory.core import learners, tasks
from lintheory.core import compare
from lintheory.run import analysis, references as R
from lintheory.core.model import ModelConfig, forward
from lintheory.core.tasks import TaskConfig
from conftest import batch64, random_params


@settings(max_examples=30, deadline=None)
@given(v=st.lists(st.floats(-10, 10), min_size=3, max_size=3).filter(lambda v: np.linalg.norm(v) > 1e-3),
       c=st.floats(0.1, 10))
def test_cosine_and_rel_l2(v, c):
  a = jnp.asarray(v)
  assert float(compare.cosine(a, c * a)) == pytest.approx(1.0, abs=1e-12)
  assert float(compare.cosine(a, -c * a)) == pytest.approx(-1.0, abs=1e-12)
  assert float(compare.rel_l2(c * a, a)) == pytest.approx(abs(c - 1), abs=1e-12)
  assert float(compare.rel_l2(a, a)) == 0.0


def test_cosine_of_zero_vector_is_zero():
  assert float(compare.cosine(jnp.zeros(3), jnp.ones(3))) == 0.0


def test_query_grad_is_w_hat_for_linear_attention():
  cfg = ModelConfig(d=3, n_layers=3, n_heads=2, use_W_O=True)
  params, b = random_params(cfg, 1), batch64(3, 5)
  from lintheory.core import implicit
  w_hat = implicit.trajectory(params, tasks.batch_tokens(b), cfg).w_hat[-1]
  np.testing.assert_allclose(compare.query_grad(params, b, cfg), w_hat, rtol=1e-10, atol=1e-12)
  # with softmax attention the prediction is not linear in x_q: ŵ_L is not its gradient
  cfg_s = ModelConfig(d=3, n_layers=2, attention="softmax")
  p_s = random_params(cfg_s, 2, scale=1.0)
  w_s = implicit.trajectory(p_s, tasks.batch_tokens(b), cfg_s).w_hat[-1]
  assert float(jnp.max(jnp.abs(compare.query_grad(p_s, b, cfg_s) - w_s))) > 1e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_merged_and_aligned_weights_are_the_same_model(seed):
  cfg = ModelConfig(d=3, n_layers=3, use_W_O=bool(seed))
  params, b = random_params(cfg, seed), batch64(3, 5)
  KQ, PV = compare.align(*compare.merged(params))
  eye = jnp.broadcast_to(jnp.eye(4), KQ.shape)
  y0 = forward(params, tasks.batch_tokens(b))[0]
  y1 = forward({"W_K": eye, "W_Q": KQ, "W_V": PV}, tasks.batch_tokens(b))[0]
  np.testing.assert_allclose(y1, y0, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(jnp.trace(KQ[:, :3, :3], axis1=1, axis2=2), 3.0, rtol=1e-12)
  # interpolating a model with itself is the model
  y2 = forward(compare.interpolate(params, params), tasks.batch_tokens(b))[0]
  np.testing.assert_allclose(y2, y0, rtol=1e-10, atol=1e-10)


def test_interpolating_rescaled_gd_weights_recovers_gd():
  """A rescaled copy of the GD weights (W_K·a, W_V/a) aligns back onto the construction."""
  params = learners.construct(3, jnp.array([0.5, 0.3]))
  scaled = dict(params, W_K=-2.0 * params["W_K"], W_V=-0.5 * params["W_V"])
  avg = compare.interpolate(scaled, params)
  b = batch64(3, 5)
  np.testing.assert_allclose(forward(avg, tasks.batch_tokens(b))[0], forward(params, tasks.batch_tokens(b))[0],
                             rtol=1e-10, atol=1e-12)


def test_interpolation_errors_and_reasons():
  p1, p2 = learners.construct(3, 0.5, 2), learners.construct(3, 0.5, 3)
  with pytest.raises(ValueError, match="layers"):
    compare.interpolate(p1, p2)
  with pytest.raises(ValueError, match="alpha must be in"):
    compare.interpolate(p1, p1, alpha=1.5)
  with pytest.raises(ValueError, match="one head"):
    compare.merged(random_params(ModelConfig(d=3, n_heads=2)))
  assert compare.interpolation_reason(ModelConfig(d=3)) is None
  assert "linear attention" in compare.interpolation_reason(ModelConfig(d=3, attention="softmax"))
  assert "one head" in compare.interpolation_reason(ModelConfig(d=3, n_heads=2))


def fitted_by_hand(L, d):
  return {"gd": R.Fitted("gd", np.full(L, 0.4), np.zeros(L), np.broadcast_to(np.eye(d), (L, d, d)).copy(), 0.0),
          "gd_pp": R.Fitted("gd_pp", np.linspace(0.3, 0.9, L), np.linspace(0.2, 0.0, L),
                            np.broadcast_to(np.eye(d), (L, d, d)).copy(), 0.0)}


def test_analyze_a_constructed_reference():
  """The GD++ construction matches the GD++ reference exactly and differs from plain GD."""
  d, L = 3, 3
  refs = fitted_by_hand(L, d)
  params = R.construct(refs["gd_pp"])
  b = batch64(d, 6, B=64)
  out = analysis.analyze(params, ModelConfig.from_params(params), TaskConfig(d=d, n_context=6), refs, b)
  assert out["identity"]["exact"] and out["identity"]["max_abs_err"] < 1e-12
  pp, plain = out["layers"]["references"]["gd_pp"], out["layers"]["references"]["gd"]
  np.testing.assert_allclose(pp["cos"], 1.0, atol=1e-12)
  np.testing.assert_allclose(pp["rel_l2"], 0.0, atol=1e-12)
  np.testing.assert_allclose(pp["pred_abs_diff"], 0.0, atol=1e-12)
  np.testing.assert_allclose(pp["loss"], out["layers"]["model_loss"], rtol=1e-12)
  assert min(plain["rel_l2"]) > 1e-2
  assert out["final"]["model_cos"]["gd_pp"] == pytest.approx(1.0, abs=1e-12)
  assert out["final"]["losses"]["ridge"] < 1e-12  # N > d, σ = 0: ridge recovers w
  assert out["interpolation"]["gd_pp"] == pytest.approx(out["final"]["losses"]["model"], rel=1e-10)
  assert len(out["layers"]["delta_W_fro"]) == L


def test_analyze_flags_softmax_and_checks_depth():
  d = 3
  cfg = ModelConfig(d=d, n_layers=2, attention="softmax")
  b = batch64(d, 6)
  out = analysis.analyze(random_params(cfg), cfg, TaskConfig(d=d, n_context=6), fitted_by_hand(2, d), b)
  assert out["identity"]["exact"] is False and out["identity"]["max_abs_err"] > 1e-6
  assert out["interpolation"]["reason"] is not None and "gd" not in out["interpolation"]
  with pytest.raises(ValueError, match="steps but the model has"):
    analysis.analyze(random_params(cfg), cfg, TaskConfig(d=d, n_context=6), fitted_by_hand(3, d), b)


def test_analyze_identity_agrees_with_the_check():
  from lintheory import checks
  cfg = ModelConfig(d=3, n_layers=2, mlp="relu")
  params, b = random_params(cfg, 3), batch64(3, 6)
  out = analysis.analyze(params, cfg, TaskConfig(d=3, n_context=6), fitted_by_hand(2, 3), b)
  check = checks.trajectory_identity(params, b, cfg)
  np.testing.assert_allclose(out["layers"]["identity_max_abs_err"], check.per_layer, rtol=1e-12)
  assert out["identity"]["max_rel_err"] == pytest.approx(check.max_rel, rel=1e-12)
  assert out["identity"]["exact"] is False


def test_effective_steps_read_back_the_construction():
  etas, gammas = jnp.array([0.5, 0.9, 0.3]), jnp.array([0.2, 0.1, 0.0])
  eff = compare.effective_steps(learners.construct(4, etas, gamma=gammas))
  np.testing.assert_allclose(eff["eta_eff"], etas, rtol=1e-12)
  np.testing.assert_allclose(eff["gamma_eff"], gammas, atol=1e-12)
  np.testing.assert_allclose(eff["KQ_dev"], 0.0, atol=1e-12)
  P = jnp.diag(jnp.array([2.0, 1.0, 1.0, 0.0]))  # a preconditioner: KQ deviates from I after alignment
  assert float(compare.effective_steps(learners.construct(4, 0.5, 1, P=P))["KQ_dev"][0]) > 0.1
