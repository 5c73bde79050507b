"""The export manifest: what a SavedModel is, written beside it as ``packager.json``.

This is the contract between the export stage and everything downstream (targets, servers,
clients, verify): a frozen dataclass, written by :func:`write` and read by :func:`read` and nowhere
else, so no stage reads the JSON by string key.

Example:
    >>> m = read("exports/minilm")
    >>> m.output_dim, m.inputs
    (384, ('input_sequence',))
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import INPUT_KEY, OUTPUT_KEY
from .encoders.precision import PRECISIONS
from .errors import TargetError

FILENAME = "packager.json"
TASKS = ("embed", "rerank")


@dataclass(frozen=True)
class Prompt:
    """A prompt a model defines (sentence-transformers' ``prompts``), as served.

    Attributes:
        name: the prompt's name (``"query"``).
        text: the text prepended to the input.
        n_tokens: how many tokens the prompt's text adds (what ``include_prompt: false`` excludes).
    """

    name: str
    text: str
    n_tokens: int = 0


@dataclass(frozen=True)
class Manifest:
    """What an export holds and needs.

    Attributes:
        source: where the model came from (a folder, an HF name, the embedded default).
        name: the default serving name, ``[a-z0-9_-]``.
        task: ``"embed"`` (strings -> embeddings) or ``"rerank"`` (pairs -> scores).
        model_type: the Hugging Face ``model_type`` of the encoder.
        output_dim: embedding size, or the number of labels of a reranker.
        max_seq_length: truncation length in tokens, special tokens included.
        pooling: pooling modes in order (empty for a reranker).
        normalize: the output is L2-normalized.
        modules: ``{"name", "kind", "type"}`` per sentence-transformers module.
        inputs: the serving signature's string inputs, in order.
        output_key: the serving signature's output.
        signatures: every signature of the SavedModel.
        prompts: prompts the model defines (embedders only).
        default_prompt_name: the prompt applied when a request names none.
        truncate_dim: Matryoshka truncation applied by the graph, if any.
        activation: a reranker's activation on the logits (``"sigmoid"``, ``"identity"`` ...).
        precision: the encoder's numeric precision: ``"fp32"`` (exact; what manifests written before
            the field read as) or ``"bf16"`` (opt-in reduced precision, :mod:`packager.encoders.precision`).
        tensorflow, tensorflow_text: the versions the graph was written with.
        op_libraries: TF-Text op libraries the graph needs.
        custom_ops: ops outside core TensorFlow.
        ops: every op type the graph uses (so compatibility can be checked from the manifest alone).
        packager_version: the packager that wrote it.
    """

    source: str
    name: str
    model_type: str
    output_dim: int
    max_seq_length: int
    tensorflow: str
    tensorflow_text: str
    task: str = "embed"
    pooling: tuple[str, ...] = ()
    normalize: bool = False
    modules: tuple[dict, ...] = ()
    inputs: tuple[str, ...] = (INPUT_KEY,)
    output_key: str = OUTPUT_KEY
    signatures: tuple[str, ...] = ("serving_default", "tokenize")
    prompts: tuple[Prompt, ...] = ()
    default_prompt_name: str | None = None
    truncate_dim: int | None = None
    activation: str | None = None
    precision: str = "fp32"
    op_libraries: tuple[str, ...] = ()
    custom_ops: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    packager_version: str = field(default_factory=lambda: _version())

    def __post_init__(self):
        if self.task not in TASKS:
            raise TargetError(f"manifest task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.precision not in PRECISIONS:
            raise TargetError(f"manifest precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")

    @property
    def input_key(self) -> str:
        """The first (for an embedder: the only) string input."""
        return self.inputs[0]

    @property
    def prompt_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.prompts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """Read a manifest dict (older manifests: ``embedding_dim``/``input_key`` are accepted)."""
        data = dict(data)
        if "output_dim" not in data and "embedding_dim" in data:  # written before the task field
            data["output_dim"] = data.pop("embedding_dim")
        if "inputs" not in data and "input_key" in data:
            data["inputs"] = [data.pop("input_key")]
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "prompts" in kwargs:
            kwargs["prompts"] = tuple(Prompt(**p) for p in kwargs["prompts"])
        for k in ("pooling", "modules", "inputs", "signatures", "op_libraries", "custom_ops", "ops"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise TargetError(f"the manifest is incomplete ({exc}); re-export the model") from exc


def _version() -> str:
    from . import __version__

    return __version__


def write(export_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``packager.json`` into an export folder (the only writer)."""
    path = Path(export_dir) / FILENAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read(export_dir: str | os.PathLike) -> Manifest:
    """Read ``packager.json`` from an export folder (the only reader).

    Raises:
        TargetError: the folder is not a packager export, or the manifest does not parse.
    """
    path = Path(export_dir) / FILENAME
    if not path.is_file():
        raise TargetError(f"{export_dir} is not a packager export (no {FILENAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TargetError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TargetError(f"{path} is not a JSON object")
    return Manifest.from_dict(data)
