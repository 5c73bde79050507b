"""Options dataclasses describe their own fields; the CLI turns those descriptions into flags.

``opt(default, help)`` is ``dataclasses.field`` with the help text (and, where useful, choices or
a metavar) in the field's metadata. Fields without help are library-only (not on the command line).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def opt(default: Any, help: str, *, choices: Sequence[str] | None = None, metavar: str | None = None,
        cli: bool = True) -> Any:
    """A dataclass field with its command-line description.

    Args:
        default: the default value (immutable: tuples, not lists).
        help: one line for ``--help``.
        choices: the accepted values, if the field is an enumeration.
        metavar: the placeholder shown in ``--help``.
        cli: False keeps the field off the command line (library-only).
    """
    meta = {"help": help, "cli": cli}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if metavar is not None:
        meta["metavar"] = metavar
    return dataclasses.field(default=default, metadata=meta)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of an options dataclass that appear on the command line."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]
