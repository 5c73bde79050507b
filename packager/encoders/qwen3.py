"""Qwen3 (Qwen3-Embedding 0.6B/4B/8B): a decoder-only transformer used as an encoder. TF-free.

Mirrors ``transformers.models.qwen3.modeling_qwen3.Qwen3Model`` (transformers 5; no LM head):

- ``h = embed_tokens[ids]``; per layer ``h += o_proj(Attn(RMSNorm(h)))`` and
  ``h += down_proj(silu(gate_proj x) * up_proj x)`` with ``x = RMSNorm(h)``; ``norm`` at the end;
  every RMSNorm has eps ``rms_norm_eps``;
- attention is causal, grouped-query (``num_key_value_heads``), with ``head_dim`` from the config
  (Qwen3Config's default is 128, NOT ``hidden_size / heads``), a per-head RMSNorm on q and k
  (``q_norm``, ``k_norm``) before the rotary embedding, biases iff ``attention_bias``;
- rotary base ``rope_parameters["rope_theta"]`` (or the top-level ``rope_theta`` of older configs);
  any rotary scaling type is refused;
- positions are ``0..T-1`` over the padded batch (HF derives them from ``cache_position`` when no
  ``position_ids`` are given), so with LEFT padding, as these embedders use, real tokens start past
  0. The mask is causal AND the key padding mask;
- layers listed as ``sliding_attention`` (``use_sliding_window`` and ``i >= max_window_layers``)
  see only keys ``j > i - sliding_window``.

Sentence embedders on it use last-token pooling, which reads the last column: with left padding
that is always a real token.
"""
from __future__ import annotations

from ..errors import UnsupportedError
from .activations import check_activation
from .bert import with_defaults
from .checkpoint import CheckpointReader
from .modernbert import read_norm
from .rope import flat_rope_theta
from .spec import PreNormLayer, PreNormWeights

DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
    "max_window_layers": 28,
}
LAYER_TYPES = ("full_attention", "sliding_attention")


def convert_qwen_style(hf_config: dict, defaults: dict, model_type: str, *, qk_norm: bool,
                       qkv_bias: bool | None, o_bias: bool | None) -> dict:
    """The config conversion Qwen2 and Qwen3 share.

    Args:
        qk_norm: the model has per-head q/k RMSNorms (Qwen3).
        qkv_bias, o_bias: hard-coded biases (Qwen2), or None to follow ``attention_bias`` (Qwen3).
    """
    cfg = with_defaults(hf_config, defaults)
    check_activation(cfg["hidden_act"])
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv_heads = int(hf_config.get("num_key_value_heads") or heads)
    head_dim = int(hf_config.get("head_dim") or defaults.get("head_dim") or hidden // max(heads, 1))
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads or head_dim <= 0 or head_dim % 2:
        raise UnsupportedError(
            f"unsupported attention geometry for {model_type}: num_attention_heads {heads}, "
            f"num_key_value_heads {kv_heads}, head_dim {head_dim} (heads must be a multiple of kv heads, "
            f"head_dim even)"
        )
    theta = flat_rope_theta(hf_config)
    num_layers = int(cfg["num_hidden_layers"])
    # Qwen*Config: sliding_window = sliding_window if use_sliding_window else None (an explicit null stays null)
    window = hf_config.get("sliding_window", defaults["sliding_window"]) if cfg["use_sliding_window"] else None
    window = None if window is None else int(window)
    types = hf_config.get("layer_types")
    if types is None:
        max_window_layers = int(cfg["max_window_layers"])
        types = ["sliding_attention" if window is not None and i >= max_window_layers else "full_attention"
                 for i in range(num_layers)]
    if not isinstance(types, list) or len(types) != num_layers or any(t not in LAYER_TYPES for t in types):
        raise UnsupportedError(
            f"unsupported layer_types {types!r} for {model_type}: expected {num_layers} entries of {', '.join(LAYER_TYPES)}"
        )
    if "sliding_attention" in types and window is None:
        raise UnsupportedError(
            f"unsupported layer_types for {model_type}: sliding_attention layers without use_sliding_window/sliding_window"
        )
    attention_bias = bool(cfg.get("attention_bias", False))
    return {
        "model_type": model_type,
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": hidden,
        "num_layers": num_layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": int(cfg["intermediate_size"]),
        "hidden_act": cfg["hidden_act"],
        "max_position_embeddings": int(cfg["max_position_embeddings"]),
        "norm": "rms",
        "norm_eps": float(cfg["rms_norm_eps"]),
        "qk_norm": qk_norm,
        "qkv_bias": attention_bias if qkv_bias is None else qkv_bias,
        "o_bias": attention_bias if o_bias is None else o_bias,
        # Causal: a query sees itself and earlier keys; sliding layers only the last `window` of them.
        "layers": [{"rope_theta": theta, "look_ahead": 0,
                    "look_back": window - 1 if t == "sliding_attention" else None} for t in types],
    }


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> the fields of the pre-norm forward pass. Pure.

    Raises:
        UnsupportedError: naming the field: rotary scaling (``rope_parameters.rope_type`` /
            ``rope_scaling``), ``hidden_act``, ``layer_types``, or an attention geometry HF rejects.
    """
    return convert_qwen_style(hf_config, DEFAULTS, "qwen3", qk_norm=True, qkv_bias=None, o_bias=None)


def convert_weights(config: dict, weights: dict) -> PreNormWeights:
    """Checkpoint (``Qwen3Model``, or ``model.`` under a causal-LM checkpoint; ``lm_head`` ignored)
    -> pre-norm forward weights. Pure (no copies).

    Raises:
        ModelError: naming every missing weight and wrong shape.
    """
    H, I, V, d = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["head_dim"]
    q_out, kv_out = config["num_heads"] * d, config["num_kv_heads"] * d
    mt = config["model_type"]
    ckpt = CheckpointReader(weights, "embed_tokens.weight", mt)
    word = ckpt.get("embed_tokens.weight", (V, H))

    def bias(name, n, present):
        return ckpt.get(name, (n,)) if present else None

    layers = []
    for i, lc in enumerate(config["layers"]):
        p = f"layers.{i}."
        a = p + "self_attn."
        layers.append(PreNormLayer(
            attn_norm=read_norm(ckpt, p + "input_layernorm", H, False),
            q_w=ckpt.get(a + "q_proj.weight", (q_out, H)), q_b=bias(a + "q_proj.bias", q_out, config["qkv_bias"]),
            k_w=ckpt.get(a + "k_proj.weight", (kv_out, H)), k_b=bias(a + "k_proj.bias", kv_out, config["qkv_bias"]),
            v_w=ckpt.get(a + "v_proj.weight", (kv_out, H)), v_b=bias(a + "v_proj.bias", kv_out, config["qkv_bias"]),
            o_w=ckpt.get(a + "o_proj.weight", (H, q_out)), o_b=bias(a + "o_proj.bias", H, config["o_bias"]),
            q_norm=ckpt.get(a + "q_norm.weight", (d,)) if config["qk_norm"] else None,
            k_norm=ckpt.get(a + "k_norm.weight", (d,)) if config["qk_norm"] else None,
            mlp_norm=read_norm(ckpt, p + "post_attention_layernorm", H, False),
            gate_w=ckpt.get(p + "mlp.gate_proj.weight", (I, H)),
            up_w=ckpt.get(p + "mlp.up_proj.weight", (I, H)),
            down_w=ckpt.get(p + "mlp.down_proj.weight", (H, I)),
            rope_theta=lc["rope_theta"], look_back=lc["look_back"], look_ahead=lc["look_ahead"],
        ))
    final_norm = read_norm(ckpt, "norm", H, False)
    ckpt.check()
    return PreNormWeights(
        word_embeddings=word, embed_norm=None, layers=layers, final_norm=final_norm,
        num_heads=config["num_heads"], num_kv_heads=config["num_kv_heads"], head_dim=d,
        norm="rms", norm_eps=config["norm_eps"], activation=config["hidden_act"],
    )
