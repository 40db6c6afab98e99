"""Fixtures for pipeline tests: a throw-away copy of the project where the real `dvc repro` runs.

`make_project()` copies what git would ship (tracked plus untracked-not-ignored files, minus
DVC outputs and state), puts tests/profiles/tiny.yaml in place of params.yaml, and makes the copy
its own git + DVC repository. The returned Project runs dvc there with this virtual environment's
python first on PATH and the copy's own `src/` first on PYTHONPATH, and reports which stages a
`dvc repro` ran (parsed from dvc's "Running stage 'x'" lines).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

BIN = Path(sys.executable).parent  # the venv running pytest has dvc and the project installed
TIMEOUT_S = 600

_RAN = re.compile(r"Running stage '([^']+)'")
_CACHED = re.compile(r"Stage '([^']+)' is cached - skipping run")
_UNCHANGED = re.compile(r"Stage '([^']+)' didn't change, skipping")


@dataclass(frozen=True)
class Repro:
    """What one `dvc repro` did, in dvc's order."""

    ran: list[str]  # commands executed
    restored: list[str]  # outputs restored from DVC's run-cache (same inputs seen before)
    unchanged: list[str]
    output: str

    @property
    def reproduced(self) -> list[str]:
        """Stages dvc found changed, whether it ran them or restored them from the run-cache."""
        return self.ran + self.restored


@dataclass
class Project:
    root: Path
    env: dict[str, str] = field(repr=False)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "dvc"), *args], cwd=self.root, env=self.env, check=False, capture_output=True,
            text=True, timeout=TIMEOUT_S,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def repro(self, *targets: str) -> Repro:
        done = self.run("repro", *targets)
        text = done.stdout + done.stderr
        return Repro(_RAN.findall(text), _CACHED.findall(text), _UNCHANGED.findall(text), text)

    def status(self, *targets: str) -> dict[str, Any]:
        """`dvc status --with-deps --json` for the targets: {stage: [what changed]} for changed stages."""
        out = self.run("status", "--with-deps", "--json", *targets).stdout
        return json.loads(out or "{}")

    def set_param(self, dotted: str, value: Any) -> None:
        path = self.root / "params.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        *parents, key = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def param(self, dotted: str, default: Any = None) -> Any:
        node: Any = yaml.safe_load((self.root / "params.yaml").read_text(encoding="utf-8"))
        for p in dotted.split("."):
            if not isinstance(node, dict) or p not in node:
                return default
            node = node[p]
        return node

    def digest(self, relative: str) -> str:
        """sha256 of a file, or of every file in a folder (names and bytes)."""
        path = self.root / relative
        h = hashlib.sha256()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise AssertionError(f"{relative}: no output in {self.root}")
        for f in files:
            h.update(str(f.relative_to(self.root)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()


def _dvc_outputs(dvc_yaml: Path) -> set[str]:
    """Every path a stage writes (outs, metrics, plots), so stale local outputs are not copied."""
    spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}
    paths: set[str] = set()
    for stage in (spec.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                paths.update([entry] if isinstance(entry, str) else list(entry))
    return {p.rstrip("/") for p in paths}


def _shipped_files(root: Path) -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
            check=True, timeout=60,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"pipeline tests copy the project with `git ls-files`; {root} is not a git checkout ({exc})")
    outputs = _dvc_outputs(root / "dvc.yaml")

    def shipped(rel: str) -> bool:
        if rel == "dvc.lock" or rel.startswith("models/"):
            return False
        if rel.startswith(".dvc/") and not rel.startswith(".dvc/plots/"):
            return False  # config and state come from `dvc init`; custom plot templates are project files
        return not any(rel == o or rel.startswith(o + "/") for o in outputs)

    return sorted(rel for rel in listed.split("\0") if rel and shipped(rel) and (root / rel).is_file())


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=chatforge tests", "-c", "user.email=tests@chatforge.invalid",
         "-c", "commit.gpgsign=false", *args],
        cwd=cwd, check=True, capture_output=True, timeout=120,
    )


@pytest.fixture(scope="session")
def make_project(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Project]:
    """A factory of fresh project copies (each its own git + DVC repository, tiny params)."""
    files = _shipped_files(repo_root)
    profile = repo_root / "tests" / "profiles" / "tiny.yaml"

    def make() -> Project:
        root = tmp_path_factory.mktemp("project")
        for rel in files:
            if rel.startswith(".dvc/"):
                continue
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / rel, root / rel)
        shutil.copy2(profile, root / "params.yaml")
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(root / "src"),  # the copy's library, not the editable install's
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(root.parent / f"{root.name}-dvc-site"),
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        project = Project(root, env)
        _git(root, "init", "-q")
        project.run("init", "-q")
        project.run("config", "core.analytics", "false")
        for rel in files:
            if rel.startswith(".dvc/plots/"):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(repo_root / rel, root / rel)
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "project copy for pipeline tests")
        return project

    return make


@pytest.fixture
def project(make_project: Callable[[], Project]) -> Project:
    """One fresh project copy with the tiny params profile."""
    return make_project()
