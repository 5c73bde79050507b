"""What the in-graph tokenizers learn from the Hugging Face tokenizer, with no TensorFlow.

``tokenizer.json`` (added tokens and their flags, the post-processor's special tokens), the WordPiece
components packager reproduces, and the per-code-point probes: every Unicode scalar value run through
HF's own normalizer / pre-tokenizer / regex once, at export time, so the graph follows the Unicode
tables inside ``tokenizers`` rather than TF's or Python's. Probes are cached on disk
(:func:`cached_probe`, under :func:`packager.settings.cache_dir`).
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np

from ..errors import UnsupportedError

MAX_CODEPOINT = 0x10FFFF


N_CODEPOINTS = MAX_CODEPOINT + 1


REPLACEMENT_CHAR = 0xFFFD


SURROGATES = range(0xD800, 0xE000)


# Rust `regex` `\s` (Unicode White_Space), which HF uses for added tokens' lstrip/rstrip.
# Stable since Unicode 6.3 (U+180E left it); the tests re-derive it from `tokenizers` itself.
WHITE_SPACE = (
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
    + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)


def all_codepoints() -> np.ndarray:
    """Every Unicode scalar value 0..0x10FFFF except the surrogates, as an int array (for probing)."""
    cps = np.arange(N_CODEPOINTS, dtype=np.int64)
    return cps[(cps < 0xD800) | (cps >= 0xE000)]


def tokenizer_json(hf_tokenizer) -> dict:
    """The backend ``tokenizers`` JSON of a transformers fast tokenizer (or a ``tokenizers.Tokenizer``)."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", hf_tokenizer)
    return json.loads(backend.to_str())


@dataclass(frozen=True)
class AddedToken:
    """One HF added token (special or not), as the backend stores it."""

    content: str
    id: int
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = True
    special: bool = False


def added_tokens(tokenizer_json_: dict) -> list[AddedToken]:
    """The added tokens of a tokenizer.json dict, in file order (empty contents dropped)."""
    out = []
    for t in tokenizer_json_.get("added_tokens") or []:
        if not t.get("content"):
            continue
        out.append(
            AddedToken(
                content=t["content"], id=int(t["id"]), single_word=bool(t.get("single_word", False)),
                lstrip=bool(t.get("lstrip", False)), rstrip=bool(t.get("rstrip", False)),
                normalized=bool(t.get("normalized", not t.get("special", False))),
                special=bool(t.get("special", False)),
            )
        )
    return out


@dataclass(frozen=True)
class PairTemplate:
    """Where the HF post-processor puts special tokens around a pair: ``prefix A middle B suffix``.

    Each part carries its token type ids (BERT: 0 up to the first ``[SEP]``, 1 after; RoBERTa: 0).
    """

    prefix: tuple[int, ...] = ()
    prefix_types: tuple[int, ...] = ()
    type_a: int = 0
    middle: tuple[int, ...] = ()
    middle_types: tuple[int, ...] = ()
    type_b: int = 1
    suffix: tuple[int, ...] = ()
    suffix_types: tuple[int, ...] = ()

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def assemble(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
        """Ids and token types of the pair (a reference for checks; the graph does it vectorised)."""
        ids = [*self.prefix, *a, *self.middle, *b, *self.suffix]
        types = [*self.prefix_types, *[self.type_a] * len(a), *self.middle_types, *[self.type_b] * len(b),
                 *self.suffix_types]
        return ids, types


@dataclass(frozen=True)
class PostProcessor:
    """Special tokens the HF post-processor puts around a sentence, and around a pair.

    Attributes:
        prefix: ids before a single sentence's content (e.g. ``[CLS]``).
        suffix: ids after it (e.g. ``[SEP]``).
        pair: the layout of a pair, or None when the post-processor defines none.
    """

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    pair: PairTemplate | None = None

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.suffix)

    @classmethod
    def from_tokenizer_json(cls, tj: dict) -> "PostProcessor":
        """Read ``post_processor``: TemplateProcessing, BertProcessing, RobertaProcessing, Sequence or none.

        Raises:
            UnsupportedError: any other post-processor, or a template that is not
                ``specials* $A specials*`` (pairs: ``specials* $A specials* $B specials*``).
        """
        return cls._from(tj.get("post_processor"))

    @classmethod
    def _from(cls, pp: dict | None) -> "PostProcessor":
        if not pp:
            return cls(pair=PairTemplate())
        kind = pp.get("type")
        if kind in ("BertProcessing", "RobertaProcessing"):
            c, s_ = int(pp["cls"][1]), int(pp["sep"][1])
            if kind == "BertProcessing":
                pair = PairTemplate((c,), (0,), 0, (s_,), (0,), 1, (s_,), (1,))
            else:  # <s> A </s></s> B </s>, every type 0 (tokenizers' roberta.rs)
                pair = PairTemplate((c,), (0,), 0, (s_, s_), (0, 0), 0, (s_,), (0,))
            return cls((c,), (s_,), pair)
        if kind == "ByteLevel":  # offsets only
            return cls(pair=PairTemplate())
        if kind == "Sequence":
            found = [cls._from(p) for p in pp.get("processors", [])]
            found = [f for f in found if f.n_special or (f.pair and f.pair.n_special)]
            if len(found) > 1:
                raise UnsupportedError("post_processor Sequence with more than one special-token processor")
            return found[0] if found else cls(pair=PairTemplate())
        if kind == "TemplateProcessing":
            specials = pp.get("special_tokens", {})
            (prefix, _), (suffix, _) = _template_parts(pp.get("single", []), specials, ("A",), "single")[0]
            pair = None
            if pp.get("pair"):
                parts, seqs = _template_parts(pp["pair"], specials, ("A", "B"), "pair")
                if seqs != ["A", "B"]:
                    raise UnsupportedError(f"unsupported TemplateProcessing pair template {pp.get('pair')}: "
                                           "packager needs specials, $A, specials, $B, specials in that order")
                (p_ids, p_t), (m_ids, m_t), (s_ids, s_t) = parts
                type_a, type_b = _sequence_types(pp["pair"])
                pair = PairTemplate(tuple(p_ids), tuple(p_t), type_a, tuple(m_ids), tuple(m_t), type_b,
                                    tuple(s_ids), tuple(s_t))
            return cls(tuple(prefix), tuple(suffix), pair)
        raise UnsupportedError(
            f"unsupported tokenizer post_processor {kind!r}. Supported: TemplateProcessing, BertProcessing, "
            "RobertaProcessing, ByteLevel, Sequence of those"
        )


def _sequence_types(items: list) -> list[int]:
    return [int(it["Sequence"].get("type_id", 0)) for it in items if "Sequence" in it]


def _template_parts(items: list, specials: dict, allowed: tuple[str, ...], which: str):
    """Split a TemplateProcessing template at its sequences: ``[(ids, types) before, between, after]``.

    Returns:
        ``(parts, sequence names in order)``; for a single template ``parts`` is ``[(prefix, types),
        (suffix, types)]`` and the names are ``["A"]`` (or None when there is no sequence).
    """
    parts: list[tuple[list[int], list[int]]] = [([], [])]
    seqs: list[str] = []
    for item in items:
        if "Sequence" in item:
            name = item["Sequence"].get("id", "A")
            if name not in allowed or name in seqs:
                raise UnsupportedError(f"unsupported TemplateProcessing {which} template {items}")
            seqs.append(name)
            parts.append(([], []))
        elif "SpecialToken" in item:
            name = item["SpecialToken"]["id"]
            if name not in specials:
                raise UnsupportedError(f"TemplateProcessing special token {name!r} has no ids")
            ids = [int(i) for i in specials[name]["ids"]]
            parts[-1][0].extend(ids)
            parts[-1][1].extend([int(item["SpecialToken"].get("type_id", 0))] * len(ids))
        else:
            raise UnsupportedError(f"unsupported TemplateProcessing item {item}")
    if which == "single":
        if not seqs:
            raise UnsupportedError("TemplateProcessing single template has no $A sequence")
        return [parts[0], parts[1]], seqs
    while len(parts) < 3:
        parts.append(([], []))
    return parts, seqs


def check_pair_template(hf_tokenizer, template: PairTemplate) -> None:
    """Compare the template with what the HF post-processor really does to a pair (at export time).

    Raises:
        UnsupportedError: the post-processor lays out pairs differently (ids or token types).
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(getattr(hf_tokenizer, "backend_tokenizer", hf_tokenizer).to_str())
    backend.no_padding()
    backend.no_truncation()
    for a_text, b_text in (("hello world", "a b c"), ("x", ""), ("", "second text here")):
        ea = backend.encode(a_text, add_special_tokens=False)
        eb = backend.encode(b_text, add_special_tokens=False)
        got = backend.post_process(ea, eb, add_special_tokens=True)
        want_ids, want_types = template.assemble(list(ea.ids), list(eb.ids))
        if list(got.ids) != want_ids or list(got.type_ids) != want_types:
            raise UnsupportedError(
                f"the tokenizer's post-processor lays out pairs as ids {list(got.ids)} / types {list(got.type_ids)}, "
                f"not as packager read it ({want_ids} / {want_types}); this pair layout is not supported")


def probe_word_chars() -> np.ndarray:
    """0/1 per code point: Rust regex ``\\w`` as the installed ``tokenizers`` sees it.

    Derived from ``tokenizers`` itself (a single_word added token "Z" matches in ``c + "Z"`` only
    when ``c`` is not a word character), so it follows HF's Unicode tables, not TF's or Python's.
    """
    from tokenizers import AddedToken as HFAddedToken
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.add_special_tokens([HFAddedToken("\U0010FFFD", single_word=True, normalized=False)])
    marker = tok.token_to_id("\U0010FFFD")
    cps = all_codepoints()
    out = np.zeros(N_CODEPOINTS, dtype=np.int32)
    chunk = 1 << 16
    for i in range(0, cps.size, chunk):
        part = cps[i: i + chunk]
        encs = tok.encode_batch([chr(int(c)) + "\U0010FFFD" for c in part], add_special_tokens=False)
        matched = np.array([marker in e.ids for e in encs])
        out[part] = (~matched).astype(np.int32)
    out[0x10FFFD] = 0
    return out


def probe_white_space(codepoints: Iterable[int] | None = None) -> np.ndarray:
    """0/1 per code point: Rust regex ``\\s`` as ``tokenizers``' lstrip sees it (for tests).

    Probes ``c + M`` for each code point c (all of them by default; about 15 s), where M is an
    lstrip added token: M swallows c exactly when c is white space.
    """
    from tokenizers import AddedToken as HFAddedToken
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    marker = "\U0010FFFD"
    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.add_special_tokens([HFAddedToken(marker, lstrip=True, normalized=False)])
    cps = all_codepoints() if codepoints is None else np.asarray(list(codepoints), dtype=np.int64)
    out = np.zeros(N_CODEPOINTS, dtype=np.int32)
    for i in range(0, cps.size, 1 << 16):
        part = cps[i: i + (1 << 16)]
        encs = tok.encode_batch([chr(int(c)) + marker for c in part], add_special_tokens=False)
        out[part] = np.array([len(e.ids) == 1 for e in encs], dtype=np.int32)
    out[0x10FFFD] = 0
    return out


_PROBE_CACHE: dict[str, object] = {}


def cached_probe(kind: str, component, fn):
    """``fn(component)``, memoised in memory and on disk by the component's JSON and the version
    of ``tokenizers`` (probing every code point costs seconds; the result never changes).

    The disk cache lives in ``$PACKAGER_CACHE`` or ``~/.cache/packager/probes``; set
    ``PACKAGER_CACHE=off`` to disable it. A corrupt or unreadable cache file is ignored.
    """
    import hashlib
    import os

    import tokenizers

    from ..settings import cache_dir

    desc = "null" if component is None else component.__getstate__()
    if isinstance(desc, bytes):
        desc = desc.decode("utf-8", "replace")
    key = hashlib.sha256(f"{kind}|{tokenizers.__version__}|{desc}".encode()).hexdigest()[:32]
    if key in _PROBE_CACHE:
        return _PROBE_CACHE[key]
    folder = cache_dir("probes")
    path = None if folder is None else folder / f"{kind}-{key}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                value = _from_npz(z)
            _PROBE_CACHE[key] = value
            return value
        except Exception:  # noqa: BLE001 - a broken cache file is just a miss
            pass
    value = fn(component)
    _PROBE_CACHE[key] = value
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez_compressed(tmp, **_to_npz(value))
            os.replace(tmp, path)
        except OSError:
            pass
    return value


def _to_npz(value) -> dict:
    if isinstance(value, np.ndarray):
        return {"array": value}
    return {"keys": value.keys, "splits": value.splits, "chars": value.chars}


def _from_npz(z):
    if "array" in z.files:
        return z["array"]
    return NormalizedTable(z["keys"], z["splits"], z["chars"])


_ALL_CHARS: list[str] = []


def all_chars() -> str:
    """Every code point except the surrogates, as one string (probing order = ``all_codepoints()``)."""
    if not _ALL_CHARS:
        _ALL_CHARS.append("".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, N_CODEPOINTS))))
    return _ALL_CHARS[0]


class NormalizedTable(NamedTuple):
    """The code points a normalizer changes, and what each becomes (numpy arrays).

    Attributes:
        keys: int64 ``[K]`` sorted code points whose normalized form differs from themselves.
        splits: int64 ``[K + 1]``: ``chars[splits[i]:splits[i+1]]`` is the normalized form of ``keys[i]``.
        chars: int32 code points of all normalized forms, concatenated.
    """

    keys: np.ndarray
    splits: np.ndarray
    chars: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.splits)

    def as_dict(self) -> dict[int, str]:
        text = "".join(map(chr, self.chars.tolist()))
        sp = self.splits.tolist()
        return {k: text[sp[i]: sp[i + 1]] for i, k in enumerate(self.keys.tolist())}


def normalize_all(norm, separator: str = "0", chunk: int = 8192) -> tuple[list[int], list[str]]:
    """``(code points, outputs)`` of every code point ``c`` whose ``norm(chr(c))`` differs from it.

    Calls ``norm`` on chunks of code points joined by ``separator`` (a starter that every supported
    normalizer keeps as is, so nothing reorders or composes across it), and falls back to one call
    per code point for any chunk that does not split back cleanly.
    """
    keys: list[int] = []
    outs: list[str] = []
    chars = all_chars()
    sep_ok = norm(separator * 3) == separator * 3
    for i in range(0, len(chars), chunk):
        part = chars[i: i + chunk]
        parts = norm(separator + separator.join(part) + separator).split(separator)[1:-1] if sep_ok else None
        if parts is None or len(parts) != len(part):
            parts = [norm(ch) for ch in part]
        for ch, p in zip(part, parts):
            if p != ch:
                keys.append(ord(ch))
                outs.append(p)
    return keys, outs


def probe_normalizer(normalizer, chunk: int = 8192, separator: str = "0") -> NormalizedTable:
    """``normalizer.normalize_str(chr(c))`` for every code point c (surrogates skipped), fast.

    Calls the HF normalizer on chunks of code points joined by ``separator`` (a starter that every
    supported normalizer keeps as is, so nothing reorders or composes across it), and falls back to
    one call per code point for any chunk that does not split back cleanly. ``None`` = identity.

    Returns:
        a :class:`NormalizedTable` of every code point whose output differs from itself.
    """
    keys, outs = normalize_all(normalizer.normalize_str, separator, chunk) if normalizer is not None else ([], [])
    lens = np.array([len(o) for o in outs], dtype=np.int64)
    return NormalizedTable(
        np.array(keys, dtype=np.int64),
        np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        np.array([ord(c) for o in outs for c in o], dtype=np.int32),
    )


def probe_pretokenizer(pre_tokenizer, chunk: int = 8192) -> np.ndarray:
    """Per code point, how an HF pre-tokenizer treats it inside a word: 0 = part of the word,
    1 = a separator that is dropped (whitespace), 2 = a separate one-character word (punctuation).

    Runs all code points, in order, through the pre-tokenizer (chunks of ``chunk``): a code point
    covered by no piece is a separator; one inside a longer piece is a word character; a piece of
    one character is ambiguous (punctuation, or a letter between two separators) and is probed
    again as ``"a" + c + "a"``. ``None`` (no pre-tokenizer) gives all zeros.
    """
    out = np.zeros(N_CODEPOINTS, dtype=np.int32)
    if pre_tokenizer is None:
        return out
    cps = all_codepoints()
    chars = all_chars()
    covered = np.zeros(cps.size, dtype=np.int64)
    for i in range(0, len(chars), chunk):
        for _, (s, e) in pre_tokenizer.pre_tokenize_str(chars[i: i + chunk]):
            covered[i + s: i + e] = e - s
    cls = np.where(covered == 0, 1, 0)
    for j in np.flatnonzero(covered == 1):
        pieces = pre_tokenizer.pre_tokenize_str("a" + chars[j] + "a")
        cls[j] = {1: 0, 2: 1, 3: 2}.get(len(pieces), -1)
        if cls[j] < 0:
            raise UnsupportedError(f"pre-tokenizer behaves unexpectedly around U+{int(cps[j]):04X}: {pieces}")
    out[cps] = cls
    return out


# ------------------------------------------------------------------------------------ WordPiece components
SUPPORTED_NORMALIZERS = ("BertNormalizer", "Lowercase", "NFD", "NFKD", "StripAccents", "Sequence")


SUPPORTED_PRE_TOKENIZERS = ("BertPreTokenizer", "WhitespaceSplit")


def check_wordpiece_normalizer(norm: dict | None) -> bool:
    """Raise for a normalizer that is not per-character; return whether it decomposes (NFD/NFKD)."""
    if not norm:
        return False
    kind = norm.get("type")
    if kind not in SUPPORTED_NORMALIZERS:
        raise UnsupportedError(
            f"unsupported WordPiece normalizer {kind!r}. Supported: {', '.join(SUPPORTED_NORMALIZERS)}")
    if kind == "Sequence":
        return any([check_wordpiece_normalizer(n) for n in norm.get("normalizers", [])])
    if kind == "BertNormalizer":
        strip = norm.get("strip_accents")
        return bool(strip) or (strip is None and bool(norm.get("lowercase", True)))
    return kind in ("NFD", "NFKD")


def check_wordpiece_pre_tokenizer(pre: dict | None) -> None:
    if not pre:
        return
    kind = pre.get("type")
    if kind == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        return check_wordpiece_pre_tokenizer(pre["pretokenizers"][0])
    if kind not in SUPPORTED_PRE_TOKENIZERS:
        raise UnsupportedError(
            f"unsupported WordPiece pre-tokenizer {kind!r}. Supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}")


# TF-Text's FastWordpieceTokenizer refuses vocabulary tokens longer than this (UTF-8 bytes, suffix
# indicator excluded).
FAST_WORDPIECE_MAX_TOKEN_BYTES = 256


def usable_vocab(tokens: list, prefix: str, max_chars: int, keep: str) -> list[str]:
    """The vocabulary as FastWordpieceTokenizer gets it: id order kept, unusable slots filled.

    * ids no token has get a filler that no word can equal (words never contain spaces);
    * a token longer than ``max_chars`` characters (prefix excluded) can never be produced: Hugging
      Face maps every word longer than ``max_input_chars_per_word`` to the unknown token, and a
      word holding that token would be longer still. It gets a filler too (real vocabularies
      trained on noisy text hold such tokens, e.g. long emoji runs, which TF-Text would refuse);
    * a token that can be produced but is longer than TF-Text's limit cannot be represented: a
      clear error, rather than a tokenizer that silently differs.
    """
    out = []
    for i, tok in enumerate(tokens):
        core = tok[len(prefix):] if tok is not None and prefix and tok.startswith(prefix) else tok
        if tok is None or (tok != keep and len(core) > max_chars):
            out.append(f"  unused {i} ")
            continue
        if len(core.encode("utf-8")) > FAST_WORDPIECE_MAX_TOKEN_BYTES:
            raise UnsupportedError(
                f"WordPiece vocabulary token {i} ({tok[:40]!r}..., {len(core.encode('utf-8'))} UTF-8 bytes) is longer "
                f"than the {FAST_WORDPIECE_MAX_TOKEN_BYTES} bytes TF-Text's FastWordpieceTokenizer supports")
        out.append(tok)
    return out


_COMBINING: list[np.ndarray] = []


def combining_classes() -> np.ndarray:
    """Canonical combining class per code point (Python's Unicode tables), int32 [0x110000]."""
    if not _COMBINING:
        out = np.zeros(N_CODEPOINTS, dtype=np.int32)
        comb = unicodedata.combining
        for c in range(N_CODEPOINTS):
            if 0xD800 <= c < 0xE000:
                continue
            v = comb(chr(c))
            if v:
                out[c] = v
        _COMBINING.append(out)
    return _COMBINING[0]
