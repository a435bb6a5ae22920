"""The package's shape: imports point one way, no cycles, lint is clean.

The import graph is read from the source (every `import` statement,
function-level ones included), so a cycle hidden behind a lazy import counts.
"""

import ast
import pathlib
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "gptjax"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
  """Every module of `known` (or top-level package) that `path` imports, anywhere in it."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      top = name.split(".")[0]
      if top in ("configs", "experiments"):
        out.add(top)
      elif name in known:
        out.add(name)
  return out


def import_graph() -> dict[str, set[str]]:
  files = {module_name(p): p for p in PACKAGE.rglob("*.py") if "corpora" not in p.parts}
  known = set(files)
  graph = {m: imported_modules(p, known) - {m} for m, p in files.items()}
  # A package's __init__ importing its own submodules (re-exports) is not a
  # dependency of those submodules on the package.
  for m in graph:
    graph[m] = {
      d for d in graph[m] if not (files[m].name == "__init__.py" and d.startswith(m + "."))
    }
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as a list of modules, or None (iterative DFS, colours)."""
  colour = {m: 0 for m in graph}
  for root in graph:
    if colour[root]:
      continue
    stack = [(root, iter(sorted(graph[root])))]
    path = [root]
    colour[root] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        colour[node] = 2
        stack.pop()
        path.pop()
      elif child in graph and colour[child] == 1:
        return path[path.index(child) :] + [child]
      elif child in graph and colour[child] == 0:
        colour[child] = 1
        stack.append((child, iter(sorted(graph[child]))))
        path.append(child)
  return None


def test_find_cycle_finds_a_planted_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_library_never_imports_configs_or_experiments():
  bad = {
    m: sorted(d & {"configs", "experiments"})
    for m, d in import_graph().items()
    if d & {"configs", "experiments"}
  }
  assert not bad, f"library modules importing configs/ or experiments/: {bad}"


def test_no_import_cycles():
  assert find_cycle(import_graph()) is None


def test_every_subpackage_says_what_lives_there():
  for init in PACKAGE.rglob("__init__.py"):
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc.splitlines()) >= 3, f"{init} needs a docstring that maps its modules"


def test_ruff_lint_and_format_are_clean():
  for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
    proc = subprocess.run(
      [sys.executable, "-m", "ruff", *args, "."], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout[-3000:]}"
