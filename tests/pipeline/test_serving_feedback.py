"""The feedback loop under the real dvc: `chatforge feedback export` makes ingest out of date, and
the next `dvc repro ingest` reads the exported conversations (format `feedback`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest

from chatforge.serving.store import open_store, record_conversation, record_feedback, set_review

if TYPE_CHECKING:
    from tests.pipeline.conftest import Project

pytestmark = pytest.mark.pipeline


def test_feedback_export_changes_ingest_and_flows_into_turns(project: Project, tmp_path):
    assert project.repro("ingest").ran == ["ingest"]
    assert project.status("ingest") == {}

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    sessions = open_store(db)
    for cid, rating, correction in [
        ("chatcmpl-a1", 1, None),
        ("chatcmpl-b2", -1, "您的包裹明天送达。"),
        ("chatcmpl-c3", -1, None),
    ]:
        record_conversation(
            sessions,
            messages=[{"role": "user", "content": "我的包裹什么时候到？"}],
            answer="已发货",
            id=cid,
            variant="int8",
            model_fingerprint="f",
            lang="zh",
            latency_ms=3.0,
            confidence=0.9,
            finish_reason="stop",
        )
        row = record_feedback(sessions, conversation_id=cid, rating=rating, correction=correction)
        if correction:  # a correction is exported only once someone approved it
            assert set_review(sessions, row, "approved")

    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "python"),
            "-m",
            "chatforge.cli",
            "feedback",
            "export",
            "--database-url",
            db,
        ],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 2 conversations to data/raw/feedback/feedback.jsonl" in done.stdout

    status = project.status("ingest")
    assert "ingest" in status, status
    assert any("data/raw" in str(change) for change in status["ingest"]), status

    assert project.repro("ingest").ran == ["ingest"]
    turns = pl.read_parquet(project.root / "data/turns.parquet").filter(pl.col("source") == "feedback")
    assert sorted(turns["content"].to_list()) == sorted(
        ["我的包裹什么时候到？", "已发货", "我的包裹什么时候到？", "您的包裹明天送达。"]
    )
