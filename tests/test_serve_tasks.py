"""Rerankers and prompts through a real tritonserver (python backend): parity with sentence-transformers
over HTTP, gRPC and the Java client; a bad prompt name or a missing input fails only its own request."""
from __future__ import annotations

import json
import numpy as np
import pytest

from packager import verify as v
from packager.clients import ServerError, embedder, reranker, triton_infer
from packager.serve import TritonServer
from packager.targets import build_from_export
from test_java_client import run_java
from test_rerank import LONG_CHARS

pytestmark = pytest.mark.server

TRUNCATE_DIM = 12
MODELS = {"rerank": "tiny_cross_encoder", "rerank-xlmr": "tiny_cross_encoder_xlmr", "prompted": "tiny_prompted_excluded",
          "qwen3": "tiny_qwen3_bpe"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, exports, tiny_bert):
    from packager.graph import export

    repo = tmp_path_factory.mktemp("serve-tasks") / "model_repository"
    for name, fixture in MODELS.items():
        build_from_export(exports(fixture), target="triton", output=repo, name=name)
    matryoshka = tmp_path_factory.mktemp("matryoshka") / "export"
    export(tiny_bert, matryoshka, truncate_dim=TRUNCATE_DIM)
    build_from_export(matryoshka, target="triton", output=repo, name="matryoshka")
    with TritonServer(repo, ready_timeout=300) as srv:
        yield srv


@pytest.fixture(scope="module")
def pairs(corpus):
    return v.rerank_pairs(corpus, long_chars=LONG_CHARS)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ["rerank", "rerank-xlmr"])
def test_served_reranker_equals_cross_encoder_predict_when_pairs_truncate(request, server, pairs, protocol, name):
    url = server.http_url if protocol == "http" else server.grpc_url
    report = v.check(pairs, v.reference_model(request.getfixturevalue(MODELS[name])),
                     reranker(url, name, protocol=protocol))
    assert report.ok and report.max_abs_diff <= 1e-5, report.render()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_truncate_dim_equals_sentence_transformers_truncate_dim_when_built_with_it(tiny_bert, server, corpus,
                                                                                         protocol):
    import tritonclient.http as httpclient

    url = server.http_url if protocol == "http" else server.grpc_url
    report = v.check(corpus, v.reference_model(tiny_bert, truncate_dim=TRUNCATE_DIM),
                     embedder(url, "matryoshka", protocol=protocol))
    assert report.ok and report.max_abs_diff <= 1e-5, report.render()
    meta = httpclient.InferenceServerClient(server.http_url.removeprefix("http://")).get_model_metadata("matryoshka")
    assert meta["outputs"][0]["shape"] == [-1, TRUNCATE_DIM]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_qwen3_decoder_embedder_equals_encode_when_left_padded_last_token_pooled(request, server, corpus, protocol):
    """A Qwen3-style model (byte-level BPE in the graph, left padding, causal mask, last-token pooling)."""
    url = server.http_url if protocol == "http" else server.grpc_url
    report = v.check(corpus, v.reference_model(request.getfixturevalue(MODELS["qwen3"])),
                     embedder(url, "qwen3", protocol=protocol))
    assert report.ok and report.max_abs_diff <= 1e-5, report.render()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("prompt", [None, "query", "passage", "classify"])
def test_served_prompts_equal_encode_with_prompt_name_when_named_per_request(request, server, corpus, protocol, prompt):
    url = server.http_url if protocol == "http" else server.grpc_url
    report = v.check(corpus, v.reference_model(request.getfixturevalue(MODELS["prompted"])),
                     embedder(url, "prompted", protocol=protocol, prompt_name=prompt), prompt_name=prompt)
    assert report.ok and report.max_abs_diff <= 1e-5, report.render()


def test_served_prompt_name_unknown_fails_only_that_request_and_lists_prompts(request, server, corpus):
    with pytest.raises(ServerError, match=r"unknown prompt_name 'nope'.*'query'.*'passage'"):
        embedder(server.http_url, "prompted", protocol="http", prompt_name="nope")(["hello"])
    # the server keeps serving, with the right answers
    got = embedder(server.grpc_url, "prompted", protocol="grpc", prompt_name="query")(corpus[:4])
    ref = v.reference_embeddings(v.reference_model(request.getfixturevalue(MODELS["prompted"])), corpus[:4],
                                 prompt_name="query")
    assert np.abs(got - ref).max() <= 1e-5


def test_served_reranker_refuses_request_without_document_with_clear_error(server):
    infer = triton_infer(server.http_url, "rerank", output_key="scores")
    with pytest.raises(ServerError, match=r"missing required input.*document"):
        infer({"query": ["a"]})
    with pytest.raises(ServerError, match="batch size does not match"):
        infer({"query": ["a", "b"], "document": ["c"]})
    assert infer({"query": ["a"], "document": ["b"]}).shape == (1, 1)


def test_java_client_reranks_and_applies_prompts_like_python_when_asked(java_classes, server, corpus):
    docs = corpus[:6]
    proc = run_java(java_classes, "triton", server.http_url, "rerank", "--rerank", corpus[7], *docs)
    assert proc.returncode == 0, proc.stderr
    java = np.array([json.loads(line) for line in proc.stdout.splitlines()], dtype=np.float32)
    python = reranker(server.http_url, "rerank", protocol="http")([corpus[7]] * len(docs), docs)
    assert np.array_equal(java, python)
    proc = run_java(java_classes, "triton", server.http_url, "prompted", "--prompt", "passage", *docs)
    assert proc.returncode == 0, proc.stderr
    java = np.array([json.loads(line) for line in proc.stdout.splitlines()], dtype=np.float32)
    assert np.array_equal(java, embedder(server.http_url, "prompted", protocol="http", prompt_name="passage")(docs))
    bad = run_java(java_classes, "triton", server.http_url, "prompted", "--prompt", "nope", "x")
    assert bad.returncode == 1 and "unknown prompt_name" in bad.stderr
