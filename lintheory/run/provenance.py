"""What produced a result: package and dependency versions, git commit, machine and device; the code.

`collect()` only reads (versions, `git rev-parse`, the JAX backend); run directories record it as
provenance.json and results files can embed it. `code_identity(module, roots, skip)` digests the source
of a module and of the lintheory modules it imports, read from the package's own files (no git needed).
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("lintheory", "jax", "jaxlib", "flax", "optax", "numpy", "scipy")
_ROOT = Path(__file__).resolve().parents[2]  # the source tree holding the package
_PACKAGE = Path(__file__).resolve().parents[1]  # lintheory/, wherever it is installed


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


# --- the identity of the code a result depends on ----------------------------------------------


def module_file(name: str) -> Path | None:
  """The source file of a lintheory module, from the package's own files (None: no such module)."""
  base = _PACKAGE.joinpath(*name.split(".")[1:])
  for path in (base / "__init__.py", base.with_suffix(".py")):
    if path.is_file():
      return path
  return None


def _imported(nodes, module: str, used: set[str] | None = None) -> set[str]:
  """The lintheory modules these statements import, anywhere inside them; `from P import x` counts as the
  submodule P.x when there is one, else as P (the rule of tests/test_architecture.py). With `used`, an
  import at the top of the list counts only where the name it binds is in `used`."""
  out = set()
  for top in nodes:
    for node in ast.walk(top):
      if isinstance(node, ast.Import):
        out.update(a.name for a in node.names if a.name.split(".")[0] == "lintheory"
                   and (used is None or node is not top or (a.asname or a.name.split(".")[0]) in used))
      elif isinstance(node, ast.ImportFrom):
        base = _absolute(node, module)
        if base.split(".")[0] == "lintheory":
          out.update(f"{base}.{a.name}" if module_file(f"{base}.{a.name}") else base for a in node.names
                     if used is None or node is not top or (a.asname or a.name) in used)
  return out


def _absolute(node: ast.ImportFrom, module: str) -> str:
  """The module an import-from names, a relative one counted from the importing module's package."""
  if not node.level:
    return node.module or ""
  pkg = module.split(".") if module_file(module).name == "__init__.py" else module.split(".")[:-1]
  return ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))


def _reached(tree: ast.Module, roots: tuple[str, ...]) -> list[ast.stmt]:
  """The module's statements that its roots can reach: every top-level statement except the functions and
  classes that neither a root, nor module-level code, nor a function or class so reached names."""
  defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
  names = lambda nodes: {n.id for top in nodes for n in ast.walk(top) if isinstance(n, ast.Name) and n.id in defs}
  todo = set(roots) & set(defs) | names(n for n in tree.body if n not in defs.values())
  kept: set[str] = set()
  while todo:
    name = todo.pop()
    kept.add(name)
    todo |= names([defs[name]]) - kept
  return [n for n in tree.body if n not in defs.values() or n.name in kept]


def _segment(lines: list[str], node: ast.stmt) -> str:
  first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())])
  return "\n".join(lines[first - 1:node.end_lineno])


def code_identity(module: str, roots: tuple[str, ...], skip: frozenset[str] = frozenset(),
                  partial: frozenset[str] = frozenset()) -> dict:
  """{"digest", "files": {path: sha256[:16]}}: the source of `module` and of every lintheory module it
  imports, transitively, except those in `skip` (not followed further). Of `module` itself only what
  `roots` can reach counts (_reached), and only the modules that part names (imports inside it, or names
  it uses from the module's top-level imports). A module in `partial` (another study) imported by such
  a part is followed the same way, from the names the part uses (any attribute or name it mentions: a
  superset, so never too little). Every other module counts whole, byte for byte, with all it imports.
  Static: a module loaded by importlib is not followed. Read from the package's files, so it works from
  an installed copy and without git."""
  files, todo, seen = {}, [(module, tuple(roots))], set()
  while todo:
    name, from_roots = todo.pop()
    path = module_file(name)
    if name in seen or name in skip or path is None:
      continue
    seen.add(name)
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    if from_roots is not None:
      nodes = _reached(tree, from_roots)
      used = {n.id for top in nodes for n in ast.walk(top) if isinstance(n, ast.Name)}
      mentioned = tuple(sorted(used | {n.attr for top in nodes for n in ast.walk(top) if isinstance(n, ast.Attribute)}))
      source = "\n".join(_segment(source.splitlines(), n) for n in nodes)
      todo += [(m, mentioned if m in partial else None)
               for m in sorted(_imported(nodes, name, used) - seen)]
    else:
      todo += [(m, None) for m in sorted(_imported(tree.body, name) - seen)]
    files[path.relative_to(_PACKAGE.parent).as_posix()] = hashlib.sha256(source.encode()).hexdigest()[:16]
  listing = "".join(f"{p} {h}\n" for p, h in sorted(files.items()))
  return {"digest": hashlib.sha256(listing.encode()).hexdigest()[:16], "files": dict(sorted(files.items()))}
