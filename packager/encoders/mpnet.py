"""MPNet (all-mpnet-base-v2): RoBERTa-style positions plus a relative position bias. TF-free.

Mirrors ``transformers.models.mpnet.modeling_mpnet.MPNetModel`` (no pooler):

- positions come from ``input_ids != 1``: HF hard-codes MPNet's ``padding_idx`` to 1
  (not ``config.pad_token_id``), so real tokens sit at ``2, 3, ...`` and pads at 1;
- no token types;
- every layer adds the same bias ``relative_attention_bias[bucket(j - i)]`` to its attention
  scores, where ``bucket`` is T5's bidirectional log bucketing with 32 buckets and a maximum
  distance of 128 (HF calls ``compute_position_bias`` with its default ``num_buckets=32``
  whatever ``relative_attention_num_buckets`` says). Positions for the bias are ``0..T-1``,
  independent of padding.

Buckets are resolved here in numpy (float32, as torch computes them) into a per-head table
indexed by the clipped relative position, so the graph does one gather per call.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ModelError
from .bert import convert_bert_style, read_layer
from .checkpoint import CheckpointReader
from .spec import PostLNWeights

DEFAULTS = {
    "vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512,
    "layer_norm_eps": 1e-12, "pad_token_id": 1, "type_vocab_size": 1,
}
PADDING_IDX = 1  # MPNetEmbeddings.padding_idx, hard-coded by HF
NUM_BUCKETS = 32  # MPNetEncoder.compute_position_bias default, what HF actually uses
MAX_DISTANCE = 128
LAYER_NAMES = {
    "q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v", "o": "attention.attn.o",
    "attn_ln": "attention.LayerNorm", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
    "out_ln": "output.LayerNorm",
}


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> encoder fields (pure)."""
    cfg = convert_bert_style(hf_config, DEFAULTS, "mpnet")
    cfg.pop("type_vocab_size")
    cfg["relative_attention_num_buckets"] = int(hf_config.get("relative_attention_num_buckets") or 32)
    cfg["padding_idx"] = PADDING_IDX
    return cfg


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int = NUM_BUCKETS,
                             max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """HF's ``MPNetEncoder.relative_position_bucket`` in numpy, with torch's float32 arithmetic.

    Args:
        relative_position: int array of ``memory_position - context_position``.

    Returns:
        int64 bucket ids in ``[0, num_buckets)``.
    """
    n = -np.asarray(relative_position, dtype=np.int64)
    num_buckets //= 2
    ret = (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    with np.errstate(divide="ignore"):  # log(0) for n == 0; that entry takes the is_small branch
        scaled = (np.log(n.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return ret + np.where(is_small, n, large)


def relative_bias_table(bias_weight: np.ndarray, span: int) -> np.ndarray:
    """``[num_buckets, heads]`` embedding -> ``[heads, 2*span-1]`` bias per relative position ``-(span-1)..span-1``."""
    rel = np.arange(-(span - 1), span, dtype=np.int64)
    return np.ascontiguousarray(bias_weight[relative_position_bucket(rel)].T)


def convert_weights(config: dict, weights: dict) -> PostLNWeights:
    """Checkpoint (any ``mpnet.``/``model.`` prefix) -> post-LN forward weights with the relative bias. Pure."""
    H, I, heads = config["hidden_size"], config["intermediate_size"], config["num_heads"]
    ckpt = CheckpointReader(weights, "embeddings.word_embeddings.weight", "mpnet")
    word = ckpt.get("embeddings.word_embeddings.weight", (config["vocab_size"], H))
    pos = ckpt.get("embeddings.position_embeddings.weight", (config["max_position_embeddings"], H))
    ln = (ckpt.get("embeddings.LayerNorm.weight", (H,)), ckpt.get("embeddings.LayerNorm.bias", (H,)))
    rel = ckpt.get("encoder.relative_attention_bias.weight", (config["relative_attention_num_buckets"], heads))
    layers = [read_layer(ckpt, {f: f"encoder.layer.{i}.{n}" for f, n in LAYER_NAMES.items()}, H, I)
              for i in range(config["num_layers"])]
    ckpt.check()
    if rel.shape[0] < NUM_BUCKETS:
        raise ModelError(f"mpnet relative_attention_bias has {rel.shape[0]} buckets; the model uses {NUM_BUCKETS}")
    # Any span >= MAX_DISTANCE covers every bucket; clipping longer distances changes nothing.
    span = max(config["max_position_embeddings"], 2 * MAX_DISTANCE)
    return PostLNWeights(word_embeddings=word, position_embeddings=pos, embed_ln=ln, layers=layers, num_heads=heads,
                         activation=config["hidden_act"], layer_norm_eps=config["layer_norm_eps"],
                         padding_idx=config.get("padding_idx", PADDING_IDX),
                         relative_bias=relative_bias_table(rel, span))
