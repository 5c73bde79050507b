"""The in-graph WordPiece tokenizer gives exactly the ids sentence-transformers feeds its encoder.

Every check compares the whole padded batch (``input_ids`` and ``attention_mask``, int64, dynamic
padding) with ``SentenceTransformer.preprocess`` on the same batch, through a ``tf.function`` with
``input_signature=[tf.TensorSpec([None], tf.string)]`` (the serving signature's shape).
"""
from __future__ import annotations

import random
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from packager.modules.transformer import load_hf_tokenizer
from packager.source import load_spec
from packager.tokenizers import common
from packager.tokenizers.wordpiece import WordPieceTokenizer
from packager.verify import reference_model

MODELS = ["default_model_dir", "tiny_bert", "tiny_bert_cased_dense", "tiny_distilbert", "tiny_mpnet"]
BATCH = 64


class Case:
    """One model: its HF tokenizer, the in-graph tokenizer, and the sentence-transformers reference."""

    def __init__(self, model_dir):
        spec = load_spec(model_dir)
        self.model_dir = model_dir
        self.hf = load_hf_tokenizer(spec.transformer, model_dir)
        self.max_len = spec.max_seq_length
        self.tok = WordPieceTokenizer(self.hf, self.max_len)
        self.fn = tf.function(self.tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
        self.st = reference_model(model_dir)

    def reference(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        feats = self.st.preprocess(list(texts))
        return feats["input_ids"].numpy(), feats["attention_mask"].numpy()

    def graph(self, texts) -> tuple[np.ndarray, np.ndarray]:
        data = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
        ids, mask = self.fn(tf.constant(data, dtype=tf.string))
        assert ids.dtype == tf.int64 and mask.dtype == tf.int64
        return ids.numpy(), mask.numpy()

    def assert_same(self, texts, batch: int = BATCH) -> None:
        """Whole padded batches equal; on failure, name the first differing sentence."""
        for i in range(0, len(texts), batch):
            chunk = list(texts[i: i + batch])
            decoded = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in chunk]
            exp_ids, exp_mask = self.reference(decoded)
            got_ids, got_mask = self.graph(chunk)
            if exp_ids.shape == got_ids.shape and (exp_ids == got_ids).all() and (exp_mask == got_mask).all():
                continue
            for j, text in enumerate(chunk):
                e = [int(x) for x, m in zip(exp_ids[j], exp_mask[j]) if m]
                g = [int(x) for x, m in zip(got_ids[j], got_mask[j]) if m] if j < len(got_ids) else None
                assert g == e, f"ids differ for {text!r:.300}:\n expected {e[:40]}\n got      {g and g[:40]}"
            assert exp_ids.shape == got_ids.shape, f"padded shape {got_ids.shape} != {exp_ids.shape}"
            np.testing.assert_array_equal(got_ids, exp_ids)
            np.testing.assert_array_equal(got_mask, exp_mask)


_CASES: dict = {}


@pytest.fixture(params=MODELS)
def case(request) -> Case:
    name = request.param
    if name not in _CASES:
        _CASES[name] = Case(request.getfixturevalue(name))
    return _CASES[name]


def adversarial_strings(case: Case) -> list[str]:
    specials = [t["content"] for t in common.tokenizer_json(case.hf)["added_tokens"]]
    out = []
    for s in specials:
        out += [s, f" {s} ", f"a{s}b", f"a {s} b", f"a  {s}", f"{s}{s}", f"{s} {s}", f"\t{s}\n", s.lower(), s.upper(),
                s[:-1], s[1:], f"x{s[:-1]}{s}", f"\u3000{s}", f"\xa0{s}", f"{s}\x00", f"{s}é", f"中{s}中"]
    out += [" ".join(specials), "".join(specials), "[MASK] <mask> [CLS] <s> </s> [SEP] [UNK] <unk> [PAD] <pad>"]
    out += [
        "", " ", "   ", "\t\n\r", "\x00", "a\x00b", "\x00\x00 x", "hello\x00world [MASK]", "\x7f\x80\x9f",
        "a\u200bb", "a\u200db", "\ufeffbom", "a\ufffdb", "\ue000private\U000f0000", "\U000e0001tag",
        "ΑΣ ΣΑΣ Σ. σς ς", "İstanbul ıi", "Straße ẞ ß", "ﬁnance ﬀ", "½ ² ⅷ", "ＦＵＬＬ ｗｉｄｔｈ", "… ™ © ®",
        "e\u0301 e\u0300\u0301 a\u0323\u0302 \u1ea0\u0302", "x\U0001d16d\U0001d165 \U0001d165\U0001d16d q\u302f\u302e",
        "\u0e01\u0e34\u0e4a\u0e4c", "한국어 \u1100\u1161\u11a8", "Café naïve résumé", "中文日本語한국어",
        "𠀀𪛖 \U00030000 \U0002ebe0", "😀😃😄 👍🏽 👨‍👩‍👧", "https://example.com/a?b=c&d=e#f", "user@example.org",
        "#tag @name $100 ¥200 €3", "!!!???...---___", "##suffix ## #", "don't won't it's", "١٢٣ ۴۵۶ ߁",
        "مرحبا بالعالم", "Привет, мир!", "Γειά σου Κόσμε", "שלום", "नमस्ते", "\u2028\u2029line", "\u1680ogham",
        "a\u180eb", "\u0085nel", "\x1c\x1d\x1e\x1ffs", "tab\tsep", "\u00ad soft\u00adhyphen",
        "\U0010ffff\U0010fffe\uffff\ufffe", "\u0378\u0379unassigned\u0557", "\U0001fae8\U0001fabc new emoji",
        "\u2e5d\u31ef\U00011f00", "\u0cf3\U0001e4d0 newer scripts",
    ]
    # word length limit: 100 characters, counted after normalization (HF) -- not bytes (TF)
    for n in (99, 100, 101):
        out += ["a" * n, "é" * n, "E\u0301" * n, "中" * n, "ß" * n, "😀" * n, "x" + "\u0301" * (n - 1),
                "a" * (n - 1) + "\u200b" + "a", "ǅ" * n, "Ā" * n, "ﬁ" * (n // 2 + 1)]
    return out


def test_wordpiece_ids_match_sentence_transformers_on_shipped_corpus(case, corpus):
    case.assert_same(corpus)


def test_wordpiece_ids_match_on_adversarial_strings(case):
    texts = adversarial_strings(case)
    case.assert_same(texts)
    case.assert_same(texts, batch=1)  # batch of one: padding is only the row's own length


def random_texts(specials: list[str], n: int = 3000, seed: int = 1234) -> list[str]:
    """Seeded random strings drawn from every plane, with extra weight on the tricky classes."""
    rng = random.Random(seed)
    cps = common.all_codepoints()
    pools = [
        lambda: chr(int(cps[rng.randrange(cps.size)])),  # any plane, assigned or not
        lambda: chr(rng.randrange(0x20, 0x7F)),
        lambda: chr(rng.randrange(0xA0, 0x250)),
        lambda: chr(rng.randrange(0x300, 0x370)),  # combining marks
        lambda: chr(rng.randrange(0x4E00, 0xA000)),
        lambda: chr(rng.randrange(0x1F300, 0x1FAFF)),
        lambda: rng.choice([chr(c) for c in common.WHITE_SPACE] + ["\x1c", "\u200b", "\ufeff", "\x00", "\x85"]),
        lambda: chr(rng.randrange(0, 0x20)),
        lambda: rng.choice(specials) if specials else " ",
        lambda: chr(rng.randrange(0x10000, 0x30000)),
        lambda: " ",
    ]
    weights = [6, 6, 3, 2, 2, 1, 2, 1, 1, 1, 4]
    return ["".join(rng.choices(pools, weights)[0]() for _ in range(rng.randrange(0, 40))) for _ in range(n)]


def test_wordpiece_ids_match_on_random_unicode_from_all_planes(case):
    specials = [t["content"] for t in common.tokenizer_json(case.hf)["added_tokens"]]
    case.assert_same(random_texts(specials))


def test_wordpiece_invalid_utf8_is_replaced_like_python_decode_replace(case):
    raw = [b"a\xffb", b"\xe2\x82", b"ok \xe2\x82 ok", b"\xf0\x9f\x98", b"\xed\xa0\x80 surrogate", b"\xc0\xaf",
           b"\xf4\x90\x80\x80", b"\x80\x80 cont", b"[MASK]\xff[MASK]", b"\xff<mask>", b"caf\xc3", b"\xc3\xa9\xe9"]
    got = common.decode_utf8(tf.constant(raw)).to_list()
    assert got == [[ord(c) for c in b.decode("utf-8", "replace")] for b in raw]
    case.assert_same(raw)


def test_wordpiece_truncates_a_1mb_string_like_sentence_transformers(case):
    texts = ["word " * 200_000, "a" * 1_000_000, "中文" * 300_000, "[MASK] " * 150_000, "x"]
    case.assert_same(texts, batch=8)
    ids, mask = case.graph(texts[:1])
    assert ids.shape == (1, case.max_len)


def test_wordpiece_empty_batch_gives_empty_matrices(case):
    ids, mask = case.fn(tf.constant([], tf.string))
    assert ids.shape == (0, 0) and mask.shape == (0, 0)
    assert ids.dtype == tf.int64 and mask.dtype == tf.int64


def test_wordpiece_normalize_pieces_gives_hf_normalized_text(case):
    """The literal normalizer (used to match normalized added tokens) equals ``normalize_str``."""
    texts = [t for t in random_texts([], n=400, seed=11) + adversarial_strings(case)]
    rows = common.decode_utf8(tf.constant([t.encode("utf-8") for t in texts]))
    got = tf.function(case.tok.normalize_pieces)(rows.with_row_splits_dtype(tf.int64)).to_list()
    norm = case.hf.backend_tokenizer.normalizer
    for text, cps in zip(texts, got):
        assert "".join(map(chr, cps)) == (norm.normalize_str(text) if norm else text), repr(text)


def test_wordpiece_attributes(case):
    assert case.tok.pad_id == case.hf.pad_token_id
    assert case.tok.vocab_size == len(case.hf)


def test_wordpiece_savedmodel_round_trip_keeps_ids(case, tmp_path):
    class Wrapper(tf.Module):
        def __init__(self, tok):
            super().__init__()
            self.tok = tok

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tokenize(self, strings):
            ids, mask = self.tok.tokenize(strings)
            return {"input_ids": ids, "attention_mask": mask}

    path = str(tmp_path / "tok")
    tf.saved_model.save(Wrapper(case.tok), path)
    loaded = tf.saved_model.load(path)
    texts = adversarial_strings(case)[:50] + ["Hello world!", "[MASK] café 中文", ""]
    out = loaded.tokenize(tf.constant([t.encode("utf-8") for t in texts]))
    exp_ids, exp_mask = case.reference(texts)
    np.testing.assert_array_equal(out["input_ids"].numpy(), exp_ids)
    np.testing.assert_array_equal(out["attention_mask"].numpy(), exp_mask)


# ------------------------------------------------------------------------- other tokenizer configs
def _hf_reference(hf, texts, max_len):
    enc = hf(list(texts), padding=True, truncation="longest_first", max_length=max_len)
    return np.array(enc["input_ids"], dtype=np.int64), np.array(enc["attention_mask"], dtype=np.int64)


@pytest.mark.parametrize("options", [
    dict(lowercase=True, strip_accents=False, chinese=True),
    dict(lowercase=False, strip_accents=True, chinese=True),
    dict(lowercase=True, strip_accents=None, chinese=False),
    dict(lowercase=False, strip_accents=None, chinese=False),
], ids=["lower-keep-accents", "cased-strip-accents", "no-chinese-chars", "cased-no-chinese"])
def test_wordpiece_matches_hf_for_normalizer_options(tmp_path, corpus, options):
    import tiny_models

    model_dir = tiny_models.make_bert(tmp_path, seed=5, **options)
    case = Case(model_dir)
    texts = list(corpus) + adversarial_strings(case)
    case.assert_same(texts)


def test_wordpiece_handles_normalized_single_word_and_rstrip_added_tokens(tiny_bert, corpus):
    """Added tokens with every HF flag: normalized (matched after lower-casing), single_word, rstrip."""
    from tokenizers import AddedToken

    spec = load_spec(tiny_bert)
    hf = load_hf_tokenizer(spec.transformer, tiny_bert)
    hf.add_tokens([
        AddedToken("Hello", normalized=True),  # matches "hello", "HELLO" after lower-casing
        AddedToken("foo", single_word=True, normalized=False),
        AddedToken("<x>", rstrip=True, lstrip=True, normalized=False),
        AddedToken("bar baz", normalized=False),
        AddedToken("qq", normalized=True, single_word=True),
    ])
    tok = WordPieceTokenizer(hf, 24)
    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
    texts = [
        "Hello world HELLO hello", "foo food afoo foo. (foo) foo_bar foo-bar fooé éfoo 1foo",
        "a <x>  b<x>c   <x>", "bar baz barbaz bar  baz", "qq QQ qqq aqq qq.", "Hellofoo<x>bar baz",
        "", "héllo Ĥello hello\u0301", "[MASK]Hello[SEP]foo",
    ] + list(corpus)
    for i in range(0, len(texts), 16):
        chunk = texts[i: i + 16]
        ids, mask = fn(tf.constant(chunk))
        exp_ids, exp_mask = _hf_reference(hf, chunk, 24)
        np.testing.assert_array_equal(ids.numpy(), exp_ids, err_msg=str(chunk))
        np.testing.assert_array_equal(mask.numpy(), exp_mask)


def test_wordpiece_mpnet_variant_with_normalized_mask_and_unk_token(tmp_path, corpus):
    import tiny_models

    model_dir = tiny_models.make_mpnet(tmp_path, unk_token="<unk>", mask_normalized=True, max_seq_length=32)
    case = Case(model_dir)
    case.assert_same(list(corpus) + adversarial_strings(case) + ["a <MASK> b", "x   <Mask>", "<mask><mask>"])


def test_wordpiece_matches_sentence_transformers_do_lower_case_on_a_cased_model(tiny_bert_cased_dense, tmp_path,
                                                                                corpus):
    """``do_lower_case: true`` in sentence_bert_config.json puts a Lowercase normalizer in front."""
    import json
    import shutil

    model_dir = tmp_path / "lower"
    shutil.copytree(tiny_bert_cased_dense, model_dir)
    cfg_path = model_dir / "sentence_bert_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["do_lower_case"] = True
    cfg_path.write_text(json.dumps(cfg))
    case = Case(model_dir)
    assert "Lowercase" in case.hf.backend_tokenizer.to_str()
    case.assert_same(list(corpus) + adversarial_strings(case))


@pytest.mark.parametrize("variant", ["nfd-lowercase", "nfkd", "whitespace-split", "no-normalizer"])
def test_wordpiece_matches_hf_for_other_normalizers_and_pre_tokenizers(tiny_bert, corpus, variant):
    """Per-character normalizers other than BertNormalizer (NFD keeps marks: canonical reordering
    matters), and the WhitespaceSplit pre-tokenizer."""
    from tokenizers import normalizers, pre_tokenizers

    spec = load_spec(tiny_bert)
    hf = load_hf_tokenizer(spec.transformer, tiny_bert)
    backend = hf.backend_tokenizer
    if variant == "nfd-lowercase":
        backend.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])
    elif variant == "nfkd":
        backend.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents()])
    elif variant == "whitespace-split":
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        backend.normalizer = None
    tok = WordPieceTokenizer(hf, 48)
    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
    marks = ["a\u0301\u0323b", "e\u0323\u0301", "\u1ea0\u0301", "o\u0328\u0304\u0301", "\u0915\u093c\u094d",
             "x\u05b0\u05b1\u05b4\u05b0", "q\u0345\u0301\u0300\u0316", "##ab # ## a##b"]
    texts = list(corpus) + marks + random_texts(["[MASK]", "[SEP]"], n=600, seed=7)
    for i in range(0, len(texts), 64):
        chunk = texts[i: i + 64]
        ids, mask = fn(tf.constant(chunk))
        exp_ids, exp_mask = _hf_reference(hf, chunk, 48)
        if ids.shape != exp_ids.shape or not (ids.numpy() == exp_ids).all():
            for j, t in enumerate(chunk):
                e, g = _hf_reference(hf, [t], 48)[0][0].tolist(), fn(tf.constant([t]))[0][0].numpy().tolist()
                assert g == e, f"{variant}: ids differ for {t!r}"
        np.testing.assert_array_equal(mask.numpy(), exp_mask)


def test_wordpiece_rejects_a_normalizer_that_is_not_per_character(tiny_bert):
    from tokenizers import normalizers

    from packager.errors import UnsupportedError

    spec = load_spec(tiny_bert)
    hf = load_hf_tokenizer(spec.transformer, tiny_bert)
    hf.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Replace("ab", "x"), normalizers.Lowercase()])
    with pytest.raises(UnsupportedError, match="unsupported WordPiece normalizer 'Replace'"):
        WordPieceTokenizer(hf, 32)


# ------------------------------------------------------------------------- shared helpers (common.py)
def test_white_space_table_matches_tokenizers_lstrip():
    """Every plausible white-space character, and a random sample of all others."""
    rng = np.random.default_rng(0)
    cps = common.all_codepoints()
    plausible = [c for c in range(0x10000) if not 0xD800 <= c < 0xE000
                 and (chr(c).isspace() or unicodedata.category(chr(c))[0] in "ZC")]
    probe = sorted(set(plausible) | set(rng.choice(cps, 30000).tolist()) | set(common.WHITE_SPACE))
    probed = common.probe_white_space(probe)
    expected = np.zeros(common.N_CODEPOINTS, dtype=np.int32)
    expected[common.WHITE_SPACE] = 1
    np.testing.assert_array_equal(np.flatnonzero(probed), np.flatnonzero(expected))


def test_range_table_round_trips_and_looks_up():
    values = np.zeros(common.N_CODEPOINTS, dtype=np.int32)
    values[0x41:0x5B] = 1
    values[0x4E00:0xA000] = 2
    values[0x10FFFF] = 3
    table = common.RangeTable(values)
    np.testing.assert_array_equal(table.as_array(), values)
    probe = np.array([0, 0x40, 0x41, 0x5A, 0x5B, 0x4E00, 0x9FFF, 0xA000, 0x10FFFE, 0x10FFFF], dtype=np.int32)
    np.testing.assert_array_equal(table.lookup(probe).numpy(), values[probe])


def test_codepoint_map_expands_and_deletes():
    m = common.CodepointMap({ord("ß"): [ord("s"), ord("s")], ord("x"): [], ord("A"): [ord("a")]})
    rows = tf.ragged.constant([[ord(c) for c in "Aßx!"], [], [ord("x")]], dtype=tf.int32)
    out = m.apply(rows).to_list()
    assert ["".join(map(chr, r)) for r in out] == ["ass!", "", ""]


@pytest.mark.parametrize("kind", ["TemplateProcessing", "BertProcessing", "RobertaProcessing", "Sequence", "none"])
def test_post_processor_reads_prefix_and_suffix(kind):
    pp = {
        "TemplateProcessing": {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}},
                                          {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                               "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]},
                                                  "[SEP]": {"id": "[SEP]", "ids": [102], "tokens": ["[SEP]"]}}},
        "BertProcessing": {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]},
        "RobertaProcessing": {"type": "RobertaProcessing", "sep": ["</s>", 102], "cls": ["<s>", 101]},
        "Sequence": {"type": "Sequence", "processors": [
            {"type": "ByteLevel"}, {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}]},
        "none": None,
    }[kind]
    post = common.PostProcessor.from_tokenizer_json({"post_processor": pp})
    assert (post.prefix, post.suffix) == (((), ()) if kind == "none" else ((101,), (102,)))


def test_post_processor_unknown_type_is_a_clear_error():
    from packager.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="unsupported tokenizer post_processor 'Weird'"):
        common.PostProcessor.from_tokenizer_json({"post_processor": {"type": "Weird"}})


def test_finalize_truncates_keeping_end_token_and_pads_right():
    post = common.PostProcessor((101,), (102,))
    ids = tf.ragged.constant([[1, 2, 3, 4, 5], [], [7]], dtype=tf.int64)
    got, mask = common.finalize(ids, post, max_seq_length=4, pad_id=0)
    np.testing.assert_array_equal(got.numpy(), [[101, 1, 2, 102], [101, 102, 0, 0], [101, 7, 102, 0]])
    np.testing.assert_array_equal(mask.numpy(), [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])


def test_combining_class_reordering_is_needed_only_for_rare_marks():
    """Sanity check of the assumption behind canonical reordering (Python's tables)."""
    non_mn = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000
              and unicodedata.combining(chr(c)) and unicodedata.category(chr(c)) != "Mn"]
    assert 0 < len(non_mn) < 100


def _with_extra_vocab(hf, extra: list[str]):
    """A copy of ``hf`` whose WordPiece vocabulary has ``extra`` tokens appended."""
    import copy
    import json

    from tokenizers import Tokenizer

    data = common.tokenizer_json(hf)
    vocab = data["model"]["vocab"]
    for tok in extra:
        vocab[tok] = len(vocab)
    out = copy.deepcopy(hf)
    out._tokenizer = Tokenizer.from_str(json.dumps(data))
    return out


def test_wordpiece_vocab_tokens_no_word_can_reach_are_dropped_even_when_over_tf_text_limit(tiny_bert):
    """Vocabularies trained on noisy text hold tokens like "##" + 128 emoji (512 bytes, over TF-Text's
    256-byte limit). No word can produce them (HF sends words over 100 characters to [UNK]), so the
    export must work and give HF's ids."""
    spec = load_spec(tiny_bert)
    hf = _with_extra_vocab(load_hf_tokenizer(spec.transformer, tiny_bert), ["##" + "😀" * 128, "😀" * 101, "😀" * 3])
    tok = WordPieceTokenizer(hf, 64)
    texts = ["😀" * 128, "a" + "😀" * 128, "😀" * 101, "😀" * 100, "😀" * 3, "x 😀😀😀 y", "plain words"]
    ids, mask = tok.tokenize(tf.constant(texts))
    exp_ids, exp_mask = _hf_reference(hf, texts, 64)
    np.testing.assert_array_equal(ids.numpy(), exp_ids)
    np.testing.assert_array_equal(mask.numpy(), exp_mask)
    assert hf.convert_tokens_to_ids("😀" * 3) in exp_ids  # the reachable extra token is really used


def test_wordpiece_reachable_vocab_token_over_tf_text_limit_is_a_clear_error(tiny_bert):
    from packager.errors import UnsupportedError

    spec = load_spec(tiny_bert)
    hf = _with_extra_vocab(load_hf_tokenizer(spec.transformer, tiny_bert), ["😀" * 70])  # 70 chars, 280 bytes
    with pytest.raises(UnsupportedError, match=r"280 UTF-8 bytes\) is longer than the 256 bytes"):
        WordPieceTokenizer(hf, 64)
