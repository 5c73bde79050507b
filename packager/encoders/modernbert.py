"""ModernBERT (gte-modernbert, modernbert-embed, nomic-modernbert): a pre-LN encoder with rotary
positions and alternating global / sliding-window attention. TF-free.

Mirrors ``transformers.models.modernbert.modeling_modernbert.ModernBertModel`` (transformers 5):

- ``h = LayerNorm(tok_embeddings[ids])`` (``embeddings.norm``); positions are ``0..T-1``;
- per layer ``h += Wo(Attn(attn_norm(h)))`` and ``h += Wo(act(a) * g)`` with
  ``a, g = Wi(mlp_norm(h)).chunk(2)`` (GeGLU); layer 0's ``attn_norm`` is the identity;
- every LayerNorm has eps ``norm_eps`` and a bias only if ``norm_bias``; the linear layers have
  biases only if ``attention_bias`` / ``mlp_bias``;
- layer ``i`` is ``layer_types[i]``: ``full_attention`` (rotary base
  ``rope_parameters["full_attention"]["rope_theta"]``) or ``sliding_attention`` (base of
  ``"sliding_attention"``), where query ``i`` sees key ``j`` only if ``|i - j| <= local_attention // 2``
  (``create_bidirectional_sliding_window_mask`` with ``config.sliding_window``; the ``+ 1`` in the
  attention module is flash-attention's inclusive convention, same window);
- ``final_norm`` at the end.

Configs written by transformers 4 spell these ``global_attn_every_n_layers`` (layer ``i`` is
global iff ``i % n == 0``), ``global_rope_theta`` and ``local_rope_theta`` (null: the global one,
as transformers 4 did), with ``rope_scaling`` applying to both; both spellings are read.
"""
from __future__ import annotations

from ..errors import UnsupportedError
from .activations import check_activation
from .bert import with_defaults
from .checkpoint import CheckpointReader
from .rope import rope_settings
from .spec import PreNormLayer, PreNormWeights, check_heads

DEFAULTS = {
    "vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
    "num_attention_heads": 12, "hidden_activation": "gelu", "max_position_embeddings": 8192,
    "norm_eps": 1e-5, "norm_bias": False, "attention_bias": False, "mlp_bias": False,
    "local_attention": 128, "global_attn_every_n_layers": 3,
    "global_rope_theta": 160_000.0, "local_rope_theta": 10_000.0,
}
LAYER_TYPES = ("full_attention", "sliding_attention")


def _layer_types(hf_config: dict, num_layers: int, every_n: int) -> list[str]:
    types = hf_config.get("layer_types")
    if types is None:
        if every_n <= 0:
            raise UnsupportedError(f"unsupported global_attn_every_n_layers {every_n!r}: expected a positive int")
        return ["sliding_attention" if i % every_n else "full_attention" for i in range(num_layers)]
    if not isinstance(types, list) or len(types) != num_layers:
        raise UnsupportedError(f"unsupported layer_types {types!r}: expected one entry per layer ({num_layers})")
    for t in types:
        if t not in LAYER_TYPES:
            raise UnsupportedError(f"unsupported layer_types entry {t!r}. Supported: {', '.join(LAYER_TYPES)}")
    return list(types)


def _thetas(hf_config: dict, cfg: dict) -> dict[str, float]:
    """Rotary base per layer type, as ``ModernBertConfig.convert_rope_params_to_dict`` resolves it."""
    params = hf_config.get("rope_parameters")
    scaling = hf_config.get("rope_scaling")
    global_theta = float(cfg["global_rope_theta"])
    local_theta = hf_config.get("local_rope_theta", DEFAULTS["local_rope_theta"])
    local_theta = global_theta if local_theta is None else float(local_theta)
    fallback = {"full_attention": global_theta, "sliding_attention": local_theta}
    if params is not None and not isinstance(params, dict):
        raise UnsupportedError(f"unsupported rope_parameters {params!r}: expected a dict")
    out = {}
    for layer_type in LAYER_TYPES:
        nested = dict((params or {}).get(layer_type) or {})
        where = f"rope_parameters.{layer_type}"
        if scaling:  # transformers 5 folds an old-style rope_scaling into both layer types
            if not isinstance(scaling, dict):
                raise UnsupportedError(f"unsupported rope_scaling {scaling!r}: expected a dict")
            nested.update(scaling)
            where = "rope_scaling"
        out[layer_type] = rope_settings(nested, fallback[layer_type], where)
    return out


def convert_config(hf_config: dict) -> dict:
    """Hugging Face ``config.json`` -> the fields of the pre-norm forward pass. Pure.

    Raises:
        UnsupportedError: an unknown ``hidden_activation``, rotary scaling (``rope_parameters.*.rope_type``
            or ``rope_scaling``), or ``layer_types`` entry, naming the field.
        ModelError: ``hidden_size`` not a multiple of ``num_attention_heads``.
    """
    cfg = with_defaults(hf_config, DEFAULTS)
    check_activation(cfg["hidden_activation"], "hidden_activation")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    check_heads(hidden, heads)
    num_layers = int(cfg["num_hidden_layers"])
    types = _layer_types(hf_config, num_layers, int(cfg["global_attn_every_n_layers"]))
    thetas = _thetas(hf_config, cfg)
    half_window = int(cfg["local_attention"]) // 2  # ModernBertConfig.sliding_window
    layers = [{"rope_theta": thetas[t],
               "look_back": half_window if t == "sliding_attention" else None,
               "look_ahead": half_window if t == "sliding_attention" else None} for t in types]
    return {
        "model_type": "modernbert",
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": hidden,
        "num_layers": num_layers,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": hidden // heads,
        "intermediate_size": int(cfg["intermediate_size"]),
        "hidden_act": cfg["hidden_activation"],
        "max_position_embeddings": int(cfg["max_position_embeddings"]),
        "norm": "layer",
        "norm_eps": float(cfg["norm_eps"]),
        "norm_bias": bool(cfg["norm_bias"]),
        "attention_bias": bool(cfg["attention_bias"]),
        "mlp_bias": bool(cfg["mlp_bias"]),
        "layers": layers,
    }


def read_norm(ckpt: CheckpointReader, name: str, hidden: int, bias: bool) -> tuple:
    """``(gamma, beta or None)`` of the norm stored as ``name.weight`` (+ ``name.bias``)."""
    return ckpt.get(f"{name}.weight", (hidden,)), ckpt.get(f"{name}.bias", (hidden,)) if bias else None


def convert_weights(config: dict, weights: dict) -> PreNormWeights:
    """Checkpoint (``ModernBertModel``, or a task model's ``model.`` prefix) -> pre-norm forward weights.

    Pure: the fused ``Wqkv`` and ``Wi`` are split by slicing (views, no copies).

    Raises:
        ModelError: naming every missing weight and wrong shape.
    """
    H, I, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    nb, ab, mb = config["norm_bias"], config["attention_bias"], config["mlp_bias"]
    ckpt = CheckpointReader(weights, "embeddings.tok_embeddings.weight", "modernbert")
    word = ckpt.get("embeddings.tok_embeddings.weight", (V, H))
    embed_norm = read_norm(ckpt, "embeddings.norm", H, nb)
    layers = []
    for i, lc in enumerate(config["layers"]):
        p = f"layers.{i}."
        attn_norm = read_norm(ckpt, p + "attn_norm", H, nb) if i else None
        wqkv = ckpt.get(p + "attn.Wqkv.weight", (3 * H, H))
        bqkv = ckpt.get(p + "attn.Wqkv.bias", (3 * H,)) if ab else None
        wo = ckpt.get(p + "attn.Wo.weight", (H, H))
        bo = ckpt.get(p + "attn.Wo.bias", (H,)) if ab else None
        mlp_norm = read_norm(ckpt, p + "mlp_norm", H, nb)
        wi = ckpt.get(p + "mlp.Wi.weight", (2 * I, H))
        bi = ckpt.get(p + "mlp.Wi.bias", (2 * I,)) if mb else None
        w2 = ckpt.get(p + "mlp.Wo.weight", (H, I))
        b2 = ckpt.get(p + "mlp.Wo.bias", (H,)) if mb else None
        if wqkv is None or wi is None or (ab and bqkv is None) or (mb and bi is None):
            continue  # recorded as missing; check() below reports it
        layers.append(PreNormLayer(
            attn_norm=attn_norm,
            q_w=wqkv[:H], k_w=wqkv[H:2 * H], v_w=wqkv[2 * H:],
            q_b=None if bqkv is None else bqkv[:H], k_b=None if bqkv is None else bqkv[H:2 * H],
            v_b=None if bqkv is None else bqkv[2 * H:],
            o_w=wo, o_b=bo, mlp_norm=mlp_norm,
            # Wi(x).chunk(2): the first half goes through the activation, the second gates it.
            gate_w=wi[:I], up_w=wi[I:], gate_b=None if bi is None else bi[:I], up_b=None if bi is None else bi[I:],
            down_w=w2, down_b=b2,
            rope_theta=lc["rope_theta"], look_back=lc["look_back"], look_ahead=lc["look_ahead"],
        ))
    final_norm = read_norm(ckpt, "final_norm", H, nb)
    ckpt.check()
    return PreNormWeights(
        word_embeddings=word, embed_norm=embed_norm, layers=layers, final_norm=final_norm,
        num_heads=config["num_heads"], num_kv_heads=config["num_kv_heads"], head_dim=config["head_dim"],
        norm="layer", norm_eps=config["norm_eps"], activation=config["hidden_act"],
    )
