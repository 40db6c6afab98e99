"""The conversation store on SQLite and on a real PostgreSQL: conversations and feedback recorded
through the real app, then read back by the `chatforge ab report`, `feedback review` and `feedback
export` commands (real processes), and an old database upgraded by `open_store`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from chatforge.serving.store import Base, Conversation, Feedback, Message, list_corrections, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


def cli(*args: str, params: Path, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m chatforge.cli ARGS --params P --database-url URL` as a process; returns it finished."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatforge.cli",
            *args,
            "--params",
            str(params),
            "--database-url",
            database_url,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"chatforge {' '.join(args)} failed: {done.stdout}\n{done.stderr}"
    return done


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_ab_report_and_feedback_export_read_what_the_app_stored(
    database_url, make_client, base_params, tiny_models, tmp_path
):
    variants = [
        {"name": "lm", "model": str(tiny_models["lm"]), "backend": "torch"},
        {"name": "clf", "model": str(tiny_models["clf"]), "backend": "torch"},
    ]
    params = base_params | {"database_url": database_url, "variants": variants}
    client = make_client(params)

    def ask(model: str, content: str) -> dict[str, Any]:
        r = client.post(
            "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}]}
        )
        assert r.status_code == 200, r.text
        return r.json()

    def rate(completion: dict[str, Any], rating: int, correction: str | None = None) -> dict[str, Any]:
        body = {"completion_id": completion["id"], "rating": rating}
        if correction is not None:
            body["correction"] = correction
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    # the e-mail address is masked before it is stored (serve.privacy.mask_pii)
    lm = [ask("lm", f"Hello number {i}, write to me at user{i}@example.com") for i in range(3)]
    clf = [ask("clf", "What is the weather like in Beijing today?"), ask("clf", "Where is my order?")]
    rate(lm[0], 1)
    rate(lm[1], -1)
    rate(lm[1], 1)  # replaces the thumbs down: only the latest rating of a key counts
    pending = rate(lm[2], -1, correction="Happy to help: write to me at help@example.com.")
    assert pending["correction_review"] == "pending"
    rate(clf[0], 1)
    rate(clf[1], 0)  # neutral: counted as a request, not as rated

    # what PostgreSQL / SQLite now hold
    sessions = open_store(database_url)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Conversation)) == 5
        assert session.scalar(select(func.count()).select_from(Message)) == 10
        assert session.scalar(select(func.count()).select_from(Feedback)) == 6
        assert (
            session.scalar(select(func.count()).select_from(Feedback).where(Feedback.current.is_(True))) == 5
        )
        stored = session.scalars(
            select(Message.content).where(Message.conversation_id == lm[0]["id"]).order_by(Message.position)
        ).all()
    assert stored == ["Hello number 0, write to me at <EMAIL>", lm[0]["choices"][0]["message"]["content"]]
    [correction] = list_corrections(sessions)
    assert (correction.conversation_id, correction.rating, correction.correction) == (
        lm[2]["id"],
        -1,
        "Happy to help: write to me at <EMAIL>.",
    )

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"serve": params}), encoding="utf-8")
    run = {"params": params_file, "database_url": database_url, "cwd": tmp_path}

    report = cli("ab", "report", **run).stdout
    assert report.splitlines() == [
        "variant          requests  rated positive satisfaction  95% interval",
        "lm                      3      3        2        66.7%  [20.8%, 93.9%]",
        "clf                     2      1        1       100.0%  [20.7%, 100.0%]",
        "clf vs lm: z = +0.67, p = 0.5050 -> not significant at alpha = 0.05",  # (1/1 - 2/3) / 0.5
        # (1/1 - 2/3 + 0.02) / sqrt(0 + (2/3)(1/3)/3): unpooled standard error under the margin
        "non-inferiority (clf vs lm, margin 0.02): z = +1.30, one-sided p = 0.0971",
        "decision: wait (more ratings needed per variant (each needs 100): lm 97 more (3 rated), clf 99 more (1 rated))",
    ]

    def answer(completion: dict[str, Any]) -> str:
        return completion["choices"][0]["message"]["content"]

    def intent(completion: dict[str, Any]) -> str:
        with sessions() as session:
            name = session.get(Conversation, completion["id"]).intent
        assert name in ("weather", "order")  # the tiny classifier's intents (tests/serving/conftest.py)
        return name

    def row(
        completion: dict[str, Any], question: str, reply: str, rating: int, intent: str | None
    ) -> dict[str, Any]:
        return {
            "id": completion["id"],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
            "intent": intent,
            "lang": "en",
            "rating": rating,
        }

    approved = row(
        lm[2], "Hello number 2, write to me at <EMAIL>", "Happy to help: write to me at <EMAIL>.", -1, None
    )
    liked = [
        row(lm[0], "Hello number 0, write to me at <EMAIL>", answer(lm[0]), 1, None),
        row(lm[1], "Hello number 1, write to me at <EMAIL>", answer(lm[1]), 1, None),
        row(clf[0], "What is the weather like in Beijing today?", answer(clf[0]), 1, intent(clf[0])),
    ]

    def export(*flags: str) -> tuple[list[dict[str, Any]], str, str]:
        out = tmp_path / "feedback.jsonl"
        done = cli("feedback", "export", "--out", str(out), *flags, **run)
        rows = read_jsonl(out)
        for r in rows:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r.pop("created_at")), r
        return rows, done.stdout.strip(), done.stderr.strip()

    def by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: r["id"])

    rows, out, err = export()
    assert rows == by_id(liked)
    assert out.startswith(f"wrote 3 conversations to {tmp_path / 'feedback.jsonl'}")
    assert err == "held back: 1 awaiting review (`chatforge feedback review`)"

    rows, out, err = export("--include-unreviewed")
    assert rows == by_id([*liked, approved])
    assert out.startswith("wrote 4 conversations") and err == ""

    listed = cli("feedback", "review", **run)
    assert listed.stdout.splitlines() == [
        "id\tcompletion_id\trating\tcorrection",
        f"{correction.id}\t{lm[2]['id']}\t-1\tHappy to help: write to me at <EMAIL>.",
    ]
    assert (
        cli("feedback", "review", "--approve", str(correction.id), **run).stdout
        == f"{correction.id}: approved\n"
    )
    rows, out, err = export()
    assert rows == by_id([*liked, approved])
    assert out.startswith("wrote 4 conversations") and err == ""
    assert cli("feedback", "review", **run).stderr.strip() == "no corrections awaiting review"
    sessions.kw["bind"].dispose()


def old_database(url: str) -> None:
    """The store as it was before feedback.current and feedback.review existed, with rows in it."""
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    conversation = {"variant": "lm", "model_fingerprint": "f", "lang": "en", "latency_ms": 1.0}
    with engine.begin() as connection:
        connection.execute(
            Conversation.__table__.insert(),
            [{"id": cid, "api_key_id": "k", "finish_reason": "stop", **conversation} for cid in ("c1", "c2")],
        )
        connection.execute(
            Message.__table__.insert(),
            [
                {"conversation_id": cid, "position": i, "role": role, "content": f"{role} {cid}"}
                for cid in ("c1", "c2")
                for i, role in enumerate(["user", "assistant"])
            ],
        )
        connection.execute(
            Feedback.__table__.insert(),
            [
                {"conversation_id": cid, "rating": rating, "correction": correction, "api_key_id": "k"}
                for cid, rating, correction in [
                    ("c1", 1, None),
                    ("c1", -1, None),  # a newer rating by the same key: the current one
                    ("c2", -1, "better"),
                ]
            ],
        )
        connection.execute(text("ALTER TABLE feedback DROP COLUMN current"))
        connection.execute(text("ALTER TABLE feedback DROP COLUMN review"))
    engine.dispose()


def test_an_old_database_is_upgraded_and_reported(database_url, base_params, tmp_path, caplog):
    old_database(database_url)
    with caplog.at_level("INFO", logger="chatforge.serving.store"):
        sessions = open_store(database_url)
    upgraded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upgraded the store")]
    default = "true" if database_url.startswith("postgresql") else "1"
    assert upgraded == [
        "upgraded the store: added column feedback.current "
        + f"(ALTER TABLE feedback ADD COLUMN current BOOLEAN DEFAULT {default} NOT NULL)",
        "upgraded the store: added column feedback.review "
        + "(ALTER TABLE feedback ADD COLUMN review VARCHAR(16))",
    ]
    engine = sessions.kw["bind"]
    assert {c["name"] for c in inspect(engine).get_columns("feedback")} >= {"current", "review"}
    with engine.connect() as connection:
        assert connection.execute(
            text("SELECT id, conversation_id, rating, current, review FROM feedback ORDER BY id")
        ).all() == [
            (1, "c1", 1, False, None),
            (2, "c1", -1, True, None),
            (3, "c2", -1, True, "pending"),
        ]
    engine.dispose()
    caplog.clear()
    with caplog.at_level("INFO", logger="chatforge.serving.store"):
        open_store(database_url).kw["bind"].dispose()  # already upgraded: nothing to add
    assert not [r for r in caplog.records if "upgraded" in r.getMessage()]

    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        yaml.safe_dump({"serve": base_params | {"database_url": database_url}}), encoding="utf-8"
    )
    run = {"params": params_file, "database_url": database_url, "cwd": tmp_path}
    assert cli("ab", "report", **run).stdout.splitlines()[1] == (
        "lm                      2      2        0         0.0%  [0.0%, 65.8%]"
    )
    assert cli("feedback", "review", "--approve", "3", **run).stdout == "3: approved\n"
    out = tmp_path / "feedback.jsonl"
    cli("feedback", "export", "--out", str(out), **run)
    [exported] = read_jsonl(out)
    assert (exported["id"], exported["messages"]) == (
        "c2",
        [{"role": "user", "content": "user c2"}, {"role": "assistant", "content": "better"}],
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_instances_opening_a_new_database_at_once_all_start(backend, request, tmp_path):
    failures = []
    for round_ in range(5):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        else:
            url = request.getfixturevalue("postgres_server").create_database()
        together = threading.Barrier(2)

        def start(url: str = url, together: threading.Barrier = together) -> None:
            together.wait()
            try:
                open_store(url).kw["bind"].dispose()
            except SQLAlchemyError as exc:  # what stops an instance from starting
                failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
