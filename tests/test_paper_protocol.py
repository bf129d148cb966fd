"""The per-task protocol: multi-query forward, exact errors, selection, candidates, and a smoke run."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as st

from lintheory.core import edits, model, protocol, tasks
from lintheory.core.model import ModelConfig
from lintheory.studies import engine, paper_protocol as pp, text
from conftest import random_params
from lintheory.studies.views import paper_protocol as pp_view

ERRORS = jax.jit(protocol.task_errors, static_argnums=(2, 3, 4, 5))
ARCHS = [("linear", None), ("softmax", None), ("linear", "relu")]


@pytest.mark.parametrize("attention,mlp", ARCHS)
def test_multi_query_forward_equals_one_query_forward(attention, mlp):
  cfg = ModelConfig(d=3, n_layers=3, attention=attention, mlp=mlp, mlp_hidden=8)
  p = random_params(cfg, scale=0.3)
  b = tasks.sample(jax.random.key(1), tasks.TaskConfig(d=3, n_context=6), 4, dtype=jnp.float64)
  Xq = jax.random.normal(jax.random.key(2), (4, 5, 3), jnp.float64)
  Zs = jnp.concatenate([b.X, b.y[..., None]], axis=-1)
  many = jax.jit(model.forward_queries, static_argnums=3)(p, Zs, Xq, cfg)
  one_query = jax.jit(jax.vmap(lambda x_q: model.forward(p, tasks.tokens(b.X, b.y, x_q), cfg)[0], in_axes=1, out_axes=1))
  one = one_query(Xq)
  np.testing.assert_allclose(many, one, rtol=1e-12, atol=1e-12)


def search(params, s):
  """The candidates paper_protocol searches under its settings s."""
  return protocol.candidates(params, s.kinds, s.modules, s.rates)


def edit(params_S, cands, s):
  """Every candidate's stacked parameters as paper_protocol makes them under its settings s."""
  return protocol.edited_params(jax.random.key(pp.EDIT_KEY), params_S, cands, s.rates, s.niter, s.cumulative)


def linear_setup(shots=6, d=3):
  cfg = ModelConfig(d=d, n_layers=2)
  task = tasks.TaskConfig(d=d, n_context=shots)
  return cfg, random_params(cfg), task


def test_linear_error_is_the_exact_population_error():
  """For Σ = I the queries √d·e_j are an exact cubature of E_x (ŷ − w·x)², so the sampled-query path
  with those queries must give the exact path's (ŵ − w)ᵀ(ŵ − w)."""
  cfg, p, task = linear_setup()
  data = protocol.sample_data(jax.random.key(0), task, 5, 8, 0, jnp.float64)
  _, exact = ERRORS(p, data, cfg, 6, (4, 8), (0.0,), jnp.eye(3))
  cubature = dict(data, Xt=jnp.broadcast_to(np.sqrt(3) * jnp.eye(3), (5, 3, 3)))
  _, sampled = ERRORS(p, cubature, cfg, 6, (4, 8), (0.0,), jnp.eye(3))
  np.testing.assert_allclose(exact, sampled, rtol=1e-12)


def test_validation_errors_are_nested_means_with_scaled_noise():
  cfg, p, task = linear_setup()
  data = protocol.sample_data(jax.random.key(0), task, 4, 8, 2, jnp.float64)
  val, _ = ERRORS(p, data, cfg, 6, (2, 8), (0.0, 0.5), jnp.eye(3))
  Zs = jnp.concatenate([data["X"], data["y"][..., None]], axis=-1)
  y_hat = model.forward_queries(p, Zs, data["Xv"], cfg)
  y = jnp.einsum("bvd,bd->bv", data["Xv"], data["w"]) + 0.5 * data["eps"]
  np.testing.assert_allclose(val[:, 1, 1], jnp.mean((y_hat - y) ** 2, 1), rtol=1e-12)
  np.testing.assert_allclose(val[:, 0, 1], jnp.mean((y_hat[:, :2] - y[:, :2]) ** 2, 1), rtol=1e-12)


def test_exact_validation_errors_are_the_sampled_ones_in_closed_form():
  """The linear path's quadratic form in ŵ − w equals the mean over the validation queries of the
  squared error of ŷ = forward on each query (every V, every noise level)."""
  cfg, p, task = linear_setup()
  data = protocol.sample_data(jax.random.key(5), task, 4, 8, 0, jnp.float64)
  val, _ = ERRORS(p, data, cfg, 6, (3, 8), (0.0, 0.5), jnp.eye(3))
  Zs = jnp.concatenate([data["X"], data["y"][..., None]], axis=-1)
  y_hat = model.forward_queries(p, Zs, data["Xv"], cfg)
  for iz, sigma in enumerate((0.0, 0.5)):
    y = jnp.einsum("bvd,bd->bv", data["Xv"], data["w"]) + sigma * data["eps"]
    for iv, V in enumerate((3, 8)):
      np.testing.assert_allclose(val[:, iv, iz], jnp.mean((y_hat[:, :V] - y[:, :V]) ** 2, 1), rtol=1e-11)


def test_candidates_started_from_the_shared_prefix_equal_the_full_evaluation():
  """evaluate_exact (each edited layer's candidates start from the unpruned state there) gives
  evaluate_all's numbers to round-off, for every candidate, seed and task."""
  cfg = ModelConfig(d=3, n_layers=3)
  p_S = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.5 * a]), random_params(cfg))
  s = dataclasses.replace(pp.PROFILES["tiny"], layers=3, Vs=(2, 5), modules=("attn", "v"))
  cands = search(p_S, s)
  p_CS = edit(p_S, cands, s)
  data = protocol.sample_data(jax.random.key(6), tasks.TaskConfig(d=3, n_context=6), 7, 5, 0, jnp.float64)
  groups = protocol.layer_groups(cands, p_CS, 3)
  assert sorted(groups) == [0, 1, 2] and all(len(g[0]) > 2 for g in groups.values())
  val, test = protocol.evaluate_exact(groups, p_S, data, jnp.eye(3), 6, s.Vs, s.val_noise, 4, len(cands))
  val_ref, test_ref = protocol.evaluate_all(p_CS, data, jnp.eye(3), cfg, 6, (2, 5), tuple(s.val_noise), 4)
  np.testing.assert_allclose(test, test_ref, rtol=1e-11)
  np.testing.assert_allclose(val, val_ref, rtol=1e-11)
  assert len(np.unique(test[:, 0, 0].round(10))) > 5  # the candidates differ


def test_select_takes_the_validation_best_with_ties_to_the_smaller_xi():
  xi = np.array([0.0, 0.5, 0.1, 0.1, 0.0])
  val = np.array([[3.0, 3.0, 2.0, 5.0],
                  [1.0, 1.0, 1.0, 5.0],
                  [1.0, 2.0, 1.0, np.nan],
                  [1.0, 2.0, 0.5, 5.0],
                  [4.0, 1.0, 2.0, 5.0]])
  # column 0: ξ 0.1 (index 2) beats ξ 0.5 and the later ξ 0.1; column 1: ξ 0 (index 4) beats 0.5;
  # column 2: the unique best; column 3: ties among all finite ones → the first ξ = 0.
  np.testing.assert_array_equal(protocol.select(val, xi), [2, 4, 3, 0])
  with pytest.raises(ValueError, match="val_CB must be"):
    protocol.select(val[:, 0], xi)


def test_candidates_deduplicate_ranks_and_match_across_families():
  cfg = ModelConfig(d=3, n_layers=4, mlp="relu", mlp_hidden=8)
  p = random_params(cfg, scale=0.3)
  s = pp.PROFILES["tiny"]
  cands = search(p, s)
  assert cands[0] == protocol.UNPRUNED
  per_kind = {k: [c for c in cands if c.kind == k] for k in edits.KINDS}
  ranks = protocol.distinct_ranks((4, 4), s.rates)  # D = 4: ranks 4, 3, 2, 1, 0
  assert ranks == (4, 3, 2, 1, 0)
  n_module_layers = 5 * 4  # attn, q, k, v, mlp × layers 0, 1, 2, 3
  assert len(per_kind["svd"]) == n_module_layers * 4  # the full rank is the unpruned model itself
  assert len(per_kind["svd_rand"]) == n_module_layers * 5  # rate 0 kept: it changes the weights
  for k in edits.CONTROLS:
    assert [(c.module, c.layer, c.xi, c.ranks) for c in per_kind[k]] == \
           [(c.module, c.layer, c.xi, c.ranks) for c in per_kind["svd"]]
  assert protocol.layer_set(2) == (0, 1) and protocol.layer_set(6) == (0, 1, 4, 5)


def test_candidates_cover_the_paper_layers_whatever_the_number_of_seeds():
  """With S = 3 seeds of an L = 4 model: layers {0, 1, 2, 3} (not a count of seeds), and every
  candidate but the unpruned one changes its layer's weights (no edit falls outside the model)."""
  cfg = ModelConfig(d=3, n_layers=4)
  p_S = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.5 * a, 2 * a]), random_params(cfg, scale=0.3))
  s = dataclasses.replace(pp.PROFILES["tiny"], modules=("v",), kinds=("svd",), layers=4)
  cands = search(p_S, s)
  assert sorted({c.layer for c in cands[1:]}) == [0, 1, 2, 3]
  stacked = edit(p_S, cands, s)
  for i, c in enumerate(cands[1:], start=1):
    assert float(jnp.max(jnp.abs(stacked["W_V"][i][:, c.layer] - p_S["W_V"][:, c.layer]))) > 1e-3, c


def test_stacked_controls_match_the_svd_edit_matrix_by_matrix():
  cfg = ModelConfig(d=3, n_layers=2)
  p_S = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), random_params(cfg, scale=0.3))
  s = dataclasses.replace(pp.PROFILES["tiny"], modules=("attn", "v"))
  cands = search(p_S, s)
  stacked = edit(p_S, cands, s)
  svd = {(c.module, c.layer, c.ranks): i for i, c in enumerate(cands) if c.kind == "svd"}
  checked = 0
  for i, c in enumerate(cands):
    for name in p_S:
      delta = np.asarray(stacked[name][i] - p_S[name])  # [S, L, D, D]
      touched = c.kind != "none" and name in edits.prune.module_names(p_S, c.module)
      untouched_layers = [l for l in range(2) if not (touched and l == c.layer)]
      assert np.all(delta[:, untouched_layers] == 0), (c, name)
      if touched and c.kind in edits.CONTROLS:
        ref = np.asarray(stacked[name][svd[c.module, c.layer, c.ranks]] - p_S[name])[:, c.layer]
        np.testing.assert_allclose(np.linalg.norm(delta[:, c.layer], axis=(-2, -1)),
                                   np.linalg.norm(ref, axis=(-2, -1)), rtol=1e-12)
        checked += 1
  assert checked == 3 * 4 * 2 * 4  # controls × matrices (W_Q, W_K, W_V, W_V) × layers × ranks


@pytest.mark.slow  # an end-to-end tiny run, like tests/test_studies.py under `make test-all`
def test_smoke_tiny_run_plot_report_claims(tmp_path):
  t0 = time.perf_counter()
  flags = engine.Flags(profile="tiny", results=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
  engine.run_study("paper_protocol", flags)
  table, meta = engine.load(tmp_path / "results", "paper_protocol")
  assert not meta["failures"]
  paths = pp_view.plot(table, meta, tmp_path / "figures")
  assert {p.name for p in paths} >= {"paper_protocol_gain.png", "paper_protocol_fraction.png"}
  md = pp_view.report(table, meta)
  assert "paper_protocol_gain.png" in md and "n/a" not in md
  # every family, layer group, V and validation noise is scored against the same unpruned errors
  for m in table.unique("model", measure="unpruned_mean"):
    for shots in table.unique("shots", measure="unpruned_mean", model=m):
      for seed in meta["seeds"]:
        base = table.values("unpruned_mean", model=m, shots=shots, seed=seed)
        assert base.size > 1 and np.ptp(base) == 0
  # the claims read the table's per-seed gains: Algorithm 1's interval is the t-interval over seeds of the
  # best regime's SVD gain (scipy), and every claim rests on the run's seeds
  enh, alg = pp.claims(table, meta)
  assert (enh.id, alg.id) == ("pruning_enhances", "algorithm1") and enh.seeds == alg.seeds == len(meta["seeds"])
  svd = {pp._label(r): table.values("rel_gain_mean", edit="svd", layers="all", **r) for r in pp.regimes(table)}
  best = max(svd, key=lambda k: svd[k].mean())
  lo, hi = st.ttest_1samp(svd[best], 0.0).confidence_interval(0.95)
  assert alg.ci == text.ci(100 * lo, 100 * hi, 2) + " %" and f"best regime {best}: " in alg.effect
  print(f"smoke: {time.perf_counter() - t0:.1f} s")


def test_cumulative_search_chains_only_the_randomized_svd():
  """Exact truncations are nested (clipping W_r to r' < r is W_r'), so only svd_rand can differ; its
  chained edit at rank r is the randomized clip of the previous rank's edited matrix."""
  cfg = ModelConfig(d=3, n_layers=2)
  p_S = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), random_params(cfg, scale=0.3))
  s = dataclasses.replace(pp.PROFILES["tiny"], modules=("v",), kinds=("svd", "svd_rand"))
  cands = search(p_S, s)
  flat = edit(p_S, cands, s)["W_V"]
  chained = edit(p_S, cands, dataclasses.replace(s, cumulative=True))["W_V"]
  for i, c in enumerate(cands):
    if c.kind == "svd" or c.xi == 0.0:
      np.testing.assert_array_equal(chained[i], flat[i])
  rand = [i for i, c in enumerate(cands) if c.kind == "svd_rand" and c.layer == 1]
  prev, this = cands[rand[1]], cands[rand[2]]
  key = jax.random.split(jax.random.fold_in(jax.random.key(pp.EDIT_KEY),
                                            protocol.tag("svd_rand", "v", 1, this.ranks[0], "W_V")), 2)[0]
  expect = edits.truncate_randomized(key, chained[rand[1]][0, 1], this.ranks[0])
  np.testing.assert_allclose(chained[rand[2]][0, 1], expect, atol=1e-12)
  assert prev.ranks[0] > this.ranks[0]


def test_tail_check_error_is_the_exact_error_at_its_queries():
  """For linear attention the tail check's error is the mean of ((ŵ − w)·x_q)² over the task's queries,
  ŵ from the prompt's Gram matrix (§5), for every seed's model: it measures the model, not a proxy."""
  from lintheory.core import fast
  cfg, p, task = linear_setup(shots=6, d=3)
  params_S = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), p, random_params(cfg, seed=1))
  data = protocol.sample_data(jax.random.key(3), task, 16, 0, 5, jnp.float64)
  err = protocol.query_errors(params_S, data, cfg)
  Zs = jnp.concatenate([data["X"], data["y"][..., None]], axis=-1)
  for k in range(2):
    w_hat = fast.w_hat(jax.tree_util.tree_map(lambda a: a[k], params_S), fast.gram_of(Zs), 6)
    want = jnp.mean(jnp.einsum("bd,bqd->bq", w_hat - data["w"], data["Xt"]) ** 2, axis=-1)
    np.testing.assert_allclose(err[k], want, rtol=1e-10, atol=1e-14)


def test_a_sampled_model_whose_rare_tasks_carry_its_error_is_left_out_of_the_means():
  """Means over n tasks stand only where tasks rarer than 1 in n carry < RARE_SHARE_MAX of the error on
  the tail check's tasks, in every seed (docs/theory.md §11)."""
  from lintheory.studies import engine
  rows = []
  for model, shares in (("exact", None), ("light", (0.05, 0.06)), ("heavy", (0.04, 0.3))):
    for seed in (0, 1):
      rows.append({"model": model, "shots": 8, "edit": "svd", "layers": "all", "V": 4, "val_noise": 0.0,
                   "seed": seed, "measure": "gain_mean", "value": 0.1, "n_tasks": 200})
      if shares:
        rows.append({"model": model, "shots": 8, "seed": seed, "measure": "tail_rare_share", "value": shares[seed],
                     "n_tasks": 100_000})
  table = engine.Table(rows, pp.KEYS)
  assert [pp.means_stand(table, m) for m in ("exact", "light", "heavy")] == [True, True, False]
  assert [r["model"] for r in pp.regimes(table)] == ["exact", "light"]
  assert [r["model"] for r in pp.regimes(table, tailed=True)] == ["exact", "light", "heavy"]
  assert pp._left_out(table).startswith("heavy (its means rest on 200 tasks per seed") and "30 %" in pp._left_out(table)


# --- core.protocol's pure pieces ----------------------------------------------------------------


def test_validation_moments_are_the_sums_over_the_first_V_queries():
  rng = np.random.default_rng(0)
  data = {"Xv": jnp.asarray(rng.standard_normal((3, 6, 2))), "eps": jnp.asarray(rng.standard_normal((3, 6)))}
  mom = protocol.val_moments(data, (1, 4, 6))
  for b in range(3):
    for iv, V in enumerate((1, 4, 6)):
      X, e = np.asarray(data["Xv"][b, :V]), np.asarray(data["eps"][b, :V])
      np.testing.assert_allclose(mom["XX"][b, iv], sum(np.outer(x, x) for x in X), rtol=1e-13)
      np.testing.assert_allclose(mom["Xe"][b, iv], sum(x * ei for x, ei in zip(X, e)), rtol=1e-13)
      np.testing.assert_allclose(mom["ee"][b, iv], np.sum(e**2), rtol=1e-13)


def test_exact_test_error_is_the_population_mean_of_the_squared_error():
  """(ŵ − w)ᵀ Σ (ŵ − w) = E_x ((ŵ − w)·x)² for x ~ N(0, Σ): a Monte-Carlo mean over 2·10⁵ draws agrees
  within 5 of its standard errors."""
  rng = np.random.default_rng(1)
  A = rng.standard_normal((3, 3))
  Sigma = A @ A.T + np.eye(3)
  w, w_hat = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
  data = {"w": jnp.asarray(w), "Xv": jnp.zeros((2, 1, 3)), "eps": jnp.zeros((2, 1))}
  _, test = protocol.exact_errors(jnp.asarray(w_hat), data, protocol.val_moments(data, (1,)), (1,), (0.0,),
                                  jnp.asarray(Sigma))
  x = rng.multivariate_normal(np.zeros(3), Sigma, size=200_000)
  sq = (x @ (w_hat - w).T) ** 2  # [n, B]
  assert np.all(np.abs(np.asarray(test) - sq.mean(0)) < 5 * sq.std(0) / np.sqrt(len(x)))


def test_the_choice_is_each_task_validation_argmin_with_ties_to_the_smaller_xi():
  """chosen_errors against a literal reading of Algorithm 1, task by task, over candidates idx only."""
  rng = np.random.default_rng(2)
  C, S, B = 6, 2, 9
  val = rng.integers(0, 3, (C, S, B, 2, 1)).astype(float)  # few levels: many ties
  test = rng.standard_normal((C, S, B))
  xi = np.array([0.0, 0.5, 0.1, 0.1, 0.9, 0.0])
  idx = np.array([0, 1, 2, 3, 5])
  got = protocol.chosen_errors(val, test, xi, idx)
  assert got.shape == (2, 1, S, B)
  for iv in range(2):
    for s in range(S):
      for b in range(B):
        best = min(idx, key=lambda c: (val[c, s, b, iv, 0], xi[c], c))
        assert got[iv, 0, s, b] == test[best, s, b]


def test_gain_summary_in_closed_form():
  base, chosen, bayes = np.array([1.0, 2.0, 4.0, 8.0]), np.array([1.0005, 1.0, 5.0, 4.0]), np.array([0.25, 0.75])
  r = protocol.gain_summary(base, chosen, bayes, unchanged_rel=1e-3)
  g = [-0.0005, 1.0, -1.0, 4.0]  # gains; headroom = 15/4 − 1/2
  assert r["gain_mean"] == pytest.approx(3.9995 / 4) and r["headroom"] == pytest.approx(3.25)
  assert r["rel_gain_mean"] == pytest.approx(3.9995 / 4 / 3.25) and r["gain_median"] == pytest.approx(0.9995 / 2)
  assert (r["frac_improved"], r["frac_worsened"], r["frac_unchanged"]) == (0.5, 0.25, 0.25)  # |−0.0005| ≤ 10⁻³
  assert r["task_rel_gain_mean"] == pytest.approx(np.mean(np.divide(g, base)))


def test_pooled_chunks_give_the_choices_of_all_tasks_at_once():
  """Per-task choices do not depend on how the tasks are chunked: two chunks pooled equal one chunk of
  all tasks (every choice, the unpruned and Bayes errors, the spent errors; the half sums add up)."""
  rng = np.random.default_rng(3)
  C, S, B = 4, 2, 10
  cands = [protocol.UNPRUNED] + [protocol.Candidate(k, "v", 0, xi, (r,)) for k, xi, r in
                                 (("svd", 0.5, 1), ("svd_rand", 0.0, 2), ("svd_rand", 0.5, 1))]
  e = {"val": rng.standard_normal((C, S, B, 1, 2)), "test": rng.random((C, S, B)) + 0.1, "bayes": rng.random(B),
       "bayes_with_val": rng.random((B, 1, 2)), "ridge_with_val": rng.random((B, 1, 2))}
  summary = lambda e: protocol.chunk_summary(e, cands, ("svd", "svd_rand"), (4,), (0.0, 0.5), 1)
  cut = lambda lo, hi: {k: v[:, :, lo:hi] if k in ("val", "test") else v[lo:hi] for k, v in e.items()}
  whole, pooled = summary(e), protocol.pool([summary(cut(0, 6)), summary(cut(6, B))])
  assert list(pooled["chosen"]) == list(whole["chosen"]) and len(whole["chosen"]) == 2 * 3 * 1 * 2
  for k in whole["chosen"]:
    np.testing.assert_array_equal(pooled["chosen"][k], whole["chosen"][k])
  for k in ("base", "bayes", "bayes_with_val", "ridge_with_val", "rand0"):
    np.testing.assert_array_equal(pooled[k], whole[k])
  np.testing.assert_allclose(pooled["first"] + pooled["second"], e["test"].sum(axis=2), rtol=1e-14)
  assert (pooled["n_first"], pooled["n_second"]) == (3 + 2, 3 + 2)


def test_layer_groups_partition_the_candidates_and_share_the_unpruned_prefix():
  """Every candidate is in exactly one group l, and equals the unpruned model in every layer before l
  (what lets evaluate_exact start it from the unpruned state at l)."""
  cfg = ModelConfig(d=3, n_layers=3)
  p_S = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.5 * a]), random_params(cfg))
  s = dataclasses.replace(pp.PROFILES["tiny"], layers=3, modules=("attn",), kinds=("svd", "null_shrink"))
  cands = search(p_S, s)
  groups = protocol.layer_groups(cands, edit(p_S, cands, s), 3)
  assert sorted(np.concatenate([g[0] for g in groups.values()]).tolist()) == list(range(len(cands)))
  assert 0 in groups[2][0]  # the unpruned model goes with the last layer
  for l, (_, params_cS) in groups.items():
    for n, W in params_cS.items():
      np.testing.assert_array_equal(W[:, :, :l], np.broadcast_to(p_S[n][:, :l], W[:, :, :l].shape))
