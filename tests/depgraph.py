"""The chatforge modules a stage script imports, transitively (what its dvc.yaml deps must list)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """chatforge modules imported anywhere in the file (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("chatforge"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chatforge") and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from chatforge import metrics`
    return found


def import_closure(script: Path) -> set[str]:
    """Paths (relative to the repo root) of every chatforge module `script` imports, transitively;
    package __init__ files that are empty are left out."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in _imports(todo.pop()):
            f = _module_file(name)
            if f is not None and f not in seen:
                seen.add(f)
                todo.append(f)
    return {str(f.relative_to(ROOT)) for f in seen if f.name != "__init__.py" or f.read_text(encoding="utf-8").strip()}
