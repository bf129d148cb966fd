"""Results files and the shared model cache: strict JSON, atomic writes, one training per model."""

import dataclasses
import fcntl
import json
import subprocess
import sys

import numpy as np
import pytest

from lintheory.core import precision
from lintheory.run import cache, io, train
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run.train import TrainConfig

TASK, MODEL = TaskConfig(d=2, n_context=4), ModelConfig(d=2, n_layers=1)
CFG = TrainConfig(steps=3, batch_size=8, chunk=3, warmup=0)


def test_write_json_is_strict_json_with_inf_and_nan_marked(tmp_path):
  io.write_json(tmp_path / "r.json", {"a": np.array([1.0, np.inf, -np.inf, np.nan]), "n": np.int64(3)})
  text = (tmp_path / "r.json").read_text()
  assert json.loads(text) == {"a": [1.0, "inf", "-inf", None], "n": 3}
  assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cached_fit_trains_once_then_reads_the_cache(tmp_path, monkeypatch, dtype):
  cfg = dataclasses.replace(CFG, dtype=dtype)
  p1, l1, a1 = cache.cached_fit(TASK, MODEL, cfg, (0, 1), tmp_path)
  monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("retrained a cached model"))
  with precision.x64(False):  # a caller in 32-bit mode reads back the same float64 weights
    p2, l2, a2 = cache.cached_fit(TASK, MODEL, cfg, (0, 1), tmp_path)
  np.testing.assert_array_equal(l1, l2)
  assert a1 == a2 and len(a1) == 2  # the training diagnostic is read back, not recomputed
  for k in p1:
    assert type(p1[k]) is type(p2[k]) is np.ndarray and p1[k].dtype == p2[k].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(p1[k], p2[k])


def test_a_cached_diagnostic_of_another_version_is_recomputed_from_the_cached_model(tmp_path, monkeypatch):
  """The model is read, not retrained; its diagnostic of an older version (a bare list, one value tampered)
  is recomputed from the cached weights and losses, keeps the recorded restarts, and is saved versioned."""
  from lintheory.run import adequacy
  _, _, a1 = cache.cached_fit(TASK, MODEL, CFG, (0, 1), tmp_path)
  (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
  old = [{**s._asdict(), "train_loss": 123.0} for s in a1]
  io.write_json(entry / "adequacy.json", old)
  monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("retrained a cached model"))
  _, _, a2 = cache.cached_fit(TASK, MODEL, CFG, (0, 1), tmp_path)
  assert a2 == a1
  assert io.read_json(entry / "adequacy.json")["version"] == adequacy.VERSION


def test_lock_excludes_another_process(tmp_path):
  """While one process holds the lock, another cannot take it (so it would wait, not retrain)."""
  lock = tmp_path / "x.lock"
  probe = ("import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
           "try:\n  fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
           "except BlockingIOError:\n  print('held')\n")
  run = lambda: subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True,
                               check=True).stdout.strip()
  with io.locked(lock):
    assert run() == "held"
  assert run() == "free"
  with open(lock) as f:  # and it is released for this process too
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_npz_bytes_load_back_exactly_and_depend_on_the_values_alone():
  a = {"W_Q": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.asarray(7)}
  data = io.npz_bytes(a)
  with np.load(__import__("io").BytesIO(data), allow_pickle=False) as f:
    assert set(f.files) == set(a) and all(np.array_equal(f[k], a[k]) and f[k].dtype == a[k].dtype for k in a)
  assert io.npz_bytes(dict(a)) == data
  assert io.npz_bytes({**a, "step": np.asarray(8)}) != data


def test_check_writable_dir_names_the_problem(tmp_path):
  io.check_writable_dir(tmp_path / "new" / "deeper", "--out")  # creatable: fine, and nothing created
  assert not (tmp_path / "new").exists()
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match="--out .* exists and is not a directory"):
    io.check_writable_dir(tmp_path / "f", "--out")
  with pytest.raises(ValueError, match="is not a directory"):
    io.check_writable_dir(tmp_path / "f" / "below", "--out")
  with pytest.raises(ValueError, match="cannot write in /proc"):
    io.check_writable_dir("/proc/lintheory-x", "--out")


def _cached(root, key, calls: list, raise_after=None):
  """An io.cached_dir entry of two files whose values count the builds; load fails on a truncated file."""
  def build(path):
    calls.append(len(calls) + 1)
    io.write_npy(path / "a.npy", np.arange(1000.0) * len(calls))
    if raise_after:
      raise raise_after
    io.write_json(path / "b.json", {"n": len(calls)})
    return float(np.load(path / "a.npy")[1]), len(calls)
  load = lambda path: (float(np.load(path / "a.npy")[1]), io.read_json(path / "b.json")["n"])
  return io.cached_dir(root, key, ("a.npy", "b.json"), build, load)


def test_a_cache_entry_is_found_again_by_an_equal_key_built_anew(tmp_path):
  """The entry's name is digest(key)[:16]; tuples for lists and numpy scalars for numbers make the same key;
  nothing but the entry, its lock and no temporary directory is left."""
  calls = []
  assert _cached(tmp_path, {"seeds": [0, 1], "lr": 0.5}, calls) == (1.0, 1)
  assert _cached(tmp_path, {"lr": np.float64(0.5), "seeds": (np.int64(0), 1)}, calls) == (1.0, 1)
  assert calls == [1]
  name = io.digest({"seeds": [0, 1], "lr": 0.5})[:16]
  assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.lock"]
  assert io.read_json(tmp_path / name / io.MANIFEST)["key"] == {"seeds": [0, 1], "lr": 0.5}
  assert _cached(tmp_path, {"seeds": [0, 2], "lr": 0.5}, calls) == (2.0, 2)  # another key: another entry


@pytest.mark.parametrize("damage", ["missing", "truncated", "same size, other bytes"])
def test_a_cache_entry_with_a_damaged_file_is_a_miss_then_rebuilt(tmp_path, damage):
  calls = []
  _cached(tmp_path, "k", calls)
  f = tmp_path / io.digest("k")[:16] / "b.json"
  if damage == "missing":
    f.unlink()
  elif damage == "truncated":
    f.write_bytes(f.read_bytes()[:3])
  else:
    f.write_bytes(f.read_bytes().replace(b"1", b"7"))
  assert _cached(tmp_path, "k", calls) == (2.0, 2) and calls == [1, 2]
  assert _cached(tmp_path, "k", calls) == (2.0, 2) and calls == [1, 2]  # and the rebuilt entry is a hit


def test_a_build_killed_before_it_finishes_leaves_no_entry_and_is_built_again(tmp_path):
  calls = []
  with pytest.raises(KeyboardInterrupt):
    _cached(tmp_path, "k", calls, raise_after=KeyboardInterrupt())
  name = io.digest("k")[:16]
  assert [p.name for p in tmp_path.iterdir()] == [f"{name}.lock"]
  (tmp_path / f".{name}.x1y2.tmp").mkdir()  # what a SIGKILL during a build leaves
  assert _cached(tmp_path, "k", calls) == (2.0, 2)
  assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.lock"]


def test_an_entry_written_before_manifests_is_a_hit_unless_a_file_is_cut_short(tmp_path):
  """The code before io.cached_dir wrote no manifest: its complete entries are hits (no rebuild), and one it
  left with a file cut short (deep_recipes wrote losses.npy with a plain np.save after params.npz) is rebuilt."""
  calls = []
  _cached(tmp_path, "k", calls)
  entry = tmp_path / io.digest("k")[:16]
  (entry / io.MANIFEST).unlink()
  assert _cached(tmp_path, "k", calls) == (1.0, 1) and calls == [1]
  (entry / io.MANIFEST).write_text("")  # an unreadable manifest is a miss too
  assert _cached(tmp_path, "k", calls) == (2.0, 2)
  (entry / io.MANIFEST).unlink()
  (entry / "a.npy").write_bytes((entry / "a.npy").read_bytes()[:200])
  assert _cached(tmp_path, "k", calls) == (3.0, 3)


def test_deep_recipes_entry_with_losses_cut_short_after_its_params_is_retrained(tmp_path, monkeypatch):
  """The kill between params.npz and losses.npy: the entry is a miss and is trained again, not a failure."""
  from lintheory.studies import deep_recipes as dr
  trained = []

  def fit_own(task, model, c, prof):
    trained.append(1)
    return {"W_Q": np.full((1, 2, 2), len(trained), np.float32)}, np.full((2, 3), float(len(trained)))

  monkeypatch.setattr(dr, "fit_own", fit_own)
  args = (TASK, MODEL, dr.CANDIDATES[next(iter(dr.CANDIDATES))], dr.PROFILES["tiny"].train, str(tmp_path), "L=1")
  p1, l1 = dr.cached_own(*args)
  (entry,) = [p for p in (tmp_path / dr.NAME).iterdir() if p.is_dir()]
  assert sorted(p.name for p in entry.iterdir()) == sorted(["key.json", "params.npz", "losses.npy", io.MANIFEST])
  p2, l2 = dr.cached_own(*args)
  assert len(trained) == 1 and np.array_equal(l1, l2) and np.array_equal(p1["W_Q"], p2["W_Q"])
  (entry / io.MANIFEST).unlink()  # as the code before manifests left it, killed inside np.save
  (entry / "losses.npy").write_bytes((entry / "losses.npy").read_bytes()[:90])
  p3, l3 = dr.cached_own(*args)
  assert len(trained) == 2 and np.all(l3 == 2.0) and np.all(p3["W_Q"] == 2)
