"""One file per sentence-transformers module type, keyed by the exact ``modules.json`` type.

Each module file exposes:
    KIND: the class name (``"Pooling"``).
    TYPES: the ``modules.json`` type strings it accepts (old and new sentence-transformers paths).
    read_config(model_dir, module_dir) -> dict: plain data, no TF import.
    build(spec: ModuleSpec, model_dir) -> object with ``__call__(features: dict) -> dict``
        (TF; imported lazily). Features follow sentence-transformers' names:
        ``input_ids``, ``attention_mask``, ``token_embeddings``, ``sentence_embedding``.
"""
from __future__ import annotations

from types import ModuleType

from ..errors import UnsupportedError
from . import dense, normalize, pooling, transformer

_IMPLS: tuple[ModuleType, ...] = (transformer, pooling, dense, normalize)
REGISTRY: dict[str, ModuleType] = {t: impl for impl in _IMPLS for t in impl.TYPES}


def module_for_type(type_: str) -> ModuleType:
    """Return the implementation for a ``modules.json`` type string.

    Raises:
        UnsupportedError: naming the type and listing the supported ones.
    """
    try:
        return REGISTRY[type_]
    except KeyError:
        supported = ", ".join(sorted(REGISTRY))
        raise UnsupportedError(
            f"unsupported sentence-transformers module type {type_!r}. Supported types: {supported}"
        ) from None
