"""Progress bars (rich) for anything that takes more than a few seconds; quiet when not a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Iterator, Sequence, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")


def _enabled() -> bool:
    flag = os.environ.get("E2GAN_PROGRESS", "auto")
    return flag == "1" or (flag != "0" and sys.stderr.isatty())


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s")


class Bar:
    """A progress bar you advance by hand: `bar.advance(n, status="loss 0.12")`."""

    def __init__(self, progress: Progress | None, task: int | None):
        self._p, self._t = progress, task

    @property
    def visible(self) -> bool:
        return self._p is not None

    def advance(self, n: float = 1, status: str | None = None) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, **({"status": status} if status is not None else {}))


@contextlib.contextmanager
def bar(
    description: str, total: float | None, unit: str = "it", completed: float = 0, visible: bool | None = None
) -> Iterator[Bar]:
    """A rich bar with count, rate (`unit`/s), elapsed, eta and a free status text (`visible=False`: none,
    e.g. on every rank but the first of a distributed run)."""
    if visible is False or not _enabled():
        yield Bar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, transient=False, redirect_stdout=False) as p:
        yield Bar(p, p.add_task(description, total=total, completed=completed, status=""))


def progress(
    items: Iterable[T] | Sequence[T], description: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate `items` with a progress bar on stderr."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total, unit) as b:
        for item in items:
            yield item
            b.advance()
