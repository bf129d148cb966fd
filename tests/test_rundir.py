"""Run directories: one commit per save, a verified manifest, validated contents, provenance."""

import json
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lintheory.core import implicit, tasks
from lintheory.core.model import LinearTransformer, ModelConfig, param_shapes, params_of
from lintheory.core.tasks import TaskConfig
from lintheory.run import io, profiles, provenance, rundir, train
from lintheory.run.train import TrainConfig, resolve
from conftest import batch64

TASK, MODEL, TRAIN = TaskConfig(d=2, n_context=4), ModelConfig(d=2, n_layers=2), TrainConfig(steps=10, batch_size=8)
PROV = {"versions": {}, "git": {"commit": None}}  # collect() is tested on its own


def params(scale=0.1, dtype=np.float32):
  rng = np.random.default_rng(0)
  return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in param_shapes(MODEL).items()}


def save(path, p=None, **kw):
  return rundir.save_run(path, TASK, MODEL, TRAIN, 3, params() if p is None else p, {"step": 10}, np.ones(10),
                         provenance=PROV, **kw)


def test_save_then_load_round_trips_and_lists_every_file(tmp_path):
  p = params()
  run = rundir.load_run(save(tmp_path / "r", p))
  assert (run.task, run.model, run.train, run.seed) == (TASK, MODEL, resolve(TRAIN, MODEL), 3)
  for k in p:
    np.testing.assert_array_equal(run.params[k], p[k])
    assert run.params[k].dtype == np.float32
  files = set(run.manifest["files"])
  assert files == {"config.json", "params.npz", "metrics.json", "loss_curve.csv", "provenance.json"}
  assert sorted(x.name for x in (tmp_path / "r").iterdir()) == sorted(files | {rundir.MANIFEST})
  assert [x.name for x in tmp_path.iterdir()] == ["r"]  # no .new / .old siblings left


def test_a_trained_modules_state_round_trips_and_the_loaded_module_is_implicit_gd(tmp_path):
  """nnx.state of a trained model, saved in a run directory, loads into a fresh module; on it Theorem 1
  (docs/theory.md §5) holds: h_{N+1}^t = (I + W_t) h_{N+1}^0 at every layer and ŷ = ŵ_L·x_q (float64)."""
  tc = TrainConfig(steps=3, batch_size=8, chunk=3, dtype="float64")
  trained = profiles.seed_params(train.fit(TASK, MODEL, tc, seeds=(3,)).state.model, 0)
  run = rundir.load_run(rundir.save_run(tmp_path / "r", TASK, MODEL, tc, 3, nnx.state(trained), {"step": 3},
                                        provenance=PROV))
  assert sorted(run.params) == ["W_K", "W_Q", "W_V"]  # params.npz keeps its keys: numpy reads it alone
  loaded = LinearTransformer(run.model, rngs=nnx.Rngs(0), dtype=jnp.float64)
  nnx.update(loaded, run.params)
  for k, v in params_of(trained).items():
    np.testing.assert_array_equal(params_of(loaded)[k], v)
  b = batch64(TASK.d, TASK.n_context)
  Z = tasks.batch_tokens(b)
  y_hat, states = loaded(Z, return_states=True)
  traj = implicit.trajectory(params_of(loaded), Z, run.model)
  h = jnp.einsum("lbij,bj->lbi", jnp.eye(MODEL.D) + traj.W_traj, Z[:, -1])
  scale = float(jnp.max(jnp.abs(states)))
  np.testing.assert_allclose(h, states[1:, :, -1], rtol=0, atol=1e-12 * scale)
  np.testing.assert_allclose(jnp.einsum("bd,bd->b", traj.w_hat[-1], b.x_q), y_hat, rtol=0,
                             atol=1e-12 * float(jnp.max(jnp.abs(y_hat))))


def test_params_bytes_depend_on_the_values_alone(tmp_path):
  a, b = save(tmp_path / "a"), save(tmp_path / "b")
  assert (a / "params.npz").read_bytes() == (b / "params.npz").read_bytes()
  assert (a / "params.npz").read_bytes() != (save(tmp_path / "c", params(0.2)) / "params.npz").read_bytes()


def test_a_save_replaces_the_whole_directory(tmp_path):
  out = save(tmp_path / "r")
  io.write_json(out / "analysis.json", {"stale": True})
  save(out, params(0.2))
  assert not (out / "analysis.json").exists()
  np.testing.assert_array_equal(rundir.load_run(out).params["W_Q"], params(0.2)["W_Q"])


def test_an_edited_or_missing_file_is_refused_by_name(tmp_path):
  out = save(tmp_path / "r")
  (out / "metrics.json").write_text("{}")
  with pytest.raises(rundir.RunError, match="metrics.json differs from its checksum"):
    rundir.load_run(out)
  out = save(tmp_path / "s")
  (out / "loss_curve.csv").unlink()
  with pytest.raises(rundir.RunError, match="loss_curve.csv is missing"):
    rundir.load_run(out)


def test_a_save_refuses_a_directory_of_someone_else(tmp_path):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep me")
  with pytest.raises(rundir.RunError, match="not a lintheory run directory"):
    save(tmp_path / "mine")
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


class Killed(BaseException):
  """Stands for a kill: not an Exception, so nothing on the way cleans up."""


def interrupt_after(monkeypatch, k):
  """Make the k-th write point (file write or rename) of the process die."""
  count = [0]
  for name in ("atomic_write_bytes", "replace"):
    real = getattr(io, name)

    def fake(*a, _real=real, **kw):
      if count[0] == k:
        raise Killed
      count[0] += 1
      return _real(*a, **kw)
    monkeypatch.setattr(io, name, fake)
  return count


@pytest.mark.parametrize("k", range(8))  # 5 files + manifest + 2 renames
def test_a_save_killed_anywhere_leaves_the_old_run_or_the_new_one(tmp_path, monkeypatch, k):
  out = save(tmp_path / "r", params(0.1))
  with monkeypatch.context() as m:
    interrupt_after(m, k)
    with pytest.raises(Killed):
      save(out, params(0.2))
  W_Q = rundir.load_run(out).params["W_Q"]
  expect = params(0.2) if k == 7 else params(0.1)  # the second rename completes with a recovery
  np.testing.assert_array_equal(W_Q, expect["W_Q"])
  save(out, params(0.3))  # and the next save cleans up
  assert [x.name for x in tmp_path.iterdir()] == ["r"]


def test_bad_contents_are_named(tmp_path):
  cases = [({"W_Q": np.float32("nan")}, "W_Q holds 1 non-finite"), ({"W_K": "int32"}, "W_K has dtype int32"),
           ({"W_V": "float64"}, "config.json trains in float32"), ({"W_K": None}, "W_K missing"),
           ({"W_Q": (3, 3, 3)}, "W_Q has shape (3, 3, 3)")]
  for i, (change, match) in enumerate(cases):
    p = params()
    for name, how in change.items():
      if how is None:
        del p[name]
      elif isinstance(how, str):
        p[name] = p[name].astype(how)
      elif isinstance(how, tuple):
        p[name] = np.zeros(how, np.float32)
      else:
        p[name] = p[name].copy()
        p[name].flat[0] = how
    with pytest.raises(rundir.RunError, match=match.replace("(", r"\(").replace(")", r"\)")):
      rundir.load_run(save(tmp_path / f"r{i}", p))


def test_config_mismatch_names_the_fields_and_lets_steps_grow(tmp_path):
  run = rundir.load_run(save(tmp_path / "r"))
  assert rundir.config_mismatch(run, TASK, MODEL, TrainConfig(steps=99, batch_size=8, chunk=7), 3) == []
  diff = rundir.config_mismatch(run, TASK, ModelConfig(d=2, n_layers=3), TrainConfig(steps=10, batch_size=8, lr=0.1), 4)
  assert [d.split(" ")[0] for d in diff] == ["model.n_layers", "train.lr", "seed"]


def test_provenance_names_versions_commit_and_device():
  p = provenance.collect()
  assert p["versions"]["numpy"] == np.__version__ and p["versions"]["jax"]
  assert set(p["git"]) >= {"commit", "dirty"} and p["device"]["device_kind"]
  assert isinstance(p["device"]["x64"], bool) and p["python"].count(".") == 2
  assert p["cpu_count"] >= 1 and len(p["load_avg"]) == 3 and min(p["load_avg"]) >= 0  # timings need the load
  json.dumps(p)  # plain data


def test_provenance_says_when_git_is_absent(monkeypatch):
  def no_git(*a, **k):
    raise FileNotFoundError("git")
  monkeypatch.setattr(subprocess, "run", no_git)
  assert provenance.git_state() == {"commit": None, "dirty": None, "error": "git is not installed"}


def test_dirty_means_the_source_changed_not_the_studies_outputs(tmp_path, monkeypatch):
  git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
  (tmp_path / "results").mkdir()
  for name in ("pyproject.toml", "code.py", "results/study.csv"):
    (tmp_path / name).write_text("0\n")
  git("init", "-q")
  git("add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "y")
  monkeypatch.setattr(provenance, "_ROOT", tmp_path)
  assert provenance.git_state()["dirty"] is False
  (tmp_path / "results/study.csv").write_text("1\n")  # a study rewrote its table
  assert provenance.git_state()["dirty"] is False
  (tmp_path / "code.py").write_text("1\n")
  assert provenance.git_state()["dirty"] is True
