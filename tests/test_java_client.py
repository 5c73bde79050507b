"""The JDK-only Java client (examples/java): compiled with javac, run against the live local Triton;
its numbers must equal the Python client's and match sentence-transformers."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from packager import verify as v
from packager.clients import triton_http
from packager.serve import TritonServer
from packager.targets import build_from_export

pytestmark = pytest.mark.server



@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_export):
    repo = tmp_path_factory.mktemp("java-serve") / "repo"
    build_from_export(tiny_export, target="triton", output=repo, name="tiny")
    with TritonServer(repo, ready_timeout=300) as srv:
        yield srv


def run_java(classes: Path, *args: str) -> subprocess.CompletedProcess:
    # The JVM decodes its arguments with the locale's charset: make it UTF-8 whatever the machine's locale.
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    return subprocess.run(["java", "-cp", str(classes), "EmbedClient", *args], capture_output=True, text=True,
                          encoding="utf-8", timeout=300, env=env)


def test_java_client_equals_python_client_and_sentence_transformers_when_sending_corpus(
        java_classes, server, tiny_bert, corpus, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps(t, ensure_ascii=True) + "\n" for t in corpus), encoding="utf-8")
    proc = run_java(java_classes, "triton", server.http_url, "tiny", "--jsonl", str(texts), "--batch", "16")
    assert proc.returncode == 0, proc.stderr
    java = np.array([json.loads(line) for line in proc.stdout.splitlines()], dtype=np.float32)
    python = np.concatenate([triton_http(server.http_url, "tiny")(corpus[i:i + 16]) for i in range(0, len(corpus), 16)])
    assert java.shape == python.shape == (len(corpus), python.shape[1])
    # The same float32 numbers: JSON text from the server, read back exactly.
    assert np.array_equal(java, python), float(np.abs(java - python).max())
    report = v.compare(corpus, v.reference_embeddings(v.reference_model(tiny_bert), corpus), java)
    assert report.ok, report.render()


def test_java_client_takes_texts_from_arguments_when_given(java_classes, server):
    proc = run_java(java_classes, "triton", server.http_url, "tiny", "Hello world", "Café 中文 🙂")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = triton_http(server.http_url, "tiny")(["Hello world", "Café 中文 🙂"])
    assert np.array_equal(np.array(rows, dtype=np.float32), expected)


def test_java_client_exits_1_with_server_message_when_model_unknown(java_classes, server):
    proc = run_java(java_classes, "triton", server.http_url, "nope", "x")
    assert proc.returncode == 1
    assert "HTTP 400" in proc.stderr or "HTTP 404" in proc.stderr
    assert "nope" in proc.stderr


def test_java_client_exits_2_with_usage_when_arguments_missing(java_classes):
    proc = run_java(java_classes, "grpc", "http://127.0.0.1:1", "m")
    assert proc.returncode == 2 and "usage: EmbedClient" in proc.stderr
