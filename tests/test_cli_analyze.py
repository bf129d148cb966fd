"""`lintheory analyze`: analysis.json of trained and saved runs, caching, and its error paths."""

import json

import numpy as np
import pytest

from lintheory import cli
from lintheory.run import references, rundir
from lintheory.core.model import ModelConfig, param_shapes
from lintheory.core.tasks import TaskConfig

FAST = ["--fit-steps", "20", "--eval-tasks", "64", "--tail-tasks", "512"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One reference cache for the module: the references are fitted once."""
  return tmp_path_factory.mktemp("cache")


def saved_run(path, n_layers=2, **arch):
  """A run directory with random weights (the analysis does not care how they were obtained)."""
  cfg = ModelConfig(d=3, n_layers=n_layers, **arch)
  rng = np.random.default_rng(0)
  params = {k: 0.3 * rng.standard_normal(s).astype(np.float32) for k, s in param_shapes(cfg).items()}
  return rundir.save_run(path, TaskConfig(d=3, n_context=5), cfg, None, 0, params, {})


def test_analyze_a_trained_run(tmp_path, cache, capsys, monkeypatch):
  run = tmp_path / "run"
  assert cli.main(["train", "--d", "3", "--n-context", "5", "--layers", "2", "--steps", "30", "--batch-size", "64",
                   "--eval-tasks", "64", "--out", str(run)]) == 0
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  assert cli.main(["analyze", str(run), "--cache-dir", str(cache)] + FAST) == 0
  assert not any(cwd.iterdir())  # only --cache-dir is written to, no runs/cache here
  assert any((cache / "cache" / "references").iterdir())  # --cache-dir is the root, as the studies'
  assert "analysis.json" in capsys.readouterr().out
  a = json.loads((run / "analysis.json").read_text())
  for key in ("run", "task", "model", "identity", "layers", "final", "interpolation", "references", "fit"):
    assert key in a, key
  assert a["identity"]["exact"] is True and a["identity"]["max_abs_err"] < 1e-10
  assert [rec["layer"] for rec in a["layers"]] == [0, 1]  # prune --layer's indices
  for rec in a["layers"]:
    assert rec["identity_max_abs_err"] < 1e-10
    assert set(rec["references"]) == set(references.KINDS)
    for m in rec["references"].values():
      assert {"cos", "rel_l2", "pred_abs_diff", "loss"} <= set(m) and -1 - 1e-9 <= m["cos"] <= 1 + 1e-9
  assert {"model", "ridge", *references.KINDS} <= set(a["final"]["losses"])
  assert set(a["final"]["model_cos"]) >= set(references.KINDS)
  assert all(np.isfinite(a["interpolation"][k]) for k in references.KINDS)
  metrics = json.loads((run / "metrics.json").read_text())
  assert metrics["step"] == 30  # not retrained
  # a second analysis (several runs) reads the cached references instead of fitting again
  monkeypatch.setattr(references, "fit_many", lambda *a, **k: pytest.fail("refitted a cached reference"))
  other = saved_run(tmp_path / "other", n_heads=2, use_W_O=True)
  other_task = TaskConfig(d=3, n_context=5)
  assert references.cache_path(other_task, 2, references.FitConfig(steps=20), cache / "cache").exists()
  same = saved_run(tmp_path / "same")  # the trained run's task and model
  assert cli.main(["analyze", str(run), str(other), str(same), "--cache-dir", str(cache)] + FAST) == 0
  out = capsys.readouterr().out
  assert out.count("over ") == 1 and "over 2 runs of d=3, n_context=5, n_layers=2:" in out  # not pooled with `other`
  b = json.loads((other / "analysis.json").read_text())
  assert b["identity"]["exact"] is True and b["identity"]["max_abs_err"] < 1e-10
  assert b["interpolation"]["reason"] is not None  # two heads do not merge


def test_analyze_flags_softmax_and_mlp_runs(tmp_path, cache):
  runs = [saved_run(tmp_path / "softmax", attention="softmax"), saved_run(tmp_path / "mlp", mlp="relu")]
  assert cli.main(["analyze", *map(str, runs), "--cache-dir", str(cache)] + FAST) == 0
  for run in runs:
    a = json.loads((run / "analysis.json").read_text())
    assert a["identity"]["exact"] is False
    assert a["identity"]["max_abs_err"] > 1e-6 and "does not cover" in a["identity"]["note"]
    assert all(np.isfinite(rec["identity_max_abs_err"]) for rec in a["layers"])
    assert a["interpolation"]["reason"] is not None


def test_analyze_errors(tmp_path, capsys):
  assert cli.main(["analyze", str(tmp_path / "nope")]) == 2
  assert "no such run directory" in capsys.readouterr().err
  run = saved_run(tmp_path / "run")
  assert cli.main(["analyze", str(run), "--eval-tasks", "1"]) == 2
  assert "--eval-tasks must be an integer in [2, " in capsys.readouterr().err
  assert cli.main(["analyze", str(run), "--fit-steps", "0"]) == 2
  assert "steps must be an integer >= 1" in capsys.readouterr().err
  assert not (run / "analysis.json").exists()


def numpy_forward(params, X, y, x_q):
  """The linear-attention forward pass of docs/theory.md §2 written again in numpy, for one check:
  columns h_j ← h_j + (1/N) W_V H_s (W_K H_s)ᵀ W_Q h_j over all tokens, ŷ = −(query's y-slot)."""
  B, N, d = X.shape
  H = np.concatenate([np.concatenate([X, y[..., None]], -1), np.concatenate([x_q, np.zeros((B, 1))], -1)[:, None]], 1)
  for W_Q, W_K, W_V in zip(params["W_Q"], params["W_K"], params["W_V"]):
    Hs = H[:, :N]
    M = np.einsum("ij,bnj,bnk,lk,lm->bim", W_V, Hs, Hs, W_K, W_Q) / N  # W_V C W_Kᵀ W_Q / N, C = Σ_n h_n h_nᵀ
    H = H + np.einsum("bim,btm->bti", M, H)
  return -H[:, -1, -1]


def test_analyze_tails_agree_with_an_independent_evaluation(tmp_path, cache):
  """The expected error analyze reports on its own fresh tasks matches a numpy forward pass of the
  same weights on other fresh tasks (numpy's generator), within the sampling error of both."""
  run = saved_run(tmp_path / "run", n_layers=2)
  assert cli.main(["analyze", str(run), "--cache-dir", str(cache), "--fit-steps", "20", "--eval-tasks", "64",
                   "--tail-tasks", "40000"]) == 0
  t = json.loads((run / "analysis.json").read_text())["tails"]["model"]
  assert t["n"] == 40_000 and t["median"] <= t["p99"] <= t["p9999"] <= t["max"]
  params = {k: np.asarray(v, np.float64) for k, v in rundir.load_run(run).params.items()}
  rng = np.random.default_rng(123)
  B, d, N = 40_000, 3, 5
  w, X, x_q = rng.standard_normal((B, d)), rng.standard_normal((B, N, d)), rng.standard_normal((B, d))
  err = (numpy_forward(params, X, np.einsum("bnd,bd->bn", X, w), x_q) - np.einsum("bd,bd->b", x_q, w)) ** 2 / d
  se = np.hypot(err.std(ddof=1) / np.sqrt(B), (t["mean_ci_hi"] - t["mean_ci_lo"]) / 3.92)
  assert abs(err.mean() - t["mean"]) < 4 * se, (err.mean(), t["mean"], se)
