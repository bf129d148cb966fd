"""Mixed context lengths (TaskConfig.n_context_min), the mismatch study's edits, and its tiny run.

The theorem behind the mixed-length option: zero tokens [0; 0] stay zero through every linear-attention
layer and add nothing to its sums, which keep their 1/N. So on a prompt with M real demonstrations
zero-padded to N, the model's prediction, its real tokens' states and its implicit predictor equal the
model's on the truncated M-demonstration prompt with every layer's W_V scaled by M/N — exactly (in
float64 to round-off), for any depth and heads.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as st

from lintheory.core import evaluate, prune, tasks
from lintheory.core.model import ModelConfig, forward, init_params
from lintheory.core.tasks import TaskConfig
from lintheory.studies import engine, mismatch, text
from lintheory.studies.views import mismatch as mismatch_view


def _kept(batch):
  """M per task: the number of leading demonstrations that are not zero tokens."""
  nonzero = np.any(np.asarray(batch.X) != 0, axis=-1) | (np.asarray(batch.y) != 0)
  return nonzero.sum(1), nonzero


def test_mixed_lengths_keep_a_uniform_prefix_and_zero_the_rest():
  cfg = TaskConfig(d=3, n_context=6, noise_std=0.3, n_context_min=2)
  batch = tasks.sample(jax.random.key(0), cfg, 4000, dtype=jnp.float64)
  M, nonzero = _kept(batch)
  assert np.array_equal(nonzero, np.arange(6)[None] < M[:, None])  # a prefix: zero tokens only after it
  counts = np.bincount(M, minlength=7)
  assert counts[:2].sum() == 0 and np.all(np.abs(counts[2:] / 4000 - 1 / 5) < 0.03)  # U{2, …, 6}


def test_mixed_lengths_change_no_other_draw():
  """n_context_min = N keeps every demonstration: the batch is the fixed-length one, bit for bit."""
  fixed = TaskConfig(d=4, n_context=5, noise_std=0.5)
  full = dataclasses.replace(fixed, n_context_min=5)
  a, b = (tasks.sample(jax.random.key(3), c, 16, dtype=jnp.float64) for c in (fixed, full))
  for x, y in zip(a, b):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  short = tasks.sample(jax.random.key(3), dataclasses.replace(fixed, n_context_min=1), 16, dtype=jnp.float64)
  assert np.array_equal(short.w, a.w) and np.array_equal(short.x_q, a.x_q) and np.array_equal(short.y_q, a.y_q)
  M, _ = _kept(short)
  for i, m in enumerate(M):
    assert np.array_equal(short.X[i, :m], a.X[i, :m]) and np.array_equal(short.y[i, :m], a.y[i, :m])


@pytest.mark.parametrize("n_heads", [1, 2])
def test_zero_padding_equals_truncation_with_W_V_scaled_by_M_over_N(n_heads):
  d, N, L = 3, 5, 3
  cfg = ModelConfig(d=d, n_layers=L, n_heads=n_heads, init_scale=0.4)
  params = init_params(jax.random.key(1), cfg, jnp.float64)
  batch = tasks.sample(jax.random.key(2), TaskConfig(d=d, n_context=N, n_context_min=2), 16, dtype=jnp.float64)
  M, _ = _kept(batch)
  assert len(set(M.tolist())) > 2
  y_pad, states_pad = forward(params, tasks.batch_tokens(batch), cfg)
  w_pad = evaluate.implicit_predictor(params, cfg, batch.X, batch.y)
  for m in sorted(set(M.tolist())):  # the tasks that kept m demonstrations, against their m-token prompts
    i = np.flatnonzero(M == m)
    scaled = prune.padded_as_truncated(params, m, N)
    y_cut, states_cut = forward(scaled, tasks.tokens(batch.X[i, :m], batch.y[i, :m], batch.x_q[i]), cfg)
    np.testing.assert_allclose(y_pad[i], y_cut, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(states_pad[:, i, :m], states_cut[:, :, :m], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(states_pad[:, i, -1], states_cut[:, :, -1], rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(states_pad[:, i, m:N]) == 0)  # zero tokens stay exactly zero
    w_cut = evaluate.implicit_predictor(scaled, cfg, batch.X[i, :m], batch.y[i, :m])
    np.testing.assert_allclose(w_pad[i], w_cut, rtol=1e-12, atol=1e-12)


def test_without_the_scaling_the_truncated_prompt_differs():
  """The 1/N of the padded prompt is the point: the truncated prompt's own 1/M gives another model."""
  d, N, M = 3, 8, 4
  cfg = ModelConfig(d=d, n_layers=2, init_scale=0.4)
  params = init_params(jax.random.key(1), cfg, jnp.float64)
  b = tasks.sample(jax.random.key(5), TaskConfig(d=d, n_context=M), 4, dtype=jnp.float64)
  pad = tasks.tokens(jnp.pad(b.X, ((0, 0), (0, N - M), (0, 0))), jnp.pad(b.y, ((0, 0), (0, N - M))), b.x_q)
  y_pad, _ = forward(params, pad, cfg)
  y_cut, _ = forward(params, tasks.batch_tokens(b), cfg)
  assert np.max(np.abs(y_pad - y_cut)) > 1e-3


@pytest.mark.parametrize("kwargs, name", [({"n_context_min": -1}, "n_context_min"),
                                          ({"n_context_min": 21}, "n_context_min"),
                                          ({"n_context_min": 2.0}, "n_context_min")])
def test_invalid_n_context_min(kwargs, name):
  with pytest.raises(ValueError, match=name):
    TaskConfig(**kwargs)


def test_sampling_fewer_tokens_than_the_mixed_minimum_is_refused():
  with pytest.raises(ValueError, match="n_context_min"):
    tasks.sample(jax.random.key(0), TaskConfig(d=2, n_context=8, n_context_min=5), 4, n_context=3)


def test_edits_match_prune_and_their_neutral_settings_change_nothing():
  d, L, S = 3, 2, 2
  cfg = ModelConfig(d=d, n_layers=L, init_scale=0.4)
  p = {k: np.stack([init_params(jax.random.key(i), cfg, jnp.float64)[k] for i in range(S)]) for k in ("W_Q", "W_K",
                                                                                                        "W_V")}
  edits = [("attn", 1, 2), ("v", 0, 1), ("attn", 1, d + 1), ("shrink", 1.0, None), ("drop", L, None),
           ("shrink", 0.5, None)]
  out = prune.apply_edits(p, edits)
  assert out["W_V"].shape == (len(edits) * S, L, d + 1, d + 1)
  one = lambda j, i: {k: v[j * S + i] for k, v in out.items()}
  for i in range(S):
    seed = {k: v[i] for k, v in p.items()}
    for j, (module, layer, rank) in enumerate(edits[:2]):
      ref = prune.prune(seed, layer, module, rank=rank)
      for k in p:
        np.testing.assert_allclose(one(j, i)[k], ref[k], rtol=1e-12, atol=1e-12)
    for j in (2, 3):
      assert all(np.array_equal(one(j, i)[k], seed[k]) for k in p)
    b = tasks.sample(jax.random.key(1), TaskConfig(d=d, n_context=5), 8, dtype=jnp.float64)
    y, _ = forward(one(4, i), tasks.batch_tokens(b), cfg)
    assert np.all(np.asarray(y) == 0)  # every layer dropped: the zero predictor
    np.testing.assert_array_equal(one(5, i)["W_V"][L - 1], 0.5 * seed["W_V"][L - 1])
    np.testing.assert_array_equal(one(5, i)["W_V"][: L - 1], seed["W_V"][: L - 1])
  with pytest.raises(ValueError, match="edit kind"):
    prune.apply_edits(p, [("mask", 0, None)])


@pytest.mark.parametrize("module", ["attn", "v"])
def test_a_rank_0_truncation_of_a_layer_is_the_model_without_that_layer(module):
  """Why mismatch counts rank 0 as dropping a layer, not as SVD truncation: W_V = 0 makes ΔW = 0, so
  the layer passes its tokens on unchanged (docs/theory.md §2); the L − 1 other layers give the output."""
  d, L, layer = 3, 3, 1
  cfg = ModelConfig(d=d, n_layers=L, init_scale=0.4)
  p = init_params(jax.random.key(2), cfg, jnp.float64)
  out = prune.apply_edits({k: v[None] for k, v in p.items()}, [(module, layer, 0)])
  Z = tasks.batch_tokens(tasks.sample(jax.random.key(3), TaskConfig(d=d, n_context=6), 8, dtype=jnp.float64))
  y, _ = forward({k: v[0] for k, v in out.items()}, Z, cfg)
  rest = [i for i in range(L) if i != layer]
  y_rest, _ = forward({k: v[np.array(rest)] for k, v in p.items()}, Z, dataclasses.replace(cfg, n_layers=L - 1))
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_rest), rtol=1e-12, atol=1e-14)
  assert mismatch.family((module, layer, 0)) == "drop" and mismatch.family((module, layer, 1)) == "svd"


@pytest.mark.slow  # an end-to-end tiny run, like tests/test_studies.py under `make test-all`
def test_tiny_profile_end_to_end(tmp_path):
  s = mismatch.PROFILES["tiny"]
  ctx = engine.Context(mismatch.KEYS, str(tmp_path / "cache"))
  mismatch.run(s, ctx)
  assert not ctx.failures
  table = engine.Table(ctx.rows, mismatch.KEYS)
  meta = {"settings": dataclasses.asdict(s)}
  for regime in mismatch.REGIMES:
    ks = mismatch.condition_keys(table, regime)
    assert ks, regime
    for k in ks:
      seeds = table.seeds(measure="gain", **k)
      assert seeds == list(s.train.seeds)
      for x in seeds:  # the chosen edit is the best on the selection tasks, and better than none
        g = table.values("select_gain", seed=x, **k)
        assert g.size == len(mismatch.edit_list(s, k["L"], s.d + 1))
        (chosen,) = table.where(measure="chosen", seed=x, **k).rows
        if chosen["edit"] == "none":
          assert g.max() <= 0
        else:
          assert table.value("select_gain", seed=x, edit=chosen["edit"], **k) == g.max() > 0
      for f in mismatch.FAMILIES:  # each family's choice: its best on the selection tasks, if better than none
        fam = [e for e in mismatch.edit_list(s, k["L"], s.d + 1) if mismatch.family(e) == f]
        best = max(table.value("select_gain", seed=x, edit=mismatch.label(e), **k) for e in fam)
        (chosen,) = table.where(measure=f"chosen_{f}", seed=x, **k).rows
        assert chosen["edit"] == "none" if best <= 0 else table.value(
            "select_gain", seed=x, edit=chosen["edit"], **k) == best
        if mismatch.family_of_label(table.where(measure="chosen", seed=x, **k).rows[0]["edit"]) == f:
          assert table.value(f"gain_{f}", seed=x, **k) == table.value("gain", seed=x, **k)
  assert {k["model"] for k in mismatch.condition_keys(table, "shots")} == {"fixed", "mixed"}
  paths = mismatch_view.plot(table, meta, tmp_path / "figures")
  assert paths and all(p.stat().st_size > 0 for p in paths)
  assert "mismatch_gain.png" in mismatch_view.report(table, meta)
  # each claim reports the mismatched condition with the largest mean share of headroom, its t-interval over
  # the run's seeds (scipy) and their count
  full = s.train.steps
  for c in [c for c in mismatch.claims(table, meta) if c.id in mismatch.REGIMES]:  # SVD truncation's verdicts
    fracs = [table.values("gain_frac_svd", **k) for k in mismatch.condition_keys(table, c.id)
             if mismatch.mismatched(k, full)]
    f = max(fracs, key=np.mean)
    lo, hi = st.ttest_1samp(f, 0.0).confidence_interval(0.95)
    assert c.ci == f"{text.ci(100 * lo, 100 * hi, 2)} %" and c.seeds == len(s.train.seeds) == f.size
    assert c.effect.startswith(f"{text.num(100 * f.mean(), 2)} % of the headroom")
  assert [c.id for c in mismatch.claims(table, meta)][:3] == ["shots", "noise", "training_length"]
