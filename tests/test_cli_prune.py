"""`lintheory prune` and `lintheory sweep` on a run directory."""

import jax.numpy as jnp
import numpy as np
import pytest

from lintheory import cli
from lintheory.core import learners
from lintheory.run import io, rundir, sweep, sweep_files
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig

D_IN, N = 3, 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """Two layers of GD at η* (constructed, float32), saved like `lintheory train` saves a run."""
  path = tmp_path_factory.mktemp("runs") / "gd2"
  params = learners.construct(D_IN, learners.eta_star(D_IN, N), n_steps=2, dtype=jnp.float32)
  rundir.save_run(path, TaskConfig(d=D_IN, n_context=N), ModelConfig(d=D_IN, n_layers=2), None, 7, params, {})
  return path


def test_prune_writes_a_run_and_prints_before_and_after(run_dir, tmp_path, capsys):
  out = tmp_path / "pruned"
  rc = cli.main(["prune", str(run_dir), "--layer", "1", "--module", "v", "--rank", "0", "--out", str(out),
                 "--eval-tasks", "500"])
  assert rc == 0
  text = capsys.readouterr().out
  assert "before" in text and "after" in text
  run, src = rundir.load_run(out), rundir.load_run(run_dir)
  assert run.model == src.model and run.task == src.task and run.seed == 7
  cfg = io.read_json(out / "config.json")
  assert cfg["pruning"]["module"] == "v" and cfg["pruning"]["layers"] == [1] and cfg["pruning"]["kept_rank"] == {"W_V": 0}
  np.testing.assert_array_equal(np.asarray(run.params["W_V"][1]), 0)
  for k in src.params:
    np.testing.assert_array_equal(np.asarray(run.params[k][0]), np.asarray(src.params[k][0]))
  # Layer 1 now adds nothing: the pruned model is one GD step at η*, the train.evaluate reference.
  m = run.metrics
  np.testing.assert_allclose(m["final_loss"], m["gd1_loss"], rtol=1e-5)
  assert m["final_loss"] > m["loss_before"]  # two GD steps beat one
  # the input run is untouched, and an existing output needs --overwrite
  assert rundir.load_run(run_dir).params["W_V"][1, D_IN, D_IN] != 0
  assert cli.main(["prune", str(run_dir), "--layer", "0", "--module", "q", "--rate", "0.5", "--out", str(out)]) == 2
  assert cli.main(["prune", str(run_dir), "--layer", "0", "--module", "q", "--rate", "0.5", "--out", str(out),
                   "--overwrite", "--eval-tasks", "100"]) == 0


@pytest.mark.parametrize("argv,match", [
    (["--layer", "2", "--module", "v", "--rate", "0.5"], "layer"),
    (["--layer", "0", "--module", "o", "--rate", "0.5"], "absent"),
    (["--layer", "0", "--module", "mlp", "--rank", "1"], "absent"),
    (["--layer", "0", "--module", "v", "--rate", "1.0"], "xi"),
    (["--layer", "0", "--module", "v", "--rank", "5"], "rank"),
    (["--layer", "0", "--module", "v", "--rank", "1", "--eval-tasks", "1"], "eval-tasks")])
def test_prune_errors_name_the_argument(run_dir, tmp_path, capsys, argv, match):
  assert cli.main(["prune", str(run_dir), *argv, "--out", str(tmp_path / "x")]) == 2
  assert match in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_prune_needs_exactly_one_of_rate_and_rank(run_dir, tmp_path):
  for extra in ([], ["--rate", "0.5", "--rank", "1"]):
    assert cli.main(["prune", str(run_dir), "--layer", "0", "--module", "v", *extra, "--out", str(tmp_path / "x")]) == 2
  assert cli.main(["prune", str(tmp_path / "missing"), "--layer", "0", "--module", "v", "--rank", "1",
                   "--out", str(tmp_path / "x")]) == 2


def test_sweep_cli_runs_every_layer_module_and_rate(run_dir, tmp_path, capsys):
  out = tmp_path / "sw"
  argv = ["sweep", str(run_dir), "--modules", "attn", "v", "--rates", "0", "0.5", "--ranks", "0",
          "--eval-tasks", "64", "--analysis-tasks", "8", "--block", "4", "--no-bounds", "--out", str(out)]
  assert cli.main(argv) == 0
  rows = sweep_files.read_csv(out / "sweep.csv")
  assert len(rows) == 2 * 2 * 3 and {r["seed"] for r in rows} == {7}
  assert "best layer" in capsys.readouterr().out
  assert cli.main(argv) == 0  # resumes: nothing left to do, same rows
  assert sweep_files.read_csv(out / "sweep.csv") == rows


def _sweep_dir(path, rows, columns=sweep_files.BASE_COLUMNS):
  """A sweep directory holding sweep.json and a sweep.csv of the given text rows."""
  path.mkdir()
  io.write_json(path / "sweep.json", {"columns": list(columns)})
  (path / "sweep.csv").write_text("\n".join([",".join(columns), *rows]) + "\n")
  return path


@pytest.mark.parametrize("make, message", [
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "holds files a sweep does not write (notes.txt)"),
    (lambda p: _sweep_dir(p, ["7,0,attn,rate,0.5,,1.0,0.1,1.0"]), "row 2 is truncated or malformed"),  # no rank
    (lambda p: _sweep_dir(p, ["7,0,attn,rank,,1,1.0,0.1"]), "row 2 is truncated or malformed"),  # a cell short
    (lambda p: _sweep_dir(p, ["7,0,attn,rank,,one,1.0,0.1,1.0"]), "a value cannot be parsed"),
    (lambda p: (_sweep_dir(p, []), (p / "sweep.json").unlink()), "no sweep.json beside it"),
])
def test_sweep_refuses_a_directory_it_cannot_resume(run_dir, tmp_path, capsys, make, message):
  out = tmp_path / "sw"
  make(out)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert cli.main(["sweep", str(run_dir), "--eval-tasks", "8", "--analysis-tasks", "4", "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written


def test_a_sweep_directory_reads_back_by_column_name(tmp_path):
  row = "7,1,v,rank,,0,0.5,0.01,0.4"
  meta, rows = sweep_files.read_dir(_sweep_dir(tmp_path / "sw", [row]))
  assert meta["columns"] == list(sweep_files.BASE_COLUMNS)
  assert rows == [{"seed": 7, "layer": 1, "module": "v", "mode": "rank", "xi": None, "rank": 0, "icl_error": 0.5,
                   "icl_error_se": 0.01, "icl_error_median": 0.4}]
