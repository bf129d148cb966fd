"""What produced a study's results, against the code here.

RESULTS/<NAME>.json's "code" records what produced the rows (code_of): the revisions
(REVISIONS: train.TRAINER) and a digest of the code the rows depend on, with one digest per file; the
git commit, when the study ran in a checkout, is in its "provenance" (informative, never required).
The rows depend on: the part of the study module that `run` reaches (its functions and classes that
`run` or module-level code such as PROFILES names, transitively; not claims or helpers only they call;
the view is another module, which no study imports) and every lintheory module that part imports,
transitively, each file whole (run.provenance.code_identity), except NOT_ROW_CODE, which computes no
row, and another study the part imports (positive_control runs paper_protocol's evaluation), which
counts as far as the names the part mentions reach in it. A results file is stale (staleness) when its
recorded revisions or digest differ from the code here, or when it records none (written before results
recorded their code). So a wording change in a study's view or claims, in text or verdicts leaves its
results fresh; a change to anything `run` executes (the engine, run.*, core.*, the study's PROFILES)
makes them stale. `python -m lintheory.studies --stale` lists stale studies, `make figures` reruns them
and the report marks them.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lintheory import studies
from lintheory.run import io, provenance, train

# Revisions a module raises when the same code path starts to produce other numbers (train.TRAINER: the
# trainer's, also in the model cache's key); each is recorded and compared by name.
REVISIONS = {"trainer": lambda: train.TRAINER}
# Code a study imports that computes no row: the list of studies (which exist, in the report's order) and
# the provenance record and this module (which compute these digests). Text, views and verdicts need no entry:
# only a study's claims and its view use them, and those are not followed.
NOT_ROW_CODE = frozenset({"lintheory.studies", "lintheory.studies.freshness", "lintheory.run.provenance"})


@functools.lru_cache(maxsize=None)
def code_of(name: str) -> dict:
  """{"revisions": {name: value}, "digest", "files": {path: digest}} of the code the study's rows depend on
  (the module docstring states the rule); computed from the package's files once per process."""
  if name not in studies.STUDIES:
    raise ValueError(f"unknown study {name!r}; studies: {', '.join(studies.STUDIES)}")
  others = frozenset(f"lintheory.studies.{s}" for s in studies.STUDIES if s != name)  # a study's run may call another's
  ident = provenance.code_identity(f"lintheory.studies.{name}", ("run",), NOT_ROW_CODE, others)
  return {"revisions": {k: f() for k, f in REVISIONS.items()}, **ident}


def staleness(name: str, meta: dict) -> list[str]:
  """Why the study's results file (its metadata) is stale against the code here, one short phrase per
  reason; [] when it is fresh."""
  was, now = meta.get("code") or {}, code_of(name)
  if "digest" not in was:
    return ["no trainer revision or code digest recorded"]
  out = [f"produced by {k} {was.get('revisions', {}).get(k, 'unrecorded')}, now {v}"
         for k, v in now["revisions"].items() if was.get("revisions", {}).get(k) != v]
  if was["digest"] != now["digest"]:
    out.append(f"code digest {was['digest'][:8]} ≠ current {now['digest'][:8]}")
  return out


def changed_files(name: str, meta: dict) -> list[str]:
  """The files whose digest differs between the results file's code and the code here (added or gone
  included); [] for a file that records no code."""
  was, now = (meta.get("code") or {}).get("files"), code_of(name)["files"]
  if was is None:
    return []
  return sorted(p for p in set(was) | set(now) if was.get(p) != now.get(p))


def stale(results: str | Path, names, profile: str) -> dict[str, list[str]]:
  """The stale studies among `names` in a results directory, each with why: no results file, another
  profile's file (a run would refuse it), or staleness."""
  out = {}
  for name in names:
    meta_path = Path(results) / f"{name}.json"
    if not meta_path.exists() or not (Path(results) / f"{name}.csv").exists():
      out[name] = ["no results file"]
      continue
    try:
      meta = io.read_json(meta_path)
    except (OSError, ValueError) as e:
      out[name] = [f"unreadable results file ({e})"]
      continue
    if meta.get("profile") != profile:
      out[name] = [f"holds profile {meta.get('profile')!r}'s results, not {profile!r}'s"]
    elif why := staleness(name, meta):
      out[name] = why
  return out
