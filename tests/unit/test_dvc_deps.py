"""Every stage's deps in dvc.yaml cover the chatforge modules its script imports, transitively, so a
code change reruns each stage it can affect (DESIGN.md, contracts between stages)."""

from __future__ import annotations

import pytest
import yaml
from depgraph import ROOT, import_closure

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_import_closure(stage: str) -> None:
    spec = STAGES[stage]
    script = ROOT / spec["cmd"].split()[1]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])}
    closure = import_closure(script)
    missing = sorted(closure - deps)
    assert not missing, f"dvc.yaml stage {stage!r}: deps miss chatforge modules its script imports: {missing}"
    # and no more: a change to a module the stage never imports cannot alter its output
    extra = sorted(d for d in deps if d.startswith("src/chatforge/") and d not in closure)
    assert not extra, f"dvc.yaml stage {stage!r}: deps list chatforge modules its script never imports: {extra}"
