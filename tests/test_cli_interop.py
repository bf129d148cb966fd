"""`lintheory import` and `lintheory export`: a converted run that analyze and prune accept, and the
error paths (one line naming the file, exit 2, nothing written)."""

import numpy as np
import pytest

from lintheory import cli
from lintheory.core import learners
from lintheory.run import io, rundir

FAST = ["--fit-steps", "10", "--eval-tasks", "32", "--tail-tasks", "256"]


@pytest.fixture(scope="module")
def allparam_file(tmp_path_factory):
  """Two layers of Transformer_F at d = 3: GD with step 0.3 in their parameterisation (P = 0, Q = −0.3 I)."""
  path = tmp_path_factory.mktemp("ahn") / "allparam.npy"
  allparam = np.zeros((2, 1, 2, 3, 3), np.float32)
  allparam[:, 0, 1] = -0.3 * np.eye(3)
  np.save(path, allparam)
  return path


def imported(allparam_file, run):
  assert cli.main(["import", "--from", "ahn", str(allparam_file), "--out", str(run), "--n-context", "8"]) == 0
  return run


def test_analyze_and_prune_an_imported_run(allparam_file, tmp_path):
  run = imported(allparam_file, tmp_path / "imported")
  assert cli.main(["analyze", str(run), "--cache-dir", str(tmp_path / "cache")] + FAST) == 0
  assert rundir.load_run(run) and (run / "analysis.json").is_file()
  pruned = tmp_path / "pruned"
  assert cli.main(["prune", str(run), "--layer", "1", "--module", "v", "--rank", "0", "--out", str(pruned),
                   "--eval-tasks", "100"]) == 0
  assert rundir.load_run(pruned).config["pruning"]["from"] == str(run)


def test_import_writes_a_run_and_export_gives_the_file_back(allparam_file, tmp_path, capsys):
  run = imported(allparam_file, tmp_path / "imported")
  loaded = rundir.load_run(run)
  source = loaded.config["source"]
  assert source["format"] == "ahn" and source["sha256"] == io.sha256_file(allparam_file)
  assert loaded.task.n_context == 8 and loaded.model.n_layers == 2 and loaded.train is None
  gd = learners.construct(3, 0.3, n_steps=2)  # the same layers up to the factor (W_V, W_KᵀW_Q) ↔ (−W_V/η, −η W_KᵀW_Q)
  assert np.allclose(loaded.params["W_V"][:, 3, 3, None, None] * loaded.params["W_Q"][:, :3, :3],
                     np.asarray(gd["W_V"][:, 3, 3, None, None] * gd["W_Q"][:, :3, :3]), rtol=1e-7)
  out = tmp_path / "back.npy"
  assert cli.main(["export", "--to", "ahn", str(run), str(out), "--dtype", "float32"]) == 0
  assert np.array_equal(np.load(out), np.load(allparam_file))
  assert cli.main(["export", "--to", "ahn", str(run), str(out)]) == 2  # exists: needs --overwrite
  assert "--overwrite" in capsys.readouterr().err


def test_import_errors_are_one_line_exit_2_and_write_nothing(allparam_file, tmp_path, capsys):
  bad = tmp_path / "bad.npy"
  np.save(bad, np.ones((2, 3)))
  out = tmp_path / "run"
  for argv, match in [(["--from", "ahn", str(bad)], str(bad)),
                      (["--from", "ahn", str(tmp_path / "none.npy")], "no such file"),
                      (["--from", "von-oswald", str(allparam_file)], "suffix"),
                      (["--from", "npz", str(allparam_file)], "suffix"),
                      (["--from", "ahn", str(allparam_file), "--n-context", "0"], "n-context")]:
    assert cli.main(["import", *argv, "--out", str(out)]) == 2, argv
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not out.exists()


def test_export_refusal_writes_nothing(tmp_path, capsys):
  """A trained-looking run (dense weights) is outside the ahn class: refused, file not created."""
  from lintheory.core.model import ModelConfig, param_shapes
  from lintheory.core.tasks import TaskConfig
  cfg = ModelConfig(d=2, n_layers=1)
  rng = np.random.default_rng(0)
  run = rundir.save_run(tmp_path / "r", TaskConfig(d=2, n_context=4), cfg, None, 0,
                        {k: rng.standard_normal(s) for k, s in param_shapes(cfg).items()}, {})
  out = tmp_path / "w.npy"
  assert cli.main(["export", "--to", "ahn", str(run), str(out)]) == 2
  err = capsys.readouterr().err
  assert "nonzero entries" in err and str(out) in err and err.count("\n") == 1
  assert not out.exists()
  assert cli.main(["export", "--to", "von-oswald", str(run), str(tmp_path / "w.npz")]) == 0


def test_a_von_oswald_import_records_its_task_family_and_prunes(tmp_path):
  """Their setting (inputs U(−½, ½)ᵈ, N given) goes into the run's task, which prune then evaluates on."""
  from lintheory.run import interop
  weights = tmp_path / "vo.npz"
  interop.export("von-oswald", learners.construct(3, 0.5, n_steps=1), learners_cfg(3, 1), weights, n_context=10)
  run = tmp_path / "vo"
  assert cli.main(["import", "--from", "von-oswald", str(weights), "--out", str(run), "--n-context", "10",
                   "--x-dist", "uniform", "--x-scale", "0.5"]) == 0
  task = rundir.load_run(run).task
  assert (task.d, task.n_context, task.x_dist, task.x_scale) == (3, 10, "uniform", 0.5)
  assert cli.main(["prune", str(run), "--layer", "0", "--module", "v", "--rank", "0", "--out",
                   str(tmp_path / "pruned"), "--eval-tasks", "64"]) == 0
  assert cli.main(["import", "--from", "von-oswald", str(weights), "--out", str(tmp_path / "x"), "--n-context",
                   "10", "--d", "4"]) == 2  # d is the weights'


def learners_cfg(d, L):
  from lintheory.core.model import ModelConfig
  return ModelConfig(d=d, n_layers=L)
