"""Shared fixtures: tiny random models of each architecture (built once per session), the
embedded default model, and the shipped tricky corpus."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # parity is checked with the production setting
sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def corpus():
    from packager.verify import load_corpus

    return load_corpus(None)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from packager.source import resolve_model

    return resolve_model(None)[0]


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
