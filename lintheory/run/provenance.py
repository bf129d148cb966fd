"""What produced a result: package and dependency versions, git commit, machine and device.

`collect()` only reads (versions, `git rev-parse`, the JAX backend); run directories record it as
provenance.json and results files can embed it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("lintheory", "jax", "jaxlib", "flax", "optax", "numpy", "scipy")
_ROOT = Path(__file__).resolve().parents[2]  # the source tree holding the package


def _version(name: str) -> str | None:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def _git(*args: str) -> str:
  out = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=10, check=True)
  return out.stdout.strip()


OUTPUTS = ("results", "figures", "docs/report.md")  # written by `make figures`, committed beside the code


def git_state() -> dict:
  """{"commit", "dirty"} of the source tree, or {"commit": None, "error": why} without git."""
  if not (_ROOT / "pyproject.toml").exists():  # an installed copy: no source tree to ask
    return {"commit": None, "dirty": None, "error": f"not run from a source checkout ({_ROOT})"}
  try:
    commit = _git("rev-parse", "HEAD")
    # dirty means the source differs from the commit; the studies' own outputs do not count
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in OUTPUTS)))
  except FileNotFoundError:
    return {"commit": None, "dirty": None, "error": "git is not installed"}
  except subprocess.CalledProcessError as e:
    why = (e.stderr or "").strip().splitlines()
    return {"commit": None, "dirty": None, "error": f"not a git checkout ({why[0] if why else e})"}
  except (OSError, subprocess.TimeoutExpired) as e:
    return {"commit": None, "dirty": None, "error": f"git failed: {e}"}
  return {"commit": commit, "dirty": dirty}


def device_info() -> dict:
  import jax
  try:
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "x64": bool(jax.config.jax_enable_x64)}
  except RuntimeError as e:  # no usable backend: say so rather than fail the run
    return {"backend": None, "device_kind": None, "error": str(e), "x64": bool(jax.config.jax_enable_x64)}


def collect() -> dict:
  """Versions (None = not installed), git commit + dirty flag, Python, platform, device kind, x64."""
  return {"versions": {name: _version(name) for name in PACKAGES}, "git": git_state(),
          "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
          "cpu_count": os.cpu_count(), "load_avg": load_avg(), "device": device_info()}


def load_avg() -> list[float] | None:
  """The 1-, 5- and 15-minute load averages: timings mean little without the machine's load."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None
