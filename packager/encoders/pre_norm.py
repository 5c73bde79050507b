"""The pre-norm rotary forward pass (TF): ModernBERT, Qwen2, Qwen3.

One module for both families, configured by :class:`~packager.encoders.spec.PreNormWeights`:

    h = embed_norm(word[ids])                         (ModernBERT; Qwen: no embed norm)
    per layer:  x = attn_norm(h)                      (identity where the layer has none)
                q, k, v = x Wq, x Wk, x Wv            (one fused matmul; GQA: fewer k/v heads)
                q, k = rope(q_norm(q)), rope(k_norm(k))   (q/k norms: Qwen3 only)
                h += Attn(q, k, v; mask) Wo
                x = mlp_norm(h);  h += (act(x Wg) * (x Wu)) Wd    (Wg | Wu one fused matmul)
    h = final_norm(h)

The mask of each layer is the key padding mask AND its pattern: ``-look_back <= j - i <= look_ahead``
(full, causal, bidirectional or causal sliding window), measured in columns of the batch, which
cutting leading or trailing columns of a chunk does not change. Rotary angles use the absolute
column (``position_offset + column``), as Hugging Face does. Per-token work (norms, projections,
rotary, MLP) runs on the real tokens only; attention uses the padded layout of the chunk.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from .activations import activation
from .layers import (
    MASK_VALUE,
    ChunkedEncoder,
    Projection,
    build_layers,
    by_row_length,
    kernel_dtype,
    layer_norm,
    packing,
    rms_norm,
    take,
    token_halves,
    variable,
)
from .rope import inverse_frequencies
from .spec import PreNormLayer, PreNormWeights


def _concat_t(mats, biases):
    """torch ``[out, in]`` matrices -> one ``[in, sum(out)]`` kernel (one temporary copy), and the bias."""
    kernel = np.concatenate([m.T for m in mats], axis=1)
    if all(b is None for b in biases):
        return kernel, None
    bias = np.concatenate([np.zeros(m.shape[0], np.float32) if b is None else b for m, b in zip(mats, biases)])
    return kernel, bias


class PreNormLayerModule(tf.Module):
    """One layer's variables: a fused ``[H, (Hq + 2 Hkv) d]`` QKV projection, and gate and up as two.

    The attention scale ``1/sqrt(head_dim)`` is folded into the q-norm weight when there is one
    (the norm would undo a scale put before it), else into the Q columns; rotary embedding is
    linear, so either commutes with it.
    """

    def __init__(self, w: PreNormLayer, spec: PreNormWeights, index: int, precision: str = "fp32"):
        super().__init__(name=f"layer_{index}")
        kd = kernel_dtype(precision)
        d = spec.head_dim
        q_out = spec.num_heads * d
        scale = 1.0 / math.sqrt(d)
        qkv_w, qkv_b = _concat_t([w.q_w, w.k_w, w.v_w], [w.q_b, w.k_b, w.v_b])
        self.qk_norm = None
        if w.q_norm is not None:
            # One [Hq + Hkv, d] weight for the q heads (pre-scaled) and the k heads: a single norm op.
            self.qk_norm = variable(np.concatenate([np.tile(w.q_norm * scale, (spec.num_heads, 1)),
                                                    np.tile(w.k_norm, (spec.num_kv_heads, 1))]), "qk_norm")
        else:
            qkv_w[:, :q_out] *= scale
            if qkv_b is not None:
                qkv_b[:q_out] *= scale
        self.qkv = Projection(qkv_w, qkv_b, "qkv", kd)
        del qkv_w
        self.attention_output = Projection(w.o_w.T, w.o_b, "attention_output", kd)
        # Gate and up are two projections, computed at once by the executor (see PROJECTION_PARTS).
        self.gate = Projection(w.gate_w.T, w.gate_b, "gate", kd, parts=1)
        self.up = Projection(w.up_w.T, w.up_b, "up", kd, parts=1)
        self.down = Projection(w.down_w.T, w.down_b, "down", kd)
        self.attn_norm = _norm_variables(w.attn_norm, "attn_norm")
        self.mlp_norm = _norm_variables(w.mlp_norm, "mlp_norm")
        self.rope_theta = float(w.rope_theta)
        self.pattern = (w.look_back, w.look_ahead)


def _norm_variables(norm, name):
    if norm is None:
        return None
    gamma, beta = norm
    return (variable(gamma, f"{name}_gamma"), None if beta is None else variable(beta, f"{name}_beta"))




class PreNormEncoder(ChunkedEncoder):
    """The pre-norm rotary encoder as a ``tf.Module``; ``__call__(input_ids, attention_mask)`` -> ``last_hidden_state``.

    Args:
        weights: a :class:`~packager.encoders.spec.PreNormWeights` (``convert_weights`` of
            modernbert, qwen2, qwen3). Its arrays are copied into variables layer by layer; the
            module keeps no reference to them.
        unpad: see :class:`~packager.encoders.layers.PostLNEncoder`. Padded positions come out as
            zeros; with ``unpad=False`` they hold finite values (a fully masked query row attends
            uniformly instead of producing NaN) that no pooling mode reads.
        release: empty ``weights`` (arrays set to None, layers popped) as they become variables.
        name: module name.
        precision: ``"fp32"`` or ``"bf16"`` (see ``precision.py``).
    """

    def __init__(self, weights: PreNormWeights, *, unpad: bool = True, release: bool = False,
                 name: str = "encoder", precision: str = "fp32"):
        super().__init__(name=name)
        w = weights
        self.precision = precision
        self.unpad = bool(unpad)
        self.hidden_size = int(w.word_embeddings.shape[1])
        self.num_heads, self.num_kv_heads, self.head_dim = int(w.num_heads), int(w.num_kv_heads), int(w.head_dim)
        self.groups = self.num_heads // self.num_kv_heads
        self.eps = float(w.norm_eps)
        self.norm_kind = w.norm
        self.activation_name = w.activation
        self.word_embeddings = variable(take(w, "word_embeddings", release), "word_embeddings")
        self.embed_norm = _norm_variables(w.embed_norm, "embed_norm")
        self.final_norm = _norm_variables(w.final_norm, "final_norm")
        self.layers = build_layers(w, release, lambda lw, i: PreNormLayerModule(lw, w, i, precision))
        # Small per-theta tables; constants are fine at this size (head_dim / 2 floats each).
        self.inv_freq = {t: inverse_frequencies(t, self.head_dim) for t in sorted({l.rope_theta for l in self.layers})}

    def _norm(self, x, norm):
        if norm is None:
            return x
        if self.norm_kind == "rms":
            return rms_norm(x, norm[0], self.eps)
        return layer_norm(x, norm[0], norm[1], self.eps)

    def forward(self, input_ids, attention_mask, position_offset=0, token_type_ids=None, dense=False):  # no token types
        """The forward pass without a ``tf.function`` wrapper (for composing into a bigger graph).

        Args:
            input_ids, attention_mask: int64 ``[B, T]``.
            position_offset: the column of the full batch that column 0 here is (a chunk cut from
                a left-padded batch): rotary positions are ``position_offset + column``.
            dense: every position is a real token (the single-row serving path): no real-token
                packing (the attention pattern masks still apply).
        """
        shape = tf.shape(input_ids)
        batch, seq = shape[0], shape[1]
        Hq, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        flat_ids = tf.reshape(input_ids, [-1])
        pos = tf.range(seq, dtype=tf.int32) + tf.cast(position_offset, tf.int32)
        flat_pos = tf.reshape(tf.broadcast_to(pos[tf.newaxis, :], shape), [-1])
        packed = self.unpad and not dense
        if packed:
            pack, unpack = packing(attention_mask)
            flat_ids, flat_pos = pack(flat_ids), pack(flat_pos)
        else:
            pack = unpack = tf.identity

        # Rotary tables per base, per token: x * cos + swap_halves(x) * signed_sin equals HF's
        # x * cos + rotate_half(x) * sin exactly (the sign moves from x to sin).
        rotary = {}
        pos_f = tf.cast(flat_pos, tf.float32)[:, tf.newaxis]
        for theta, inv in self.inv_freq.items():
            freqs = pos_f * tf.constant(inv)[tf.newaxis, :]  # [N, d/2], float32 as HF computes it
            cos, sin = tf.cos(freqs), tf.sin(freqs)
            rotary[theta] = (tf.concat([cos, cos], -1)[:, tf.newaxis, :],
                             tf.concat([-sin, sin], -1)[:, tf.newaxis, :])

        key_real = tf.reshape(attention_mask > 0, [batch, 1, 1, 1, seq])
        biases = {}
        idx = tf.range(seq)
        rel = idx[tf.newaxis, :] - idx[:, tf.newaxis]  # j - i
        for pattern in sorted({l.pattern for l in self.layers}, key=str):
            look_back, look_ahead = pattern
            allowed = key_real
            if look_back is not None:
                allowed = tf.logical_and(allowed, (rel >= -look_back)[tf.newaxis, tf.newaxis, tf.newaxis])
            if look_ahead is not None:
                allowed = tf.logical_and(allowed, (rel <= look_ahead)[tf.newaxis, tf.newaxis, tf.newaxis])
            biases[pattern] = tf.where(allowed, 0.0, MASK_VALUE)  # [B, 1, 1, T or 1, T]

        act = activation(self.activation_name)
        h = tf.gather(self.word_embeddings, flat_ids)
        h = self._norm(h, self.embed_norm)
        run = lambda halves: self._layers(h, rotary, biases, batch, seq, pack, unpack, act, halves)  # noqa: E731
        h = by_row_length(dense, seq, lambda: run(True), lambda: run(False))
        h = self._norm(h, self.final_norm)
        if packed:
            h = unpack(h) * tf.cast(tf.reshape(attention_mask, [-1, 1]), tf.float32)
        return tf.reshape(h, [batch, seq, self.hidden_size])

    def _layers(self, h, rotary, biases, batch, seq, pack, unpack, act, halves: bool):
        """The layers over ``h`` (``[N, H]``). With ``halves`` (one long dense row) the tokens run in two
        halves (:func:`~packager.encoders.layers.token_halves`): each half's norms, projections and MLP
        form their own chain; the halves meet at attention (their rotated q, k, v concatenated, one
        attention, as grouped-query attention wants all heads of a kv head together), whose context is
        split again. The same arithmetic per token either way."""
        Hq, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        rows = tf.shape(h)[0]
        spans = token_halves(rows) if halves else ((0, rows),)
        hs = [h[lo:hi] for lo, hi in spans] if halves else [h]
        rots = ([{t: (c[lo:hi], s[lo:hi]) for t, (c, s) in rotary.items()} for lo, hi in spans] if halves
                else [rotary])
        for layer in self.layers:
            rotated = []
            for x_h, rot in zip(hs, rots):
                x = self._norm(x_h, layer.attn_norm)
                qkv = tf.reshape(layer.qkv(x), [-1, Hq + 2 * Hkv, d])
                qk, v = qkv[:, :Hq + Hkv], qkv[:, Hq + Hkv:]
                if layer.qk_norm is not None:
                    qk = rms_norm(qk, layer.qk_norm, self.eps)
                cos, sin = rot[layer.rope_theta]
                half = d // 2
                qk = qk * cos + tf.concat([qk[..., half:], qk[..., :half]], -1) * sin
                rotated.append(tf.concat([qk, v], 1))
            both = rotated[0] if len(rotated) == 1 else tf.concat(rotated, 0)
            heads = tf.reshape(unpack(both), [batch, seq, Hq + 2 * Hkv, d])
            context = pack(self._attention(heads, biases[layer.pattern], batch, seq))  # [N, Hq*d]
            contexts = [context[lo:hi] for lo, hi in spans] if halves else [context]
            out = []
            for x_h, c in zip(hs, contexts):
                x_h = x_h + layer.attention_output(c)
                x = self._norm(x_h, layer.mlp_norm)
                gate, up = layer.gate(x, out_dtype=layer.gate.dtype), layer.up(x, out_dtype=layer.up.dtype)
                out.append(x_h + layer.down(act(gate) * up))
            hs = out
        return hs[0] if len(hs) == 1 else tf.concat(hs, 0)

    def _attention(self, heads, bias, batch, seq):
        """``[B, T, Hq + 2 Hkv, d]`` rotated q, k and v -> ``[B*T, Hq*d]`` context.

        Grouped-query attention without repeating k/v: the ``G = Hq / Hkv`` query heads of a kv
        head (HF's ``repeat_kv`` order: query head ``h`` uses kv head ``h // G``) are stacked along
        the query axis, so each kv head does one ``[G*T, d] x [d, T]`` matmul.
        """
        Hq, Hkv, G, d = self.num_heads, self.num_kv_heads, self.groups, self.head_dim
        q = tf.reshape(heads[:, :, :Hq], [batch, seq, Hkv, G, d])
        q = tf.reshape(tf.transpose(q, [0, 2, 3, 1, 4]), [batch, Hkv, G * seq, d])
        k = tf.transpose(heads[:, :, Hq:Hq + Hkv], [0, 2, 1, 3])  # [B, Hkv, T, d]
        v = tf.transpose(heads[:, :, Hq + Hkv:], [0, 2, 1, 3])
        scores = tf.reshape(tf.matmul(q, k, transpose_b=True), [batch, Hkv, G, seq, seq]) + bias
        probs = tf.reshape(tf.nn.softmax(scores, axis=-1), [batch, Hkv, G * seq, seq])
        context = tf.reshape(tf.matmul(probs, v), [batch, Hkv, G, seq, d])
        return tf.reshape(tf.transpose(context, [0, 3, 1, 2, 4]), [-1, Hq * d])
