"""Progress bars (rich) for anything that takes more than a few seconds; quiet when not a terminal."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Sequence, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def _enabled() -> bool:
    return os.environ.get("E2GAN_PROGRESS", "auto") != "0" and (sys.stderr.isatty() or os.environ.get("E2GAN_PROGRESS") == "1")


def progress(items: Iterable[T] | Sequence[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate `items` with a rich progress bar on stderr (count, elapsed, remaining)."""
    if not _enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False, redirect_stdout=False) as bar:
        task = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            bar.advance(task)
