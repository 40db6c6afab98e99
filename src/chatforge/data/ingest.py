"""Read every source in `ingest.sources` into the canonical turns table, plus rejects and counts.

The readers (`chatforge.data.readers`) take files apart; this module judges what they found, the
same way for every format:

- role names are mapped to user/assistant/system (defaults below, extended by `options.role_map`);
- a conversation with an unknown role, an empty or non-string message, a system message after
  the start, an undecodable byte or an unsupported declared language is rejected whole (with the
  reason and where it was), because dropping one message would change what the others answer;
- consecutive messages of one role are merged or drop their conversation (`same_role`);
- fewer than `min_turns` user/assistant messages, or no user or no assistant, is `too_few_turns`.

Language: the conversation's own `lang` field, else `options.lang`, else detected once per
conversation from the share of Chinese characters over all its messages (`chatforge.data.lang`).
Intent: user turns carry their own intent when the format has one per turn (CrossWOZ acts, a CSV
intent column); every other row carries the conversation's intent (declared, else its first user
turn intent, else `options.intent`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from chatforge.data.lang import lang_expr
from chatforge.data.readers import (
    READERS,
    RawConversation,
    RawReject,
    TableLayoutError,
    encoding_hint,
    raw_prefix,
)
from chatforge.data.schema import REJECTS_SCHEMA, TURNS_SCHEMA, conform, sort_turns
from chatforge.io import progress
from chatforge.params import IngestParams, Source

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "malformed_json",  # a line or file that is not valid JSON
    "malformed_yaml",  # a YAML file that does not parse
    "malformed_line",  # a text/CSV line without the fields its format needs
    "missing_field",  # a required key/column is absent or of the wrong shape
    "bad_encoding",  # bytes that do not decode with the source's encoding
    "unknown_role",  # a role name that role mapping does not know
    "non_string_content",  # a message content that is not text (number, object, null)
    "empty_content",  # a message that is empty or only whitespace
    "misplaced_system",  # a system message after the first message
    "same_role_sequence",  # consecutive same-role messages with same_role: drop_conversation
    "too_few_turns",  # fewer than min_turns messages, or no user / no assistant message
    "dangling_reference",  # a Cornell conversation naming a line id movie_lines.txt lacks
    "duplicate_id",  # a conversation id seen before in the same source
    "unsupported_lang",  # a declared language other than zh / en
)

DEFAULT_ROLE_MAP: dict[str, str] = {
    **dict.fromkeys(("user", "human", "usr", "customer", "client", "question"), "user"),
    **dict.fromkeys(
        ("assistant", "gpt", "bot", "sys", "agent", "ai", "model", "chatgpt", "answer"), "assistant"
    ),
    "system": "system",
}

_SURROGATE = re.compile("[\udc80-\udcff]")


class IngestError(ValueError):
    """A source that cannot be read at all (missing path, wrong columns); names the params key to fix."""


@dataclass
class SourceStats:
    conversations: int = 0
    turns: int = 0
    rejects: int = 0
    files: int = 0
    missing: int = 0
    same_role_merged_messages: int = 0
    same_role_dropped_conversations: int = 0


@dataclass
class IngestResult:
    turns: pl.DataFrame
    rejects: pl.DataFrame
    stats: dict[str, SourceStats] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """Flat-ish counts for reports/ingest.json (`dvc metrics diff` reads nested keys as a.b.c)."""
        reasons = Counter(self.rejects["reason"].to_list())
        langs = self.turns.group_by("lang").agg(pl.col("conversation_id").n_unique()).rows()
        total = {k: sum(getattr(s, k) for s in self.stats.values()) for k in SourceStats.__dataclass_fields__}
        return {
            "conversations": total["conversations"],
            "turns": total["turns"],
            "rejects": total["rejects"],
            "same_role_merged_messages": total["same_role_merged_messages"],
            "same_role_dropped_conversations": total["same_role_dropped_conversations"],
            "missing_optional_sources": total["missing"],
            "conversations_by_lang": {"en": 0, "zh": 0} | {lang: n for lang, n in langs if lang is not None},
            "rejects_by_reason": {reason: reasons.get(reason, 0) for reason in REJECT_REASONS},
            "sources": {name: vars(s).copy() for name, s in self.stats.items()},
        }


class _Collector:
    """Validates raw conversations of one source and appends good ones to column lists."""

    def __init__(self, source: Source, *, same_role: str, merge_separator: str, min_turns: int) -> None:
        self.name = source.source_name
        self.options = source.options
        self.role_map = DEFAULT_ROLE_MAP | {k.strip().lower(): v for k, v in source.options.role_map.items()}
        self.same_role, self.separator, self.min_turns = same_role, merge_separator, min_turns
        self.forced_lang = None if source.options.lang == "auto" else source.options.lang
        self.cols: dict[str, list[Any]] = {
            "conversation_id": [],
            "turn": [],
            "role": [],
            "content": [],
            "lang": [],
            "intent": [],
        }
        self.rejects: list[dict[str, str]] = []
        self.seen: set[str] = set()
        self.stats = SourceStats()

    def reject(self, location: str, reason: str, raw: str) -> None:
        self.rejects.append({"source": self.name, "location": location, "reason": reason, "raw": raw})
        self.stats.rejects += 1

    def add(self, conv: RawConversation) -> None:
        roles, contents = conv.roles, conv.contents
        try:
            mapped = [self.role_map.get(r) for r in roles]
        except TypeError:  # an unhashable role (a list, an object): the careful path reports it
            mapped = [None]
        # Fast path for the usual conversation (known roles, non-empty strings, already alternating):
        # whole-list checks run in C, which keeps a million turns within seconds.
        if (
            None not in mapped
            and not conv.check_encoding
            and set(map(type, contents)) == {str}
            and all(map(str.strip, contents))
            and not any(map(operator.eq, mapped, mapped[1:]))
            and "system" not in mapped[1:]
        ):
            merges = 0
            out_roles, out_contents = mapped, contents
            out_intents = (
                [None] * len(mapped)
                if conv.turn_intents is None
                else [i if r == "user" else None for i, r in zip(conv.turn_intents, mapped, strict=True)]
            )
        else:
            checked = self._checked_messages(conv)
            if checked is None:
                return None
            out_roles, out_contents, out_intents, merges = checked
        dialogue = len(out_roles) - (1 if out_roles and out_roles[0] == "system" else 0)
        if dialogue < self.min_turns or "user" not in out_roles or "assistant" not in out_roles:
            return self.reject(
                conv.location,
                "too_few_turns",
                f"{dialogue} user/assistant messages after merging, need >= {self.min_turns}, both roles: "
                + raw_prefix(conv.raw),
            )
        lang = conv.lang
        if lang is not None:
            lang = str(lang).strip().lower().replace("_", "-").split("-")[0] or None  # zh-CN, en_US -> zh, en
            if lang not in (None, "zh", "en"):
                return self.reject(
                    conv.location,
                    "unsupported_lang",
                    f"declared lang {conv.lang!r}; only zh and en are supported",
                )
        lang = lang or self.forced_lang
        intent = (
            _text_or_none(conv.intent) or next((i for i in out_intents if i), None) or self.options.intent
        )
        cid = f"{self.name}:{conv.local_id}"
        if conv.check_encoding and (_SURROGATE.search(cid) or (intent and _SURROGATE.search(intent))):
            return self.reject(
                conv.location,
                "bad_encoding",
                "id or intent " + encoding_hint(self.options.encoding or "utf-8"),
            )
        if cid in self.seen:
            return self.reject(
                conv.location,
                "duplicate_id",
                f"conversation id {conv.local_id!r} appears earlier in this source",
            )
        self.seen.add(cid)
        n = len(out_roles)
        cols = self.cols
        cols["conversation_id"].extend([cid] * n)
        cols["turn"].extend(range(n))
        cols["role"].extend(out_roles)
        cols["content"].extend(out_contents)
        cols["lang"].extend([lang] * n)
        if any(out_intents):
            cols["intent"].extend(
                [
                    (i or intent) if r == "user" else intent
                    for i, r in zip(out_intents, out_roles, strict=True)
                ]
            )
        else:
            cols["intent"].extend([intent] * n)
        self.stats.conversations += 1
        self.stats.turns += n
        self.stats.same_role_merged_messages += merges
        return None

    def _checked_messages(
        self, conv: RawConversation
    ) -> tuple[list[str], list[str], list[str | None], int] | None:
        """Message by message, naming the first problem; merges same-role runs. None when rejected."""
        role_map, out_roles, out_contents, out_intents = self.role_map, [], [], []
        turn_intents = conv.turn_intents
        merges = 0
        for k, (role_name, content) in enumerate(zip(conv.roles, conv.contents, strict=True)):
            role = role_map.get(role_name) if isinstance(role_name, str) else None
            if role is None and isinstance(role_name, str):
                role = role_map.get(role_name.strip().lower())
            if role is None:
                known = ", ".join(sorted(self.role_map))
                return self.reject(
                    conv.location,
                    "unknown_role",
                    f"message {k} role {role_name!r} (known: {known}; add it to options.role_map)",
                )
            if not isinstance(content, str):
                return self.reject(
                    conv.location,
                    "non_string_content",
                    f"message {k} content is {type(content).__name__}: " + raw_prefix(content),
                )
            if not content.strip():
                return self.reject(
                    conv.location,
                    "empty_content",
                    f"message {k} ({role_name}) is empty: " + raw_prefix(conv.raw),
                )
            if conv.check_encoding and _SURROGATE.search(content):
                enc = self.options.encoding or "utf-8"
                return self.reject(conv.location, "bad_encoding", f"message {k} {encoding_hint(enc)}")
            turn_intent = turn_intents[k] if turn_intents is not None and role == "user" else None
            if out_roles and out_roles[-1] == role:
                if self.same_role == "drop_conversation":
                    self.stats.same_role_dropped_conversations += 1
                    return self.reject(
                        conv.location,
                        "same_role_sequence",
                        f"messages {k - 1} and {k} are both {role}: " + raw_prefix(conv.raw),
                    )
                out_contents[-1] = out_contents[-1] + self.separator + content
                out_intents[-1] = out_intents[-1] or turn_intent
                merges += 1
                continue
            if role == "system" and out_roles:
                return self.reject(
                    conv.location,
                    "misplaced_system",
                    f"message {k} is a system message after the start: " + raw_prefix(conv.raw),
                )
            out_roles.append(role)
            out_contents.append(content)
            out_intents.append(turn_intent)
        return out_roles, out_contents, out_intents, merges

    def frame(self) -> pl.DataFrame:
        frame = pl.DataFrame(self.cols, schema={c: TURNS_SCHEMA[c] for c in self.cols})
        if frame["lang"].null_count():
            # detect only where no language was declared; the caller sorts, so the order may change here
            undeclared = pl.col("lang").is_null()
            frame = pl.concat(
                [
                    frame.filter(~undeclared),
                    # lazy: the counts inside lang_expr run once (common-subexpression elimination)
                    frame.lazy()
                    .filter(undeclared)
                    .with_columns(lang_expr("content", over="conversation_id"))
                    .collect(),
                ]
            )
        return frame.with_columns(source=pl.lit(self.name), method=pl.lit("original"))


def _text_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Reading builds millions of small lists and dicts but no reference cycles; the cyclic collector
    would rescan the whole growing heap over and over (json.loads of a big file runs ~2.5x slower)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def source_files(path: Path, fmt: str) -> list[Path]:
    """The files a source reads: the path itself, or the matching files under a folder, sorted."""
    patterns = READERS[fmt][1]  # type: ignore[index]
    if not path.is_dir() or not patterns:
        return [path]
    return sorted(
        {p for pattern in patterns for p in path.rglob(pattern) if p.is_file() and not p.name.startswith(".")}
    )


def read_source(
    source: Source,
    *,
    index: int = 0,
    same_role: Literal["merge", "drop_conversation"] = "merge",
    merge_separator: str = "\n",
    min_turns: int = 2,
    base_dir: Path | str = ".",
) -> tuple[pl.DataFrame, pl.DataFrame, SourceStats]:
    """One source -> (turns, rejects, stats). Raises IngestError when the source cannot be read at all."""
    path = Path(base_dir) / source.path
    collector = _Collector(source, same_role=same_role, merge_separator=merge_separator, min_turns=min_turns)
    where = f"ingest.sources[{index}] (name {source.source_name!r}, format {source.format})"
    if not path.exists():
        if not source.optional:
            raise IngestError(
                f"{where}: path {source.path!r} does not exist (looked in {path.resolve()}). "
                f"Fix ingest.sources[{index}].path in params.yaml, or set optional: true if it may be absent."
            )
        log.warning("%s: optional source %s is absent; skipped", where, source.path)
        collector.stats.missing = 1
        return collector.frame().pipe(conform), pl.DataFrame(schema=REJECTS_SCHEMA), collector.stats
    if source.format == "cornell" and not (
        path.is_dir()
        and (path / "movie_lines.txt").is_file()
        and (path / "movie_conversations.txt").is_file()
    ):
        raise IngestError(
            f"{where}: {source.path!r} must be a folder holding movie_lines.txt and movie_conversations.txt. "
            f"Fix ingest.sources[{index}].path."
        )
    reader = READERS[source.format][0]
    files = source_files(path, source.format)
    if not files:
        log.warning(
            "%s: folder %s holds no %s files", where, source.path, "/".join(READERS[source.format][1])
        )
    collector.stats.files = len(files)
    limit = source.options.limit
    read = 0
    with _gc_paused():
        for file in files:
            label = (
                source.path
                if file == path
                else f"{source.path.rstrip('/')}/{file.relative_to(path).as_posix()}"
            )
            id_prefix = "" if file == path else f"{file.relative_to(path).with_suffix('').as_posix()}:"
            items = reader(file, options=source.options, label=label, id_prefix=id_prefix)
            try:
                for item in progress(items, desc=f"ingest {source.source_name}", every=50_000):
                    if limit is not None and read >= limit:
                        break
                    read += 1
                    if isinstance(item, RawReject):
                        collector.reject(item.location, item.reason, item.raw)
                    else:
                        collector.add(item)
            except TableLayoutError as exc:
                raise IngestError(f"{where}: {exc} (ingest.sources[{index}].options)") from None
            except OSError as exc:
                raise IngestError(f"{where}: cannot read {label}: {exc}") from None
    turns = collector.frame().pipe(conform).pipe(sort_turns)
    rejects = pl.DataFrame(collector.rejects, schema=REJECTS_SCHEMA)
    log.info(
        "%s: %d conversations, %d turns, %d rejects",
        source.source_name,
        collector.stats.conversations,
        collector.stats.turns,
        collector.stats.rejects,
    )
    return turns, rejects, collector.stats


def ingest(params: IngestParams, *, base_dir: Path | str = ".") -> IngestResult:
    """Every source -> one sorted turns table (ids `<source>:<id>`), rejects and per-source counts."""
    frames, reject_frames, stats = [], [], {}
    for index, source in enumerate(params.sources):
        turns, rejects, source_stats = read_source(
            source,
            index=index,
            same_role=params.same_role,
            merge_separator=params.merge_separator,
            min_turns=params.min_turns,
            base_dir=base_dir,
        )
        frames.append(turns)
        reject_frames.append(rejects)
        stats[source.source_name] = source_stats
    turns = sort_turns(pl.concat(frames, how="vertical"))
    return IngestResult(turns=turns, rejects=pl.concat(reject_frames, how="vertical"), stats=stats)


__all__ = [
    "DEFAULT_ROLE_MAP",
    "REJECT_REASONS",
    "IngestError",
    "IngestResult",
    "SourceStats",
    "ingest",
    "read_source",
    "source_files",
]
