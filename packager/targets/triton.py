"""Triton Inference Server target: a model repository that serves raw strings.

Layout written under ``<repo>/<name>/``::

    config.pbtxt                 rendered from templates/triton/config.pbtxt.j2
    <version>/model.savedmodel/  the exported graph (+ packager.json)
    <version>/model.py           python backend only: templates/triton/model.py.j2
    ops/*.so                     tensorflow backend only: TF-Text kernels built for the image's TF
    warmup/sample                a real string in Triton's length-prefixed BYTES format
    packager-target.json         how it was built (backend, image, versions); Triton ignores it

Two backends:

* ``python`` (the default): runs on every Triton image, including 25.03 and later where the TensorFlow
  backend is gone, and on the tritonserver bundled in nvidia-pytriton (``packager serve``). Its
  ``model.py`` batches requests into one graph call and answers a bad request with its own error.
* ``tensorflow``: ``platform: "tensorflow_savedmodel"``, for images up to 25.02 (the last with the TF
  backend). The TF-Text op libraries are copied into ``ops/`` and listed in ``model_operations``; they
  must be built for the TensorFlow inside the image, not the local one.
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from ..errors import TargetError
from ..files import require_sanitized
from ..manifest import Manifest
from ..options import opt
from ..servers import Server, default_image, get_server, servers_of
from ..settings import PROJECTION_PARTS
from ..templating import render_template
from ..writer import Content
from .base import BuildContext, Layout

if TYPE_CHECKING:
    from .compose import StackOptions

BACKENDS = ("python", "tensorflow")
KINDS = ("KIND_CPU", "KIND_GPU")
DEFAULT_OUTPUT = "model_repository"
WARMUP_TEXT = "Warm-up: café, naïve résumé — 中文 tokens, emoji 🙂 and numbers 3.14!"
OP_DIR = "ops"
GPU_CONFIG_NAME = "gpu"
TARGET_INFO = "packager-target.json"


@dataclass(frozen=True)
class TritonOptions:
    """Everything a platform team tunes in a Triton model config (all with working defaults).

    Attributes:
        backend: ``"python"`` (any image, and the local tritonserver) or ``"tensorflow"`` (images <= 25.02).
        max_batch_size: the largest batch one model execution takes (>= 1).
        dynamic_batching: let Triton merge concurrent requests into one execution.
        preferred_batch_sizes: batch sizes the dynamic batcher aims for (empty: as large as possible).
        max_queue_delay_us: how long a request may wait for others to join its batch (0, the default: the
            batcher takes what queued while the model was busy, and a lone request never waits).
        instance_count: model instances (per GPU for KIND_GPU).
        instance_kind: ``"KIND_CPU"`` or ``"KIND_GPU"``.
        gpus: GPU ids for KIND_GPU instances (empty: all GPUs).
        warmup: run real string samples through the model when it loads.
        warmup_texts: the strings of the warmup sample (one batch row each; the first is used).
        image: the Triton image the repository is meant for (the TF backend's op libraries follow its TF).
        repo_mount: where the repository is mounted in the container (op library paths are absolute).
        version_policy: ``"latest"``, ``"all"`` or a list of version numbers to serve.
        latest_versions: how many versions ``"latest"`` serves.
        max_string_bytes: python backend: longer strings get a per-request error (0: no limit).
        server_version: tensorflow backend: the Triton release (packager.servers; default 25.02). The
            python backend runs packager's own pinned TensorFlow in any image, so it has no release to
            pick and refuses the option (choose the image with ``image``).
        onednn: python backend: TensorFlow's oneDNN graph rewrites (fused MatMul + BiasAdd + GELU).
        intra_op_threads, inter_op_threads: python backend: TensorFlow's threads per op and ops run at
            once. Both 0 (the default): ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` when set
            (the compose stack and Kubernetes set them), else :func:`packager.settings.thread_split` of
            the cores the server may use.
    """

    backend: str = opt("python", "python (any Triton image, and `packager serve`) or tensorflow (images <= 25.02)",
                       choices=BACKENDS)
    max_batch_size: int = opt(64, "largest batch per model execution")
    dynamic_batching: bool = opt(True, "Triton's dynamic batcher merges concurrent requests")
    preferred_batch_sizes: tuple[int, ...] = opt((), "batch sizes the dynamic batcher aims for, e.g. 8,16,32")
    max_queue_delay_us: int = opt(0, "how long a request may wait for others to join its batch (us); 0: a batch is what "
                                   "queued while the model was busy, no request waits for company")
    instance_count: int = opt(1, "model instances (per GPU for KIND_GPU)")
    instance_kind: str = opt("KIND_CPU", "where instances run", choices=("KIND_CPU", "KIND_GPU", "cpu", "gpu"))
    gpus: tuple[int, ...] = opt((), "GPU ids for KIND_GPU instances (default: all)")
    warmup: bool = opt(True, "run a real string through the model when it loads (model_warmup)")
    warmup_texts: tuple[str, ...] = opt((WARMUP_TEXT,), "warmup strings", cli=False)
    image: str | None = opt(None, "the Triton image the repository targets (TF backend: decides the op libraries' TF)")
    repo_mount: str = opt("/models", "where the repository is mounted in the container")
    version_policy: str | tuple[int, ...] = opt("latest", "latest, all, or versions", cli=False)
    latest_versions: int = opt(1, "how many versions 'latest' serves", cli=False)
    max_string_bytes: int = opt(256 * 1024, "python backend: longer strings get a per-request error (0: no limit)")
    server_version: str | None = opt(None, "tensorflow backend: the Triton release (default 25.02)")
    onednn: bool = opt(True, "python backend: TensorFlow's oneDNN rewrites (fused MatMul + BiasAdd + GELU)")
    intra_op_threads: int = opt(0, "python backend: threads per TensorFlow op (0: see --inter-op-threads)")
    inter_op_threads: int = opt(0, "python backend: TensorFlow ops run at once (both 0: the TF_NUM_*_THREADS "
                                   "environment, else the cores split as 1 per op x 2 ops at once on 2 cores)")

    def __post_init__(self):
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size must be >= 1, not {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            problems.append(f"preferred batch sizes must lie in 1..max_batch_size ({self.max_batch_size}): {bad}")
        if self.max_queue_delay_us < 0:
            problems.append("max_queue_delay_us must be >= 0")
        if self.instance_count < 1:
            problems.append(f"instance_count must be >= 1, not {self.instance_count}")
        kind = self.instance_kind.upper()
        kind = kind if kind.startswith("KIND_") else f"KIND_{kind}"
        object.__setattr__(self, "instance_kind", kind)
        if kind not in KINDS:
            problems.append(f"instance_kind must be KIND_CPU or KIND_GPU, not {self.instance_kind!r}")
        if self.gpus and kind != "KIND_GPU":
            problems.append("gpus is only meaningful with KIND_GPU")
        if self.warmup and not self.warmup_texts:
            problems.append("warmup needs at least one warmup text")
        if not (self.repo_mount.startswith("/") and all(c.isprintable() and c not in '"\\' for c in self.repo_mount)):
            problems.append(f"repo_mount must be an absolute container path, not {self.repo_mount!r}")
        if isinstance(self.version_policy, str):
            if self.version_policy not in ("latest", "all"):
                problems.append(f"version_policy must be 'latest', 'all' or a list of versions, not {self.version_policy!r}")
        elif not self.version_policy or any(int(v) < 1 for v in self.version_policy):
            problems.append("a specific version_policy needs version numbers >= 1")
        if self.latest_versions < 1:
            problems.append("latest_versions must be >= 1")
        if self.max_string_bytes < 0:
            problems.append("max_string_bytes must be >= 0")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            problems.append("thread counts must be >= 0 (both 0: the environment or packager's split)")
        if self.server_version is not None and self.backend == "python":
            problems.append(
                f"server_version {self.server_version!r} does not apply to the python backend: it runs packager's "
                "own pinned TensorFlow inside any Triton image (choose that image with image)")
        if problems:
            raise TargetError("invalid Triton options: " + "; ".join(problems))

    @property
    def image_tag(self) -> str:
        return self.image or default_image("triton-tensorflow" if self.backend == "tensorflow" else "triton-python")


def bytes_tensor_file(texts: Sequence[str | bytes]) -> bytes:
    """Serialize strings as Triton's raw BYTES tensor: each element a little-endian uint32 length + bytes.

    This is the format of ``input_data_file`` in ``model_warmup`` (and of binary tensor data over HTTP).
    """
    out = bytearray()
    for t in texts:
        b = t.encode("utf-8") if isinstance(t, str) else bytes(t)
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def read_bytes_tensor_file(data: bytes) -> list[bytes]:
    """Inverse of :func:`bytes_tensor_file` (used by the tests and by ``packager`` checks)."""
    out, i = [], 0
    while i < len(data):
        if i + 4 > len(data):
            raise ValueError("truncated length prefix")
        (n,) = struct.unpack_from("<I", data, i)
        i += 4
        if i + n > len(data):
            raise ValueError("truncated element")
        out.append(data[i : i + n])
        i += n
    return out


def warmup_samples(options: TritonOptions) -> list[dict]:
    """One warmup at batch 1 and one at the largest batch, so both code paths are traced before traffic."""
    if not options.warmup:
        return []
    sizes = sorted({1, options.max_batch_size})
    return [{"name": f"sample_batch_{b}", "batch_size": b, "file": "sample"} for b in sizes]


def prompt_input(manifest: Manifest, options: TritonOptions) -> str | None:
    """The optional prompt-name input: python backend only (the TF backend runs one signature,
    ``serving_default``, which applies the default prompt)."""
    from .. import PROMPT_KEY

    return PROMPT_KEY if manifest.prompts and options.backend == "python" else None


def _context(manifest: Manifest, name: str, options: TritonOptions) -> dict:
    """What both templates (config.pbtxt and model.py) are rendered from."""
    require_sanitized(name)
    return dict(packager_version=manifest.packager_version, source=manifest.source, name=name, task=manifest.task,
                input_keys=list(manifest.inputs), prompt_key=prompt_input(manifest, options),
                output_key=manifest.output_key, op_libraries=list(manifest.op_libraries), dim=manifest.output_dim)


def render_config(manifest: Manifest, *, name: str, options: TritonOptions, image_tf: str | None = None) -> str:
    """Render ``config.pbtxt`` (a pure function of the export manifest and the options)."""
    policy = options.version_policy
    return render_template(
        "triton/config.pbtxt.j2",
        **_context(manifest, name, options),
        backend=options.backend,
        image=options.image_tag,
        image_tf=image_tf or "?",
        max_batch_size=options.max_batch_size,
        version_policy=policy if isinstance(policy, str) else [int(v) for v in policy],
        latest_versions=options.latest_versions,
        dynamic_batching=options.dynamic_batching,
        preferred_batch_sizes=list(options.preferred_batch_sizes),
        max_queue_delay_us=options.max_queue_delay_us,
        instance_count=options.instance_count,
        instance_kind=options.instance_kind,
        gpus=list(options.gpus),
        op_dir=OP_DIR,
        repo_mount=options.repo_mount.rstrip("/") or "",
        warmup=warmup_samples(options),
        runtime={"onednn": "1" if options.onednn else "0", "intra_op_threads": str(options.intra_op_threads),
                 "inter_op_threads": str(options.inter_op_threads)},
    )


def gpu_config(config_text: str, *, source: str = "config.pbtxt") -> str:
    """config.pbtxt with KIND_GPU instances: what the GPU overlay's ``--model-config-name`` selects.

    The text is parsed with Triton's own ``model_config_pb2`` (from tritonclient), every instance group
    gets ``kind: KIND_GPU`` (and no ``gpus`` list: all GPUs the pod was given), and the message is printed
    back, so nothing else can differ from the CPU config.

    Args:
        config_text: the model's config.pbtxt.
        source: named in the header comment.

    Raises:
        TargetError: the text is not a valid model config.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(config_text, cfg)
    except text_format.ParseError as exc:
        raise TargetError(f"{source} is not a valid Triton model config: {exc}") from exc
    if not cfg.instance_group:
        cfg.instance_group.add(count=1)
    for group in cfg.instance_group:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
        del group.gpus[:]
    header = (f"# {source} with KIND_GPU instances, written by packager.\n"
              "# Triton loads it instead of config.pbtxt when started with --model-config-name (the GPU overlay).\n")
    return header + text_format.MessageToString(cfg, as_utf8=True)


def render_model_py(manifest: Manifest, *, name: str, options: TritonOptions) -> str:
    """Render the python backend's ``model.py`` for this export (a bf16 export's sets its serving
    environment, :func:`packager.encoders.precision.serving_environment`, before TensorFlow loads)."""
    from ..encoders.precision import serving_environment

    return render_template(
        "triton/model.py.j2",
        **_context(manifest, name, options),
        prompt_names=list(manifest.prompt_names),
        prompt_signature="with_prompt" in manifest.signatures,
        max_seq_length=manifest.max_seq_length,
        max_string_bytes=options.max_string_bytes,
        tensorflow=manifest.tensorflow,
        tensorflow_text=manifest.tensorflow_text,
        precision=manifest.precision,
        environment=serving_environment(manifest.precision),
        projection_parts=PROJECTION_PARTS,
    )


def render_files(
    manifest: Manifest,
    savedmodel_dir: Path | None,
    *,
    name: str,
    version: int = 1,
    options: TritonOptions = TritonOptions(),
    op_library_files: Mapping[str, Path] | None = None,
    image_tf: str | None = None,
) -> dict[str, Content]:
    """Everything under ``<repo>/<name>/`` as ``{relative path: content}``.

    Args:
        manifest: the export's manifest.
        savedmodel_dir: the exported SavedModel (``None`` renders only the text files, for previews/tests).
        name: the sanitized model name.
        version: the version folder to write.
        options: the Triton options.
        op_library_files: tensorflow backend: op library file name -> a .so built for the image's TF.
        image_tf: the TensorFlow version inside ``options.image_tag`` (recorded in the config comment).

    Raises:
        TargetError: the tensorflow backend without the op libraries the graph needs.
    """
    if version < 1:
        raise TargetError(f"version must be >= 1, not {version}")
    config = render_config(manifest, name=name, options=options, image_tf=image_tf)
    # The same config with KIND_GPU instances: what `tritonserver --model-config-name=gpu` loads (the
    # Kubernetes GPU overlay), so one repository serves CPU and GPU nodes.
    files: dict[str, Content] = {"config.pbtxt": config, f"configs/{GPU_CONFIG_NAME}.pbtxt": gpu_config(config)}
    v = str(int(version))
    if savedmodel_dir is not None:
        files[f"{v}/model.savedmodel"] = Path(savedmodel_dir)
    if options.backend == "python":
        files[f"{v}/model.py"] = render_model_py(manifest, name=name, options=options)
    else:
        libs = dict(op_library_files or {})
        missing = [lib for lib in manifest.op_libraries if lib not in libs]
        if missing:
            raise TargetError(f"the tensorflow backend needs op libraries built for {options.image_tag}: missing {', '.join(missing)}")
        for lib in manifest.op_libraries:
            files[f"{OP_DIR}/{lib}"] = Path(libs[lib])
    if options.warmup:
        files["warmup/sample"] = bytes_tensor_file(options.warmup_texts[:1])
    info = {
        "backend": options.backend,
        "image": options.image_tag,
        "image_tensorflow": image_tf,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "export": {k: v for k, v in manifest.to_dict().items()
                   if k in ("source", "name", "task", "output_dim", "max_seq_length", "tensorflow", "tensorflow_text",
                            "op_libraries", "inputs", "output_key", "truncate_dim", "default_prompt_name",
                            "precision")},
        "version": int(version),
    }
    files[TARGET_INFO] = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    return files


# ------------------------------------------------------------------------------------- the target API
Options = TritonOptions


@dataclass(frozen=True)
class Plan:
    """The options with everything server-specific resolved.

    Attributes:
        options: the options, ``image`` filled in for the TensorFlow backend.
        server: the TF-backend release (``None`` for the python backend).
        op_library_files: TF backend: op library name -> a ``.so`` built for that release's TF.
    """

    options: TritonOptions
    server: Server | None = None
    op_library_files: Mapping[str, Path] = field(default_factory=dict)

    @property
    def image_tf(self) -> str | None:
        return self.server.tensorflow if self.server else None


def resolve_server(options: TritonOptions) -> Server | None:
    """The TF-backend release a build targets (None for the python backend).

    Raises:
        TargetError: an unknown release, or an image whose TF packager has no op libraries for.
    """
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
    return get_server("triton-tensorflow", options.server_version)


def check(options: TritonOptions, export_dir: Path | None = None, manifest: Manifest | None = None) -> Plan:
    """Resolve the server; with an export, check its ops there and fetch the TF backend's op libraries.

    Raises:
        TargetError: an unknown release or image, or a graph the release cannot run (each op named).
    """
    from ..compat import check_compatible

    srv = resolve_server(options)
    if srv is None:
        if export_dir is not None:
            check_compatible(export_dir, get_server("triton-python"))
        return Plan(options)
    options = replace(options, image=srv.image)
    if export_dir is None:
        return Plan(options, srv)
    from ..oplibs import fetch_op_libraries

    check_compatible(export_dir, srv)
    needed = list((manifest or _read(export_dir)).op_libraries)
    paths = fetch_op_libraries(srv.tensorflow_text, python_version=srv.python or "3.12", libraries=needed) if needed else []
    return Plan(options, srv, {Path(p).name: Path(p) for p in paths})


def _read(export_dir: Path) -> Manifest:
    from ..manifest import read

    return read(export_dir)


def render(manifest: Manifest, export_dir: Path | None, *, ctx: BuildContext, plan: Plan) -> Layout:
    """The repository layout: ``<output>/<name>/`` written beside (not inside) the repository's staging."""
    files = render_files(manifest, export_dir, name=ctx.name, version=ctx.version, options=plan.options,
                         op_library_files=plan.op_library_files, image_tf=plan.image_tf)
    model_dir = ctx.output / ctx.name
    # Stage beside the repository, not in it: Triton refuses to start on a folder it cannot load.
    return Layout(root=model_dir, model_dir=model_dir, files=files, exclusive=(str(ctx.version),),
                  replace=("warmup", OP_DIR, "configs"), staging=ctx.output.parent)


def stack(plan: Plan, *, name: str) -> "StackOptions":
    """The compose stack for this build: backend, GPU instances, image and mount point carry over."""
    from .compose import StackOptions

    o = plan.options
    kw = {"target": "triton", "model_name": name, "backend": o.backend, "gpu": o.instance_kind == "KIND_GPU",
          "repo_mount": o.repo_mount}
    if o.image:
        # The TF backend runs the image the op libraries were built for; the Python backend
        # builds its own image on top of the chosen Triton image.
        kw["image" if o.backend == "tensorflow" else "base_image"] = o.image
    return StackOptions(**kw)
