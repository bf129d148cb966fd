"""The training diagnostic (run.adequacy), its record in a study's table (engine.Context.add_training,
engine.training) and the claims about trained optima that leave a non-converged seed out and name it."""

import math

import numpy as np
import pytest
from scipy import stats as st

from lintheory.core.model import ModelConfig, param_shapes
from lintheory.core.tasks import TaskConfig
from lintheory.run import adequacy, profiles, train
from lintheory.run.train import TrainConfig
from lintheory.studies import engine, implicit_gd, one_layer, text

DEFAULT = {"profile": "default"}


def R(measure, value, seed=None, **keys):
  return {"measure": measure, "value": float(value), "seed": seed, "n_tasks": None, **keys}


def t_ci(values):
  lo, hi = st.ttest_1samp(np.asarray(values, float), 0.0).confidence_interval(0.95)
  return float(lo), float(hi)


# --- the numbers ----------------------------------------------------------------------------


def test_tail_is_the_median_of_the_last_tenth_and_its_halves_relative_change():
  """100 steps: the tail is the last 10; halves of 5. One batch blown up to 1e6 moves neither median."""
  flat = np.r_[np.linspace(5, 1, 90), np.ones(10)]
  falling = np.r_[np.ones(90), [2.0] * 5, [1.0] * 5]
  blown = flat.copy()
  blown[-3] = 1e6
  loss, change = adequacy.tail(np.stack([flat, falling, blown]))
  np.testing.assert_allclose(loss, [1.0, 1.5, 1.0])
  np.testing.assert_allclose(change, [0.0, 1.0, 0.0])


def test_skipped_steps_count_as_infinite_loss_and_never_give_nan():
  """Steps skipped for a non-finite loss (NaN, inf) are +inf: the tail median stays finite while they are
  fewer than half of it, a seed whose tail overflowed is +inf, stalled and still moving, never NaN."""
  ok = np.full(40, 0.5)
  ok[-3] = np.nan  # one skipped step in the tail (the last 4 steps)
  bad = np.full(40, np.inf)
  loss, change = adequacy.tail(np.stack([ok, np.full(40, 0.6), bad]))
  assert loss.tolist() == [0.5, 0.6, np.inf] and change[2] == np.inf and not np.isnan(change).any()
  gaps = adequacy.seed_gaps(loss)
  assert gaps[2] == np.inf and not np.isnan(gaps).any()
  assert "stalled" in adequacy.reason(change[2], None, gaps[2])


def test_seed_gap_is_relative_to_the_median_seed():
  np.testing.assert_allclose(adequacy.seed_gaps([1.0, 1.1, 2.0, 0.9, 1.0]), [0.0, 0.1, 1.0, -0.1, 0.0])


@pytest.mark.parametrize("change, grad, gap, why", [
    (0.01, None, 0.02, None),
    (0.01, 1e6, 0.02, None),  # a sampled gradient does not decide (None); an exact one does
    (0.01, None, 0.8, "stalled: training loss 80 % above the median seed's"),
    (0.4, None, None, "still descending (40 % over the last 10% of steps)"),
    (0.01, 50.0, None, "relative gradient 50 > 10"),
])
def test_reason_names_each_threshold_crossed(change, grad, gap, why):
  exact = grad if grad != 1e6 else None
  assert adequacy.reason(change, exact, gap) == why


# --- restarts and the saddle ------------------------------------------------------------------

TASK = TaskConfig(d=2, n_context=6)
MODEL = ModelConfig(d=2)
CFG = TrainConfig(steps=20, batch_size=16, chunk=20, lr=1e-3, warmup=2, clip_norm=1.0, dtype="float64",
                  tail_frac=0.0, tail_scale=1.0)


def fake_fit(tails):
  """A train.fit whose run i ends at the tail loss tails[i][k] for its k-th seed; its params hold the
  same number, so the kept fit can be told apart."""
  calls = []

  def fit(task, model, cfg, seeds, on_chunk=None, restarts=None):
    t = np.asarray(tails[len(calls)], float)
    calls.append((tuple(seeds), restarts))
    losses = np.repeat(t[:, None], 20, axis=1)
    params = {n: np.broadcast_to(t.reshape(-1, *[1] * len(s)), (len(seeds), *s)).copy()
              for n, s in param_shapes(model).items()}
    return train.TrainResult(params, losses, None, None, np.zeros(len(seeds)), 1.0)
  return fit, calls


def test_a_stalled_seed_is_restarted_from_new_initial_weights_and_keeps_its_best_fit(monkeypatch):
  fit, calls = fake_fit([[1.0, 3.0, 1.1], [2.0, 0.9, 5.0]])
  monkeypatch.setattr(train, "fit", fit)
  res, restarts = adequacy.fit(TASK, MODEL, CFG, (7, 8, 9))
  assert calls == [((7, 8, 9), None), ((8, 8, 8), [1, 2, 3])]  # only seed 8, same seed (data), new weights
  assert restarts.tolist() == [0, 2, 0]
  np.testing.assert_allclose(res.losses[:, -1], [1.0, 0.9, 1.1])
  np.testing.assert_allclose(res.params["W_Q"][:, 0, 0, 0], [1.0, 0.9, 1.1])


def test_no_seed_stalls_no_restart_and_a_pool_is_never_restarted(monkeypatch):
  fit, calls = fake_fit([[1.0, 1.2, 1.1], [1.0, 9.0, 1.0]])
  monkeypatch.setattr(train, "fit", fit)
  assert adequacy.fit(TASK, MODEL, CFG, (0, 1, 2))[1].tolist() == [0, 0, 0]
  adequacy.fit(TASK, MODEL, TrainConfig(**{**CFG.__dict__, "pool_size": 8}), (0, 1, 2))  # 9× is its own pool
  assert len(calls) == 2


def test_restart_keys_leave_restart_0_the_seeds_own_weights():
  import jax
  assert jax.random.key_data(train.init_key(3)).tolist() == jax.random.key_data(jax.random.key(3)).tolist()
  assert jax.random.key_data(train.init_key(3, 1)).tolist() != jax.random.key_data(train.init_key(3, 2)).tolist()


def test_a_saddle_looks_settled_by_loss_change_and_gradient_and_is_caught_by_the_seed_gap():
  """All-zero weights: ŷ = 0 and every factor of W_V·W_Kᵀ·W_Q is 0, so the gradient is exactly 0 and the loss
  flat. Only the siblings, which reached a lower loss, show it did not converge."""
  zero = {n: np.zeros((1, *s)) for n, s in param_shapes(MODEL).items()}
  params = {n: np.concatenate([v, v + 0.3, v - 0.3]) for n, v in zero.items()}
  losses = np.stack([np.full(20, 2.0), np.full(20, 0.5), np.full(20, 0.55)])
  seeds = adequacy.diagnose(TASK, MODEL, CFG, (0, 1, 2), params, losses)
  assert seeds[0].grad_norm == 0.0 and seeds[0].train_rel_change == 0.0
  assert not seeds[0].converged and seeds[0].reason.startswith("stalled")
  assert seeds[1].converged and seeds[1].grad_norm > 0


def test_on_a_pool_the_gradient_is_exact_and_decides():
  pool = TrainConfig(**{**CFG.__dict__, "pool_size": 8})
  params = {n: np.full((1, *s), 0.7) for n, s in param_shapes(MODEL).items()}
  (s,) = adequacy.diagnose(TASK, MODEL, pool, (0,), params, np.ones((1, 20)))
  assert s.exact_grad and s.seed_gap is None and s.grad_norm > 0
  assert s.converged == (s.grad_norm <= adequacy.GRAD_TOL)


# --- in the table -----------------------------------------------------------------------------


def test_add_training_records_every_seed_and_training_reads_the_reason_back():
  diag = (adequacy.Seed(1.0, 0.01, 0.2, False, 0.0, 0), adequacy.Seed(2.0, 0.0, 0.0, False, 1.0, 0),
          adequacy.Seed(1.1, 0.3, 30.0, True, None, 2))
  tr = profiles.Trained(TASK, MODEL, CFG, (4, 5, 6), {}, np.zeros((3, 1)), diag)
  ctx = engine.Context(one_layer.KEYS, "")
  ctx.add_training(tr, case="c")
  table = engine.Table(ctx.rows, one_layer.KEYS)
  assert table.values("restarts", case="c").tolist() == [0, 0, 2]
  assert table.seeds(measure="seed_gap") == [4, 5]  # no gap for the third (pool or single seed)
  assert engine.training(table, case="c") == {4: None, 5: diag[1].reason, 6: diag[2].reason}
  assert diag[2].reason == "still descending (30 % over the last 10% of steps); relative gradient 30 > 10"
  assert engine.training(table, case="other") == {}


def test_context_train_records_the_diagnostic_or_the_divergence_never_both(monkeypatch):
  diag = (adequacy.Seed(1.0, 0.01, 0.2, False, 0.0, 0),)
  tr = profiles.Trained(TASK, MODEL, CFG, (0,), {}, np.zeros((1, 1)), diag)
  ctx = engine.Context(one_layer.KEYS, "")
  monkeypatch.setattr(engine, "trained", lambda settings, c, **model: tr)
  assert ctx.train(None, {"case": "ok"}, d=2) is tr and not ctx.failures
  assert engine.Table(ctx.rows, one_layer.KEYS).values("restarts", case="ok").tolist() == [0]

  def diverged(settings, c, **model):
    raise RuntimeError("loss is NaN at step 7")

  monkeypatch.setattr(engine, "trained", diverged)
  n_rows = len(ctx.rows)
  assert ctx.train(None, {"case": "bad"}, d=2) is None and len(ctx.rows) == n_rows
  assert ctx.failures == [{"stage": "train", "reason": "loss is NaN at step 7", "seed": None, "case": "bad"}]


def training_rows(seed_gaps, **keys):
  """Diagnostic rows as add_training writes them: every seed settled, gap as given."""
  rows = []
  for s, gap in enumerate(seed_gaps):
    rows += [R("train_rel_change", 0.0, seed=s, **keys), R("grad_norm", 0.1, seed=s, **keys),
             R("grad_exact", 0.0, seed=s, **keys), R("seed_gap", gap, seed=s, **keys),
             R("converged", gap <= adequacy.SEED_GAP_TOL, seed=s, **keys)]
  return rows


# --- claims about the trained optimum ---------------------------------------------------------


def one_layer_table(losses, gaps, closed=0.5):
  rows = [R("closed_form", closed, case="aniso")]
  rows += [R("Gamma_eff_exact_loss", v, seed=s, case="aniso") for s, v in enumerate(losses)]
  rows += [R("model_mean", v, seed=s, case="aniso") for s, v in enumerate(losses)]
  return engine.Table(rows + training_rows(gaps, case="aniso"), one_layer.KEYS)


def test_one_layer_leaves_a_stalled_seed_out_of_the_claim_and_names_it():
  """Seed 2 stalled at Γ_eff = 0 (excess 124 %): with it the case would not be near; without it the three
  settled seeds (1, 2, 3 %) hold, and the row says 3/4 converged and why seed 2 did not."""
  c = one_layer.claims(one_layer_table([0.505, 0.51, 1.12, 0.515], [0.0, 0.0, 1.2, 0.0]), DEFAULT)[0]
  lo, hi = t_ci([1.0, 2.0, 3.0])
  assert c.verdict == "holds" and c.seeds == 3
  assert c.ci == (f"aniso: 2.0 % {text.ci(lo, hi, 2)} (3/4 seeds converged; seed 2 did not: stalled: training "
                  "loss 120 % above the median seed's)")


def test_one_layer_counts_every_seed_when_all_converged_and_says_nothing_more():
  c = one_layer.claims(one_layer_table([0.505, 0.51, 0.515], [0.0, 0.0, 0.0]), DEFAULT)[0]
  assert c.seeds == 3 and "converged" not in c.ci


def test_one_layer_with_no_converged_seed_is_undecided_and_says_why():
  c = one_layer.claims(one_layer_table([1.12, 1.12], [1.0, 1.0]), DEFAULT)[0]
  assert c.verdict.startswith("undecided") and c.seeds == 0 and "0/2 seeds converged" in c.ci


def igd_table(final, gaps, L=2):
  rows = [R("identity_max_abs_err", 1e-14, seed=0, L=1)]
  for kind in implicit_gd.KINDS:
    for s, v in enumerate(final if kind == "gd_pp" else [0.9] * len(final)):
      rows.append(R("w_rel_dist", v, seed=s, sigma=0.0, L=L, reference=kind, layer=L))
  return engine.Table(rows + training_rows(gaps, sigma=0.0, L=L), implicit_gd.KEYS)


def test_implicit_gd_leaves_a_stalled_seed_out_of_the_distance_and_names_it():
  """Seed 3 stalled (distance 0.22 to GD++, where the settled seeds are at 0.01–0.03): it is left out of the
  interval, which then lies below 0.1, and the row names it."""
  c = implicit_gd.claims(igd_table([0.01, 0.02, 0.03, 0.22], [0.0, 0.0, 0.0, 5.0]), DEFAULT)[0]
  lo, hi = t_ci([0.01, 0.02, 0.03])
  assert c.verdict == "holds" and c.seeds == 3
  assert c.ci == (f"L=2: gd_pp 0.020 {text.ci(lo, hi, 2)} (3/4 seeds converged; seed 3 did not: stalled: training "
                  "loss 500 % above the median seed's)")


def test_implicit_gd_a_depth_without_a_converged_seed_is_not_close_and_says_so():
  c = implicit_gd.claims(igd_table([0.01, 0.02], [1.0, 1.0]), DEFAULT)[0]
  assert c.verdict.startswith("undecided") and "0/2 seeds converged" in c.ci
  assert not math.isnan(c.seeds)
