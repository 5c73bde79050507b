"""What ``convert_weights`` returns: the weights and settings of a shared forward pass (TF-free).

Two forward families cover every architecture here (the TF code is in ``layers.py`` and
``pre_norm.py``; ``forward.build`` picks the one a spec belongs to):

- :class:`PostLNWeights` — BERT, DistilBERT, MPNet, RoBERTa, XLM-R, CamemBERT:
  learned absolute positions, post-LayerNorm layers with biases, one activation in the FFN.
- :class:`PreNormWeights` — ModernBERT, Qwen2, Qwen3: rotary positions, a norm before each
  sub-block (LayerNorm with or without bias, or RMSNorm), gated MLP, a final norm,
  optionally grouped-query attention, per-head q/k norms, causal or windowed attention.

Matrices keep torch's ``nn.Linear`` layout ``[out, in]``; the forward module transposes and fuses
them once, layer by layer, as it turns them into variables. A converter should only slice and
view the checkpoint's arrays (no copies), so the export holds the weights about twice at most
(the caller's arrays and the variables).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError

Norm = tuple  # (gamma [H], beta [H] or None)


def check_heads(hidden: int, heads: int) -> None:
    """Raise ``ModelError`` unless ``hidden`` splits evenly into ``heads`` heads."""
    if hidden <= 0 or heads <= 0 or hidden % heads:
        raise ModelError(f"hidden size {hidden} is not a multiple of the number of attention heads {heads}")


@dataclass
class LayerWeights:
    """One post-LN transformer layer (torch ``nn.Linear`` weights are ``[out, in]``)."""

    q_w: np.ndarray
    q_b: np.ndarray
    k_w: np.ndarray
    k_b: np.ndarray
    v_w: np.ndarray
    v_b: np.ndarray
    o_w: np.ndarray
    o_b: np.ndarray
    attn_ln_g: np.ndarray
    attn_ln_b: np.ndarray
    ffn_in_w: np.ndarray
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray
    ffn_out_b: np.ndarray
    out_ln_g: np.ndarray
    out_ln_b: np.ndarray


@dataclass
class PostLNWeights:
    """``LayerNorm(word[ids] + position[pos])``, then per layer
    ``a = LN(h + Attn(h)); h = LN(a + W2 act(W1 a))``.

    Attributes:
        word_embeddings: ``[V, H]``.
        position_embeddings: ``[P, H]``, with token type 0 already added where the model has one.
        embed_ln: ``(gamma, beta)`` of the embedding LayerNorm.
        layers: one :class:`LayerWeights` per layer.
        num_heads: attention heads.
        activation: a key of ``activations.ACTIVATIONS``.
        layer_norm_eps: the epsilon every LayerNorm of the model uses.
        padding_idx: None for positions ``0..T-1`` (BERT, DistilBERT); an int for positions counted
            from ``padding_idx + 1`` over non-pad ids (RoBERTa family, MPNet).
        relative_bias: MPNet only: ``[num_heads, 2 * R - 1]`` bias per clipped relative position.
        type_deltas: ``[types - 1, H]``: token type ``t`` minus type 0 (type 0 is in the position table),
            for pairs (BERT rerankers); None when the model has one token type.
    """

    word_embeddings: np.ndarray
    position_embeddings: np.ndarray
    embed_ln: Norm
    layers: list
    num_heads: int
    activation: str
    layer_norm_eps: float
    padding_idx: int | None = None
    relative_bias: np.ndarray | None = None
    type_deltas: np.ndarray | None = None


@dataclass
class PreNormLayer:
    """One pre-norm layer: ``h += Attn(norm(h)); h += Down(act(Gate x) * Up x)`` with ``x = norm(h)``.

    Attributes:
        attn_norm: ``(gamma, beta or None)``, or None for no norm (ModernBERT's first layer).
        q_w, k_w, v_w: ``[heads * head_dim, H]``, ``[kv_heads * head_dim, H]`` (x2).
        q_b, k_b, v_b: the matching biases, or None.
        q_norm, k_norm: per-head RMSNorm weights ``[head_dim]`` applied before rotary (Qwen3), or None.
        o_w: ``[H, heads * head_dim]``; o_b its bias or None.
        mlp_norm: ``(gamma, beta or None)``.
        gate_w: ``[I, H]``, the half that goes through the activation; up_w: ``[I, H]``, the other;
            gate_b, up_b their biases or None. down_w: ``[H, I]``; down_b or None.
        rope_theta: rotary base of this layer.
        look_back, look_ahead: key ``j`` is visible to query ``i`` iff
            ``-look_back <= j - i <= look_ahead`` (None: unbounded). Causal is ``look_ahead=0``.
            Distances count columns of the padded batch, as Hugging Face's masks do.
    """

    attn_norm: Norm | None
    q_w: np.ndarray
    k_w: np.ndarray
    v_w: np.ndarray
    o_w: np.ndarray
    mlp_norm: Norm
    gate_w: np.ndarray
    up_w: np.ndarray
    down_w: np.ndarray
    rope_theta: float
    q_b: np.ndarray | None = None
    k_b: np.ndarray | None = None
    v_b: np.ndarray | None = None
    o_b: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    gate_b: np.ndarray | None = None
    up_b: np.ndarray | None = None
    down_b: np.ndarray | None = None
    look_back: int | None = None
    look_ahead: int | None = None


@dataclass
class PreNormWeights:
    """Token embeddings (no position table), pre-norm layers with rotary attention, a final norm.

    Positions are the column index in the padded batch (``0..T-1``), as Hugging Face uses them
    for these models when no ``position_ids`` are passed; with left padding real tokens start
    past 0. Rotary embeddings make attention depend on position differences only, so this
    changes results by float rounding at most.

    Attributes:
        word_embeddings: ``[V, H]``.
        embed_norm: ``(gamma, beta or None)`` applied to the embeddings, or None.
        layers: one :class:`PreNormLayer` per layer.
        final_norm: ``(gamma, beta or None)``.
        num_heads, num_kv_heads, head_dim: attention geometry (grouped-query when they differ).
        norm: ``"layer"`` (LayerNorm, biased variance) or ``"rms"`` (RMSNorm), for every norm.
        norm_eps: epsilon of every norm (the q/k norms too).
        activation: a key of ``activations.ACTIVATIONS``, applied to the gate half.
    """

    word_embeddings: np.ndarray
    embed_norm: Norm | None
    layers: list
    final_norm: Norm
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm: str
    norm_eps: float
    activation: str
