"""Every params section (or key) a stage script reads is declared under its dvc.yaml `params:`, so
changing it reruns the stage (issue 21: `stages/evaluate.py` read `model.slots` undeclared)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from depgraph import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _section(node: ast.AST) -> str | None:
    """`load_section("x")` -> "x"."""
    if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "load_section"
            and node.args and isinstance(node.args[0], ast.Constant)):
        return str(node.args[0].value)
    return None


def _path(node: ast.AST, names: dict[str, str]) -> str | None:
    """The params key an expression stands for: load_section("a").b.c -> "a.b.c", v.c with v bound to "a.b"."""
    if (section := _section(node)) is not None:
        return section
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute) and (base := _path(node.value, names)) is not None:
        return f"{base}.{node.attr}"
    return None


def params_read(script: Path) -> set[str]:
    """The params keys `script` reads: a whole section where a load_section result is used as a
    value, `section.key` where only its attributes are read."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in ast.walk(tree):  # names bound to a params path
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = (zip(target.elts, value.elts, strict=False) if isinstance(target, ast.Tuple)
                     and isinstance(value, ast.Tuple) else [(target, value)])
            for t, v in pairs:
                if isinstance(t, ast.Name) and (p := _path(v, names)) is not None:
                    names[t.id] = p
    read: set[str] = set()
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        path = _path(node, names)
        if path is None or isinstance(parents.get(node), ast.Attribute) and _path(parents[node], names):
            continue  # only the outermost attribute of a chain counts
        parent = parents.get(node)
        if isinstance(node, ast.Attribute) and isinstance(parent, ast.Call) and parent.func is node:
            path = _path(node.value, names) or path  # a method (`.values()`) is not a params key
        if isinstance(parent, ast.Assign) and node is parent.value or isinstance(parent, ast.Tuple) and isinstance(
                parents.get(parent), ast.Assign) and parent is parents[parent].value:
            continue  # a binding, judged by the names' own uses
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            continue
        read.add(path)
    return read


def covered(key: str, declared: set[str]) -> bool:
    return any(key == d or key.startswith(f"{d}.") for d in declared)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_params_cover_what_its_script_reads(stage: str) -> None:
    spec = STAGES[stage]
    script = ROOT / spec["cmd"].split()[1]
    declared = {p if isinstance(p, str) else next(iter(p)) for p in spec.get("params", [])}
    missing = sorted(k for k in params_read(script) if not covered(k, declared))
    assert not missing, f"dvc.yaml stage {stage!r}: params miss what {script.name} reads: {missing}"


def test_the_reader_finds_sections_keys_and_whole_uses(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "a, b = load_section('evaluate'), load_section('serve')\n"
        "m = load_section('model')\n"
        "x = load_section('quantize').providers\n"
        "bt = load_section('augment').back_translation\n"
        "f(a, b.fallback.values(), b.variants[0].model, m.slots.kinds, x, bt.enabled)\n"
    )
    assert params_read(script) == {"evaluate", "serve.fallback", "serve.variants", "model.slots.kinds",
                                   "quantize.providers", "augment.back_translation.enabled"}
