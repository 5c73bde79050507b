"""Shared building blocks of the four post-LayerNorm encoders (BERT, DistilBERT, MPNet, XLM-R).

All four are the same network once their checkpoints are mapped to a common layout:

    embeddings = LayerNorm(word[ids] + position[pos] (+ token_type[0]))
    per layer:  a = LayerNorm(h + Attention(h));  h = LayerNorm(a + W2 act(W1 a))

so the forward pass lives here once (:class:`PostLNEncoder`), and each architecture file only
converts its config and maps its weight names onto :class:`LayerWeights`.

Speed by construction (issue 7), without changing the arithmetic beyond float rounding:
- activations stay 2-D ``[B*T, H]`` so every projection is one ``MatMul`` + ``BiasAdd`` that
  TF's oneDNN remapper fuses (with the GELU that follows, where it can);
- Q, K and V come from ONE ``[H, 3H]`` matmul; the ``1/sqrt(head_dim)`` scale is folded into
  the Q columns at load time;
- per-token work (embeddings, projections, FFN) runs on the real tokens only, packed as
  ``[N, H]``; only attention sees the padded ``[B, T]`` layout, so padding costs little;
- the padding mask (and MPNet's relative position bias) becomes one additive bias tensor per
  call, shared by all layers;
- token type 0 (the only one single sentences use) is folded into the position table;
- a batch is sorted by length and run in chunks of similar length (:meth:`PostLNEncoder.__call__`),
  so a short sentence batched with a long passage is not padded to its length in attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..errors import ModelError, UnsupportedError

# Chunks of a sorted batch hold about this many (padded) tokens: enough rows for efficient matmuls,
# few enough that a chunk's rows have similar lengths (measured in bench/chunking.py).
CHUNK_TOKENS = 1024

# Added to the scores of padded keys. Same value Hugging Face uses (torch.finfo(float32).min), so
# padded keys get exactly zero weight and real tokens see the same softmax as an unpadded batch.
MASK_VALUE = float(np.finfo(np.float32).min)

INPUT_SIGNATURE = (
    tf.TensorSpec([None, None], tf.int64, name="input_ids"),
    tf.TensorSpec([None, None], tf.int64, name="attention_mask"),
)


# --------------------------------------------------------------------------- activations
def _gelu_fast(x):
    return 0.5 * x * (1.0 + tf.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATIONS = {
    # transformers.activations.ACT2CLS name -> the same function in TF
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),  # exact erf GELU, like torch's default
    "gelu_python": lambda x: tf.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_python_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_accurate": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_fast": _gelu_fast,
    "gelu_10": lambda x: tf.clip_by_value(tf.nn.gelu(x, approximate=False), -10.0, 10.0),
    "quick_gelu": lambda x: x * tf.sigmoid(1.702 * x),
    "relu": tf.nn.relu,
    "relu2": lambda x: tf.square(tf.nn.relu(x)),
    "relu6": tf.nn.relu6,
    "leaky_relu": lambda x: tf.nn.leaky_relu(x, alpha=0.01),
    "silu": tf.nn.silu,
    "swish": tf.nn.silu,
    "sigmoid": tf.sigmoid,
    "tanh": tf.tanh,
    "mish": lambda x: x * tf.tanh(tf.nn.softplus(x)),
    "hardswish": lambda x: x * tf.nn.relu6(x + 3.0) / 6.0,
    "linear": tf.identity,
}


def check_activation(name) -> str:
    """Return ``name`` if it is a supported ``hidden_act``; raise ``UnsupportedError`` otherwise."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise UnsupportedError(f"unsupported hidden_act {name!r}. Supported: {', '.join(ACTIVATIONS)}")
    return name


def check_heads(hidden: int, heads: int) -> None:
    if hidden <= 0 or heads <= 0 or hidden % heads:
        raise ModelError(f"hidden size {hidden} is not a multiple of the number of attention heads {heads}")


# --------------------------------------------------------------------------- checkpoint reading
class CheckpointReader:
    """Looks up weights by their architecture-relative name, whatever prefix the checkpoint uses.

    Real checkpoints store the base model under ``bert.``, ``roberta.``, ``distilbert.``,
    ``mpnet.``, ``model.`` (or nothing). The prefix is found from one anchor key that every
    checkpoint of the architecture has. Missing keys and shape mismatches are collected and
    reported together by :meth:`check`, so one error names everything that is wrong.

    Args:
        weights: name -> array, as :func:`packager.encoders.weights.load_weights` returns it.
        anchor: a key every checkpoint of this architecture has, without prefix.
        model_type: for error messages.
    """

    def __init__(self, weights: dict, anchor: str, model_type: str):
        self.weights = weights
        self.model_type = model_type
        prefixes = sorted({k[: -len(anchor)] for k in weights if k.endswith(anchor)}, key=len)
        if not prefixes:
            sample = ", ".join(sorted(weights)[:5]) or "none"
            raise ModelError(
                f"the {model_type} checkpoint has no {anchor!r} (under any prefix); "
                f"is this really a {model_type} model? First keys: {sample}"
            )
        self.prefix = prefixes[0]
        self.missing: list[str] = []
        self.bad_shapes: list[str] = []

    def get(self, name: str, shape: tuple | None = None) -> np.ndarray | None:
        """The float32 array stored as ``prefix + name``, or None (recorded) if absent.

        Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta; HF accepts
        those too, so they are read as weight/bias.
        """
        key = self.prefix + name
        value = self.weights.get(key)
        if value is None and "LayerNorm." in key:
            legacy = {".weight": ".gamma", ".bias": ".beta"}
            suffix = key[key.rindex("."):]
            if suffix in legacy:
                value = self.weights.get(key[: -len(suffix)] + legacy[suffix])
        if value is None:
            self.missing.append(key)
            return None
        value = np.asarray(value, dtype=np.float32)
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.bad_shapes.append(f"{key}: {tuple(value.shape)} (config expects {tuple(shape)})")
        return value

    def check(self) -> None:
        """Raise one ``ModelError`` naming every missing key and wrong shape seen so far."""
        problems = []
        if self.missing:
            shown = ", ".join(self.missing[:12]) + (f" and {len(self.missing) - 12} more" if len(self.missing) > 12 else "")
            problems.append(f"missing {len(self.missing)} weight(s): {shown}")
        if self.bad_shapes:
            problems.append("wrong shapes: " + "; ".join(self.bad_shapes[:12]))
        if problems:
            raise ModelError(f"{self.model_type} checkpoint does not match its config.json: " + ". ".join(problems))


@dataclass
class LayerWeights:
    """One transformer layer in the common layout (torch ``nn.Linear`` weights are ``[out, in]``)."""

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


def read_layer(ckpt: CheckpointReader, names: dict[str, str], hidden: int, intermediate: int) -> LayerWeights | None:
    """Read one layer given ``field -> checkpoint name`` (without ``.weight``/``.bias``).

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


# --------------------------------------------------------------------------- graph pieces
def _variable(value: np.ndarray, name: str) -> tf.Variable:
    # Non-trainable variables, not constants: they are saved under variables/ and keep the
    # GraphDef small (a constant-folded XLM-R would pass the 2 GB protobuf limit).
    return tf.Variable(np.ascontiguousarray(value, dtype=np.float32), trainable=False, name=name)


def layer_norm(x, gamma, beta, eps: float):
    """LayerNorm over the last axis, biased variance, as ``torch.nn.LayerNorm``."""
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True)
    return centered * tf.math.rsqrt(variance + eps) * gamma + beta


def padding_bias(attention_mask):
    """``[B, T]`` 0/1 mask -> ``[B, 1, 1, T]`` additive bias: 0 for tokens, ``MASK_VALUE`` for padding."""
    keep = tf.cast(attention_mask, tf.float32)
    return ((1.0 - keep) * MASK_VALUE)[:, tf.newaxis, tf.newaxis, :]


def positions_from_input_ids(input_ids, padding_idx: int):
    """RoBERTa/MPNet positions: count non-pad tokens from ``padding_idx + 1``; pads get ``padding_idx``."""
    not_pad = tf.cast(tf.not_equal(input_ids, padding_idx), tf.int64)
    return tf.cumsum(not_pad, axis=1) * not_pad + padding_idx


class Layer(tf.Module):
    """Weights of one layer, fused for speed: QKV as one ``[H, 3H]`` matrix, Q pre-scaled."""

    def __init__(self, w: LayerWeights, num_heads: int, index: int):
        super().__init__(name=f"layer_{index}")
        hidden = w.q_w.shape[1]
        scale = 1.0 / math.sqrt(hidden // num_heads)
        # torch Linear computes x @ W.T: store W.T so the graph does a plain x @ W.
        qkv_w = np.concatenate([w.q_w.T * scale, w.k_w.T, w.v_w.T], axis=1)
        qkv_b = np.concatenate([w.q_b * scale, w.k_b, w.v_b])
        self.qkv_w = _variable(qkv_w, "qkv_kernel")
        self.qkv_b = _variable(qkv_b, "qkv_bias")
        self.o_w = _variable(w.o_w.T, "attention_output_kernel")
        self.o_b = _variable(w.o_b, "attention_output_bias")
        self.attn_ln_g = _variable(w.attn_ln_g, "attention_layer_norm_gamma")
        self.attn_ln_b = _variable(w.attn_ln_b, "attention_layer_norm_beta")
        self.ffn_in_w = _variable(w.ffn_in_w.T, "ffn_in_kernel")
        self.ffn_in_b = _variable(w.ffn_in_b, "ffn_in_bias")
        self.ffn_out_w = _variable(w.ffn_out_w.T, "ffn_out_kernel")
        self.ffn_out_b = _variable(w.ffn_out_b, "ffn_out_bias")
        self.out_ln_g = _variable(w.out_ln_g, "output_layer_norm_gamma")
        self.out_ln_b = _variable(w.out_ln_b, "output_layer_norm_beta")


class PostLNEncoder(tf.Module):
    """The shared forward pass. Architecture files subclass it and supply the weights.

    Args:
        word_embeddings: ``[V, H]``.
        position_embeddings: ``[P, H]``, with token type 0 already added where the model has one.
        embed_ln: ``(gamma, beta)`` of the embedding LayerNorm.
        layers: one :class:`LayerWeights` per layer.
        num_heads: attention heads.
        activation: a key of :data:`ACTIVATIONS`.
        layer_norm_eps: LayerNorm epsilon (all LayerNorms of these models share it).
        padding_idx: None for absolute positions ``0..T-1`` (BERT, DistilBERT); an int for
            positions counted from ``padding_idx + 1`` over non-pad ids (XLM-R, MPNet).
        relative_bias: MPNet only: ``[num_heads, 2 * R - 1]`` bias per clipped relative
            position ``-(R-1)..R-1`` (see ``mpnet.py``), or None.
        unpad: run the per-token layers on real tokens only. Padded positions of the output
            are then zero (Hugging Face leaves values there that no pooling mode reads), and a
            non-empty batch must have at least one real token (tokenizers always add specials).
            False keeps the padded layout throughout and HF's values at padded positions. Both
            layouts compile under XLA (``jit_compile=True``; not enabled here).
        name: module name.
    """

    def __init__(self, *, word_embeddings, position_embeddings, embed_ln, layers, num_heads, activation,
                 layer_norm_eps, padding_idx=None, relative_bias=None, unpad=True, name="encoder"):
        super().__init__(name=name)
        self.unpad = bool(unpad)
        self.hidden_size = int(word_embeddings.shape[1])
        self.num_heads = int(num_heads)
        self.head_dim = self.hidden_size // self.num_heads
        self.activation = check_activation(activation)
        self.eps = float(layer_norm_eps)
        self.padding_idx = None if padding_idx is None else int(padding_idx)
        self.max_positions = int(position_embeddings.shape[0])
        self.word_embeddings = _variable(word_embeddings, "word_embeddings")
        self.position_embeddings = _variable(position_embeddings, "position_embeddings")
        self.embed_ln_g = _variable(embed_ln[0], "embeddings_layer_norm_gamma")
        self.embed_ln_b = _variable(embed_ln[1], "embeddings_layer_norm_beta")
        self.layers = [Layer(w, self.num_heads, i) for i, w in enumerate(layers)]
        if relative_bias is not None:
            self.relative_span = (int(relative_bias.shape[1]) + 1) // 2
            self.relative_bias = _variable(relative_bias, "relative_attention_bias")
        else:
            self.relative_bias = None

    @tf.function(input_signature=INPUT_SIGNATURE)
    def __call__(self, input_ids, attention_mask):
        """``input_ids``, ``attention_mask`` int64 ``[B, T]`` -> ``last_hidden_state`` float32 ``[B, T, H]``."""
        if not self.unpad:
            return self.forward(input_ids, attention_mask)
        return self.forward_sorted(input_ids, attention_mask)

    def forward_sorted(self, input_ids, attention_mask, chunk_tokens: int = CHUNK_TOKENS):
        """:meth:`forward` over length-sorted chunks of the batch; the same result up to float rounding.

        Rows are sorted by extent (last real position + 1), longest first. Each chunk starts at the
        longest remaining row (extent ``L``), takes ``max(1, chunk_tokens // L)`` rows and is cut to
        ``L`` columns, so attention sees little padding however mixed the batch is. Outputs are padded
        back to ``T`` (zeros, as :meth:`forward` leaves padded positions) and put back in input order.
        Only columns after a row's last real token are cut, so positions are unchanged.
        """
        shape = tf.shape(input_ids)
        batch, seq = shape[0], shape[1]
        cols = tf.range(1, seq + 1, dtype=tf.int32)[tf.newaxis, :]
        extent = tf.reduce_max(tf.where(attention_mask > 0, cols, 0), axis=1)  # [B]
        order = tf.argsort(extent, direction="DESCENDING", stable=True)
        sorted_extent = tf.gather(extent, order)
        ids_sorted, mask_sorted = tf.gather(input_ids, order), tf.gather(attention_mask, order)

        def body(start, done):
            length = tf.maximum(sorted_extent[start], 1)
            rows = tf.minimum(tf.maximum(chunk_tokens // length, 1), batch - start)
            h = self.forward(ids_sorted[start:start + rows, :length], mask_sorted[start:start + rows, :length])
            h = tf.pad(h, [[0, 0], [0, seq - length], [0, 0]])
            return start + rows, tf.concat([done, h], axis=0)

        # The chunks are collected by concatenation, not in a growing TensorArray: that one needs
        # TensorListSetItem's resize_if_index_out_of_bounds, which TF <= 2.12 (TF-Serving 2.12) lacks.
        # Chunks are few (about 10 at batch 128), so the copies cost ~1% of the call (bench/chunking.py).
        _, h_sorted = tf.while_loop(
            lambda start, _: start < batch, body, (tf.constant(0), tf.zeros([0, seq, self.hidden_size])),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, self.hidden_size])))
        return tf.gather(h_sorted, tf.math.invert_permutation(order))

    def forward(self, input_ids, attention_mask):
        """The forward pass without a ``tf.function`` wrapper (for composing into a bigger graph)."""
        shape = tf.shape(input_ids)
        batch, seq = shape[0], shape[1]
        bias = padding_bias(attention_mask)
        if self.relative_bias is not None:
            bias = bias + self._relative_bias(seq)[tf.newaxis]
        flat_ids = tf.reshape(input_ids, [-1])
        if self.padding_idx is None:
            flat_pos = tf.reshape(tf.broadcast_to(tf.range(seq, dtype=tf.int64), shape), [-1])
        else:
            flat_pos = tf.reshape(positions_from_input_ids(input_ids, self.padding_idx), [-1])
        if self.unpad:
            # Per-token work (embeddings, projections, FFN: nearly all FLOPs) runs on the N real
            # tokens only, packed as [N, H]; attention alone needs the padded [B, T] layout.
            # ``real``: flat slot of each real token; ``slot``: packed row for each flat slot
            # (padding points at row 0: those keys are masked out, those queries discarded).
            flat_mask = tf.reshape(attention_mask, [-1]) > 0
            real = tf.where(flat_mask)[:, 0]
            slot = tf.where(flat_mask, tf.cumsum(tf.cast(flat_mask, tf.int64)) - 1, 0)
            pack, unpack = (lambda x: tf.gather(x, real)), (lambda x: tf.gather(x, slot))
            flat_ids, flat_pos = pack(flat_ids), pack(flat_pos)
        else:
            pack = unpack = tf.identity
        h = tf.gather(self.word_embeddings, flat_ids) + tf.gather(self.position_embeddings, flat_pos)
        h = layer_norm(h, self.embed_ln_g, self.embed_ln_b, self.eps)  # 2-D from here on
        act = ACTIVATIONS[self.activation]
        for layer in self.layers:
            qkv = unpack(tf.nn.bias_add(tf.matmul(h, layer.qkv_w), layer.qkv_b))  # [B*T, 3H]
            context = pack(self._attention(qkv, bias, batch, seq))
            attn = tf.nn.bias_add(tf.matmul(context, layer.o_w), layer.o_b)
            h = layer_norm(attn + h, layer.attn_ln_g, layer.attn_ln_b, self.eps)
            ffn = act(tf.nn.bias_add(tf.matmul(h, layer.ffn_in_w), layer.ffn_in_b))
            ffn = tf.nn.bias_add(tf.matmul(ffn, layer.ffn_out_w), layer.ffn_out_b)
            h = layer_norm(ffn + h, layer.out_ln_g, layer.out_ln_b, self.eps)
        if self.unpad:
            h = unpack(h) * tf.cast(tf.reshape(attention_mask, [-1, 1]), tf.float32)
        return tf.reshape(h, [batch, seq, self.hidden_size])

    def _relative_bias(self, seq):
        # bias[h, i, j] = table[h, clip(j - i)]: the bucket of every clipped relative position
        # is already resolved into the table at load time (mpnet.py), so this is one gather.
        span = self.relative_span
        idx = tf.range(seq)
        rel = tf.clip_by_value(idx[tf.newaxis, :] - idx[:, tf.newaxis], -(span - 1), span - 1) + (span - 1)
        return tf.gather(self.relative_bias, rel, axis=1)  # [heads, T, T]

    def _attention(self, qkv, bias, batch, seq):
        """``[B*T, 3H]`` fused projections -> ``[B*T, H]`` attention context (before the output projection)."""
        qkv = tf.reshape(qkv, [batch, seq, 3, self.num_heads, self.head_dim])
        q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # each [B, heads, T, d]
        scores = tf.matmul(q, k, transpose_b=True) + bias  # Q already carries 1/sqrt(d)
        context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)  # [B, heads, T, d]
        return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, self.hidden_size])
