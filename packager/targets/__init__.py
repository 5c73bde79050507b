"""Serving targets: lay an export out for a server, through one pipeline.

A target is a module of this package registered in :data:`TARGETS`. Each provides:

* ``Options``: a frozen dataclass of its settings (validated in ``__post_init__``; the CLI builds
  its flags from the fields' ``metadata["help"]``);
* ``check(options, export_dir=None, manifest=None) -> Plan``: what the server needs, resolved
  (its release, image, op libraries). Called once before the export with no export (a bad release
  fails in a second) and once after it (the graph's ops against the server's);
* ``render(manifest, export_dir, *, output, name, version, plan) -> Layout``: a pure function
  from specs to files;
* ``stack(plan, *, name) -> StackOptions``: the docker-compose stack that serves the layout.

:func:`build` runs export → check → render → write (atomically, :mod:`packager.writer`) → stack.

Example:
    >>> build(None, target="triton", output="model_repository", backend="python")   # doctest: +SKIP
    PosixPath('/.../model_repository/all-minilm-l6-v2')
"""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from ..errors import TargetError
from ..files import sanitize_name
from ..manifest import Manifest
from ..templating import render_template
from ..writer import work_dir_beside, write_tree
from . import tfserving, triton
from .base import BuildContext, Layout

TARGETS: dict[str, ModuleType] = {"triton": triton, "tfserving": tfserving}

__all__ = ["TARGETS", "Layout", "build", "build_from_export", "make_options", "render_template", "sanitize",
           "target_module", "write_kubernetes", "write_stack"]


def sanitize(name: str) -> str:
    """A model name Triton and TF-Serving accept and no template can be tricked by: ``[a-z0-9_-]``."""
    return sanitize_name(name)


def target_module(target: str) -> ModuleType:
    """The registered target module.

    Raises:
        TargetError: unknown target, listing the known ones.
    """
    try:
        return TARGETS[target]
    except KeyError:
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}") from None


def make_options(target: str, options: Any = None, **target_options: Any):
    """The target's ``Options``: ``options`` as given, or built from keyword arguments.

    Raises:
        TargetError: an option the target does not have (listing the ones it has), or invalid values.
    """
    cls = target_module(target).Options
    if isinstance(options, cls) and not target_options:
        return options
    if options is not None:
        raise TargetError(f"give {cls.__name__} or keyword options, not both")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(target_options) - known)
    if unknown:
        raise TargetError(f"unknown option(s) for the {target} target: {', '.join(unknown)}; "
                          f"it has: {', '.join(sorted(known))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in target_options.items()})


def _output(target: str, output) -> Path:
    return Path(output or target_module(target).DEFAULT_OUTPUT).absolute()


def build_from_export(
    export_dir: str | os.PathLike,
    *,
    target: str = "triton",
    output: str | os.PathLike | None = None,
    name: str | None = None,
    version: int = 1,
    force: bool = False,
    manifest: Manifest | None = None,
    options: Any = None,
    **target_options: Any,
) -> Path:
    """Lay out an existing export (a SavedModel folder with ``packager.json``) for a server.

    Args:
        export_dir: the SavedModel written by :func:`packager.graph.export`.
        target: a key of :data:`TARGETS`.
        output: the repository (Triton) or base folder (TF-Serving); default per target.
        name: the served model name (sanitized to ``[a-z0-9_-]``); default: the export's name.
        version: the version folder (an existing one is replaced only with ``force``; others are kept).
        force: replace an existing version.
        manifest: the export manifest, if already read.
        options: the target's ``Options`` (or give its fields as keyword arguments).

    Returns:
        The model folder.
    """
    from ..manifest import read as read_manifest

    module = target_module(target)
    opts = make_options(target, options, **target_options)
    if int(version) < 1:
        raise TargetError(f"version must be >= 1, not {version}")
    export_dir = Path(export_dir)
    manifest = manifest or read_manifest(export_dir)
    ctx = BuildContext(output=_output(target, output), name=sanitize(name or manifest.name or "model"),
                       version=int(version), force=force)
    plan = module.check(opts, export_dir=export_dir, manifest=manifest)  # before anything is written
    layout = module.render(manifest, export_dir, ctx=ctx, plan=plan)
    layout.root.mkdir(parents=True, exist_ok=True)
    write_tree(layout.root, layout.files, force=force, exclusive=layout.exclusive, replace=layout.replace,
               staging=layout.staging)
    return layout.model_dir


def build(
    model: str | os.PathLike | None = None,
    *,
    target: str = "triton",
    output: str | os.PathLike | None = None,
    name: str | None = None,
    version: int = 1,
    force: bool = False,
    options: Any = None,
    export_options: Mapping[str, Any] | None = None,
    **target_options: Any,
) -> Path:
    """Export ``model`` once and lay it out for ``target`` (what ``packager build`` calls).

    Args:
        model: a model folder, a name in the local HF cache, or ``None`` for the embedded default.
        export_options: keyword arguments of :func:`packager.graph.export` (e.g. ``truncate_dim``,
            ``precision``).
        target, output, name, version, force, options, **target_options: see :func:`build_from_export`.

    Returns:
        The model folder.

    Raises:
        UnsupportedError: an unknown ``precision``, or ``"bf16"`` on a CPU without bfloat16 matmuls
            (before anything is written, the scratch folder included).
    """
    from ..encoders.precision import check_precision
    from ..graph import export

    module = target_module(target)
    opts = make_options(target, options, **target_options)
    module.check(opts)  # a typo in a release or image must not cost an export
    check_precision(dict(export_options or {}).get("precision", "fp32"))
    out = _output(target, output)
    # Export beside the output (same filesystem: the SavedModel's files are copied once, locally).
    with work_dir_beside(out) as tmp:
        manifest = export(model, tmp / "export", force=False, **dict(export_options or {}))
        return build_from_export(tmp / "export", target=target, output=out, name=name, version=version,
                                 force=force, manifest=manifest, options=opts)


def write_stack(target: str, repository: str | os.PathLike, name: str, options: Any = None, *,
                compose_dir: str | os.PathLike = "compose", **overrides: Any) -> Path:
    """Write the compose stack that serves a finished build to ``<compose_dir>/<stack>/``.

    Args:
        target: the build's target.
        repository: the folder the build wrote (Triton model repository or TF-Serving base folder).
        name: the served model name.
        options: the build's target ``Options`` (backend, GPU, image and mount point carry over).
        compose_dir: where stack folders go.
        **overrides: any :class:`~packager.targets.compose.StackOptions` field.
    """
    from dataclasses import replace

    from .compose import write_stack as write_compose

    module = target_module(target)
    opts = make_options(target, options)
    stack = module.stack(module.check(opts), name=name)
    if overrides:
        stack = replace(stack, **overrides)
    return write_compose(Path(compose_dir) / stack.stack_name, stack, repository=repository)


def write_kubernetes(name: str, options: Any = None, *, out_dir: str | os.PathLike = "kubernetes", version: int = 1,
                     settings: Mapping[str, Any] | None = None) -> Path:
    """Write the Kubernetes bundle (kustomize base, CPU/GPU overlays, KServe) for a Triton build.

    Args:
        name: the served model name.
        options: the build's :class:`~packager.targets.triton.TritonOptions` (backend and mount carry over).
        out_dir: where bundles go: ``<out_dir>/<name>/``.
        version: the model version (the default model image tag).
        settings: fields of :class:`~packager.targets.kubernetes.KubernetesOptions`.

    Returns:
        The bundle folder.
    """
    from . import kubernetes

    opts = make_options("triton", options)
    k8s = kubernetes.KubernetesOptions(**{"backend": opts.backend, "repo_mount": opts.repo_mount, **dict(settings or {})})
    files = kubernetes.render(k8s, model_name=sanitize(name), version=version)
    return write_tree(Path(out_dir).absolute() / sanitize(name), files, force=True,
                      replace=sorted({f.split("/")[0] for f in files}))
