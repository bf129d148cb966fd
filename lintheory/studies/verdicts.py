"""The verdict table at the top of the report: each claim of the paper, decided by a study's numbers.

Every study may define `claims(table, meta) -> list[Claim]`; the claims below are listed in this
order, and a claim no loaded study decides is listed as "not decided" with the study that would.
A study run at a smoke profile (engine.SMOKE_PROFILES) decides nothing: its claims keep their numbers
but read SMOKE, without a verdict or the rule that would have made one. A negative verdict on a claim
that pruning helps is marked not informative unless the same profile's positive control holds (powered).
A claim whose study's results file is stale (freshness.staleness, which the report passes in) says so in its row.
"""

from __future__ import annotations

from typing import NamedTuple

from lintheory.studies import engine, text

CLAIMS = {  # claim id → (the paper's claim, the study that decides it)
    "one_layer_gd": ("One layer of linear attention implements one step of (preconditioned) GD", "one_layer"),
    "implicit_gd": ("Deeper models follow an implicit GD trajectory (Theorem 1)", "implicit_gd"),
    "pruning_enhances": ("SVD pruning enhances in-context learning", "paper_protocol"),
    "algorithm1": ("Algorithm 1 (choose the clipping rate on validation queries) improves test error",
                   "paper_protocol"),
    "deep_stable": ("Pruning deep layers is more stable than pruning shallow ones (Remark 5)", "pruning"),
    "theorem2": ("The generalisation bound (Theorem 2) explains the effect of pruning", "prune_bound"),
    "shots": ("Pruning (SVD truncation) helps when the prompt has fewer shots than the model was trained on",
              "mismatch"),
    "shots_shrink": ("A uniform shrink of the last W_V helps when the prompt has fewer shots than the model was "
                     "trained on", "mismatch"),
    "shots_drop": ("Dropping layers helps when the prompt has fewer shots than the model was trained on", "mismatch"),
    "noise": ("Pruning (SVD truncation) helps under label noise the model was not trained for", "mismatch"),
    "noise_shrink": ("A uniform shrink of the last W_V helps under label noise the model was not trained for",
                     "mismatch"),
    "noise_drop": ("Dropping layers helps under label noise the model was not trained for", "mismatch"),
    "training_length": ("Pruning (SVD truncation) helps models trained for fewer steps", "mismatch"),
    "training_length_shrink": ("A uniform shrink of the last W_V helps models trained for fewer steps", "mismatch"),
    "training_length_drop": ("Dropping layers helps models trained for fewer steps", "mismatch"),
    "in_weights": ("Pruning trades in-weights knowledge for in-context learning (LASER's effect)", "in_weights"),
    "positive_control": ("Where SVD truncation provably helps (a planted effect: one layer fitted to few prompts "
                         "under a low-rank prior), the headline's pipeline detects it", "positive_control"),
}

# Findings beside the paper's claims: a study lists one only where it has it (an edit family other than SVD
# truncation that wins), and the table leaves out those no study lists.
FINDINGS = frozenset({"shots_shrink", "shots_drop", "noise_shrink", "noise_drop", "training_length_shrink",
                      "training_length_drop"})


SMOKE = "smoke test: not decided"
# Claims that pruning (or another edit) helps: a negative verdict on them ("fails", "not shown") says
# something only where the same profile's positive control detected its planted effect.
POWERED_BY_CONTROL = frozenset({"pruning_enhances", "shots", "noise", "training_length", "in_weights"}) | FINDINGS
NOT_INFORMATIVE = "not informative: the positive control did not detect its planted effect"
NO_CONTROL = "not informative: the positive control has no results in this profile"
NO_INTERVAL = "undecided: 1 seed, no interval"  # a claim whose every interval over seeds is missing (text.over_seeds)


class Claim(NamedTuple):
  id: str  # a key of CLAIMS
  verdict: str  # "holds", "fails", "depends: …"
  effect: str  # the effect size, formatted
  ci: str  # its confidence interval, formatted
  seeds: int  # seeds behind it (the unit of inference)
  detail: str  # the regime, the task counts, what it rests on
  power: str = ""  # the positive control's only: what its pipeline detects ("detects ≥ X % of headroom at n seeds")


def powered(c: Claim, control: Claim | None) -> str:
  """c's verdict, marked not informative when it is negative on a claim that pruning helps and the positive
  control of the same results (one profile) did not hold: the pipeline then has no stated power. Where the
  control holds, the power it states (positive_control.power) follows the verdict."""
  if c.id not in POWERED_BY_CONTROL or not c.verdict.startswith(("fails", "not shown")):
    return c.verdict
  if control is None:
    return f"{NO_CONTROL} ({c.verdict})"
  if control.verdict != "holds":
    return f"{NOT_INFORMATIVE} ({c.verdict})"
  return f"{c.verdict} (power: {control.power})" if control.power else c.verdict


def table(loaded: dict[str, tuple[engine.Table, dict]], stale: dict[str, list[str]] | None = None) -> str:
  """The verdict table; stale: study → why its results file is stale (a study not in it is fresh)."""
  found: dict[str, tuple[Claim, str]] = {}
  marks: dict[str, str] = {}
  for name, (tab, meta) in loaded.items():
    claims = getattr(engine.study_module(name), "claims", None)
    for c in claims(tab, meta) if claims else ():
      found[c.id] = c, meta["profile"]
      if (stale or {}).get(name):
        marks[c.id] = f" (stale: {'; '.join(stale[name])})"
  smoke = bool(loaded) and all(meta["profile"] in engine.SMOKE_PROFILES for _, meta in loaded.values())
  rows = []
  for cid, (claim, study) in CLAIMS.items():
    c, profile = found.get(cid, (None, None))
    if c is None and cid in FINDINGS:
      continue
    if c is None:
      rows.append([claim, SMOKE if smoke else "not decided", "", "", "", f"`{study}` has no results"])
    elif profile in engine.SMOKE_PROFILES:
      rows.append([claim, SMOKE + marks.get(cid, ""), c.effect, c.ci, str(c.seeds),
                   f"`{study}` at profile `{profile}`"])
    else:
      rows.append([claim, f"**{powered(c, found.get('positive_control', (None,))[0])}**{marks.get(cid, '')}", c.effect,
                   c.ci, str(c.seeds), f"`{study}`: {c.detail}"])
  return text.table(["claim", "verdict", "effect", "95 % CI", "seeds", "study and regime"], rows)
