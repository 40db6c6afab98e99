"""Look at a data file before it goes into `ingest.sources`: which format it is, what ingest keeps.

`inspect_source` guesses the format when none is given (from the extension and a sniff of the
content), reads a sample through the very function the ingest stage calls (`read_source`, so role
mapping, merging, rejects, language detection and intents are ingest's own), and returns an
`InspectReport`: the kept conversations, the rejects by reason with examples, the languages and
intents found, and the `ingest.sources` entry to paste into params.yaml. Nothing is written.

`render` turns a report into the text `chatforge data inspect` prints; every piece of the data it
shows is cut to a bounded width, on one line, without control characters.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import polars as pl
import yaml
from pydantic import ValidationError

from chatforge.params import Source, SourceFormat, SourceOptions

FORMATS: tuple[str, ...] = get_args(SourceFormat)
SNIFF_BYTES = 1 << 20  # the head of a file read to guess its format
PARSE_WHOLE_BYTES = 16 << 20  # a JSON file up to this size is parsed whole to guess its shape
DEFAULT_SAMPLE = 2000  # records read by default (`options.limit` for the read)
TEXT_WIDTH = 72  # characters of a message shown
REJECT_WIDTH = 240  # characters of a reject's explanation shown (ingest's hints come at its end)
MAX_LISTED = 15  # intents / reject reasons listed before "... and N more"
EXAMPLES_PER_REASON = 3

# CSV/TSV header names, in order of preference, for each column option
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "utterance_column": (
        "utterance",
        "question",
        "query",
        "prompt",
        "input",
        "instruction",
        "user",
        "q",
        "text",
        "message",
        "问题",
        "提问",
        "用户",
    ),
    "response_column": (
        "response",
        "answer",
        "reply",
        "output",
        "completion",
        "assistant",
        "bot",
        "a",
        "回答",
        "答案",
        "回复",
    ),
    "intent_column": ("intent", "label", "category", "intent_name", "tag", "topic", "class", "意图", "类别"),
    "conversation_column": (
        "conversation_id",
        "conversation",
        "session_id",
        "session",
        "dialog_id",
        "dialogue_id",
        "dialog",
        "dialogue",
        "thread_id",
        "thread",
        "chat_id",
    ),
}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt", ".yml", ".yaml", ".zip", ".parquet")


class InspectError(ValueError):
    """A path that cannot be inspected; the message names it and says what to try (usually --format)."""


@dataclass(frozen=True)
class FormatGuess:
    format: str
    reasons: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)  # options the layout needs (CSV column names)


@dataclass(frozen=True)
class KeptConversation:
    id: str
    lang: str | None
    intent: str | None
    messages: tuple[tuple[str, str], ...]  # (role, full text)


@dataclass(frozen=True)
class RejectExample:
    location: str
    reason: str
    raw: str


@dataclass(frozen=True)
class InspectReport:
    path: str
    format: str
    guessed: bool  # False when the format was given
    reasons: tuple[str, ...]  # why this format
    source: Source  # the entry to paste into ingest.sources
    sample: int | None  # records read at most (None: all)
    conversations: int  # kept in the sample
    turns: int
    rejects: int
    files: int
    shown: tuple[KeptConversation, ...]
    rejects_by_reason: dict[str, int]
    reject_examples: tuple[RejectExample, ...]
    langs: dict[str, int]  # conversations per language
    intents: dict[str, int]  # conversations per intent ("(none)" for none), most frequent first
    turn_intents: dict[str, int] = field(default_factory=dict)  # user turns per intent, where turns carry one
    notes: tuple[str, ...] = ()

    @property
    def sampled(self) -> bool:
        """Whether reading stopped at the sample size (the source may hold more)."""
        return self.sample is not None and self.conversations + self.rejects >= self.sample

    def problem(self) -> str | None:
        """What to say when ingest would keep nothing of this source (the CLI then exits 2); else None."""
        if self.conversations:
            return None
        return (
            f"{_name(Path(self.path))}: ingest would keep no conversation of it as {self.format} "
            f"({self.rejects} rejected, reasons above). Pass --format with the right format, or --option "
            "to fix what the rejects name."
        )

    def source_yaml(self) -> str:
        """The `ingest.sources` list item as YAML (not indented; `render` indents it as params.yaml does)."""
        return sources_entry_yaml(self.source)


# ----------------------------------------------------------------------------------- guessing
def _flat(text: str, width: int) -> str:
    """One line, no control characters, at most `width` characters (an ellipsis marks a cut)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= width else line[: max(width - 1, 0)].rstrip() + "…"


def _name(path: Path) -> str:
    return repr(_flat(str(path), 160))


def _unreadable(path: Path, why: str) -> InspectError:
    from chatforge.data.readers import READERS

    known = ", ".join(READERS)
    return InspectError(f"{_name(path)}: {why}. Pass --format with one of: {known}.")


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise InspectError(f"{_name(path)}: cannot be read ({exc.strerror or exc})") from None


def _text(path: Path, head: bytes) -> str:
    if not head.strip():
        raise _unreadable(path, "is empty")
    if b"\x00" in head:
        raise _unreadable(path, "holds NUL bytes: it is a binary file, not one of the text formats")
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    if text.count("\ufffd") > max(8, len(text) // 100):
        raise _unreadable(
            path, "is not UTF-8 text (if it is text in another encoding, also pass --option encoding=NAME)"
        )
    return text


def _record_kind(record: Any) -> tuple[str, str] | None:
    """(kind, why) of one JSON record: feedback, messages or alpaca; None when none fits."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    for key in ("messages", "conversations"):
        value = record.get(key)
        if isinstance(value, list) and (not value or isinstance(value[0], dict)):
            if key == "messages" and keys & {"rating", "created_at"}:
                return (
                    "feedback",
                    "records hold messages with rating/created_at (a `chatforge feedback export`)",
                )
            first = value[0] if value else {}
            style = "ShareGPT from/value" if "from" in first or "value" in first else "OpenAI role/content"
            return "messages", f"records hold a {key!r} list of messages ({style})"
    if "instruction" in keys and "output" in keys:
        return "alpaca", "records hold instruction/output keys (alpaca)"
    return None


def _jsonl_guess(text: str) -> tuple[str, str] | None:
    for line in text.splitlines()[:50]:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            continue  # nested too deep to judge (the reader rejects it as too_deep): the next line decides
        except ValueError:
            return None
        kind = _record_kind(record)
        if kind is None:
            return None
        fmt = {"messages": "messages_jsonl", "feedback": "feedback", "alpaca": "alpaca"}[kind[0]]
        return fmt, "one JSON object per line; " + kind[1]
    return None


def _document_guess(doc: Any) -> tuple[str, str] | None:
    """A whole JSON document -> (format, why)."""
    if isinstance(doc, list):
        first = next((x for x in doc if x is not None), None)
        kind = _record_kind(first)
        if kind is None:
            return None
        fmt = {"messages": "messages_jsonl", "feedback": "feedback", "alpaca": "alpaca"}[kind[0]]
        return fmt, "a JSON array; " + kind[1]
    if not isinstance(doc, dict):
        return None
    convs = doc.get("conversations")
    if isinstance(convs, list) and convs and isinstance(convs[0], dict) and "messages" in convs[0]:
        return "conversations_json", 'a JSON object with "conversations": [{"id", "messages": [...]}]'
    values = [v for v in list(doc.values())[:20] if isinstance(v, dict)]
    if values and all(isinstance(v.get("messages"), list) for v in values):
        return "crosswoz", "a JSON object of dialogues keyed by id, each with messages (CrossWOZ)"
    kind = _record_kind(doc)
    if kind is not None and kind[0] == "messages":
        return "messages_jsonl", "a single JSON record; " + kind[1]
    return None


def _json_guess(path: Path, text: str, size: int) -> tuple[str, str] | None:
    start = text.lstrip()[:1]
    if start not in ("{", "["):
        return None
    if size <= PARSE_WHOLE_BYTES:
        try:
            raw = path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
            return _document_guess(json.loads(raw))
        except (ValueError, RecursionError):
            pass  # several documents (JSON lines), broken, or nested too deep: look line by line
    jsonl = _jsonl_guess(text)
    if jsonl is not None:
        return jsonl
    if start == "[":  # a big array: its first element
        try:
            first, _ = json.JSONDecoder().raw_decode(text.lstrip()[1:].lstrip())
        except (ValueError, RecursionError):
            return None
        return _document_guess([first])
    if re.search(r'"dialog_act"\s*:', text):
        return "crosswoz", "a JSON object with dialog_act annotations (CrossWOZ)"
    if re.search(r'"conversations"\s*:\s*\[', text) and '"messages"' in text:
        return "conversations_json", 'a JSON object with "conversations": [{"id", "messages": [...]}]'
    return None


def _table_options(header: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Column options for a CSV/TSV header (only those that differ from the defaults) and why."""
    lowered = {h.strip().lower(): h.strip() for h in header}
    found: dict[str, str | None] = {}
    for option, names in TABLE_COLUMNS.items():
        found[option] = next((lowered[n] for n in names if n in lowered), None)
    defaults = SourceOptions()
    options: dict[str, Any] = {}
    for option, column in found.items():
        if option == "intent_column" and column is None:
            continue  # an absent intent column is simply not read
        if column is not None and column != getattr(defaults, option):
            options[option] = column
    if found["utterance_column"] is not None and found["response_column"] is not None:
        why = [f"columns {found['utterance_column']!r} -> {found['response_column']!r}"]
        if found["intent_column"]:
            why.append(f"intent column {found['intent_column']!r}")
        if found["conversation_column"]:
            why.append(f"rows grouped into conversations by {found['conversation_column']!r}")
    else:
        why = ["no utterance/response column recognised: set options.utterance_column and response_column"]
    return options, why


def _table_guess(fmt: str, text: str, why: str) -> FormatGuess:
    first = next(iter(text.splitlines()), "")
    header = next(csv.reader(io.StringIO(first), delimiter="\t" if fmt == "tsv" else ","), [])
    options, columns = _table_options(header)
    shown = ", ".join(_flat(h, 30) for h in header[:12]) + (", ..." if len(header) > 12 else "")
    return FormatGuess(fmt, (why, f"header: {shown}", *columns), options)


def _rows_guess(fmt: str, columns: list[str], why: str, options: dict[str, Any] | None = None) -> FormatGuess:
    """parquet / hf_dataset: which of the three row layouts the column names give, and its options."""
    options = dict(options or {})
    shown = ", ".join(_flat(c, 30) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
    if "messages" in columns or "conversations" in columns:
        layout = ["a messages column: one conversation per row"]
    elif "instruction" in columns and "output" in columns:
        layout = ["instruction/output columns: alpaca rows"]
    else:
        table_options, layout = _table_options(columns)
        options |= table_options
    return FormatGuess(fmt, (why, f"columns: {shown}", *layout), options)


def _parquet_guess(path: Path) -> FormatGuess:
    why = "the file starts with the parquet magic bytes PAR1"
    try:
        columns = list(pl.read_parquet_schema(path))
    except Exception:  # noqa: BLE001 - a broken file: the reader reports it as unreadable_file
        return FormatGuess("parquet", (why,))
    return _rows_guess("parquet", columns, why)


def _hf_guess(path: Path, present: list[str]) -> FormatGuess:
    why = f"a `datasets` save_to_disk folder ({', '.join(present) or 'split folders with dataset_info.json'})"
    options: dict[str, Any] = {}
    info = path / "dataset_info.json"
    try:
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits") or []
            split = "train" if "train" in splits or not splits else str(splits[0])
            if split != "train":
                options["split"] = split
            why += f"; splits {', '.join(_flat(str(x), 20) for x in splits[:8])}, reading {split!r}"
            info = path / split / "dataset_info.json"
        features = json.loads(info.read_text(encoding="utf-8")).get("features") or {}
    except (OSError, ValueError, AttributeError):
        return FormatGuess("hf_dataset", (why,), options)
    return _rows_guess("hf_dataset", [str(f) for f in features], why, options)


def _guess_file(path: Path) -> FormatGuess:
    suffix = path.suffix.lower()
    head = _head(path)
    size = path.stat().st_size
    if head.startswith(b"PAR1"):
        return _parquet_guess(path)
    if suffix == ".parquet":
        raise _unreadable(path, "has a .parquet name but not the parquet magic bytes")
    if suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.lower().endswith(".json")]
        except zipfile.BadZipFile:
            raise _unreadable(path, "has a .zip name but is not a zip archive") from None
        if not names:
            raise _unreadable(path, "is a zip archive without JSON files")
        return FormatGuess(
            "crosswoz", (f"a zip archive of JSON files ({_flat(names[0], 60)}, ...): CrossWOZ",)
        )
    text = _text(path, head)
    if suffix in (".yml", ".yaml"):
        from chatforge.data.readers import NoAliasLoader, YamlAliasError

        try:
            # the reader's loader: an alias bomb is refused, not expanded (the read then rejects it)
            doc = yaml.load(text if size <= SNIFF_BYTES else text[: text.rfind("\n")], Loader=NoAliasLoader)
        except (yaml.YAMLError, YamlAliasError, RecursionError):
            doc = None
        if isinstance(doc, dict) and "conversations" in doc:
            return FormatGuess("chatterbot_yaml", ("YAML with a conversations list (chatterbot-corpus)",))
        return FormatGuess("chatterbot_yaml", (f"{suffix} file: chatterbot_yaml is the YAML format",))
    if suffix in (".json", ".jsonl", "") or text.lstrip()[:1] in ("{", "["):
        shape = _json_guess(path, text, size)
        if shape is not None:
            return FormatGuess(shape[0], (f"{suffix or 'no'} extension; {shape[1]}",))
        if suffix in (".json", ".jsonl"):
            raise _unreadable(
                path,
                "is JSON of no shape chatforge knows (conversations/messages lists, CrossWOZ dialogues, "
                "instruction/output records)",
            )
    if "__eou__" in text:
        return FormatGuess("dailydialog", ("utterances separated by __eou__ (DailyDialog)",))
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if suffix == ".csv" or (suffix != ".tsv" and "," in first and "\t" not in first):
        return _table_guess("csv", text, f"{suffix or 'no'} extension; comma-separated header")
    if suffix == ".tsv" or "\t" in first:
        return _table_guess("tsv", text, f"{suffix or 'no'} extension; tab-separated header")
    raise _unreadable(path, f"has no format chatforge recognises (extension {_flat(suffix or 'none', 20)!r})")


def _guess_folder(path: Path) -> FormatGuess:
    present = [m for m in HF_MARKERS if (path / m).is_file()]
    if present:
        return _hf_guess(path, present)
    if (path / "movie_lines.txt").is_file() and (path / "movie_conversations.txt").is_file():
        return FormatGuess(
            "cornell", ("a folder with movie_lines.txt and movie_conversations.txt (Cornell)",)
        )
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TEXT_SUFFIXES
    )
    if not files:
        raise _unreadable(path, f"is a folder without data files ({', '.join(TEXT_SUFFIXES)})")
    suffix, count = Counter(p.suffix.lower() for p in files).most_common(1)[0]
    first = next(p for p in files if p.suffix.lower() == suffix)
    guess = _guess_file(first)
    where = (
        f"a folder of {count} {suffix} file{'s' if count != 1 else ''}, the first {_flat(first.name, 60)!r}:"
    )
    return FormatGuess(guess.format, (where, *guess.reasons), guess.options)


def guess_format(path: Path) -> FormatGuess:
    """The format (and the layout options it needs) of a file or folder; InspectError when unknown."""
    if path.is_dir():
        return _guess_folder(path)
    if not path.exists():
        raise InspectError(
            f"{_name(path)}: no such file or folder. Check the path (relative to {Path.cwd()})."
        )
    return _guess_file(path)


# ----------------------------------------------------------------------------------- options
def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs (values as YAML: 5, null, en, {a: user}; dotted keys nest) -> a dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InspectError(
                f"--option {_flat(pair, 60)!r}: expected KEY=VALUE, e.g. --option utterance_column=question"
            )
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InspectError(f"--option {_flat(key, 60)!r}: {part!r} is set twice, once as a value")
        node[leaf] = parsed
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _source_options(raw: dict[str, Any]) -> SourceOptions:
    try:
        return SourceOptions.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            key = ".".join(str(p) for p in error["loc"])
            if error["type"] == "extra_forbidden":
                known = ", ".join(SourceOptions.model_fields)
                problems.append(f"unknown option {_flat(key, 60)!r} (known: {known})")
            else:
                problems.append(f"option {_flat(key, 60)!r}: {_flat(error['msg'], 200)}")
        raise InspectError("; ".join(problems) + ". Fix the --option values.") from None


# ----------------------------------------------------------------------------------- reading
def _entry_path(path: Path) -> tuple[str, list[str]]:
    """The path as ingest.sources should name it (relative to the project root when inside it)."""
    notes = []
    resolved = path.resolve()
    try:
        shown = resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        shown = path.as_posix()
        notes.append(
            "the path is outside this project: copy it under data/raw/ (the ingest stage's DVC dependency) "
            "and use that path, or `dvc repro` will not see it change"
        )
    else:
        if not (shown == "data/raw" or shown.startswith("data/raw/")):
            notes.append(
                "the path is not under data/raw/: `dvc repro` reruns ingest when data/raw/ changes, so move "
                "it there (and fix path) to have edits picked up"
            )
    return shown or ".", notes


def _source_name(path_text: str, taken: set[str]) -> str:
    base = re.sub(r"[^0-9A-Za-z_-]+", "_", Path(path_text).name.split(".")[0]).strip("_") or "mydata"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


class _Notes(logging.Handler):
    """Collects the warnings logged while a sample is read."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def inspect_source(
    path: Path | str,
    *,
    fmt: str | None = None,
    options: dict[str, Any] | None = None,
    show: int = 5,
    sample: int | None = DEFAULT_SAMPLE,
    same_role: str = "merge",
    merge_separator: str = "\n",
    min_turns: int = 2,
    taken_names: set[str] | frozenset[str] = frozenset(),
) -> InspectReport:
    """Guess (or take) the format of `path`, read up to `sample` records exactly as ingest would, and
    report what it keeps and rejects. `options`: SourceOptions keys (override the guessed ones);
    `same_role`/`merge_separator`/`min_turns`: the ingest section's values; `taken_names`: source
    names params.yaml already uses (the suggested name avoids them). Writes nothing."""
    from chatforge.data.ingest import IngestError, read_source
    from chatforge.data.readers import READERS
    from chatforge.data.schema import conversation_intents

    path = Path(path)
    if not path.exists():
        raise InspectError(
            f"{_name(path)}: no such file or folder. Check the path (relative to {Path.cwd()})."
        )
    if path.is_file() and path.stat().st_size == 0:
        raise _unreadable(path, "is empty")
    if fmt is None:
        guess = guess_format(path)
        guessed = True
    else:
        if fmt not in FORMATS:
            raise InspectError(
                f"--format {_flat(fmt, 40)!r} is not a format; use one of: {', '.join(FORMATS)}."
            )
        guess = FormatGuess(fmt, ("given with --format",))
        if fmt in ("csv", "tsv") and path.is_file():
            guess = _table_guess(fmt, _text(path, _head(path)), "given with --format")
        guessed = False
    if guess.format not in READERS:
        raise InspectError(
            f"{_name(path)}: looks like {guess.format} ({guess.reasons[-1]}), but this chatforge has no "
            f"{guess.format} reader yet. Convert the data to one of: {', '.join(READERS)}, or pass --format."
        )
    chosen = _source_options(_merge(guess.options, options or {}))
    path_text, notes = _entry_path(path)
    entry = Source(
        path=path_text,
        format=guess.format,  # type: ignore[arg-type]
        name=_source_name(path_text, set(taken_names)),
        options=chosen,
    )
    limit = chosen.limit if sample is None else min(chosen.limit or sample, sample)
    reading = entry.model_copy(
        update={"path": str(path), "options": chosen.model_copy(update={"limit": limit})}
    )
    ingest_log = logging.getLogger("chatforge.data.ingest")
    level = ingest_log.level
    # what the readers warn about (a quote that may swallow rows) becomes a note of the report
    reader_notes = _Notes()
    logging.getLogger("chatforge.data.readers").addHandler(reader_notes)
    ingest_log.setLevel(
        logging.ERROR
    )  # its per-source summary names params.yaml's list; the report says it all
    try:
        turns, rejects, stats = read_source(
            reading,
            same_role=same_role,  # type: ignore[arg-type]
            merge_separator=merge_separator,
            min_turns=min_turns,
        )
    except IngestError as exc:
        # the stage's wording names params.yaml's list position; here the file is what the user gave
        message = _flat(
            re.sub(r"^ingest\.sources\[0\] \([^)]*\): |\s*\(ingest\.sources\[0\]\.options\)$", "", str(exc)),
            600,
        )
        raise InspectError(f"{message} Pass --option KEY=VALUE to set options, or --format.") from None
    except (OSError, ValueError, UnicodeError, yaml.YAMLError, zipfile.BadZipFile) as exc:
        raise InspectError(
            f"{_name(path)}: cannot be read as {guess.format} ({_flat(str(exc), 200)}). Pass --format."
        ) from None
    finally:
        ingest_log.setLevel(level)
        logging.getLogger("chatforge.data.readers").removeHandler(reader_notes)
    notes += [_flat(m, 400) for m in reader_notes.messages]
    if stats.conversations == 0 and stats.rejects == 0:
        raise _unreadable(path, f"holds nothing ingest reads as {guess.format}")

    order = (
        turns.select("conversation_id").unique(maintain_order=True)["conversation_id"].head(show).to_list()
    )
    shown = []
    for cid in order:
        rows = turns.filter(pl.col("conversation_id") == cid).sort("turn")
        shown.append(
            KeptConversation(
                id=cid,
                lang=rows["lang"][0],
                intent=rows["intent"].drop_nulls().first()
                if rows["intent"].null_count() < rows.height
                else None,
                messages=tuple(zip(rows["role"].to_list(), rows["content"].to_list(), strict=True)),
            )
        )
    reasons = Counter(rejects["reason"].to_list())
    examples = []
    for reason in reasons:
        for location, raw in (
            rejects.filter(pl.col("reason") == reason)
            .select("location", "raw")
            .head(EXAMPLES_PER_REASON)
            .rows()
        ):
            examples.append(RejectExample(location, reason, raw))
    langs = Counter(  # ingest gives every row of a conversation its one language
        turns.group_by("conversation_id", maintain_order=True)
        .agg(pl.col("lang").first())["lang"]
        .fill_null("(none)")
        .to_list()
    )
    intents = Counter(conversation_intents(turns)["intent"].fill_null("(none)").to_list())
    turn_intents = Counter(turns.filter(pl.col("role") == "user")["intent"].drop_nulls().to_list())
    return InspectReport(
        path=str(path),
        format=guess.format,
        guessed=guessed,
        reasons=guess.reasons,
        source=entry,
        sample=limit,
        conversations=stats.conversations,
        turns=stats.turns,
        rejects=stats.rejects,
        files=stats.files,
        shown=tuple(shown),
        rejects_by_reason=dict(reasons.most_common()),
        reject_examples=tuple(examples),
        langs=dict(langs.most_common()),
        intents=dict(intents.most_common()),
        turn_intents=dict(turn_intents.most_common()),
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------------- output
def sources_entry_yaml(source: Source) -> str:
    """One `ingest.sources` item as YAML, only the keys that differ from the defaults."""
    entry: dict[str, Any] = {"path": source.path, "format": source.format}
    if source.name is not None:
        entry["name"] = source.name
    if source.optional:
        entry["optional"] = True
    options = source.options.model_dump(exclude_defaults=True)
    if options:
        entry["options"] = options
    return yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, default_flow_style=False, width=120)


def _counts(counts: dict[str, int], width: int = 40) -> str:
    items = [f"{_flat(k, width)} {v}" for k, v in list(counts.items())[:MAX_LISTED]]
    more = len(counts) - MAX_LISTED
    return ", ".join(items) + (f", ... and {more} more" if more > 0 else "") if items else "none"


def render(report: InspectReport, *, width: int = TEXT_WIDTH) -> str:
    """The text `chatforge data inspect` prints."""
    out = [
        f"{_flat(report.path, 160)}: format {report.format} ({'guessed' if report.guessed else 'given'})",
        *(f"  why: {_flat(r, 160)}" for r in report.reasons),
        "",
        f"read: {report.conversations} conversations kept ({report.turns} turns), {report.rejects} rejected"
        + (f", from {report.files} files" if report.files > 1 else "")
        + (
            f" -- stopped at the first {report.sample} records; --sample 0 reads all"
            if report.sampled
            else ""
        ),
        f"languages: {_counts(report.langs)}",
        f"intents (per conversation, as split and balance count them): {_counts(report.intents)}",
    ]
    if set(report.turn_intents) - set(report.intents):
        out.append(f"intents of user turns: {_counts(report.turn_intents)}")
    if report.shown:
        n = len(report.shown)
        out += [
            "",
            f"{'the' if n == report.conversations else 'first'} {n} kept conversation{'s' if n != 1 else ''} (by id):",
        ]
        for conv in report.shown:
            out.append(f"  {_flat(conv.id, 60)}  lang={conv.lang}  intent={_flat(conv.intent or '-', 30)}")
            out += [f"    {role:<9} {_flat(text, width)}" for role, text in conv.messages[:8]]
            if len(conv.messages) > 8:
                out.append(f"    ... {len(conv.messages) - 8} more messages")
    if report.rejects:
        out += ["", f"rejects by reason: {_counts(report.rejects_by_reason)}"]
        for ex in report.reject_examples:  # the reason's explanation is ingest's own, hints included
            out += [f"  {ex.reason} at {_flat(ex.location, 100)}", f"    {_flat(ex.raw, REJECT_WIDTH)}"]
    out += ["", "paste under `ingest.sources:` in params.yaml:", ""]
    out += ["    " + line for line in report.source_yaml().splitlines()]  # params.yaml's indent there
    out += [f"\nnote: {n}" for n in report.notes]
    return "\n".join(out)


__all__ = [
    "FORMATS",
    "FormatGuess",
    "InspectError",
    "InspectReport",
    "KeptConversation",
    "RejectExample",
    "guess_format",
    "inspect_source",
    "parse_options",
    "render",
    "sources_entry_yaml",
]
