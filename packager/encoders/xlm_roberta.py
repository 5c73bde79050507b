"""XLM-RoBERTa: BERT layers with RoBERTa positions (see :mod:`packager.encoders.roberta`). TF-free."""
from __future__ import annotations

from .roberta import DEFAULTS, convert_roberta_style, convert_weights  # noqa: F401 - same network


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> encoder fields (pure). ``padding_idx`` is ``pad_token_id``."""
    return convert_roberta_style(hf_config, "xlm-roberta")
