"""`lintheory train`: the files it writes, resuming, and its error paths (exit code 2)."""

import json

import numpy as np
import pytest

from lintheory import cli
from lintheory.core import learners

RUN = ["train", "--d", "5", "--n-context", "10", "--layers", "1", "--steps", "300", "--batch-size", "1024",
       "--seed", "0", "--noise-std", "0.0"]


def test_train_writes_the_run_directory(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(RUN + ["--out", str(out)]) == 0
  assert "final_loss" in capsys.readouterr().out
  config = json.loads((out / "config.json").read_text())
  assert config["task"]["d"] == 5 and config["task"]["n_context"] == 10 and config["model"]["n_layers"] == 1
  assert config["train"]["steps"] == 300 and config["train"]["batch_size"] == 1024 and config["seed"] == 0
  with np.load(out / "params.npz") as f:
    assert {"W_Q", "W_K", "W_V"} <= set(f.files)
    for name in ("W_Q", "W_K", "W_V"):
      assert f[name].shape == (1, 6, 6) and np.all(np.isfinite(f[name]))
  m = json.loads((out / "metrics.json").read_text())
  for key in ("final_loss", "gd1_loss", "eta_star", "closed_form_loss", "seconds"):
    assert np.isfinite(m[key]), key
  assert m["eta_star"] == pytest.approx(10 / 16) and m["closed_form_loss"] == pytest.approx(learners.gd1_loss_star(5, 10))
  assert m["eval_tasks"] >= 10_000 and m["finished"] and m["seconds"] > 0
  assert abs(m["gd1_loss"] - m["closed_form_loss"]) < 4 * m["gd1_loss_se"]
  assert m["final_loss"] < 5.0  # better than the zero predictor (d = 5)
  assert m["learned"] is True and m["diverged"] is False and m["divergence"] is None
  assert abs(m["zero_loss"] - 5.0) < 4 * m["zero_loss_se"]  # E[y_q²] = tr Σ_w Σ_x = d
  curve = np.loadtxt(out / "loss_curve.csv", delimiter=",", skiprows=1)
  assert curve.shape == (300, 2) and np.all(curve[:, 0] == np.arange(1, 301)) and np.all(np.isfinite(curve))


@pytest.mark.slow
def test_train_resumes_from_its_checkpoint(tmp_path, capsys):
  out = tmp_path / "run"
  small = ["train", "--d", "3", "--n-context", "5", "--batch-size", "64", "--eval-tasks", "1000", "--out", str(out)]
  assert cli.main(small + ["--steps", "200"]) == 0
  curve = np.loadtxt(out / "loss_curve.csv", delimiter=",", skiprows=1)
  assert cli.main(small + ["--steps", "300", "--resume"]) == 0
  assert "resuming" in capsys.readouterr().err
  resumed = np.loadtxt(out / "loss_curve.csv", delimiter=",", skiprows=1)
  assert resumed.shape == (300, 2)
  np.testing.assert_allclose(resumed[:200], curve, rtol=1e-6)
  assert json.loads((out / "metrics.json").read_text())["step"] == 300


@pytest.mark.parametrize("flags, message", [
    (["--d", "0"], "d must"), (["--n-context", "0"], "n_context"), (["--noise-std", "-1"], "noise_std"),
    (["--layers", "0"], "n_layers"), (["--heads", "0"], "n_heads"), (["--steps", "0"], "steps"),
    (["--batch-size", "0"], "batch_size"), (["--lr", "0"], "lr"), (["--lr", "nan"], "lr"),
    (["--eval-tasks", "0"], "eval-tasks"), (["--x-cov-diag", "1", "2"], "x_cov"),
    (["--x-cov-diag", "1", "1", "1", "1", "-1"], "x_cov"), (["--init-scale", "0"], "init_scale"),
])
def test_bad_values_exit_2_with_a_message(tmp_path, capsys, flags, message):
  assert cli.main(["train", "--d", "5", "--out", str(tmp_path / "r")] + flags) == 2
  err = capsys.readouterr().err
  assert "error" in err and message in err
  assert not (tmp_path / "r" / "params.npz").exists()


def test_resume_without_a_run_exits_2(tmp_path, capsys):
  assert cli.main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
  assert "no such run directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", "--layers", "abc", "--out", "x"], ["train", "--attention", "cosine", "--out", "x"],
    ["train", "--bogus", "--out", "x"], ["train"], ["--d", "5"],
])
def test_bad_flags_exit_2(argv, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("lintheory") and ": error: " in err and err.count("\n") == 1


TINY = ["train", "--d", "2", "--n-context", "4", "--layers", "1", "--batch-size", "16", "--eval-tasks", "64"]


def test_a_diverged_run_exits_1_and_says_so_once(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(TINY + ["--steps", "10", "--lr", "100", "--out", str(out)]) == 1
  err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
  assert len(err) == 1 and "diverged" in err[0]
  m = json.loads((out / "metrics.json").read_text())
  assert m["diverged"] is True and m["learned"] is False and m["divergence"] and np.isfinite(m["zero_loss"])


def test_a_run_that_did_not_learn_is_flagged_and_exits_0(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(TINY + ["--steps", "1", "--out", str(out)]) == 0
  err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
  assert len(err) == 1 and "did not learn" in err[0] and "zero predictor" in err[0]
  m = json.loads((out / "metrics.json").read_text())
  assert m["diverged"] is False and m["learned"] is False and m["final_loss"] > m["zero_loss"] - 2 * m["zero_loss_se"]


def test_flags_left_out_are_the_recipe_of_the_depth(tmp_path):
  from lintheory.run import recipes
  args = cli.build_parser().parse_args(TINY + ["--layers", "3", "--steps", "900", "--clip-norm", "0.5",
                                               "--out", str(tmp_path / "run")])
  tcfg = cli._train_setup(args)[4]
  assert {k: getattr(tcfg, k) for k in recipes.FIELDS} == {**recipes.recipe(3).train_fields(900), "clip_norm": 0.5}
  assert (tcfg.dtype, tcfg.warmup) == ("float64", 300)  # L >= 3: float64, warm-up min(500, steps / 3)

