"""The in-graph SentencePiece (XLM-R Unigram) tokenizer gives exactly the HF ids.

The reference is always the HF fast tokenizer as sentence-transformers calls it
(``verify.reference_ids``), or, for tokenizer configurations no saved model uses, the HF
tokenizer itself. Both fixture variants are checked: with ``sentencepiece.bpe.model`` shipped
and with tokenizer.json only.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from packager import verify as v

VARIANTS = ["tiny_xlmr", "tiny_xlmr_tokenizer_json_only"]

ADVERSARIAL = [
    # added tokens: <mask> has lstrip, the others are plain specials
    "<mask>", " <mask> ", "a<mask>b", "a <mask> b", "<mask><mask>", "  \t<mask>x", "<s>", "</s>", "<pad>", "<unk>",
    "<s>hello</s>", "x</s> <s>y", "<mask", "mask>", "<<mask>>", "\u3000<mask>", "\u00a0<mask>",
    # text that only becomes special-token text after normalization: matched as a vocab piece
    "\uff1c\uff53\uff1e", "\uff1c\uff4d\uff41\uff53\uff4b\uff1e", "\uff1cunk\uff1e a",
    # NUL, control and format characters
    "a\x00b", "\x00", "\x00<mask>\x00", "\x01\x02a\x7f", "x\x85y", "a\u200bb", "\ufeffbom", "soft\u00adhyphen",
    "a\u200db", "\u202e reversed", "\ufffd", "\ue000private",
    # spaces of every kind, leading, trailing and runs
    "", " ", "   ", "\t\n\r", "a\tb\nc\rd", "a\r\nb", " lead", "trail ", "  both  ", "a  b   c", "\u3000x\u3000",
    "x\u00a0y", "x\u2028y\u2029z", "x\u2003y", "\u1680ogham", " " * 1000 + "x", "x" + "\t" * 500, "\n" * 300,
    # width and compatibility forms, decomposed text: HF's per-grapheme Precompiled quirks
    "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48", "\uff76\uff9e\uff77\uff9e", "\ufb01\u0301", "e\u0302\u0301",
    "\u00a8\u0300", "\u0438\u0306\u0301", "\u1112\u1161\u11ab\u1100\u1173\u11af", "\u2122\u0301", "\u00aa\u0301x",
    "\u0915\u094d\u095b\u0301", "\u00a9\u200d\u2122\u0301", "\u0600\u00aa\u0301", "\U0001F1EB\U0001F1F7\U0001F1E9",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F44D\U0001F3FD", "\u00bd \u2153 \u2460 \u3250", "\u2026...",
    "Caf\u00e9 Cafe\u0301 na\u00efve \u1e9e \u00df", "\u03a3\u0391\u03a3 \u03c3\u03c2", "\u0130stanbul",
    # the metaspace character itself
    "\u2581", "\u2581hello", "a \u2581b", "a\u2581\u2581b", "\u2581 \u2581",
    # repetitions: exact float64 ties between segmentations
    "ha" * 60, "\U0001F600" * 600, "word" * 30, "aaaa" * 50, "\u00e9" * 101, "." * 200, "-_" * 80,
    # mixed scripts
    "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0440\u0443\u0441",
    "https://example.com/a?b=c#d user@example.org", "123 456 7.89 1,000",
]


@pytest.fixture(scope="module", params=VARIANTS)
def xlmr(request):
    """(model folder, in-graph tokenizer, tokenize fn -> unpadded ids, reference SentenceTransformer)."""
    import tensorflow as tf

    from packager.modules.transformer import load_hf_tokenizer
    from packager.source import load_spec
    from packager.tokenizers import build_tokenizer

    model_dir = request.getfixturevalue(request.param)
    spec = load_spec(model_dir).modules[0]
    tok = build_tokenizer(load_hf_tokenizer(spec, model_dir), spec.directory(model_dir), spec.max_seq_length)
    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)

    def tokenize(texts):  # str, or raw bytes as a server receives them
        ids, mask = fn(tf.constant(list(texts), tf.string))
        return v.strip_padding(ids.numpy(), mask.numpy())

    return model_dir, tok, tokenize, v.reference_model(model_dir)


def _assert_same(texts, expected, got):
    bad = [(t, e, g) for t, e, g in zip(texts, expected, got) if list(e) != list(g)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0][0]!r:.120}: expected {bad[0][1]} got {bad[0][2]}"


def test_sentencepiece_fixture_has_xlmr_layout_when_built(xlmr):
    model_dir, tok, _, reference = xlmr
    hf = reference.tokenizer
    assert [hf.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert hf.convert_ids_to_tokens(len(hf) - 1) == "<mask>"
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    mask = [t for t in tj["added_tokens"] if t["content"] == "<mask>"][0]
    assert mask["lstrip"] and mask["id"] == len(hf) - 1
    assert "Precompiled" in json.dumps(tj["normalizer"]) and "Metaspace" in json.dumps(tj["pre_tokenizer"])
    assert tj["model"]["type"] == "Unigram" and tj["model"]["unk_id"] == 3
    # not everything <unk>: real pieces come out
    ids = v.reference_ids(reference, ["the quick brown fox"])[0]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids and len(ids) > 3
    assert tok.pad_id == 1 and tok.vocab_size == len(hf)


def test_sentencepiece_uses_spm_file_when_shipped(xlmr):
    model_dir, tok, _, _ = xlmr
    shipped = (model_dir / "sentencepiece.bpe.model").is_file()
    assert tok.vocab_source == ("sentencepiece.bpe.model" if shipped else "tokenizer.json")


def test_sentencepiece_spm_ids_map_to_fairseq_ids_when_spm_file(tiny_xlmr):
    from packager.tokenizers.sentencepiece import spm_to_hf_ids

    vocab = [tuple(p) for p in json.loads((tiny_xlmr / "tokenizer.json").read_text())["model"]["vocab"]]
    table = spm_to_hf_ids(tiny_xlmr / "sentencepiece.bpe.model", vocab)
    assert list(table[:3]) == [3, 0, 2]  # <unk> <s> </s>
    assert np.array_equal(table[3:], np.arange(3, len(table)) + 1)


def test_sentencepiece_ids_equal_hf_when_shipped_corpus(xlmr, corpus):
    _, _, tokenize, reference = xlmr
    _assert_same(corpus, v.reference_ids(reference, corpus), tokenize(corpus))


def test_sentencepiece_ids_equal_hf_when_adversarial_strings(xlmr):
    _, _, tokenize, reference = xlmr
    texts = ADVERSARIAL + [a + " " + b for a, b in zip(ADVERSARIAL, ADVERSARIAL[1:])]
    _assert_same(texts, v.reference_ids(reference, texts), tokenize(texts))


def test_sentencepiece_ids_equal_hf_when_one_megabyte_strings(xlmr):
    _, _, tokenize, reference = xlmr
    texts = ["a" * 1_000_000, "word " * 200_000, "<mask> " * 140_000, "x\x00" * 500_000, "\U0001F600" * 5000]
    _assert_same([t[:40] for t in texts], v.reference_ids(reference, texts), tokenize(texts))


def test_sentencepiece_word_cache_holds_hf_model_ids_when_built(xlmr):
    model_dir, tok, _, reference = xlmr
    from packager.tokenizers.spm import pre_tokenizer_steps, word_cache

    tj = json.loads(reference.tokenizer.backend_tokenizer.to_str())
    keys, ids = word_cache(tj, *pre_tokenizer_steps(tj["pre_tokenizer"]))
    assert tok.word_cache is not None and tok.word_cache.size == len(keys) > 10
    model = reference.tokenizer.backend_tokenizer.model
    rng = random.Random(0)
    for k in rng.sample(range(len(keys)), min(200, len(keys))):
        assert ids[k] == [t.id for t in model.tokenize(keys[k])], keys[k]
    assert all(k.startswith("\u2581") and "\u2581" not in k[1:] and " " not in k for k in keys)


@pytest.mark.parametrize("words", [0, 3, 1 << 16])
def test_sentencepiece_ids_equal_hf_when_runtime_cache_off_tiny_or_large(words, tiny_xlmr, corpus, monkeypatch):
    """Remembered pre-tokens give what the Viterbi gives: batches twice, the cache full or off."""
    import tensorflow as tf

    from packager.modules.transformer import load_hf_tokenizer
    from packager.source import load_spec
    from packager.tokenizers import bpe as bpe_mod
    from packager.tokenizers.sentencepiece import SentencePieceTokenizer

    monkeypatch.setattr(bpe_mod, "RUNTIME_CACHE_WORDS", words)
    spec = load_spec(tiny_xlmr).modules[0]
    tok = SentencePieceTokenizer(load_hf_tokenizer(spec, tiny_xlmr), tiny_xlmr, spec.max_seq_length)
    assert (tok.word_cache.runtime is None) == (words == 0)
    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    reference = v.reference_model(tiny_xlmr)
    texts = list(corpus) + ADVERSARIAL
    expected = v.reference_ids(reference, texts)
    rng = random.Random(2)
    for _ in range(3):
        ids, mask = fn(tf.constant(texts))
        _assert_same(texts, expected, v.strip_padding(ids.numpy(), mask.numpy()))
        order = list(range(len(texts)))
        rng.shuffle(order)
        sub = [texts[i] for i in order[:40]]
        ids, mask = fn(tf.constant(sub))
        _assert_same(sub, [expected[i] for i in order[:40]], v.strip_padding(ids.numpy(), mask.numpy()))
    if words:
        assert int(tok.word_cache.runtime.table.size()) >= 3


@pytest.mark.slow
def test_sentencepiece_ids_equal_hf_when_megabyte_word_never_settles(tiny_xlmr):
    """A 1 MB word whose segmentation depends on its full length: the whole programme runs."""
    import tensorflow as tf

    from packager.modules.transformer import load_hf_tokenizer
    from packager.source import load_spec
    from packager.tokenizers.sentencepiece import SentencePieceTokenizer

    spec = load_spec(tiny_xlmr).modules[0]
    tok = SentencePieceTokenizer(load_hf_tokenizer(spec, tiny_xlmr), tiny_xlmr, spec.max_seq_length)
    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    text = "\U0001F600" * 250_000
    ids, mask = fn(tf.constant([text]))
    assert v.strip_padding(ids.numpy(), mask.numpy()) == v.reference_ids(v.reference_model(tiny_xlmr), [text])


def test_sentencepiece_ids_equal_hf_when_invalid_utf8(xlmr):
    _, _, tokenize, reference = xlmr
    raw = [b"\xff", b"abc\xe2\x82", b"\xc3\x28 ok", b"\xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80 big", b"\xc0\xaf over",
           b"<mask>\xfe<mask>", b"\xe2\x82\xac\xe2\x82", b"a\x00\xffb", b"\xf0\x9f\x98", b"\x80\x80\x80 x"]
    decoded = [b.decode("utf-8", "replace") for b in raw]
    _assert_same(decoded, v.reference_ids(reference, decoded), tokenize(raw))


def _random_text(rng: random.Random) -> str:
    """Characters from every plane, weighted towards the ones tokenizers treat specially."""
    pools = [
        lambda: chr(rng.randint(0x20, 0x7E)),
        lambda: chr(rng.randint(0x00, 0x1F)),
        lambda: chr(rng.randint(0x80, 0x2FF)),
        lambda: chr(rng.randint(0x300, 0x36F)),  # combining marks
        lambda: chr(rng.randint(0x370, 0xFFFF)),
        lambda: chr(rng.randint(0x10000, 0x10FFFF)),
        lambda: chr(rng.randint(0x1F300, 0x1FAFF)),  # emoji
        lambda: chr(rng.randint(0xFF00, 0xFFEF)),  # full and half width
        lambda: rng.choice([" ", "  ", "\t", "\n", "\u3000", "\u00a0", "\u2581", "<mask>", "<s>", "\u200d", "\r\n"]),
        lambda: rng.choice(["the", "quick", "fox", "Caf\u00e9", "\u4e2d\u6587", "ha", "\U0001F600"]) * rng.randint(1, 6),
    ]
    weights = [30, 3, 8, 6, 15, 8, 4, 4, 15, 7]
    out = []
    for _ in range(rng.randint(0, 40)):
        c = rng.choices(pools, weights)[0]()
        if not any(0xD800 <= ord(x) < 0xE000 for x in c):
            out.append(c)
    return "".join(out)


def test_sentencepiece_ids_equal_hf_when_random_unicode_all_planes(xlmr):
    _, _, tokenize, reference = xlmr
    rng = random.Random(20240611)
    texts = [_random_text(rng) for _ in range(3000)]
    for i in range(0, len(texts), 500):
        part = texts[i: i + 500]
        _assert_same(part, v.reference_ids(reference, part), tokenize(part))


def test_precompiled_normalizer_equals_hf_when_every_code_point(tiny_xlmr):
    """Every code point, in code point order (so base + following marks form real graphemes)."""
    import tensorflow as tf
    from tokenizers import normalizers

    from packager.tokenizers.common import decode_utf8, encode_utf8
    from packager.tokenizers.sentencepiece import PrecompiledNormalizer, model_proto_class

    proto = model_proto_class()()
    proto.ParseFromString((tiny_xlmr / "sentencepiece.bpe.model").read_bytes())
    charsmap = proto.normalizer_spec.precompiled_charsmap
    hf = normalizers.Precompiled(charsmap)
    norm = PrecompiledNormalizer(charsmap)
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    texts = ["".join(map(chr, cps[i: i + 256])) for i in range(0, len(cps), 256)]
    # and pairs of every rule's source with a following mark / joiner
    from packager.tokenizers.sentencepiece import decode_charsmap

    keys = [k for k in decode_charsmap(charsmap) if len(k.encode()) < 6]
    texts += [k + m for k in keys for m in ("\u0301", "\u200d", "\u0308\u0301")]
    f = tf.function(lambda s: encode_utf8(norm.apply(decode_utf8(s))), autograph=False)
    got = [g.decode("utf-8") for g in f(tf.constant(texts)).numpy()]
    bad = [(t, hf.normalize_str(t), g) for t, g in zip(texts, got) if hf.normalize_str(t) != g]
    assert not bad, f"{len(bad)} differ, first: {[hex(ord(c)) for c in bad[0][0]][:12]}"


def _tokenizers_native(tiny_xlmr, pre_tokenizer, normalizer_extra=True, lowercase=False):
    """A PreTrainedTokenizerFast on the tiny vocab with a tokenizers-native XLM-R pipeline."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(tiny_xlmr / "tokenizer.json"))
    charsmap = json.loads(backend.to_str())["normalizer"]
    parts = [normalizers.Lowercase()] if lowercase else []  # what do_lower_case adds (modules.transformer)
    parts.append(normalizers.Precompiled(__import__("base64").b64decode(charsmap["precompiled_charsmap"])))
    if normalizer_extra:
        parts.append(normalizers.Replace(Regex(" {2,}"), " "))
    backend.normalizer = normalizers.Sequence(parts)
    backend.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token=AddedToken("<mask>", lstrip=True, normalized=False, special=True), model_max_length=64,
    )


# U+FFFD next to noncharacters, which TF <= 2.17's unicode_encode writes as U+FFFD
NONCHARACTERS = ["a \ufdd0", "a \ufffd", "x\ufdd0", "x\ufffd", "x\ufdd1", "\ufdd1", "\ufffd", "\ufdd0", "\ufffd\ufdd0y",
                 "\U0010ffff \U0001fffe \uffff \ufffe", "replacement \ufffd char and noncharacter \ufdd0 \ufdd1"]


@pytest.mark.parametrize("old_encode", [False, True], ids=["tf", "tf217-encode"])
def test_sentencepiece_ids_equal_hf_whatever_ran_before_when_noncharacters(old_encode, tiny_xlmr, request, tmp_path):
    """A pre-token's ids never depend on what was served before, nor on a cached piece it is not.
    The tiny vocab gets the pieces "\u2581\ufffd", "\ufffd" and "\ufdd1" and no normalizer (XLM-R's
    charsmap maps U+FFFD to a space), so U+FFFD and U+FDD1 have ids of their own and U+FDD0 is
    unknown. With ``tf217-encode`` the graph is traced with TF <= 2.17's unicode_encode: keying the
    word caches by its output gave "\u2581\ufdd0" the static entry of "\u2581\ufffd", and "\u2581x\ufdd0"
    the remembered ids of "\u2581x\ufffd" or "\u2581x\ufdd1"."""
    import tensorflow as tf
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from packager.tokenizers.sentencepiece import SentencePieceTokenizer

    if old_encode:
        request.getfixturevalue("tf217_unicode_encode")
    data = json.loads((tiny_xlmr / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = None
    data["model"]["vocab"] += [["\u2581\ufffd", -4.0], ["\ufffd", -4.5], ["\ufdd1", -5.0]]
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token=AddedToken("<mask>", lstrip=True, normalized=False, special=True),
        model_max_length=64)
    tok = SentencePieceTokenizer(hf, tmp_path, 64)
    assert tok.word_cache is not None and tok.word_cache.runtime is not None
    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)

    def check(texts):
        ids, mask = fn(tf.constant(texts))
        _assert_same(texts, hf(texts, truncation=True, max_length=64)["input_ids"],
                     v.strip_padding(ids.numpy(), mask.numpy()))

    assert len({tuple(hf(t)["input_ids"]) for t in NONCHARACTERS[:5]}) == 5
    for text in NONCHARACTERS:
        check([text])
    check(NONCHARACTERS + NONCHARACTERS[::-1])
    for text in reversed(NONCHARACTERS):
        check([text])


@pytest.mark.parametrize("kind", ["metaspace-split", "metaspace-first", "metaspace-nosplit", "metaspace-never",
                                  "whitespace-metaspace-first", "no-collapse", "lowercase"])
def test_sentencepiece_ids_equal_hf_when_tokenizers_native_pipelines(tiny_xlmr, kind, corpus):
    """tokenizer.json as tokenizers writes it for XLM-R (e5 style), and the other Metaspace modes."""
    import tensorflow as tf
    from tokenizers import pre_tokenizers as pt

    from packager.tokenizers.sentencepiece import SentencePieceTokenizer

    pre = {
        "metaspace-split": pt.Metaspace(prepend_scheme="always", split=True),
        "metaspace-first": pt.Metaspace(prepend_scheme="first", split=True),
        "metaspace-nosplit": pt.Metaspace(prepend_scheme="always", split=False),
        "metaspace-never": pt.Metaspace(prepend_scheme="never", split=True),
        "whitespace-metaspace-first": pt.Sequence([pt.WhitespaceSplit(), pt.Metaspace(prepend_scheme="first")]),
        "no-collapse": pt.Metaspace(prepend_scheme="always", split=True),
        "lowercase": pt.Sequence([pt.WhitespaceSplit(), pt.Metaspace(prepend_scheme="always")]),
    }[kind]
    hf = _tokenizers_native(tiny_xlmr, pre, normalizer_extra=kind != "no-collapse", lowercase=kind == "lowercase")
    tok = SentencePieceTokenizer(hf, tiny_xlmr, 64)
    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    rng = random.Random(7)
    texts = ADVERSARIAL + corpus + [_random_text(rng) for _ in range(500)]
    ids, mask = fn(tf.constant(texts))
    expected = hf(texts, truncation=True, max_length=64)["input_ids"]
    _assert_same(texts, expected, v.strip_padding(ids.numpy(), mask.numpy()))


def test_sentencepiece_graph_round_trips_when_saved_and_loaded_without_tf_text(tiny_xlmr, tmp_path):
    """The SavedModel needs no TF-Text op at all: a fresh process that never imports
    tensorflow_text loads it and gives the same ids."""
    import tensorflow as tf

    from packager.modules.transformer import load_hf_tokenizer
    from packager.source import load_spec
    from packager.tokenizers.common import Standalone
    from packager.tokenizers.sentencepiece import SentencePieceTokenizer

    spec = load_spec(tiny_xlmr).modules[0]
    tok = SentencePieceTokenizer(load_hf_tokenizer(spec, tiny_xlmr), tiny_xlmr, spec.max_seq_length)

    holder = Standalone(tok)
    tf.saved_model.save(holder, str(tmp_path / "sm"), signatures={"tokenize": holder.tokenize})
    texts = ADVERSARIAL[:40] + ["a" * 5000]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        texts = json.load(open({str(tmp_path / 'texts.json')!r}))
        m = tf.saved_model.load({str(tmp_path / 'sm')!r})
        out = m.signatures["tokenize"](tf.constant(texts))
        ids, mask = out["input_ids"].numpy(), out["attention_mask"].numpy()
        assert "tensorflow_text" not in sys.modules
        print(json.dumps([[int(t) for t, k in zip(r, q) if k] for r, q in zip(ids, mask)]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    _assert_same(texts, v.reference_ids(v.reference_model(tiny_xlmr), texts), got)


def test_decode_charsmap_gives_nfkc_rules_when_nmt_nfkc(tiny_xlmr):
    from packager.tokenizers.sentencepiece import decode_charsmap, model_proto_class

    proto = model_proto_class()()
    proto.ParseFromString((tiny_xlmr / "sentencepiece.bpe.model").read_bytes())
    rules = decode_charsmap(proto.normalizer_spec.precompiled_charsmap)
    assert rules["\uff41"] == "a" and rules["\ufb01"] == "fi" and rules["\u3000"] == " " and rules["\x01"] == ""
    assert rules["e\u0301"] == "\u00e9" and "a" not in rules


def test_sentencepiece_refuses_unknown_pipeline_when_unsupported_normalizer(tiny_xlmr):
    from tokenizers import normalizers, pre_tokenizers

    from packager.errors import UnsupportedError
    from packager.tokenizers.sentencepiece import SentencePieceTokenizer

    hf = _tokenizers_native(tiny_xlmr, pre_tokenizers.Metaspace())
    hf.backend_tokenizer.normalizer = normalizers.NFKC()
    with pytest.raises(UnsupportedError, match="NFKC"):
        SentencePieceTokenizer(hf, tiny_xlmr, 64)
