"""The one Jinja environment every target renders with, and where the templates are found.

The templates live in the top-level ``templates/`` folder of the source tree; the wheel ships the
same files as ``packager/templates/`` (``pyproject.toml`` maps the folder into the package), so an
installed packager renders exactly what a checkout renders.
"""
from __future__ import annotations

import json
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import TargetError

_PACKAGE = Path(__file__).resolve().parent
CANDIDATES = (_PACKAGE / "templates", _PACKAGE.parent / "templates")


def templates_dir() -> Path:
    """The folder the templates are read from (installed package first, then the source tree).

    Raises:
        TargetError: when neither exists (a broken install).
    """
    for folder in CANDIDATES:
        if (folder / "triton" / "config.pbtxt.j2").is_file():
            return folder
    raise TargetError(f"packager's templates are missing (looked in {', '.join(map(str, CANDIDATES))}); "
                      "reinstall packager")


def pbtxt_str(value: Any) -> str:
    """A protobuf text-format string literal: quotes, backslashes, newlines and bytes are escaped."""
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(str(value), as_utf8=True) + '"'


def comment(value: Any) -> str:
    """Text safe inside a one-line ``#`` comment (no line breaks of any kind can get through)."""
    return json.dumps(str(value), ensure_ascii=True)


def yaml_str(value: Any) -> str:
    """A YAML double-quoted scalar that Compose reads back as exactly ``value``.

    JSON strings are valid YAML double-quoted scalars; ``$`` is doubled because Compose substitutes
    ``$VAR`` and ``${VAR}`` in every string value.
    """
    return json.dumps(str(value).replace("$", "$$"), ensure_ascii=True)


def yaml_plain_str(value: Any) -> str:
    """A YAML double-quoted scalar for files no variable substitution touches (Kubernetes)."""
    return json.dumps(str(value), ensure_ascii=True)


def docker_arg(value: Any) -> str:
    """A Dockerfile JSON-array item (exec form), never a shell word."""
    return json.dumps(str(value), ensure_ascii=True)


@lru_cache(maxsize=1)
def environment():
    """The Jinja environment: strict undefined variables, no autoescape, the quoting filters."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pbtxt_str"] = pbtxt_str
    env.filters["pbtxt_comment"] = comment
    env.filters["pyrepr"] = repr  # a Python literal: the only safe way to put a string into code
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    env.filters["q"] = yaml_str  # compose YAML
    env.filters["yq"] = yaml_plain_str  # Kubernetes YAML
    env.filters["dq"] = docker_arg  # Dockerfile exec form
    return env


def render_template(template: str, /, **context: Any) -> str:
    """Render ``templates/<template>`` with strict undefined variables."""
    return environment().get_template(template).render(**context)
