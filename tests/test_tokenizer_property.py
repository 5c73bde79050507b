"""Property test: for arbitrary Unicode text the in-graph token ids equal the HF tokenizer's ids.

Hypothesis draws batches of strings from every Unicode plane (surrogates excluded: a Python str
that reaches a server is valid UTF-8), mixed with the fragments that broke emulations before
(special-token text, NUL, control and zero-width characters, combining marks, odd spaces, BPE's
contractions, digit and whitespace runs). Models: WordPiece (cased, uncased), SentencePiece, and
byte-level BPE (Qwen3-style with an appended EOS and left padding, RoBERTa-style).
Any mismatch fails; shrunk failures are kept below as ``@example`` regression cases.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from packager import verify as v
from packager.graph import build_module
from packager.source import load_spec

pytestmark = pytest.mark.slow  # fuzzing: in the full suite, not in `make check`

FRAGMENTS = [
    "[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "<mask>", "<s>", "</s>", "<pad>", "<unk>", " [MASK] ",
    "\x00", "\t", "\n", "\r", "\x0b", "\x1c", "\x85", "\u00a0", "\u2028", "\u3000", "\u200b", "\u200d",
    "\ufeff", "\ufffd", "\ue000", "\u0301", "\u0308", "Σ", "ς", "ß", "ẞ", "İ", "ǅ", "ﬁ", "½", "…", "™",
    "中", "😀", "👍🏽", "🇫🇷", "a" * 99, "é" * 101, "..", "--", "@", "#", "'", "  ",
    # byte-level BPE traps: contractions, digit runs, whitespace runs (GPT-2's \s+(?!\S)), ZWJ emoji,
    # noncharacters (TF <= 2.17 wrote them as U+FFFD), the decoders' end-of-text token
    "'s", "'LL", "'re", "123", "45678", " \t ", "\r\n", "👨‍👩‍👧", "\ufdd0", "\uffff", "<|endoftext|>",
]

_text = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12),
        st.sampled_from(FRAGMENTS),
        st.text(alphabet=st.characters(max_codepoint=0x2FF, exclude_categories=("Cs",)), max_size=12),
    ),
    max_size=8,
).map("".join)
BATCHES = st.lists(_text, min_size=1, max_size=16)


@pytest.fixture(scope="module", params=["default_model_dir", "tiny_xlmr", "tiny_mpnet", "tiny_bert_cased_dense",
                                        "tiny_qwen3_bpe", "tiny_roberta_bpe"])
def pair(request):
    """(in-graph tokenize function, reference SentenceTransformer) for one model."""
    model_dir = request.getfixturevalue(request.param)
    graph_tokenize = build_module(load_spec(model_dir)).signatures()["tokenize"]

    def tokenize(texts):
        import tensorflow as tf

        out = graph_tokenize(tf.constant(texts, tf.string))
        return v.strip_padding(out["input_ids"].numpy(), out["attention_mask"].numpy())

    return tokenize, v.reference_model(model_dir)


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts=BATCHES)
@example(texts=["\x00[MASK]\x00", "a\u0301\u0308", "ΣΑΣ Σ.", "ﬁ½ ẞ"])
def test_tokenize_equals_hf_ids_when_arbitrary_unicode(pair, texts):
    tokenize, reference = pair
    expected = v.reference_ids(reference, texts)
    got = tokenize(texts)
    for text, e, g in zip(texts, expected, got):
        assert g == e, f"{text!r}: expected {e} got {g}"
