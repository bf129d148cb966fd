"""Sharding over seeds and configurations: same numbers on 1 and on 4 devices, error paths.

XLA_FLAGS must be set before JAX starts, so the device-count runs are subprocesses.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from lintheory.run import device_check, sharding

ROOT = Path(__file__).resolve().parents[1]

# The 1-vs-4-device runs of lintheory.run.device_check (the setting is in its docstring; what they
# measured on this machine is docs/scale-out.md's table). Not bit-identical: the partitioned program
# is compiled differently. A wrong seed or configuration order misses the tolerances by far
# ("misplaced" in device_check.compare).
PAD = textwrap.dedent("""
  import numpy as np
  from lintheory.run import device_check, sharding
  mesh = sharding.seed_mesh()
  assert mesh.devices.size == 4
  try:  # a leading size the mesh does not divide: refused, or padded and trimmed
    sharding.shard_leading(np.zeros(5), mesh)
    raise SystemExit("5 rows on 4 devices were not refused")
  except ValueError as e:
    assert "not a multiple" in str(e), e
  x = sharding.shard_leading(np.arange(5.0), mesh, pad=True)
  assert x.shape == (8,) and sharding.is_sharded(x)
  np.testing.assert_array_equal(sharding.gather(x, 5), np.arange(5.0))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One process with 4 forced host devices: a mesh of 1 device (unpartitioned) and one of 4."""
  r = device_check.run(4, "1,4", tmp_path_factory.mktemp("sharding"))
  return device_check.by_mesh(r, 1), device_check.by_mesh(r, 4)


def test_a_leading_size_the_mesh_does_not_divide_is_refused_or_padded():
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  r = subprocess.run([sys.executable, "-c", PAD], env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]


def check_training(one: dict, four: dict, dtype: str) -> None:
  assert sorted(one) == sorted(four)
  for k in ("W_Q", "W_K", "W_V"):
    a = one[f"{dtype}/train/{k}"]
    assert a.shape[0] == 4 and not np.allclose(a[0], a[1])  # four different models
  c = device_check.compare(one, four)[dtype]
  assert c["losses"]["max_ulps"] <= device_check.ULPS
  assert c["params"]["max_rel"] <= device_check.TOLERANCE[dtype]
  assert c["misplaced"]["params_rel"] > 1e3 * device_check.TOLERANCE[dtype]  # so the check can fail


def check_sweep(one: dict, four: dict, dtype: str) -> None:
  for k in ("icl_error", "dW_norm"):
    a = one[f"{dtype}/sweep/{k}"]
    assert a.shape[0] == 8 and len(np.unique(a.round(12))) > 1  # eight different configurations
  c = device_check.compare(one, four)[dtype]
  assert max(c["sweep"].values()) <= device_check.ULPS
  assert c["misplaced"]["icl_error_ulps"] > device_check.ULPS  # two configurations swapped would fail


def test_the_4_device_runs_were_partitioned(runs):
  assert all(runs[1][f"{dt}/{part}/sharded"] for dt in device_check.DTYPES for part in ("train", "sweep"))
  assert not any(runs[0][f"{dt}/{part}/sharded"] for dt in device_check.DTYPES for part in ("train", "sweep"))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_tables_agree_on_1_and_4_devices(runs, dtype):
  check_training(*runs, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sweep_over_configurations_agrees_on_1_and_4_devices(runs, dtype):
  check_sweep(*runs, dtype)


@pytest.mark.slow
def test_processes_with_1_and_4_forced_devices_agree_the_same_way(runs, tmp_path):
  """A 1-device process computes the bits of a 1-device mesh in a 4-device process."""
  one = device_check.by_mesh(device_check.run(1, "1", tmp_path), 1)
  four = device_check.by_mesh(device_check.run(4, "4", tmp_path), 4)
  for k in one:
    np.testing.assert_array_equal(one[k], runs[0][k], err_msg=k)
    np.testing.assert_array_equal(four[k], runs[1][k], err_msg=k)
  for dtype in ("float64", "float32"):
    check_training(one, four, dtype)
    check_sweep(one, four, dtype)


def test_seed_mesh_takes_the_most_devices_that_divide():
  devs = jax.devices()[:1] * 4  # the arithmetic only; this process has one CPU device
  assert sharding.seed_mesh(6, devices=devs).devices.size == 3
  assert sharding.seed_mesh(8, devices=devs).devices.size == 4
  assert sharding.seed_mesh(5, devices=devs).devices.size == 1
  assert sharding.seed_mesh(devices=devs).devices.size == 4
  assert sharding.seed_mesh().axis_names == ("seed",)


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_seed_mesh_rejects_a_bad_leading_size(n):
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    sharding.seed_mesh(n)


def test_one_device_is_a_no_op_and_gather_trims():
  tree = {"a": np.arange(6.0).reshape(3, 2), "step": 5}
  assert sharding.shard_leading(tree, sharding.seed_mesh()) is tree
  padded, n = sharding.pad_leading(tree, 4)
  assert n == 3 and padded["a"].shape == (4, 2) and padded["step"] == 5
  np.testing.assert_array_equal(padded["a"][3], tree["a"][2])  # copies of the last row
  back = sharding.gather(padded, n)
  np.testing.assert_array_equal(back["a"], tree["a"])
  keys = sharding.gather(jax.random.split(jax.random.key(0), 3))
  assert isinstance(keys, np.ndarray) and keys.shape[0] == 3


def test_mismatched_leading_sizes_are_refused():
  with pytest.raises(ValueError, match="one leading size"):
    sharding.leading_size({"a": np.zeros((3, 2)), "b": np.zeros((4,))})


def synthetic_runs(rng) -> tuple[dict, dict]:
  """Arrays shaped like device_check.worker's, for the same setting on two meshes."""
  one = {}
  for dt in device_check.DTYPES:
    one[f"{dt}/train/losses"] = rng.uniform(0.1, 2.0, (4, 20)).astype(dt)
    one.update({f"{dt}/train/{n}": rng.standard_normal((4, 2, 4, 4)).astype(dt) for n in ("W_Q", "W_K", "W_V")})
    one[f"{dt}/sweep/icl_error"] = rng.uniform(0.5, 1.5, 8).astype(dt)
    one[f"{dt}/sweep/dW_norm"] = rng.uniform(0.5, 1.5, (8, 2)).astype(dt)
    one[f"{dt}/train/sharded"] = one[f"{dt}/sweep/sharded"] = np.asarray(True)
  return one, {k: v.copy() for k, v in one.items()}


def test_compare_counts_ulps_and_relative_differences_and_the_report_prints_them(tmp_path):
  from lintheory import report
  from lintheory.run import io
  one, many = synthetic_runs(np.random.default_rng(0))
  losses = many["float32/train/losses"]
  losses[1, 3] = np.nextafter(losses[1, 3], np.float32(np.inf))
  losses[2, 5] = np.nextafter(np.nextafter(losses[2, 5], np.float32(0)), np.float32(0))
  for W in (one["float64/train/W_K"], many["float64/train/W_K"]):  # model 2: largest |w| 1, one entry 0.75
    W[2] /= np.abs(W[2]).max()
    W[2, 1, 0, 0] = 0.75
  many["float64/train/W_K"][2, 1, 0, 0] += 2.0**-46  # exact: the ulp of 0.75 is 2^-53
  c = device_check.compare(one, many)
  assert c["float32"]["losses"] == {"n": 80, "differ": 2, "max_ulps": 2.0}
  assert c["float64"]["losses"]["max_ulps"] == 0 and c["float32"]["params"]["max_rel"] == 0
  assert c["float64"]["params"]["max_rel"] == 2.0**-46
  assert c["float64"]["params"]["share_differ"] == [0.0, 1 / 128, 0.0]
  assert device_check.within_tolerance(c)
  many["float64/sweep/dW_norm"] = many["float64/sweep/dW_norm"] * (1 + 1e-12)
  assert not device_check.within_tolerance(device_check.compare(one, many))
  res = tmp_path / "results"
  io.write_json(res / "device_check.json", {"devices": 4, "seeds": 4, "configurations": 8, "compare": c,
                                            "tolerance": {"params_rel": device_check.TOLERANCE, "ulps": 2},
                                            "within_tolerance": True, "cpu": {"model": "a CPU", "avx512": False},
                                            "provenance": {"machine": "m", "versions": {"jax": "1", "jaxlib": "2"}}})
  md = report.device_check_table(res)
  rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in md.splitlines() if line.startswith("| ")}
  assert rows["training losses"] == ["bit-identical", "2 of 80 differ, by ≤ 2 ulp |"]
  assert rows["trained W_Q, W_K, W_V after 20 steps"][0].startswith("≤ 1.42·10^-14 relative (0%–1% of entries")
  assert "on 1 device against 4 forced host devices (a CPU; jax 1, jaxlib 2)" in md and "here: yes." in md
  io.write_json(res / "device_check.json", {"devices": 4})
  with pytest.raises(ValueError, match="device_check.json is not a record of `lintheory.run.device_check`"):
    report.device_check_table(res)
  assert "Not measured here" in report.device_check_table(tmp_path)


def test_device_check_refuses_a_device_count_the_setting_cannot_split(capsys):
  with pytest.raises(SystemExit) as e:
    device_check.main(["--devices", "3"])
  assert e.value.code == 2 and "--devices" in capsys.readouterr().err
