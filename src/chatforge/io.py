"""Small shared plumbing: atomic writes, logging set-up, progress, content hashes.

Every output a stage writes goes through a temporary sibling and a rename, so a killed stage never
leaves a half-written file that a later stage (or DVC) could read as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

T = TypeVar("T")

log = logging.getLogger("chatforge")


# The exit-code rule every stage script follows: 2 when params or inputs are wrong (the message says
# what to change), 1 when a gate fails or the work itself fails. `dvc repro` shows either.
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def setup_logging(name: str, level: int = logging.INFO) -> logging.Logger:
    """Configure the root logger once for a process (a stage script, `chatforge serve`, a bench):
    `HH:MM:SS <name> LEVEL message` lines on stderr. Returns the `chatforge.<name>` logger. A stage
    script calls it through chatforge.stage.start, which also starts the stage's clock.
    """
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    return logging.getLogger(f"chatforge.{name}")


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `target` (file or folder) in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_parquet(frame: pl.DataFrame, target: Path | str) -> None:
    """Atomic, deterministic parquet: fixed compression, statistics on, one row group per 128k rows."""
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True, row_group_size=131_072)


def write_json(data: Any, target: Path | str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_text(text: str, target: Path | str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl(rows: Iterable[dict[str, Any]], target: Path | str) -> int:
    n = 0
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def sha256_file(path: Path | str, *, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: Path | str) -> str:
    """Hash of a file, or of every file in a folder (relative names and contents), order-independent."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def progress(items: Iterable[T], *, total: int | None = None, desc: str, every: int = 0) -> Iterator[T]:
    """A tqdm bar on a terminal; periodic log lines (about 20 per run) when stderr is not a tty."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    step = every or max(1, (total or 0) // 20) or 1000
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0:
            log.info("%s: %d%s", desc, i, f"/{total}" if total else "")
