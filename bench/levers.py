"""Variants of the serving graph, built in a bench process WITHOUT changing packager/, to measure
speed levers at batch 1 (and what they do at batch 8/32). Used by ``bench/batch1_profile.py`` through the
``lever`` worker kind (``bench/worker.py``): each variant is its own process, because grappler
options, oneDNN and thread settings are process-wide.

Every variant maps raw strings to embeddings like ``serving_default`` and is checked against
sentence-transformers (max abs diff <= 1e-5) by the profile before its timing counts.

The variants that rebuild the graph use the packager module in-process (``build_module``: the same
tokenizer, encoder weights and heads the export holds) and the encoder's weights as they are laid
out in ``packager/encoders/layers.py`` (``PostLNEncoder``: fused ``qkv_w`` with Q pre-scaled,
``word_embeddings``, ``position_embeddings`` with token type 0 folded in ...). They are bench code:
if the encoder's attributes change, the affected variant fails with a clear error and the others run.
"""
from __future__ import annotations

import os
import sys

import numpy as np

# lever name -> (what it is, spec defaults). "base" picks how the strings -> embeddings function is
# made; the other keys are process settings applied before TensorFlow builds anything.
LEVERS = {
    "export": ("the exported SavedModel's serving_default signature, as shipped (the baseline)", {"base": "export"}),
    "export-fn": ("the same export called as the restored tf.function (graph.serve) instead of the signature",
                  {"base": "export-fn"}),
    "session": ("the same export run by a TF1 Session (no eager function-call path)", {"base": "session"}),
    "rebuilt": ("the serving graph rebuilt in-process from the model (same code as the export)", {"base": "rebuilt"}),
    "lean-b1": ("tf.cond(batch == 1): one row needs no mask, packing, sort or chunk loop; else the shipped path",
                {"base": "lean"}),
    "no-sort": ("encoder.forward on the whole batch: real-token packing but no length sort or chunk loop",
                {"base": "no-sort"}),
    "lean-b1-xla": ("lean-b1 with the single-row encoder under jit_compile=True, T padded to a multiple of 32",
                    {"base": "lean", "xla": True}),
    "frozen": ("the serving graph rebuilt with the encoder's weights as graph constants, not variables",
               {"base": "rebuilt", "freeze": True}),
    "lean-b1-frozen": ("lean-b1 with the encoder weights as graph constants", {"base": "lean", "freeze": True}),
    "ln-2op": (("the rebuilt graph with LayerNorm as mean/variance then x*inv + (beta - mean*inv): 2 ops on the "
                "[N, H] activations instead of 4"), {"base": "rebuilt", "ln": "2op"}),
    "ln-fused-bn": (("the rebuilt graph with LayerNorm as one FusedBatchNormV3 over rows (Keras' trick), then "
                     "gamma/beta"), {"base": "rebuilt", "ln": "fused-bn"}),
    "grappler-off": ("the export with grappler's meta optimizer disabled", {"base": "export",
                                                                          "grappler": {"disable_meta_optimizer": True}}),
    "no-remapper": ("the export without grappler's remapper (no fused MatMul+BiasAdd+GELU)",
                    {"base": "export", "grappler": {"remapping": False}}),
    "onednn-off": ("the export with TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels)", {"base": "export", "onednn": "0"}),
    "frozen-weights-env": (("the export with TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1: oneDNN caches its reordered (blocked) "
                            "weights and uses brgemm instead of re-packing them in every call"),
                           {"base": "export", "env": {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}}),
    "caller-thread-env": (("the export with TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD=1 (the calling thread joins "
                           "oneDNN's parallel work)"), {"base": "export", "env": {"TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD": "1"}}),
    "both-env": ("the export with both oneDNN env settings above", {"base": "export", "env": {
        "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1", "TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD": "1"}}),
    "lean-b1+frozen-env": ("lean-b1 with TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1",
                           {"base": "lean", "env": {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}}),
    "frozen-env-threads-1": ("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 with 1 intra-op thread",
                             {"base": "export", "threads": 1, "env": {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}}),
    "fpmath-bf16": (("REDUCED PRECISION: the export with ONEDNN_DEFAULT_FPMATH_MODE=BF16 and frozen weights "
                     "(f32 primitives computed in bf16 on AMX / AVX512-BF16)"),
                    {"base": "export", "reduced": True, "env": {"ONEDNN_DEFAULT_FPMATH_MODE": "BF16",
                                                                "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}}),
    "threads-1": ("the export with 1 intra-op thread", {"base": "export", "threads": 1}),
    "inter-2": ("the export with 2 inter-op threads (independent ops may overlap)", {"base": "export", "inter_op": 2}),
    "bf16-amp": ("REDUCED PRECISION: the export with grappler's oneDNN bfloat16 auto mixed precision",
                 {"base": "export", "grappler": {"auto_mixed_precision_onednn_bfloat16": True}, "reduced": True}),
    "lean-b1-bf16": ("REDUCED PRECISION: lean-b1 with oneDNN bfloat16 auto mixed precision",
                     {"base": "lean", "grappler": {"auto_mixed_precision_onednn_bfloat16": True}, "reduced": True}),
}


def worker_env(name: str, spec: dict) -> dict:
    """Environment a lever's worker needs (set before TF is imported)."""
    d = {**LEVERS[name][1], **spec}
    env = dict(d.get("env", {}))
    if "onednn" in d:
        env["TF_ENABLE_ONEDNN_OPTS"] = d["onednn"]
    if "threads" in d:
        env["BENCH_THREADS"] = str(d["threads"])
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(d["threads"])
    return env


# ----------------------------------------------------------------------------- graph pieces
def _encoder_parts(enc):
    need = ("word_embeddings", "position_embeddings", "embed_ln_g", "embed_ln_b", "layers", "eps", "num_heads",
            "head_dim", "hidden_size", "activation", "padding_idx")
    missing = [a for a in need if not hasattr(enc, a)]
    if missing:
        raise RuntimeError(f"{type(enc).__name__} lacks {missing}: the lean path knows PostLNEncoder's layout only")


def lean_row(enc, ids, pad_to: int | None = None):
    """One row ``ids`` [1, T] (all real tokens: a single row is never padded) -> [1, T, H].

    No mask bias, no real-token packing, no sort or chunk loop: embeddings, then per layer one fused
    QKV MatMul, attention over [heads, T, T], output projection, LayerNorm, FFN, LayerNorm.
    ``pad_to``: pad T up to a multiple (for XLA: few distinct shapes); padded keys are masked.
    """
    import tensorflow as tf

    from bench.common import whole_project
    from packager.encoders.layers import (
        ACTIVATIONS,
        MASK_VALUE,
        layer_norm,
        positions_from_input_ids,
    )

    _encoder_parts(enc)
    seq = tf.shape(ids)[1]
    flat = ids[0]
    if enc.padding_idx is None:
        pos = tf.range(seq, dtype=tf.int64)
    else:
        pos = positions_from_input_ids(ids, enc.padding_idx)[0]
    bias = None
    if pad_to:
        padded = (seq + pad_to - 1) // pad_to * pad_to
        extra = padded - seq
        flat = tf.pad(flat, [[0, extra]])
        pos = tf.pad(pos, [[0, extra]])
        bias = tf.concat([tf.zeros([seq]), tf.fill([extra], MASK_VALUE)], 0)[tf.newaxis, tf.newaxis, :]
        n = padded
    else:
        n = seq
    h = tf.gather(enc.word_embeddings, flat) + tf.gather(enc.position_embeddings, pos)
    h = layer_norm(h, enc.embed_ln_g, enc.embed_ln_b, enc.eps)  # [T, H]
    rel = enc._relative_bias(n) if getattr(enc, "relative_bias", None) is not None else None
    act = ACTIVATIONS[enc.activation]
    heads, d, hidden = enc.num_heads, enc.head_dim, enc.hidden_size
    for layer in enc.layers:
        qkv = whole_project(h, layer.qkv)  # [T, 3H]
        q, k, v = tf.unstack(tf.transpose(tf.reshape(qkv, [n, 3, heads, d]), [1, 2, 0, 3]))  # [heads, T, d]
        scores = tf.matmul(q, k, transpose_b=True)  # Q carries 1/sqrt(d)
        if rel is not None:
            scores = scores + rel
        if bias is not None:
            scores = scores + bias
        ctx = tf.matmul(tf.nn.softmax(scores, axis=-1), v)  # [heads, T, d]
        ctx = tf.reshape(tf.transpose(ctx, [1, 0, 2]), [n, hidden])
        attn = whole_project(ctx, layer.attention_output)
        h = layer_norm(attn + h, layer.attn_ln_g, layer.attn_ln_b, enc.eps)
        ffn = act(whole_project(h, layer.ffn_in))
        ffn = whole_project(ffn, layer.ffn_out)
        h = layer_norm(ffn + h, layer.out_ln_g, layer.out_ln_b, enc.eps)
    if pad_to:
        h = h[:seq]
    return h[tf.newaxis]


def build(spec: dict):
    """Return ``embed(list[str]) -> np.ndarray`` for one lever (see :data:`LEVERS`)."""
    import tensorflow as tf

    d = {**LEVERS[spec["lever"]][1], **spec}
    sys.path.insert(0, d["root"])
    if d.get("grappler"):
        tf.config.optimizer.set_experimental_options(d["grappler"])
    base = d["base"]
    if base == "session":
        return _session(d)
    from packager.graph import load

    if base in ("export", "export-fn"):
        graph = load(d["export_dir"])
        if base == "export":
            sig = graph.signatures["serving_default"]
            return lambda texts: sig(input_sequence=tf.constant(texts))["sentence_embedding"].numpy()
        fn = graph.serve

        def embed_fn(texts, graph=graph):  # the restored function holds its variables weakly
            return fn(tf.constant(texts))["sentence_embedding"].numpy()

        return embed_fn
    from packager.graph import build_module
    from packager.source import load_spec

    if d.get("ln"):
        _patch_layer_norm(d["ln"])

    module = build_module(load_spec(d["model_dir"]))
    sig = [tf.TensorSpec([None], tf.string)]
    transformer, heads, enc = module.transformer, module.heads, module.transformer.encoder
    if d.get("freeze"):
        _freeze(enc)

    def finish(feats):
        for head in heads:
            feats = head(feats)
        return feats["sentence_embedding"]

    if base == "rebuilt":
        fn = module.serve
    elif base == "no-sort":
        @tf.function(input_signature=sig)
        def fn(strings):
            feats = dict(transformer.tokenize(strings))
            feats["token_embeddings"] = enc.forward(feats["input_ids"], feats["attention_mask"])
            return {"sentence_embedding": finish(feats)}
    elif base == "lean":
        row = lean_row
        if d.get("xla"):
            xla_row = tf.function(lambda ids: lean_row(enc, ids, pad_to=32), jit_compile=True)
            row = lambda _enc, ids: xla_row(ids)

        @tf.function(input_signature=sig)
        def fn(strings):
            feats = dict(transformer.tokenize(strings))
            ids, mask = feats["input_ids"], feats["attention_mask"]

            def one():
                return row(enc, ids)

            def many():
                return enc(ids, mask)

            feats["token_embeddings"] = tf.cond(tf.shape(ids)[0] == 1, one, many)
            return {"sentence_embedding": finish(feats)}
    else:
        raise SystemExit(f"unknown base {base!r}")
    def embed(texts):
        return fn(tf.constant(texts))["sentence_embedding"].numpy()

    embed.module = module  # module.serve holds its module weakly
    return embed


def _patch_layer_norm(kind: str) -> None:
    """Replace ``packager.encoders.layers.layer_norm`` (looked up at trace time) with a variant."""
    import tensorflow as tf

    from packager.encoders import layers

    def two_op(x, gamma, beta, eps):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1, keepdims=True)
        inv = tf.math.rsqrt(var + eps) * gamma  # [N, H]: broadcast of [N, 1] x [H]
        return x * inv + (beta - mean * inv)

    def fused_bn(x, gamma, beta, eps):
        shape = tf.shape(x)
        rows = tf.reduce_prod(shape[:-1])
        x4 = tf.reshape(x, [1, rows, shape[-1], 1])  # NCHW: one "channel" per row, normalized over H
        ones = tf.ones([rows], x.dtype)
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x4, ones, tf.zeros([rows], x.dtype), epsilon=eps,
                                                   data_format="NCHW", is_training=True)
        return tf.reshape(y, shape) * gamma + beta

    layers.layer_norm = {"2op": two_op, "fused-bn": fused_bn}[kind]


def _freeze(enc) -> None:
    """Swap the encoder's variables for numpy arrays, so tracing bakes them in as ``Const`` nodes.

    (``convert_variables_to_constants_v2`` cannot be used on the whole serve function: the tokenizer's
    lookup table stays a resource input.) Const weights let grappler mark MatMul filters constant,
    which is what oneDNN's weight caching keys on.
    """
    import tensorflow as tf

    def swap(obj):
        for name, value in list(vars(obj).items()):
            if isinstance(value, tf.Variable):
                setattr(obj, name, value.numpy())

    swap(enc)
    for layer in enc.layers:
        swap(layer)


def _session(d: dict):
    import tensorflow as tf

    from packager.graph import read_manifest
    from packager.oplibs import load_op_libraries

    manifest = read_manifest(d["export_dir"])
    libs = manifest["op_libraries"] if isinstance(manifest, dict) else manifest.op_libraries
    load_op_libraries(libs)
    tf.compat.v1.disable_eager_execution()
    n = int(os.environ.get("BENCH_THREADS", "0")) or (os.cpu_count() or 1)
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=n, inter_op_parallelism_threads=int(d.get("inter_op", 1)))
    sess = tf.compat.v1.Session(config=cfg)
    mg = tf.compat.v1.saved_model.loader.load(sess, ["serve"], d["export_dir"])
    sig = mg.signature_def["serving_default"]
    i, o = sig.inputs["input_sequence"].name, sig.outputs["sentence_embedding"].name

    def embed(texts):
        return np.asarray(sess.run(o, {i: texts}))

    return embed


# ----------------------------------------------------------------------------- exports with encoder options
def export_with(out_dir: str, model=None, precision: str = "fp32") -> None:
    """Export ``model`` (default: the embedded one) at ``precision``: ``packager export --precision`` as a
    function, for the drivers that run it in a child process (``bench/run.py``'s ``graph-bf16``)."""
    from packager.graph import export

    export(model, out_dir, force=True, precision=precision)


if __name__ == "__main__":  # python -m bench.levers export OUT_DIR [--precision bf16] [--model DIR]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.levers")
    ap.add_argument("command", choices=["export"])
    ap.add_argument("out_dir")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    export_with(a.out_dir, a.model, precision=a.precision)
