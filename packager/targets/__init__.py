"""Serving targets: lay an export out for Triton or TF-Serving.

Each target is a pure ``render(manifest, savedmodel_dir, ...) -> {relative path: content}`` over Jinja
templates in ``templates/<target>/``; :func:`packager.targets.writer.write_tree` then writes the result
atomically. :func:`build` is what ``packager build`` calls: it exports the graph once, renders, writes.

Example:
    >>> build(None, target="triton", output="model_repository", backend="python")   # doctest: +SKIP
    PosixPath('/.../model_repository/all-minilm-l6-v2')
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..errors import TargetError

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates"
TARGETS = ("triton", "tfserving")
DEFAULT_OUTPUT = {"triton": "model_repository", "tfserving": "tfserving_models"}


# ------------------------------------------------------------------------------------------- templates
def _pbtxt_str(value: Any) -> str:
    """A protobuf text-format string literal: quotes, backslashes, newlines and bytes are escaped."""
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(str(value), as_utf8=True) + '"'


def _comment(value: Any) -> str:
    """Text safe inside a one-line ``#`` comment (no line breaks of any kind can get through)."""
    return json.dumps(str(value), ensure_ascii=True)


def yaml_str(value: Any) -> str:
    """A YAML double-quoted scalar that Compose reads back as exactly ``value``.

    JSON strings are valid YAML double-quoted scalars; ``$`` is doubled because Compose substitutes
    ``$VAR`` and ``${VAR}`` in every string value.
    """
    return json.dumps(str(value).replace("$", "$$"), ensure_ascii=True)


def _docker_arg(value: Any) -> str:
    """A Dockerfile JSON-array item (exec form), never a shell word."""
    return json.dumps(str(value), ensure_ascii=True)


@lru_cache(maxsize=1)
def _env():
    import jinja2

    if not TEMPLATES.is_dir():
        raise TargetError(f"templates folder {TEMPLATES} is missing (packager must run from its source tree)")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pbtxt_str"] = _pbtxt_str
    env.filters["pbtxt_comment"] = _comment
    env.filters["pyrepr"] = repr  # a Python literal: the only safe way to put a string into code
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    env.filters["shquote"] = lambda v: __import__("shlex").quote(str(v))
    env.filters["q"] = yaml_str  # compose YAML
    env.filters["dq"] = _docker_arg  # Dockerfile exec form
    return env


def render_template(template: str, /, **context: Any) -> str:
    """Render ``templates/<template>`` with strict undefined variables."""
    return _env().get_template(template).render(**context)


# ------------------------------------------------------------------------------------------- build
def sanitize(name: str) -> str:
    """A model name Triton and TF-Serving accept and no template can be tricked by: ``[a-z0-9_-]``."""
    from ..source import sanitize_name

    return sanitize_name(name)


def _options(cls, target_options: Mapping[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(target_options) - known)
    if unknown:
        raise TargetError(f"unknown option(s) for this target: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    coerced = {k: tuple(v) if isinstance(v, list) else v for k, v in target_options.items()}
    return cls(**coerced)


def _server(kind: str, version: str | None):
    """The server table row (packager.servers) a build targets."""
    from ..servers import get_server

    return get_server(kind, version)


def _target_server(target: str, options):
    """The server table row a build targets (packager.servers), or None for the Triton python backend.

    Resolved from the options alone, so :func:`build` can refuse a bad ``--server-version`` or
    ``--image`` before the (slow) export.
    """
    from ..servers import servers_of

    if target == "tfserving":
        return _server("tfserving", options.server_version)
    if options.backend != "tensorflow":
        return None
    if options.image:
        known = {s.image: s for s in servers_of("triton-tensorflow")}
        if options.image not in known:
            raise TargetError(
                f"no op libraries are known for {options.image!r}: the tensorflow backend needs TF-Text kernels "
                f"built for the exact TensorFlow inside the image. Supported images: {', '.join(known)}"
            )
        return known[options.image]
    return _server("triton-tensorflow", options.server_version)


def _tf_backend_op_libraries(export_dir: Path, manifest: Mapping, srv) -> dict[str, Path]:
    """Op libraries built for the TensorFlow inside the chosen Triton TF-backend image ``srv``.

    Returns:
        library file name -> cached .so path.
    """
    from ..oplibs import check_compatible, fetch_op_libraries

    check_compatible(export_dir, srv)
    needed = list(manifest.get("op_libraries", []))
    paths = fetch_op_libraries(srv.tensorflow_text, python_version=srv.python or "3.12", libraries=needed) if needed else []
    return {Path(p).name: Path(p) for p in paths}


def build_from_export(
    export_dir: str | os.PathLike,
    *,
    target: str = "triton",
    output: str | os.PathLike | None = None,
    name: str | None = None,
    version: int = 1,
    force: bool = False,
    manifest: Mapping | None = None,
    **target_options: Any,
) -> Path:
    """Lay out an existing export (a SavedModel folder with ``packager.json``) for a server.

    Args:
        export_dir: the SavedModel written by :func:`packager.graph.export`.
        target: ``"triton"`` or ``"tfserving"``.
        output: the repository (Triton) or base folder (TF-Serving); default per target.
        name: the served model name (sanitized to ``[a-z0-9_-]``); default: the export's name.
        version: the version folder (an existing one is replaced only with ``force``; others are kept).
        force: replace an existing version.
        manifest: the export manifest, if already read.
        **target_options: fields of :class:`~packager.targets.triton.TritonOptions` or
            :class:`~packager.targets.tfserving.TFServingOptions`.

    Returns:
        The model folder: ``<output>/<name>``.
    """
    from ..graph import read_manifest
    from .writer import write_tree

    if target not in TARGETS:
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if int(version) < 1:
        raise TargetError(f"version must be >= 1, not {version}")
    export_dir = Path(export_dir)
    manifest = dict(manifest or read_manifest(export_dir))
    model_name = sanitize(name or manifest.get("name") or "model")
    out = Path(output or DEFAULT_OUTPUT[target]).absolute()
    if target == "triton":
        from . import triton

        opts = _options(triton.TritonOptions, target_options)
        libs, image_tf = ({}, manifest.get("tensorflow"))
        srv = _target_server(target, opts)
        if srv is not None:
            libs, image_tf = _tf_backend_op_libraries(export_dir, manifest, srv), srv.tensorflow
            opts = replace(opts, image=srv.image)
        files = triton.render(manifest, export_dir, name=model_name, version=int(version), options=opts,
                              op_library_files=libs, image_tf=image_tf)
        # Stage beside the repository, not in it: Triton refuses to start on a folder it cannot load.
        out.mkdir(parents=True, exist_ok=True)
        return write_tree(out / model_name, files, force=force, exclusive=triton.exclusive_paths(version),
                          replace=triton.shared_paths(), staging=out.parent)
    from . import tfserving

    opts = _options(tfserving.TFServingOptions, target_options)
    from ..oplibs import check_compatible

    srv = _target_server(target, opts)
    check_compatible(export_dir, srv)  # before anything is written: an op the server lacks fails here
    opts = replace(opts, image=opts.image or srv.image)
    existing = out / tfserving.MODELS_CONFIG
    files = tfserving.render(manifest, export_dir, name=model_name, version=int(version), options=opts,
                             existing_models_config=existing.read_text(encoding="utf-8") if existing.is_file() else None)
    write_tree(out, files, force=force, exclusive=tfserving.exclusive_paths(model_name, version),
               replace=[f"{tfserving.EXAMPLES_DIR}/{model_name}"])
    return out / model_name


def build(
    model: str | os.PathLike | None = None,
    *,
    target: str = "triton",
    output: str | os.PathLike | None = None,
    name: str | None = None,
    version: int = 1,
    force: bool = False,
    **target_options: Any,
) -> Path:
    """Export ``model`` once and lay it out for ``target`` (what ``packager build`` calls).

    Args:
        model: a model folder, a name in the local HF cache, or ``None`` for the embedded default.
        target, output, name, version, force, **target_options: see :func:`build_from_export`.

    Returns:
        The model folder: ``<output>/<name>``.
    """
    from ..graph import export

    if target not in TARGETS:
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    # Check the options before the (slow) export, so a typo fails in a second ...
    if target == "triton":
        from .triton import TritonOptions as cls
    else:
        from .tfserving import TFServingOptions as cls
    # ... and the server release (a typo in --server-version or --image must not cost an export).
    _target_server(target, _options(cls, target_options))
    out = Path(output or DEFAULT_OUTPUT[target]).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Export beside the output (same filesystem: the SavedModel's files are copied once, locally).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.packager-export-", dir=out.parent))
    try:
        manifest = export(model, tmp / "export", force=False)
        return build_from_export(tmp / "export", target=target, output=out, name=name, version=version,
                                 force=force, manifest=manifest, **target_options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------- CLI
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def add_cli_options(p: argparse.ArgumentParser) -> None:
    """Add the target options to ``packager build`` (every default is None: the dataclass defaults apply)."""
    p.add_argument("--name", help="served model name (sanitized to [a-z0-9_-]; default: from the model)")
    p.add_argument("--version", type=int, help="version folder to write (default 1; other versions are kept)")
    t = p.add_argument_group("triton")
    t.add_argument("--backend", choices=["python", "tensorflow"],
                   help="python (default: any Triton image, and `packager serve`) or tensorflow (images <= 25.02)")
    t.add_argument("--max-batch-size", type=int, help="largest batch per execution (default 64)")
    t.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_const", const=False,
                   help="turn Triton's dynamic batcher off")
    t.add_argument("--preferred-batch-sizes", type=_int_list, help="e.g. 8,16,32")
    t.add_argument("--max-queue-delay-us", type=int, help="dynamic batching queue delay (default 1000)")
    t.add_argument("--instance-count", type=int, help="model instances (default 1)")
    t.add_argument("--instance-kind", choices=["KIND_CPU", "KIND_GPU", "cpu", "gpu"], help="default KIND_CPU")
    t.add_argument("--gpus", type=_int_list, help="GPU ids for KIND_GPU instances")
    t.add_argument("--no-warmup", dest="warmup", action="store_const", const=False, help="no model_warmup")
    t.add_argument("--image", help="Triton image the repository targets (TF backend: decides the op libraries' TF)")
    t.add_argument("--repo-mount", help="where the repository is mounted in the container (default /models)")
    t.add_argument("--max-string-bytes", type=int, help="python backend: longer strings are refused (default 262144)")
    t.add_argument("--intra-op-threads", type=int, help="python backend: threads per TensorFlow op (default 0: one per core)")
    t.add_argument("--inter-op-threads", type=int, help="python backend: TensorFlow ops run at once (default 0: TF's default)")
    t.add_argument("--no-onednn", dest="onednn", action="store_const", const=False,
                   help="python backend: turn TensorFlow's oneDNN rewrites off (on by default: fused matmul+GELU)")
    p.add_argument("--server-version", help="server release to build for (Triton TF backend: 25.02; TF-Serving: 2.12 .. 2.20)")
    s = p.add_argument_group("tfserving")
    s.add_argument("--base-path-prefix", help="where the base folder is mounted in the container (default /models)")
    s.add_argument("--num-batch-threads", type=int, help="batching threads (default 2)")
    s.add_argument("--batch-timeout-us", type=int, help="batching timeout (default 1000)")


def cli_options(args: argparse.Namespace, target: str) -> dict:
    """The options of ``args`` that ``target`` takes (None and the other target's options dropped)."""
    from .tfserving import TFServingOptions
    from .triton import TritonOptions

    cls = TritonOptions if target == "triton" else TFServingOptions
    known = {f.name for f in fields(cls)} | {"name", "version"}
    return {k: v for k, v in vars(args).items() if k in known and v is not None}
