"""The plumbing every stage script shares, written once.

A script in stages/ reads top to bottom in one order (../shared/DESIGN.md): params -> logging ->
read -> library call -> atomic write -> metrics. This module holds the parts of that order that are
the same in every stage:

- `bad_input(stage, *errors)`: wrong params (a `chatforge.params.ParamsError`, always) or wrong
  inputs (the error types named) end the stage with the message on stderr, no traceback, and exit
  code `EXIT_BAD_INPUT` (2).
- `fail(stage, message)`: a failed gate ends the stage with `EXIT_FAILED` (1).
- `require(path, producer)`: an input another stage writes is missing -> exit 2 naming the
  `dvc repro` that makes it.
- `start(stage)`: logging set-up (chatforge.io.setup_logging) and the stage's clock.
- `write_metrics(metrics, path, timings=...)`: the metrics JSON, then (`write_timings`) the stage's
  wall time as its own small metrics file (reports/timings/<stage>.json, declared in dvc.yaml with cache: false).
  The wall time is kept out of the stage's metrics so that equal inputs still give equal metrics.

The params section itself is loaded with `chatforge.params.load_section(name)`, typed per section.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from chatforge.io import EXIT_BAD_INPUT, EXIT_FAILED, setup_logging, write_json
from chatforge.params import ParamsError

# every stage script's last option; dvc.yaml passes reports/timings/<stage>.json and declares it
Timings = Annotated[Path | None, typer.Option(help="Wall-time JSON to write (reports/timings/<stage>.json).")]

_started: dict[str, float] = {}  # stage name -> time.time() at start(); one stage per process


@contextlib.contextmanager
def bad_input(stage: str, *errors: type[BaseException], hint: str = "") -> Iterator[None]:
    """Turn ParamsError and each of `errors` raised inside into `<stage>: <message> (<hint>)` on
    stderr and exit code EXIT_BAD_INPUT (2). The message is the error's own: it names what was wrong
    and how to fix it; `hint` adds where to look when the error cannot know (a params key)."""
    try:
        yield
    except (ParamsError, *errors) as exc:
        typer.echo(f"{stage}: {exc}" + (f" ({hint})" if hint else ""), err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None


def fail(stage: str, message: str) -> NoReturn:
    """End the stage on a failed gate or failed work: `<stage>: <message>` on stderr, exit
    EXIT_FAILED (1). `message` says which gate or step and which params to look at."""
    typer.echo(f"{stage}: {message}", err=True)
    raise typer.Exit(code=EXIT_FAILED)


def require(path: Path, producer: str) -> Path:
    """`path` itself when it exists; else exit EXIT_BAD_INPUT (2) saying to run `dvc repro <producer>`."""
    if not path.exists():
        typer.echo(f"{path} not found: run `dvc repro {producer}` first.", err=True)
        raise typer.Exit(code=EXIT_BAD_INPUT)
    return path


def start(stage: str, level: int = logging.INFO) -> logging.Logger:
    """Configure logging for stage `stage` (chatforge.io.setup_logging) and start its clock, read by
    `write_metrics`. Call it once, after the params are loaded."""
    _started[stage] = time.time()
    return setup_logging(stage, level)


def write_metrics(metrics: Mapping[str, Any], path: Path, *, timings: Path | None = None) -> None:
    """Write the stage's metrics JSON atomically, then (with `timings`) its wall time: `write_timings`."""
    write_json(dict(metrics), path)
    if timings is not None:
        write_timings(timings)


def write_timings(path: Path) -> None:
    """Write {"stage": name, "wall_seconds": seconds since `start`, rounded to 0.01} to `path`
    atomically. Raises RuntimeError when `start` was never called (a stage script calls it first)."""
    if not _started:
        raise RuntimeError("chatforge.stage: timings written before stage.start(name); call start() right after "
                           "loading the params")
    name, started = next(reversed(_started.items()))
    write_json({"stage": name, "wall_seconds": round(time.time() - started, 2)}, path)


__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "Timings", "bad_input", "fail", "require", "start", "write_metrics", "write_timings"]
