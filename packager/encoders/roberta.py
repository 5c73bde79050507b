"""RoBERTa (all-distilroberta-v1, all-roberta-large-v1), CamemBERT and XLM-RoBERTa: BERT layers
with RoBERTa positions. TF-free.

Mirrors ``transformers.models.roberta.modeling_roberta.RobertaModel`` (no pooler; CamemBERT and
XLM-R are the same code): position ids are ``cumsum(input_ids != pad) * (input_ids != pad) + pad``
with the pad id from ``config.json`` (HF's ``padding_idx``), so real tokens start at ``pad + 1``
and padding sits at ``pad``. Token type ids default to zeros; type 0 is folded into the
position table.
"""
from __future__ import annotations

from .bert import convert_bert_style, read_bert_style
from .spec import PostLNWeights

DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 1,
}


def convert_roberta_style(hf_config: dict, model_type: str) -> dict:
    """The RoBERTa-family config conversion; ``padding_idx`` is the config's ``pad_token_id``."""
    defaults = dict(DEFAULTS, vocab_size=50265) if model_type == "roberta" else DEFAULTS  # RobertaConfig's
    cfg = convert_bert_style(hf_config, defaults, model_type)
    cfg["padding_idx"] = cfg["pad_token_id"]
    return cfg


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> encoder fields (pure), for ``roberta`` and ``camembert``."""
    return convert_roberta_style(hf_config, str(hf_config.get("model_type") or "roberta"))


def convert_weights(config: dict, weights: dict) -> PostLNWeights:
    """Checkpoint (any ``roberta.``/``model.`` prefix) -> post-LN forward weights. Pure."""
    return read_bert_style(config, weights, padding_idx=config["padding_idx"])
