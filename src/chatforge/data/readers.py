"""One reader per source format: raw conversations (not yet validated) or rejects, in file order.

A reader only understands its file layout. It yields `RawConversation`s with the role names and
contents exactly as found (role mapping, empty/non-string content, same-role runs and turn counts
are judged once, for every format alike, in `chatforge.data.ingest`), and `RawReject`s for records
it cannot even take apart (a line that is not JSON, a Cornell line without its fields, a message
without a role or content key, a zip or parquet file that does not open, ...); a reject's text
names what was found and what was expected, and quotes input only as a short prefix.

Messages are read with the first key present of role/from/speaker and content/value/text (or
options.role_key / content_key), whatever their list is called; OpenAI text-part lists are joined.

Conversation ids: ids the data carries (conversations JSON, CrossWOZ keys, feedback ids, a CSV
conversation column, Cornell's movie + first line id) are kept as they are; data without ids gets
its line number or position, prefixed with the file's relative path when the source is a folder
(`id_prefix`), so ids stay unique within a source.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import csv
import functools
import io
import itertools
import json
import logging
import operator
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from chatforge.params import SourceFormat, SourceOptions

log = logging.getLogger("chatforge.data.readers")

RAW_PREFIX_CHARS = 300  # the record excerpt a reject row's `raw` shows
QUOTE_CHARS = 80  # an input value (a role name, a column name, an id) quoted inside a message
# bounds on what one record may hold, each with its reject reason (README "What ingest promises"):
MAX_JSON_DEPTH = 100  # nested JSON arrays/objects per document or JSONL line: deeper is `too_deep`
MAX_CELL_CHARS = 1 << 20  # characters in one CSV/TSV cell (1,048,576): larger is `field_too_large`
# reject reasons the readers give for input that breaks a bound or a format's syntax (ingest counts them)
READER_REJECT_REASONS = (
    "unclosed_quote",  # a CSV/TSV quoted field that opens and never closes where a field can end
    "field_too_large",  # a CSV/TSV cell over MAX_CELL_CHARS characters
    "too_deep",  # JSON nested deeper than MAX_JSON_DEPTH (or YAML too deep to parse)
    "yaml_aliases",  # a YAML alias (*name): chatterbot corpora need none, and they can expand without bound
)


class RawConversation(NamedTuple):
    local_id: str
    location: str  # file:line or file#id, for reject rows
    roles: list[Any]  # role names as found; positional formats give user/assistant directly
    contents: list[Any]
    intent: Any = None  # the conversation's declared intent, if any
    lang: Any = None  # the conversation's declared language, if any
    turn_intents: list[str | None] | None = None  # per message (CrossWOZ acts, CSV intent column)
    raw: Any = None  # the record as read, shown (prefix) in a reject row
    # strings may hold lone surrogates (undecodable bytes of a leniently decoded file, or a \ud800-style
    # escape in JSON/YAML text): the conversation is judged message by message
    check_encoding: bool = False
    explicit_id: bool = True  # the id comes from the data (duplicates are then rejected)


class RawReject(NamedTuple):
    location: str
    reason: str
    raw: str


Item = RawConversation | RawReject


def raw_prefix(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return printable(text[:RAW_PREFIX_CHARS] + ("…" if len(text) > RAW_PREFIX_CHARS else ""))


def quoted(value: Any, limit: int = QUOTE_CHARS) -> str:
    """`repr` of a value found in the input, cut to `limit` characters (then "…"): a message never
    echoes unbounded input (a 40 MB line read as one CSV header cell, a role name that is a whole text)."""
    text = repr(value)
    return printable(text if len(text) <= limit else text[:limit] + "…")


def quoted_keys(record: dict[Any, Any], limit: int = 12) -> str:
    """The first keys of a record, each cut short: what a missing_field reject says was found."""
    keys = [quoted(k, 40) for k in itertools.islice(record, limit)]
    more = f", … ({len(record) - limit} more)" if len(record) > limit else ""
    return "[" + ", ".join(keys) + more + "]"


def utf16_encoding(data: bytes) -> str | None:
    """The UTF-16/32 codec `data` is written in, when it says so with a byte order mark (FF FE, FE FF,
    FF FE 00 00, 00 00 FE FF) or, without one, when NUL bytes fill every other byte of its start
    (ASCII text saved as UTF-16, e.g. by Excel's "Unicode text" or PowerShell); else None."""
    if data[:4] in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE):
        return "utf-32"
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    head = data[:4096]
    if len(head) >= 8 and head.count(0) * 3 >= len(head):
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd * 4 >= len(head) // 2 * 3 and even * 8 < odd:
            return "utf-16-le"
        if even * 4 >= len(head) // 2 * 3 and odd * 8 < even:
            return "utf-16-be"
    return None


def source_encoding(data: bytes, options: SourceOptions, default: str = "utf-8") -> str:
    """The codec to read `data` with: options.encoding, else UTF-16/32 when the bytes say so
    (`utf16_encoding`), else the format's `default`; with `encoding: auto`, utf-8 when the bytes
    decode as utf-8, else what charset-normalizer detects (on the first MiB), else `default`."""
    if options.encoding is None:
        return utf16_encoding(data) or default
    if options.encoding != "auto":
        return options.encoding
    if (wide := utf16_encoding(data)) is not None:
        return wide
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 1 << 20]).best()
    return codecs.lookup(best.encoding).name if best is not None else default


def printable(text: str) -> str:
    """`text` with lone surrogates written as \\udXXX escapes: UTF-8 (and so polars/parquet) cannot hold them."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encoding_hint(encoding: str) -> str:
    if encoding == "auto":
        return "not valid in the encoding detected for it; set options.encoding for this source (e.g. gbk, big5, iso-8859-1)"
    return f"not valid {encoding}; set options.encoding for this source (e.g. gbk, big5, iso-8859-1, or auto to detect it)"


# U+D800..U+DFFF: only ever half of a UTF-16 pair, never text on its own
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# the JSON (\uD800) and YAML (\uD800, \U0000D800) escapes that decode to one; json.loads and YAML let a
# lone one through (msgspec refuses it), so text without such an escape needs no per-string check
_SURROGATE_ESCAPE = re.compile(r"\\(?:u|U0000)[dD][89a-fA-F]")


def surrogate_hint(char: str, encoding: str) -> str:
    """Why a lone surrogate is there and what to do about it."""
    code = f"\\u{ord(char):04x}"
    if "\udc80" <= char <= "\udcff":  # the range a leniently decoded byte lands in
        return (
            f"holds {code}: a byte that is {encoding_hint(encoding)}; "
            "or, if the file spells that escape, repair or remove it in the source"
        )
    return (
        f"holds {code}, half of a UTF-16 surrogate pair (a broken escape); repair or remove it in the source"
    )


def holds_surrogates(*values: Any) -> bool:
    """Whether any string inside these (parsed JSON/YAML) values holds a lone surrogate."""
    for value in values:
        if isinstance(value, str):
            if not value.isascii() and LONE_SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            if holds_surrogates(*value.values()):
                return True
        elif isinstance(value, list) and holds_surrogates(*value):
            return True
    return False


# ------------------------------------------------------------------------------------ depth
# a JSON string (escapes included): brackets inside one do not nest
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> int | None:
    """The nesting depth of the JSON `text` when it is over `limit`, else None; found from the
    brackets outside strings before anything parses it (so neither json nor msgspec recurses into
    a 10,000-level document), in C-speed passes: text with at most `limit` brackets is not scanned."""
    if text.count("[") + text.count("{") <= limit:
        return None
    import numpy as np

    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    if len(brackets) <= limit:
        return None
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    depth = int(np.cumsum(steps).max())
    return depth if depth > limit else None


def _too_deep(location: str, depth: int | str, what: str = "document") -> RawReject:
    return RawReject(
        location,
        "too_deep",
        f"{what} nests {depth} levels of arrays/objects; at most {MAX_JSON_DEPTH} are read "
        "(a conversation needs 3): flatten it or remove it from the source",
    )


# ------------------------------------------------------------------------------------ decoding
def _malformed_json(label: str, text: str, exc: json.JSONDecodeError) -> RawReject:
    """The reject for a whole JSON document that does not parse: its line, and the text around the error."""
    return RawReject(f"{label}:{exc.lineno}", "malformed_json",
                     f"{exc.msg}: " + raw_prefix(text[max(0, exc.pos - 40) : exc.pos + 60]))


def decode_document(data: bytes, encoding: str) -> tuple[str, bool]:
    """Whole-file text; (text, lenient). Lenient text keeps undecodable bytes as lone surrogates so
    the good records of a partly mis-encoded file can still be read and the bad ones rejected."""
    try:
        text = data.decode(encoding)
        lenient = False
    except UnicodeDecodeError:
        text = data.decode(encoding, errors="surrogateescape")
        lenient = True
    return text.removeprefix("\ufeff"), lenient


def first_bad_line(data: bytes, encoding: str) -> int:
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1
    return 0


def iter_lines(data: bytes, encoding: str, label: str) -> Iterator[tuple[int, str] | RawReject]:
    """(line number, text) per line, 1-based; a line that does not decode strictly is a reject."""
    try:
        text = data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        # split on \n only: str.splitlines would also break on U+2028, \x1c, ... inside a record
        for number, line in enumerate(text.split("\n"), 1):
            yield number, line.removesuffix("\r")
        return
    for number, chunk in enumerate(data.split(b"\n"), 1):
        try:
            line = chunk.decode(encoding)
        except UnicodeDecodeError:
            yield RawReject(
                f"{label}:{number}",
                "bad_encoding",
                encoding_hint(encoding) + ": " + raw_prefix(chunk.decode(encoding, errors="replace")),
            )
            continue
        yield number, (line.removeprefix("\ufeff") if number == 1 else line).removesuffix("\r")


# --------------------------------------------------------------------------- JSON-based formats
# the key names OpenAI (role/content), ShareGPT (from/value) and others (speaker/text) give a message;
# a message is read with the first of each that it has, whatever the list around it is called
ROLE_KEYS = ("role", "from", "speaker")
CONTENT_KEYS = ("content", "value", "text")


def message_keys(options: SourceOptions) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(role keys, content keys) tried in order: options.role_key/content_key, else the common ones."""
    return (
        (options.role_key,) if options.role_key else ROLE_KEYS,
        (options.content_key,) if options.content_key else CONTENT_KEYS,
    )


def _pick(message: dict[str, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    """(whether any of `keys` is there, the value of the first one not null); a table row (parquet,
    datasets) holds every key of the column's struct, null where a message lacks it."""
    found = False
    for key in keys:
        if key in message:
            found = True
            if message[key] is not None:
                return True, message[key]
    return found, None


def _message_fields(
    messages: Any, role_keys: tuple[str, ...] = ROLE_KEYS, content_keys: tuple[str, ...] = CONTENT_KEYS
) -> tuple[list[Any], list[Any]] | str:
    """Roles and contents (OpenAI text-part lists joined) of a list of message objects, or what is
    wrong with it (the text of a missing_field reject: the keys found and the keys expected)."""
    if not isinstance(messages, list):
        return f"is {type(messages).__name__}, not a list of message objects"
    role_key, content_key = role_keys[0], content_keys[0]
    try:  # the usual case: every message has the first keys, with values
        roles = [m[role_key] for m in messages]
        contents = [m[content_key] for m in messages]
        if None in roles or None in contents:
            raise KeyError(role_key)
    except (KeyError, TypeError, IndexError):
        roles, contents = [], []
        for k, m in enumerate(messages):
            if not isinstance(m, dict):
                return f"message {k} is {type(m).__name__}, not an object: " + raw_prefix(m)
            has_role, role = _pick(m, role_keys)
            has_content, content = _pick(m, content_keys)
            if not (has_role and has_content):
                return (
                    f"message {k} has keys {quoted_keys(m)}; expected a role key ({', '.join(role_keys)}) "
                    f"and a content key ({', '.join(content_keys)}), or set options.role_key / options.content_key"
                )
            roles.append(role)
            contents.append(content)
    if any(type(c) is list for c in contents):
        contents = [_text_parts(c) for c in contents]
    return roles, contents


def _text_parts(content: Any) -> Any:
    """OpenAI content as [{"type": "text", "text": ...}, ...] becomes one string; other shapes pass as is."""
    if (
        isinstance(content, list)
        and content
        and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        )
    ):
        return "".join(p["text"] for p in content)
    return content


def _conversations_document(
    path: Path, options: SourceOptions, label: str
) -> tuple[list[Any], bool, bool] | RawReject:
    """The seed format's list of conversations, whether it was decoded leniently and whether its text
    holds an escape that may decode to a lone surrogate; or a reject for the file."""
    data = path.read_bytes()
    text, lenient = decode_document(data, source_encoding(data, options))
    if (depth := json_depth_exceeds(text)) is not None:
        return _too_deep(label, depth)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return _malformed_json(label, text, exc)
    except RecursionError:
        return _too_deep(label, f"over {MAX_JSON_DEPTH}")
    conversations = doc.get("conversations") if isinstance(doc, dict) else doc
    if not isinstance(conversations, list):
        found = f"an object with keys {quoted_keys(doc)}" if isinstance(doc, dict) else type(doc).__name__
        return RawReject(
            label, "missing_field", f'expected {{"conversations": [...]}}, found {found}: ' + raw_prefix(text)
        )
    return conversations, lenient, _SURROGATE_ESCAPE.search(text) is not None


def _explicit_id(cid: Any) -> bool:
    return isinstance(cid, (str, int)) and not isinstance(cid, bool) and str(cid) != ""


def _conversation_item(
    conv: Any,
    index: int,
    *,
    label: str,
    id_prefix: str,
    lenient: bool,
    escapes: bool = False,
    role_content_keys: tuple[tuple[str, ...], tuple[str, ...]] = (ROLE_KEYS, CONTENT_KEYS),
) -> Item:
    """One entry of the seed format's "conversations" list; `escapes`: the file spells a surrogate escape."""
    if not isinstance(conv, dict):
        return RawReject(
            f"{label}#{index}", "missing_field", "conversation is not an object: " + raw_prefix(conv)
        )
    cid = conv.get("id")
    explicit = _explicit_id(cid)
    local_id = str(cid) if explicit else f"{id_prefix}{index}"
    if "messages" not in conv:
        return RawReject(
            f"{label}#{local_id}",
            "missing_field",
            f'conversation has keys {quoted_keys(conv)}; expected "messages": [{{"role", "content"}}, ...]: '
            + raw_prefix(conv),
        )
    fields = _message_fields(conv["messages"], *role_content_keys)
    if isinstance(fields, str):
        return RawReject(f"{label}#{local_id}", "missing_field", f'"messages" {fields}: ' + raw_prefix(conv))
    return RawConversation(
        local_id,
        f"{label}#{local_id}",
        fields[0],
        fields[1],
        conv.get("intent"),
        conv.get("lang"),
        None,
        conv,
        lenient or (escapes and holds_surrogates(conv)),
        explicit,
    )


def read_conversations_json(
    path: Path, *, options: SourceOptions, label: str, id_prefix: str
) -> Iterator[Item]:
    """The seed format: {"conversations": [{"id", "messages": [{"role", "content"}], "intent"?, "lang"?}]}."""
    document = _conversations_document(path, options, label)
    if isinstance(document, RawReject):
        yield document
        return
    conversations, lenient, escapes = document
    keys = message_keys(options)
    for index, conv in enumerate(conversations):
        yield _conversation_item(
            conv,
            index,
            label=label,
            id_prefix=id_prefix,
            lenient=lenient,
            escapes=escapes,
            role_content_keys=keys,
        )


@dataclass
class ConversationColumns:
    """The items of one file column-wise, for checks that run over all messages at once.

    Positions 0..size-1 follow the file. The regular conversations (plain role/content messages, no
    per-turn intents, strictly decoded) are listed in `positions` with their fields, messages
    flattened in order (`lengths` says how many belong to each). Every other position (a reject, a
    conversation only the message-by-message path handles) is fetched with `item_at`, as are the
    regular ones when a reject needs their location or raw record.
    """

    size: int
    positions: list[int]
    local_ids: list[str]
    intents: list[Any]
    langs: list[Any]
    lengths: list[int]
    roles: list[Any]
    contents: list[Any]
    item_at: Callable[[int], Item]

    @classmethod
    def from_items(cls, items: list[Item]) -> ConversationColumns:
        regular = [
            (k, item)
            for k, item in enumerate(items)
            if isinstance(item, RawConversation) and item.turn_intents is None and not item.check_encoding
        ]
        return cls(
            size=len(items),
            positions=[k for k, _ in regular],
            local_ids=[item.local_id for _, item in regular],
            intents=[item.intent for _, item in regular],
            langs=[item.lang for _, item in regular],
            lengths=[len(item.roles) for _, item in regular],
            roles=list(itertools.chain.from_iterable(item.roles for _, item in regular)),
            contents=list(itertools.chain.from_iterable(item.contents for _, item in regular)),
            item_at=items.__getitem__,
        )


@functools.cache
def _typed_decoders() -> tuple[Any, Any] | None:
    """msgspec decoders for the usual shape of the seed format (text fields, ids text or integer),
    and for the raw bytes of each conversation; None without msgspec."""
    try:
        import msgspec
    except ImportError:
        return None

    # defstruct: real types, not the string annotations this module's `from __future__` would give
    message = msgspec.defstruct("Message", [("role", str | None, None), ("content", str | None, None)])
    conversation = msgspec.defstruct(
        "Conversation",
        [
            ("id", str | int | None, None),
            ("intent", str | None, None),
            ("lang", str | None, None),
            ("messages", list[message] | None, None),  # type: ignore[valid-type]
        ],
    )
    document = msgspec.defstruct("Document", [("conversations", list[conversation])])  # type: ignore[valid-type]
    raw_document = msgspec.defstruct("RawDocument", [("conversations", list[msgspec.Raw])])
    return (
        msgspec.json.Decoder(document | list[conversation]),  # type: ignore[valid-type]
        msgspec.json.Decoder(raw_document | list[msgspec.Raw]),
    )


def _typed_columns(
    data: bytes, *, options: SourceOptions, label: str, id_prefix: str, max_items: int | None
) -> ConversationColumns | None:
    """Columns straight from msgspec structs (no dict per message, ~3x faster than json.loads), or
    None when the file is not plain UTF-8 JSON of the usual shape (a number where text belongs, a
    BOM, NaN, ...): json.loads then reads it as the row-wise reader does."""
    decoders = _typed_decoders()
    if (
        decoders is None
        or options.role_key  # msgspec reads role/content only; other keys go message by message
        or options.content_key
        or codecs.lookup(source_encoding(data, options)).name != "utf-8"
    ):
        return None
    import msgspec

    try:
        doc = decoders[0].decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    conversations = doc if isinstance(doc, list) else doc.conversations
    if max_items is not None:
        conversations = conversations[:max_items]
    raw: list[Any] = []

    def item_at(index: int) -> Item:
        # the reader's item needs the record as json.loads gives it; parse just this conversation's bytes
        if not raw:
            spans = decoders[1].decode(data)
            raw.append(spans if isinstance(spans, list) else spans.conversations)
        conv = json.loads(bytes(raw[0][index]).decode("utf-8"))
        return _conversation_item(conv, index, label=label, id_prefix=id_prefix, lenient=False)

    get = operator.attrgetter
    message_lists = list(map(get("messages"), conversations))
    positions, convs = list(range(len(conversations))), conversations
    if None in message_lists:  # no "messages": a reject, through item_at
        positions = [k for k, ms in enumerate(message_lists) if ms is not None]
        convs = [conversations[k] for k in positions]
        message_lists = [message_lists[k] for k in positions]
    ids = list(map(get("id"), convs))
    if {*map(type, ids)} != {str} or "" in ids:
        ids = [
            cid if type(cid) is str and cid else str(cid) if _explicit_id(cid) else f"{id_prefix}{index}"
            for index, cid in zip(positions, ids, strict=True)
        ]
    messages = list(itertools.chain.from_iterable(message_lists))
    return ConversationColumns(
        size=len(conversations),
        positions=positions,
        local_ids=ids,
        intents=list(map(get("intent"), convs)),
        langs=list(map(get("lang"), convs)),
        lengths=list(map(len, message_lists)),
        roles=list(map(get("role"), messages)),
        contents=list(map(get("content"), messages)),
        item_at=item_at,
    )


def conversations_json_columns(
    path: Path, *, options: SourceOptions, label: str, id_prefix: str, max_items: int | None = None
) -> ConversationColumns:
    """`read_conversations_json` column-wise: the same items at the same positions, without a Python
    object per conversation where the file allows (a million turns in about a second).

    Conversations whose shape is not the usual one (not an object, messages not a list of
    objects), those holding a lone surrogate and every conversation of a leniently decoded file are
    left to `item_at`, which builds exactly what the row-wise reader yields.
    """
    data = path.read_bytes()
    if b"[" in data and json_depth_exceeds(data.decode("utf-8", errors="ignore")) is not None:
        # msgspec is not asked: the row-wise reader's document check gives the `too_deep` reject
        return ConversationColumns.from_items(
            list(read_conversations_json(path, options=options, label=label, id_prefix=id_prefix))
        )
    typed = _typed_columns(data, options=options, label=label, id_prefix=id_prefix, max_items=max_items)
    if typed is not None:
        return typed
    if options.role_key or options.content_key:  # the columns below read role/content
        return ConversationColumns.from_items(
            list(
                itertools.islice(
                    read_conversations_json(path, options=options, label=label, id_prefix=id_prefix),
                    max_items,
                )
            )
        )
    document = _conversations_document(path, options, label)
    if isinstance(document, RawReject):
        return ConversationColumns(1, [], [], [], [], [], [], [], lambda _: document)
    conversations, lenient, escapes = document
    if max_items is not None:
        conversations = conversations[:max_items]

    def item_at(index: int) -> Item:
        return _conversation_item(
            conversations[index], index, label=label, id_prefix=id_prefix, lenient=lenient, escapes=escapes
        )

    columns = ConversationColumns(len(conversations), [], [], [], [], [], [], [], item_at)
    if lenient:  # undecodable bytes are found message by message
        return columns
    regular = [
        type(c) is dict
        and type(ms := c.get("messages")) is list
        and all(type(m) is dict for m in ms)
        # a lone surrogate (msgspec refused it, json.loads did not) is found message by message
        and not (escapes and holds_surrogates(c))
        for c in conversations
    ]
    columns.positions = list(itertools.compress(range(len(conversations)), regular))
    convs = list(itertools.compress(conversations, regular))
    columns.local_ids = [
        cid if type(cid) is str and cid else str(cid) if _explicit_id(cid) else f"{id_prefix}{index}"
        for index, cid in zip(columns.positions, (c.get("id") for c in convs), strict=True)
    ]
    columns.intents = [c.get("intent") for c in convs]
    columns.langs = [c.get("lang") for c in convs]
    columns.lengths = [len(c["messages"]) for c in convs]
    messages = list(itertools.chain.from_iterable(c["messages"] for c in convs))
    columns.roles = [m.get("role") for m in messages]
    columns.contents = [m.get("content") for m in messages]
    return columns


def _jsonl_records(
    path: Path, options: SourceOptions, label: str, data: bytes | None = None
) -> Iterator[tuple[str, int, dict[str, Any], bool] | RawReject]:
    """(location, line number, object, whether a string in it holds a lone surrogate) per JSON line,
    or a reject."""
    data = path.read_bytes() if data is None else data
    for item in iter_lines(data, source_encoding(data, options), label):
        if isinstance(item, RawReject):
            yield item
            continue
        number, line = item
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; not a record
        if (depth := json_depth_exceeds(line)) is not None:
            yield _too_deep(f"{label}:{number}", depth, "line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawReject(f"{label}:{number}", "malformed_json", f"{exc.msg}: " + raw_prefix(line))
            continue
        except RecursionError:
            yield _too_deep(f"{label}:{number}", f"over {MAX_JSON_DEPTH}", "line")
            continue
        if not isinstance(obj, dict):
            yield RawReject(
                f"{label}:{number}", "missing_field", "line is not a JSON object: " + raw_prefix(line)
            )
            continue
        # the regex first: walking every string of every line would cost more than parsing it
        yield (
            f"{label}:{number}",
            number,
            obj,
            _SURROGATE_ESCAPE.search(line) is not None and holds_surrogates(obj),
        )


def _json_records(
    path: Path, options: SourceOptions, label: str
) -> Iterator[tuple[str, int, dict[str, Any], bool] | RawReject]:
    """The records of a JSON-array file ([{...}, {...}], locations file#index, ids their index) or of
    a JSONL file (one object per line, locations file:line, ids their line number), decided by the
    first character of the text, whatever the file is called."""
    data = path.read_bytes()
    encoding = source_encoding(data, options)
    head = data[:64].decode(encoding, errors="ignore").lstrip("\ufeff \t\r\n")
    if not head.startswith("["):
        yield from _jsonl_records(path, options, label, data)
        return
    text, lenient = decode_document(data, encoding)
    if (depth := json_depth_exceeds(text)) is not None:
        yield _too_deep(label, depth)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        yield _malformed_json(label, text, exc)
        return
    except RecursionError:
        yield _too_deep(label, f"over {MAX_JSON_DEPTH}")
        return
    escapes = _SURROGATE_ESCAPE.search(text) is not None
    for index, obj in enumerate(records):
        if not isinstance(obj, dict):
            yield RawReject(
                f"{label}#{index}",
                "missing_field",
                f"record is {type(obj).__name__}, not a JSON object: " + raw_prefix(obj),
            )
            continue
        yield f"{label}#{index}", index, obj, lenient or (escapes and holds_surrogates(obj))


def _chat_record(
    obj: dict[str, Any],
    location: str,
    position: int,
    *,
    options: SourceOptions,
    id_prefix: str,
    required_id: bool,
    surrogates: bool,
) -> Item:
    """OpenAI {"messages": [...]} or ShareGPT {"conversations": [...], "system"?} (or the list named
    by options.messages_column); each message read with the common role/content key names."""
    list_key = options.messages_column or next((k for k in ("messages", "conversations") if k in obj), None)
    cid = obj.get("id")
    explicit = _explicit_id(cid)
    if list_key is None or list_key not in obj or (required_id and not explicit):
        what = '"id" and ' if required_id and not explicit else ""
        lists = f'"{options.messages_column}"' if options.messages_column else '"messages" or "conversations"'
        return RawReject(
            location,
            "missing_field",
            f"record has keys {quoted_keys(obj)}; need {what}{lists} (a list of messages): "
            + raw_prefix(obj),
        )
    fields = _message_fields(obj[list_key], *message_keys(options))
    if isinstance(fields, str):
        return RawReject(location, "missing_field", f'"{list_key}" {fields}: ' + raw_prefix(obj))
    roles, contents = fields
    system = obj.get("system")
    if list_key != "messages" and isinstance(system, str) and system.strip():
        roles, contents = ["system", *roles], [system, *contents]  # ShareGPT's system prompt
    local_id = str(cid) if explicit else f"{id_prefix}{position}"
    return RawConversation(
        local_id,
        location,
        roles,
        contents,
        obj.get("intent"),
        obj.get("lang"),
        None,
        obj,
        surrogates,
        explicit,
    )


def read_messages_jsonl(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """OpenAI {"messages": [{"role", "content"}]} or ShareGPT {"conversations": [{"from", "value"}],
    "system"?} records, one per line (JSONL) or all in one JSON array: a file whose text starts
    with "[" is read as an array (locations file#index), any other as JSONL (file:line)."""
    for rec in _json_records(path, options, label):
        yield (
            rec
            if isinstance(rec, RawReject)
            else _chat_record(
                rec[2],
                rec[0],
                rec[1],
                options=options,
                id_prefix=id_prefix,
                required_id=False,
                surrogates=rec[3],
            )
        )


def read_feedback(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """`chatforge feedback export` lines: {"id", "messages", "intent", "lang", "rating", "created_at"}."""
    for rec in _jsonl_records(path, options, label):
        yield (
            rec
            if isinstance(rec, RawReject)
            else _chat_record(
                rec[2],
                rec[0],
                rec[1],
                options=options,
                id_prefix=id_prefix,
                required_id=True,
                surrogates=rec[3],
            )
        )


def _alpaca_record(
    obj: dict[str, Any],
    location: str,
    position: int,
    *,
    options: SourceOptions,
    id_prefix: str,
    surrogates: bool,
) -> Item:
    """One alpaca record as LLaMA-Factory reads it: [system], the history pairs, then the user turn
    (instruction and input joined by a newline, each only when non-empty) and the output."""
    cols = options.columns
    absent = [k for k in (cols.prompt, cols.response) if k not in obj]
    if absent:
        return RawReject(
            location,
            "missing_field",
            f"record has keys {quoted_keys(obj)}; expected {quoted(cols.prompt, 40)} and {quoted(cols.response, 40)} "
            "(options.columns.prompt / .response), optionally "
            + ", ".join(quoted(k, 40) for k in (cols.query, cols.system, cols.history) if k)
            + ": "
            + raw_prefix(obj),
        )
    text: dict[str, str] = {}
    for key in (cols.prompt, cols.query, cols.response, cols.system):
        if key is None:
            continue
        value = obj.get(key)
        if value is None and key in (cols.query, cols.system):
            continue  # optional and absent
        if not isinstance(value, str):
            return RawReject(
                location,
                "non_string_content",
                f"record key {quoted(key, 40)} is {type(value).__name__}, expected text: " + raw_prefix(obj),
            )
        text[key] = value
    roles: list[Any] = []
    contents: list[Any] = []
    system = text.get(cols.system) if cols.system else None
    if system and system.strip():
        roles.append("system")
        contents.append(system)
    history = obj.get(cols.history) if cols.history else None
    if history is not None:
        if not isinstance(history, list):
            return RawReject(
                location,
                "missing_field",
                f"record key {quoted(cols.history, 40)} is {type(history).__name__}, expected a list of "
                "[user, assistant] pairs: " + raw_prefix(obj),
            )
        for k, pair in enumerate(history):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                return RawReject(
                    location,
                    "missing_field",
                    f"record key {quoted(cols.history, 40)} entry {k} is not a [user, assistant] pair: "
                    + raw_prefix(pair),
                )
            roles += ["user", "assistant"]
            contents += list(pair)
    query = text.get(cols.query) if cols.query else None
    roles += ["user", "assistant"]
    contents += ["\n".join(t for t in (text[cols.prompt], query) if t), text[cols.response]]
    cid = obj.get("id")
    explicit = _explicit_id(cid)
    return RawConversation(
        str(cid) if explicit else f"{id_prefix}{position}",
        location,
        roles,
        contents,
        obj.get("intent"),
        obj.get("lang"),
        None,
        obj,
        surrogates,
        explicit,
    )


def read_alpaca(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """Alpaca records (LLaMA-Factory): {"instruction", "input"?, "output", "system"?, "history"?}, in
    one JSON array or one per line (decided as for messages_jsonl); keys renamed by options.columns."""
    for rec in _json_records(path, options, label):
        yield (
            rec
            if isinstance(rec, RawReject)
            else _alpaca_record(
                rec[2], rec[0], rec[1], options=options, id_prefix=id_prefix, surrogates=rec[3]
            )
        )


def _crosswoz_turn_intent(acts: Any) -> str | None:
    """The domain of the turn's first non-General act (餐馆, 景点, 酒店, ...); greetings/thanks name none."""
    if not isinstance(acts, list):
        return None
    for act in acts:
        if (
            isinstance(act, list)
            and len(act) >= 2
            and act[0] != "General"
            and isinstance(act[1], str)
            and act[1]
        ):
            return act[1]
    return None


UNREADABLE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError)


def _crosswoz_documents(path: Path, label: str) -> Iterator[tuple[str, bytes] | RawReject]:
    """(label, bytes) per JSON document: the file, or each .json member of a .zip; an archive (or a
    member) that cannot be opened is an `unreadable_file` reject, and the source's other files are read."""
    if path.suffix != ".zip":
        yield label, path.read_bytes()
        return
    try:
        archive = zipfile.ZipFile(path)
    except UNREADABLE_ERRORS as exc:
        size = path.stat().st_size
        yield RawReject(
            label,
            "unreadable_file",
            f"not a readable zip archive ({size} bytes; {type(exc).__name__}: {quoted(str(exc))}): "
            "an empty or truncated download? Fetch it again or remove it from the source",
        )
        return
    with archive:
        members = sorted(
            n for n in archive.namelist() if n.endswith(".json") and not n.startswith("__MACOSX")
        )
        for member in members:
            try:
                data = archive.read(member)
            except UNREADABLE_ERRORS as exc:  # a truncated member, a bad CRC, encryption
                yield RawReject(
                    f"{label}!{member}",
                    "unreadable_file",
                    f"zip member cannot be read ({type(exc).__name__}: {quoted(str(exc))}); "
                    "fetch the archive again or remove it from the source",
                )
                continue
            yield f"{label}!{member}", data


def read_crosswoz(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """CrossWOZ: {dialogue_id: {"messages": [{"role": "usr"|"sys", "content", "dialog_act": [...]}]}},
    each act being [intent_type, domain, slot, value].

    Intent: each user turn gets the domain of its first non-General dialogue act (餐馆, 景点, 酒店,
    地铁, 出租); a turn without one (a follow-up, thanks) keeps the latest domain of the dialogue so
    far. The conversation's intent is the first domain named in a user turn's acts (the task the
    user opens with); assistant turns and leading domain-less user turns (a bare greeting) carry it.
    """
    for document in _crosswoz_documents(path, label):
        if isinstance(document, RawReject):
            yield document
            continue
        doc_label, data = document
        text, lenient = decode_document(data, source_encoding(data, options))
        if (depth := json_depth_exceeds(text)) is not None:
            yield _too_deep(doc_label, depth)
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            yield _malformed_json(doc_label, text, exc)
            continue
        except RecursionError:
            yield _too_deep(doc_label, f"over {MAX_JSON_DEPTH}")
            continue
        if not isinstance(doc, dict):
            yield RawReject(
                doc_label, "missing_field", "expected an object keyed by dialogue id: " + raw_prefix(text)
            )
            continue
        escapes = _SURROGATE_ESCAPE.search(text) is not None
        for dialogue_id, dialogue in doc.items():
            messages = dialogue.get("messages") if isinstance(dialogue, dict) else None
            fields = _message_fields(messages, ("role",), ("content",))
            if isinstance(fields, str):
                yield RawReject(
                    f"{doc_label}#{dialogue_id}",
                    "missing_field",
                    f'"messages" {fields}: ' + raw_prefix(dialogue),
                )
                continue
            turn_intents, topic, opening = [], None, None
            for m in messages:  # type: ignore[union-attr]
                domain = _crosswoz_turn_intent(m.get("dialog_act"))
                if opening is None and m.get("role") in ("usr", "user"):
                    opening = domain
                # a turn without a domain act (a follow-up question, thanks) stays on the current topic
                topic = domain or topic
                turn_intents.append(topic)
            yield RawConversation(
                str(dialogue_id),
                f"{doc_label}#{dialogue_id}",
                fields[0],
                fields[1],
                opening,
                None,
                turn_intents,
                dialogue,
                lenient or (escapes and holds_surrogates(dialogue_id, dialogue)),
                True,
            )


# ---------------------------------------------------------------------------- line-based formats
_EOU = re.compile(r"\s*__eou__\s*")
_LAST_EOU = re.compile(r"__eou__(?!.*__eou__)", re.S)
_LABEL_IDS = re.compile(r"\d+(?: +\d+)*")


def _dailydialog_labels(labels: list[str], utterances: int) -> str | None:
    """What is wrong with a line's label fields (topic [, acts, emotions]), or None: one topic
    token, then one act and one emotion number per utterance, as the dataset's files align them."""
    if len(labels) > 3:
        return f"{len(labels)} TAB-separated fields after the last __eou__, expected at most 3 (topic, acts, emotions)"
    topic = labels[0].strip()
    if not topic or len(topic.split()) != 1:
        return f"the topic field after the last __eou__ is {quoted(topic)}, expected one label such as 1"
    for name, field in zip(("acts", "emotions"), labels[1:]):
        ids = field.strip()
        if not _LABEL_IDS.fullmatch(ids) or len(ids.split()) != utterances:
            return (
                f"the {name} field is {quoted(ids)}, expected {utterances} space-separated numbers "
                "(one per utterance)"
            )
    return None


def read_dailydialog(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """`utt __eou__ utt __eou__ [TAB topic [TAB acts TAB emotions]]`; speakers alternate, first is the user.

    The label fields start at the first TAB after the last `__eou__`: a TAB before it is whitespace
    inside an utterance. Labels that do not parse (more than 3 fields, a topic that is not one
    token, acts/emotions that are not one number per utterance) make the line a `malformed_line`
    reject rather than a garbage intent.
    """
    data = path.read_bytes()
    for item in iter_lines(data, source_encoding(data, options), label):
        if isinstance(item, RawReject):
            yield item
            continue
        number, line = item
        if not line.strip():
            continue
        last = _LAST_EOU.search(line)
        tab = line.find("\t", last.end() if last else 0)
        text, labels = (line, []) if tab < 0 else (line[:tab], line[tab + 1 :].split("\t"))
        utterances = _EOU.split(text.strip())
        if utterances and utterances[-1] == "":
            utterances.pop()  # the closing __eou__ ends the last utterance, it does not start a new one
        utterances = [u.strip() for u in utterances]
        problem = _dailydialog_labels(labels, len(utterances)) if labels else None
        if problem is not None:
            yield RawReject(
                f"{label}:{number}",
                "malformed_line",
                f"{problem}; a line is `utt __eou__ utt __eou__` then optionally TAB topic TAB acts TAB "
                "emotions: " + raw_prefix(line),
            )
            continue
        topic = labels[0].strip() if labels else ""
        intent = (options.topic_names.get(topic) or f"topic_{topic}") if topic else None
        roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(utterances))]
        yield RawConversation(
            f"{id_prefix}{number}",
            f"{label}:{number}",
            roles,
            utterances,
            intent,
            None,
            None,
            line,
            False,
            False,
        )


_SEP = "+++$+++"
_LINE_ID = re.compile(r"^L\d+$")


def read_cornell(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """Cornell Movie-Dialogs: movie_lines.txt (lineID, characterID, movieID, name, text) and
    movie_conversations.txt (char1, char2, movieID, "['L194', 'L195', ...]"), fields split by ` +++$+++ `.

    The character who speaks first is the user, the other one the assistant; a character speaking
    twice in a row is a same-role run like in any other format.
    """
    lines_data = (path / "movie_lines.txt").read_bytes()
    encoding = source_encoding(lines_data, options, "iso-8859-1")
    lines_label, convs_label = f"{label}/movie_lines.txt", f"{label}/movie_conversations.txt"
    utterances: dict[str, tuple[str, str]] = {}
    for item in iter_lines(lines_data, encoding, lines_label):
        if isinstance(item, RawReject):
            yield item
            continue
        number, line = item
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(_SEP, 4)]
        if len(parts) != 5 or not _LINE_ID.match(parts[0]):
            yield RawReject(
                f"{lines_label}:{number}",
                "malformed_line",
                f"expected 5 fields separated by ' {_SEP} ': " + raw_prefix(line),
            )
            continue
        utterances[parts[0]] = (parts[1], parts[4])
    for item in iter_lines((path / "movie_conversations.txt").read_bytes(), encoding, convs_label):
        if isinstance(item, RawReject):
            yield item
            continue
        number, line = item
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(_SEP, 3)]
        line_ids = None
        if len(parts) == 4:
            try:
                line_ids = ast.literal_eval(parts[3])  # a Python list literal; literal_eval runs no code
            except (ValueError, SyntaxError):
                line_ids = None
        if not isinstance(line_ids, list) or not line_ids or not all(isinstance(i, str) for i in line_ids):
            yield RawReject(
                f"{convs_label}:{number}",
                "malformed_line",
                "expected char1, char2, movie and a list like ['L1', 'L2']: " + raw_prefix(line),
            )
            continue
        missing = [i for i in line_ids if i not in utterances]
        if missing:
            yield RawReject(
                f"{convs_label}:{number}",
                "dangling_reference",
                f"line ids {quoted(missing[:5])} not in movie_lines.txt: " + raw_prefix(line),
            )
            continue
        first_speaker = utterances[line_ids[0]][0]
        roles = ["user" if utterances[i][0] == first_speaker else "assistant" for i in line_ids]
        contents = [utterances[i][1] for i in line_ids]
        local_id = f"{parts[2]}_{line_ids[0]}"
        yield RawConversation(
            local_id, f"{convs_label}:{number}", roles, contents, None, None, None, line, False, True
        )


# --------------------------------------------------------------------------------- tabular/YAML
def _cell_text(value: Any) -> str | None:
    """A label cell (intent, conversation key) as stripped text; None when empty or null."""
    return None if value is None else (str(value).strip() or None)


# one exchange row: (number, location, utterance, response, intent, conversation key, raw record, raw text)
Exchange = tuple[int, str, Any, Any, Any, Any, Any, str]


def _exchange_items(
    rows: Iterator[Exchange | RawReject], *, options: SourceOptions, id_prefix: str, lenient: bool
) -> Iterator[Item]:
    """One conversation per exchange (utterance -> response), or per `conversation_column` value
    (its rows in order, at the place of its first row)."""
    groups: dict[str, list[Any]] = {}
    for row in rows:
        if isinstance(row, RawReject):
            yield row
            continue
        number, location, utterance, response, intent, key, raw, shown = row
        intent = _cell_text(intent)
        if options.conversation_column is None:
            yield RawConversation(
                f"{id_prefix}{number}",
                location,
                ["user", "assistant"],
                [utterance, response],
                None,
                None,
                [intent, None],
                raw,
                lenient,
                False,
            )
            continue
        key = _cell_text(key)
        if not key:
            yield RawReject(
                location, "missing_field", f"empty {options.conversation_column!r}: " + raw_prefix(shown)
            )
            continue
        group = groups.setdefault(key, [location, [], [], [], []])
        group[1] += ["user", "assistant"]
        group[2] += [utterance, response]
        group[3] += [intent, None]
        group[4].append(raw)
    for key, (location, roles, contents, intents, raws) in groups.items():
        yield RawConversation(key, location, roles, contents, None, None, intents, raws, lenient, True)


def _table_records(text: str, delimiter: str, label: str) -> Iterator[tuple[int, list[str]] | RawReject]:
    """(physical line the record starts on, cells) per CSV/TSV record of `text`, header first, or a reject.

    Parsed strictly, so that a quote that opens and never closes where a field can end is found:
    the rest of the file would otherwise become one cell. A multi-line record that fails so is an
    `unclosed_quote` reject at the line it started on, and the lines after that one are read again
    as rows; a one-line record that fails only strictly (`"a"b`) is read leniently as before. A
    cell over MAX_CELL_CHARS is a `field_too_large` reject for its row.
    """
    lines = list(io.StringIO(text, newline=""))
    # records read across lines, and their continuation lines that would read as rows on their own
    # (a delimiter, no quote): the physical-lines check, reported once per file (a quote that a
    # later stray quote closes swallows rows without any parse error)
    spanning: list[tuple[int, int, int]] = []  # (first line, last line, row-like lines inside)
    try:
        yield from _table_records_from(lines, delimiter, label, spanning)
    finally:
        if spanning:
            held = sum(k for _, _, k in spanning)
            first, last, _ = spanning[0]
            log.warning(
                "%s: %d record(s) span several lines and hold %d line(s) that read as rows on their own "
                "(the first: lines %d-%d); if those are rows, a quote opened on line %d is not closed "
                "where it should be", label, len(spanning), held, first, last, first,
            )


def _table_records_from(lines: list[str], delimiter: str, label: str,
                        spanning: list[tuple[int, int, int]]) -> Iterator[tuple[int, list[str]] | RawReject]:
    start = 0  # index of the next line to parse
    while start < len(lines):
        reader = csv.reader(itertools.islice(lines, start, None), delimiter=delimiter, strict=True)
        first = start  # index of the line the current record starts on
        try:
            for row in reader:
                end = start + reader.line_num  # index after the record's last line
                if end - first > 1 and (rowlike := sum(
                        '"' not in line and delimiter in line for line in lines[first + 1:end])):
                    spanning.append((first + 1, end, rowlike))
                yield first + 1, row
                first = end
            return
        except csv.Error as exc:
            last = start + reader.line_num  # 1-based number of the line the error was found on
            message = str(exc)
            if "field larger than field limit" in message:
                yield RawReject(
                    f"{label}:{first + 1}",
                    "field_too_large",
                    f"a cell of the row starting on line {first + 1} is over {MAX_CELL_CHARS:,} characters; "
                    "split or shorten it (or remove the row)",
                )
                start = last  # the rest of that line is lost with the cell; a quoted cell's lines are skipped
                continue
            if last - first > 1 or "unexpected end of data" in message:
                yield RawReject(
                    f"{label}:{first + 1}",
                    "unclosed_quote",
                    f"line {first + 1} opens a quoted field that does not close where a field can end "
                    f"(read on to line {last}: {message}); close the quote, or double a quote inside a "
                    'quoted field ("") - the lines after it were read as rows again: '
                    + raw_prefix(lines[first]),
                )
            else:  # one line, wrong only strictly (text after a closing quote): read as csv always did
                yield first + 1, next(csv.reader([lines[first]], delimiter=delimiter))
            start = first + 1


def _cells_over_bound(row: list[str]) -> bool:
    return any(len(cell) > MAX_CELL_CHARS for cell in row)


def _field_limit(text: str) -> Any:
    """csv's field limit raised to hold any cell of `text` (a cell over MAX_CELL_CHARS is then
    rejected by its row, not by a csv.Error that would end the file), restored afterwards."""

    @contextlib.contextmanager
    def raised() -> Iterator[None]:
        old = csv.field_size_limit()
        csv.field_size_limit(max(old, len(text) + 1))  # the text is in memory already
        try:
            yield
        finally:
            csv.field_size_limit(old)

    return raised()


def _workbook_kind(data: bytes) -> str | None:
    """'an Excel workbook (.xlsx)' and the like when `data` is a spreadsheet file, not delimited text."""
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
        except UNREADABLE_ERRORS:
            return "a zip archive"
        if "xl/workbook.xml" in names:
            return "an Excel workbook (.xlsx)"
        if "content.xml" in names:
            return "an OpenDocument spreadsheet (.ods)"
        return "a zip archive"
    if data[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        return "an Excel 97-2003 workbook (.xls)"
    return None


SNIFF_CHARS = 4096  # a header line longer than this is not a header: the hint looks at its start


def _delimiter_hint(header_line: str, delimiter: str, wanted: list[str]) -> str | None:
    """'looks `;`-separated: set options.delimiter: ";"' when the header line splits on another
    separator into the configured columns (or, failing that, csv.Sniffer names another one)."""
    for other in (";", "\t", ",", "|"):
        if other == delimiter:
            continue
        cells = [c.strip().strip('"') for c in header_line.rstrip("\r\n").split(other)]
        if len(cells) > 1 and all(w in cells for w in wanted):
            break
    else:
        try:  # on the first SNIFF_CHARS only: csv.Sniffer's quote regex takes tens of seconds on a 400 KB line
            other = csv.Sniffer().sniff(header_line[:SNIFF_CHARS], delimiters=";\t,|").delimiter
        except csv.Error:
            return None
        if other == delimiter or len(header_line.split(other)) < 2:
            return None
    shown = "\\t" if other == "\t" else other
    return f"The header looks {shown!r}-separated: set options.delimiter: {json.dumps(other)} for this source."


def _read_table(
    path: Path, *, options: SourceOptions, label: str, id_prefix: str, delimiter: str
) -> Iterator[Item]:
    """One row per exchange (utterance -> response); rows sharing `conversation_column` form one dialogue."""
    data = path.read_bytes()
    workbook = _workbook_kind(data)
    if workbook is not None:
        yield RawReject(
            label,
            "unreadable_file",
            f"{workbook}, not {'comma' if delimiter == ',' else 'TAB'}-separated text: open it in "
            "Excel or LibreOffice and save it as \"CSV UTF-8 (comma delimited)\" (.csv, format csv), "
            "then point path at that file",
        )
        return
    delimiter = options.delimiter or delimiter
    encoding = source_encoding(data, options)
    text, lenient = decode_document(data, encoding)
    with _field_limit(text):
        records = list(_table_records(text, delimiter, label))
    if not records:
        return
    first = records[0]
    if isinstance(first, RawReject):  # the header itself never closes its quote
        yield first
        records = records[1:]
        first = next((r for r in records if not isinstance(r, RawReject)), None)
        if first is None:
            yield from records
            return
        records = records[records.index(first):]
    header = [h.strip() for h in first[1]]
    records = records[1:]
    wanted = {"utterance_column": options.utterance_column, "response_column": options.response_column}
    if options.conversation_column:
        wanted["conversation_column"] = options.conversation_column
    absent = {k: v for k, v in wanted.items() if v not in header}
    if absent:
        undecodable = None
        if lenient:  # the header (or a row) holds bytes that are not `encoding`: say so first
            undecodable = first_bad_line(data, encoding)
        hint = _delimiter_hint(text.split("\n", 1)[0], delimiter, list(wanted.values()))
        raise TableLayoutError(
            label, absent, header, encoding=encoding, undecodable_line=undecodable, hint=hint
        )
    u, r = header.index(options.utterance_column), header.index(options.response_column)
    i = header.index(options.intent_column) if options.intent_column in header else None
    c = header.index(options.conversation_column) if options.conversation_column else None
    needed = max(x for x in (u, r, i, c) if x is not None)

    def exchanges() -> Iterator[Exchange | RawReject]:
        for record in records:
            if isinstance(record, RawReject):
                yield record
                continue
            number, row = record
            if not any(cell.strip() for cell in row):
                if len(row) > 1:  # separators with nothing between them: a row, not a blank line
                    yield RawReject(f"{label}:{number}", "empty_content",
                                    f"row has {len(row)} fields and all are empty: " + raw_prefix(delimiter.join(row)))
                continue  # a blank line (or only spaces) separates nothing: skipped
            if _cells_over_bound(row):
                yield RawReject(
                    f"{label}:{number}",
                    "field_too_large",
                    f"a cell of this row is over {MAX_CELL_CHARS:,} characters "
                    f"({max(map(len, row)):,}); split or shorten it (or remove the row)",
                )
                continue
            if len(row) <= needed:
                yield RawReject(
                    f"{label}:{number}",
                    "malformed_line",
                    f"row has {len(row)} fields, the header {len(header)}: "
                    + raw_prefix(delimiter.join(row)),
                )
                continue
            yield (
                number,
                f"{label}:{number}",
                row[u],
                row[r],
                row[i] if i is not None else None,
                row[c] if c is not None else None,
                row,
                delimiter.join(row),
            )

    yield from _exchange_items(exchanges(), options=options, id_prefix=id_prefix, lenient=lenient)


class TableLayoutError(ValueError):
    """A CSV/TSV header (or a table's columns) without the configured columns: a params problem, not a bad row."""

    def __init__(
        self,
        label: str,
        absent: dict[str, str],
        header: list[str],
        *,
        encoding: str | None = None,
        undecodable_line: int | None = None,
        what: str = "header",
        hint: str | None = None,
    ) -> None:
        keys = ", ".join(f"options.{k} = {quoted(v)}" for k, v in absent.items())
        shown = [quoted(h, 40) for h in header[:20]]
        columns = (
            "[" + ", ".join(shown) + (f", … ({len(header) - 20} more)" if len(header) > 20 else "") + "]"
        )
        if undecodable_line == 1:
            message = (
                f"{label}: its header is not valid {encoding}, so its column names cannot be matched "
                f"(no column for {keys}; read as {columns}). Set options.encoding for this source "
                "(e.g. gbk, big5, iso-8859-1, or auto to detect it)."
            )
        else:
            message = (
                f"{label}: {what} has no column for {keys}; its columns are {columns}. "
                "Set those options to the right column names."
            )
            if undecodable_line:
                message += (
                    f" (Line {undecodable_line} is not valid {encoding} either: set options.encoding, "
                    "or auto to detect it.)"
                )
        if hint:
            message += " " + hint
        super().__init__(message)


class SourceReadError(ValueError):
    """A source that cannot be read at all (a hub dataset offline, a split it lacks); the message
    names the source and what to do."""


def read_csv(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    yield from _read_table(path, options=options, label=label, id_prefix=id_prefix, delimiter=",")


def read_tsv(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    yield from _read_table(path, options=options, label=label, id_prefix=id_prefix, delimiter="\t")


class NoAliasLoader(yaml.BaseLoader):
    """YAML's BaseLoader (every scalar a string) that refuses aliases (`*name`, `<<: *name`): a
    chatterbot corpus needs none, and a few hundred bytes of nested aliases stand for billions of
    items ("billion laughs"). Anchors alone are harmless and read."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise YamlAliasError(self.peek_event().start_mark)
        return super().compose_node(parent, index)


class YamlAliasError(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__(mark)
        self.mark = mark


def read_chatterbot_yaml(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """chatterbot-corpus: {categories: [name, ...], conversations: [[user, assistant, user, ...], ...]}.

    Read with YAML's BaseLoader so every scalar stays the text it was ("yes", "4", "1.0" are not
    turned into True/4/1.0). The first category is the intent.
    """
    data = path.read_bytes()
    encoding = source_encoding(data, options)
    bad_line = first_bad_line(data, encoding)
    if bad_line:
        # YAML refuses undecodable characters outright, so the file cannot be read in part
        yield RawReject(f"{label}:{bad_line}", "bad_encoding", encoding_hint(encoding))
        return
    text = data.decode(encoding).removeprefix("\ufeff")
    try:
        doc = yaml.load(text, Loader=NoAliasLoader)  # BaseLoader builds only str/list/dict
    except YamlAliasError as exc:
        yield RawReject(
            f"{label}:{exc.mark.line + 1}",
            "yaml_aliases",
            "the file uses a YAML alias (*name); chatterbot corpora need none and aliases can expand a "
            "small file into billions of items: write the text out in full instead of *name",
        )
        return
    except RecursionError:
        yield RawReject(label, "too_deep", "the YAML nests too deep to read; flatten it or remove it from the source")
        return
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        yield RawReject(f"{label}:{mark.line + 1}" if mark else label, "malformed_yaml", raw_prefix(str(exc)))
        return
    conversations = doc.get("conversations") if isinstance(doc, dict) else None
    if not isinstance(conversations, list):
        yield RawReject(
            label,
            "missing_field",
            'expected a mapping with "conversations": [[...], ...]: ' + raw_prefix(text),
        )
        return
    categories = doc.get("categories")
    intent = (
        categories[0]
        if isinstance(categories, list) and categories
        else categories
        if isinstance(categories, str)
        else None
    )
    # YAML's double-quoted "\ud800" decodes to a lone surrogate (the category too: it is the intent)
    escapes = _SURROGATE_ESCAPE.search(text) is not None
    for index, conv in enumerate(conversations):
        if not isinstance(conv, list):
            yield RawReject(
                f"{label}#{index}",
                "missing_field",
                "a conversation must be a list of utterances: " + raw_prefix(conv),
            )
            continue
        roles = ["user" if k % 2 == 0 else "assistant" for k in range(len(conv))]
        surrogates = escapes and holds_surrogates(intent, conv)
        yield RawConversation(
            f"{id_prefix}{index}",
            f"{label}#{index}",
            roles,
            conv,
            intent,
            None,
            None,
            conv,
            surrogates,
            False,
        )


# ------------------------------------------------------------------------ parquet / datasets rows
RowLayout = str  # "messages" | "exchange" | "alpaca"


def _row_layout(columns: list[str], options: SourceOptions, label: str) -> RowLayout:
    """How a table's rows hold conversations, from its column names: a messages column (options.
    messages_column, else "messages" or "conversations"), else the utterance/response column pair,
    else the alpaca columns (options.columns)."""
    if options.messages_column:
        if options.messages_column in columns:
            return "messages"
        raise TableLayoutError(label, {"messages_column": options.messages_column}, columns, what="table")
    if "messages" in columns or "conversations" in columns:
        return "messages"
    if options.utterance_column in columns and options.response_column in columns:
        return "exchange"
    if options.columns.prompt in columns and options.columns.response in columns:
        return "alpaca"
    raise TableLayoutError(
        label,
        {
            "messages_column": "messages or conversations",
            "utterance_column": options.utterance_column,
            "response_column": options.response_column,
            "columns.prompt": options.columns.prompt,
            "columns.response": options.columns.response,
        },
        columns,
        what="table (one of a messages column, an utterance/response pair or alpaca columns)",
    )


def _row_items(
    rows: Iterator[dict[str, Any]], columns: list[str], *, options: SourceOptions, label: str, id_prefix: str
) -> Iterator[Item]:
    """The conversations of a table's rows (parquet, `datasets`), row n at `label#n`."""
    layout = _row_layout(columns, options, label)
    if layout == "messages":
        for n, row in enumerate(rows):
            yield _chat_record(
                row,
                f"{label}#{n}",
                n,
                options=options,
                id_prefix=id_prefix,
                required_id=False,
                surrogates=False,
            )
    elif layout == "alpaca":
        for n, row in enumerate(rows):
            yield _alpaca_record(
                row, f"{label}#{n}", n, options=options, id_prefix=id_prefix, surrogates=False
            )
    else:
        u, r, i, c = (
            options.utterance_column,
            options.response_column,
            options.intent_column,
            options.conversation_column,
        )
        if c is not None and c not in columns:
            raise TableLayoutError(label, {"conversation_column": c}, columns, what="table")
        exchanges: Iterator[Exchange | RawReject] = (
            (
                n,
                f"{label}#{n}",
                row[u],
                row[r],
                row.get(i) if i else None,
                row.get(c) if c else None,
                row,
                json.dumps(row, ensure_ascii=False, default=str),
            )
            for n, row in enumerate(rows)
        )
        yield from _exchange_items(exchanges, options=options, id_prefix=id_prefix, lenient=False)


def read_parquet(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """A parquet table, one conversation per row: an OpenAI/ShareGPT messages column (a list of
    structs), a question/answer pair (options.utterance_column / response_column, with intent_column
    and conversation_column as for csv) or alpaca columns (options.columns). A file polars cannot
    read is an `unreadable_file` reject."""
    import polars as pl

    try:
        table = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        yield RawReject(
            label,
            "unreadable_file",
            f"not a readable parquet file ({type(exc).__name__}: {quoted(str(exc))}); "
            "write it again or remove it from the source",
        )
        return
    yield from _row_items(
        iter(table.to_dicts()), table.columns, options=options, label=label, id_prefix=id_prefix
    )


HF_DATA_FILES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def read_hf_dataset(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """Rows of a Hugging Face `datasets` dataset, read as `read_parquet` reads rows:

    - a `save_to_disk` folder (a Dataset, or a DatasetDict whose options.split is taken);
    - a data file, or a folder of them, of one kind (.parquet, .json/.jsonl, .csv), loaded by the
      matching `datasets` builder (its one split);
    - otherwise `label` (the source path) as a hub id, loaded with options.split; that needs the
      network or the hub cache, and fails with a SourceReadError saying so.
    """
    import datasets

    rows = _hf_rows(path, options=options, label=label, datasets=datasets)
    yield from _row_items(iter(rows[1]), rows[0], options=options, label=label, id_prefix=id_prefix)


def _hf_rows(
    path: Path, *, options: SourceOptions, label: str, datasets: Any
) -> tuple[list[str], list[dict[str, Any]]]:
    import tempfile

    if path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    ):
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
        if isinstance(loaded, datasets.DatasetDict):
            if options.split not in loaded:
                raise SourceReadError(
                    f"{label}: the dataset has no split {quoted(options.split)}; its splits are "
                    f"{quoted(sorted(loaded))}. Set options.split to one of them."
                )
            loaded = loaded[options.split]
        return loaded.column_names, loaded.to_list()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in HF_DATA_FILES)
        builders = {HF_DATA_FILES.get(p.suffix) for p in files}
        if not files or len(builders) != 1 or None in builders:
            raise SourceReadError(
                f"{label}: not a `datasets` save_to_disk folder (no dataset_info.json / dataset_dict.json) "
                "nor data files of one kind (.parquet, .json/.jsonl, .csv). Point path at one of those."
            )
        # a throwaway cache: the rows are taken into memory, nothing is left in ~/.cache
        with tempfile.TemporaryDirectory() as cache:
            loaded = datasets.load_dataset(
                builders.pop(),
                data_files=[str(p) for p in files],
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
            )
            return loaded.column_names, loaded.to_list()
    try:
        with _hub_offline_unless_reachable(datasets):
            loaded = datasets.load_dataset(label, split=options.split)
    except Exception as exc:  # noqa: BLE001 - offline: ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
        raise SourceReadError(
            f"{label}: no such local path, and as a hub dataset id it could not be loaded "
            f"({type(exc).__name__}: {quoted(str(exc))}). When offline, download it where the hub is "
            f"reachable (datasets.load_dataset({quoted(label)}).save_to_disk(folder)) and set path to that "
            "folder, or give the path of local data files."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):  # pragma: no cover - split is always given
        loaded = loaded[options.split]
    return loaded.column_names, loaded.to_list()


HUB_PROBE_SECONDS = 2.0  # how long a hub id waits for the hub to answer before only its cache is read


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the hub (HF_ENDPOINT, else huggingface.co) accepts a TCP connection within `timeout`:
    a quick check, so that an offline machine does not spend ~25 s in the hub client's retries."""
    import os
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection(
            (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)), timeout
        ):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_unless_reachable(datasets: Any) -> Iterator[None]:
    """Offline mode (only the hub cache is read) for the load, unless it is off and the hub answers."""
    import huggingface_hub.constants as hub_constants

    if datasets.config.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    from unittest import mock

    with (
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
        mock.patch.object(hub_constants, "HF_HUB_OFFLINE", True),
    ):
        yield


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_hub_id(text: str) -> bool:
    """`name` or `owner/name` (a path with more parts, or starting with . or /, is a local path)."""
    return _HUB_ID.fullmatch(text) is not None and Path(text).suffix not in HF_DATA_FILES


Reader = Callable[..., Iterator[Item]]

# format -> (reader, file patterns searched when the source path is a folder)
READERS: dict[SourceFormat, tuple[Reader, tuple[str, ...]]] = {
    "conversations_json": (read_conversations_json, ("*.json",)),
    "messages_jsonl": (read_messages_jsonl, ("*.jsonl", "*.json")),
    "cornell": (read_cornell, ()),  # the folder itself is the unit
    "dailydialog": (read_dailydialog, ("*.txt",)),
    "crosswoz": (read_crosswoz, ("*.json", "*.zip")),
    "csv": (read_csv, ("*.csv",)),
    "tsv": (read_tsv, ("*.tsv",)),
    "chatterbot_yaml": (read_chatterbot_yaml, ("*.yml", "*.yaml")),
    "feedback": (read_feedback, ("*.jsonl",)),
    "alpaca": (read_alpaca, ("*.json", "*.jsonl")),
    "parquet": (read_parquet, ("*.parquet",)),
    "hf_dataset": (read_hf_dataset, ()),  # the path (folder, file or hub id) is the unit
}

__all__ = [
    "LONE_SURROGATE",
    "NoAliasLoader",
    "YamlAliasError",
    "READERS",
    "ConversationColumns",
    "RawConversation",
    "RawReject",
    "SourceReadError",
    "TableLayoutError",
    "conversations_json_columns",
    "encoding_hint",
    "holds_surrogates",
    "iter_lines",
    "looks_like_hub_id",
    "printable",
    "quoted",
    "raw_prefix",
    "surrogate_hint",
]
