"""One reader per source format: raw conversations (not yet validated) or rejects, in file order.

A reader only understands its file layout. It yields `RawConversation`s with the role names and
contents exactly as found (role mapping, empty/non-string content, same-role runs and turn counts
are judged once, for every format alike, in `chatforge.data.ingest`), and `RawReject`s for records
it cannot even take apart (a line that is not JSON, a Cornell line without its fields, ...).

Conversation ids: ids the data carries (conversations JSON, CrossWOZ keys, feedback ids, a CSV
conversation column, Cornell's movie + first line id) are kept as they are; data without ids gets
its line number or position, prefixed with the file's relative path when the source is a folder
(`id_prefix`), so ids stay unique within a source.
"""

from __future__ import annotations

import ast
import codecs
import csv
import functools
import io
import itertools
import json
import operator
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from chatforge.params import SourceFormat, SourceOptions

RAW_PREFIX_CHARS = 300


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
    return printable(text[:RAW_PREFIX_CHARS])


def printable(text: str) -> str:
    """`text` with lone surrogates written as \\udXXX escapes: UTF-8 (and so polars/parquet) cannot hold them."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encoding_hint(encoding: str) -> str:
    return f"not valid {encoding}; set options.encoding for this source (e.g. gbk, big5, iso-8859-1)"


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


# ------------------------------------------------------------------------------------ decoding
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
def _message_fields(messages: Any, role_key: str, content_key: str) -> tuple[list[Any], list[Any]] | None:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    return [m.get(role_key) for m in messages], [m.get(content_key) for m in messages]


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
    text, lenient = decode_document(data, options.encoding or "utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return RawReject(
            f"{label}:{exc.lineno}",
            "malformed_json",
            f"{exc.msg}: " + raw_prefix(text[max(0, exc.pos - 40) : exc.pos + 60]),
        )
    conversations = doc.get("conversations") if isinstance(doc, dict) else doc
    if not isinstance(conversations, list):
        return RawReject(label, "missing_field", 'expected {"conversations": [...]}: ' + raw_prefix(text))
    return conversations, lenient, _SURROGATE_ESCAPE.search(text) is not None


def _explicit_id(cid: Any) -> bool:
    return isinstance(cid, (str, int)) and not isinstance(cid, bool) and str(cid) != ""


def _conversation_item(
    conv: Any, index: int, *, label: str, id_prefix: str, lenient: bool, escapes: bool = False
) -> Item:
    """One entry of the seed format's "conversations" list; `escapes`: the file spells a surrogate escape."""
    if not isinstance(conv, dict):
        return RawReject(
            f"{label}#{index}", "missing_field", "conversation is not an object: " + raw_prefix(conv)
        )
    cid = conv.get("id")
    explicit = _explicit_id(cid)
    local_id = str(cid) if explicit else f"{id_prefix}{index}"
    fields = _message_fields(conv.get("messages"), "role", "content")
    if fields is None:
        return RawReject(
            f"{label}#{local_id}",
            "missing_field",
            '"messages" must be a list of {"role", "content"} objects: ' + raw_prefix(conv),
        )
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
    for index, conv in enumerate(conversations):
        yield _conversation_item(
            conv, index, label=label, id_prefix=id_prefix, lenient=lenient, escapes=escapes
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
    if decoders is None or codecs.lookup(options.encoding or "utf-8").name != "utf-8":
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
    typed = _typed_columns(data, options=options, label=label, id_prefix=id_prefix, max_items=max_items)
    if typed is not None:
        return typed
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
    path: Path, options: SourceOptions, label: str
) -> Iterator[tuple[int, dict[str, Any], bool] | RawReject]:
    """(line number, object, whether a string in it holds a lone surrogate) per JSON line, or a reject."""
    for item in iter_lines(path.read_bytes(), options.encoding or "utf-8", label):
        if isinstance(item, RawReject):
            yield item
            continue
        number, line = item
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; not a record
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawReject(f"{label}:{number}", "malformed_json", f"{exc.msg}: " + raw_prefix(line))
            continue
        if not isinstance(obj, dict):
            yield RawReject(
                f"{label}:{number}", "missing_field", "line is not a JSON object: " + raw_prefix(line)
            )
            continue
        # the regex first: walking every string of every line would cost more than parsing it
        yield number, obj, _SURROGATE_ESCAPE.search(line) is not None and holds_surrogates(obj)


def _chat_record(
    obj: dict[str, Any], number: int, *, label: str, id_prefix: str, required_id: bool, surrogates: bool
) -> Item:
    """OpenAI {"messages": [{"role","content"}]} or ShareGPT {"conversations": [{"from","value"}]}."""
    if "messages" in obj:
        fields = _message_fields(obj["messages"], "role", "content")
        if fields is not None:
            fields = (fields[0], [_text_parts(c) for c in fields[1]])
    elif "conversations" in obj:
        fields = _message_fields(obj["conversations"], "from", "value")
        if fields is not None and isinstance(obj.get("system"), str) and obj["system"].strip():
            fields = (["system", *fields[0]], [obj["system"], *fields[1]])
    else:
        fields = None
    cid = obj.get("id")
    explicit = _explicit_id(cid)
    if fields is None or (required_id and not explicit):
        what = '"id" and ' if required_id and not explicit else ""
        return RawReject(
            f"{label}:{number}",
            "missing_field",
            f'need {what}"messages" [{{"role","content"}}] or "conversations" [{{"from","value"}}]: '
            + raw_prefix(obj),
        )
    local_id = str(cid) if explicit else f"{id_prefix}{number}"
    return RawConversation(
        local_id,
        f"{label}:{number}",
        fields[0],
        fields[1],
        obj.get("intent"),
        obj.get("lang"),
        None,
        obj,
        surrogates,
        explicit,
    )


def read_messages_jsonl(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    for rec in _jsonl_records(path, options, label):
        yield (
            rec
            if isinstance(rec, RawReject)
            else _chat_record(
                rec[1], rec[0], label=label, id_prefix=id_prefix, required_id=False, surrogates=rec[2]
            )
        )


def read_feedback(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """`chatforge feedback export` lines: {"id", "messages", "intent", "lang", "rating", "created_at"}."""
    for rec in _jsonl_records(path, options, label):
        yield (
            rec
            if isinstance(rec, RawReject)
            else _chat_record(
                rec[1], rec[0], label=label, id_prefix=id_prefix, required_id=True, surrogates=rec[2]
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


def _crosswoz_documents(path: Path, encoding: str, label: str) -> Iterator[tuple[str, bytes]]:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            for member in sorted(
                n for n in archive.namelist() if n.endswith(".json") and not n.startswith("__MACOSX")
            ):
                yield f"{label}!{member}", archive.read(member)
    else:
        yield label, path.read_bytes()


def read_crosswoz(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """CrossWOZ: {dialogue_id: {"messages": [{"role": "usr"|"sys", "content", "dialog_act": [...]}]}},
    each act being [intent_type, domain, slot, value].

    Intent: each user turn gets the domain of its first non-General dialogue act (餐馆, 景点, 酒店,
    地铁, 出租); a turn without one (a follow-up, thanks) keeps the latest domain of the dialogue so
    far. The conversation's intent is the first domain named in a user turn's acts (the task the
    user opens with); assistant turns and leading domain-less user turns (a bare greeting) carry it.
    """
    for doc_label, data in _crosswoz_documents(path, options.encoding or "utf-8", label):
        text, lenient = decode_document(data, options.encoding or "utf-8")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawReject(
                f"{doc_label}:{exc.lineno}",
                "malformed_json",
                f"{exc.msg}: " + raw_prefix(text[max(0, exc.pos - 40) : exc.pos + 60]),
            )
            continue
        if not isinstance(doc, dict):
            yield RawReject(
                doc_label, "missing_field", "expected an object keyed by dialogue id: " + raw_prefix(text)
            )
            continue
        escapes = _SURROGATE_ESCAPE.search(text) is not None
        for dialogue_id, dialogue in doc.items():
            messages = dialogue.get("messages") if isinstance(dialogue, dict) else None
            fields = _message_fields(messages, "role", "content")
            if fields is None:
                yield RawReject(
                    f"{doc_label}#{dialogue_id}",
                    "missing_field",
                    '"messages" must be a list of objects: ' + raw_prefix(dialogue),
                )
                continue
            turn_intents, topic, opening = [], None, None
            for m in messages:
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


def read_dailydialog(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """`utt __eou__ utt __eou__ [TAB topic TAB acts TAB emotions]`; speakers alternate, first is the user."""
    for item in iter_lines(path.read_bytes(), options.encoding or "utf-8", label):
        if isinstance(item, RawReject):
            yield item
            continue
        number, line = item
        if not line.strip():
            continue
        text, *labels = line.split("\t")
        utterances = _EOU.split(text.strip())
        if utterances and utterances[-1] == "":
            utterances.pop()  # the closing __eou__ ends the last utterance, it does not start a new one
        utterances = [u.strip() for u in utterances]
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
    encoding = options.encoding or "iso-8859-1"
    lines_label, convs_label = f"{label}/movie_lines.txt", f"{label}/movie_conversations.txt"
    utterances: dict[str, tuple[str, str]] = {}
    for item in iter_lines((path / "movie_lines.txt").read_bytes(), encoding, lines_label):
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
                f"line ids {missing[:5]} not in movie_lines.txt: " + raw_prefix(line),
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
def _read_table(
    path: Path, *, options: SourceOptions, label: str, id_prefix: str, delimiter: str
) -> Iterator[Item]:
    """One row per exchange (utterance -> response); rows sharing `conversation_column` form one dialogue."""
    text, lenient = decode_document(path.read_bytes(), options.encoding or "utf-8")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    wanted = {"utterance_column": options.utterance_column, "response_column": options.response_column}
    if options.conversation_column:
        wanted["conversation_column"] = options.conversation_column
    absent = {k: v for k, v in wanted.items() if v not in header}
    if absent:
        raise TableLayoutError(label, absent, header)
    u, r = header.index(options.utterance_column), header.index(options.response_column)
    i = header.index(options.intent_column) if options.intent_column in header else None
    c = header.index(options.conversation_column) if options.conversation_column else None
    groups: dict[str, list[Any]] = {}
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        needed = max(x for x in (u, r, i, c) if x is not None)
        if len(row) <= needed:
            yield RawReject(
                f"{label}:{number}",
                "malformed_line",
                f"row has {len(row)} fields, the header {len(header)}: " + raw_prefix(delimiter.join(row)),
            )
            continue
        intent = row[i].strip() or None if i is not None else None
        if c is None:
            yield RawConversation(
                f"{id_prefix}{number}",
                f"{label}:{number}",
                ["user", "assistant"],
                [row[u], row[r]],
                None,
                None,
                [intent, None],
                row,
                lenient,
                False,
            )
            continue
        key = row[c].strip()
        if not key:
            yield RawReject(
                f"{label}:{number}",
                "missing_field",
                f"empty {options.conversation_column!r}: " + raw_prefix(delimiter.join(row)),
            )
            continue
        group = groups.setdefault(key, [number, [], [], [], []])
        group[1] += ["user", "assistant"]
        group[2] += [row[u], row[r]]
        group[3] += [intent, None]
        group[4].append(row)
    for key, (number, roles, contents, intents, rows) in groups.items():
        yield RawConversation(
            key, f"{label}:{number}", roles, contents, None, None, intents, rows, lenient, True
        )


class TableLayoutError(ValueError):
    """A CSV/TSV header without the configured columns: a params problem, not a bad row."""

    def __init__(self, label: str, absent: dict[str, str], header: list[str]) -> None:
        keys = ", ".join(f"options.{k} = {v!r}" for k, v in absent.items())
        super().__init__(
            f"{label}: header has no column for {keys}; its columns are {header}. "
            "Set those options to the right column names."
        )


def read_csv(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    yield from _read_table(path, options=options, label=label, id_prefix=id_prefix, delimiter=",")


def read_tsv(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    yield from _read_table(path, options=options, label=label, id_prefix=id_prefix, delimiter="\t")


def read_chatterbot_yaml(path: Path, *, options: SourceOptions, label: str, id_prefix: str) -> Iterator[Item]:
    """chatterbot-corpus: {categories: [name, ...], conversations: [[user, assistant, user, ...], ...]}.

    Read with YAML's BaseLoader so every scalar stays the text it was ("yes", "4", "1.0" are not
    turned into True/4/1.0). The first category is the intent.
    """
    data = path.read_bytes()
    bad_line = first_bad_line(data, options.encoding or "utf-8")
    if bad_line:
        # YAML refuses undecodable characters outright, so the file cannot be read in part
        yield RawReject(f"{label}:{bad_line}", "bad_encoding", encoding_hint(options.encoding or "utf-8"))
        return
    text = data.decode(options.encoding or "utf-8").removeprefix("\ufeff")
    try:
        doc = yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader builds only str/list/dict
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


Reader = Callable[..., Iterator[Item]]

# format -> (reader, file patterns searched when the source path is a folder)
READERS: dict[SourceFormat, tuple[Reader, tuple[str, ...]]] = {
    "conversations_json": (read_conversations_json, ("*.json",)),
    "messages_jsonl": (read_messages_jsonl, ("*.jsonl",)),
    "cornell": (read_cornell, ()),  # the folder itself is the unit
    "dailydialog": (read_dailydialog, ("*.txt",)),
    "crosswoz": (read_crosswoz, ("*.json", "*.zip")),
    "csv": (read_csv, ("*.csv",)),
    "tsv": (read_tsv, ("*.tsv",)),
    "chatterbot_yaml": (read_chatterbot_yaml, ("*.yml", "*.yaml")),
    "feedback": (read_feedback, ("*.jsonl",)),
}

__all__ = [
    "LONE_SURROGATE",
    "READERS",
    "ConversationColumns",
    "RawConversation",
    "RawReject",
    "TableLayoutError",
    "conversations_json_columns",
    "encoding_hint",
    "holds_surrogates",
    "iter_lines",
    "printable",
    "raw_prefix",
    "surrogate_hint",
]
