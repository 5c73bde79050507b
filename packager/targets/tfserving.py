"""TF-Serving target: the layout ``tensorflow/serving`` loads, with batching and warmup.

Layout written under the base folder::

    models.config                           model_config_list (every model of the base; merged, not clobbered)
    batching_parameters.txt                 BatchingParameters (use with --enable_batching)
    <name>/<version>/saved_model.pb         the exported graph, variables/, packager.json
    <name>/<version>/assets.extra/tf_serving_warmup_requests
                                            PredictionLog TFRecords: real strings run at load time
    _examples/<name>/predict_rest.json      a REST request with strings  (+ predict_rest.sh: curl)
    _examples/<name>/predict_grpc.pbtxt     the same PredictRequest in text format (+ predict_grpc.py)

TF-Serving links the TF-Text ops itself (2.20.0 has TF-Text 2.20.0), so no op library is copied;
whether a server release has every op the graph uses is checked by packager.oplibs.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import TargetError
from ..files import require_sanitized
from ..manifest import Manifest
from ..options import opt
from ..servers import Server, get_server
from ..templating import render_template
from ..writer import Content
from .base import BuildContext, Layout

if TYPE_CHECKING:
    from .compose import StackOptions

DEFAULT_OUTPUT = "tfserving_models"
MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
EXAMPLES_DIR = "_examples"
SAMPLE_TEXTS = ("Hello world!", "Café naïve résumé — 中文 🙂")


@dataclass(frozen=True)
class TFServingOptions:
    """TF-Serving settings (all with working defaults).

    Attributes:
        base_path_prefix: where the base folder is mounted in the container; ``base_path`` is
            ``<prefix>/<name>``.
        version_policy: ``"latest"``, ``"all"`` or a tuple of versions to serve.
        latest_versions: how many versions ``"latest"`` serves.
        max_batch_size, batch_timeout_us, max_enqueued_batches, num_batch_threads, allowed_batch_sizes:
            the server-wide BatchingParameters.
        warmup: write ``assets.extra/tf_serving_warmup_requests``.
        warmup_texts: the strings sent at load time (one request at batch 1, one with all of them).
        server_version: the TF-Serving release the graph must run on (packager.servers; default 2.20).
        image: the TF-Serving image (default: the one of ``server_version``), recorded in the examples.
    """

    base_path_prefix: str = opt("/models", "where the base folder is mounted in the container")
    version_policy: str | tuple[int, ...] = opt("latest", "latest, all, or versions", cli=False)
    latest_versions: int = opt(1, "how many versions 'latest' serves", cli=False)
    max_batch_size: int = opt(64, "largest batch the server-wide batcher forms")
    batch_timeout_us: int = opt(1000, "how long the batcher waits for a batch to fill (us)")
    max_enqueued_batches: int = opt(100, "batches queued before requests are refused")
    num_batch_threads: int = opt(2, "threads that run batches")
    allowed_batch_sizes: tuple[int, ...] = opt((), "batch sizes the batcher pads to, ending with max_batch_size")
    warmup: bool = opt(True, "write warmup requests (assets.extra/tf_serving_warmup_requests)")
    warmup_texts: tuple[str, ...] = opt(SAMPLE_TEXTS, "warmup strings", cli=False)
    server_version: str | None = opt(None, "the TF-Serving release to build for (2.12 .. 2.20; default 2.20)")
    image: str | None = opt(None, "the TF-Serving image (default: the release's)")

    def __post_init__(self):
        problems = []
        if not self.base_path_prefix.startswith("/") or any(not c.isprintable() for c in self.base_path_prefix):
            problems.append(f"base_path_prefix must be an absolute container path, not {self.base_path_prefix!r}")
        if isinstance(self.version_policy, str):
            if self.version_policy not in ("latest", "all"):
                problems.append(f"version_policy must be 'latest', 'all' or versions, not {self.version_policy!r}")
        elif not self.version_policy or any(int(v) < 1 for v in self.version_policy):
            problems.append("a specific version_policy needs version numbers >= 1")
        for field_name in ("latest_versions", "max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, field_name) < 1:
                problems.append(f"{field_name} must be >= 1")
        if self.batch_timeout_us < 0:
            problems.append("batch_timeout_us must be >= 0")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size or sizes[0] < 1):
            problems.append("allowed_batch_sizes must increase and end with max_batch_size")
        if self.warmup and not self.warmup_texts:
            problems.append("warmup needs at least one text")
        if problems:
            raise TargetError("invalid TF-Serving options: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------ TFRecords
def tfrecords(records: Sequence[bytes]) -> bytes:
    """Serialized records framed as a TFRecord file (TensorFlow's own writer: lengths and masked CRC-32C)."""
    import tensorflow as tf

    fd, path = tempfile.mkstemp(suffix=".tfrecord")
    os.close(fd)
    try:
        with tf.io.TFRecordWriter(path) as writer:
            for rec in records:
                writer.write(rec)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


# ------------------------------------------------------------------------------------------ protos
def predict_request(name: str, texts: Sequence[str | bytes], input_key: str | Sequence[str],
                    signature: str = "serving_default"):
    """A ``PredictRequest`` carrying raw strings as rank-1 DT_STRING tensors (what TF-Serving feeds the graph).

    ``input_key`` may name several inputs (a reranker's ``query`` and ``document``): each gets ``texts``.
    """
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = signature
    for key in [input_key] if isinstance(input_key, str) else list(input_key):
        req.inputs[key].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(texts))]),
            string_val=[t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts],
        ))
    return req


def warmup_records(name: str, input_keys: str | Sequence[str], texts: Sequence[str]) -> bytes:
    """``tf_serving_warmup_requests``: PredictionLogs at batch 1 and at batch len(texts)."""
    from tensorflow_serving.apis import prediction_log_pb2

    batches = [list(texts[:1])] + ([list(texts)] if len(texts) > 1 else [])
    logs = []
    for batch in batches:
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(predict_request(name, batch, input_keys))
        logs.append(log.SerializeToString())
    return tfrecords(logs)


@lru_cache(maxsize=1)
def batching_parameters_class():
    """``tensorflow.serving.BatchingParameters`` (fields 1-7 of session_bundle_config.proto).

    tensorflow-serving-api does not ship this message, so its descriptor is declared here from the
    official .proto to validate the rendered file exactly like the server parses it.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf import wrappers_pb2  # noqa: F401  (registers wrappers.proto in the default pool)

    fdp = descriptor_pb2.FileDescriptorProto(
        name="packager/tensorflow_serving_batching_parameters.proto",
        package="tensorflow.serving", syntax="proto3", dependency=["google/protobuf/wrappers.proto"],
    )
    msg = fdp.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for num, fname, kind, type_name, label in [
        (1, "max_batch_size", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (2, "batch_timeout_micros", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (3, "max_enqueued_batches", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (4, "num_batch_threads", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (5, "thread_pool_name", F.TYPE_MESSAGE, ".google.protobuf.StringValue", F.LABEL_OPTIONAL),
        (6, "allowed_batch_sizes", F.TYPE_INT64, None, F.LABEL_REPEATED),
        (7, "pad_variable_length_inputs", F.TYPE_BOOL, None, F.LABEL_OPTIONAL),
    ]:
        field = msg.field.add(name=fname, number=num, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.Default()
    try:
        fd = pool.FindFileByName(fdp.name)
    except KeyError:
        fd = pool.Add(fdp) if hasattr(pool, "Add") else None
        fd = pool.FindFileByName(fdp.name)
    return message_factory.GetMessageClass(fd.message_types_by_name["BatchingParameters"])


# ------------------------------------------------------------------------------------------ render
def _entry(name: str, options: TFServingOptions) -> str:
    policy = options.version_policy
    return render_template(
        "tfserving/model_entry.pbtxt.j2",
        name=name,
        base_path=f"{options.base_path_prefix.rstrip('/')}/{name}",
        version_policy=policy if isinstance(policy, str) else [int(v) for v in policy],
        latest_versions=options.latest_versions,
    ).strip()


def render_models_config(name: str, options: TFServingOptions, existing: str | None = None,
                         packager_version: str = "?") -> str:
    """``models.config`` with this model's entry added or replaced; other models' entries are kept.

    Raises:
        TargetError: the existing file does not parse as a ModelServerConfig.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    entries = []
    if existing and existing.strip():
        cfg = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(existing, cfg)
        except text_format.ParseError as exc:
            raise TargetError(f"the existing {MODELS_CONFIG} does not parse: {exc}; fix or remove it") from exc
        for other in cfg.model_config_list.config:
            if other.name != name:
                entries.append(text_format.MessageToString(other, as_utf8=True).strip())
    entries.append(_entry(name, options))
    return render_template("tfserving/models.config.j2", entries=entries, packager_version=packager_version)


def render_batching_parameters(options: TFServingOptions) -> str:
    return render_template(
        "tfserving/batching_parameters.txt.j2",
        max_batch_size=options.max_batch_size,
        batch_timeout_us=options.batch_timeout_us,
        max_enqueued_batches=options.max_enqueued_batches,
        num_batch_threads=options.num_batch_threads,
        allowed_batch_sizes=list(options.allowed_batch_sizes),
    )


def render_files(
    manifest: Manifest,
    savedmodel_dir: Path | None,
    *,
    name: str,
    version: int = 1,
    options: TFServingOptions = TFServingOptions(),
    existing_models_config: str | None = None,
) -> dict[str, Content]:
    """Everything under the base folder as ``{relative path: content}``.

    Args:
        manifest: the export's manifest.
        savedmodel_dir: the exported SavedModel (``None``: text files only).
        name: the sanitized model name.
        version: the version folder.
        options: TF-Serving options.
        existing_models_config: the base folder's current ``models.config`` (merged).
    """
    from google.protobuf import text_format

    require_sanitized(name)
    if version < 1:
        raise TargetError(f"version must be >= 1, not {version}")
    v = str(int(version))
    input_keys = list(manifest.inputs)
    texts = list(options.warmup_texts) or list(SAMPLE_TEXTS)
    files: dict[str, Content] = {
        MODELS_CONFIG: render_models_config(name, options, existing_models_config, manifest.packager_version),
        BATCHING_FILE: render_batching_parameters(options),
    }
    if savedmodel_dir is not None:
        files[f"{name}/{v}"] = Path(savedmodel_dir)
    if options.warmup:
        files[f"{name}/{v}/{WARMUP_FILE}"] = warmup_records(name, input_keys, texts)
    ex = f"{EXAMPLES_DIR}/{name}"
    instances = texts if len(input_keys) == 1 else [{k: t for k in input_keys} for t in texts]
    files[f"{ex}/predict_rest.json"] = json.dumps(
        {"signature_name": "serving_default", "instances": instances}, ensure_ascii=False, indent=2) + "\n"
    files[f"{ex}/predict_rest.sh"] = render_template("tfserving/predict_rest.sh.j2", name=name)
    files[f"{ex}/predict_grpc.pbtxt"] = (
        "# tensorflow.serving.PredictRequest (text format) for PredictionService/Predict on port 8500\n"
        + text_format.MessageToString(predict_request(name, texts, input_keys), as_utf8=True))
    files[f"{ex}/predict_grpc.py"] = render_template(
        "tfserving/predict_grpc.py.j2", name=name, input_keys=input_keys, output_key=manifest.output_key,
        sample_texts=texts, task=manifest.task)
    return files


# ------------------------------------------------------------------------------------- the target API
Options = TFServingOptions


@dataclass(frozen=True)
class Plan:
    """The options with the release resolved (``image`` filled in)."""

    options: TFServingOptions
    server: Server


def check(options: TFServingOptions, export_dir: Path | None = None, manifest: Manifest | None = None) -> Plan:
    """Resolve the release; with an export, refuse a graph it cannot run (each missing op named).

    TF-Serving links the TF-Text ops itself, so nothing is copied beside the model.
    """
    srv = get_server("tfserving", options.server_version)
    if export_dir is not None:
        from ..compat import check_compatible

        check_compatible(export_dir, srv)  # before anything is written: an op the server lacks fails here
    return Plan(replace(options, image=options.image or srv.image), srv)


def render(manifest: Manifest, export_dir: Path | None, *, ctx: BuildContext, plan: Plan) -> Layout:
    """The base folder layout; ``models.config`` keeps the other models' entries."""
    existing = ctx.output / MODELS_CONFIG
    files = render_files(manifest, export_dir, name=ctx.name, version=ctx.version, options=plan.options,
                         existing_models_config=existing.read_text(encoding="utf-8") if existing.is_file() else None)
    return Layout(root=ctx.output, model_dir=ctx.output / ctx.name, files=files,
                  exclusive=(f"{ctx.name}/{ctx.version}",), replace=(f"{EXAMPLES_DIR}/{ctx.name}",))


def stack(plan: Plan, *, name: str) -> "StackOptions":
    """The compose stack that serves this base folder."""
    from .compose import StackOptions

    return StackOptions(target="tfserving", model_name=name, repo_mount=plan.options.base_path_prefix,
                        image=plan.options.image)
