"""The persistent compilation cache: the same bits with it on or off, and a second process loads
its programs from disk instead of compiling them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lintheory.run import compile_cache

ROOT = Path(__file__).resolve().parents[1]

# One fresh process: a small jitted computation; prints its result's bytes and the cache hits.
SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from lintheory.run import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
if sys.argv[1] != "off":
  compile_cache.enable(sys.argv[1])
f = jax.jit(lambda X: jnp.tanh(X @ X.T / 3.0).sum(0) + jnp.cos(X).prod(1))
X = jnp.linspace(-1.0, 1.0, 24 * 24, dtype=jnp.float32).reshape(24, 24)
y = np.asarray(f(X))
print(json.dumps({"bits": y.tobytes().hex(), "hits": len(hits)}))
"""


def _run(arg: str) -> dict:
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SCRIPT, arg], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_cached_programs_give_the_same_bits_and_the_second_process_hits_the_cache(tmp_path):
  cache = tmp_path / "jax_cache"
  off = _run("off")
  first = _run(str(cache))
  assert off["hits"] == 0 and first["hits"] == 0  # nothing on disk yet: compiled, then written
  assert any(cache.iterdir()), "enable() must write small programs too"
  second = _run(str(cache))
  assert second["hits"] >= 1  # loaded instead of compiled
  assert off["bits"] == first["bits"] == second["bits"]


@pytest.mark.parametrize("t", [-1.0, float("nan"), True, "0"])
def test_enable_rejects_a_bad_min_compile_time(t, tmp_path):
  with pytest.raises(ValueError, match="min_compile_time_s"):
    compile_cache.enable(tmp_path, min_compile_time_s=t)


def test_enable_rejects_a_file_as_directory(tmp_path):
  f = tmp_path / "file"
  f.write_text("")
  with pytest.raises(ValueError, match="dir must be a directory"):
    compile_cache.enable(f)
  assert compile_cache.directory() is None  # nothing was switched on
