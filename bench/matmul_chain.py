"""The encoder's 24 projections alone, in TensorFlow and in ONNX Runtime: is the batch-1 gap in the kernels?

    .venv/bin/python bench/matmul_chain.py [--tokens 3,16,64] [--threads 2]

A chain shaped like all-MiniLM-L6-v2's per-layer projections (6 x [H->3H, H->H, H->I (+GELU), I->H],
H=384, I=1536, random weights, each output feeding the next so nothing can be skipped) on M = tokens
rows, timed per call in interleaved rounds:

* ``tf-variables``: weights as variables (how the export holds them), MatMul+BiasAdd(+GELU) fused by oneDNN;
* ``tf-constants``: the same with the weights as graph constants (oneDNN may cache packed weights);
* ``onnxruntime``: the same chain as an ONNX graph (MatMul + Add (+ Gelu)), ORT_ENABLE_ALL, prepacked weights.

Prints ms per chain call; writes nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

H, I, LAYERS = 384, 1536, 6


def weights(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(LAYERS):
        for k, n, gelu in ((H, 3 * H, False), (H, H, False), (H, I, True), (I, H, False)):
            out.append((rng.standard_normal((k, n), np.float32) * 0.05, rng.standard_normal(n, np.float32) * 0.05, gelu))
    return out


def tf_chain(ws, const: bool, threads: int):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised (a second chain in the same process)
    params = ws if const else [(tf.Variable(w), tf.Variable(b), g) for w, b, g in ws]

    @tf.function(input_signature=[tf.TensorSpec([None, H], tf.float32)])
    def f(x):
        h = x
        for w, b, gelu in params:
            y = tf.nn.bias_add(tf.matmul(h, w), b)
            if gelu:
                y = tf.nn.gelu(y, approximate=False)
            # back to width H for the next projection: QKV -> take its first H columns
            h = y[:, :H] if y.shape[-1] == 3 * H else y
        return h

    f.params = params
    return lambda x: f(x).numpy()


def ort_chain(ws, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, cur = [], [], "x"
    for i, (w, b, gelu) in enumerate(ws):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        cur = f"a{i}"
        if gelu:
            nodes.append(helper.make_node("Gelu", [cur], [f"g{i}"], domain="com.microsoft"))
            cur = f"g{i}"
        if w.shape[1] == 3 * H:
            inits += [numpy_helper.from_array(np.array([0], np.int64), f"s{i}"),
                      numpy_helper.from_array(np.array([H], np.int64), f"e{i}"),
                      numpy_helper.from_array(np.array([1], np.int64), f"ax{i}")]
            nodes.append(helper.make_node("Slice", [cur, f"s{i}", f"e{i}", f"ax{i}"], [f"sl{i}"]))
            cur = f"sl{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", H])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["m", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="3,16,64")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    ws = weights()
    fns = {"tf-variables": tf_chain(ws, False, args.threads), "tf-constants": tf_chain(ws, True, args.threads),
           "onnxruntime": ort_chain(ws, args.threads)}
    flops = sum(2 * w.shape[0] * w.shape[1] for w, _, _ in ws)
    for m in (int(t) for t in args.tokens.split(",")):
        x = np.random.default_rng(1).standard_normal((m, H), np.float32)
        ref = fns["onnxruntime"](x)
        for name, f in fns.items():
            assert np.allclose(f(x), ref, atol=1e-3), name
            for _ in range(10):
                f(x)
        times = {n: [] for n in fns}
        for r in range(args.rounds):
            names = list(fns)
            for name in names[r % len(names):] + names[: r % len(names)]:
                for _ in range(args.calls):
                    s = time.perf_counter()
                    fns[name](x)
                    times[name].append(time.perf_counter() - s)
        line = "  ".join(f"{n} {statistics.median(t) * 1e3:6.2f} ms ({flops * m / statistics.median(t) / 1e9:5.1f} GF/s)"
                         for n, t in times.items())
        print(f"M={m:>3} tokens: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
