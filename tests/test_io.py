"""Results files and the shared model cache: strict JSON, atomic writes, one training per model."""

import fcntl
import json
import subprocess
import sys

import numpy as np
import pytest

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


def test_cached_fit_trains_once_then_reads_the_cache(tmp_path, monkeypatch):
  p1, l1 = cache.cached_fit(TASK, MODEL, CFG, (0, 1), tmp_path)
  monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("retrained a cached model"))
  p2, l2 = cache.cached_fit(TASK, MODEL, CFG, (0, 1), tmp_path)
  np.testing.assert_array_equal(l1, l2)
  for k in p1:
    np.testing.assert_array_equal(np.asarray(p1[k]), np.asarray(p2[k]))


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
