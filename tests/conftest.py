"""Shared fixtures. Tests never touch the network; HF hub access is forced offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.exists():
        pytest.fail(f"{SHARED} is missing: CI must check out ../shared beside the project")
    return SHARED


# ---- tiny models built from a config (issue 5; shared by modeling, compress and serving tests) ----

from tinymodels import write_tiny_causal_lm, write_tiny_classifier


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny causal LM folder (copy it before changing anything inside)."""
    return write_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "causal_lm")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny intent classifier folder (copy it before changing anything inside)."""
    return write_tiny_classifier(tmp_path_factory.mktemp("tiny") / "classifier")


