"""JSON and path safety, shared by every stage (imports nothing else from packager but errors)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ModelError


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of the model folder.

    Raises:
        ModelError: naming ``what`` when the file is missing or does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"missing {what}: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot parse {what} {path}: {exc}") from exc


def read_optional_json(path: Path, what: str) -> dict:
    """Like :func:`read_json`, but an absent file is an empty dict."""
    return read_json(path, what) if Path(path).is_file() else {}


def safe_join(root: Path, rel: str) -> Path:
    """Join ``rel`` under ``root`` and refuse anything that escapes it (``..``, absolute, symlinks).

    Raises:
        ModelError: when the resolved path is outside ``root``.
    """
    root_real = Path(os.path.realpath(root))
    if rel and (os.path.isabs(rel) or rel.startswith(("/", "\\"))):
        raise ModelError(f"path {rel!r} in the model folder is absolute; only relative paths are allowed")
    target = Path(os.path.realpath(root_real / rel)) if rel else root_real
    if target != root_real and root_real not in target.parents:
        raise ModelError(f"path {rel!r} resolves to {target}, outside the model folder {root_real}")
    return target


def sanitize_name(raw: str) -> str:
    """Turn any string into a Triton/TF-Serving/Kubernetes-safe model name ``[a-z0-9_-]``."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in raw.lower())
    out = out.strip("-_") or "model"
    return out[:64]


def require_sanitized(name: str) -> str:
    """``name`` itself, if :func:`sanitize_name` leaves it unchanged.

    Raises:
        TargetError: naming the sanitized form to use instead.
    """
    from .errors import TargetError

    if name != sanitize_name(name):
        raise TargetError(f"model name {name!r} is not sanitized; use {sanitize_name(name)!r}")
    return name
