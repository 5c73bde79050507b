"""Reading model folders: the spec, and clear errors for everything that cannot be exported."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from packager.errors import ModelError, UnsupportedError
from packager.files import safe_join, sanitize_name
from packager.source import load_spec, read_spec, resolve_model


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst, symlinks=True)
    return dst


def _rewrite_modules(model: Path, edit) -> None:
    entries = json.loads((model / "modules.json").read_text())
    edit(entries)
    (model / "modules.json").write_text(json.dumps(entries))


def test_read_spec_reads_pipeline_when_default_model():
    spec = load_spec(None)
    assert [m.kind for m in spec.modules] == ["Transformer", "Pooling", "Normalize"]
    assert spec.max_seq_length == 256
    assert spec.pooling == ["mean"]
    assert spec.embedding_dim == 384
    assert spec.transformer.model_type == "bert"
    assert spec.name == "all-minilm-l6-v2"


def test_read_spec_counts_dense_and_pooling_dims_when_cased_dense_model(tiny_bert_cased_dense):
    spec = load_spec(tiny_bert_cased_dense)
    assert [m.kind for m in spec.modules] == ["Transformer", "Pooling", "Dense"]
    assert spec.embedding_dim == 16
    assert spec.pooling == ["cls"]


def test_read_spec_names_type_and_lists_supported_when_module_unknown(default_model_dir, tmp_path):
    model = _copy(default_model_dir, tmp_path)
    _rewrite_modules(model, lambda e: e.append({"idx": 9, "name": "x", "path": "", "type": "sentence_transformers.models.LSTM"}))
    with pytest.raises(UnsupportedError) as err:
        read_spec(model)
    assert "sentence_transformers.models.LSTM" in str(err.value)
    assert "sentence_transformers.models.Pooling" in str(err.value)


def test_read_spec_lists_supported_when_model_type_unknown(default_model_dir, tmp_path):
    model = _copy(default_model_dir, tmp_path)
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match=r"'gpt2'.*bert.*mpnet.*distilbert.*xlm-roberta"):
        read_spec(model)


@pytest.mark.parametrize("missing, message", [
    ("modules.json", "modules.json"),
    ("config.json", "config.json"),
    ("model.safetensors", "no encoder weights"),
    ("1_Pooling/config.json", "Pooling config"),
])
def test_read_spec_says_which_file_when_file_missing(default_model_dir, tmp_path, missing, message):
    model = _copy(default_model_dir, tmp_path)
    (model / missing).unlink()
    with pytest.raises(ModelError, match=message):
        read_spec(model)


@pytest.mark.parametrize("bad_path", ["../outside", "/etc", "1_Pooling/../../x"])
def test_read_spec_refuses_path_when_it_escapes_model_folder(default_model_dir, tmp_path, bad_path):
    model = _copy(default_model_dir, tmp_path)
    _rewrite_modules(model, lambda e: e[1].update(path=bad_path))
    with pytest.raises(ModelError, match="outside the model folder|absolute"):
        read_spec(model)


def test_read_spec_refuses_symlink_when_it_points_outside(default_model_dir, tmp_path):
    model = _copy(default_model_dir, tmp_path)
    shutil.rmtree(model / "1_Pooling")
    (model / "1_Pooling").symlink_to("/etc")
    with pytest.raises(ModelError, match="outside the model folder"):
        read_spec(model)


def test_safe_join_allows_nested_path_when_inside(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert safe_join(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()
    assert safe_join(tmp_path, "") == tmp_path.resolve()


def test_resolve_model_explains_when_name_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="not found.*nothing is downloaded"):
        resolve_model("no-such-org/no-such-model")


def test_resolve_model_finds_snapshot_when_in_hf_cache(default_model_dir, tmp_path, monkeypatch):
    repo = tmp_path / "models--acme--mini"
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(default_model_dir, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    path, source = resolve_model("acme/mini")
    assert path == snap.resolve() and source == "acme/mini"


@pytest.mark.parametrize("raw, expected", [
    ("all-MiniLM-L6-v2", "all-minilm-l6-v2"),
    ('evil"name\ninstance_group {', "evil-name-instance_group"),
    ("../../etc", "etc"),
    ("", "model"),
])
def test_sanitize_name_keeps_only_safe_chars_when_name_hostile(raw, expected):
    assert sanitize_name(raw) == expected


def test_read_spec_reads_reranker_task_when_folder_is_a_cross_encoder(tiny_cross_encoder):
    spec = read_spec(tiny_cross_encoder)
    assert spec.task == "rerank" and spec.num_labels == 1 and spec.activation == "sigmoid"
    assert [m.kind for m in spec.modules] == ["Transformer"] and spec.transformer.task == "sequence-classification"


@pytest.mark.parametrize("edit, message", [
    ("extra_module", "one sequence-classification Transformer"),
    ("unknown_task", "transformer_task 'token-classification'"),
    ("no_head_architecture", "no sequence-classification head for model_type 'qwen3'"),
])
def test_read_spec_refuses_cross_encoder_it_cannot_serve_before_any_tracing(tiny_cross_encoder, tmp_path, edit, message):
    from packager.graph import export

    model = _copy(tiny_cross_encoder, tmp_path)
    if edit == "extra_module":
        _rewrite_modules(model, lambda e: e.append({"idx": 1, "name": "1", "path": "",
                                                    "type": "sentence_transformers.base.modules.normalize.Normalize"}))
    elif edit == "unknown_task":
        cfg = json.loads((model / "sentence_bert_config.json").read_text())
        (model / "sentence_bert_config.json").write_text(json.dumps(dict(cfg, transformer_task="token-classification")))
    else:
        from packager.modules.transformer import Transformer

        with pytest.raises(UnsupportedError, match=message):
            from packager.encoders.heads import check_config

            check_config("qwen3", {})
        assert Transformer  # the same check runs in Transformer.from_folder for sequence-classification
        return
    with pytest.raises(UnsupportedError, match=message):
        read_spec(model)
    with pytest.raises(UnsupportedError, match=message):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
