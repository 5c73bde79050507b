"""Rerankers: a CrossEncoder folder becomes one graph that takes (query, document) strings and returns
exactly ``CrossEncoder.predict`` (scores and token ids), for BERT and XLM-R, one and three labels."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from packager import verify as v
from packager.errors import ModelError
from packager.graph import export, load, read_manifest

RERANKERS = ["tiny_cross_encoder", "tiny_cross_encoder_3", "tiny_cross_encoder_xlmr", "tiny_cross_encoder_modernbert",
             "tiny_cross_encoder_roberta"]
# The long side of the pairs: the tiny rerankers cut at 64 tokens and their vocabularies spend several tokens
# per word, so 1000 characters are hundreds of tokens on each side (the default's 6000 made the HF reference
# spend 30 s per model building overflow windows; the last assertion below checks the cut still bites).
LONG_CHARS = 1000


@pytest.fixture(scope="module")
def pairs(corpus):
    return v.rerank_pairs(corpus, long_chars=LONG_CHARS)


@pytest.mark.parametrize("name", RERANKERS)
def test_reranker_export_matches_cross_encoder_predict_when_pairs_truncate_on_both_sides(request, exports, pairs, name):
    model_dir, out = request.getfixturevalue(name), exports(name)
    manifest = read_manifest(out)
    assert manifest.task == "rerank" and manifest.inputs == ("query", "document") and manifest.output_key == "scores"
    embed, tokenize = v.graph_functions(load(out, manifest))
    report = v.check(pairs, v.reference_model(model_dir), embed, tokenize)
    assert report.id_match_rate == 1.0, report.render()
    assert report.max_abs_diff <= 1e-5, report.render()
    # the long documents really were cut, on one side and on both
    ids = tokenize([q for q, _ in pairs], [d for _, d in pairs])
    assert max(len(r) for r in ids) == manifest.max_seq_length


def test_reranker_manifest_records_labels_and_activation_when_exported(request, exports):
    one, three = read_manifest(exports("tiny_cross_encoder")), read_manifest(exports("tiny_cross_encoder_3"))
    assert (one.output_dim, one.activation) == (1, "sigmoid")
    assert (three.output_dim, three.activation) == (3, "linear")


def test_reranker_tokenize_signature_gives_pair_ids_types_and_mask_like_hf_when_bert(request, exports, corpus):
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue("tiny_cross_encoder")
    tok = load(exports("tiny_cross_encoder")).signatures["tokenize"]
    q, d = corpus[:20], corpus[20:40]
    got = tok(query=tf.constant(q), document=tf.constant(d))
    ref = AutoTokenizer.from_pretrained(str(model_dir))(q, d, padding=True, truncation="longest_first",
                                                        max_length=read_manifest(exports("tiny_cross_encoder")).max_seq_length,
                                                        return_tensors="np")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(got[key].numpy(), ref[key])
    assert (ref["token_type_ids"] == 1).any()  # the second text really is type 1


def test_reranker_serves_empty_and_single_batches_when_called(exports):
    serve = load(exports("tiny_cross_encoder")).signatures["serving_default"]
    assert serve(query=tf.constant(["q"]), document=tf.constant(["d"]))["scores"].shape == (1, 1)
    assert serve(query=tf.constant([], tf.string), document=tf.constant([], tf.string))["scores"].shape == (0, 1)


def test_export_refuses_truncate_dim_when_model_is_a_reranker(tiny_cross_encoder, tmp_path):
    with pytest.raises(ModelError, match="truncate_dim applies to embedding models"):
        export(tiny_cross_encoder, tmp_path / "x", truncate_dim=4)
    assert not (tmp_path / "x").exists()
