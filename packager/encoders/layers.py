"""The shared TF forward machinery: norms, masks, length-sorted chunking, and the post-LN encoder.

Two forward passes cover every architecture (``spec.py`` describes their weights):

- :class:`PostLNEncoder` (here): BERT, DistilBERT, MPNet, RoBERTa, XLM-R, CamemBERT;
- :class:`~packager.encoders.pre_norm.PreNormEncoder`: ModernBERT, Qwen2, Qwen3.

Both derive from :class:`ChunkedEncoder`, which owns the serving ``__call__`` and the sorted,
chunked batch path. Speed by construction (issue 7), without changing the arithmetic beyond
float rounding:

- activations stay 2-D ``[N, H]`` so every projection is ``MatMul`` + ``BiasAdd`` that TF's
  oneDNN remapper fuses (with the activation that follows, where it can);
- every projection is :data:`PROJECTION_PARTS` column parts (:class:`Projection`), which TF's
  executor runs at once on its inter-op threads (``packager.settings.thread_split``: one core
  per op beats oneDNN's per-op fork/join across cores at these sizes);
- Q, K and V come from ONE fused kernel (in parts); the ``1/sqrt(head_dim)`` scale is folded
  into the Q columns (or into the q-norm weights) at load time;
- per-token work (embeddings, projections, MLP) runs on the real tokens only, packed as
  ``[N, H]``; only attention sees the padded ``[B, T]`` layout, so padding costs little;
- the padding mask (plus MPNet's relative bias, or a causal / sliding-window pattern) becomes
  one additive bias tensor per call and pattern, shared by the layers;
- a batch is sorted by length and run in chunks of similar length (:meth:`ChunkedEncoder.forward_sorted`),
  so a short sentence batched with a long passage is not padded to its length in attention.
  A chunk is cut to the columns its rows use (leading ones too, for left padding) and told the
  offset, so positions, causal and window masks are those of the uncut batch.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ..settings import PROJECTION_PARTS, TOKEN_HALVES_FROM
from .activations import ACTIVATIONS, activation, check_activation  # noqa: F401 - the one table, re-exported
from .spec import LayerWeights, PostLNWeights

# Chunks of a sorted batch hold about this many (padded) tokens: enough rows for efficient matmuls,
# few enough that a chunk's rows have similar lengths (measured in bench/chunking.py).
CHUNK_TOKENS = 1024

# Added to the scores of hidden keys. Same value Hugging Face uses (torch.finfo(float32).min), so
# hidden keys get exactly zero weight and real tokens see the same softmax as an unpadded batch.
# Masks are combined as booleans first and turned into ONE bias: adding two of these would give
# -inf, and a query row with every key hidden (a padded position) would turn into NaN.
MASK_VALUE = float(np.finfo(np.float32).min)

INPUT_SIGNATURE = (
    tf.TensorSpec([None, None], tf.int64, name="input_ids"),
    tf.TensorSpec([None, None], tf.int64, name="attention_mask"),
)
PAIR_SIGNATURE = (
    tf.TensorSpec([None, None], tf.int64, name="input_ids"),
    tf.TensorSpec([None, None], tf.int64, name="token_type_ids"),
    tf.TensorSpec([None, None], tf.int64, name="attention_mask"),
)


# --------------------------------------------------------------------------- graph pieces
# A weight larger than this is copied into its variable in row blocks of about this size.
VARIABLE_BLOCK_BYTES = 16 << 20


def variable(value: np.ndarray, name: str, dtype=tf.float32) -> tf.Variable:
    """A non-trainable variable (saved under ``variables/``, never a graph constant: constant-folded
    weights would pass the 2 GB protobuf limit). float32, or ``tf.bfloat16`` (rounded to nearest even).

    ``tf.Variable(array)`` makes two full-size copies on the way (numpy -> tensor -> the variable's
    buffer; 1.2 GB extra for a 151k x 1024 vocabulary), so a large array is copied into a
    zero-filled variable block by block instead: the only full-size copy is the variable itself.
    Same values bit for bit (a float32 copy, or the same elementwise cast to bfloat16).
    """
    value = np.ascontiguousarray(value, dtype=np.float32)
    if value.nbytes <= VARIABLE_BLOCK_BYTES or value.ndim == 0:
        init = value if dtype == tf.float32 else tf.cast(value, dtype)
        return tf.Variable(init, trainable=False, name=name)
    var = tf.Variable(tf.zeros(value.shape, dtype), trainable=False, name=name)
    rows = max(1, VARIABLE_BLOCK_BYTES // (value[0].nbytes or 1))
    for lo in range(0, value.shape[0], rows):
        block = value[lo:lo + rows]
        # The raw op: ``var[lo:hi].assign`` would read the variable first, and that outstanding read
        # makes the assign copy the whole buffer (copy-on-write) for every block.
        tf.raw_ops.ResourceStridedSliceAssign(ref=var.handle, begin=[lo], end=[lo + len(block)], strides=[1],
                                              value=block if dtype == tf.float32 else tf.cast(block, dtype))
    return var


def kernel_dtype(precision: str):
    """The dtype projection kernels (and their biases) are stored in (see ``precision.py``)."""
    return tf.bfloat16 if precision == "bf16" else tf.float32


def project(x, kernel, bias=None, act=None, out_dtype=tf.float32):
    """``act(x @ kernel + bias)`` as ONE oneDNN primitive (MatMul + BiasAdd (+ activation) fused by
    grappler's remapper), in the kernel's dtype: a bfloat16 kernel gets ``x`` cast to bfloat16 and the
    result cast to ``out_dtype`` (pass ``tf.bfloat16`` to feed another bfloat16 projection directly)."""
    if x.dtype != kernel.dtype:
        x = tf.cast(x, kernel.dtype)
    y = tf.matmul(x, kernel)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    if act is not None:
        y = act(y)
    return y if y.dtype == out_dtype else tf.cast(y, out_dtype)


# Every projection's output columns are split into PROJECTION_PARTS kernels (packager.settings), each
# its own MatMul (+ BiasAdd (+ activation)) op, concatenated after. Each output column is the same dot
# product as before, so the arithmetic is unchanged (float rounding aside); what changes is that TF's
# executor runs the parts at once on its inter-op threads, each on its own core, without oneDNN's
# per-op fork/join across cores (which costs more than it gains at these sizes). On 2 cores, with
# 1 intra-op x 2 inter-op threads (packager.settings.thread_split, what every serving target sets)
# against one kernel on 2 intra-op threads: 1.27x at batch 1, 1.1-1.3x batched (docs/performance.md,
# "Projections in parts").


class Projection(tf.Module):
    """``act(x @ kernel + bias)`` with ``kernel``'s output columns held in :data:`PROJECTION_PARTS` variables.

    Args:
        kernel: ``[in, out]`` (numpy; the graph computes ``x @ kernel``). Column slices are copied
            into the variables one part at a time.
        bias: ``[out]`` or None.
        name: the variables are ``{name}_kernel_{i}`` and ``{name}_bias_{i}``.
        dtype: the kernels' and biases' dtype (``kernel_dtype(precision)``).
        parts: how many column parts (at most ``out``; default :data:`PROJECTION_PARTS`).
    """

    def __init__(self, kernel: np.ndarray, bias: np.ndarray | None, name: str, dtype=tf.float32,
                 parts: int | None = None):
        super().__init__(name=name)
        parts = PROJECTION_PARTS if parts is None else parts  # read at build time (bench/projection_parts.py sets it)
        cols = [c for c in np.array_split(np.arange(kernel.shape[1]), max(1, parts)) if len(c)]
        bounds = [(int(c[0]), int(c[-1]) + 1) for c in cols]
        self.kernels = [variable(kernel[:, lo:hi], f"{name}_kernel_{i}", dtype) for i, (lo, hi) in enumerate(bounds)]
        self.biases = [None if bias is None else variable(bias[lo:hi], f"{name}_bias_{i}", dtype)
                       for i, (lo, hi) in enumerate(bounds)]

    @property
    def dtype(self):
        return self.kernels[0].dtype

    @property
    def kernel(self):
        """The whole ``[in, out]`` kernel as one tensor (a concat: for inspection, not the serving path)."""
        return tf.concat(self.kernels, axis=1)

    @property
    def bias(self):
        """The whole ``[out]`` bias (a concat), or None."""
        return None if self.biases[0] is None else tf.concat(self.biases, axis=0)

    def __call__(self, x, act=None, out_dtype=tf.float32):
        outs = [project(x, k, b, act, out_dtype) for k, b in zip(self.kernels, self.biases)]
        return outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)



def take(spec, attr: str, release: bool):
    """``spec.attr``, and with ``release`` set it to None, so the caller's last reference goes."""
    value = getattr(spec, attr)
    if release:
        setattr(spec, attr, None)
    return value


def build_layers(spec, release: bool, make) -> list:
    """``[make(layer_weights, index) for each layer of spec.layers]``.

    With ``release`` each layer leaves ``spec.layers`` as it is built and its arrays are freed once
    its variables exist, and the malloc heap is trimmed after each layer
    (:func:`packager.memory.release_freed_memory`): the freed arrays' pages go back to the OS as
    the variables fill up, so the export never holds the checkpoint twice (when the caller dropped
    its own references: ``build_encoder(consume_weights=True)``). Without the trim glibc kept
    them resident (1.9 GB for Qwen3-0.6B).
    """
    if not release:
        return [make(lw, i) for i, lw in enumerate(spec.layers)]
    from ..memory import release_freed_memory

    built = []
    while spec.layers:
        built.append(make(spec.layers.pop(0), len(built)))  # the popped weights die with this call
        release_freed_memory()
    return built


def layer_norm(x, gamma, beta, eps: float):
    """LayerNorm over the last axis, biased variance, as ``torch.nn.LayerNorm`` (``beta`` may be None)."""
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True)
    out = centered * tf.math.rsqrt(variance + eps) * gamma
    return out if beta is None else out + beta


def rms_norm(x, gamma, eps: float):
    """RMSNorm over the last axis, as transformers' ``LlamaRMSNorm`` / ``Qwen3RMSNorm`` in float32."""
    variance = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
    return x * tf.math.rsqrt(variance + eps) * gamma


def padding_bias(attention_mask):
    """``[B, T]`` 0/1 mask -> ``[B, 1, 1, T]`` additive bias: 0 for tokens, ``MASK_VALUE`` for padding."""
    keep = tf.cast(attention_mask, tf.float32)
    return ((1.0 - keep) * MASK_VALUE)[:, tf.newaxis, tf.newaxis, :]


def positions_from_input_ids(input_ids, padding_idx: int):
    """RoBERTa/MPNet positions: count non-pad tokens from ``padding_idx + 1``; pads get ``padding_idx``."""
    not_pad = tf.cast(tf.not_equal(input_ids, padding_idx), tf.int64)
    return tf.cumsum(not_pad, axis=1) * not_pad + padding_idx


def packing(attention_mask):
    """``(pack, unpack)`` between the flat padded layout ``[B*T, ...]`` and the real tokens ``[N, ...]``.

    ``unpack`` puts row 0 at every padded slot: those keys are masked out and those queries
    discarded, so any finite value does.
    """
    flat_mask = tf.reshape(attention_mask, [-1]) > 0
    real = tf.where(flat_mask)[:, 0]
    slot = tf.where(flat_mask, tf.cumsum(tf.cast(flat_mask, tf.int64)) - 1, 0)
    return (lambda x: tf.gather(x, real)), (lambda x: tf.gather(x, slot))


def token_halves(rows):
    """Row spans ``((0, rows // 2), (rows // 2, rows))`` of one dense row's tokens in two halves.

    Everything but attention is per token, so each half runs its own chain of norms, projections
    and FFN, which TF's executor runs at once on its two inter-op threads
    (:func:`packager.settings.thread_split`); the halves meet at attention. Used by both encoder
    families for one dense row of at least ``TOKEN_HALVES_FROM`` tokens (see :func:`by_row_length`).
    """
    half = rows // 2
    return ((0, half), (half, rows))


def by_row_length(dense: bool, seq, halves, whole):
    """``halves()`` for one dense row of at least ``TOKEN_HALVES_FROM`` tokens, else ``whole()``.

    Chosen in the graph by ``tf.cond``; a batch (``dense`` false) always takes ``whole()``. On long
    rows the halves beat the projections' column parts alone (``bench/projection_layouts.py``); on
    short ones the extra concats cost more than the overlap gains (docs/performance.md).
    """
    return tf.cond(seq >= TOKEN_HALVES_FROM, halves, whole) if dense else whole()


def head_indices(attention_mask, num_heads: int, dense: bool, unpad: bool):
    """Row indices that do attention's head reshuffles as ONE ``GatherV2`` each way.

    With the fused projections seen as rows of ``head_dim`` floats (``[M * 3h, d]``, M the rows of
    ``h``: the N real tokens when packed, else ``B * T``):

    * ``gather_in`` (``[3 * B * h * T]``): those rows in ``[3, B, h, T]`` order, so a reshape and a
      split give Q, K and V as ``[B, h, T, d]``; padded slots read token 0 (masked keys, discarded
      queries);
    * ``gather_out`` (``[M' * h]``): rows of the context ``[B * h * T, d]`` in ``(token, head)``
      order, for the real tokens only when packed (``M' = N``), else every position.

    This replaces the packing gather, the 5-D transpose, the unstack, the transpose back and the
    unpacking gather of each layer (oneDNN transposes cost ~0.1 ms each at batch 1 on 2 threads,
    whatever their size); the indices are computed once per forward and shared by the layers.
    """
    shape = tf.shape(attention_mask)
    batch, seq = shape[0], shape[1]
    if dense or not unpad:
        slot = tf.range(batch * seq)  # row m of h is position m
        real = slot
    else:
        flat_mask = tf.reshape(attention_mask, [-1]) > 0
        slot = tf.where(flat_mask, tf.cumsum(tf.cast(flat_mask, tf.int32)) - 1, 0)  # [B*T] -> packed row
        real = tf.cast(tf.where(flat_mask)[:, 0], tf.int32)  # packed row -> position
    slot = tf.reshape(slot, [1, batch, 1, seq])
    part = tf.reshape(tf.range(3), [3, 1, 1, 1])
    head = tf.range(num_heads)
    gather_in = tf.reshape((slot * 3 + part) * num_heads + tf.reshape(head, [1, 1, num_heads, 1]), [-1])
    b, t = real // tf.maximum(seq, 1), real % tf.maximum(seq, 1)
    gather_out = tf.reshape((b[:, tf.newaxis] * num_heads + head[tf.newaxis, :]) * seq + t[:, tf.newaxis], [-1])
    return gather_in, gather_out


class ChunkedEncoder(tf.Module):
    """Base of the encoders: the serving ``__call__`` and the sorted, chunked batch path.

    Subclasses set ``hidden_size`` and ``unpad`` and implement
    ``forward(input_ids, attention_mask, position_offset=0)``, where ``position_offset`` is the
    column of the uncut batch that column 0 of the input was (see :meth:`forward_sorted`).
    """

    hidden_size: int
    unpad: bool

    @tf.function(input_signature=INPUT_SIGNATURE)
    def __call__(self, input_ids, attention_mask):
        """``input_ids``, ``attention_mask`` int64 ``[B, T]`` -> ``last_hidden_state`` float32 ``[B, T, H]``."""
        return self.serve(input_ids, attention_mask)

    @tf.function(input_signature=PAIR_SIGNATURE)
    def with_token_types(self, input_ids, token_type_ids, attention_mask):
        """:meth:`__call__` for inputs that carry token types (sentence pairs)."""
        return self.serve(input_ids, attention_mask, token_type_ids=token_type_ids)

    def serve(self, input_ids, attention_mask, token_type_ids=None):
        """The serving path (no ``tf.function`` wrapper): one dense row, or the sorted, chunked batch.

        A batch of ONE row without padding (every single-sentence request: a lone row is its own
        longest) takes :meth:`forward` with ``dense=True``, chosen in the graph by ``tf.cond``: no
        padding bias, no real-token packing, no sort and no chunk loop (about 190 fewer executed ops
        per call for MiniLM). Anything else takes :meth:`forward_sorted` (or, with ``unpad=False``,
        the padded :meth:`forward`). Both branches compute the same values up to float rounding.
        """
        kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if not self.unpad:
            return self.forward(input_ids, attention_mask, **kw)
        one_dense_row = tf.logical_and(tf.equal(tf.shape(input_ids)[0], 1), tf.reduce_all(attention_mask > 0))
        return tf.cond(one_dense_row, lambda: self.forward(input_ids, attention_mask, dense=True, **kw),
                       lambda: self.forward_sorted(input_ids, attention_mask, **kw))

    def forward(self, input_ids, attention_mask, position_offset=0, token_type_ids=None, dense=False):
        """``dense``: the caller guarantees every position is a real token (mask all ones), so the
        padding bias and the real-token packing are skipped."""
        raise NotImplementedError

    def forward_sorted(self, input_ids, attention_mask, chunk_tokens: int = CHUNK_TOKENS, token_type_ids=None):
        """:meth:`forward` over length-sorted chunks of the batch; the same result up to float rounding.

        Rows are sorted by span (last real column + 1 - first real column), longest first. Each chunk
        starts at the longest remaining row (span ``L``), takes ``max(1, chunk_tokens // L)`` rows and
        is cut to the columns its rows use: trailing padding (right-padded batches) and leading padding
        (left-padded ones) are dropped, and the first kept column is passed as ``position_offset`` so
        positions and causal / window masks stay those of the full batch. Outputs are padded back to
        ``T`` with zeros (as :meth:`forward` leaves padded positions) and put back in input order.
        """
        shape = tf.shape(input_ids)
        batch, seq = shape[0], shape[1]
        cols = tf.range(seq, dtype=tf.int32)[tf.newaxis, :]
        real = attention_mask > 0
        first = tf.reduce_min(tf.where(real, cols, seq), axis=1)  # seq for a row without tokens
        end = tf.reduce_max(tf.where(real, cols + 1, 0), axis=1)  # 0 for a row without tokens
        span = tf.maximum(end - first, 0)
        order = tf.argsort(span, direction="DESCENDING", stable=True)
        s_span, s_first, s_end = tf.gather(span, order), tf.gather(first, order), tf.gather(end, order)
        ids_sorted, mask_sorted = tf.gather(input_ids, order), tf.gather(attention_mask, order)
        types_sorted = None if token_type_ids is None else tf.gather(token_type_ids, order)

        def body(start, done):
            length = tf.maximum(s_span[start], 1)
            rows = tf.minimum(tf.maximum(chunk_tokens // length, 1), batch - start)
            lo = tf.reduce_min(s_first[start:start + rows])
            hi = tf.reduce_max(s_end[start:start + rows])
            lo = tf.minimum(lo, hi)  # a chunk of rows without tokens: an empty cut
            kw = {} if types_sorted is None else {"token_type_ids": types_sorted[start:start + rows, lo:hi]}
            h = self.forward(ids_sorted[start:start + rows, lo:hi], mask_sorted[start:start + rows, lo:hi],
                             position_offset=lo, **kw)
            h = tf.pad(h, [[0, 0], [lo, seq - hi], [0, 0]])
            return start + rows, tf.concat([done, h], axis=0)

        # The chunks are collected by concatenation, not in a growing TensorArray: that one needs
        # TensorListSetItem's resize_if_index_out_of_bounds, which TF <= 2.12 (TF-Serving 2.12) lacks.
        # Chunks are few (about 10 at batch 128), so the copies cost ~1% of the call (bench/chunking.py).
        _, h_sorted = tf.while_loop(
            lambda start, _: start < batch, body, (tf.constant(0), tf.zeros([0, seq, self.hidden_size])),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, self.hidden_size])))
        return tf.gather(h_sorted, tf.math.invert_permutation(order))


# --------------------------------------------------------------------------- post-LN encoder
class Layer(tf.Module):
    """Weights of one post-LN layer, fused for speed: QKV as one ``[H, 3H]`` matrix, Q pre-scaled."""

    def __init__(self, w: LayerWeights, num_heads: int, index: int, precision: str = "fp32"):
        super().__init__(name=f"layer_{index}")
        hidden = w.q_w.shape[1]
        scale = 1.0 / math.sqrt(hidden // num_heads)
        kd = kernel_dtype(precision)
        # torch Linear computes x @ W.T: store W.T so the graph does a plain x @ W.
        qkv_w = np.concatenate([w.q_w.T * scale, w.k_w.T, w.v_w.T], axis=1)
        qkv_b = np.concatenate([w.q_b * scale, w.k_b, w.v_b])
        self.qkv = Projection(qkv_w, qkv_b, "qkv", kd)
        del qkv_w
        self.attention_output = Projection(w.o_w.T, w.o_b, "attention_output", kd)
        self.attn_ln_g = variable(w.attn_ln_g, "attention_layer_norm_gamma")
        self.attn_ln_b = variable(w.attn_ln_b, "attention_layer_norm_beta")
        self.ffn_in = Projection(w.ffn_in_w.T, w.ffn_in_b, "ffn_in", kd)
        self.ffn_out = Projection(w.ffn_out_w.T, w.ffn_out_b, "ffn_out", kd)
        self.out_ln_g = variable(w.out_ln_g, "output_layer_norm_gamma")
        self.out_ln_b = variable(w.out_ln_b, "output_layer_norm_beta")


class PostLNEncoder(ChunkedEncoder):
    """The post-LN forward pass (BERT family).

    Args:
        weights: a :class:`~packager.encoders.spec.PostLNWeights` (``convert_weights`` of bert,
            distilbert, mpnet, roberta, xlm_roberta).
        unpad: run the per-token layers on real tokens only. Padded positions of the output
            are then zero (Hugging Face leaves values there that no pooling mode reads), and a
            non-empty batch must have at least one real token (tokenizers always add specials).
            False keeps the padded layout throughout and HF's values at padded positions. Both
            layouts compile under XLA (``jit_compile=True``; not enabled here).
        release: empty ``weights`` (arrays set to None, layers popped) as they become variables.
        name: module name.
        precision: ``"fp32"`` (exact) or ``"bf16"`` (projections in bfloat16, see ``precision.py``;
            the caller checks the CPU: :func:`~packager.encoders.precision.check_precision`).
    """

    def __init__(self, weights: PostLNWeights, *, unpad: bool = True, release: bool = False, name: str = "encoder",
                 precision: str = "fp32"):
        super().__init__(name=name)
        w = weights
        self.precision = precision
        self.unpad = bool(unpad)
        self.hidden_size = int(w.word_embeddings.shape[1])
        self.num_heads = int(w.num_heads)
        self.head_dim = self.hidden_size // self.num_heads
        self.activation = check_activation(w.activation)
        self.eps = float(w.layer_norm_eps)
        self.padding_idx = None if w.padding_idx is None else int(w.padding_idx)
        self.max_positions = int(w.position_embeddings.shape[0])
        self.word_embeddings = variable(take(w, "word_embeddings", release), "word_embeddings")
        self.position_embeddings = variable(take(w, "position_embeddings", release), "position_embeddings")
        self.embed_ln_g = variable(w.embed_ln[0], "embeddings_layer_norm_gamma")
        self.embed_ln_b = variable(w.embed_ln[1], "embeddings_layer_norm_beta")
        self.layers = build_layers(w, release, lambda lw, i: Layer(lw, self.num_heads, i, precision))
        if w.relative_bias is not None:
            self.relative_span = (int(w.relative_bias.shape[1]) + 1) // 2
            self.relative_bias = variable(take(w, "relative_bias", release), "relative_attention_bias")
        else:
            self.relative_bias = None
        if w.type_deltas is not None:
            deltas = take(w, "type_deltas", release)
            self.type_deltas = variable(np.concatenate([np.zeros_like(deltas[:1]), deltas]), "token_type_deltas")
        else:
            self.type_deltas = None

    def forward(self, input_ids, attention_mask, position_offset=0, token_type_ids=None, dense=False):
        """The forward pass without a ``tf.function`` wrapper (for composing into a bigger graph).

        ``position_offset``: absolute positions start there (a chunk cut from a left-padded
        batch); RoBERTa-style positions count non-pad ids and need no offset. ``dense``: every
        position is a real token (see :meth:`ChunkedEncoder.forward`).
        """
        shape = tf.shape(input_ids)
        batch, seq = shape[0], shape[1]
        bias = None if dense else padding_bias(attention_mask)
        if self.relative_bias is not None:
            rel = self._relative_bias(seq)[tf.newaxis]
            bias = rel if bias is None else bias + rel
        flat_ids = tf.reshape(input_ids, [-1])
        if self.padding_idx is None:
            pos = tf.range(seq, dtype=tf.int64) + tf.cast(position_offset, tf.int64)
            flat_pos = pos if dense else tf.reshape(tf.broadcast_to(pos, shape), [-1])
        else:
            flat_pos = tf.reshape(positions_from_input_ids(input_ids, self.padding_idx), [-1])
        use_types = token_type_ids is not None and self.type_deltas is not None
        flat_types = tf.reshape(token_type_ids, [-1]) if use_types else None
        packed = self.unpad and not dense
        if packed:
            # Per-token work (embeddings, projections, FFN: nearly all FLOPs) runs on the N real
            # tokens only, packed as [N, H]; attention alone needs the padded [B, T] layout.
            pack, unpack = packing(attention_mask)
            flat_ids, flat_pos = pack(flat_ids), pack(flat_pos)
            flat_types = pack(flat_types) if use_types else None
        gather_in, gather_out = head_indices(attention_mask, self.num_heads, dense, self.unpad)
        h = tf.gather(self.word_embeddings, flat_ids) + tf.gather(self.position_embeddings, flat_pos)
        if use_types:
            h = h + tf.gather(self.type_deltas, flat_types)
        h = layer_norm(h, self.embed_ln_g, self.embed_ln_b, self.eps)  # 2-D from here on
        h = by_row_length(dense, seq, lambda: self._layers_in_halves(h, bias, seq),
                          lambda: self._layers(h, bias, batch, seq, gather_in, gather_out))
        if packed:
            h = unpack(h) * tf.cast(tf.reshape(attention_mask, [-1, 1]), tf.float32)
        return tf.reshape(h, [batch, seq, self.hidden_size])

    def _after_attention(self, layer, context, h):
        """The rest of a layer, per token: output projection, residual + LayerNorm, FFN, residual + LayerNorm."""
        attn = layer.attention_output(context)
        h = layer_norm(attn + h, layer.attn_ln_g, layer.attn_ln_b, self.eps)
        ffn = layer.ffn_in(h, ACTIVATIONS[self.activation], out_dtype=kernel_dtype(self.precision))  # the FFN's
        ffn = layer.ffn_out(ffn)  # inner activations stay in the kernels' dtype
        return layer_norm(ffn + h, layer.out_ln_g, layer.out_ln_b, self.eps)

    def _layers(self, h, bias, batch, seq, gather_in, gather_out):
        for layer in self.layers:
            qkv = layer.qkv(h)  # [N, 3H]
            context = self._attention(qkv, bias, batch, seq, gather_in, gather_out)  # [N, H]
            h = self._after_attention(layer, context, h)
        return h

    def _layers_in_halves(self, h, bias, seq):
        """The layers over ONE dense row ``h`` (``[T, H]``) with its tokens in two halves.

        Each half runs its own chain of projections and LayerNorms (:func:`token_halves`); the halves
        meet once per layer, where every query needs every key and value: the two QKV blocks are
        concatenated, and each half's queries attend over all of them (two smaller score matrices,
        no split of the context afterwards). Same arithmetic per token as :meth:`_layers`.
        """
        heads, d = self.num_heads, self.head_dim
        bounds = token_halves(seq)
        gather_in, _ = head_indices(tf.ones([1, seq], tf.int32), heads, True, self.unpad)
        head = tf.range(heads)
        # context [heads * n, d] rows -> (token, head) order, per half of n tokens
        gather_out = [tf.reshape(head[tf.newaxis, :] * (hi - lo) + tf.range(hi - lo)[:, tf.newaxis], [-1])
                      for lo, hi in bounds]
        biases = [None if bias is None else bias[:, :, lo:hi, :] for lo, hi in bounds]
        hs = [h[lo:hi] for lo, hi in bounds]
        for layer in self.layers:
            qkv = tf.concat([layer.qkv(x) for x in hs], axis=0)  # [T, 3H]
            rows = tf.gather(tf.reshape(qkv, [-1, d]), gather_in)
            q, k, v = tf.split(tf.reshape(rows, [3, heads, seq, d]), 3)  # each [1, heads, T, d]
            out = []
            for (lo, hi), x, b, g in zip(bounds, hs, biases, gather_out):
                scores = tf.matmul(q[:, :, lo:hi], k, transpose_b=True)  # Q already carries 1/sqrt(d)
                if b is not None:
                    scores = scores + b
                context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)  # [1, heads, n, d]
                context = tf.reshape(tf.gather(tf.reshape(context, [-1, d]), g), [-1, self.hidden_size])
                out.append(self._after_attention(layer, context, x))
            hs = out
        return tf.concat(hs, axis=0)

    def _relative_bias(self, seq):
        # bias[h, i, j] = table[h, clip(j - i)]: the bucket of every clipped relative position
        # is already resolved into the table at load time (mpnet.py), so this is one gather.
        span = self.relative_span
        idx = tf.range(seq)
        rel = tf.clip_by_value(idx[tf.newaxis, :] - idx[:, tf.newaxis], -(span - 1), span - 1) + (span - 1)
        return tf.gather(self.relative_bias, rel, axis=1)  # [heads, T, T]

    def _attention(self, qkv, bias, batch, seq, gather_in, gather_out):
        """``[M, 3H]`` fused projections -> ``[M', H]`` attention context (before the output projection).

        ``M``/``M'``: the packed real tokens (or every position), see :func:`head_indices`.
        """
        heads, d = self.num_heads, self.head_dim
        rows = tf.gather(tf.reshape(qkv, [-1, d]), gather_in)
        q, k, v = tf.split(tf.reshape(rows, [3 * batch, heads, seq, d]), 3)  # each [B, heads, T, d]
        scores = tf.matmul(q, k, transpose_b=True)  # Q already carries 1/sqrt(d)
        if bias is not None:
            scores = scores + bias
        context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)  # [B, heads, T, d]
        return tf.reshape(tf.gather(tf.reshape(context, [-1, d]), gather_out), [-1, self.hidden_size])
