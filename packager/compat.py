"""Can a server run a graph? Compares the ops a SavedModel uses with a server release's op set.

This is the one module that knows both the op sets (:mod:`packager.oplibs`) and the server table
(:mod:`packager.servers`); neither of those imports the other.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable, Mapping

from .errors import TargetError
from .manifest import Manifest
from .oplibs import OpSet, all_opsets, load_opset, read_graph_ops, version_key
from .servers import SERVERS, Server, get_server


def server_opset(server: Server) -> OpSet:
    """The generated op set of a server's TF core ops + TF-Text ops."""
    return load_opset(server.tensorflow, server.tensorflow_text or None)


def _graph_requirements(source) -> tuple[dict[str, frozenset[str]], str]:
    """(op -> attrs used, a description) from an export dir, a manifest path, a Manifest or its dict."""
    if isinstance(source, Mapping):
        source = Manifest.from_dict(dict(source))
    if isinstance(source, Manifest):
        ops = source.ops or source.custom_ops
        return {op: frozenset() for op in ops}, f"export of {source.name or source.source or 'a model'}"
    path = Path(source)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return dict(read_graph_ops(path).ops), str(path)
    if path.is_file():
        sibling = path.parent / "saved_model.pb"
        if sibling.is_file():
            return dict(read_graph_ops(path.parent).ops), str(path.parent)
        return _graph_requirements(Manifest.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    raise TargetError(f"{source} is neither a SavedModel folder nor a packager.json manifest")


def find_problems(ops: Mapping[str, Iterable[str]], opset: OpSet) -> list[tuple[str, str | None]]:
    """(op, None) for each op the op set lacks; (op, attr) for each attr its op does not accept."""
    problems: list[tuple[str, str | None]] = []
    for op, attrs in sorted(ops.items()):
        known = opset.attrs(op)
        if known is None:
            problems.append((op, None))
            continue
        problems.extend((op, a) for a in sorted(set(attrs) - set(known)))
    return problems


def releases_with(op: str, attr: str | None = None) -> list[str]:
    """Generated releases that register ``op`` (and accept ``attr``), e.g. ``["TF-Text 2.20.0", ...]``."""
    hits = []
    for s in all_opsets():
        if op in s.core and (attr is None or attr in s.core[op]):
            hits.append(f"TF {s.tensorflow}")
        elif op in s.text and (attr is None or attr in s.text[op]):
            hits.append(f"TF-Text {s.tensorflow_text}")
    seen: list[str] = []
    for h in hits:
        if h not in seen:
            seen.append(h)
    return seen


def _span(releases: list[str]) -> str:
    if not releases:
        return "no generated TF or TF-Text release"
    groups: dict[str, list[str]] = {}
    for r in releases:
        kind, v = r.rsplit(" ", 1)
        groups.setdefault(kind, []).append(v)
    return "; ".join(f"{k} {', '.join(sorted(vs, key=version_key))}" for k, vs in groups.items())


# Attrs that only name things for debugging; a runtime that lacks them loses nothing.
INFORMATIONAL_ATTRS = frozenset({("VarHandleOp", "debug_name"), ("_XlaAotOnlyVarHandleOp", "debug_name")})


class CompatibilityWarning(UserWarning):
    """The target runs the graph, but ignores an attr a node sets."""


def check_compatible(manifest_or_export_dir, server, *, strict_attrs: bool = True) -> None:
    """Refuse a server whose TF / TF-Text cannot run the graph; call it before writing anything.

    Every op type (graph and function library) must be registered in the server's op set, and
    every attr a node sets must be known to it. TF 2.12 and later log "Unknown attributes will be
    ignored" and load such a graph anyway, but an ignored attr can change what the op does:
    ``TensorListSetItem.resize_if_index_out_of_bounds`` (TF 2.13+, set by a growing TensorArray)
    made TF 2.12 fail at the first call ("Trying to modify element 0 in a list with 0 elements"),
    which the compat test caught. So an unknown attr is refused; default-valued attrs are stripped
    at export, so such an attr is always a non-default one. Attrs known to be informational
    (``VarHandleOp.debug_name``, added in TF 2.15) pass silently.

    Args:
        manifest_or_export_dir: an export folder (full check of ops and attrs), its
            ``packager.json``, or a manifest dict (op names only).
        server: a :class:`packager.servers.Server` or a spec like ``"tfserving:2.12"``.
        strict_attrs: ``False`` turns an unknown attr into a :class:`CompatibilityWarning`
            (for a graph whose attrs were checked by hand).

    Raises:
        TargetError: one message naming each missing op (or attr, when strict) and the releases
            that have it, and the servers in the table that can run the graph.
    """
    srv = server if isinstance(server, Server) else get_server(server)
    ops, what = _graph_requirements(manifest_or_export_dir)
    problems = [p for p in find_problems(ops, server_opset(srv)) if p not in INFORMATIONAL_ATTRS]
    fatal = [p for p in problems if p[1] is None or strict_attrs]
    soft = [p for p in problems if p not in fatal]
    head = f"{srv.label} (TF {srv.tensorflow}, TF-Text {srv.tensorflow_text or 'none'})"
    if soft:
        warnings.warn(CompatibilityWarning(
            f"{head} ignores: " + "; ".join(f"attr {a!r} of {op} (known to {_span(releases_with(op, a))})" for op, a in soft)),
            stacklevel=2)
    if not fatal:
        return
    libmap = {op: lib for s in all_opsets() for lib, names in s.libraries.items() for op in names}
    lines = [f"{head} cannot run the {what}:"]
    for op, attr in fatal:
        lib = f" from {libmap[op]}" if op in libmap else ""
        if attr is None:
            lines.append(f"  - op {op!r}{lib} is not registered there; it is in {_span(releases_with(op))}")
        else:
            lines.append(f"  - op {op!r} sets attr {attr!r}, unknown there; it is known to {_span(releases_with(op, attr))}")
    ok = [s.label for s in _all_servers()
          if not [p for p in find_problems(ops, server_opset(s)) if p not in INFORMATIONAL_ATTRS and (p[1] is None or strict_attrs)]]
    lines.append(f"  servers that can run it: {', '.join(ok) if ok else 'none in the table'}"
                 " (pick one with server_version, or export a graph without these ops)")
    raise TargetError("\n".join(lines))


def _all_servers() -> tuple[Server, ...]:
    return SERVERS
