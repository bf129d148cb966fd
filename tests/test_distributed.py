"""Seeds split over two local processes (jax.distributed over 127.0.0.1): one table, same bits."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lintheory.run import distributed
from lintheory.run.distributed import Cluster

ROOT = Path(__file__).resolve().parents[1]
JOB = ["--", "lintheory.run.distributed:train_rows", "steps=20", "chunk=10"]  # d=3, N=5, L=2


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_write_the_single_process_table(tmp_path):
  """Three seeds on two processes (blocks of 2 and 1): process 0's CSV has the single process's rows in the
  same order, its numbers equal to float32 round-off. (Byte identity held with the plain attention
  path; the Gram-matrix training path rounds differently when a vmap holds 2 seeds instead of 3.)"""
  port, out = free_port(), tmp_path / "multi.csv"
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one device per process
  procs = [subprocess.Popen([sys.executable, "-m", "lintheory.run.distributed", "--coordinator",
                             f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                             "--seeds", "0-2", "--out", str(out), *JOB],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=10)
  assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-2000:] for l in logs)
  meta = distributed.io.read_json(out.with_suffix(".json"))
  assert meta["num_processes"] == 2 and meta["devices"] == 2 and meta["rows"] == 60

  single = tmp_path / "single.csv"
  assert distributed.main(["--seeds", "0-2", "--out", str(single), *JOB]) == 0
  a, b = out.read_text().splitlines(), single.read_text().splitlines()
  assert a[0] == b[0] and len(a) == len(b)
  ka = [l.split(",")[:2] for l in a[1:]]
  assert ka == [l.split(",")[:2] for l in b[1:]]  # the same seeds and steps, in the same order
  num = lambda rows: np.array([[float(x) if x else np.nan for x in l.split(",")[2:]] for l in rows[1:]])
  va, vb = num(a), num(b)
  np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-7, equal_nan=True)
  lines = a
  assert [l.split(",")[0] for l in lines[1::20]] == ["0", "1", "2"]  # seed order kept
  losses = np.array([float(l.split(",")[2]) for l in lines[1:]]).reshape(3, 20)
  assert len({tuple(r) for r in losses}) == 3  # three different models


@pytest.mark.parametrize("n, P", [(1, 1), (3, 2), (7, 3), (8, 4), (5, 5)])
def test_blocks_cover_the_seeds_in_order(n, P):
  seeds = tuple(range(10, 10 + n))
  blocks = [distributed.block_of(seeds, i, P) for i in range(P)]
  assert sum(blocks, ()) == seeds
  assert max(map(len, blocks)) - min(map(len, blocks)) <= 1 and min(map(len, blocks)) >= 1


def test_more_processes_than_seeds_is_refused():
  with pytest.raises(ValueError, match="at least as many as the processes"):
    distributed.block_of((0, 1), 0, 3)


def test_single_process_gathers_itself():
  assert distributed.allgather_objects({"a": 1}) == [{"a": 1}]
  assert distributed.run_sharded(lambda b: [{"seed": s} for s in b], (3, 4), distributed.SINGLE) \
      == [{"seed": 3}, {"seed": 4}]


@pytest.mark.parametrize("kwargs, match", [
    (dict(coordinator="", num_processes=2, process_id=0), "coordinator"),
    (dict(coordinator="host", num_processes=2, process_id=0), "coordinator"),
    (dict(coordinator="h:1", num_processes=0, process_id=0), "num_processes"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), r"process_id must be in \[0, 1\]"),
    (dict(coordinator="h:1", num_processes=2, process_id=-1), "process_id"),
])
def test_invalid_cluster(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Cluster(**kwargs)


def test_cluster_from_env():
  assert distributed.from_env({}) == distributed.SINGLE
  env = dict(zip(distributed.ENV, ("10.0.0.1:4000", "4", "3")))
  assert distributed.from_env(env) == Cluster("10.0.0.1:4000", 4, 3)
  with pytest.raises(ValueError, match="set all of"):
    distributed.from_env({distributed.ENV[0]: "h:1"})
  with pytest.raises(ValueError, match="must be integers"):
    distributed.from_env({**env, distributed.ENV[1]: "four"})


def test_argument_parsing():
  assert distributed.parse_seeds("0-3,7") == (0, 1, 2, 3, 7)
  assert distributed.parse_kwargs(["steps=20", "lr=1e-2", "dtype=float64"]) == \
      {"steps": 20, "lr": 0.01, "dtype": "float64"}
  assert distributed.resolve("lintheory.run.distributed:train_rows") is distributed.train_rows
  for bad, fn in (("0-x", distributed.parse_seeds), (["steps"], distributed.parse_kwargs),
                  ("lintheory.run.distributed", distributed.resolve),
                  ("lintheory.run.distributed:nothing", distributed.resolve)):
    with pytest.raises(ValueError):
      fn(bad)


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
  out = tmp_path / "t.csv"
  assert distributed.main(["--num-processes", "2", "--out", str(out), "--", "m:f"]) == 2
  assert "coordinator" in capsys.readouterr().err
  assert distributed.main(["--seeds", "a", "--out", str(out), "--", "lintheory.run.distributed:train_rows"]) == 2
  assert not out.exists()


def test_a_nan_row_is_refused_and_nothing_written(tmp_path):
  out = tmp_path / "t.csv"
  with pytest.raises(ValueError, match="non-finite"):
    distributed.write_table(out, [{"seed": 0, "loss": 1.0}, {"seed": 1, "loss": float("nan")}], {})
  assert not out.exists() and not out.with_suffix(".json").exists()
  distributed.write_table(out, [{"seed": 0, "loss": 0.1 + 0.2}], {})
  assert out.read_text() == "seed,loss\n0,0.30000000000000004\n"  # every bit of the float
