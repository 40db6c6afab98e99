"""pyproject.toml declares what the code imports, and nothing else (deptry, configured in [tool.deptry]).

Two runs, because deptry has no notion of "tests may use the test extra, the library may not":
- the code and the tests together, the test extra counted as ordinary dependencies: every import is
  declared (DEP001), none only arrives through another package (DEP003), nothing declared goes unused
  (DEP002);
- the code alone (src, stages, bench, scripts), the test extra counted as development-only: no main
  dependency is used only by the tests (DEP002), and the code imports nothing from the test extra (DEP004).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = ("src", "stages", "bench", "scripts")


def _first_party() -> list[str]:
    """[tool.deptry] known_first_party plus the test helpers importable through pytest's pythonpath
    (tests/unit/modeling/trainkit.py is imported as `trainkit`), which deptry cannot see as local."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = set(config["tool"]["deptry"]["known_first_party"])
    for folder in config["tool"]["pytest"]["ini_options"]["pythonpath"]:
        for entry in (ROOT / folder).iterdir():
            if entry.suffix == ".py" or (entry / "__init__.py").exists():
                names.add(entry.stem)
    return sorted(names)


def _deptry(*args: str) -> subprocess.CompletedProcess[str]:
    # --known-first-party replaces the configured list, so _first_party() repeats it
    first_party = [arg for name in _first_party() for arg in ("--known-first-party", name)]
    command = [sys.executable, "-m", "deptry", "--no-ansi", *first_party, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize(
    ("roots", "options"),
    [
        pytest.param((*CODE, "tests"), (), id="code-and-tests"),
        pytest.param(CODE, ("--optional-dependencies-dev-groups", "test"), id="code-without-test-extra"),
    ],
)
def test_declared_dependencies_match_imports(roots: tuple[str, ...], options: tuple[str, ...]) -> None:
    done = _deptry(*roots, *options)
    assert "No module named deptry" not in done.stderr, "deptry is missing: pip install -c constraints.txt -e '.[test]'"
    report = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, f"deptry {' '.join((*roots, *options))} found dependency issues:\n{report}"
