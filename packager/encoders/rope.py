"""Rotary position settings from a Hugging Face config, as transformers 5 reads them (TF-free).

transformers 5 keeps rotary settings in ``rope_parameters`` (``{"rope_type", "rope_theta", ...}``,
nested per layer type for models with several); configs written by transformers 4 have
``rope_theta`` and ``rope_scaling`` at the top level instead (ModernBERT: ``global_rope_theta``
and ``local_rope_theta``). Both spellings are read here. Only the ``default`` rope type is
implemented; any scaling type is refused by name, since a silently unscaled rotary embedding
would give wrong embeddings past the original context length.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError

SUPPORTED_ROPE_TYPES = ("default",)


def rope_settings(params: dict | None, fallback_theta: float, where: str) -> float:
    """The rotary base of one ``rope_parameters`` dict (or old-style ``rope_scaling``).

    Args:
        params: the dict, or None.
        fallback_theta: the base when the dict has none (the config's ``rope_theta`` or HF's default).
        where: the config field, for error messages (``rope_parameters``, ``rope_scaling`` ...).

    Raises:
        UnsupportedError: a ``rope_type`` other than ``default``, naming the field.
    """
    params = params or {}
    if not isinstance(params, dict):
        raise UnsupportedError(f"unsupported {where} {params!r}: expected a dict")
    rope_type = params.get("rope_type", params.get("type")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedError(
            f"unsupported {where}.rope_type {rope_type!r} (rotary scaling). Supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    theta = params.get("rope_theta")
    return float(theta if theta is not None else fallback_theta)


def flat_rope_theta(hf_config: dict, default_theta: float = 10_000.0) -> float:
    """The rotary base of a model with one rope setting for all layers (Llama, Qwen2, Qwen3 ...).

    Mirrors ``RotaryEmbeddingConfigMixin.convert_rope_params_to_dict``: ``rope_scaling`` wins over
    ``rope_parameters``; ``rope_theta`` inside it wins over the top-level one.
    """
    if hf_config.get("rope_scaling"):
        params, where = hf_config["rope_scaling"], "rope_scaling"
    else:
        params, where = hf_config.get("rope_parameters"), "rope_parameters"
    top = hf_config.get("rope_theta")
    return rope_settings(params, default_theta if top is None else top, where)


def inverse_frequencies(theta: float, dim: int) -> np.ndarray:
    """``1 / theta ** (arange(0, dim, 2) / dim)`` as float32, as transformers computes it.

    The power is taken in float64 and rounded once: this matches torch's float32 ``pow`` on
    nearly every entry (at most one float32 ulp apart), closer than a float32 ``powf``.
    """
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return np.float32(1.0) / (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
