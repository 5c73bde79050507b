#!/usr/bin/env python3
"""Load a packager export in THIS interpreter's TF / TF-Text and run a corpus through it.

Runs inside the per-release venvs of the compatibility test (``tests/test_compat.py``), so it
imports only ``tensorflow`` and ``numpy``: never ``packager`` or ``tensorflow_text`` (a server
does not import TF-Text either; it registers the op libraries the manifest lists, nothing else).

Usage:
    VENV/bin/python tools/compat_probe.py EXPORT_DIR CORPUS.json OUT.npz

``CORPUS.json`` is a JSON list of strings. Op libraries listed in ``packager.json`` that this
TF-Text lacks are skipped and reported (``missing_libraries``). Writes ``OUT.npz`` (``ids`` flat int64, ``lengths``
per sentence, ``embeddings``) and prints one JSON line: versions, ``loaded``, ``error``, timings.
Exits 0 whenever it could report, also when the export does not load (that is a result).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


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


def main(export_dir: str, corpus_path: str, out_path: str) -> dict:
    import numpy as np
    import tensorflow as tf

    report = {"tensorflow": tf.__version__, "tensorflow_text": dist_version("tensorflow-text"),
              "python": sys.version.split()[0], "loaded": False, "error": None}
    manifest = json.loads((Path(export_dir) / "packager.json").read_text(encoding="utf-8"))
    texts = json.loads(Path(corpus_path).read_text(encoding="utf-8"))
    t0 = time.monotonic()
    try:
        ops_dir = text_ops_dir()
        # A library this TF-Text release lacks is skipped, not fatal: a server has no such
        # library either, and loading the graph then fails the way the server fails.
        report["missing_libraries"] = []
        for lib in manifest.get("op_libraries", []):
            if ops_dir is None or not (ops_dir / lib).is_file():
                report["missing_libraries"].append(lib)
                continue
            tf.load_op_library(str(ops_dir / lib))
        graph = tf.saved_model.load(export_dir)
        serve = graph.signatures["serving_default"]
        tokenize = graph.signatures["tokenize"]
    except Exception as exc:  # the failure IS the result for a runtime that cannot load the graph
        report["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        report["load_seconds"] = round(time.monotonic() - t0, 2)
        return report
    report["loaded"] = True
    report["load_seconds"] = round(time.monotonic() - t0, 2)
    t1 = time.monotonic()
    in_key, out_key = manifest.get("input_key", "input_sequence"), manifest.get("output_key", "sentence_embedding")
    ids, lengths, embs = [], [], []
    try:
        for i in range(0, len(texts), 32):
            batch = tf.constant(texts[i : i + 32], dtype=tf.string)
            tok = tokenize(**{in_key: batch})
            for row, mask in zip(tok["input_ids"].numpy(), tok["attention_mask"].numpy()):
                kept = row[mask.astype(bool)]
                ids.append(kept)
                lengths.append(len(kept))
            embs.append(serve(**{in_key: batch})[out_key].numpy())
    except Exception as exc:
        report["error"] = f"run failed: {type(exc).__name__}: {exc}"[:4000]
        return report
    report["run_seconds"] = round(time.monotonic() - t1, 2)
    np.savez(out_path, ids=np.concatenate(ids).astype("int64") if ids else np.zeros(0, "int64"),
             lengths=np.asarray(lengths, "int64"), embeddings=np.concatenate(embs).astype("float32"))
    return report


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(main(*sys.argv[1:])))
