"""The w₀ task option (in-weights knowledge) and the in_weights study end to end on its tiny profile."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as st

from lintheory.core import tasks
from lintheory.core.tasks import TaskConfig
from lintheory.studies import engine, in_weights, text
from lintheory.studies.views import in_weights as in_weights_view

sample = jax.jit(tasks.sample, static_argnums=(1, 2), static_argnames=("n_context", "dtype"))


def _is_w0(b, cfg):
  return np.all(np.asarray(b.w) == np.asarray(tasks.w0(cfg), np.asarray(b.w).dtype), axis=1)


def test_w0_prob_one_gives_w0_everywhere_and_zero_nowhere():
  cfg = TaskConfig(d=4, n_context=5, noise_std=0.1, w0_prob=1.0, w0_seed=3)
  b = sample(jax.random.key(0), cfg, 512, dtype=jnp.float64)
  assert _is_w0(b, cfg).all()
  np.testing.assert_allclose(b.y_q, b.x_q @ tasks.w0(cfg), rtol=1e-12, atol=1e-12)  # labels use w₀ too
  b0 = sample(jax.random.key(0), dataclasses.replace(cfg, w0_prob=0.0), 512, dtype=jnp.float64)
  assert not _is_w0(b0, cfg).any()


def test_w0_share_is_p_in_expectation():
  p, n = 0.3, 20_000
  cfg = TaskConfig(d=3, n_context=2, w0_prob=p)
  share = _is_w0(sample(jax.random.key(1), cfg, n, dtype=jnp.float64), cfg).mean()
  assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n), share  # 4 SE: fails for a wrong p, not by chance


def test_w0_is_one_prior_draw_the_same_in_every_dtype():
  cfg = TaskConfig(d=3, n_context=2, w_cov=(1.0, 0.0, 4.0), w0_prob=1.0, w0_seed=7)
  w0 = tasks.w0(cfg)
  assert w0[1] == 0.0 and np.all(w0[[0, 2]] != 0)  # it lies in the span of the low-rank prior
  assert not np.array_equal(w0, tasks.w0(dataclasses.replace(cfg, w0_seed=8)))
  b32 = sample(jax.random.key(2), cfg, 4, dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(b32.w), np.broadcast_to(w0.astype(np.float32), (4, 3)))


@pytest.mark.parametrize("field,value", [("w0_prob", -0.1), ("w0_prob", 1.5), ("w0_prob", "half"),
                                         ("w0_seed", -1), ("w0_seed", 1.0)])
def test_bad_w0_options_name_the_argument(field, value):
  with pytest.raises(ValueError, match=field):
    TaskConfig(**{field: value})


@pytest.mark.slow  # an end-to-end tiny run, like tests/test_studies.py under `make test-all`
def test_tiny_study_runs_and_reads_back(tmp_path):
  s = in_weights.PROFILES["tiny"]
  ctx = engine.Context(in_weights.KEYS, str(tmp_path / "cache"))
  in_weights.run(s, ctx)
  assert not ctx.failures
  table = engine.Table.from_csv(engine.Table(ctx.rows, in_weights.KEYS).to_csv(), in_weights.KEYS)
  meta = {"settings": dataclasses.asdict(s)}
  for p in s.probs:
    for seed in s.train.seeds:
      for kind in in_weights.TASK_SETS:
        sel = table.values("select_mean", p=p, seed=seed, tasks=kind)
        assert sel.size == 1 + len(in_weights.edit_list(s))
        for edit in ("icl", "facts"):
          g = table.value("gain", p=p, seed=seed, edit=edit, tasks=kind)
          if table.value("chosen_layer", p=p, seed=seed, edit=edit) == -1:
            assert g == 0.0  # the unpruned model kept: the very same errors
      # the edit chosen on fresh tasks is the best there, and beats the unpruned model
      chosen = table.where(measure="chosen_rank", p=p, seed=seed, edit="icl").rows[0]
      if chosen["module"]:
        layer = int(table.value("chosen_layer", p=p, seed=seed, edit="icl"))
        e = table.value("select_mean", p=p, seed=seed, tasks="fresh", module=chosen["module"], layer=layer,
                        rank=int(chosen["value"]))
        assert e == sel.min() or e == table.values("select_mean", p=p, seed=seed, tasks="fresh").min()
        assert e < table.value("select_mean", p=p, seed=seed, tasks="fresh", edit="none")
  (c,) = in_weights.claims(table, meta)
  assert c.id == "in_weights" and c.seeds == len(s.train.seeds)
  (p,) = s.probs  # the gains' means and t-intervals over seeds (scipy; a constant's is itself), as the claim reads

  def ci(g):
    return st.ttest_1samp(g, 0.0).confidence_interval(0.95) if np.ptp(g) > 0 else (g[0], g[0])

  g, icl = table.values("gain", p=p, edit="facts", tasks="w0"), table.values("gain", p=p, edit="icl", tasks="fresh")
  assert f"p={p}: on w₀ {text.num(g.mean())} {text.ci(*ci(g))}, on fresh " in c.ci and g.size == c.seeds
  assert c.ci.endswith(f"edit chosen on fresh tasks, on fresh {text.num(icl.mean())} {text.ci(*ci(icl))}")
  assert (c.verdict == "holds" or c.verdict.startswith("fails: w₀ tasks gain")) == (ci(g)[0] > 0)
  paths = in_weights_view.plot(table, meta, tmp_path / "figures")
  assert all(p.exists() and p.stat().st_size > 0 for p in paths)
  md = in_weights_view.report(table, meta)
  assert "in_weights_tradeoff.png" in md and "n/a" not in md
