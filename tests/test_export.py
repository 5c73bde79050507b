"""End to end: export each architecture as one SavedModel and hold it to exact parity with
sentence-transformers (token ids identical, embeddings within 1e-5) on the shipped corpus."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packager import verify as v
from packager.errors import TargetError, UnsupportedError
from packager.graph import export, load, read_manifest
from tiny_models import exported

MODELS = ["default_model_dir", "tiny_bert", "tiny_bert_cased_dense", "tiny_distilbert", "tiny_mpnet", "tiny_xlmr"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Export lazily, once per model, shared by the tests of this module."""
    cache = {}

    def get(request, name):
        if name not in cache:
            model_dir = request.getfixturevalue(name)
            out = exported(tmp_path_factory, model_dir, name)  # shared with the serving tests
            cache[name] = (model_dir, out, read_manifest(out))
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_export_matches_sentence_transformers_exactly_when_shipped_corpus(request, exports, corpus, name):
    model_dir, out, manifest = exports(request, name)
    graph = load(out, manifest)
    embed, tokenize = v.graph_functions(graph)
    report = v.check(corpus, v.reference_model(model_dir), embed, tokenize)
    assert report.id_match_rate == 1.0, report.render()
    assert report.max_abs_diff <= 1e-5, report.render()
    assert report.ok, report.render()


@pytest.mark.parametrize("name", ["default_model_dir", "tiny_xlmr"])
def test_export_serves_any_batch_size_when_batch_is_one_or_empty(request, exports, name):
    import tensorflow as tf

    _, out, manifest = exports(request, name)
    serve = load(out, manifest).signatures["serving_default"]
    one = serve(input_sequence=tf.constant(["hello world"]))["sentence_embedding"]
    assert one.shape == (1, manifest["embedding_dim"])
    empty = serve(input_sequence=tf.constant([], tf.string))["sentence_embedding"]
    assert empty.shape == (0, manifest["embedding_dim"])


def test_export_manifest_records_model_versions_and_op_libraries_when_default(request, exports):
    import tensorflow as tf

    _, out, manifest = exports(request, "default_model_dir")
    assert manifest == read_manifest(out) and manifest["ops"]
    assert manifest["source"] == str(request.getfixturevalue("default_model_dir"))
    assert (manifest["embedding_dim"], manifest["max_seq_length"], manifest["pooling"]) == (384, 256, ["mean"])
    assert manifest["normalize"] is True
    assert manifest["tensorflow"] == tf.__version__
    assert manifest["op_libraries"] and all(lib.endswith(".so") for lib in manifest["op_libraries"])


FRESH_LOAD = r"""
import json, os, sys
import tensorflow as tf
export_dir = sys.argv[1]
manifest = json.load(open(os.path.join(export_dir, "packager.json")))
ops_dir = sys.argv[2]
for lib in manifest["op_libraries"]:
    tf.load_op_library(os.path.join(ops_dir, lib))
assert "tensorflow_text" not in sys.modules
m = tf.saved_model.load(export_dir)
out = m.signatures["serving_default"](input_sequence=tf.constant(["a fresh process", "[MASK] ok"]))
print(json.dumps(out["sentence_embedding"].numpy().tolist()))
"""


@pytest.mark.parametrize("name", ["default_model_dir", "tiny_xlmr"])
def test_export_loads_in_fresh_process_when_only_listed_op_libraries_registered(request, exports, name, tmp_path):
    import importlib.util

    model_dir, out, manifest = exports(request, name)
    ops_dir = Path(importlib.util.find_spec("tensorflow_text").submodule_search_locations[0]) / "python" / "ops"
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_LOAD)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, str(script), str(out), str(ops_dir)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.array(json.loads(res.stdout.strip().splitlines()[-1]))
    ref = v.reference_embeddings(v.reference_model(model_dir), ["a fresh process", "[MASK] ok"])
    assert np.abs(got - ref).max() <= 1e-5


def test_export_refuses_to_overwrite_when_output_exists_without_force(request, exports):
    model_dir, out, _ = exports(request, "tiny_bert")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TargetError, match="--force"):
        export(model_dir, out)
    assert sorted(p.name for p in out.iterdir()) == before


def test_export_writes_nothing_when_module_unsupported(default_model_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(default_model_dir, model)
    entries = json.loads((model / "modules.json").read_text())
    entries.append({"idx": 3, "name": "3_LSTM", "path": "3_LSTM", "type": "sentence_transformers.models.LSTM"})
    (model / "modules.json").write_text(json.dumps(entries))
    out = tmp_path / "out" / "export"
    with pytest.raises(UnsupportedError):
        export(model, out)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_export_replaces_atomically_when_force(request, exports, tmp_path):
    model_dir, _, _ = exports(request, "tiny_bert")
    out = tmp_path / "exp"
    export(model_dir, out)
    (out / "stale-marker").write_text("old")
    export(model_dir, out, force=True)
    assert not (out / "stale-marker").exists()
    assert (out / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]
