"""Qwen2 (gte-Qwen2): Qwen3's network without the q/k norms, with q/k/v biases and no o bias. TF-free.

Mirrors ``transformers.models.qwen2.modeling_qwen2.Qwen2Model``: the biases are hard-coded there
(``bias=True`` for q, k, v; ``bias=False`` for o), and ``head_dim`` is ``hidden_size / heads``
unless the config names one. Everything else (causal GQA, rotary, RMSNorm, SwiGLU, positions
over the padded batch, sliding layers) is as in :mod:`packager.encoders.qwen3`.
"""
from __future__ import annotations

from .qwen3 import DEFAULTS as QWEN3_DEFAULTS
from .qwen3 import (
    convert_qwen_style,
    convert_weights,  # noqa: F401 - same checkpoint names; the config says which parts exist
)

DEFAULTS = {k: v for k, v in QWEN3_DEFAULTS.items() if k not in ("head_dim", "attention_bias")}


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> the fields of the pre-norm forward pass. Pure."""
    return convert_qwen_style(hf_config, DEFAULTS, "qwen2", qk_norm=False, qkv_bias=True, o_bias=False)
