"""The exit-code rule, written once (chatforge.io): every stage script exits EXIT_BAD_INPUT (2) for
wrong params or inputs and EXIT_FAILED (1) for a failed gate; no script spells a literal code.
Behaviour per stage is asserted by each stage's own tests (e.g. a missing ingest source -> 2, an
evaluate gate -> 1)."""

import ast
from pathlib import Path

from chatforge.io import EXIT_BAD_INPUT, EXIT_FAILED

STAGES = Path(__file__).resolve().parents[2] / "stages"


def exits(path: Path) -> list[tuple[int, str]]:
    """(line, the argument as written) of every typer.Exit(...) and sys.exit(...) call."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                (node.func.attr == "Exit" and getattr(node.func.value, "id", "") == "typer")
                or (node.func.attr == "exit" and getattr(node.func.value, "id", "") == "sys")):
            args = [*node.args, *(k.value for k in node.keywords)]
            out.append((node.lineno, ast.unparse(args[0]) if args else ""))
    return out


def test_the_rule_is_two_codes():
    assert (EXIT_BAD_INPUT, EXIT_FAILED) == (2, 1)


def test_no_stage_script_spells_a_literal_exit_code():
    literal = [(p.name, line, arg) for p in sorted(STAGES.glob("*.py")) for line, arg in exits(p)
               if arg not in ("EXIT_BAD_INPUT", "EXIT_FAILED", "subprocess.call(cmd)")]
    assert not literal, f"stage scripts exit with a literal code; use chatforge.io.EXIT_BAD_INPUT / EXIT_FAILED: {literal}"
    assert sum(len(exits(p)) for p in STAGES.glob("*.py")) >= 25  # the scan sees the stages' exits
