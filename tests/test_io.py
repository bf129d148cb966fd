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
