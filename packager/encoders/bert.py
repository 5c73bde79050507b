"""BERT (MiniLM, bge, e5, gte ...): absolute positions, token type 0, post-LayerNorm layers.

Mirrors ``transformers.models.bert.modeling_bert.BertModel`` (without the pooler): for single
sentences ``token_type_ids`` are all zero, so ``token_type_embeddings[0]`` is added to every
position (folded into the position table at load time). TF-free.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from .activations import check_activation
from .checkpoint import CheckpointReader
from .spec import LayerWeights, PostLNWeights, check_heads

# transformers' BertConfig defaults, used where config.json leaves a field out.
DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
}

# Per-layer checkpoint names shared by BERT and the RoBERTa family.
LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "o": "attention.output.dense", "attn_ln": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "out_ln": "output.LayerNorm",
}


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` (as a dict) -> the fields this encoder needs. Pure.

    Raises:
        UnsupportedError: a ``hidden_act`` or ``position_embedding_type`` the TF port lacks.
    """
    return convert_bert_style(hf_config, DEFAULTS, "bert")


def with_defaults(hf_config: dict, defaults: dict) -> dict:
    """``defaults`` overridden by the config's non-null values."""
    return {k: hf_config[k] if hf_config.get(k) is not None else v for k, v in defaults.items()}


def convert_bert_style(hf_config: dict, defaults: dict, model_type: str) -> dict:
    """The config conversion BERT, MPNet and the RoBERTa family share."""
    cfg = with_defaults(hf_config, defaults)
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type not in (None, "absolute"):
        raise UnsupportedError(
            f"unsupported position_embedding_type {position_type!r} for {model_type}. Supported: absolute"
        )
    check_activation(cfg["hidden_act"])
    check_heads(int(cfg["hidden_size"]), int(cfg["num_attention_heads"]))
    return {
        "model_type": model_type,
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": int(cfg["hidden_size"]),
        "num_layers": int(cfg["num_hidden_layers"]),
        "num_heads": int(cfg["num_attention_heads"]),
        "intermediate_size": int(cfg["intermediate_size"]),
        "hidden_act": cfg["hidden_act"],
        "max_position_embeddings": int(cfg["max_position_embeddings"]),
        "type_vocab_size": int(cfg["type_vocab_size"]),
        "layer_norm_eps": float(cfg["layer_norm_eps"]),
        "pad_token_id": int(cfg["pad_token_id"]),
    }


def read_layer(ckpt: CheckpointReader, names: dict[str, str], hidden: int, intermediate: int) -> LayerWeights | None:
    """Read one post-LN layer given ``field -> checkpoint name`` (without ``.weight``/``.bias``).

    ``names`` keys: q, k, v, o, attn_ln, ffn_in, ffn_out, out_ln. Returns None if anything
    is missing (the reader has recorded it).
    """
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "o": (hidden, hidden),
              "ffn_in": (intermediate, hidden), "ffn_out": (hidden, intermediate)}
    out = {}
    for field, name in names.items():
        if field.endswith("_ln"):
            out[f"{field}_g"] = ckpt.get(f"{name}.weight", (hidden,))
            out[f"{field}_b"] = ckpt.get(f"{name}.bias", (hidden,))
        else:
            out[f"{field}_w"] = ckpt.get(f"{name}.weight", shapes[field])
            out[f"{field}_b"] = ckpt.get(f"{name}.bias", (shapes[field][0],))
    if any(v is None for v in out.values()):
        return None
    return LayerWeights(**out)


def read_bert_style(config: dict, weights: dict, padding_idx: int | None) -> PostLNWeights:
    """Read the embeddings and layers that BERT and RoBERTa-family checkpoints name alike.

    Token type 0 is folded into the position table.

    Raises:
        ModelError: naming every missing weight and wrong shape.
    """
    H, I = config["hidden_size"], config["intermediate_size"]
    ckpt = CheckpointReader(weights, "embeddings.word_embeddings.weight", config["model_type"])
    word = ckpt.get("embeddings.word_embeddings.weight", (config["vocab_size"], H))
    pos = ckpt.get("embeddings.position_embeddings.weight", (config["max_position_embeddings"], H))
    types = ckpt.get("embeddings.token_type_embeddings.weight", (config["type_vocab_size"], H))
    ln = (ckpt.get("embeddings.LayerNorm.weight", (H,)), ckpt.get("embeddings.LayerNorm.bias", (H,)))
    layers = [read_layer(ckpt, {f: f"encoder.layer.{i}.{n}" for f, n in LAYER_NAMES.items()}, H, I)
              for i in range(config["num_layers"])]
    ckpt.check()
    return PostLNWeights(
        word_embeddings=word,
        # Single sentences use token type 0 everywhere: add it once here, not per token per call.
        position_embeddings=pos + types[0][np.newaxis, :],
        embed_ln=ln,
        layers=layers,
        num_heads=config["num_heads"],
        activation=config["hidden_act"],
        layer_norm_eps=config["layer_norm_eps"],
        padding_idx=padding_idx,
        # Pairs carry type 1 on the second text: added as a difference to type 0 (already folded in).
        type_deltas=(types[1:] - types[0][np.newaxis, :]) if types is not None and types.shape[0] > 1 else None,
    )


def convert_weights(config: dict, weights: dict) -> PostLNWeights:
    """Checkpoint (any ``bert.``/``model.`` prefix) -> post-LN forward weights. Pure."""
    return read_bert_style(config, weights, padding_idx=None)
