"""Prompts and Matryoshka dimensions: the graph gives exactly ``encode(texts, prompt_name=P)`` for every
prompt (the default prompt when none is named), honours ``include_prompt: false``, refuses unknown
prompts clearly, and ``truncate_dim`` equals ``SentenceTransformer(truncate_dim=N)``."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import PROMPTS
from packager import verify as v
from packager.errors import ModelError
from packager.graph import export, load, read_manifest


@pytest.mark.parametrize("name", ["tiny_prompted", "tiny_prompted_excluded"])
@pytest.mark.parametrize("prompt", [None, "query", "passage", "classify", "document"])
def test_prompted_export_matches_encode_with_prompt_name_when_prompt_is_named(request, exports, corpus, name, prompt):
    model_dir, out = request.getfixturevalue(name), exports(name)
    graph = load(out)
    embed, tokenize = v.graph_functions(graph, prompt_name=prompt)
    report = v.check(corpus, v.reference_model(model_dir), embed, tokenize if prompt is None else None,
                     prompt_name=prompt)
    assert report.max_abs_diff <= 1e-5, report.render()
    if prompt is None:
        assert report.id_match_rate == 1.0, report.render()


def test_prompted_export_applies_the_default_prompt_and_counts_its_tokens_when_none_is_named(request, exports, corpus):
    from sentence_transformers import SentenceTransformer

    out = exports("tiny_prompted")
    manifest = read_manifest(out)
    assert manifest.default_prompt_name == "query"
    assert {p.name: p.text for p in manifest.prompts} == {"query": "query: ", "document": "", **PROMPTS}
    st = SentenceTransformer(str(request.getfixturevalue("tiny_prompted")), device="cpu")
    for p in manifest.prompts:
        assert p.n_tokens == (st[0]._get_prompt_length(p.text) if p.text else 0)
    # the prompt's tokens count against max_seq_length, as in ST: a long text is cut after the prompt
    ids = v.graph_functions(load(out))[1]([" ".join(corpus)])[0]
    assert len(ids) == manifest.max_seq_length and ids[1:1 + 3] == v.reference_ids(st, ["x"])[0][1:4]


def test_prompted_export_mixes_prompts_in_one_batch_when_rows_name_different_prompts(request, exports, corpus):
    graph = load(exports("tiny_prompted_excluded"))
    reference = v.reference_model(request.getfixturevalue("tiny_prompted_excluded"))
    names = ["query", "passage", "", "classify"] * 5
    texts = corpus[: len(names)]
    got = graph.signatures["with_prompt"](input_sequence=tf.constant(texts), prompt_name=tf.constant(names))
    for text, name, row in zip(texts, names, got["sentence_embedding"].numpy()):
        ref = reference.encode([text], prompt_name=name or None)[0]
        assert np.abs(row - ref).max() <= 1e-5, (text, name)


def test_prompted_export_names_known_prompts_when_prompt_name_is_unknown(exports):
    fn = load(exports("tiny_prompted")).signatures["with_prompt"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"unknown prompt_name.*query.*passage"):
        fn(input_sequence=tf.constant(["x", "y"]), prompt_name=tf.constant(["query", "nope"]))


@pytest.mark.parametrize("dim", [1, 8, 32])
def test_truncate_dim_export_equals_sentence_transformers_truncate_dim_when_set(tiny_bert, corpus, tmp_path, dim):
    manifest = export(tiny_bert, tmp_path / "e", truncate_dim=dim)
    assert manifest.truncate_dim == dim and manifest.output_dim == dim
    embed, tokenize = v.graph_functions(load(tmp_path / "e"))
    report = v.check(corpus, v.reference_model(tiny_bert, truncate_dim=dim), embed, tokenize)
    assert report.ok and report.max_abs_diff <= 1e-5, report.render()


@pytest.mark.parametrize("dim", [0, 33, -1])
def test_export_refuses_truncate_dim_outside_the_model_dimension(tiny_bert, tmp_path, dim):
    with pytest.raises(ModelError, match=r"truncate_dim .* outside 1\.\.32"):
        export(tiny_bert, tmp_path / "e", truncate_dim=dim)
    assert not (tmp_path / "e").exists()
