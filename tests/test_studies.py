"""Every study end to end on its tiny profile: run → results table → figures → report section."""

import dataclasses

import pytest

from lintheory import report, studies
from lintheory.studies import engine, freshness
from lintheory.run import cache as run_cache


# make test runs one study end to end; the rest run under `make test-all` (each takes minutes here).
FAST = ("one_layer",)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """Studies run on the tiny profile into one results folder, sharing one model cache."""
  root = tmp_path_factory.mktemp("studies")
  flags = engine.Flags(profile="tiny", results=str(root / "results"), cache_dir=str(root / "cache"))
  for name in FAST:
    engine.run_study(name, flags)
  return root, flags


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in studies.STUDIES])
def test_study_writes_a_tidy_table_and_draws_it(ran, name):
  root, flags = ran
  if name not in FAST:
    engine.run_study(name, flags)
  table, meta = engine.load(flags.results, name)
  assert table.rows, f"{name} wrote no rows"
  assert meta["seeds"] and meta["provenance"]
  for r in table.rows:
    assert r["value"] == r["value"], f"{name}: NaN in {r}"  # NaN is refused by Context.add
  paths = engine.view_module(name).plot(table, meta, root / "figures")
  assert paths and all(p.stat().st_size > 0 for p in paths)
  assert engine.view_module(name).report(table, meta).strip()


def test_report_regenerates_byte_identical(ran):
  root, flags = ran
  from pathlib import Path
  assert report.build(Path(flags.results)) == report.build(Path(flags.results))


def test_rerunning_a_study_gives_the_same_table(ran, tmp_path):
  root, flags = ran
  again = dataclasses.replace(flags, results=str(tmp_path))
  engine.run_study("one_layer", again)
  assert (tmp_path / "one_layer.csv").read_bytes() == (root / "results" / "one_layer.csv").read_bytes()


def test_a_study_just_run_records_its_code_and_is_fresh(ran, capsys):
  from lintheory.run import train
  from lintheory.studies import __main__ as studies_main
  root, flags = ran
  _, meta = engine.load(flags.results, "one_layer")
  assert meta["code"] == freshness.code_of("one_layer") and meta["code"]["revisions"]["trainer"] == train.TRAINER
  assert freshness.staleness("one_layer", meta) == []
  assert studies_main.main(["--stale", "--profile", "tiny", "--results", flags.results, "one_layer"]) == 0
  assert capsys.readouterr().out == ""


def test_context_refuses_nan_and_unknown_columns():
  ctx = engine.Context(("L",), "unused")
  with pytest.raises(ValueError, match="NaN"):
    ctx.add("x", float("nan"), L=1)
  with pytest.raises(ValueError, match="unknown key"):
    ctx.add("x", 1.0, depth=1)


def test_table_round_trips_through_csv():
  ctx = engine.Context(("L", "module"), "unused")
  ctx.add("err", 0.1 + 0.2, seed=3, n_tasks=10, L=4, module="attn")
  ctx.add("err", float("inf"), L=8)
  t = engine.Table(ctx.rows, ctx.keys)
  back = engine.Table.from_csv(t.to_csv(), ctx.keys)
  assert back.rows == t.rows


def _committed_tables():
  from pathlib import Path
  files = sorted((Path(__file__).resolve().parents[1] / "results").glob("*.csv"))
  assert len(files) >= len(studies.STUDIES)
  return files


@pytest.mark.parametrize("lines", [400, pytest.param(None, marks=pytest.mark.slow)])
def test_codec_reads_and_writes_every_committed_results_csv_byte_for_byte(lines):
  """The one CSV codec (run.tables, engine.Table's) reproduces each committed results table (its first
  `lines` lines; all of it in the slow run) from the rows it reads: every cell's text is the form it writes."""
  from lintheory.run import tables
  for f in _committed_tables():
    text = "".join(f.read_text().splitlines(keepends=True)[:lines])
    cols, rows = tables.from_csv(text)
    assert tables.to_csv(cols, rows) == text, f.name
    if f.stem in studies.STUDIES:
      assert engine.Table.from_csv(text, tuple(cols[:-len(engine.FIXED)])).to_csv() == text, f.name


def test_codec_cells_read_back_as_the_values_written():
  from lintheory.run import tables
  import numpy as np
  values = [None, True, False, 0, -7, np.int64(3), 0.1 + 0.2, -0.0, float("inf"), np.float32(0.1), 1e-300, "attn"]
  back = [tables.parse(tables.cell(v)) for v in values]
  assert back == [None, True, False, 0, -7, 3, 0.1 + 0.2, -0.0, float("inf"), float(np.float32(0.1)), 1e-300, "attn"]
  assert [type(v) for v in back[3:6]] == [int] * 3 and str(back[7]) == "-0.0"
  with pytest.raises(ValueError, match="line 3 has 1 cells, the header 2"):
    tables.from_csv("a,b\n1,2\n3\n")


def test_bad_profile_is_one_line_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    engine.main("one_layer", ["--profile", "nope"])
  assert e.value.code == 2
  assert "--profile" in capsys.readouterr().err


@pytest.mark.parametrize("values", [[-2e3, 0.5, 30.0], [1e-9, 1e12], [0.0]])
def test_symlog_axis_labels_at_most_max_ticks_and_zero(values):
  from lintheory.studies.views import common
  plt = common.pyplot()
  fig, ax = plt.subplots()
  common.symlog(ax, "x", values, max_ticks=7)
  ticks = list(ax.get_xticks())
  plt.close(fig)
  assert 0.0 in ticks and len(ticks) <= 7 and ticks == sorted(ticks)
  assert max(ticks) >= max(abs(v) for v in values)  # the data stay inside the labelled range


def test_the_wall_time_of_a_run_is_recorded_and_reported(ran, capsys):
  import time
  from pathlib import Path
  from lintheory.studies import __main__ as studies_main
  root, flags = ran
  results = Path(flags.results)
  assert studies_main.main(["--record-wall", str(time.time() - 150), "--profile", "tiny", "--jobs", "2",
                            "--cached-models", "0", "--results", str(results)]) == 0
  md = report.build(results)
  import re
  minutes = float(re.search(r"took (\d+\.\d) minutes of wall time", md).group(1))
  assert "The last `make results` (profile `tiny`, commit" in md and "studies, 2 at a time" in md
  assert 2.5 <= minutes <= 2.7
  assert "from an empty model cache" in md
  (results / "make_results.json").unlink()
  assert studies_main.main(["--record-wall", "5", "--profile", "tiny", "--jobs", "2", "--cached-models", "0",
                            "--results", str(results)]) == 2
  assert "--record-wall" in capsys.readouterr().err and not (results / "make_results.json").exists()


def test_each_profile_keeps_its_own_time_record_and_the_readme_shows_it(ran, tmp_path, capsys):
  import time
  from pathlib import Path
  from lintheory.run import io
  from lintheory.studies import __main__ as studies_main
  root, flags = ran
  results = Path(flags.results)
  start = min(f.stat().st_mtime for f in results.glob("*.json")) - 1
  assert studies_main.main(["--record-wall", str(start), "--end", str(start + 84), "--profile", "tiny",
                            "--jobs", "1", "--cached-models", "3", "--results", str(results)]) == 0
  record = io.read_json(results / "profiles" / "tiny.json")
  assert record == io.read_json(results / "make_results.json")
  metas = {n: io.read_json(results / f"{n}.json") for n in record["studies"]}
  assert set(FAST) <= set(metas)
  assert record["study_seconds"] == {n: m["seconds"] for n, m in metas.items()}
  assert record["seeds"] == {n: len(m["seeds"]) for n, m in metas.items()}
  readme = tmp_path / "README.md"
  begin, end = report.begin_marker("per-profile times"), report.end_marker("per-profile times")
  readme.write_text(f"# x\n\nbefore\n{begin}\nstale text\n{end}\nafter\n")
  out = tmp_path / "report.md"
  assert report.main(["--results", str(results), "--out", str(out), "--docs", str(readme)]) == 0
  text = readme.read_text()
  assert text.startswith(f"# x\n\nbefore\n{begin}\n") and text.endswith(f"{end}\nafter\n")
  assert "stale text" not in text
  row = next(line for line in text.splitlines() if line.startswith("| `tiny` |"))
  assert row.split(" | ")[1] == "1.4" and f"{len(record['studies'])}, 1 at a time" in row and "3 models" in row
  assert "Not measured (no record in `results/profiles/`): `default`, `long`, `full`." in text
  assert "## What each profile cost" in out.read_text() and row in out.read_text()
  # A second run leaves the README as it was: the block is replaced, not appended to.
  assert report.main(["--results", str(results), "--out", str(out), "--docs", str(readme)]) == 0
  assert readme.read_text() == text


def test_profile_records_refuse_bad_input_in_one_line(ran, tmp_path, capsys):
  import shutil
  import time
  from pathlib import Path
  from lintheory.run import io
  from lintheory.studies import __main__ as studies_main
  root, flags = ran
  results = tmp_path / "results"
  shutil.copytree(flags.results, results, copy_function=shutil.copy)  # new files: written by "the run" below
  args = ["--record-wall", str(time.time() - 60), "--jobs", "1", "--cached-models", "0", "--results", str(results)]
  assert studies_main.main(args + ["--profile", "huge"]) == 2
  assert "--profile must be one of tiny, default, long, full" in capsys.readouterr().err
  assert studies_main.main(args + ["--profile", "default"]) == 2  # the results files are tiny's
  err = capsys.readouterr().err
  assert "holds profile 'tiny', not --profile 'default'" in err and len(err.strip().splitlines()) == 1
  assert not (results / "profiles" / "default.json").exists()
  assert studies_main.main(["--record-wall", str(time.time() + 1), "--end", str(time.time() + 9), "--profile", "tiny",
                            "--jobs", "1", "--cached-models", "0", "--results", str(results)]) == 2
  assert "no results file in" in capsys.readouterr().err
  readme = tmp_path / "README.md"
  readme.write_text("# no block here\n")
  args = ["--results", str(results), "--out", str(tmp_path / "r.md"), "--docs", str(readme)]
  assert report.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"report: error: {readme} holds no generated block") and len(err.strip().splitlines()) == 1
  assert readme.read_text() == "# no block here\n" and not (tmp_path / "r.md").exists()
  readme.write_text(f"{report.begin_marker('device counts')}\nno end line\n")
  assert report.main(args) == 2
  assert "lacks its end line" in capsys.readouterr().err
  io.write_json(results / "profiles" / "long.json", {"profile": "long", "wall_seconds": 5.0})
  readme.write_text(f"{report.begin_marker('per-profile times')}\n{report.end_marker('per-profile times')}\n")
  assert report.main(args) == 2
  err = capsys.readouterr().err
  assert "long.json is not a record of `--record-wall`" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", [n for n in studies.STUDIES if n != "deep_recipes"])
def test_every_study_has_the_four_profiles_and_enough_seeds(name):
  """`make figures` runs every study at `default` (or PROFILE=long / full): each must define it, with
  at least 5 seeds per model on 2 CPU cores and 20 on an accelerator."""
  p = engine.study_module(name).PROFILES
  assert set(engine.PROFILE_NAMES) <= set(p)
  assert len(p["default"].train.seeds) >= 5 and len(p["long"].train.seeds) >= 5
  assert len(p["full"].train.seeds) >= 20


# --- where outputs go: a profile's own directories, one cache root, smoke reports, summaries --------


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_each_profile_has_its_own_results_dir_under_one_root():
  from pathlib import Path
  assert engine.results_dir("default") == Path("results")  # the committed results
  assert engine.figures_dir("default") == Path("figures") and engine.report_path("default") == Path("docs/report.md")
  for p in ("tiny", "long", "full"):
    assert engine.results_dir(p) == Path("results") / p and engine.figures_dir(p) == Path("figures") / p
    assert engine.report_path(p) == Path(f"docs/report-{p}.md")
  for p in engine.PROFILE_NAMES:
    assert engine.results_root(engine.results_dir(p, "/x/r"), p) == Path("/x/r")
  assert run_cache.dirs("runs") == (Path("runs/cache"), Path("runs/jax_cache"))  # the paths of today's caches


def test_a_tiny_run_writes_results_tiny_under_one_cache_root_and_refuses_default_files(ran, tmp_path, monkeypatch,
                                                                                      capsys):
  import shutil
  from lintheory.run import compile_cache
  root, flags = ran
  monkeypatch.chdir(tmp_path)
  (tmp_path / "results").mkdir()
  for ext in ("csv", "json"):  # the committed default results, as in a fresh clone
    shutil.copy(REPO / "results" / f"one_layer.{ext}", tmp_path / "results")
  committed = {p.name: p.read_bytes() for p in (tmp_path / "results").iterdir()}
  cache_root = root / "cache"  # the fixture's models: this run only evaluates them
  before = compile_cache.directory()
  try:
    assert engine.main("one_layer", ["--profile", "tiny", "--cache-dir", str(cache_root)]) == 0
  finally:
    compile_cache.enable(before) if before else compile_cache.disable()
  err = capsys.readouterr().err
  assert (tmp_path / "results" / "tiny" / "one_layer.csv").exists()
  assert engine.load(tmp_path / "results" / "tiny", "one_layer")[1]["profile"] == "tiny"
  assert {p.name: p.read_bytes() for p in (tmp_path / "results").glob("one_layer.*")} == committed
  assert not (tmp_path / "runs").exists()  # every cache went under --cache-dir
  assert (cache_root / "jax_cache").is_dir() and any((cache_root / "cache").glob("*/params.npz"))
  summary = next(line for line in err.splitlines() if line.startswith("one_layer: excess error"))
  assert any(c.isdigit() for c in summary)
  # Asked to write over the default profile's file, a tiny run refuses before it trains.
  assert engine.main("one_layer", ["--profile", "tiny", "--results", "results", "--cache-dir", str(cache_root),
                                   "--no-compile-cache"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "holds profile 'default'" in err and "--results results/tiny" in err
  assert {p.name: p.read_bytes() for p in (tmp_path / "results").glob("one_layer.*")} == committed


def test_a_profiles_plots_report_and_time_record_go_to_its_own_paths(ran, tmp_path, monkeypatch):
  import shutil
  import time
  from lintheory import plots
  from lintheory.studies import __main__ as studies_main
  root, flags = ran
  monkeypatch.chdir(tmp_path)
  shutil.copytree(flags.results, tmp_path / "results" / "tiny", copy_function=shutil.copy)
  shutil.copy(REPO / "results" / "one_layer.json", tmp_path / "results" / "one_layer.json")
  default_meta = (tmp_path / "results" / "one_layer.json").read_bytes()
  for stale in ("make_results.json", "profiles"):  # the other tests' records in the shared folder
    p = tmp_path / "results" / "tiny" / stale
    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
  assert studies_main.main(["--record-wall", str(time.time() - 60), "--profile", "tiny", "--jobs", "1",
                            "--cached-models", "0"]) == 0
  assert (tmp_path / "results" / "tiny" / "make_results.json").exists()
  assert (tmp_path / "results" / "profiles" / "tiny.json").exists()  # beside the other profiles' records
  assert plots.main(["--profile", "tiny", "one_layer"]) == 0
  assert (tmp_path / "figures" / "tiny" / "one_layer_loss.png").exists()
  assert not list((tmp_path / "figures").glob("*.png"))
  readme = tmp_path / "README.md"
  readme.write_text(f"{report.begin_marker('per-profile times')}\n{report.end_marker('per-profile times')}\n")
  assert report.main(["--profile", "tiny", "--docs", str(readme)]) == 0
  md = (tmp_path / "docs" / "report-tiny.md").read_text()
  assert "](../figures/tiny/one_layer_loss.png)" in md and "](../figures/one_layer" not in md
  assert "`results/tiny/one_layer.csv`" in md and "| `tiny` |" in readme.read_text()
  assert not (tmp_path / "docs" / "report.md").exists()
  assert (tmp_path / "results" / "one_layer.json").read_bytes() == default_meta
  assert report.main(["--profile", "default", "--results", "results/tiny"]) == 2  # not the profile asked for


def test_the_report_of_a_tiny_run_is_a_smoke_test_that_decides_nothing(ran):
  from pathlib import Path
  from lintheory.studies import verdicts
  root, flags = ran
  md = report.build(Path(flags.results))
  assert md.startswith("# lintheory smoke test (profile `tiny`): decides nothing\n")
  table = md.split("## Verdicts on the paper's claims")[1].split("## What each study cost")[0]
  rows = [line.split(" | ") for line in table.strip().splitlines()[2:]]
  assert [r[0][2:] for r in rows] == [c for cid, (c, _) in verdicts.CLAIMS.items() if cid not in verdicts.FINDINGS]
  assert all(r[1] == verdicts.SMOKE for r in rows)
  assert not [w for w in ("holds", "fails", "depends", "**") if w in table]


def test_a_report_of_mixed_profiles_is_refused(ran, tmp_path, capsys):
  import shutil
  root, flags = ran
  shutil.copytree(flags.results, tmp_path / "r", copy_function=shutil.copy)
  for ext in ("csv", "json"):  # a default study beside tiny's one_layer
    shutil.copy(REPO / "results" / f"implicit_gd.{ext}", tmp_path / "r")
  assert report.main(["--results", str(tmp_path / "r"), "--out", str(tmp_path / "r.md")]) == 2
  err = capsys.readouterr().err.strip()
  assert "holds results of 2 profiles (default, tiny)" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", studies.STUDIES)
def test_each_study_summarises_the_committed_results_in_one_line_with_a_number(name):
  table, _ = engine.load(REPO / "results", name)
  line = engine.view_module(name).summary(table)
  assert "\n" not in line and any(c.isdigit() for c in line)
  assert "[" in line or name == "deep_recipes"  # a CI or the seeds' range, except where the study reports seeds' extremes
