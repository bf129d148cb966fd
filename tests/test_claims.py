"""Every decision of every study's claims() on small constructed tables, one test per branch, and the
verdict table built from them (lintheory/studies/verdicts.py).

The expected numbers are computed here from the constructed values (the t-interval from
scipy.stats.ttest_1samp, Spearman's ρ from its rank formula, logs by hand), never with the study's
own helpers; text.num and text.ci only format them. No model is trained and nothing is compiled.
"""

import math

import numpy as np
import pytest
from scipy import stats as st

from lintheory.studies import (deep_recipes, engine, implicit_gd, in_weights, mismatch, one_layer, paper_protocol,
                               positive_control, prune_bound, pruning, text, verdicts)
from lintheory.studies.views import paper_protocol as pp_view

DEFAULT = {"profile": "default"}


def R(measure, value, seed=None, n_tasks=None, **keys):
  """One table row; key columns left out are None, as in a results CSV."""
  return {"measure": measure, "value": float(value), "seed": seed, "n_tasks": n_tasks, **keys}


def t_ci(values, level=0.95):
  lo, hi = st.ttest_1samp(np.asarray(values, float), 0.0).confidence_interval(level)
  return float(lo), float(hi)


def tost(values, margin):
  """TOST by its definition: both one-sided t-tests against ±margin reject at 5 %."""
  v = np.asarray(values, float)
  return (st.ttest_1samp(v, -margin, alternative="greater").pvalue < 0.05
          and st.ttest_1samp(v, margin, alternative="less").pvalue < 0.05)


def only(claims, cid=None):
  (c,) = claims
  assert cid is None or c.id == cid
  return c


# --- the interval over seeds that every claim quotes (text.over_seeds) -------------------------


def test_seed_interval_text_reads_t_order_statistics_a_missing_value_and_a_single_seed():
  """Finite: the t-interval of the mean. A ±inf seed: [x_(1), x_(4)] around the median, coverage 1 − 2·2⁻⁴
  (the widest order interval; none narrower reaches 95 % at n = 4). NaN (no value): counted, left out."""
  assert text.interval([1.0, 2.0, 4.0]) == f"{text.num(7 / 3)} {text.ci(*t_ci([1.0, 2.0, 4.0]))}"
  assert text.interval([1.0, 2.0, 4.0, -math.inf], 2) == (
      "1.5 [−∞, 4.0] (median; 87.5 % order-statistic interval over 4 seeds, 1 of them infinite)")
  assert text.interval([1.0, math.nan, 4.0]) == f"2.50 {text.ci(*t_ci([1.0, 4.0]))} (1 seed(s) without a value)"
  assert text.interval([0.25]) == "0.250 (1 seed, no interval)" and text.over_seeds([0.25, math.nan]) is None


# --- one_layer: the learned step's excess error over the closed-form optimum ------------------


def one_layer_table(cases):
  """cases: name → (closed-form error, the learned Γ_eff's exact error per seed)."""
  rows = []
  for case, (closed, losses) in cases.items():
    rows.append(R("closed_form", closed, case=case))
    rows += [R("Gamma_eff_exact_loss", v, seed=s, case=case) for s, v in enumerate(losses)]
    rows += [R("model_mean", 2 * closed, seed=s, n_tasks=1000, case=case) for s in range(len(losses))]
  return engine.Table(rows, one_layer.KEYS)


NEAR_CASE = (0.5, [0.505, 0.51, 0.515])  # excess 1 %, 2 %, 3 %: 95 % CI [−0.48 %, 4.48 %], below 5 %
FAR_CASE = (0.5, [0.6, 0.62, 0.61])  # excess 20 %, 24 %, 22 %


def test_one_layer_holds_when_every_case_has_its_excess_ci_below_5_percent():
  c = only(one_layer.claims(one_layer_table({"iso": NEAR_CASE}), DEFAULT), "one_layer_gd")
  lo, hi = t_ci([0.01, 0.02, 0.03])
  assert hi < 0.05 and c.verdict == "holds" and c.seeds == 3
  assert c.ci == f"iso: 2.0 % {text.ci(100 * lo, 100 * hi, 2)}" == "iso: 2.0 % [-0.48, 4.5]"


def test_one_layer_fails_when_no_case_is_near_the_optimum():
  c = only(one_layer.claims(one_layer_table({"iso": FAR_CASE, "aniso": FAR_CASE}), DEFAULT))
  lo, hi = t_ci([0.2, 0.24, 0.22])
  assert c.verdict == "fails"
  assert c.ci.startswith(f"iso: 22 % {text.ci(100 * lo, 100 * hi, 2)}; aniso: 22 %")


def test_one_layer_depends_on_the_case_when_only_some_cases_are_near():
  c = only(one_layer.claims(one_layer_table({"iso": NEAR_CASE, "aniso": FAR_CASE}), DEFAULT))
  assert c.verdict == "depends on the case"


def test_one_layer_a_case_whose_mean_is_near_but_whose_ci_reaches_past_5_percent_is_not_near():
  c = only(one_layer.claims(one_layer_table({"iso": (0.5, [0.505, 0.51, 0.545])}), DEFAULT))
  lo, hi = t_ci([0.01, 0.02, 0.09])
  assert np.mean([0.01, 0.02, 0.09]) < 0.05 < hi and c.verdict == "fails"


def test_one_layer_a_case_whose_excess_is_infinite_in_one_seed_is_not_near_the_optimum():
  """The infinite seed stays in: the interval over all 3 seeds is [x_(1), x_(3)] = [1 %, ∞], coverage
  1 − 2·2⁻³."""
  c = only(one_layer.claims(one_layer_table({"iso": (0.5, [0.505, math.inf, 0.51])}), DEFAULT))
  assert c.verdict == "fails" and c.seeds == 3
  assert c.ci == "iso: 2.0 % [1.0, ∞] (median; 75.0 % order-statistic interval over 3 seeds, 1 of them infinite)"


def test_one_layer_decides_nothing_on_an_empty_table():
  assert one_layer.claims(engine.Table([], one_layer.KEYS), DEFAULT) == []


# --- implicit_gd: the closest reference's final distance, per depth at σ = 0 ------------------

KINDS = ("gd", "gd_step", "gd_pp", "precond")
CLOSE = [0.01, 0.02, 0.03]  # 95 % CI [−0.0048, 0.0448]: below 0.1
AWAY = [0.3, 0.35, 0.4]


def igd_table(finals, ident=1e-14, sigma=0.0):
  """finals: L → {reference: final distance per seed}; references not given sit at 0.9. A row at an
  earlier layer (0.001, everywhere) must not be read as the final one."""
  rows = [R("identity_max_abs_err", ident, seed=0, L=1)]
  for L, by_kind in finals.items():
    n = len(next(iter(by_kind.values())))
    for kind in KINDS:
      for s, v in enumerate(by_kind.get(kind, [0.9] * n)):
        rows.append(R("w_rel_dist", v, seed=s, n_tasks=256, sigma=sigma, L=L, reference=kind, layer=L))
        if L > 1:
          rows.append(R("w_rel_dist", 0.001, seed=s, n_tasks=256, sigma=sigma, L=L, reference=kind, layer=L - 1))
  return engine.Table(rows, implicit_gd.KEYS)


def test_implicit_gd_holds_when_every_depth_has_a_gd_reference_within_a_tenth():
  c = only(implicit_gd.claims(igd_table({1: {"gd_pp": CLOSE}, 2: {"gd_step": CLOSE}}), DEFAULT), "implicit_gd")
  lo, hi = t_ci(CLOSE)
  assert c.verdict == "holds" and c.seeds == 3
  assert c.ci == f"L=1: gd_pp 0.020 {text.ci(lo, hi, 2)}; L=2: gd_step 0.020 {text.ci(lo, hi, 2)}"


def test_implicit_gd_depends_on_depth_when_one_depth_is_away():
  c = only(implicit_gd.claims(igd_table({1: {"gd_pp": CLOSE}, 2: {"gd_pp": AWAY}}), DEFAULT))
  assert c.verdict == "depends on depth" and "L=2: gd_pp 0.35" in c.ci


def test_implicit_gd_fails_when_the_identity_is_not_exact():
  c = only(implicit_gd.claims(igd_table({1: {"gd_pp": CLOSE}}, ident=1e-6), DEFAULT))
  assert c.verdict == "fails" and c.effect.startswith("identity exact to 1.0·10^-6")


def test_implicit_gd_the_closest_reference_is_the_lowest_median_and_its_mean_is_reported():
  """gd: median 0 but mean 0.3 (one seed far); gd_pp: 0.05 everywhere. The choice reads the median, the CI the mean."""
  c = only(implicit_gd.claims(igd_table({1: {"gd_pp": CLOSE}, 2: {"gd": [0.0, 0.0, 0.9], "gd_pp": [0.05] * 3}}),
                              DEFAULT))
  lo, hi = t_ci([0.0, 0.0, 0.9])
  assert hi > 0.1 and f"L=2: gd 0.30 {text.ci(lo, hi, 2)}" in c.ci and c.verdict == "depends on depth"


def test_implicit_gd_reads_only_the_noiseless_depths():
  rows = igd_table({1: {"gd_pp": CLOSE}}).rows + igd_table({4: {"gd_pp": AWAY}}, sigma=0.5).rows[1:]
  c = only(implicit_gd.claims(engine.Table(rows, implicit_gd.KEYS), DEFAULT))
  assert c.verdict == "holds" and "L=4" not in c.ci


def test_implicit_gd_fails_when_no_depth_follows_a_reference():
  c = only(implicit_gd.claims(igd_table({1: {"gd_pp": AWAY}, 2: {"gd_pp": AWAY}}), DEFAULT))
  lo, hi = t_ci(AWAY)
  assert lo > 0.1 and c.verdict == "fails" and c.seeds == 3
  assert c.ci == f"L=1: gd_pp 0.35 {text.ci(lo, hi, 2)}; L=2: gd_pp 0.35 {text.ci(lo, hi, 2)}"


def test_implicit_gd_decides_nothing_without_a_noiseless_depth():
  assert implicit_gd.claims(igd_table({4: {"gd_pp": CLOSE}}, sigma=0.5), DEFAULT) == []


def test_implicit_gd_an_inexact_identity_fails_even_without_a_noiseless_depth():
  c = only(implicit_gd.claims(igd_table({4: {"gd_pp": CLOSE}}, ident=1e-6, sigma=0.5), DEFAULT))
  assert c.verdict == "fails" and c.ci == "" and c.seeds == 1 and c.effect.startswith("identity exact to 1.0·10^-6")


def test_implicit_gd_a_depth_with_an_infinite_seed_keeps_it_and_is_not_close():
  """An overflowed model's ŵ is infinitely far: the median picks the reference, the order-statistic
  interval [x_(1), x_(3)] reaches ∞, so L = 2 is not close and the claim depends on depth."""
  c = only(implicit_gd.claims(igd_table({1: {"gd_pp": CLOSE}, 2: {"gd_pp": [0.01, math.inf, 0.02]}}), DEFAULT))
  assert c.verdict == "depends on depth" and c.seeds == 3
  assert "L=2: gd_pp 0.020 [0.010, ∞] (median; 75.0 % order-statistic interval over 3 seeds, 1 of them" in c.ci


# --- pruning: deep − shallow damage of pruning attention, linear models -----------------------


def pruning_table(per_L, model="linear", rank=1):
  """per_L: L → per seed, the median error after pruning attention of each layer to `rank` (None: the
  configuration overflowed, so no row); the unpruned median error is 1 in every seed."""
  rows = []
  for L, seeds in per_L.items():
    for s, errs in enumerate(seeds):
      rows.append(R("median_error", 1.0, seed=s, n_tasks=4096, model=model, L=L, rank=11))
      rows += [R("median_error", e, seed=s, n_tasks=4096, model=model, L=L, layer=layer, module="attn", rank=rank)
               for layer, e in enumerate(errs) if e is not None]
  return rows


DEEP_STABLE = [[10, 1], [100, 1], [10, 0.1]]  # L = 2: deep − shallow = log10(e1 / e0) = −1, −2, −2
DEEP_FRAGILE = [[1, 1, 10, 10], [1, 1, 100, 100], [1, 1, 10, 100]]  # L = 4: mean(layers 2, 3) − mean(0, 1): 1, 2, 1.5


def pruning_claims(*row_sets):
  return pruning.claims(engine.Table([r for rows in row_sets for r in rows], pruning.KEYS), DEFAULT)


def test_pruning_holds_when_the_deep_minus_shallow_damage_has_its_ci_below_zero():
  c = only(pruning_claims(pruning_table({2: DEEP_STABLE})), "deep_stable")
  lo, hi = t_ci([-1, -2, -2])
  assert hi < 0 and c.verdict == "holds" and c.seeds == 3
  assert c.ci == f"L=2 attn: -1.7 {text.ci(lo, hi, 2)}"


def test_pruning_fails_when_the_ci_is_above_zero():
  c = only(pruning_claims(pruning_table({4: DEEP_FRAGILE})))
  lo, hi = t_ci([1, 2, 1.5])
  assert lo > 0 and c.verdict == "fails" and c.ci == f"L=4 attn: 1.5 {text.ci(lo, hi, 2)}"


def test_pruning_is_undecided_when_the_ci_spans_zero():
  assert only(pruning_claims(pruning_table({2: [[10, 1], [1, 10], [1, 1]]}))).verdict == "undecided"


def test_pruning_depends_on_depth_lists_each_depths_verdict_and_skips_other_models():
  c = only(pruning_claims(pruning_table({2: DEEP_STABLE, 4: DEEP_FRAGILE}),
                          pruning_table({2: [[1, 1000], [1, 1000], [1, 100]]}, model="softmax")))
  assert c.verdict == "depends on depth: holds, fails" and "softmax" not in c.ci and c.ci.count("attn") == 2


def test_pruning_damage_is_the_mean_over_the_papers_ranks_only():
  """Ranks 1 and 2 are DAMAGE_RANKS, rank 4 is not: per seed (log10 e₁ − log10 e₀) averaged over ranks 1, 2."""
  r1 = pruning_table({2: [[10, 1], [10, 1], [10, 1]]}, rank=1)
  r2 = [r for r in pruning_table({2: [[100, 1], [100, 10], [1000, 1]]}, rank=2) if r.get("layer") is not None]
  r4 = [r for r in pruning_table({2: [[1, 1e6]] * 3}, rank=4) if r.get("layer") is not None]
  dms = [np.mean([-1, -2]), np.mean([-1, -1]), np.mean([-1, -3])]
  c = only(pruning_claims(r1, r2, r4))
  assert c.ci == f"L=2 attn: {text.num(np.mean(dms), 2)} {text.ci(*t_ci(dms), 2)}" and c.verdict == "holds"


def test_pruning_decides_nothing_with_fewer_than_two_seeds_with_a_value():
  """A seed whose two halves both overflowed has no deep − shallow value (∞ − ∞)."""
  assert pruning_claims(pruning_table({2: [[10, 1], [None, None]]})) == []
  assert pruning_claims(pruning_table({2: [[10, 1]]}, model="softmax")) == []


def test_pruning_holds_when_three_of_six_seeds_overflow_pruning_a_shallow_layer():
  """Overflow is a value: −∞ damage difference. Every seed has deep < shallow, so the order-statistic
  interval [x_(1), x_(6)] (coverage 1 − 2·2⁻⁶) lies below 0: a sign test at p = 2⁻⁶ over all 6 seeds."""
  per_seed = pruning_table({2: DEEP_STABLE + [[None, 1], [None, 0.1], [None, 10]]})
  c = only(pruning_claims(per_seed))
  assert c.verdict == "holds" and c.seeds == 6
  assert c.ci.startswith("L=2 attn: −∞ [−∞, -1.0] (median; 96.9 % order-statistic interval over 6 seeds, 3 of them")


def test_pruning_holds_when_three_of_five_seeds_overflow_and_the_rest_are_below_zero():
  c = only(pruning_claims(pruning_table({2: [[10, 1], [100, 1], [None, 1], [None, 0.1], [None, 10]]})))
  assert c.verdict == "holds" and c.seeds == 5 and "93.8 % order-statistic interval over 5 seeds, 3 of them" in c.ci


def test_pruning_is_undecided_when_a_seeds_deep_pruning_overflowed_and_keeps_that_seed():
  """+∞ (pruning a deep layer overflowed) is the strongest evidence against Remark 5: it stays in."""
  c = only(pruning_claims(pruning_table({2: DEEP_STABLE + [[10, None]]})))
  assert c.verdict == "undecided" and c.seeds == 4 and "[-2.0, ∞]" in c.ci.replace("+∞", "∞")


def test_pruning_fails_when_every_seed_has_deep_above_shallow_one_of_them_infinite():
  c = only(pruning_claims(pruning_table({2: [[1, 10], [1, 100], [0.1, 10], [1, None]]})))
  assert c.verdict == "fails" and c.seeds == 4


# --- prune_bound: Spearman ρ between a finite bound and the measured gap ----------------------

CONFIGS = [(0, "attn", 1), (0, "attn", 2), (1, "v", 1), (1, "v", 2)]
GAP = [1.0, 2.0, 3.0, 4.0]


def spearman_by_hand(x, y):
  """1 − 6 Σ d² / (n (n² − 1)) on the finite pairs (no ties)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  ok = np.isfinite(x) & np.isfinite(y)
  rx, ry = np.argsort(np.argsort(x[ok])), np.argsort(np.argsort(y[ok]))
  n = ok.sum()
  return 1 - 6 * np.sum((rx - ry) ** 2) / (n * (n * n - 1))


def pb_rows(cmi, sub, L=4, zero=None):
  """cmi, sub: per seed the bound at each of CONFIGS (their gaps are GAP); inf: the bound is infinite there.
  zero: per seed the zero predictor's loss (`trivial`, the same at every configuration), or None."""
  rows = [R("gap", 0.1, seed=0, n_tasks=64, L=L)]
  for measure, gap, per_seed in (("cmi_bound", "cmi_gap_clipped", cmi), ("bound_subspace", "gap_tail_mean", sub)):
    for s, bounds in enumerate(per_seed):
      for (layer, module, rank), b, g in zip(CONFIGS, bounds, GAP):
        keys = dict(seed=s, n_tasks=64, L=L, layer=layer, module=module, rank=rank)
        rows += [R(measure, b, **keys), R(gap, g, **keys)]
  for s, z in enumerate(zero or []):
    rows += [R("trivial", z, seed=s, n_tasks=64, L=L, layer=layer, module=module, rank=rank)
             for layer, module, rank in CONFIGS]
  return rows


def pb_table(cmi, sub, L=4, zero=None):
  return engine.Table(pb_rows(cmi, sub, L, zero), prune_bound.KEYS)


META_PB = {"profile": "default", "settings": {"noise_std": 0.5}}
INF4 = [[math.inf] * 4] * 3
TRACKS = [[1, 2, 3, 4], [2, 1, 3, 4], [2, 1, 4, 3]]  # ρ = 1, 0.8, 0.6: CI [0.30, 1.30]
AGAINST = [b[::-1] for b in TRACKS]  # ρ = −1, −0.8, −0.6: CI [−1.30, −0.30]
NOISY = [[1, 2, 3, 4], [4, 3, 2, 1], [3, 1, 2, 4]]  # ρ = 1, −1, 0.4
CMI, SUB = "CMI bound (clipped loss)", "subspace bound (V_t)"


def test_prune_bound_holds_for_the_bound_whose_rho_ci_is_above_zero():
  c = only(prune_bound.claims(pb_table(TRACKS, INF4), META_PB), "theorem2")
  rho = [spearman_by_hand(b, GAP) for b in TRACKS]
  assert rho == pytest.approx([1.0, 0.8, 0.6])
  lo, hi = t_ci(rho)
  assert lo > 0 and c.verdict == f"holds for {CMI}" and c.seeds == 3
  assert c.ci == (f"L=4 {SUB}: ρ undefined (0 of 3 seeds with a ρ); "
                  f"L=4 {CMI}: ρ = 0.80 {text.ci(lo, hi, 2)} (3 of 3 seeds)")
  assert c.detail.startswith("the as-written bound is +∞; finite versions at σ = 0.5: ")
  assert c.detail.endswith(f"Seeds out: {SUB}: " + "; ".join(
      f"seed {s} (its value is +∞ in every configuration, so ρ is undefined for it)" for s in range(3)))


def test_prune_bound_is_contradicted_when_a_rho_ci_lies_below_zero():
  rho = [spearman_by_hand(b, GAP) for b in AGAINST]
  assert rho == pytest.approx([-1.0, -0.8, -0.6]) and t_ci(rho)[1] < 0
  c = only(prune_bound.claims(pb_table(AGAINST, INF4), META_PB))
  assert c.verdict == f"contradicted for {CMI}: ρ's CI lies below 0" and c.seeds == 3
  assert f"L=4 {CMI}: ρ = -0.80 {text.ci(*t_ci(rho), 2)} (3 of 3 seeds)" in c.ci


def test_prune_bound_depends_on_the_version_when_one_tracks_and_another_is_contradicted():
  c = only(prune_bound.claims(pb_table(TRACKS, AGAINST), META_PB))
  assert c.verdict == f"depends on the version: holds for {CMI}, contradicted for {SUB}" and c.seeds == 3


def test_prune_bound_names_the_depth_of_each_version_when_there_are_several():
  rows = pb_rows(TRACKS, INF4, L=2) + pb_rows(AGAINST, INF4, L=4)
  c = only(prune_bound.claims(engine.Table(rows, prune_bound.KEYS), META_PB))
  assert c.verdict == f"depends on the version: holds for L=2 {CMI}, contradicted for L=4 {CMI}"


def test_prune_bound_seeds_are_those_behind_the_deciding_interval_and_the_seed_out_is_named():
  """The committed results' shape: 5 seeds, one whose subspace form is +∞ in every configuration, so the
  contradicting interval rests on 4 (the CMI estimate's, which decides nothing, on 5)."""
  sub = [[1, 2, 3, 4][::-1], [2, 1, 3, 4][::-1], [2, 1, 4, 3][::-1], [1, 3, 2, 4][::-1], [math.inf] * 4]
  rho = [spearman_by_hand(b, GAP) for b in sub[:4]]
  assert t_ci(rho)[1] < 0 and t_ci([spearman_by_hand(b, GAP) for b in NOISY + NOISY[:2]])[0] < 0
  c = only(prune_bound.claims(pb_table(NOISY + NOISY[:2], sub), META_PB))
  assert c.verdict == f"contradicted for {SUB}: ρ's CI lies below 0" and c.seeds == 4
  assert f"L=4 {SUB}: ρ = {text.num(np.mean(rho), 2)} {text.ci(*t_ci(rho), 2)} (4 of 5 seeds)" in c.ci
  assert c.detail.endswith(f"Seeds out: {SUB}: seed 4 (its value is +∞ in every configuration, so ρ is "
                           "undefined for it)")


def test_prune_bound_is_not_shown_when_every_defined_rho_ci_reaches_zero():
  c = only(prune_bound.claims(pb_table(NOISY, NOISY), META_PB))
  assert t_ci([1, -1, 0.4])[0] < 0 < t_ci([1, -1, 0.4])[1]
  assert c.verdict == "not shown: every finite version's ρ has a CI containing 0" and c.seeds == 3


def test_prune_bound_is_undecided_when_no_bound_is_finite():
  c = only(prune_bound.claims(pb_table(INF4, INF4), META_PB))
  assert c.verdict == "undecided: no finite bound" and c.seeds == 0 and c.ci.count("ρ undefined") == 2


def test_prune_bound_rho_of_a_seed_uses_its_finite_configurations_and_drops_a_constant_seed():
  """Seed 0: bound infinite at one configuration, ρ over the other three; seed 3: a constant bound, no ρ;
  on the subspace side seed 0 is finite at two configurations only, too few for ρ."""
  cmi = [[math.inf, 2, 3, 4], [2, 1, 3, 4], [2, 1, 4, 3], [5, 5, 5, 5]]
  rho = [spearman_by_hand(b, GAP) for b in cmi[:3]]
  assert rho == pytest.approx([1.0, 0.8, 0.6])
  sub = [[1, math.inf, 2, math.inf]] + INF4
  c = only(prune_bound.claims(pb_table(cmi, sub), META_PB))
  assert c.seeds == 3 and f"ρ = 0.80 {text.ci(*t_ci(rho), 2)} (3 of 4 seeds)" in c.ci
  assert (f"{CMI}: seed 3 (its value is the same in every configuration where it is finite, so ρ is undefined "
          "for it)") in c.detail
  assert (f"{SUB}: seed 0 (its value and gap are both finite in only 2 configurations (ρ needs 3), so ρ is "
          "undefined for it); seed 1 (its value is +∞") in c.detail


def test_prune_bound_reports_vacuity_as_value_over_the_zero_predictors_loss():
  """Per configuration and seed, value ÷ that seed's zero-predictor loss; the median and range over the
  finite rows, and in how many of all rows it is below 1 (non-vacuous)."""
  zero = [2.0, 4.0, 8.0]
  sub = [[1, 2, 3, 4], [math.inf] * 4, [8, 16, 24, 32]]
  ratio_sub = [1 / 2, 2 / 2, 3 / 2, 4 / 2, 1, 2, 3, 4]  # seed 2: 8/8 … 32/8
  ratio_cmi = [b / z for bs, z in zip(TRACKS, zero) for b in bs]
  c = only(prune_bound.claims(pb_table(TRACKS, sub, zero=zero), META_PB))
  for label, ratio, n in ((SUB, ratio_sub, 12), (CMI, ratio_cmi, 12)):
    r = np.array(ratio)
    assert (f"{label}: value ÷ the zero predictor's loss {text.num(np.median(r), 3)} (median; range "
            f"{text.num(r.min(), 3)} to {text.num(r.max(), 3)}) over the {r.size} of {n} rows (configurations × "
            f"seeds) where it is finite; non-vacuous (value < the zero predictor's loss) in {int(np.sum(r < 1))} "
            f"of {n} rows") in c.detail
  assert f"{SUB}: value ÷ the zero predictor's loss 1.75" in c.detail  # median of 0.5, 1, 1, 1.5, 2, 2, 3, 4
  assert "non-vacuous (value < the zero predictor's loss) in 1 of 12 rows" in c.detail  # ratio_sub: only 1/2
  none = only(prune_bound.claims(pb_table(TRACKS, INF4, zero=zero), META_PB))
  assert f"{SUB}: no finite value in 12 rows" in none.detail
  assert f"{CMI}: vacuity not measured (no zero-predictor loss, `trivial`, in the results)" in \
      only(prune_bound.claims(pb_table(TRACKS, INF4), META_PB)).detail


def test_prune_bound_says_which_learner_each_version_concerns():
  d = only(prune_bound.claims(pb_table(TRACKS, INF4), META_PB)).detail
  assert (f"the {SUB} is a theorem for the gap of the paper's noisy learner" in d and "log of the mean" in d
          and "one-sided upper confidence bound" in d and "does not bound the deterministic ŵ_L's gap" in d)
  assert (f"the {CMI} is a theorem for the gap of the deterministic ŵ_L's clipped, quantised loss" in d
          and "bootstrap upper confidence bound" in d)


# --- paper_protocol: SVD against its null controls, and Algorithm 1 against the unpruned model -

SVD = [0.5, 0.6, 0.55]
BELOW = [0.8, 0.85, 0.95]  # a control above SVD in every seed
CTRL = {"null_dirs": [0.1, 0.12, 0.08], "null_gauss": [0.05, 0.0, 0.1], "null_shrink": [0.2, 0.25, 0.3]}


def pp_rows(rel, model="linear", shots=20, V=64, z=0.0, n_tasks=100):
  """rel: edit → per-seed mean gain in fractions of the headroom, layers {0, 1, L−2, L−1}."""
  rows = []
  for edit, vals in rel.items():
    for s, v in enumerate(vals):
      keys = dict(seed=s, n_tasks=n_tasks, model=model, shots=shots, edit=edit, layers="all", V=V, val_noise=z)
      rows += [R("rel_gain_mean", v, **keys), R("gain_mean", 0.01 * v, **keys)]
  return rows


def pp_claims(*row_sets):
  c = paper_protocol.claims(engine.Table([r for rows in row_sets for r in rows], paper_protocol.KEYS), DEFAULT)
  assert [x.id for x in c] == ["pruning_enhances", "algorithm1"]
  return c


def test_paper_protocol_holds_when_svd_beats_every_control_by_the_sesoi():
  enh, alg = pp_claims(pp_rows({"svd": SVD, **CTRL}))
  diff = np.subtract(SVD, CTRL["null_shrink"])  # the strongest control: the smallest mean difference
  assert enh.verdict == "holds in 1 of 1 regimes" and enh.seeds == 3
  assert enh.effect.endswith(f"(null_shrink), % of headroom, in the regime where SVD's own gain is largest "
                             f"(linear N=20 V=64 σ_val=0, SVD's gain {text.num(100 * np.mean(SVD), 2)} %): "
                             f"{text.num(100 * diff.mean(), 2)} %")
  assert enh.ci == text.ci(*(100 * x for x in t_ci(diff)), 2) + " %"
  assert alg.verdict == "holds in 1 of 1 regimes"
  assert alg.effect.endswith(f"best regime linear N=20 V=64 σ_val=0: {text.num(100 * np.mean(SVD), 2)} %")
  assert alg.ci == text.ci(*(100 * x for x in t_ci(SVD)), 2) + " %"


def test_paper_protocol_pruning_fails_where_svd_is_equivalent_to_a_control():
  shrink = list(np.subtract(SVD, [0.001, -0.001, 0.0]))
  assert tost(np.subtract(SVD, shrink), paper_protocol.SESOI)
  enh, _ = pp_claims(pp_rows({"svd": SVD, **CTRL, "null_shrink": shrink}))
  assert enh.verdict == "fails in 1 of 1 regimes"


def test_paper_protocol_pruning_fails_where_svd_beats_a_control_significantly_but_by_less_than_the_sesoi():
  shrink = list(np.subtract(SVD, [0.03, 0.031, 0.029]))
  assert t_ci([0.03, 0.031, 0.029])[0] > 0 and tost([0.03, 0.031, 0.029], paper_protocol.SESOI)
  enh, _ = pp_claims(pp_rows({"svd": SVD, **CTRL, "null_shrink": shrink}))
  assert enh.verdict == "fails in 1 of 1 regimes"


def test_paper_protocol_pruning_is_undecided_when_svd_beats_the_controls_without_a_gain_of_its_own():
  """Every control loses (−0.55); SVD beats them by 0.55 but its own gain's CI spans 0."""
  svd, ctl = [0.1, -0.1, 0.05], [-0.5, -0.6, -0.55]
  assert t_ci(svd)[0] < 0 < t_ci(np.subtract(svd, ctl))[0]
  enh, _ = pp_claims(pp_rows({"svd": svd, **{k: ctl for k in CTRL}}))
  assert enh.verdict == "undecided"


def test_paper_protocol_pruning_fails_where_svd_is_below_a_control():
  enh, _ = pp_claims(pp_rows({"svd": SVD, **CTRL, "null_shrink": BELOW}))
  assert t_ci(np.subtract(SVD, BELOW))[1] < 0 and enh.verdict == "fails in 1 of 1 regimes"


def test_paper_protocol_pruning_is_undecided_when_a_difference_is_neither_clear_nor_equivalent():
  shrink = list(np.subtract(SVD, [0.3, -0.2, 0.1]))
  enh, _ = pp_claims(pp_rows({"svd": SVD, **CTRL, "null_shrink": shrink}))
  assert enh.verdict == "undecided"


@pytest.mark.parametrize("svd, verdict", [
    ([0.001, 0.0, -0.001], "fails"),  # equivalent to no gain (TOST within ±5 % of the headroom)
    ([-0.3, -0.35, -0.25], "fails"),  # CI below 0
    ([0.02, 0.021, 0.019], "fails"),  # significant, but smaller than the SESOI: equivalent to 0
    ([0.3, -0.2, 0.1], "undecided"),
    ([0.06, 0.07, 0.08], "holds"),  # CI above 0 and mean above the SESOI
])
def test_paper_protocol_algorithm1_branches(svd, verdict):
  lo, hi = t_ci(svd)
  expected = ("holds" if lo > 0 and np.mean(svd) > 0.05 else
              "fails" if hi < 0 or tost(svd, 0.05) else "undecided")
  assert expected == verdict
  _, alg = pp_claims(pp_rows({"svd": svd, **CTRL}))
  assert alg.verdict.split(" in ")[0] == verdict


def test_paper_protocol_tallies_the_regimes():
  hold = pp_rows({"svd": SVD, **CTRL}, V=64)
  undecided = pp_rows({"svd": SVD, **CTRL, "null_shrink": list(np.subtract(SVD, [0.3, -0.2, 0.1]))}, V=256)
  fail = pp_rows({"svd": SVD, **CTRL, "null_shrink": BELOW}, V=16)
  assert pp_claims(hold, undecided)[0].verdict == "holds in 1 of 2 regimes, undecided in 1"
  assert pp_claims(fail, undecided)[0].verdict == "fails in 1 of 2 regimes, undecided in 1"
  assert pp_claims(hold, fail)[0].verdict == "depends: holds in 1, fails in 1, undecided in 0 of 2 regimes"
  assert pp_claims(hold, pp_rows({"svd": SVD, **CTRL}, V=256))[0].verdict == "holds in 2 of 2 regimes"


def test_paper_protocol_most_favourable_is_the_regime_where_svds_own_gain_is_largest():
  """V = 64: SVD gains 55 % and beats its strongest control by 25 %; V = 16: SVD gains 30 % and beats
  every control by 80 % or more. The effect is quoted at V = 64, where SVD's own gain is largest (the
  rule before this one took the regime with the largest difference to the strongest control)."""
  low = [0.25, 0.3, 0.35]
  big_gap = pp_rows({"svd": low, **{k: [-0.5, -0.55, -0.6] for k in CTRL}}, V=16)
  enh, alg = pp_claims(pp_rows({"svd": SVD, **CTRL}, V=64), big_gap)
  diff = np.subtract(SVD, CTRL["null_shrink"])
  assert f"(linear N=20 V=64 σ_val=0, SVD's gain {text.num(100 * np.mean(SVD), 2)} %): " \
         f"{text.num(100 * diff.mean(), 2)} %" in enh.effect
  assert enh.ci == text.ci(*(100 * x for x in t_ci(diff)), 2) + " %"
  assert "best regime linear N=20 V=64 σ_val=0: " in alg.effect
  enh, _ = pp_claims(pp_rows({"svd": [-0.9, -0.8, -0.7], **CTRL}, V=64), big_gap)  # SVD loses at V = 64
  assert "(linear N=20 V=16 σ_val=0, SVD's gain 30 %): " in enh.effect


def test_paper_protocol_seeds_are_the_seeds_behind_the_quoted_interval():
  """softmax has 4 seeds, linear 3: the seed count follows the regime whose interval is quoted (before,
  it was every seed of the table, 4, whichever regime was quoted)."""
  four = pp_rows({"svd": SVD + [0.5], **{k: v + [v[0]] for k, v in CTRL.items()}}, model="softmax")
  enh, alg = pp_claims(pp_rows({"svd": [0.9, 0.95, 1.0], **CTRL}), four)
  assert "(linear N=20" in enh.effect and enh.seeds == alg.seeds == 3
  enh, alg = pp_claims(pp_rows({"svd": [0.1, 0.15, 0.2], **CTRL}), four)
  assert "(softmax N=20" in enh.effect and enh.seeds == alg.seeds == 4
  assert enh.ci == text.ci(*(100 * x for x in t_ci(np.subtract(SVD + [0.5], CTRL["null_shrink"] + [0.2]))), 2) + " %"


def test_paper_protocol_without_a_null_control_svd_is_undecided_and_no_difference_is_quoted():
  enh, alg = pp_claims(pp_rows({"svd": SVD}))
  assert enh.verdict == "undecided" and enh.effect == "no null control searched" and enh.seeds == 0
  assert alg.verdict == "holds in 1 of 1 regimes" and alg.seeds == 3


def test_paper_protocol_table_shows_every_regime_behind_the_counts_with_its_decision():
  """Both validation noise levels are rows, each with its own decision under both rules; their tally is
  the verdict's; a model whose means do not stand is listed, not counted."""
  noisy = pp_rows({"svd": SVD, **CTRL, "null_shrink": BELOW}, z=0.5)  # fails, Algorithm 1 holds
  quiet = pp_rows({"svd": [0.3, -0.2, 0.1], **CTRL}, z=0.0)  # undecided under both rules
  heavy = pp_rows({"svd": SVD, **CTRL}, model="heavy", n_tasks=200)
  tail = [R("tail_rare_share", 0.3, seed=s, n_tasks=100_000, model="heavy", shots=20) for s in range(3)]
  extra = [R(m, 0.5, seed=s, n_tasks=100, model=model, shots=20, edit="svd", layers=layers, V=64, val_noise=z)
           for model, z in (("linear", 0.0), ("linear", 0.5), ("heavy", 0.0)) for s in range(3)
           for m, layers in (("frac_improved", "all"), ("frac_unchanged", "all"), ("frac_worsened", "all"),
                             ("task_rel_gain_median", "all"), ("rel_gain_mean", "deep"), ("rel_gain_mean", "shallow"))]
  table = engine.Table(noisy + quiet + heavy + tail + extra, paper_protocol.KEYS)
  head, rows = pp_view.regime_table(table)
  col = {h: i for i, h in enumerate(head)}
  got = {(r[col["model"]], r[col["σ_val"]]): (r[col["SVD beats every null control"]], r[col["Algorithm 1 gains"]])
         for r in rows}
  assert got == {("linear", "0"): ("undecided", "undecided"), ("linear", "0.50"): ("fails", "holds"),
                 ("heavy", "0"): ("not counted", "not counted")}
  enh, alg = paper_protocol.claims(table, DEFAULT)
  assert enh.verdict == "fails in 1 of 2 regimes, undecided in 1"
  assert alg.verdict == "holds in 1 of 2 regimes, undecided in 1"


def test_paper_protocol_leaves_out_a_model_whose_rare_tasks_carry_its_error():
  """'heavy' would fail (SVD below a control); its tail check says its means do not stand, so only
  'linear' is counted and the detail names what was left out."""
  heavy = pp_rows({"svd": SVD, **CTRL, "null_shrink": BELOW}, model="heavy", n_tasks=200)
  tail = [R("tail_rare_share", v, seed=s, n_tasks=100_000, model="heavy", shots=20)
          for s, v in enumerate([0.05, 0.3, 0.1])]
  enh, alg = pp_claims(pp_rows({"svd": SVD, **CTRL}), heavy, tail)
  assert enh.verdict == alg.verdict == "holds in 1 of 1 regimes"
  assert enh.detail.endswith("; not counted: heavy (its means rest on 200 tasks per seed, and tasks rarer than 1 in "
                             "200 carry up to 30 % of its error on 100,000 tasks)")
  assert paper_protocol.claims(engine.Table(heavy + tail, paper_protocol.KEYS), DEFAULT) == []


# --- positive_control: the headline's rule on a planted effect, P = ∞ its negative control ------

PLANTED = "P=500"
NO_SVD_GAIN = {"svd": [0.3, 0.35, 0.4], "null_gauss": [0.31, 0.34, 0.41]}  # P = ∞: SVD ≡ a control (TOST)


def pc_table(planted=None, null=None, regimes=((64, 0.0),)):
  """planted / null: edit → per-seed gain (fraction of headroom) of the P=500 and the P=∞ model, in every
  (V, σ_val) regime given; None leaves that pool out."""
  rows = []
  for model, rel in ((PLANTED, planted), ("P=∞", null)):
    for V, z in regimes if rel else ():
      rows += pp_rows(rel, model=model, shots=10, V=V, z=z)
  return engine.Table(rows, positive_control.KEYS)


def mde_by_hand(diff):
  """80 % power of 'CI above 0 and mean above 5 %' at the seeds' spread, t-quantiles for the noncentral t."""
  se, df = np.std(diff, ddof=1) / np.sqrt(len(diff)), len(diff) - 1
  return max((st.t.ppf(0.975, df) + st.t.ppf(0.8, df)) * se, 0.05 + st.t.ppf(0.8, df) * se)


def test_positive_control_holds_when_svd_beats_every_control_and_p_infinity_gains_nothing():
  c = only(positive_control.claims(pc_table({"svd": SVD, **CTRL}, NO_SVD_GAIN), DEFAULT),
           "positive_control")
  diff = np.subtract(SVD, CTRL["null_shrink"])  # the strongest control
  assert c.verdict == "holds" and c.seeds == 3
  assert c.effect == (f"SVD − the strongest null control (null_shrink), % of headroom, in the planted regime where it "
                      f"is smallest (P=500 N=10 V=64 σ_val=0): {text.num(100 * diff.mean(), 2)} % (every regime's "
                      "decision is in the study's table)")
  assert c.ci == text.ci(*(100 * x for x in t_ci(diff)), 2) + " %"
  assert c.power == f"detects ≥ {text.num(100 * mde_by_hand(diff), 2)} % of headroom at 3 seeds"
  assert tost(np.subtract(*NO_SVD_GAIN.values()), 0.05) and c.power in c.detail


def test_positive_control_fails_when_the_pipeline_misses_the_planted_effect():
  """SVD equivalent (TOST) to the shrink control in the planted regime: the rule says fails there."""
  shrink = [0.5, 0.61, 0.56]
  assert tost(np.subtract(SVD, shrink), 0.05)
  c = only(positive_control.claims(pc_table({"svd": SVD, "null_shrink": shrink}, NO_SVD_GAIN), DEFAULT))
  assert c.verdict == "fails: the planted effect is missed in 1 of 1 regimes" and c.power == ""


def test_positive_control_fails_when_the_rule_finds_an_svd_gain_at_p_infinity():
  c = only(positive_control.claims(pc_table({"svd": SVD, **CTRL}, {"svd": SVD, **CTRL}), DEFAULT))
  assert c.verdict == "fails: at P = ∞ the rule finds an SVD gain where none is planted, in 1 of 1 regimes"
  assert c.power == ""


def test_positive_control_is_undecided_when_p_infinity_is_undecided():
  """At P = ∞ SVD − shrink spans 0 without being equivalent to it: the negative control is not reached."""
  wide = {"svd": [0.9, 0.1, 0.6], "null_shrink": CTRL["null_shrink"]}
  c = only(positive_control.claims(pc_table({"svd": SVD, **CTRL}, wide), DEFAULT))
  assert c.verdict == "undecided"


def test_positive_control_is_undecided_when_neither_branch_is_reached():
  """SVD − shrink has a CI spanning 0 and is not equivalent to 0: neither holds nor fails in the planted regime."""
  wide = [0.9, 0.1, 0.6]
  diff = np.subtract(wide, CTRL["null_shrink"])
  assert t_ci(diff)[0] < 0 < t_ci(diff)[1] and not tost(diff, 0.05)
  c = only(positive_control.claims(pc_table({"svd": wide, **CTRL}, NO_SVD_GAIN), DEFAULT))
  assert c.verdict == "undecided"


def test_positive_control_needs_every_planted_regime_to_hold():
  """Two (V, σ_val) regimes; the planted effect holds in one and is missed (equivalent to shrink) in the other."""
  rows = pc_table({"svd": SVD, **CTRL}, NO_SVD_GAIN).rows
  rows += pc_table({"svd": SVD, "null_shrink": [0.5, 0.61, 0.56]}, None, regimes=((16, 0.5),)).rows
  c = only(positive_control.claims(engine.Table(rows, positive_control.KEYS), DEFAULT))
  assert c.verdict == "fails: the planted effect is missed in 1 of 2 regimes"
  assert "(P=500 N=10 V=16 σ_val=0.50)" in c.effect  # the weaker regime is the one quoted


def test_positive_control_decides_nothing_without_a_planted_pool():
  assert positive_control.claims(pc_table(None, NO_SVD_GAIN), DEFAULT) == []


def test_minimal_detectable_effect_matches_the_formula_and_needs_two_seeds():
  diff = [0.2, 0.3, 0.25, 0.1, 0.4]
  assert positive_control.mde(diff) == pytest.approx(mde_by_hand(diff), rel=1e-12)
  assert positive_control.mde([0.01, 0.011, 0.012]) == pytest.approx(mde_by_hand([0.01, 0.011, 0.012]))
  assert mde_by_hand([0.01, 0.011, 0.012]) < 0.06  # a tight spread: the SESOI term decides
  assert math.isnan(positive_control.mde([0.3]))


# --- mismatch: per regime, does the chosen edit gain where training and test differ? ----------

HELPS, HURTS, NULL, OPEN = [0.3, 0.35, 0.4], [-0.3, -0.35, -0.4], [0.001, -0.002, 0.0], [0.3, -0.2, 0.1]
NEAR_NULL = [0.06, -0.02, 0.04]  # 90 % interval [−0.044, 0.097]: within ±10 %, not within the ±5 % margin
EDGE_NULL = [0.03, -0.01, 0.02]  # 90 % interval [−0.022, 0.048] within ±5 % (null); the 95 % one is not
META_MM = {"profile": "default", "settings": {"train": {"steps": 1500}}}


def mm_rows(regime, model, fracs, L=4, N_train=20, M=10, sigma_train=0.0, sigma_test=0.0, steps=1500, others=None,
            legacy=False):
  """A condition's rows as mismatch.run writes them: `fracs` are the SVD choice's gains / headroom (headroom
  0.2); others: family → its choice's gains / headroom (each listed family is a candidate, the others are
  not). The choice among every edit is the best family's, by seed. legacy: only that choice is recorded,
  as in a table written before choices were made per family."""
  k = dict(regime=regime, L=L, model=model, N_train=N_train, M=M, sigma_train=sigma_train, sigma_test=sigma_test,
           steps=steps)
  fams = {"svd": fracs, **(others or {})}
  label = {"svd": "v[3] rank 2", "shrink": "last W_V ×0.5", "drop": "attn[3] rank 0"}
  rows = []
  for s in range(len(fracs)):
    best = max(fams, key=lambda f: fams[f][s])
    overall = fams[best][s]
    rows += [R("chosen", 1, seed=s, edit=label[best] if overall > 0 else "none", **k),
             R("gain", 0.2 * overall, seed=s, n_tasks=1000, **k), R("gain_frac", overall, seed=s, n_tasks=1000, **k)]
    for f, fr in ({} if legacy else fams).items():
      rows += [R(f"chosen_{f}", 1, seed=s, edit=label[f] if fr[s] > 0 else "none", **k),
               R(f"gain_{f}", 0.2 * fr[s], seed=s, n_tasks=1000, **k),
               R(f"gain_frac_{f}", fr[s], seed=s, n_tasks=1000, **k)]
  return rows


def mm_claims(*row_sets):
  return mismatch.claims(engine.Table([r for rows in row_sets for r in rows], mismatch.KEYS), META_MM)


def test_mismatch_calls_of_each_condition():
  """helps / hurts: the 95 % t-interval excludes 0; null: TOST within ±5 %; else inconclusive."""
  assert t_ci(HELPS)[0] > 0 and t_ci(HURTS)[1] < 0 and tost(NULL, 0.05) and not tost(OPEN, 0.05)
  assert t_ci(NEAR_NULL)[0] < 0 and tost(NEAR_NULL, 0.1) and not tost(NEAR_NULL, 0.05)
  assert tost(EDGE_NULL, 0.05) and not -0.05 < t_ci(EDGE_NULL)[0] < t_ci(EDGE_NULL)[1] < 0.05
  c = only(mm_claims(mm_rows("shots", "fixed", HELPS, M=10), mm_rows("shots", "fixed", HURTS, M=15),
                     mm_rows("shots", "fixed", NULL, M=5), mm_rows("shots", "fixed", OPEN, M=3),
                     mm_rows("shots", "fixed", NEAR_NULL, M=2), mm_rows("shots", "fixed", EDGE_NULL, M=1)), "shots")
  assert c.detail == ("fixed N=20 M=10, L=4: helps; fixed N=20 M=15, L=4: hurts; fixed N=20 M=5, L=4: null; "
                      "fixed N=20 M=3, L=4: inconclusive; fixed N=20 M=2, L=4: inconclusive; fixed N=20 M=1, L=4: null")


def test_mismatch_holds_when_every_mismatched_condition_helps_and_reports_the_largest():
  c = only(mm_claims(mm_rows("shots", "fixed", HELPS, M=10), mm_rows("shots", "fixed", [0.1, 0.12, 0.14], M=15),
                     mm_rows("shots", "mixed", NULL, M=10)))
  lo, hi = t_ci(HELPS)
  assert c.verdict == "holds, never in distribution" and c.seeds == 3
  assert c.effect == "35 % of the headroom (fixed N=20 M=10, L=4, the largest)"
  assert c.ci == f"{text.ci(100 * lo, 100 * hi, 2)} %"


def test_mismatch_says_when_an_in_distribution_control_also_helps():
  c = only(mm_claims(mm_rows("noise", "clean", HELPS, sigma_test=0.5), mm_rows("noise", "matched", HELPS,
                                                                              sigma_train=0.5, sigma_test=0.5)))
  assert c.id == "noise" and c.verdict == "holds, and in 1 in-distribution control(s)"


def test_mismatch_depends_when_only_some_mismatched_conditions_help():
  c = only(mm_claims(mm_rows("training_length", "fixed", HELPS, steps=150),
                     mm_rows("training_length", "fixed", OPEN, steps=500),
                     mm_rows("training_length", "fixed", HELPS, steps=1500)))
  assert c.verdict == ("depends: helps in 1 of 2 mismatched conditions, and in 1 in-distribution control(s)")


def test_mismatch_fails_when_every_mismatched_condition_is_equivalent_to_no_gain():
  c = only(mm_claims(mm_rows("shots", "fixed", NULL, M=10), mm_rows("shots", "fixed", NULL, M=15)))
  assert c.verdict == "fails: every mismatched condition is equivalent to no gain"


def test_mismatch_is_not_shown_when_no_condition_gains_and_some_are_inconclusive():
  c = only(mm_claims(mm_rows("shots", "fixed", NULL, M=10), mm_rows("shots", "fixed", OPEN, M=15)))
  assert c.verdict == ("not shown: no mismatched condition gains (1 of 2 equivalent to no gain, the rest "
                       "inconclusive)")


def test_mismatch_a_non_finite_share_is_inconclusive_and_a_regime_of_controls_only_is_left_out():
  c = only(mm_claims(mm_rows("shots", "fixed", [0.3, -math.inf, 0.4]), mm_rows("shots", "mixed", HELPS)))
  assert c.verdict.startswith("not shown") and "fixed N=20 M=10, L=4: inconclusive" in c.detail
  assert mm_claims(mm_rows("noise", "matched", HELPS, sigma_train=0.5, sigma_test=0.5)) == []


def test_mismatch_fails_when_every_mismatched_condition_hurts():
  c = only(mm_claims(mm_rows("shots", "fixed", HURTS, M=10), mm_rows("shots", "fixed", HURTS, M=15)))
  assert c.verdict.startswith("fails")
  assert c.verdict == "fails: the chosen edit raises the error in every mismatched condition"


def test_mismatch_fails_when_every_mismatched_condition_hurts_or_is_equivalent_to_no_gain():
  c = only(mm_claims(mm_rows("shots", "fixed", HURTS, M=10), mm_rows("shots", "fixed", NULL, M=15)))
  assert c.verdict == "fails: no mismatched condition gains (1 of 2 hurt, the rest equivalent to no gain)"


def test_mismatch_is_not_shown_when_some_condition_is_inconclusive_and_counts_those_that_hurt():
  c = only(mm_claims(mm_rows("shots", "fixed", HURTS, M=10), mm_rows("shots", "fixed", OPEN, M=15),
                     mm_rows("shots", "fixed", NULL, M=5)))
  assert c.verdict == ("not shown: no mismatched condition gains (1 of 3 equivalent to no gain, 1 hurt, the rest "
                       "inconclusive)")


# The edit families: "pruning helps" counts SVD truncation only; another family that wins has its own row.

SHRINK_WINS = [0.5, 0.45, 0.55]  # far above every SVD gain below


def test_mismatch_svd_is_decided_on_its_own_choice_when_a_shrink_wins_and_the_shrink_gets_its_own_row():
  c = mm_claims(mm_rows("noise", "clean", NULL, sigma_test=1.0, others={"shrink": SHRINK_WINS, "drop": HURTS}),
                mm_rows("noise", "matched", NULL, sigma_train=0.5, sigma_test=0.5,
                        others={"shrink": HURTS, "drop": HURTS}))
  svd, shrink = c  # drop neither helps nor is any seed's choice: no row
  assert (svd.id, shrink.id) == ("noise", "noise_shrink")
  assert svd.verdict == "fails: every mismatched condition is equivalent to no gain"
  assert svd.detail == "σ_train=0 σ_test=1, L=4: null; σ_train=0.5 σ_test=0.5, L=4: null"
  lo, hi = t_ci(SHRINK_WINS)
  assert shrink.verdict == "holds, never in distribution" and shrink.seeds == 3
  assert shrink.effect == "50 % of the headroom (σ_train=0 σ_test=1, L=4, the largest)"
  assert shrink.ci == f"{text.ci(100 * lo, 100 * hi, 2)} %"
  assert shrink.detail == "σ_train=0 σ_test=1, L=4: helps; σ_train=0.5 σ_test=0.5, L=4: hurts"


def test_mismatch_a_family_chosen_in_some_seed_gets_a_row_even_where_it_does_not_help():
  drop = [0.5, -0.3, -0.3]  # seed 0 chooses the drop; over seeds it is inconclusive
  c = mm_claims(mm_rows("shots", "fixed", NULL, others={"drop": drop}))
  assert [x.id for x in c] == ["shots", "shots_drop"]
  assert c[1].verdict.startswith("not shown") and c[1].detail == "fixed N=20 M=10, L=4: inconclusive"


def test_mismatch_a_legacy_table_decides_a_family_where_every_seed_chose_it_or_nothing():
  """A table that records only the choice among every edit: where each seed chose an SVD truncation or kept
  the unpruned model, that choice is the SVD family's too."""
  rows = mm_rows("shots", "fixed", [0.3, 0.0, 0.35], legacy=True)
  assert [r["edit"] for r in rows if r["measure"] == "chosen"] == ["v[3] rank 2", "none", "v[3] rank 2"]
  c = only(mm_claims(rows))
  lo, hi = t_ci([0.3, 0.0, 0.35])
  assert c.id == "shots" and c.verdict.startswith("not shown") and c.seeds == 3
  assert c.ci == f"{text.ci(100 * lo, 100 * hi, 2)} %" and c.detail == "fixed N=20 M=10, L=4: inconclusive"


def test_mismatch_a_legacy_table_leaves_a_family_undecided_where_another_family_was_chosen():
  c = mm_claims(mm_rows("noise", "clean", [0.01, 0.02, 0.01], sigma_test=1.0, others={"shrink": SHRINK_WINS},
                        legacy=True))
  svd, shrink = c
  assert svd.verdict == ("undecided: 1 of 1 mismatched conditions lack the gain of this family's own choice (the "
                         "table holds it only where the best edit of any family was of this family); rerun mismatch")
  assert (svd.effect, svd.ci, svd.seeds) == ("not recorded", "n/a", 3)
  assert svd.detail == "σ_train=0 σ_test=1, L=4: not recorded (seeds 0, 1, 2)"
  assert shrink.id == "noise_shrink" and shrink.verdict == "holds, never in distribution"


def test_mismatch_a_legacy_rank_0_truncation_counts_as_dropping_the_layer():
  rows = mm_rows("noise", "clean", [0.01, 0.02, 0.01], sigma_test=1.0, others={"drop": SHRINK_WINS}, legacy=True)
  assert rows[0]["edit"] == "attn[3] rank 0"
  svd, drop = mm_claims(rows)
  assert svd.verdict.startswith("undecided") and drop.id == "noise_drop" and drop.verdict.startswith("holds")


def test_mismatch_families_of_the_edit_list_and_of_their_labels_agree():
  s = mismatch.PROFILES["default"]
  edits = mismatch.edit_list(s, 4, s.d + 1)
  fams = [mismatch.family(e) for e in edits]
  assert fams == [mismatch.family_of_label(mismatch.label(e)) for e in edits]
  # rank 0 zeroes W_V (attn holds W_Q, W_K and W_V): the layer drops out
  assert {e for e, f in zip(edits, fams) if f == "drop"} == (
      {(m, layer, 0) for m in ("attn", "v") for layer in range(4)} | {("drop", 1, None), ("drop", 2, None)})
  assert {e for e, f in zip(edits, fams) if f == "shrink"} == {("shrink", 0.5, None), ("shrink", 0.8, None)}
  assert mismatch.family_of_label("none") is None


def test_mismatch_choice_per_family_is_the_first_lowest_and_strictly_below_the_unpruned_model():
  sel = np.array([[1.0, 1.0, 1.0],  # unpruned, then 4 edits × 3 seeds
                  [0.5, 1.0, 2.0], [0.4, 1.0, 0.9], [0.4, 1.0, 0.9], [0.9, 1.5, 0.8]])
  assert mismatch.choose(sel, [True] * 4).tolist() == [2, 0, 4]  # ties: the first edit; seed 1: none lower
  assert mismatch.choose(sel, [True, False, False, True]).tolist() == [1, 0, 4]
  assert mismatch.choose(sel, [False] * 4).tolist() == [0, 0, 0]
  rng = np.random.default_rng(0)
  for _ in range(20):  # the best of all edits is the best of its own family
    sel = rng.integers(0, 4, (7, 5)).astype(float)
    mask = rng.random(6) < 0.5
    every, own = mismatch.choose(sel, [True] * 6), mismatch.choose(sel, mask)
    assert all(o == e for e, o in zip(every, own) if e and mask[e - 1])


# --- in_weights: the edit chosen on w₀ tasks, on w₀ and on fresh tasks -------------------------

META_IW = {"profile": "default", "settings": {"equiv_frac": 0.05, "layers": 2, "noise_std": 0.25}}


def iw_table(per_p, head=0.1, n_seeds=3):
  """per_p: p → {(edit, task set): gain per seed}; unlisted gains are 0. Headroom `head` on both task sets
  (margin 0.05 × head)."""
  rows = []
  for p, gains in per_p.items():
    rows.append(R("bayes_mean", 0.5, n_tasks=1000, p=p, tasks="fresh"))
    for s in range(n_seeds):
      rows += [R("confirm_mean", 0.5 + head, seed=s, n_tasks=1000, p=p, edit="none", tasks="fresh"),
               R("confirm_mean", head, seed=s, n_tasks=1000, p=p, edit="none", tasks="w0")]
      for edit in ("icl", "facts"):
        for kind in ("fresh", "w0"):
          g = gains.get((edit, kind), [0.0] * n_seeds)[s]
          rows.append(R("gain", g, seed=s, n_tasks=1000, p=p, edit=edit, tasks=kind))
  return engine.Table(rows, in_weights.KEYS)


W0_GAINS, FRESH_LOSES = [0.02, 0.025, 0.03], [-0.02, -0.025, -0.03]


def test_in_weights_holds_when_the_w0_edit_gains_on_w0_and_loses_on_fresh_tasks():
  c = only(in_weights.claims(iw_table({0.3: {("facts", "w0"): W0_GAINS, ("facts", "fresh"): FRESH_LOSES}}), META_IW),
           "in_weights")
  assert c.verdict == "holds" and c.seeds == 3
  assert c.ci == (f"p=0.3: on w₀ 0.0250 {text.ci(*t_ci(W0_GAINS))}, on fresh -0.0250 {text.ci(*t_ci(FRESH_LOSES))}; "
                  "edit chosen on fresh tasks, on fresh 0 [0, 0]")
  assert c.detail == "ReLU-MLP L=2, σ=0.25, w = w₀ with prob. p; 1,000 tasks per set; margin 5 % of headroom"


def test_in_weights_fails_when_w0_gains_and_fresh_tasks_do_not_lose():
  c = only(in_weights.claims(iw_table({0.3: {("facts", "w0"): W0_GAINS, ("facts", "fresh"): [0.01, -0.01, 0.0]}}),
                             META_IW))
  assert c.verdict == "fails: w₀ tasks gain, fresh tasks do not lose"


def test_in_weights_fails_when_every_p_is_equivalent_to_no_gain_on_w0():
  null = [0.001, -0.001, 0.0]
  assert tost(null, 0.05 * 0.1)
  c = only(in_weights.claims(iw_table({0.3: {("facts", "w0"): null}, 0.6: {("facts", "w0"): null}}), META_IW))
  assert c.verdict == "fails: equivalent to no gain on w₀ tasks"


def test_in_weights_is_not_shown_when_some_p_is_inconclusive():
  c = only(in_weights.claims(iw_table({0.3: {("facts", "w0"): [0.001, -0.001, 0.0]},
                                       0.6: {("facts", "w0"): [0.02, -0.02, 0.01]}}), META_IW))
  assert c.verdict == "not shown: no gain on w₀ tasks detected, some p inconclusive"


def test_in_weights_skips_p_zero_and_no_headroom_gives_no_equivalence():
  assert in_weights.claims(iw_table({0.0: {("facts", "w0"): W0_GAINS}}), META_IW) == []
  c = only(in_weights.claims(iw_table({0.3: {}}, head=0.0), META_IW))  # margin 0: TOST is not run
  assert c.verdict == "not shown: no gain on w₀ tasks detected, some p inconclusive"


def test_in_weights_a_minus_infinite_gain_is_inconclusive_and_no_equivalence_is_tested():
  """An edit that overflowed on one seed's w₀ tasks gains −∞: the interval [−∞, 0.03] spans 0, and TOST (a
  t-test) cannot run on an infinite seed, so the p is inconclusive, not equivalent."""
  c = only(in_weights.claims(iw_table({0.3: {("facts", "w0"): [0.02, -math.inf, 0.03]}}), META_IW))
  assert c.verdict == "not shown: no gain on w₀ tasks detected, some p inconclusive" and c.seeds == 3
  assert c.ci.startswith("p=0.3: on w₀ 0.0200 [−∞, 0.0300] (median; 75.0 % order-statistic interval over 3 "
                         "seeds, 1 of them infinite) (no equivalence test: a seed's gain is not finite), on fresh 0 "
                         "[0, 0]")


def test_in_weights_holds_when_one_w0_seed_gains_plus_infinity_and_fresh_tasks_lose():
  c = only(in_weights.claims(iw_table({0.3: {("facts", "w0"): [0.02, math.inf, 0.03],
                                             ("facts", "fresh"): FRESH_LOSES}}), META_IW))
  assert c.verdict == "holds" and c.seeds == 3 and "on w₀ 0.0300 [0.0200, ∞] (median; 75.0 %" in c.ci


# --- deep_recipes decides no claim -------------------------------------------------------------


def test_deep_recipes_decides_no_claim():
  rows = [R("model_mean", 0.1, seed=s, n_tasks=1000) for s in range(3)]
  assert deep_recipes.claims(engine.Table(rows, deep_recipes.KEYS), DEFAULT) == []


# --- one seed: no interval over seeds ---------------------------------------------------------

ONE_SEED = {
    "one_layer": lambda: (one_layer.claims, one_layer_table({"iso": (0.5, [0.505])}), DEFAULT),
    "implicit_gd": lambda: (implicit_gd.claims, igd_table({1: {"gd_pp": [0.01]}}), DEFAULT),
    "positive_control": lambda: (positive_control.claims, pc_table({"svd": [0.5], "null_dirs": [0.1]}), DEFAULT),
    "mismatch": lambda: (mismatch.claims, engine.Table(mm_rows("shots", "fixed", [0.3]), mismatch.KEYS), META_MM),
    "in_weights": lambda: (in_weights.claims, iw_table({0.3: {("facts", "w0"): [0.02]}}, n_seeds=1), META_IW),
    "paper_protocol": lambda: (paper_protocol.claims, engine.Table(pp_rows({"svd": [0.5], "null_dirs": [0.1]}),
                                                                   paper_protocol.KEYS), DEFAULT),
}
@pytest.mark.parametrize("study", sorted(ONE_SEED))
def test_one_seed_decides_nothing_and_does_not_raise(study):
  claims, table, meta = ONE_SEED[study]()
  assert all(not c.verdict.startswith(("holds", "fails")) for c in claims(table, meta))


@pytest.mark.parametrize("study", ["implicit_gd", "in_weights", "one_layer", "positive_control"])
def test_one_seed_is_undecided_with_its_value_and_no_interval(study):
  claims, table, meta = ONE_SEED[study]()
  c = only(claims(table, meta))
  assert c.verdict == verdicts.NO_INTERVAL == "undecided: 1 seed, no interval"
  assert c.seeds == 1 and "(1 seed, no interval)" in c.ci and "[" not in c.ci


def test_one_seed_summaries_say_no_interval_and_do_not_raise():
  one = {one_layer: ONE_SEED["one_layer"]()[1], positive_control: ONE_SEED["positive_control"]()[1],
         in_weights: ONE_SEED["in_weights"]()[1]}
  for study, table in one.items():
    assert "(1 seed, no interval)" in engine.view_module(study.NAME).summary(table)


def test_pruning_and_prune_bound_decide_nothing_with_one_seed():
  assert pruning_claims(pruning_table({2: DEEP_STABLE[:1]})) == []
  assert only(prune_bound.claims(pb_table(TRACKS[:1], INF4[:1]), META_PB)).verdict == "undecided: no finite bound"


# --- the verdict table ------------------------------------------------------------------------


def loaded(profile="default"):
  return {"one_layer": (one_layer_table({"iso": NEAR_CASE}), {"profile": profile}),
          "positive_control": (pc_table({"svd": SVD, "null_shrink": [0.5, 0.61, 0.56]}, NO_SVD_GAIN),
                               {"profile": profile}),
          "pruning": (engine.Table(pruning_table({2: [[10, 1], [1, 10], [1, 1]]}), pruning.KEYS),
                      {"profile": profile})}


def rows_of(md):
  return {line.split(" | ")[0][2:]: line for line in md.splitlines()[2:]}


def test_verdict_table_renders_holds_fails_and_undecided_rows_and_the_claims_no_study_decided():
  md = verdicts.table(loaded())
  assert md.splitlines()[0] == "| claim | verdict | effect | 95 % CI | seeds | study and regime |"
  rows = rows_of(md)
  assert list(rows) == [claim for cid, (claim, _) in verdicts.CLAIMS.items() if cid not in verdicts.FINDINGS]
  lo, hi = t_ci([0.01, 0.02, 0.03])
  assert rows[verdicts.CLAIMS["one_layer_gd"][0]] == (
      f"| {verdicts.CLAIMS['one_layer_gd'][0]} | **holds** | excess error of the learned step over the optimum | "
      f"iso: 2.0 % {text.ci(100 * lo, 100 * hi, 2)} | 3 | `one_layer`: holds where the CI lies below 5%; exact "
      "closed-form errors |")
  assert " | **fails: the planted effect is missed in 1 of 1 regimes** | " in rows[verdicts.CLAIMS["positive_control"][0]]
  assert rows[verdicts.CLAIMS["positive_control"][0]].endswith(" | 3 | `positive_control`: one-layer models fitted to "
                                                               "P prompts under a rank-k prior, through paper_protocol's "
                                                               "per-task choice with its null controls and its rule; "
                                                               "P = ∞ (fresh tasks) the negative control |")
  undecided = (" | **undecided** | deep − shallow log10 damage (attn, linear) | "
               f"L=2 attn: 0 {text.ci(*t_ci([-1, 1, 0]), 2)}")
  assert undecided in rows[verdicts.CLAIMS["deep_stable"][0]]
  assert rows[verdicts.CLAIMS["implicit_gd"][0]] == (f"| {verdicts.CLAIMS['implicit_gd'][0]} | not decided |  |  |  | "
                                                     "`implicit_gd` has no results |")


def test_verdict_table_lists_a_finding_only_where_a_study_has_it():
  tab = engine.Table(mm_rows("noise", "clean", NULL, sigma_test=1.0, others={"shrink": SHRINK_WINS, "drop": HURTS}),
                     mismatch.KEYS)
  rows = rows_of(verdicts.table({"mismatch": (tab, META_MM)}))
  assert " | **holds, never in distribution** | " in rows[verdicts.CLAIMS["noise_shrink"][0]]
  assert (f" | **{verdicts.NO_CONTROL} (fails: every mismatched condition is equivalent to no gain)** | "
          in rows[verdicts.CLAIMS["noise"][0]])  # no positive control among these results: no stated power
  assert not {verdicts.CLAIMS[f][0] for f in verdicts.FINDINGS - {"noise_shrink"}} & set(rows)
  assert verdicts.FINDINGS < set(verdicts.CLAIMS)


def test_verdict_table_of_a_smoke_profile_prints_no_verdict():
  md = verdicts.table(loaded("tiny"))
  verdict_col = [line.split(" | ")[1] for line in md.splitlines()[2:]]
  assert set(verdict_col) == {verdicts.SMOKE}
  for word in ("holds", "fails", "undecided", "depends", "**"):
    assert word not in md
  one = rows_of(md)[verdicts.CLAIMS["one_layer_gd"][0]]
  assert one.endswith(" | 3 | `one_layer` at profile `tiny` |") and "iso: 2.0 %" in one  # numbers kept, no rule


def test_verdict_table_of_mixed_profiles_decides_only_the_full_ones():
  mixed = {**loaded(), "one_layer": (one_layer_table({"iso": NEAR_CASE}), {"profile": "tiny"})}
  rows = rows_of(verdicts.table(mixed))
  assert f" | {verdicts.SMOKE} | " in rows[verdicts.CLAIMS["one_layer_gd"][0]]
  assert " | **fails: the planted effect is missed in 1 of 1 regimes** | " in rows[verdicts.CLAIMS["positive_control"][0]]
  assert " | not decided | " in rows[verdicts.CLAIMS["implicit_gd"][0]]
  assert set(line.split(" | ")[1] for line in verdicts.table({}).splitlines()[2:]) == {"not decided"}


def _claim(cid, verdict):
  return verdicts.Claim(cid, verdict, "effect", "[0, 1]", 5, "detail")


CONTROL_HOLDS, CONTROL_FAILS = _claim("positive_control", "holds"), _claim("positive_control", "fails: no gain detected")


@pytest.mark.parametrize("verdict", ["fails in 9 of 12 regimes, undecided in 3", "not shown: no gain"])
def test_a_negative_verdict_on_a_pruning_gain_stands_only_where_the_positive_control_holds(verdict):
  c = _claim("pruning_enhances", verdict)
  assert verdicts.powered(c, CONTROL_HOLDS) == verdict
  assert verdicts.powered(c, CONTROL_FAILS) == f"{verdicts.NOT_INFORMATIVE} ({verdict})"
  assert verdicts.powered(c, _claim("positive_control", verdicts.NO_INTERVAL)).startswith(verdicts.NOT_INFORMATIVE)
  assert verdicts.powered(c, None) == f"{verdicts.NO_CONTROL} ({verdict})"


def test_a_negative_verdict_carries_the_power_the_holding_control_states():
  control = verdicts.Claim("positive_control", "holds", "effect", "[0, 1]", 5, "detail",
                           "detects ≥ 12 % of headroom at 5 seeds")
  assert (verdicts.powered(_claim("pruning_enhances", "fails in 9 of 12 regimes"), control)
          == "fails in 9 of 12 regimes (power: detects ≥ 12 % of headroom at 5 seeds)")
  assert verdicts.powered(_claim("noise_shrink", "holds"), control) == "holds"  # a positive verdict needs no power


def test_positive_verdicts_and_claims_that_are_not_about_a_gain_need_no_control():
  assert verdicts.powered(_claim("noise", "holds, never in distribution"), CONTROL_FAILS) == "holds, never in distribution"
  assert verdicts.powered(_claim("noise_shrink", "depends: helps in 1 of 3"), None) == "depends: helps in 1 of 3"
  assert verdicts.powered(_claim("one_layer_gd", "fails"), CONTROL_FAILS) == "fails"
  assert verdicts.powered(_claim("theorem2", "not shown: every ρ's CI contains 0"), None).startswith("not shown")
  assert verdicts.POWERED_BY_CONTROL >= verdicts.FINDINGS and "positive_control" not in verdicts.POWERED_BY_CONTROL


def test_the_verdict_table_marks_negative_gain_verdicts_with_the_same_profiles_control():
  tab = engine.Table(mm_rows("noise", "clean", NULL, sigma_test=1.0, others={"shrink": SHRINK_WINS, "drop": HURTS}),
                     mismatch.KEYS)
  failing = {**loaded(), "mismatch": (tab, META_MM)}  # loaded()'s positive control misses its planted effect
  rows = rows_of(verdicts.table(failing))
  assert f"| **{verdicts.NOT_INFORMATIVE} (fails: every mismatched" in rows[verdicts.CLAIMS["noise"][0]]
  assert " | **holds, never in distribution** | " in rows[verdicts.CLAIMS["noise_shrink"][0]]
  holding = {**failing, "positive_control": (pc_table({"svd": SVD, **CTRL}, NO_SVD_GAIN), {"profile": "default"})}
  rows = rows_of(verdicts.table(holding))
  assert " | **holds** | " in rows[verdicts.CLAIMS["positive_control"][0]]
  power = f"detects ≥ {text.num(100 * mde_by_hand(np.subtract(SVD, CTRL['null_shrink'])), 2)} % of headroom at 3 seeds"
  assert (f" | **fails: every mismatched condition is equivalent to no gain (power: {power})** | "
          in rows[verdicts.CLAIMS["noise"][0]])


def test_paper_protocol_a_seed_at_infinity_keeps_every_seed_and_reads_order_statistics():
  """Five seeds, one whose SVD gain over a control is +∞ (the control's model overflowed): the interval is
  the order-statistic one over all five (k = 1 at n = 5: the seeds' range, coverage 1 − 2⁻⁴), the centre
  the median, the difference is not equivalent to 0, and 'holds' needs every lower end above 0."""
  svd = [0.5, 0.6, 0.55, 0.58, 0.52]
  ctl = {k: [0.1, 0.12, 0.08, 0.11, 0.09] for k in CTRL}
  ctl["null_shrink"] = [0.2, 0.25, 0.3, -np.inf, 0.22]
  enh, alg = pp_claims(pp_rows({"svd": svd, **ctl}))
  diff = np.subtract(svd, ctl["null_shrink"])
  assert enh.seeds == 5 and enh.verdict == "holds in 1 of 1 regimes"
  assert enh.ci == text.ci(100 * np.sort(diff)[0], np.inf, 2) + " %"
  assert enh.effect.endswith(f"{text.num(100 * np.median(diff), 2)} %")
  assert not paper_protocol._equivalent(np.array([0.0, 0.01, np.inf]), paper_protocol.SESOI)


def test_paper_protocol_a_control_that_overflowed_below_svd_in_one_seed_leaves_the_claim_undecided():
  """SVD − control is −∞ in one of five seeds: the order-statistic interval reaches −∞, so SVD does not
  beat that control, and one seed at −∞ is not equivalence either."""
  svd = [0.5, 0.6, 0.55, -np.inf, 0.52]
  enh, _ = pp_claims(pp_rows({"svd": svd, **{k: [0.1, 0.12, 0.08, 0.11, 0.09] for k in CTRL}}))
  assert enh.verdict == "undecided" and enh.seeds == 5


def test_paper_protocol_algorithm1_row_says_what_its_validation_labels_are_worth_as_demonstrations():
  """label_value: (unpruned − Bayes error with the prompt and the V examples) ÷ headroom, per seed."""
  keys = dict(model="linear", shots=20, V=64, val_noise=0.0)
  rows = pp_rows({"svd": SVD, **CTRL})
  for s, (u, h) in enumerate(zip([2.0, 3.0, 4.0], [1.0, 2.0, 4.0])):
    rows += [R("unpruned_mean", u, seed=s, n_tasks=100, edit="svd", layers="all", **keys),
             R("headroom", h, seed=s, n_tasks=100, edit="svd", layers="all", **keys)]
  rows += [R("bayes_with_val_mean", 1.5, seed=None, n_tasks=100, **keys),
           R("ridge_with_val_mean", 1.0, seed=None, n_tasks=100, **keys)]
  table = engine.Table(rows, paper_protocol.KEYS)
  reg = dict(model="linear", shots=20, V=64, val_noise=0.0)
  np.testing.assert_allclose(paper_protocol.label_value(table, reg), [0.5, 0.75, 0.625])
  np.testing.assert_allclose(paper_protocol.label_value(table, reg, "ridge"), [1.0, 1.0, 0.75])
  _, alg = paper_protocol.claims(table, DEFAULT)
  assert "its V labels used as demonstrations instead: 62.5 %, Bayes with N + V" in alg.effect
  assert paper_protocol.label_value(engine.Table(pp_rows({"svd": SVD}), paper_protocol.KEYS), reg).size == 0


def test_positive_control_weakest_regime_reads_the_centre_over_every_seed_and_its_claim_quotes_it():
  """Two planted regimes: at V = 16 one seed's margin is +∞ (its control overflowed), so that regime's centre is
  the median, 0.4, above V = 64's mean 0.3: the weakest regime is V = 64, and the claim quotes its mean."""
  svd = [0.5, 0.6, 0.55]
  v16 = pp_rows({"svd": svd, "null_dirs": [0.1, 0.2, -np.inf]}, model=PLANTED, shots=10, V=16)
  v64 = pp_rows({"svd": svd, "null_dirs": [0.2, 0.3, 0.25]}, model=PLANTED, shots=10, V=64)
  table = engine.Table(v16 + v64, positive_control.KEYS)
  label, c, ctl = positive_control.weakest(table)
  assert ctl == "null_dirs" and label.endswith("V=64 σ_val=0") and c["vs"][ctl]["center"] == pytest.approx(0.3)
  (claim,) = positive_control.claims(table, DEFAULT)
  assert f"smallest ({label}): 30 %" in claim.effect
