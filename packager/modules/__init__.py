"""One file per sentence-transformers module type, keyed by the exact ``modules.json`` type.

Each file defines a :class:`~packager.modules.base.Module` subclass, like sentence-transformers'
own ``models/``: it reads its configuration (no TensorFlow), knows its output size and builds its
half of the graph. The registry maps every ``modules.json`` type string to its class.
"""
from __future__ import annotations

from ..errors import UnsupportedError
from .base import Module
from .dense import Dense
from .normalize import Normalize
from .pooling import Pooling
from .transformer import Transformer

CLASSES: tuple[type[Module], ...] = (Transformer, Pooling, Dense, Normalize)
REGISTRY: dict[str, type[Module]] = {t: cls for cls in CLASSES for t in cls.TYPES}


def module_for_type(type_: str) -> type[Module]:
    """Return the class for a ``modules.json`` type string.

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


__all__ = ["Module", "Transformer", "Pooling", "Dense", "Normalize", "REGISTRY", "module_for_type"]
