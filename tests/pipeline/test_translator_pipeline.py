"""The translator and augment stages under the real `dvc repro` (tiny profile).

Changing augment knobs must not retrain the translator; changing translator knobs must.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl
import pytest

if TYPE_CHECKING:
    from tests.pipeline.conftest import Project

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def built(make_project: Callable[[], Project]) -> tuple[Project, list[str]]:
    project = make_project()
    return project, project.repro("augment").ran


def test_augment_builds_translator_and_writes_reports(built):
    project, ran = built
    assert "translator" in ran and ran[-1] == "augment", ran
    root = project.root
    metrics = json.loads((root / "reports/translator.json").read_text())
    assert {"bleu_zh_en", "bleu_en_zh", "heldout_pairs", "final_loss"} <= set(metrics)
    assert (root / "models/translator/model.safetensors").exists()
    assert json.loads((root / "models/translator/chatforge.json").read_text())["family"] == "translator"
    aug = json.loads((root / "reports/augment.json").read_text())
    train = pl.read_parquet(root / "data/balanced.parquet")
    out = pl.read_parquet(root / "data/augmented.parquet")
    assert aug["rows_in"] == train.height and aug["rows_out"] == out.height
    assert aug["rows_added"] <= project.param("augment.max_ratio") * train.height
    added = out.filter(~pl.col("method").is_in(["original", "oversample"]))
    assert added.height == aug["rows_added"] > 0
    assert set(added["method"]) <= {"back_translation", "entity_swap", "voice_swap"}
    # nothing from val/test: every origin is a train conversation
    held = pl.concat([pl.read_parquet(root / f"data/split/{s}.parquet") for s in ("val", "test")])
    assert set(added["origin_id"]) <= set(train["conversation_id"])
    assert not set(added["origin_id"]) & set(held["conversation_id"])
    examples = json.loads((root / "reports/augment_examples.json").read_text())
    assert set(examples) == {"back_translation", "entity_swap", "voice_swap"}


def test_augment_param_change_does_not_retrain_translator(built):
    project, _ = built
    before = project.digest("models/translator")
    project.set_param("augment.voice_swap.ratio", 0.05)
    project.set_param("augment.back_translation.ratio", 0.2)
    repro = project.repro("augment")
    assert repro.ran == ["augment"], repro.output
    assert project.digest("models/translator") == before
    again = project.repro("augment")
    assert again.ran == [] and "augment" in again.unchanged


def test_translator_param_change_retrains_and_reruns_augment(built):
    project, _ = built
    project.set_param("translator.max_steps", 20)
    repro = project.repro("augment")
    assert repro.ran == ["translator", "augment"], repro.output


def test_bad_augment_param_stops_the_stage_with_a_clear_message(built):
    project, _ = built
    project.set_param("augment.max_ratio", "lots")
    done = subprocess.run(["python", "stages/augment.py", "data/balanced.parquet",
                           "models/translator", "lexicons/gazetteers", "x.parquet", "x.json", "y.json"],
                          cwd=project.root, env=project.env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2
    assert "augment.max_ratio = 'lots'" in done.stderr and "Traceback" not in done.stderr


def test_translator_is_skipped_while_back_translation_is_off(built):
    project, _ = built
    project.set_param("augment.max_ratio", 0.6)  # an earlier test left a bad value here
    project.set_param("augment.back_translation.enabled", False)
    repro = project.repro("augment")
    assert repro.ran == ["translator", "augment"], repro.output
    assert json.loads((project.root / "reports/translator.json").read_text()) == {"skipped": 1}
    assert json.loads((project.root / "models/translator/skipped.json").read_text())["reason"] == \
        "augment.back_translation.enabled is false"
    assert json.loads((project.root / "reports/augment.json").read_text())["rows_added_back_translation"] == 0
