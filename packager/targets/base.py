"""What every target shares: the build context it renders for and the layout it returns."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..writer import Content


@dataclass(frozen=True)
class Layout:
    """What a target writes, and how the writer treats it.

    Attributes:
        root: the folder written atomically.
        model_dir: the model's own folder (what :func:`build` returns).
        files: relative path (under ``root``) -> content.
        exclusive: paths the build owns (replaced only with ``force``).
        replace: shared paths the render regenerates (their old content is dropped).
        staging: where the staging folder goes (None: beside ``root``).
    """

    root: Path
    model_dir: Path
    files: Mapping[str, Content]
    exclusive: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()
    staging: Path | None = None


@dataclass(frozen=True)
class BuildContext:
    """The target-independent part of a build: where, under which name and version."""

    output: Path
    name: str
    version: int = 1
    force: bool = False


