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

Conversation ids are `<source>:<id>` with the source name escaped (`%` -> `%25`, `:` -> `%3A`), so
the first `:` always ends the source part and two sources can never produce the same id (source
`shop` with id `a:1` is `shop:a:1`, source `shop:a` with id `1` is `shop%3Aa:1`). The id after the
first `:` is kept as the source wrote it (ids inside one source are unique: `duplicate_id`). Should
two sources still yield one id, the later conversation is rejected as `duplicate_id`, never merged.

A conversation with no declared language whose text is mostly in another script (kana, hangul,
Cyrillic, Arabic, ...; `chatforge.data.lang.unsupported_script`) is rejected as `unsupported_lang`
naming the script, rather than labelled zh or en (t2s would then rewrite Japanese kanji).

In a source folder, what is not read is logged (one warning per kind with its count and an example
path) and counted per source in reports/ingest.json (`skipped_files`): symlinked folders (not
followed), files the format does not read (a .zip beside .jsonl files), broken links; hidden files
(.gitkeep) are counted and logged at info level.

A source that yields no conversation at all is logged as a warning with its reject reasons and its
first reject (a build would otherwise only fail later, at split, with "no rows").
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import gc
import logging
import operator
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from chatforge.data.lang import UNSUPPORTED_CHAR_PATTERN, lang_expr, unsupported_script
from chatforge.data.readers import (
    LONE_SURROGATE,
    READER_REJECT_REASONS,
    READERS,
    ConversationColumns,
    RawConversation,
    RawReject,
    SourceReadError,
    TableLayoutError,
    conversations_json_columns,
    looks_like_hub_id,
    printable,
    quoted,
    raw_prefix,
    surrogate_hint,
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
    "bad_encoding",  # bytes that do not decode with the source's encoding, or a lone \ud800-style escape
    "unknown_role",  # a role name that role mapping does not know
    "non_string_content",  # a message content that is not text (number, object, null)
    "empty_content",  # a message that is empty or only whitespace
    "misplaced_system",  # a system message after the first message
    "same_role_sequence",  # consecutive same-role messages with same_role: drop_conversation
    "too_few_turns",  # fewer than min_turns messages, or no user / no assistant message
    "dangling_reference",  # a Cornell conversation naming a line id movie_lines.txt lacks
    "duplicate_id",  # a conversation id seen before in the same source
    "unsupported_lang",  # a declared language other than zh / en, or text mostly in another script (kana, hangul, ...)
    "unreadable_file",  # a file that cannot be opened at all (an empty or truncated .zip, a broken parquet)
    *READER_REJECT_REASONS,  # unclosed_quote, field_too_large, too_deep, yaml_aliases (bounds, see readers)
)

DEFAULT_ROLE_MAP: dict[str, str] = {
    **dict.fromkeys(("user", "human", "usr", "customer", "client", "question"), "user"),
    **dict.fromkeys(
        ("assistant", "gpt", "bot", "sys", "agent", "ai", "model", "chatgpt", "answer"), "assistant"
    ),
    "system": "system",
}


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
    skipped_files: dict[str, int] = field(default_factory=dict)  # SKIP_KINDS -> count, folder sources


# What a source folder holds that ingest does not read (logged and counted, never silently dropped).
SKIP_KINDS = (
    "symlinked_folder",  # a symbolic link to a folder: not followed (loops, data outside the source)
    "unsupported_file",  # a file the format does not read (a .zip beside .jsonl files)
    "broken_link",  # a symbolic link to nothing
    "hidden_file",  # a name starting with "." (.gitkeep): logged at info level only
)
# how many example paths one skip warning names
SKIP_EXAMPLES = 1


def escape_id_part(text: str) -> str:
    """`%` -> `%25`, `:` -> `%3A`: a source name that holds no `:` and decodes back to itself."""
    return text.replace("%", "%25").replace(":", "%3A")


def global_id_prefix(source_name: str) -> str:
    """The prefix of every conversation id of a source: its escaped name and `:`."""
    return escape_id_part(source_name) + ":"


@dataclass
class IngestResult:
    turns: pl.DataFrame
    rejects: pl.DataFrame
    stats: dict[str, SourceStats] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """Flat-ish counts for reports/ingest.json (`dvc metrics diff` reads nested keys as a.b.c)."""
        reasons = Counter(self.rejects["reason"].to_list())
        langs = self.turns.group_by("lang").agg(pl.col("conversation_id").n_unique()).rows()
        total = {
            k: sum(getattr(s, k) for s in self.stats.values())
            for k in SourceStats.__dataclass_fields__
            if k != "skipped_files"
        }
        return {
            "conversations": total["conversations"],
            "turns": total["turns"],
            "rejects": total["rejects"],
            "same_role_merged_messages": total["same_role_merged_messages"],
            "same_role_dropped_conversations": total["same_role_dropped_conversations"],
            "missing_optional_sources": total["missing"],
            "skipped_files": {
                kind: sum(s.skipped_files.get(kind, 0) for s in self.stats.values()) for kind in SKIP_KINDS
            },
            "conversations_by_lang": {"en": 0, "zh": 0} | {lang: n for lang, n in langs if lang is not None},
            "rejects_by_reason": {reason: reasons.get(reason, 0) for reason in REJECT_REASONS},
            "sources": {
                name: vars(s) | {"skipped_files": {k: s.skipped_files.get(k, 0) for k in SKIP_KINDS}}
                for name, s in self.stats.items()
            },
        }


class _Collector:
    """Validates raw conversations of one source and appends good ones to column lists."""

    def __init__(self, source: Source, *, same_role: str, merge_separator: str, min_turns: int) -> None:
        self.name = source.source_name
        self.id_prefix = global_id_prefix(self.name)
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
        self.frames: list[pl.DataFrame] = []  # conversations accepted column-wise (add_columns)
        self.rejects: list[dict[str, str]] = []
        self.seen: set[str] = set()
        self.seen_columns: list[pl.Series] = []  # ids accepted column-wise, not yet in `seen`
        self.stats = SourceStats()

    def reject(self, location: str, reason: str, raw: str) -> None:
        # a location may name an id holding a lone surrogate; the rejects table must stay valid UTF-8
        self.rejects.append(
            {"source": self.name, "location": printable(location), "reason": reason, "raw": printable(raw)}
        )
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
        lang = _declared_lang(conv.lang)
        if lang is False:
            return self.reject(
                conv.location,
                "unsupported_lang",
                f"declared lang {quoted(conv.lang)}; only zh and en are supported",
            )
        lang = lang or self.forced_lang
        if lang is None and (script := unsupported_script(out_contents)) is not None:
            return self._unsupported_script(conv.location, script)
        intent = (
            _text_or_none(conv.intent) or next((i for i in out_intents if i), None) or self.options.intent
        )
        cid = f"{self.id_prefix}{conv.local_id}"
        if cid in self._seen():
            return self.reject(
                conv.location,
                "duplicate_id",
                f"conversation id {quoted(conv.local_id)} appears earlier in this source",
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

    def _unsupported_script(self, location: str, script: tuple[str, float]) -> None:
        name, share = script
        return self.reject(
            location,
            "unsupported_lang",
            f"no declared lang and {share:.0%} of the text is in {name} script; only zh and en are "
            "supported (set the conversation's lang, or options.lang: zh|en on the source, to keep it as that)",
        )

    def _checked_messages(
        self, conv: RawConversation
    ) -> tuple[list[str], list[str], list[str | None], int] | None:
        """Message by message, naming the first problem; merges same-role runs. None when rejected."""
        role_map, out_roles, out_contents, out_intents = self.role_map, [], [], []
        turn_intents = conv.turn_intents
        merges = 0
        if conv.check_encoding:
            # the conversation's own text fields end up in every row, so they are checked first
            fields = [("id", conv.local_id), ("intent", conv.intent), ("lang", conv.lang)]
            fields += [(f"message {k} intent", i) for k, i in enumerate(turn_intents or ())]
            for what, value in fields:
                if isinstance(value, str) and LONE_SURROGATE.search(value):
                    return self._surrogate_reject(conv, what, value)
        for k, (role_name, content) in enumerate(zip(conv.roles, conv.contents, strict=True)):
            if conv.check_encoding and isinstance(role_name, str) and LONE_SURROGATE.search(role_name):
                return self._surrogate_reject(conv, f"message {k} role", role_name)
            role = role_map.get(role_name) if isinstance(role_name, str) else None
            if role is None and isinstance(role_name, str):
                role = role_map.get(role_name.strip().lower())
            if role is None:
                known = ", ".join(sorted(self.role_map))
                return self.reject(
                    conv.location,
                    "unknown_role",
                    f"message {k} role {quoted(role_name)} (known: {known}; add it to options.role_map)",
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
            if conv.check_encoding and LONE_SURROGATE.search(content):
                return self._surrogate_reject(conv, f"message {k} content", content)
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

    def _surrogate_reject(self, conv: RawConversation, what: str, text: str) -> None:
        char = LONE_SURROGATE.search(text).group()  # type: ignore[union-attr]
        hint = surrogate_hint(char, self.options.encoding or "utf-8")
        return self.reject(conv.location, "bad_encoding", f"{what} {hint}: " + raw_prefix(conv.raw))

    def add_item(self, item: RawConversation | RawReject) -> None:
        if isinstance(item, RawReject):
            self.reject(item.location, item.reason, item.raw)
        else:
            self.add(item)

    def add_columns(self, columns: ConversationColumns) -> None:
        """Every item of one file, with the same outcome as `add_item` on each in order, but the checks
        of the regular conversations run over all their messages at once (polars/numpy).

        A conversation any rule would reject is handed to `add` (it names the first problem, exactly as
        for every other format); so are the non-regular items. The accepted ones keep their order
        against those for the duplicate-id check.
        """
        n_convs = len(columns.positions)
        lengths = np.asarray(columns.lengths, dtype=np.int64)
        roles, contents = columns.roles, columns.contents
        regular = np.ones(n_convs, dtype=bool)
        conv_of = np.repeat(np.arange(n_convs, dtype=np.int64), lengths)
        try:  # nulls become nulls (rejected below); other non-text values raise
            role_names = pl.Series("role_name", roles, dtype=pl.String, strict=True)
            content = pl.Series("content", contents, dtype=pl.String, strict=True)
        except TypeError:
            # a conversation with a role or content that is a number, a list, ... is judged by `add`
            odd = np.fromiter(
                (type(r) is not str or type(c) is not str for r, c in zip(roles, contents, strict=True)),
                dtype=bool,
                count=len(roles),
            )
            regular[conv_of[odd]] = False
            roles = [r if type(r) is str else None for r in roles]
            role_names = pl.Series("role_name", roles, dtype=pl.String)
            contents = [c if type(c) is str else None for c in contents]
            content = pl.Series("content", contents, dtype=pl.String)
        starts = np.cumsum(lengths) - lengths
        position = np.arange(len(roles), dtype=np.int64) - starts[conv_of]
        lookup = {name: self._role_of(name) for name in role_names.drop_nulls().unique().to_list()}
        messages = pl.DataFrame(
            {
                "conv": conv_of,
                "k": position,
                "role": role_names.replace_strict(lookup, default=None, return_dtype=pl.String),
                "content": content,
            }
        )
        role, k = pl.col("role"), pl.col("k")
        same = ((k > 0) & (role == role.shift(1))).fill_null(False)
        bad = (
            role.is_null()
            | ~pl.col("content").str.contains(_non_space_pattern())
            | ((role == "system") & (k > 0) & ~same)
        )
        if self.same_role == "drop_conversation":
            bad = bad | same
        flags = messages.select(
            same=same, bad=bad.fill_null(True), system=(role == "system").fill_null(False)
        )
        same_np, bad_np, system_np = (flags[c].to_numpy() for c in ("same", "bad", "system"))
        regular[conv_of[bad_np]] = False
        merges = np.bincount(conv_of[same_np], minlength=n_convs)
        first_system = np.zeros(n_convs, dtype=bool)
        nonempty = lengths > 0
        first_system[nonempty] = system_np[starts[nonempty]]
        regular &= lengths - merges - first_system >= self.min_turns
        langs = _map_values(_declared_lang, columns.langs, unsupported="?")
        regular &= (langs != "?").fill_null(True).to_numpy()
        # conversations `add` may still accept (it judges the share of other scripts), in the ordered pass
        suspect = np.zeros(n_convs, dtype=bool)
        if self.forced_lang:
            langs = langs.fill_null(self.forced_lang)
        else:
            # undeclared language with kana, hangul, Cyrillic, ...: `add` judges the share and may reject
            other = messages.select(pl.col("content").str.contains(UNSUPPORTED_CHAR_PATTERN).fill_null(False))
            other_np = other.to_series().to_numpy()
            if other_np.any():
                suspect[conv_of[other_np]] = True
                suspect &= regular & langs.is_null().to_numpy()
                regular &= ~suspect

        # In file order, accepted conversations (a repeated id is rejected) interleave with the items
        # `add` judges. Those that failed a check above are rejected by `add` before it looks at ids;
        # so are reader rejects. Only another kind of item (one `add` may accept) needs one ordered pass.
        accepted = np.flatnonzero(regular)
        positions = np.asarray(columns.positions, dtype=np.int64)
        is_other = np.ones(columns.size, dtype=bool)
        is_other[positions] = False
        events: list[tuple[int, Any]] = [
            *((k, columns.item_at(k)) for k in np.flatnonzero(is_other).tolist()),
            *((k, None) for k in positions[~regular & ~suspect].tolist()),
            *((k, columns.item_at(k)) for k in positions[suspect].tolist()),
        ]
        cids = self.id_prefix + pl.Series("cid", columns.local_ids, dtype=pl.String)
        keep = np.zeros(n_convs, dtype=bool)
        if all(isinstance(item, RawReject | None) for _, item in events):
            accepted_ids = cids.gather(accepted)
            fresh = accepted_ids.is_first_distinct()
            earlier = pl.concat([pl.Series(list(self.seen), dtype=pl.String), *self.seen_columns])
            if earlier.len():
                fresh &= ~accepted_ids.is_in(earlier.implode())
            keep[accepted[fresh.to_numpy()]] = True
            self.seen_columns.append(accepted_ids.filter(fresh))
            repeated = accepted[~fresh.to_numpy()].tolist()
            events += [(columns.positions[i], self._duplicate(columns, i)) for i in repeated]
        else:
            events += [(columns.positions[i], i) for i in accepted.tolist()]
            cid_list = cids.to_list()
        for at, item in sorted(events, key=operator.itemgetter(0)):
            if type(item) is int:  # an accepted conversation, in the ordered pass
                if cid_list[item] in self._seen():
                    self.add_item(self._duplicate(columns, item))
                else:
                    self.seen.add(cid_list[item])
                    keep[item] = True
            else:  # None: failed a check above; `add` names the problem
                self.add_item(item or columns.item_at(at))
        if not keep.any():
            return

        kept = keep[conv_of]
        rows = messages.filter(pl.Series(kept))
        if same_np[kept].any():
            # merge same-role runs: a message's turn is its position less the merges before it
            merged_before = np.cumsum(same_np)
            turn = position - (merged_before - merged_before[starts[conv_of]])
            rows = (
                rows.with_columns(k=pl.Series(turn[kept]))
                .group_by("conv", "k", maintain_order=True)
                .agg(pl.col("role").first(), pl.col("content").str.join(self.separator))
            )
        conv = rows["conv"]
        intents = _map_values(_text_or_none, columns.intents)
        if self.options.intent is not None:
            intents = intents.fill_null(self.options.intent)
        frame = pl.DataFrame(
            {
                "conversation_id": cids.gather(conv),
                "turn": rows["k"].cast(pl.Int32),
                "role": rows["role"],
                "content": rows["content"],
                "lang": langs.gather(conv),
                "intent": intents.gather(conv),
            }
        )
        self.frames.append(frame)
        self.stats.conversations += int(keep.sum())
        self.stats.turns += frame.height
        self.stats.same_role_merged_messages += int(merges[keep].sum())

    def _duplicate(self, columns: ConversationColumns, index: int) -> RawReject:
        item = columns.item_at(columns.positions[index])
        return RawReject(
            item.location,
            "duplicate_id",
            f"conversation id {quoted(columns.local_ids[index])} appears earlier in this source",
        )

    def _seen(self) -> set[str]:
        for ids in self.seen_columns:
            self.seen.update(ids.to_list())
        self.seen_columns.clear()
        return self.seen

    def _role_of(self, name: str) -> str | None:
        role = self.role_map.get(name)
        return role if role is not None else self.role_map.get(name.strip().lower())

    def frame(self) -> pl.DataFrame:
        frame = pl.concat(
            [pl.DataFrame(self.cols, schema={c: TURNS_SCHEMA[c] for c in self.cols}), *self.frames]
        )
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


def _declared_lang(value: Any) -> str | None | Literal[False]:
    """zh-CN, en_US -> zh, en; None when none is declared; False for a language other than zh/en."""
    if value is None:
        return None
    lang = str(value).strip().lower().replace("_", "-").split("-")[0] or None
    return lang if lang in (None, "zh", "en") else False


def _map_values(
    function: Callable[[Any], str | None | Literal[False]], values: list[Any], *, unsupported: str = ""
) -> pl.Series:
    """A text column of `function` (None -> None) on each value, False written as `unsupported`;
    computed once per distinct value when all are text or null (intents and langs repeat a lot)."""
    try:
        texts = pl.Series(values, dtype=pl.String, strict=True)
    except TypeError:  # numbers, lists, ...: one by one
        return pl.Series([unsupported if (v := function(x)) is False else v for x in values], dtype=pl.String)
    table = {x: function(x) for x in texts.drop_nulls().unique().to_list()}
    return texts.replace_strict(
        {x: unsupported if v is False else v for x, v in table.items()}, default=None, return_dtype=pl.String
    )


# Every character str.isspace() (and so str.strip()) treats as whitespace; regex `\s` lacks \x1c-\x1f.
PYTHON_SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


@functools.cache
def _non_space_pattern() -> str:
    """A regex matching any character that is not whitespace to str.strip()."""
    return "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in PYTHON_SPACES) + "]"


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
    return scan_source(path, fmt)[0]


def scan_source(path: Path, fmt: str) -> tuple[list[Path], dict[str, list[Path]]]:
    """(the files a source reads, sorted; what its folder holds that is not read, by SKIP_KINDS, sorted).

    Folders are walked without following symbolic links to folders; links to files are read.
    """
    patterns = READERS[fmt][1]  # type: ignore[index]
    if not path.is_dir() or not patterns:
        return [path], {}
    files: list[Path] = []
    skipped: dict[str, list[Path]] = {}
    for root, dirs, names in os.walk(path, followlinks=False):
        here = Path(root)
        for name in dirs:
            if (here / name).is_symlink():
                skipped.setdefault("symlinked_folder", []).append(here / name)
        for name in names:
            file = here / name
            if name.startswith("."):
                kind = "hidden_file"
            elif not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                kind = "unsupported_file"
            elif not file.is_file():
                kind = "broken_link" if file.is_symlink() else "unsupported_file"
            else:
                files.append(file)
                continue
            skipped.setdefault(kind, []).append(file)
    return sorted(files), {kind: sorted(paths) for kind, paths in skipped.items()}


def _log_skipped(where: str, source_path: str, fmt: str, skipped: dict[str, list[Path]], folder: Path) -> None:
    """One line per kind: the count and the first SKIP_EXAMPLES paths (bounded)."""
    what = {
        "symlinked_folder": "symbolic link(s) to a folder, not followed (add the target as its own source)",
        "unsupported_file": f"file(s) format {fmt} does not read ({'/'.join(READERS[fmt][1])} only)",  # type: ignore[index]
        "broken_link": "symbolic link(s) to nothing",
        "hidden_file": "hidden file(s)",
    }
    for kind in SKIP_KINDS:
        paths = skipped.get(kind)
        if not paths:
            continue
        examples = ", ".join(printable(p.relative_to(folder).as_posix())[:200] for p in paths[:SKIP_EXAMPLES])
        log.log(
            logging.INFO if kind == "hidden_file" else logging.WARNING,
            "%s: skipped %d %s in %s, e.g. %s",
            where,
            len(paths),
            what[kind],
            source_path,
            examples,
        )


def _collect_file(
    collector: _Collector,
    file: Path,
    *,
    fmt: str,
    label: str,
    id_prefix: str,
    max_items: int | None,
    vectorised: bool,
) -> int:
    """Feed one file's items to the collector; returns how many were read. What was parsed is freed
    on return, while the cyclic collector is still paused (it would otherwise scan it all once)."""
    options = collector.options
    if vectorised and fmt == "conversations_json":
        # one JSON document: taken apart column-wise, no Python object per conversation
        columns = conversations_json_columns(
            file, options=options, label=label, id_prefix=id_prefix, max_items=max_items
        )
        collector.add_columns(columns)
        return columns.size
    items: list[RawConversation | RawReject] = []
    read = 0
    reader = READERS[fmt][0]  # type: ignore[index]
    for item in progress(
        reader(file, options=options, label=label, id_prefix=id_prefix),
        desc=f"ingest {collector.name}",
        every=50_000,
    ):
        if max_items is not None and read >= max_items:
            break
        read += 1
        if vectorised:
            items.append(item)
        else:
            collector.add_item(item)
    if items:
        collector.add_columns(ConversationColumns.from_items(items))
    return read


def read_source(
    source: Source,
    *,
    index: int = 0,
    same_role: Literal["merge", "drop_conversation"] = "merge",
    merge_separator: str = "\n",
    min_turns: int = 2,
    base_dir: Path | str = ".",
    vectorised: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame, SourceStats]:
    """One source -> (turns, rejects, stats). Raises IngestError when the source cannot be read at all.

    `vectorised=False` judges every conversation on its own (`_Collector.add`): the reference the
    column-wise checks are tested against, with the same result.
    """
    path = Path(base_dir) / source.path
    collector = _Collector(source, same_role=same_role, merge_separator=merge_separator, min_turns=min_turns)
    where = f"ingest.sources[{index}] (name {source.source_name!r}, format {source.format})"
    # hf_dataset: a path that is not there locally but reads as `owner/name` is a hub id
    hub_id = source.format == "hf_dataset" and not path.exists() and looks_like_hub_id(source.path)
    if not path.exists() and not hub_id:
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
    files, skipped = scan_source(path, source.format)
    collector.stats.skipped_files = {kind: len(paths) for kind, paths in skipped.items()}
    _log_skipped(where, source.path, source.format, skipped, path)
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
            if limit is not None and read >= limit:
                break
            try:
                read += _collect_file(
                    collector,
                    file,
                    fmt=source.format,
                    label=label,
                    id_prefix=id_prefix,
                    max_items=None if limit is None else limit - read,
                    vectorised=vectorised,
                )
            except TableLayoutError as exc:
                raise IngestError(f"{where}: {exc} (ingest.sources[{index}].options)") from None
            except SourceReadError as exc:
                if hub_id and source.optional:  # optional: a hub id that cannot be loaded is absent
                    log.warning("%s: optional source %s is absent; skipped (%s)", where, source.path, exc)
                    collector.stats.missing = 1
                    return collector.frame().pipe(conform), pl.DataFrame(schema=REJECTS_SCHEMA), collector.stats
                raise IngestError(f"{where}: {exc} (ingest.sources[{index}])") from None
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
    if collector.stats.conversations == 0:
        log.warning("%s", _empty_source_warning(where, collector.rejects))
    return turns, rejects, collector.stats


def _empty_source_warning(where: str, rejects: list[dict[str, str]]) -> str:
    """What to say of a source that gave no conversation: its reject reasons and the first reject."""
    if not rejects:
        return f"{where}: 0 conversations and no rejects: no records found; check its path and format"
    reasons = Counter(r["reason"] for r in rejects).most_common()
    first = rejects[0]
    return (
        f"{where}: 0 conversations; {len(rejects)} rejects ("
        + ", ".join(f"{reason}: {n}" for reason, n in reasons)
        + f"), the first at {first['location'][:200]}: {first['raw'][:160]}"
    )


def _reject_cross_source_duplicates(
    params: IngestParams,
    frames: list[pl.DataFrame],
    reject_frames: list[pl.DataFrame],
    stats: dict[str, SourceStats],
) -> None:
    """An id already taken by an earlier source (impossible with escaped, distinct source names; kept as
    a guard) rejects the later conversation as `duplicate_id` instead of merging their turns."""
    owner: dict[str, str] = {}
    for k, source in enumerate(params.sources):
        ids = frames[k]["conversation_id"].unique(maintain_order=True)
        clash = [cid for cid in ids.to_list() if cid in owner]
        if clash:
            name = source.source_name
            dropped = frames[k].filter(pl.col("conversation_id").is_in(clash))
            frames[k] = frames[k].filter(~pl.col("conversation_id").is_in(clash))
            rows = [
                {
                    "source": name,
                    "location": printable(f"{source.path}#{cid[len(global_id_prefix(name)):]}"),
                    "reason": "duplicate_id",
                    "raw": printable(f"conversation id {cid[:200]!r} is also in source {owner[cid]!r}"),
                }
                for cid in clash
            ]
            reject_frames[k] = pl.concat([reject_frames[k], pl.DataFrame(rows, schema=REJECTS_SCHEMA)])
            stats[name].conversations -= len(clash)
            stats[name].turns -= dropped.height
            stats[name].rejects += len(clash)
            log.warning("%s: %d conversation id(s) already used by another source rejected", name, len(clash))
        for cid in ids.to_list():
            owner.setdefault(cid, source.source_name)


def ingest(params: IngestParams, *, base_dir: Path | str = ".") -> IngestResult:
    """Every source -> one sorted turns table (ids `<escaped source>:<id>`), rejects and per-source counts."""
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
    _reject_cross_source_duplicates(params, frames, reject_frames, stats)
    # each source's frame is sorted already; one source needs no second sort of a million rows
    turns = frames[0] if len(frames) == 1 else sort_turns(pl.concat(frames, how="vertical"))
    return IngestResult(turns=turns, rejects=pl.concat(reject_frames, how="vertical"), stats=stats)


__all__ = [
    "DEFAULT_ROLE_MAP",
    "REJECT_REASONS",
    "SKIP_KINDS",
    "IngestError",
    "IngestResult",
    "SourceStats",
    "escape_id_part",
    "global_id_prefix",
    "ingest",
    "read_source",
    "scan_source",
    "source_files",
]
