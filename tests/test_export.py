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

MODELS = ["default_model_dir", "tiny_bert", "tiny_bert_cased_dense", "tiny_distilbert", "tiny_mpnet", "tiny_xlmr",
          "tiny_roberta_bpe", "tiny_modernbert_bpe", "tiny_qwen3_bpe",
          pytest.param("tiny_qwen3_real_tokenizer", marks=pytest.mark.network)]


@pytest.fixture(scope="module")
def exported(exports, request):
    """``exported(name) -> (model folder, export folder, manifest)``, from the session's exports."""

    def get(name):
        out = exports(name)
        return request.getfixturevalue(name), out, read_manifest(out)

    return get


@pytest.mark.parametrize("name", MODELS)
def test_export_matches_sentence_transformers_exactly_when_shipped_corpus(request, exported, corpus, name):
    model_dir, out, manifest = exported(name)
    graph = load(out, manifest)
    embed, tokenize = v.graph_functions(graph)
    report = v.check(corpus, v.reference_model(model_dir), embed, tokenize)
    assert report.id_match_rate == 1.0, report.render()
    assert report.max_abs_diff <= 1e-5, report.render()
    assert report.ok, report.render()


@pytest.mark.parametrize("name", ["default_model_dir", "tiny_xlmr"])
def test_export_serves_any_batch_size_when_batch_is_one_or_empty(request, exported, name):
    import tensorflow as tf

    _, out, manifest = exported(name)
    serve = load(out, manifest).signatures["serving_default"]
    one = serve(input_sequence=tf.constant(["hello world"]))["sentence_embedding"]
    assert one.shape == (1, manifest.output_dim)
    empty = serve(input_sequence=tf.constant([], tf.string))["sentence_embedding"]
    assert empty.shape == (0, manifest.output_dim)


def test_export_manifest_records_what_the_saved_graph_really_uses_when_default(request, exported):
    import tensorflow as tf
    import tensorflow_text

    import packager
    from packager.oplibs import local_core_ops, local_library_map, read_graph_ops

    model_dir, out, manifest = exported("default_model_dir")
    # Every field against an independent source: the graph on disk, the model folder, the runtime.
    graph_ops = read_graph_ops(out).ops
    assert manifest.ops == tuple(sorted(graph_ops))
    assert set(manifest.custom_ops) == {op for op in graph_ops if op not in local_core_ops()}
    libs = local_library_map()
    assert set(manifest.op_libraries) == {libs[op] for op in manifest.custom_ops}
    assert manifest.op_libraries == ("_fast_wordpiece_tokenizer.so",)
    assert manifest.source == str(model_dir)
    entries = sorted(json.loads((model_dir / "modules.json").read_text()), key=lambda e: e["idx"])
    assert [m["type"] for m in manifest.modules] == [e["type"] for e in entries]
    st_cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
    assert manifest.max_seq_length == st_cfg["max_seq_length"]
    pooling_cfg = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    assert manifest.pooling == tuple(m for k, m in [("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                                   ("pooling_mode_max_tokens", "max")] if pooling_cfg.get(k))
    assert manifest.normalize is any(e["type"].endswith("Normalize") for e in entries)
    saved = load(out, manifest)
    sig = saved.signatures["serving_default"]
    assert list(sig.structured_input_signature[1]) == list(manifest.inputs)
    assert list(sig.structured_outputs) == [manifest.output_key]
    assert sig.structured_outputs[manifest.output_key].shape[-1] == manifest.output_dim
    assert sorted(saved.signatures) == sorted(manifest.signatures)
    assert (manifest.tensorflow, manifest.tensorflow_text) == (tf.__version__, tensorflow_text.__version__)
    assert manifest.packager_version == packager.__version__ and manifest.task == "embed"


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
def test_export_loads_in_fresh_process_when_only_listed_op_libraries_registered(request, exported, name, tmp_path):
    import importlib.util

    model_dir, out, manifest = exported(name)
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


def test_export_refuses_to_overwrite_when_output_exists_without_force(request, exported):
    model_dir, out, _ = exported("tiny_bert")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TargetError, match="set force"):
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


def test_export_replaces_atomically_when_force(request, exported, tmp_path):
    model_dir, _, _ = exported("tiny_bert")
    out = tmp_path / "exp"
    export(model_dir, out)
    (out / "stale-marker").write_text("old")
    export(model_dir, out, force=True)
    assert not (out / "stale-marker").exists()
    assert (out / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]
