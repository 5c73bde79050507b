"""XLM-RoBERTa: BERT layers with RoBERTa positions.

Mirrors ``transformers.models.xlm_roberta.modeling_xlm_roberta.XLMRobertaModel`` (no pooler):
position ids are ``cumsum(input_ids != pad) * (input_ids != pad) + pad`` with the pad id
from ``config.json`` (HF's ``padding_idx``), so real tokens start at ``pad + 1`` and padding
sits at ``pad``. ``type_vocab_size`` is 1; type 0 is folded into the position table.
"""
from __future__ import annotations

from .bert import _convert, read_bert_style
from .layers import PostLNEncoder

DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 1,
}


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> encoder fields (pure). ``padding_idx`` is ``pad_token_id``."""
    cfg = _convert(hf_config, DEFAULTS, "xlm-roberta")
    cfg["padding_idx"] = cfg["pad_token_id"]
    return cfg


class Encoder(PostLNEncoder):
    """XLM-R encoder as a ``tf.Module``; ``__call__(input_ids, attention_mask)`` -> ``last_hidden_state``.

    Args:
        config: the output of :func:`convert_config`.
        weights: checkpoint name -> array (any ``roberta.``/``model.`` prefix).
        pad_token_id: the tokenizer's pad id. HF computes positions from the CONFIG's pad id,
            so that one is used; this one only fills in when the config has none.
        unpad: see :class:`~packager.encoders.layers.PostLNEncoder`.
    """

    def __init__(self, config: dict, weights: dict, pad_token_id: int = 1, *, unpad: bool = True):
        padding_idx = config.get("padding_idx", pad_token_id)
        super().__init__(**read_bert_style(config, weights, "xlm-roberta"), padding_idx=padding_idx,
                         unpad=unpad, name="xlm_roberta")
