"""Results freshness: what a results file records of the code that produced it, and when it is stale."""

import shutil
import time
from pathlib import Path

import pytest

from lintheory import report, studies
from lintheory.run import io, provenance, train
from lintheory.studies import __main__ as studies_main
from lintheory.studies import engine, freshness, verdicts

REPO = Path(__file__).resolve().parents[1]

FAKE = {  # a package of the same layout as lintheory, to state the digest's rule on code we control
    "__init__.py": "",
    "core/__init__.py": "",
    "core/a.py": "from lintheory.core import c\nX = 1\n",
    "core/b.py": "Y = 2\n",  # imported at the study's top, used only by its report
    "core/c.py": "Z = 3\n",  # reached through a
    "core/d.py": "V = 4\n",  # imported inside the study's report only
    "core/skipme.py": "W = 5\n",
    "studies/__init__.py": "",
    "studies/s.py": ("from lintheory.core import a, b\nfrom lintheory.core import skipme\n\n"
                     "PROFILES = {'tiny': 1}\n\n\ndef helper(x):\n  return a.X + x + skipme.W\n\n\n"
                     "def run(settings, ctx):\n  return helper(settings)\n\n\ndef fmt(v):\n  return f'{v} {b.Y}'\n\n\n"
                     "def report(table, meta):\n  from lintheory.core import d\n  return fmt(d.V)\n"),
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
  for rel, src in FAKE.items():
    (tmp_path / "lintheory" / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "lintheory" / rel).write_text(src)
  monkeypatch.setattr(provenance, "_PACKAGE", tmp_path / "lintheory")
  ident = lambda: provenance.code_identity("lintheory.studies.s", ("run",), frozenset({"lintheory.core.skipme"}))

  def edit(rel, old, new):
    path = tmp_path / "lintheory" / rel
    path.write_text(path.read_text().replace(old, new))
  return ident, edit


def test_the_code_digest_covers_what_run_reaches_and_the_modules_it_imports_not_presentation_or_skipped(fake):
  ident, edit = fake
  before = ident()
  assert sorted(before["files"]) == ["lintheory/core/a.py", "lintheory/core/c.py", "lintheory/studies/s.py"]
  edit("studies/s.py", "return fmt(d.V)", "return 'reworded ' + fmt(d.V)")  # report text
  edit("studies/s.py", "return f'{v} {b.Y}'", "return f'{v}: {b.Y}'")  # a helper only the report calls
  edit("core/b.py", "Y = 2", "Y = 20")
  edit("core/d.py", "V = 4", "V = 40")
  edit("core/skipme.py", "W = 5", "W = 50")
  assert ident() == before
  edit("core/c.py", "Z = 3", "Z = 3  # a comment counts: files are digested byte for byte")
  after_c = ident()
  assert after_c["digest"] != before["digest"]
  assert [p for p in before["files"] if before["files"][p] != after_c["files"][p]] == ["lintheory/core/c.py"]
  edit("studies/s.py", "a.X + x", "a.X - x")  # what run reaches
  assert ident()["files"]["lintheory/studies/s.py"] != after_c["files"]["lintheory/studies/s.py"]
  edit("studies/s.py", "PROFILES = {'tiny': 1}", "PROFILES = {'tiny': 2}")  # module-level code counts
  assert ident()["digest"] not in (before["digest"], after_c["digest"])


def test_a_study_that_runs_another_studys_code_depends_on_that_code_only(tmp_path, monkeypatch):
  """Study u's run calls s.helper: s counts as far as helper reaches (a.X, skipme), not s's report."""
  files = {**FAKE, "studies/u.py": ("from lintheory.studies import s\n\n\ndef run(settings, ctx):\n"
                                    "  return s.helper(settings)\n\n\ndef report(table, meta):\n  return s.report(table, meta)\n")}
  for rel, src in files.items():
    (tmp_path / "lintheory" / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "lintheory" / rel).write_text(src)
  monkeypatch.setattr(provenance, "_PACKAGE", tmp_path / "lintheory")
  ident = lambda: provenance.code_identity("lintheory.studies.u", ("run",), frozenset(),
                                           frozenset({"lintheory.studies.s"}))
  before = ident()
  assert sorted(before["files"]) == ["lintheory/core/a.py", "lintheory/core/c.py", "lintheory/core/skipme.py",
                                     "lintheory/studies/s.py", "lintheory/studies/u.py"]
  s_file = tmp_path / "lintheory" / "studies" / "s.py"
  s_file.write_text(s_file.read_text().replace("return fmt(d.V)", "return 'reworded ' + fmt(d.V)"))
  assert ident() == before
  s_file.write_text(s_file.read_text().replace("a.X + x", "a.X * x"))
  assert ident()["files"]["lintheory/studies/s.py"] != before["files"]["lintheory/studies/s.py"]


@pytest.mark.parametrize("name", studies.STUDIES)
def test_each_studys_code_covers_the_engine_and_trainer_and_leaves_out_text_views_and_verdicts(name):
  code = freshness.code_of(name)
  assert code["revisions"] == {"trainer": train.TRAINER}
  assert {f"lintheory/studies/{name}.py", "lintheory/studies/engine.py", "lintheory/run/train.py",
          "lintheory/core/model.py"} <= set(code["files"])
  assert not {f"lintheory/studies/{m}.py" for m in ("text", "verdicts", "__init__")} & set(code["files"])
  assert not [p for p in code["files"] if p.startswith("lintheory/studies/views/")]  # a reworded view leaves it fresh
  assert "lintheory/run/provenance.py" not in code["files"] and len(code["digest"]) == 16


def meta(name, profile="default", **code):
  return {"study": name, "profile": profile, "code": {**freshness.code_of(name), **code}}


def test_a_results_file_of_another_trainer_another_digest_or_no_digest_is_stale_and_a_fresh_one_is_not():
  now = freshness.code_of("pruning")
  assert freshness.staleness("pruning", meta("pruning")) == []
  old = meta("pruning", revisions={"trainer": train.TRAINER - 1})
  assert freshness.staleness("pruning", old) == [f"produced by trainer {train.TRAINER - 1}, now {train.TRAINER}"]
  files = {**now["files"], "lintheory/run/train.py": "0" * 16, "lintheory/core/gone.py": "1" * 16}
  moved = meta("pruning", digest="abcdef0123456789", files=files)
  assert freshness.staleness("pruning", moved) == [f"code digest abcdef01 ≠ current {now['digest'][:8]}"]
  assert freshness.changed_files("pruning", moved) == ["lintheory/core/gone.py", "lintheory/run/train.py"]
  assert freshness.staleness("pruning", {"profile": "default"}) == ["no trainer revision or code digest recorded"]
  assert freshness.staleness("pruning", {**old, "code": {**old["code"], "digest": "x"}}) == [
      f"produced by trainer {train.TRAINER - 1}, now {train.TRAINER}", f"code digest x ≠ current {now['digest'][:8]}"]


def test_the_stale_listing_names_exactly_the_stale_studies(tmp_path, capsys):
  metas = {"one_layer": meta("one_layer"), "pruning": meta("pruning", revisions={"trainer": 1}),
           "mismatch": {"profile": "default"}, "in_weights": meta("in_weights", profile="long"),
           "positive_control": meta("positive_control", digest="0" * 16), "deep_recipes": meta("deep_recipes")}
  for name, m in metas.items():
    io.write_json(tmp_path / f"{name}.json", m)
    (tmp_path / f"{name}.csv").write_text("unread\n")
  assert studies_main.main(["--stale", "--results", str(tmp_path)]) == 0
  out, err = capsys.readouterr()
  expected = [n for n in studies.STUDIES if n not in ("one_layer", "deep_recipes")]  # the missing ones too
  assert out.splitlines() == expected
  assert "pruning (default): stale: produced by trainer 1, now" in err
  assert "in_weights (default): stale: holds profile 'long'" in err
  assert "implicit_gd (default): stale: no results file" in err
  assert studies_main.main(["--stale", "--results", str(tmp_path), "deep_recipes", "one_layer", "pruning"]) == 0
  assert capsys.readouterr().out.splitlines() == ["pruning"]
  # a study without the profile has no results of it to rerun (deep_recipes has no long)
  assert studies_main.main(["--stale", "--profile", "long", "--results", str(tmp_path / "none"), "deep_recipes",
                            "one_layer"]) == 0
  assert capsys.readouterr().out.splitlines() == ["one_layer"]
  assert studies_main.main(["--stale", "nonsense"]) == 2
  assert capsys.readouterr().err.startswith("--stale: unknown study 'nonsense'")


@pytest.fixture
def one_layer_results(tmp_path):
  for ext in ("csv", "json"):
    shutil.copy(REPO / "results" / f"one_layer.{ext}", tmp_path)
  return tmp_path


def _report_with(results: Path, code: dict | None) -> str:
  m = io.read_json(results / "one_layer.json")
  m.pop("code", None)
  io.write_json(results / "one_layer.json", {**m, **({"code": code} if code is not None else {})})
  return report.build(results)


def test_the_report_marks_a_stale_file_in_its_verdict_row_and_section_and_a_fresh_one_not_at_all(one_layer_results):
  claim = verdicts.CLAIMS["one_layer_gd"][0]
  row = lambda md: next(line for line in md.splitlines() if line.startswith(f"| {claim} |"))
  now = freshness.code_of("one_layer")
  fresh = _report_with(one_layer_results, now)
  assert "(stale: " not in fresh and "**Stale" not in fresh
  files = {**now["files"], "lintheory/run/train.py": "0" * 16}
  old = _report_with(one_layer_results, {**now, "revisions": {"trainer": 1}, "files": files, "digest": "0" * 16})
  why = f"produced by trainer 1, now {train.TRAINER}; code digest 00000000 ≠ current {now['digest'][:8]}"
  assert f"** (stale: {why}) | " in row(old)
  assert f"**Stale: {why}.** Changed since: `lintheory/run/train.py`." in old
  assert "`make study-one_layer PROFILE=default` reruns it" in old
  none = _report_with(one_layer_results, None)
  assert "** (stale: no trainer revision or code digest recorded) | " in row(none)
  assert "**Stale: no trainer revision or code digest recorded.** The file was written before" in none


def test_a_partial_run_is_recorded_as_the_last_run_but_not_as_the_profiles_time(one_layer_results):
  start = time.time() - 60
  assert studies_main.main(["--record-wall", str(start), "--profile", "default", "--jobs", "2", "--cached-models", "4",
                            "--partial", "--results", str(one_layer_results)]) == 0
  assert io.read_json(one_layer_results / "make_results.json")["partial"] is True
  assert not (one_layer_results / "profiles").exists()
  loaded = engine.load_all(one_layer_results)
  assert "That run reran only the stale studies" in report.timings(loaded, one_layer_results)
  assert studies_main.main(["--record-wall", str(start), "--profile", "default", "--jobs", "2", "--cached-models", "4",
                            "--results", str(one_layer_results)]) == 0
  assert io.read_json(one_layer_results / "profiles" / "default.json")["partial"] is False
