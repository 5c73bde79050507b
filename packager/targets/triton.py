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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import TargetError
from . import render_template
from .writer import Content

BACKENDS = ("python", "tensorflow")
KINDS = ("KIND_CPU", "KIND_GPU")
# Triton's TensorFlow backend ended with 25.02; the Python backend runs on any image.
TF_BACKEND_LAST_IMAGE = "nvcr.io/nvidia/tritonserver:25.02-tf2-python-py3"
DEFAULT_IMAGES = {
    "tensorflow": TF_BACKEND_LAST_IMAGE,
    "python": "nvcr.io/nvidia/tritonserver:25.03-py3",
}
WARMUP_TEXT = "Warm-up: café, naïve résumé — 中文 tokens, emoji 🙂 and numbers 3.14!"
OP_DIR = "ops"
TARGET_INFO = "packager-target.json"


@dataclass(frozen=True)
class TritonOptions:
    """Everything a platform team tunes in a Triton model config (all with working defaults).

    Attributes:
        backend: ``"python"`` (any image, and the local tritonserver) or ``"tensorflow"`` (images <= 25.02).
        max_batch_size: the largest batch one model execution takes (>= 1).
        dynamic_batching: let Triton merge concurrent requests into one execution.
        preferred_batch_sizes: batch sizes the dynamic batcher aims for (empty: as large as possible).
        max_queue_delay_us: how long a request may wait for others to join its batch.
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
        server_version: tensorflow backend: the Triton release (packager.servers; default 25.02).
        onednn: python backend: TensorFlow's oneDNN graph rewrites (fused MatMul + BiasAdd + GELU).
        intra_op_threads: python backend: threads per TensorFlow op (0: one per core).
        inter_op_threads: python backend: ops run at once (0: TensorFlow's default).
    """

    backend: str = "python"
    max_batch_size: int = 64
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    gpus: tuple[int, ...] = ()
    warmup: bool = True
    warmup_texts: tuple[str, ...] = (WARMUP_TEXT,)
    image: str | None = None
    repo_mount: str = "/models"
    version_policy: str | tuple[int, ...] = "latest"
    latest_versions: int = 1
    max_string_bytes: int = 256 * 1024
    server_version: str | None = None
    onednn: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 0

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
            problems.append("thread counts must be >= 0 (0: TensorFlow's default)")
        if problems:
            raise TargetError("invalid Triton options: " + "; ".join(problems))

    @property
    def image_tag(self) -> str:
        return self.image or DEFAULT_IMAGES[self.backend]


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


def _check_name(name: str) -> str:
    from . import sanitize

    if name != sanitize(name):
        raise TargetError(f"model name {name!r} is not sanitized; use {sanitize(name)!r}")
    return name


def render_config(manifest: Mapping, *, name: str, options: TritonOptions, image_tf: str | None = None) -> str:
    """Render ``config.pbtxt`` (a pure function of the export manifest and the options)."""
    _check_name(name)
    policy = options.version_policy
    return render_template(
        "triton/config.pbtxt.j2",
        packager_version=manifest.get("packager_version", "?"),
        source=str(manifest.get("source", "")),
        name=name,
        backend=options.backend,
        image=options.image_tag,
        image_tf=image_tf or "?",
        max_batch_size=options.max_batch_size,
        version_policy=policy if isinstance(policy, str) else [int(v) for v in policy],
        latest_versions=options.latest_versions,
        input_key=manifest["input_key"],
        output_key=manifest["output_key"],
        dim=int(manifest["embedding_dim"]),
        dynamic_batching=options.dynamic_batching,
        preferred_batch_sizes=list(options.preferred_batch_sizes),
        max_queue_delay_us=options.max_queue_delay_us,
        instance_count=options.instance_count,
        instance_kind=options.instance_kind,
        gpus=list(options.gpus),
        op_libraries=list(manifest.get("op_libraries", [])),
        op_dir=OP_DIR,
        repo_mount=options.repo_mount.rstrip("/") or "",
        warmup=warmup_samples(options),
        runtime={"onednn": "1" if options.onednn else "0", "intra_op_threads": str(options.intra_op_threads),
                 "inter_op_threads": str(options.inter_op_threads)},
    )


def render_model_py(manifest: Mapping, *, name: str, options: TritonOptions) -> str:
    """Render the python backend's ``model.py`` for this export."""
    _check_name(name)
    return render_template(
        "triton/model.py.j2",
        packager_version=manifest.get("packager_version", "?"),
        source=str(manifest.get("source", "")),
        name=name,
        input_key=manifest["input_key"],
        output_key=manifest["output_key"],
        op_libraries=list(manifest.get("op_libraries", [])),
        dim=int(manifest["embedding_dim"]),
        max_seq_length=int(manifest.get("max_seq_length", 0)),
        max_string_bytes=options.max_string_bytes,
        tensorflow=str(manifest.get("tensorflow", "")),
        tensorflow_text=str(manifest.get("tensorflow_text", "")),
    )


def render(
    manifest: Mapping,
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
        manifest: the export's ``packager.json``.
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
    files: dict[str, Content] = {"config.pbtxt": render_config(manifest, name=name, options=options, image_tf=image_tf)}
    v = str(int(version))
    if savedmodel_dir is not None:
        files[f"{v}/model.savedmodel"] = Path(savedmodel_dir)
    if options.backend == "python":
        files[f"{v}/model.py"] = render_model_py(manifest, name=name, options=options)
    else:
        needed = list(manifest.get("op_libraries", []))
        libs = dict(op_library_files or {})
        missing = [lib for lib in needed if lib not in libs]
        if missing:
            raise TargetError(f"the tensorflow backend needs op libraries built for {options.image_tag}: missing {', '.join(missing)}")
        for lib in needed:
            files[f"{OP_DIR}/{lib}"] = Path(libs[lib])
    if options.warmup:
        files["warmup/sample"] = bytes_tensor_file(options.warmup_texts[:1])
    info = {
        "backend": options.backend,
        "image": options.image_tag,
        "image_tensorflow": image_tf,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "export": {k: manifest.get(k) for k in ("source", "name", "embedding_dim", "max_seq_length", "tensorflow",
                                                "tensorflow_text", "op_libraries", "input_key", "output_key")},
        "version": int(version),
    }
    files[TARGET_INFO] = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    return files


def exclusive_paths(version: int) -> list[str]:
    """What a build owns inside ``<repo>/<name>/``: its version folder (replaced only with force)."""
    return [str(int(version))]


def shared_paths() -> list[str]:
    """Model-level artifacts every build regenerates (stale ones must not survive)."""
    return ["warmup", OP_DIR]
