"""No module imports from a layer above its own, and no pipeline stage's library module imports
another stage's (../shared/DESIGN.md, "The house"; issue 21).

Layers, bottom to top: params/io/metrics/knobs < data < runtime < modeling, compress < evaluation,
serving < cli (chat.py with cli; stage scripts sit above them all). Imports are read with `ast`, at
the top of a module and inside functions. What still breaks a rule would be listed in KNOWN with its
reason (today nothing: runtime/ holds decoding, the quality path, tokenising and the backends
evaluate uses); the test fails on any other violation and on a KNOWN entry that no longer is one, so
the list can only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "chatforge"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("params", "io", "metrics", "knobs", "stage"),
    ("data",),
    ("runtime",),
    ("modeling", "compress"),
    ("evaluation", "serving"),
    ("cli", "chat"),
)
# the library home of each pipeline stage (and of `chatforge export`): a stage's modules may import
# each other, never another stage's. onnx_export is the first half of the quantize stage (export,
# then quantize); translate loads the translator the translator stage trains.
STAGE_HOMES: dict[str, tuple[str, ...]] = {
    "base": ("modeling.base",),
    "translator": ("modeling.translator_train", "modeling.translate"),
    "train": ("modeling.train",),
    "kto": ("modeling.preference",),
    "distill": ("modeling.distill",),
    "prune": ("compress.prune",),
    "quantize": ("compress.quantize", "compress.onnx_export"),
    "export": ("compress.gguf_export",),
    "evaluate": ("evaluation.evaluate",),
}
# (importer, imported) -> why it is still there; module names without the `chatforge.` prefix
KNOWN: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    top = module.split(".")[0] if module else "params"  # `chatforge` itself: the package root
    return next(i for i, names in enumerate(LAYERS) if top in names)


def stage_of(module: str) -> str | None:
    return next((stage for stage, homes in STAGE_HOMES.items() if module in homes), None)


def _is_module(name: str) -> bool:
    base = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, module: str) -> set[str]:
    """chatforge modules `path` imports anywhere (top level or in functions), without the prefix;
    `from chatforge.x import y` counts as chatforge.x.y when y is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.removeprefix("chatforge").lstrip(".") for a in node.names if a.name.split(".")[0] == "chatforge")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".") if package else []
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "chatforge":
                base = node.module.removeprefix("chatforge").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.add(sub if _is_module(sub) else base)
    found.discard(module)
    return found


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def violations() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for module, path in modules().items():
        for target in sorted(imports(path, module)):
            if layer_of(target) > layer_of(module):
                found[(module, target)] = f"chatforge.{module} (layer {layer_of(module)}) imports chatforge.{target} (layer {layer_of(target)}, above it)"
            elif (mine := stage_of(module)) and (theirs := stage_of(target)) and mine != theirs:
                found[(module, target)] = f"chatforge.{module} (home of stage {mine}) imports chatforge.{target} (home of stage {theirs})"
            elif module.split(".")[0] == "evaluation" and target.split(".")[0] == "serving":
                found[(module, target)] = f"chatforge.{module} imports chatforge.{target}: a change to serving code must rerun no pipeline stage"
    return found


def test_every_module_is_in_a_layer() -> None:
    unplaced = sorted(m for m in modules() if m and not any(m.split(".")[0] in names for names in LAYERS))
    assert not unplaced, f"modules in no layer of LAYERS (add their folder to it): {unplaced}"


def test_no_import_from_a_higher_layer_or_another_stage() -> None:
    new = {pair: why for pair, why in violations().items() if pair not in KNOWN}
    assert not new, "imports that break the layer order (../shared/DESIGN.md):\n" + "\n".join(
        f"  {why}" for _, why in sorted(new.items()))


def test_the_known_list_only_shrinks() -> None:
    gone = sorted(pair for pair in KNOWN if pair not in violations())
    assert not gone, "KNOWN lists imports that no longer break a rule; remove them: " + ", ".join(
        f"chatforge.{a} -> chatforge.{b}" for a, b in gone)


def test_the_rules_catch_what_they_should(tmp_path: Path) -> None:
    """The reader sees function-level and `from chatforge import x` imports; the rules name both modules."""
    source = tmp_path / "probe.py"
    source.write_text("from chatforge import metrics\n\ndef f():\n    from chatforge.serving.app import x\n    import chatforge.data.lang\n",
                      encoding="utf-8")
    assert imports(source, "runtime.probe") == {"metrics", "serving.app", "data.lang"}
    assert layer_of("serving.app") > layer_of("runtime.probe") > layer_of("data.lang") > layer_of("metrics")
    assert stage_of("compress.onnx_export") == stage_of("compress.quantize") != stage_of("modeling.distill")
