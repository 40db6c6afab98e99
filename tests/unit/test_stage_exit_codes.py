"""The exit-code rule, written once (chatforge.io's codes, chatforge.stage's helpers): every stage
script exits EXIT_BAD_INPUT (2) for wrong params or inputs (stage.bad_input, stage.require) and
EXIT_FAILED (1) for a failed gate (stage.fail); no script spells a literal code. Behaviour per stage
is asserted by each stage's own tests (e.g. a missing ingest source -> 2, an evaluate gate -> 1)."""

import ast
from pathlib import Path

from chatforge.io import EXIT_BAD_INPUT, EXIT_FAILED

STAGES = Path(__file__).resolve().parents[2] / "stages"
PLUMBING = Path(__file__).resolve().parents[2] / "src" / "chatforge" / "stage.py"
HELPERS = ("bad_input", "fail", "require")  # chatforge.stage's exits: 2, 1, 2


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


def helper_calls(path: Path) -> list[tuple[int, str]]:
    """(line, helper) of every stage.bad_input / stage.fail / stage.require call."""
    return [(node.lineno, node.func.attr) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in HELPERS
            and getattr(node.func.value, "id", "") == "stage"]


def test_the_rule_is_two_codes():
    assert (EXIT_BAD_INPUT, EXIT_FAILED) == (2, 1)


def test_no_stage_script_spells_a_literal_exit_code():
    literal = [(p.name, line, arg) for p in [*sorted(STAGES.glob("*.py")), PLUMBING] for line, arg in exits(p)
               if arg not in ("EXIT_BAD_INPUT", "EXIT_FAILED", "subprocess.call(cmd)")]
    assert not literal, f"stage scripts exit with a literal code; use chatforge.io.EXIT_BAD_INPUT / EXIT_FAILED: {literal}"
    # the plumbing holds both codes, and the scan sees the stages' exits (through the helpers)
    assert {arg for _, arg in exits(PLUMBING)} == {"EXIT_BAD_INPUT", "EXIT_FAILED"}
    assert sum(len(exits(p)) + len(helper_calls(p)) for p in STAGES.glob("*.py")) >= 25


def test_stage_scripts_exit_through_the_plumbing():
    """A stage script calls typer.Exit / sys.exit only to pass on a relaunched run's own code (train
    under accelerate); every other exit is chatforge.stage's, so the message and code are alike."""
    direct = [(p.name, line, arg) for p in sorted(STAGES.glob("*.py")) for line, arg in exits(p)
              if arg != "subprocess.call(cmd)"]
    assert not direct, f"use chatforge.stage.bad_input / fail / require instead of exiting by hand: {direct}"
