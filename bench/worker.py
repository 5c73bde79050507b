"""One benchmark contender in a long-lived process, driven over a tiny line protocol.

Started by ``bench/contenders.py`` with the python of the venv the contender needs (the shared
venv, or a peer venv from ``bench/peers``), so this file imports only the standard library and
numpy at the top; each contender's own packages are imported by its factory.

    python bench/worker.py KIND SPEC_JSON

Protocol: one JSON object per line. The worker answers every request with one line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``; the first line it writes is the answer
to loading (``{"ok": true, "op": "ready", "info": {...}}``). Requests:

* ``{"op": "texts", "name": N, "path": P}``: load a JSON list of strings as workload ``N``.
* ``{"op": "warm", "name": N, "batch": B, "calls": K}``: K untimed calls (K <= 0: a full pass).
* ``{"op": "time", "name": N, "batch": B, "n": M, "start": S, "out": PATH|null}``: embed M texts of
  N from index S (default 0) in batches of B, one call per batch, timing each call with ``perf_counter`` here (so the pipe
  costs nothing); answers ``{"seconds": total, "lat_ms": [...]}``. With ``out``, the embeddings of
  this pass are saved there as ``.npy`` (after timing) for the accuracy check.
* ``{"op": "quit"}``: answer, then exit.

The protocol's stdout is a private copy of fd 1; fd 1 itself is pointed at stderr, so whatever a
library prints cannot corrupt the protocol. The worker exits when stdin closes (its parent died).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np


def _threads() -> int:
    return int(os.environ.get("BENCH_THREADS", "0")) or (os.cpu_count() or 1)


# ------------------------------------------------------------------------------ contenders
# Each factory takes the spec dict and returns (embed, info): embed maps a list of strings to a
# float32 [n, dim] array (normalized embeddings, or token ids for the tokenizer kinds).

def make_graph(spec):
    """The exported SavedModel in-process: ``serving_default`` (or ``tokenize``) on raw strings."""
    import tensorflow as tf

    sys.path.insert(0, spec["root"])
    from packager.graph import load
    from packager.settings import thread_split

    # The same cores as every contender, split as packager's serving targets split them (intra x inter);
    # a spec's "inter_op" keeps all the cores per op with that many inter-op threads (bench/levers.py).
    n = _threads()
    intra, inter = (n, int(spec["inter_op"])) if "inter_op" in spec else thread_split(n)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)

    graph = load(spec["export_dir"])
    if spec.get("mode") == "tokenize":
        tok = graph.signatures["tokenize"]

        def embed(texts):
            return tok(input_sequence=tf.constant(texts))["input_ids"].numpy()
    else:
        serve = graph.signatures["serving_default"]

        def embed(texts):
            return serve(input_sequence=tf.constant(texts))["sentence_embedding"].numpy()

    return embed, {"tensorflow": tf.__version__, "intra_op_threads": intra, "inter_op_threads": inter}


def make_st(spec):
    """``SentenceTransformer.encode`` (torch), the reference."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(_threads())
    model = SentenceTransformer(spec["model_dir"], device="cpu", trust_remote_code=False)

    def embed(texts):
        return model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)

    import sentence_transformers
    return embed, {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__}


def make_hf_tokenizer(spec):
    """The HF fast tokenizer as sentence-transformers configures it (the in-graph tokenizer's rival)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    max_len = int(spec["max_seq_length"])

    def embed(texts):
        return tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np")["input_ids"]

    import transformers
    return embed, {"transformers": transformers.__version__}


def make_ort(spec):
    """ONNX Runtime on an ONNX file that includes pooling + normalize; HF fast tokenizer outside."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(spec["onnx"], so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    tok = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    max_len = int(spec["max_seq_length"])

    def embed(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np")
        feed = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        return sess.run(None, feed)[0]

    return embed, {"onnxruntime": ort.__version__}


def make_openvino(spec):
    """OpenVINO through sentence-transformers (``backend="openvino"``), as a user would run it.

    ``precision``: ``"f32"`` pins ``INFERENCE_PRECISION_HINT=f32``; ``"default"`` leaves OpenVINO's
    choice (bf16 on CPUs with AVX512-BF16 or AMX).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    n = _threads()
    torch.set_num_threads(n)
    ov_config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(n)}
    if spec.get("precision", "f32") == "f32":
        ov_config["INFERENCE_PRECISION_HINT"] = "f32"
    model = SentenceTransformer(spec["model_dir"], device="cpu", backend="openvino",
                                model_kwargs={"ov_config": ov_config}, trust_remote_code=False)

    def embed(texts):
        return model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)

    import openvino as ov
    info = {"openvino": ov.__version__, "ov_config": ov_config}
    try:  # what the plugin actually chose (bf16 / f32); the model compiles on its first call
        embed(["warm up"])
        info["inference_precision"] = str(model[0].auto_model.request.get_property("INFERENCE_PRECISION_HINT"))
    except Exception as exc:  # noqa: BLE001 - informational only
        info["inference_precision"] = f"unknown ({type(exc).__name__})"
    return embed, info


def make_fastembed(spec):
    """fastembed (ONNX Runtime underneath) on a local HF-layout folder with ``model.onnx``, offline."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = "local/packager-bench"
    TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=bool(spec.get("normalize", True)),
                                   sources=ModelSource(hf=name), dim=int(spec["dim"]), model_file="model.onnx")
    model = TextEmbedding(model_name=name, specific_model_path=spec["folder"], local_files_only=True,
                          threads=_threads())

    def embed(texts):
        return np.stack(list(model.embed(texts, batch_size=len(texts))))

    import fastembed
    import onnxruntime as ort
    return embed, {"fastembed": getattr(fastembed, "__version__", "?"), "onnxruntime": ort.__version__}


def make_lever(spec):
    """A variant of the serving graph (``bench/levers.py``), for the batch-1 profile."""
    import tensorflow as tf

    n = _threads()
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(int(spec.get("inter_op", 1)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.levers import LEVERS, build

    embed = build(spec)
    return embed, {"tensorflow": tf.__version__, "lever": LEVERS[spec["lever"]][0],
                   "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "threads": n}


KINDS = {"lever": make_lever, "graph": make_graph, "st": make_st, "hf_tokenizer": make_hf_tokenizer, "ort": make_ort,
         "openvino": make_openvino, "fastembed": make_fastembed}


# ------------------------------------------------------------------------------ the loop
def serve(kind: str, spec: dict, inp, out) -> int:
    def answer(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    t0 = time.perf_counter()
    try:
        embed, info = KINDS[kind](spec)
    except BaseException as exc:  # noqa: BLE001 - the parent gets the reason instead of a hang
        answer({"ok": False, "op": "ready", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-4000:]})
        return 1
    info["load_s"] = time.perf_counter() - t0
    info["python"] = sys.executable
    answer({"ok": True, "op": "ready", "info": info})
    texts: dict[str, list[str]] = {}
    for line in inp:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "quit":
                answer({"ok": True})
                return 0
            if op == "texts":
                with open(req["path"], encoding="utf-8") as f:
                    texts[req["name"]] = json.load(f)
                answer({"ok": True, "n": len(texts[req["name"]])})
            elif op == "warm":
                data, b = texts[req["name"]], int(req["batch"])
                calls = int(req.get("calls", 2))
                for i in range(calls if calls > 0 else (len(data) + b - 1) // b):  # <= 0: one full pass
                    embed(data[i * b:(i + 1) * b] or data[:b])
                answer({"ok": True})
            elif op == "time":
                start_at = int(req.get("start") or 0)
                data = texts[req["name"]][start_at:start_at + int(req.get("n") or 10**9)]
                b = int(req["batch"])
                keep = req.get("out")
                outs, lat = [], []
                start = time.perf_counter()
                for i in range(0, len(data), b):
                    s = time.perf_counter()
                    e = embed(data[i:i + b])
                    lat.append(time.perf_counter() - s)
                    if keep:
                        outs.append(e)
                seconds = time.perf_counter() - start
                if keep:
                    arrays = [np.asarray(o, dtype=np.float32) for o in outs]
                    width = max(a.shape[1] for a in arrays) if arrays and arrays[0].ndim == 2 else None
                    if width is not None:  # token ids: each batch is padded to its own longest row
                        arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in arrays]
                    np.save(keep, np.concatenate(arrays))
                answer({"ok": True, "seconds": seconds, "n": len(data), "lat_ms": [x * 1e3 for x in lat]})
            else:
                answer({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:  # noqa: BLE001
            answer({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
    return 0


def main() -> int:
    kind, spec = sys.argv[1], json.loads(sys.argv[2])
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # library chatter on stdout goes to the log, never into the protocol
    sys.stdout = sys.stderr
    return serve(kind, spec, sys.stdin, proto_out)


if __name__ == "__main__":
    sys.exit(main())
