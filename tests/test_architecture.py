"""The floors of the package: core ← run ← studies ← faces; imports point one way, no cycles."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lintheory"
FLOOR = {"core": 0, "run": 1, "studies": 2}  # anything else under lintheory/ is a face (3)
FACES_ON_CORE = {"lintheory.checks"}  # importable by researchers' tests: core only at import time
# ... and these inside a function only (a check given a run directory's path loads it)
LAZY_FOR_FACES_ON_CORE = {"lintheory.run.rundir"}
VIEWS = "lintheory.studies.views"  # a study's figures and report text: on the studies' floor, above every study


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module_level_only: bool = False) -> set[str]:
  """Every lintheory module a file imports, at module level or (unless module_level_only) inside functions."""
  out = set()
  tree = ast.parse(path.read_text())
  for node in (tree.body if module_level_only else ast.walk(tree)):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lintheory"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        base = ROOT.parent / full.replace(".", "/")
        out.add(full if base.with_suffix(".py").exists() or (base / "__init__.py").exists() else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("lintheory"))
  return out


def floor(mod: str) -> int:
  parts = mod.split(".")
  return FLOOR.get(parts[1], 3) if len(parts) > 1 else 3


GRAPH = {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


@pytest.mark.parametrize("mod", sorted(GRAPH))
def test_imports_point_down(mod):
  up = sorted(m for m in GRAPH[mod] if floor(m) > floor(mod))
  assert not up, f"{mod} (floor {floor(mod)}) imports from a higher floor: {up}"


def test_core_has_no_io_or_optimiser():
  banned = {"optax", "os", "pathlib", "json", "csv", "matplotlib", "sys"}
  for path in (ROOT / "core").rglob("*.py"):
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & banned, f"{path.name} imports {sorted(names & banned)}"


def test_checks_need_only_core():
  for mod in FACES_ON_CORE:
    path = ROOT.parent / (mod.replace(".", "/") + ".py")
    assert all(floor(m) == 0 for m in imports_of(path, module_level_only=True)), sorted(GRAPH[mod])
    assert all(floor(m) == 0 or m in LAZY_FOR_FACES_ON_CORE for m in GRAPH[mod]), sorted(GRAPH[mod])


def is_view(mod: str) -> bool:
  return mod == VIEWS or mod.startswith(VIEWS + ".")


def test_no_study_imports_a_view():
  """A view imports its study (for the helpers its claims use), never the reverse: what a study's rows depend on
  (freshness.code_of follows imports) holds no figure or wording."""
  for mod, deps in GRAPH.items():
    if mod.startswith("lintheory.studies") and not is_view(mod):
      assert not sorted(filter(is_view, deps)), f"{mod} imports a view: {sorted(filter(is_view, deps))}"


def test_every_study_has_a_view_and_keeps_no_presentation_of_its_own():
  from lintheory import studies
  for name in studies.STUDIES:
    view = ROOT / "studies" / "views" / f"{name}.py"
    assert view.exists(), f"{name} has no view {view.name}"
    study_defs = {n.name for n in ast.parse((ROOT / "studies" / f"{name}.py").read_text()).body
                  if isinstance(n, ast.FunctionDef)}
    view_defs = {n.name for n in ast.parse(view.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert {"plot", "report", "summary"} <= view_defs - study_defs, name


def test_no_import_cycle():
  state: dict[str, int] = {}

  def visit(m, stack):
    state[m] = 1
    for n in sorted(GRAPH.get(m, ())):
      if state.get(n) == 1:
        raise AssertionError("import cycle: " + " → ".join(stack[stack.index(n):] + [n]))
      if n in GRAPH and not state.get(n):
        visit(n, stack + [n])
    state[m] = 2

  for m in sorted(GRAPH):
    if not state.get(m):
      visit(m, [m])


def test_the_cycle_detector_fails_on_a_cycle(monkeypatch):
  monkeypatch.setitem(GRAPH, "lintheory.core.tasks", GRAPH["lintheory.core.tasks"] | {"lintheory.core.model"})
  monkeypatch.setitem(GRAPH, "lintheory.core.model", GRAPH["lintheory.core.model"] | {"lintheory.core.tasks"})
  with pytest.raises(AssertionError, match="import cycle"):
    test_no_import_cycle()


def test_every_cited_theory_section_exists():
  import re
  doc = (ROOT.parent / "docs" / "theory.md").read_text()
  sections = set(re.findall(r"^## (\d+)\.", doc, flags=re.M))
  cited = set()
  for path in list(ROOT.rglob("*.py")) + [ROOT.parent / "README.md"]:
    for group in re.findall(r"docs/theory\.md (§[\d§,–\- ]+)", path.read_text()):
      for a, b in re.findall(r"(\d+)(?:[–-](\d+))?", group):
        cited.update(str(n) for n in range(int(a), int(b or a) + 1))
  assert cited, "no citations found: the pattern is wrong"
  assert cited <= sections, f"cited sections missing from docs/theory.md: {sorted(cited - sections, key=int)}"
