#!/usr/bin/env python3
"""Load a packager export in THIS interpreter's TF / TF-Text, the ways servers do, and run a corpus.

Runs inside the per-release venvs of the compatibility test (``tests/test_compat.py``), so it
imports only ``tensorflow`` and ``numpy``: never ``packager`` or ``tensorflow_text`` (a server
does not import TF-Text either; it has the op libraries linked in or loads the listed ones).

Three loaders, each must succeed for the export to count as loading:

* ``cxx``: the C API's ``TF_LoadSessionFromSavedModel``, i.e. C++ ``LoadSavedModel``, what
  TF-Serving's SavedModelBundle and Triton's TensorFlow backend call (load only);
* ``session``: the TF1 session loader, then ``Session.run`` on the SignatureDef tensors: how
  TF-Serving and Triton's TF backend execute a signature;
* ``tf2``: ``tf.saved_model.load`` and the concrete signature functions (Triton Python backend).

Usage:
    VENV/bin/python tools/compat_probe.py EXPORT_DIR CORPUS.json OUT.npz

``CORPUS.json`` is a JSON list of strings. Op libraries listed in ``packager.json`` that this
TF-Text lacks are skipped and reported (``missing_libraries``): loading then fails as on a
server without them. Writes ``OUT.npz`` (per runner: ``<runner>_ids`` flat, ``<runner>_lengths``,
``<runner>_embeddings``) and prints one JSON line. Exits 0 whenever it could report.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
BATCH = 32


def text_ops_dir() -> Path | None:
    spec = importlib.util.find_spec("tensorflow_text")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "python" / "ops"


def dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def cxx_load(export_dir: str) -> str | None:
    """Load through the C API (C++ LoadSavedModel). Returns an error message, or None when it loads."""
    import tensorflow as tf

    tf_dir = Path(tf.__file__).parent
    lib = None
    for cand in sorted(tf_dir.glob("libtensorflow_cc.so*")) + [tf_dir / "python" / "_pywrap_tensorflow_internal.so"]:
        if cand.is_file():
            dll = ctypes.CDLL(str(cand), mode=ctypes.RTLD_GLOBAL)
            if hasattr(dll, "TF_LoadSessionFromSavedModel"):
                lib = dll
                break
    if lib is None:
        return "unavailable: no TF_LoadSessionFromSavedModel in this TF"
    vp = ctypes.c_void_p
    for fn, res in (("TF_NewStatus", vp), ("TF_NewGraph", vp), ("TF_NewSessionOptions", vp),
                    ("TF_LoadSessionFromSavedModel", vp), ("TF_Message", ctypes.c_char_p), ("TF_GetCode", ctypes.c_int)):
        getattr(lib, fn).restype = res
    lib.TF_LoadSessionFromSavedModel.argtypes = [vp, vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
                                                 ctypes.c_int, vp, vp, vp]
    lib.TF_GetCode.argtypes = [vp]
    lib.TF_Message.argtypes = [vp]
    status, graph, opts = lib.TF_NewStatus(), lib.TF_NewGraph(), lib.TF_NewSessionOptions()
    tags = (ctypes.c_char_p * 1)(b"serve")
    lib.TF_LoadSessionFromSavedModel(opts, None, export_dir.encode(), tags, 1, graph, None, status)
    if lib.TF_GetCode(status) != 0:
        return lib.TF_Message(status).decode(errors="replace")
    return None


def run_session(export_dir: str, texts: list[str], in_key: str, out_key: str):
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
        serve, tok = meta.signature_def["serving_default"], meta.signature_def["tokenize"]
        out = []
        for i in range(0, len(texts), BATCH):
            batch = texts[i : i + BATCH]
            t = sess.run({k: v.name for k, v in tok.outputs.items()}, {tok.inputs[in_key].name: batch})
            e = sess.run(serve.outputs[out_key].name, {serve.inputs[in_key].name: batch})
            out.append((t["input_ids"], t["attention_mask"], e))
        return out


def run_tf2(export_dir: str, texts: list[str], in_key: str, out_key: str):
    import tensorflow as tf

    graph = tf.saved_model.load(export_dir)
    serve, tok = graph.signatures["serving_default"], graph.signatures["tokenize"]
    out = []
    for i in range(0, len(texts), BATCH):
        batch = tf.constant(texts[i : i + BATCH], dtype=tf.string)
        t = tok(**{in_key: batch})
        out.append((t["input_ids"].numpy(), t["attention_mask"].numpy(), serve(**{in_key: batch})[out_key].numpy()))
    return out


def flatten(batches, prefix: str) -> dict:
    import numpy as np

    ids, lengths, embs = [], [], []
    for input_ids, mask, emb in batches:
        for row, m in zip(input_ids, mask):
            kept = row[m.astype(bool)]
            ids.append(kept)
            lengths.append(len(kept))
        embs.append(emb)
    return {f"{prefix}_ids": np.concatenate(ids).astype("int64") if ids else np.zeros(0, "int64"),
            f"{prefix}_lengths": np.asarray(lengths, "int64"),
            f"{prefix}_embeddings": np.concatenate(embs).astype("float32")}


def main(export_dir: str, corpus_path: str, out_path: str) -> dict:
    import numpy as np
    import tensorflow as tf

    report = {"tensorflow": tf.__version__, "tensorflow_text": dist_version("tensorflow-text"),
              "python": sys.version.split()[0], "loaded": False, "error": None, "loaders": {}}
    manifest = json.loads((Path(export_dir) / "packager.json").read_text(encoding="utf-8"))
    texts = json.loads(Path(corpus_path).read_text(encoding="utf-8"))
    in_key = (manifest.get("inputs") or [manifest.get("input_key", "input_sequence")])[0]
    out_key = manifest.get("output_key", "sentence_embedding")
    ops_dir = text_ops_dir()
    report["missing_libraries"] = []
    for lib in manifest.get("op_libraries", []):
        if ops_dir is None or not (ops_dir / lib).is_file():
            report["missing_libraries"].append(lib)
            continue
        tf.load_op_library(str(ops_dir / lib))
    arrays = {}
    t0 = time.monotonic()
    err = cxx_load(export_dir)
    report["loaders"]["cxx"] = {"ok": err is None, "error": err, "seconds": round(time.monotonic() - t0, 2)}
    for name, runner in (("session", run_session), ("tf2", run_tf2)):
        t0 = time.monotonic()
        try:
            arrays.update(flatten(runner(export_dir, texts, in_key, out_key), name))
            report["loaders"][name] = {"ok": True, "error": None, "seconds": round(time.monotonic() - t0, 2)}
        except Exception as exc:  # the failure IS the result for a runtime that cannot load the graph
            report["loaders"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:3000],
                                       "seconds": round(time.monotonic() - t0, 2)}
    failed = {k: v for k, v in report["loaders"].items() if not v["ok"] and not (v["error"] or "").startswith("unavailable")}
    report["loaded"] = not failed
    report["error"] = next((f"{k}: {v['error']}" for k, v in failed.items()), None)
    if arrays:
        np.savez(out_path, **arrays)
    return report


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(main(*sys.argv[1:])))
