"""Encoder-only variants of the post-LN forward pass, side by side in ONE process, per call interleaved.

    .venv/bin/python bench/encoder_variants.py [--texts 200] [--batches 1,8,32] [--variants base,ln-fused,...]

Each variant is the default model's encoder (same variables) with one forward-pass change; every text
(or batch) is run by every variant in turn (order rotated per call), so a noisy neighbour slows all of
them alike. Reported per variant and batch size: the median ms per call, the median of the per-call
ratios to ``base`` (paired: the robust figure on a shared machine), the number of ops the optimized
graph executes per call, and the max abs difference of the hidden states from ``base``.

Variants (``--variants``, comma list; ``base`` is always included):

* ``base``: the encoder as ``packager/encoders/layers.py`` builds it at ``--packager-root`` (the
  shipped code, or another checkout's);
* ``ref``: the pre-issue-15 forward pass, kept here verbatim (9-op LayerNorm, 5-D attention
  transpose, no single-row path): the "before" of every change;
* ``ln-fused``: ``ref`` with LayerNorm as Reshape -> FusedBatchNormV3 (training mode, unit scale) ->
  Reshape -> * gamma + beta, the Keras pattern grappler's remapper rewrites to ONE ``_MklLayerNorm``;
* ``attn-4d``: ``ref`` with attention from one 4-D transpose ``[B, T, 3h, d] -> [B, 3h, T, d]`` and a
  split, instead of the 5-D transpose and unstack;
* ``attn-heads``: ``ref`` with Q, K, V projected per head by one batched matmul (weights ``[3h, H, d]``)
  straight into ``[3h, N, d]``, and the output projection per head (``[h, d, H]``) summed over heads:
  no transpose at all;
* ``attn-einsum``: ``ref`` with attention as two ``tf.einsum`` on the ``[B, T, h, d]`` views;
* ``attn-gather``: ``ref`` with the head reshuffles as ONE row gather each way (rows of ``head_dim``
  floats), with the real-token packing folded into the same index: per layer 2 ``GatherV2`` instead of
  gather + reshape + 5-D transpose + unstack + transpose + reshape + gather;
* ``softmax-eltwise``: ``ref`` with softmax as max, sub, exp, sum, div (Eigen) instead of ``_MklSoftmax``;
* ``lean``: ``ref`` with ``tf.cond(batch == 1)``: a single row skips mask, packing, sort and loop;
* combinations joined by ``+`` (``ln-fused+attn-4d+lean``).

Writes ``bench/results/<date>-<machine>-encoder-variants.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ATOMS = ("ref", "ln-fused", "attn-4d", "attn-heads", "attn-einsum", "attn-gather", "attn-gather3", "softmax-eltwise", "lean")


# ----------------------------------------------------------------------------- the variants
def ref_layer_norm(x, gamma, beta, eps):
    import tensorflow as tf

    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True)
    return centered * tf.math.rsqrt(variance + eps) * gamma + beta


def fused_layer_norm(x, gamma, beta, eps):
    import tensorflow as tf

    shape = tf.shape(x)
    rows = shape[0]
    x4 = tf.reshape(x, [1, rows, shape[-1], 1])
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(x4, tf.ones([rows]), tf.zeros([rows]), epsilon=eps,
                                               data_format="NCHW", is_training=True)
    return tf.reshape(y, shape) * gamma + beta


class Variant:
    """A forward pass over a ``PostLNEncoder``'s variables, with the options of one variant."""

    def __init__(self, enc, atoms: set[str]):
        import tensorflow as tf

        self.enc, self.atoms = enc, atoms
        self.hidden_size = enc.hidden_size
        self.ln = fused_layer_norm if "ln-fused" in atoms else ref_layer_norm
        if "attn-heads" in atoms:
            h, d, H = enc.num_heads, enc.head_dim, enc.hidden_size
            self.qkv_heads = [tf.constant(np.ascontiguousarray(
                layer.qkv.kernel.numpy().reshape(H, 3 * h, d).transpose(1, 0, 2))) for layer in enc.layers]
            self.qkv_b_heads = [tf.constant(layer.qkv.bias.numpy().reshape(3 * h, 1, d)) for layer in enc.layers]
            self.o_heads = [tf.constant(layer.attention_output.kernel.numpy().reshape(h, d, H)) for layer in enc.layers]

    def __call__(self, ids, mask):
        import tensorflow as tf

        from packager.encoders.layers import ChunkedEncoder

        if "lean" in self.atoms:
            return tf.cond(tf.shape(ids)[0] == 1, lambda: self.forward(ids, mask, single=True),
                           lambda: ChunkedEncoder.forward_sorted(self, ids, mask))
        return ChunkedEncoder.forward_sorted(self, ids, mask)

    def forward(self, input_ids, attention_mask, position_offset=0, token_type_ids=None, single=False):
        import tensorflow as tf

        from bench.common import whole_project
        from packager.encoders.layers import ACTIVATIONS, packing, padding_bias

        enc = self.enc
        shape = tf.shape(input_ids)
        batch, seq = shape[0], shape[1]
        flat_ids = tf.reshape(input_ids, [-1])
        pos = tf.range(seq, dtype=tf.int64) + tf.cast(position_offset, tf.int64)
        if single:
            bias, flat_pos = None, pos
            pack = unpack = tf.identity
        else:
            bias = padding_bias(attention_mask)
            flat_pos = tf.reshape(tf.broadcast_to(pos, shape), [-1])
            pack, unpack = packing(attention_mask)
            flat_ids, flat_pos = pack(flat_ids), pack(flat_pos)
        h = tf.gather(enc.word_embeddings, flat_ids) + tf.gather(enc.position_embeddings, flat_pos)
        h = self.ln(h, enc.embed_ln_g, enc.embed_ln_b, enc.eps)
        act = ACTIVATIONS[enc.activation]
        gathered = "attn-gather" in self.atoms or "attn-gather3" in self.atoms
        if gathered:
            gather_in, gather_out = self._head_indices(attention_mask, batch, seq, single)
            if "attn-gather3" in self.atoms:
                gather_in = tf.split(gather_in, 3)
        for i, layer in enumerate(enc.layers):
            if gathered:
                heads, d = enc.num_heads, enc.head_dim
                qkv = tf.reshape(whole_project(h, layer.qkv), [-1, d])
                if "attn-gather3" in self.atoms:
                    q, k, v = (tf.reshape(tf.gather(qkv, g), [batch, heads, seq, d]) for g in gather_in)
                else:
                    q, k, v = tf.split(tf.reshape(tf.gather(qkv, gather_in), [3 * batch, heads, seq, d]), 3)
                scores = tf.matmul(q, k, transpose_b=True)
                if bias is not None:
                    scores = scores + bias
                ctx = tf.reshape(tf.matmul(self._softmax(scores), v), [-1, d])  # rows (b, head, t)
                context = tf.reshape(tf.gather(ctx, gather_out), [-1, enc.hidden_size])
                attn = whole_project(context, layer.attention_output)
            elif "attn-heads" in self.atoms:
                attn = self._attention_heads(i, h, bias, batch, seq, pack, unpack, layer)
            else:
                qkv = unpack(whole_project(h, layer.qkv))
                context = pack(self._attention(qkv, bias, batch, seq))
                attn = whole_project(context, layer.attention_output)
            h = self.ln(attn + h, layer.attn_ln_g, layer.attn_ln_b, enc.eps)
            ffn = act(whole_project(h, layer.ffn_in))
            ffn = whole_project(ffn, layer.ffn_out)
            h = self.ln(ffn + h, layer.out_ln_g, layer.out_ln_b, enc.eps)
        if not single:
            h = unpack(h) * tf.cast(tf.reshape(attention_mask, [-1, 1]), tf.float32)
        return tf.reshape(h, [batch, seq, self.hidden_size])

    def _softmax(self, scores):
        import tensorflow as tf

        if "softmax-eltwise" not in self.atoms:
            return tf.nn.softmax(scores, axis=-1)
        e = tf.exp(scores - tf.reduce_max(scores, axis=-1, keepdims=True))
        return e / tf.reduce_sum(e, axis=-1, keepdims=True)

    def _head_indices(self, attention_mask, batch, seq, single):
        """Row indices for the head reshuffles.

        ``gather_in``: rows of the packed ``[N * 3h, d]`` projections -> ``[3, B, h, T, d]`` (padded slots read
        token 0: masked keys, discarded queries); ``gather_out``: rows of the context ``[B * h * T, d]`` -> the
        packed ``[N, h, d]`` (real tokens only).
        """
        import tensorflow as tf

        heads = self.enc.num_heads
        if single:
            slot = tf.range(seq)  # [T]: token t is row t
            real = slot
        else:
            flat_mask = tf.reshape(attention_mask, [-1]) > 0
            slot = tf.where(flat_mask, tf.cumsum(tf.cast(flat_mask, tf.int32)) - 1, 0)  # [B*T]
            real = tf.cast(tf.where(flat_mask)[:, 0], tf.int32)  # padded positions of the real tokens
        slot = tf.reshape(slot, [1, batch, 1, seq])
        s3 = tf.reshape(tf.range(3), [3, 1, 1, 1])
        j = tf.reshape(tf.range(heads), [1, 1, heads, 1])
        gather_in = tf.reshape((slot * 3 + s3) * heads + j, [-1])
        b, t = real // seq, real % seq  # [N]
        gather_out = tf.reshape((b[:, tf.newaxis] * heads + tf.range(heads)[tf.newaxis, :]) * seq + t[:, tf.newaxis], [-1])
        return gather_in, gather_out

    def _attention(self, qkv, bias, batch, seq):
        import tensorflow as tf

        e = self.enc
        heads, d = e.num_heads, e.head_dim
        if "attn-4d" in self.atoms:
            x = tf.transpose(tf.reshape(qkv, [batch, seq, 3 * heads, d]), [0, 2, 1, 3])
            q, k, v = tf.split(x, 3, axis=1)
        elif "attn-einsum" in self.atoms:
            x = tf.reshape(qkv, [batch, seq, 3, heads, d])
            q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
            scores = tf.einsum("bqhd,bkhd->bhqk", q, k)
            if bias is not None:
                scores = scores + bias
            ctx = tf.einsum("bhqk,bkhd->bqhd", tf.nn.softmax(scores, axis=-1), v)
            return tf.reshape(ctx, [-1, e.hidden_size])
        else:
            qkv = tf.reshape(qkv, [batch, seq, 3, heads, d])
            q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))
        scores = tf.matmul(q, k, transpose_b=True)
        if bias is not None:
            scores = scores + bias
        context = tf.matmul(self._softmax(scores), v)
        return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, e.hidden_size])

    def _attention_heads(self, i, h, bias, batch, seq, pack, unpack, layer):
        import tensorflow as tf

        from bench.common import whole_projection

        e = self.enc
        heads, d = e.num_heads, e.head_dim
        x = tf.matmul(h[tf.newaxis], self.qkv_heads[i]) + self.qkv_b_heads[i]  # [3h, N, d]
        if bias is not None:  # back to the padded layout, per head
            x = tf.transpose(unpack(tf.transpose(x, [1, 0, 2])), [1, 0, 2])
        x = tf.reshape(x, [3, heads, batch, seq, d])
        q, k, v = x[0], x[1], x[2]  # [h, B, T, d]
        scores = tf.matmul(q, k, transpose_b=True)
        if bias is not None:
            scores = scores + tf.reshape(bias, [1, batch, 1, seq])
        ctx = tf.reshape(tf.matmul(tf.nn.softmax(scores, axis=-1), v), [heads, -1, d])  # [h, B*T, d]
        if bias is not None:
            ctx = tf.transpose(pack(tf.transpose(ctx, [1, 0, 2])), [1, 0, 2])
        return tf.reduce_sum(tf.matmul(ctx, self.o_heads[i]), axis=0) + whole_projection(layer.attention_output)[1]


# ----------------------------------------------------------------------------- harness
def _count_ops(fn, args) -> int:
    from tensorflow.python.eager import context

    context.enable_run_metadata()
    try:
        fn(*args)
        md = context.export_run_metadata()
    finally:
        context.disable_run_metadata()
    skip = {"Const", "_Arg", "_Retval", "NoOp"}
    return sum(1 for fg in md.function_graphs for g in fg.partition_graphs for n in g.node if n.op not in skip)


def ops_profile(fns: dict, feeds: list, workdir: Path, threads: int, reps: int, enc=None) -> dict:
    """Executed ops per call and time per op type of each variant: the variant saved as a SavedModel and
    run by a TF1 Session with ``FULL_TRACE`` in a child process (step stats; eager functions give none)."""
    import subprocess

    import tensorflow as tf

    from packager.encoders.layers import INPUT_SIGNATURE

    np.save(workdir / "ids.npy", np.array([f[0].numpy()[0] for f in feeds], dtype=object), allow_pickle=True)
    out = {}
    for name, fn in fns.items():
        mod = tf.Module()
        mod.encoder = enc  # tracks the variables
        mod.f = tf.function(_as_dict(fn), input_signature=INPUT_SIGNATURE)
        path = workdir / f"sm-{name.replace('+', '_')}"
        tf.saved_model.save(mod, str(path), signatures={"serving_default": mod.f})
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench.encoder_variants import ops_child; "
                "print('JSON' + json.dumps(ops_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))")
        proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(path), str(workdir / "ids.npy"), str(threads),
                               str(reps)], check=False, capture_output=True, text=True, timeout=1800)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("JSON")), None)
        out[name] = json.loads(line[4:]) if line else {"error": proc.stderr[-2000:]}
    return out


def _as_dict(fn):
    return lambda i, m: {"h": fn(i, m)}


def ops_child(saved: str, ids_path: str, threads: int, reps: int) -> dict:
    import collections

    import tensorflow as tf

    from bench.common import step_op_times

    tf.compat.v1.disable_eager_execution()
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    sess = tf.compat.v1.Session(config=cfg)
    mg = tf.compat.v1.saved_model.loader.load(sess, ["serve"], saved)
    sig = mg.signature_def["serving_default"]
    i_name, m_name = sig.inputs["input_ids"].name, sig.inputs["attention_mask"].name
    o = sig.outputs["h"].name
    rows = list(np.load(ids_path, allow_pickle=True))
    feed = [{i_name: r[np.newaxis].astype(np.int64), m_name: np.ones((1, len(r)), np.int64)} for r in rows]
    for f in feed:
        sess.run(o, f)
    opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    by_op, count = collections.Counter(), collections.Counter()
    nodes, sums = [], []
    for f in feed[:reps]:
        md = tf.compat.v1.RunMetadata()
        sess.run(o, f, options=opts, run_metadata=md)
        step_ops, step_count, n_nodes, total = step_op_times(md)
        by_op.update(step_ops)
        count.update(step_count)
        nodes.append(n_nodes)
        sums.append(total)
    k = max(len(nodes), 1)
    return {"nodes_per_call": float(np.mean(nodes)), "sum_op_ms": float(np.mean(sums) / 1e3),
            "top_ops": [[op, round(v / k / 1e3, 3), count[op] / k] for op, v in by_op.most_common(60)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=200, help="texts per batch size")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--variants", default="ref,ln-fused,attn-4d,attn-heads,attn-einsum,lean")
    p.add_argument("--rounds", type=int, default=3, help="passes over the texts (each call interleaved)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--packager-root", type=Path, default=ROOT)
    p.add_argument("--ops", type=int, default=0, help="also profile executed ops of N batch-1 calls per variant")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.packager_root.resolve()))
    sys.path.insert(1, str(ROOT))
    import tensorflow as tf

    from bench.common import header, rotated_calls, write_result
    from bench.corpus import make_corpus
    from bench.run import set_threads

    set_threads(args.threads)
    from packager.encoders.layers import INPUT_SIGNATURE
    from packager.modules.transformer import load_hf_tokenizer
    from packager.source import load_spec

    spec = load_spec(None)
    enc = spec.transformer.build(spec.model_dir).encoder
    hf = load_hf_tokenizer(spec.transformer, spec.model_dir)
    names = ["base"] + [v for v in args.variants.split(",") if v and v != "base"]
    for n in names[1:]:
        bad = set(n.split("+")) - set(ATOMS)
        if bad:
            p.error(f"unknown variant atom(s) {sorted(bad)}; known: {', '.join(ATOMS)}")
    fns = {"base": tf.function(lambda i, m: enc(i, m), input_signature=INPUT_SIGNATURE)}
    for n in names[1:]:
        fns[n] = tf.function(Variant(enc, set(n.split("+"))).__call__, input_signature=INPUT_SIGNATURE)
    texts = make_corpus(args.texts, seed=1)
    result = header("encoder_variants.py", argv, threads=args.threads, tensorflow=tf.__version__, texts=len(texts),
                    rounds=args.rounds, by_batch={})
    first = True  # ops are counted on the first call (the trace); one trace serves every batch size
    for batch in (int(b) for b in args.batches.split(",")):
        feeds = []
        for s in range(0, len(texts), batch):
            enc_in = hf(texts[s:s + batch], padding=True, truncation=True, max_length=spec.max_seq_length,
                        return_tensors="np")
            feeds.append((tf.constant(enc_in["input_ids"], tf.int64), tf.constant(enc_in["attention_mask"], tf.int64)))
        ops = {n: _count_ops(f, feeds[0]) for n, f in fns.items()} if first else {}
        first = False
        ref = [fns["base"](*f).numpy() for f in feeds]
        diffs = {}
        for n, f in fns.items():  # also the warm-up: every shape once per variant
            diffs[n] = max(float(np.abs(f(*x).numpy() - r).max()) for x, r in zip(feeds, ref))
        times = {n: [] for n in names}
        for x, order in rotated_calls(names, args.rounds, feeds):
            for n in order:
                s = time.perf_counter()
                fns[n](*x).numpy()
                times[n].append(time.perf_counter() - s)
        row = {}
        for n in names:
            ratios = [b / t for b, t in zip(times["base"], times[n])]
            row[n] = {"median_ms": statistics.median(times[n]) * 1e3, "mean_ms": float(np.mean(times[n]) * 1e3),
                      "p10_ms": float(np.percentile(times[n], 10) * 1e3),
                      "speedup_vs_base_paired_median": statistics.median(ratios), "ops_per_call": ops.get(n),
                      "max_abs_vs_base": diffs[n]}
        result["by_batch"][str(batch)] = row
        print(f"batch {batch}: {len(feeds)} calls x {args.rounds} rounds", flush=True)
        for n, r in row.items():
            print(f"   {n:<32} {r['median_ms']:7.2f} ms (p10 {r['p10_ms']:6.2f})  speedup {r['speedup_vs_base_paired_median']:.3f}x  "
                  f"ops {r['ops_per_call'] or '-':>4}  maxabs {r['max_abs_vs_base']:.1e}", flush=True)
        if args.ops and batch == 1:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="encoder-variants-") as tmp:
                result["ops"] = ops_profile(fns, feeds, Path(tmp), args.threads, args.ops, enc)
            for n, r in result["ops"].items():
                if "error" in r:
                    print(f"   {n}: ops profile failed: {r['error'][-300:]}")
                    continue
                print(f"   {n:<32} {r['nodes_per_call']:.0f} ops executed, sum of op times {r['sum_op_ms']:.2f} ms: "
                      + ", ".join(f"{op} {ms:.2f}ms/{c:.0f}" for op, ms, c in r["top_ops"][:9]))
    write_result(result, args.out, "encoder-variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
