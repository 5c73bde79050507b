"""Progress for long steps: a spinner with elapsed time per step on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


@contextmanager
def steps(title: str) -> Iterator[Callable[[str], ContextManager[None]]]:
    """Report a sequence of timed steps under a title.

    Example:
        >>> with steps("export") as step:
        ...     with step("save"):
        ...         pass
    """
    t0 = time.perf_counter()
    if not _quiet:
        console.print(f"[bold]{title}[/bold]")

    @contextmanager
    def step(name: str) -> Iterator[None]:
        s0 = time.perf_counter()
        if _quiet:
            yield
            return
        if console.is_terminal:
            with console.status(f"  {name} ..."):
                yield
        else:
            console.print(f"  {name} ...")
            sys.stderr.flush()
            yield
        console.print(f"  [green]done[/green] {name} ({time.perf_counter() - s0:.1f}s)")

    yield step
    if not _quiet:
        console.print(f"  finished in {time.perf_counter() - t0:.1f}s")
