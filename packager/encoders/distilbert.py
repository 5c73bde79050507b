"""DistilBERT: BERT-like layers under its own weight names, no token types, LayerNorm eps 1e-12.

Mirrors ``transformers.models.distilbert.modeling_distilbert.DistilBertModel``: absolute
positions ``0..T-1`` (sinusoidal tables are stored in the checkpoint like learned ones), and
every LayerNorm uses eps 1e-12 whatever the config says. TF-free.
"""
from __future__ import annotations

from .activations import check_activation
from .bert import read_layer, with_defaults
from .checkpoint import CheckpointReader
from .spec import PostLNWeights, check_heads

DEFAULTS = {
    "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
    "activation": "gelu", "max_position_embeddings": 512, "pad_token_id": 0,
}
LAYER_EPS = 1e-12  # hard-coded in DistilBERT's modeling code
LAYER_NAMES = {
    "q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin",
    "attn_ln": "sa_layer_norm", "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2", "out_ln": "output_layer_norm",
}


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> encoder fields (pure), in the names the other encoders use."""
    cfg = with_defaults(hf_config, DEFAULTS)
    check_activation(cfg["activation"], "activation")
    check_heads(int(cfg["dim"]), int(cfg["n_heads"]))
    return {
        "model_type": "distilbert",
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": int(cfg["dim"]),
        "num_layers": int(cfg["n_layers"]),
        "num_heads": int(cfg["n_heads"]),
        "intermediate_size": int(cfg["hidden_dim"]),
        "hidden_act": cfg["activation"],
        "max_position_embeddings": int(cfg["max_position_embeddings"]),
        "layer_norm_eps": LAYER_EPS,
        "pad_token_id": int(cfg["pad_token_id"]),
    }


def convert_weights(config: dict, weights: dict) -> PostLNWeights:
    """Checkpoint (any ``distilbert.`` prefix) -> post-LN forward weights. Pure."""
    H, I = config["hidden_size"], config["intermediate_size"]
    ckpt = CheckpointReader(weights, "embeddings.word_embeddings.weight", "distilbert")
    word = ckpt.get("embeddings.word_embeddings.weight", (config["vocab_size"], H))
    pos = ckpt.get("embeddings.position_embeddings.weight", (config["max_position_embeddings"], H))
    ln = (ckpt.get("embeddings.LayerNorm.weight", (H,)), ckpt.get("embeddings.LayerNorm.bias", (H,)))
    layers = [read_layer(ckpt, {f: f"transformer.layer.{i}.{n}" for f, n in LAYER_NAMES.items()}, H, I)
              for i in range(config["num_layers"])]
    ckpt.check()
    return PostLNWeights(word_embeddings=word, position_embeddings=pos, embed_ln=ln, layers=layers,
                         num_heads=config["num_heads"], activation=config["hidden_act"],
                         layer_norm_eps=config["layer_norm_eps"])
