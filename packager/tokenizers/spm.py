"""SentencePiece without TensorFlow: the model proto, the Precompiled charsmap, grapheme properties.

What :mod:`packager.tokenizers.sentencepiece` builds its graph from, testable on its own: the
``sentencepiece.ModelProto`` of a shipped ``.model`` file (checked against the HF vocabulary), the
rules decoded from a Precompiled charsmap, the UAX #29 grapheme-break properties corrected by probing
HF's normalizer, and the steps of the HF normalizer / pre-tokenizer the graph reproduces.
"""
from __future__ import annotations

import json
import logging
import struct
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UnsupportedError
from .hf import N_CODEPOINTS, WHITE_SPACE, cached_probe

log = logging.getLogger(__name__)


SPM_FILES = ("sentencepiece.bpe.model", "spiece.model", "sentencepiece.model")


# piece types of sentencepiece_model.proto
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# HF's Precompiled normalizer maps a whole grapheme only when it is shorter than this many bytes
GRAPHEME_MAX_BYTES = 6


def model_proto_class():
    """The ``sentencepiece.ModelProto`` message class, whichever module can provide it.

    ``sentencepiece``'s own ``sentencepiece_model_pb2`` needs protobuf >= 7 while TF pins 6, so fall
    back to the copy inside transformers, or to a class already registered in the default pool.
    """
    from google.protobuf import descriptor_pool, message_factory

    try:
        desc = descriptor_pool.Default().FindMessageTypeByName("sentencepiece.ModelProto")
        return message_factory.GetMessageClass(desc)
    except KeyError:
        pass
    errors = []
    for name in ("sentencepiece.sentencepiece_model_pb2", "transformers.utils.sentencepiece_model_pb2_new",
                 "transformers.utils.sentencepiece_model_pb2"):
        try:
            import importlib

            return importlib.import_module(name).ModelProto
        except Exception as e:  # noqa: BLE001 - version clashes surface as many exception types
            errors.append(f"{name}: {e}")
    raise UnsupportedError("cannot load the SentencePiece model proto: " + "; ".join(errors))


def check_spm_file(spm_file: Path | None, vocab: Sequence[tuple[str, float]]) -> str:
    """Check a shipped ``sentencepiece.bpe.model`` against the HF Unigram vocab.

    The graph follows the HF vocab (that is what sentence-transformers runs). The spm file must
    hold the same pieces with the same scores, its ids mapping to HF ids through the table built
    from the two vocabularies (fairseq: spm id + 1, ``<unk>`` 0 -> 3, ``<s>`` 1 -> 0, ``</s>`` 2 -> 2).

    Returns:
        ``"sentencepiece.bpe.model"`` (its name) when it is present and consistent,
        else ``"tokenizer.json"``.
    """
    if spm_file is None or not spm_file.is_file():
        return "tokenizer.json"
    proto = model_proto_class()()
    proto.ParseFromString(spm_file.read_bytes())
    hf_index = {p: i for i, (p, _) in enumerate(vocab)}
    problem = _spm_file_mismatch(proto, vocab, hf_index)
    if problem:
        log.warning("%s does not match the HF vocab (%s); following tokenizer.json", spm_file.name, problem)
        return "tokenizer.json"
    return spm_file.name


def spm_to_hf_ids(spm_file: Path, vocab: Sequence[tuple[str, float]]) -> np.ndarray:
    """The id table from a SentencePiece model to the HF vocab (by piece; unknown -> -1)."""
    proto = model_proto_class()()
    proto.ParseFromString(spm_file.read_bytes())
    hf_index = {p: i for i, (p, _) in enumerate(vocab)}
    return np.array([hf_index.get(p.piece, -1) for p in proto.pieces], dtype=np.int64)


def _spm_file_mismatch(proto, vocab, hf_index) -> str | None:
    """Why a shipped spm model cannot stand for the HF vocab, or None when it can."""
    normal = [p for p in proto.pieces if p.type in (NORMAL, USER_DEFINED)]
    if not normal:
        return "no normal pieces"
    missing = [p.piece for p in normal if p.piece not in hf_index]
    if missing:
        return f"{len(missing)} pieces not in the HF vocab, e.g. {missing[0]!r}"
    off = [p.piece for p in normal if np.float32(vocab[hf_index[p.piece]][1]) != np.float32(p.score)]
    if off:
        return f"{len(off)} scores differ, e.g. {off[0]!r}"
    return None


@lru_cache(maxsize=8)
def decode_charsmap(blob: bytes) -> dict[str, str]:
    """All rules of a SentencePiece ``precompiled_charsmap``: ``{source: replacement}``.

    The blob is a little-endian u32 trie size, a Darts-clone double array, then the replacement
    strings (NUL-terminated). The trie is walked breadth first, all nodes of a level at once.
    """
    if len(blob) < 4:
        return {}
    (size,) = struct.unpack_from("<I", blob, 0)
    units = np.frombuffer(blob, dtype="<u4", count=size // 4, offset=4).astype(np.int64)
    normalized = np.frombuffer(blob[4 + size:], dtype=np.uint8)
    n = units.size

    def base_of(pos):
        u = units[pos]
        return pos ^ ((u >> 10) << ((u & (1 << 9)) >> 6))

    labels = units & ((1 << 31) | 0xFF)
    arange = np.arange(1, 256, dtype=np.int64)
    pos_l, parent_l, byte_l = [np.zeros(1, np.int64)], [np.full(1, -1, np.int64)], [np.zeros(1, np.int64)]
    frontier, frontier_id, next_id = np.zeros(1, np.int64), np.zeros(1, np.int64), 1
    while frontier.size:
        found_pos, found_parent, found_byte = [], [], []
        for i in range(0, frontier.size, 4096):
            base = base_of(frontier[i:i + 4096])
            cand = base[:, None] ^ arange[None, :]
            ok = (cand < n) & (labels[np.minimum(cand, n - 1)] == arange[None, :])
            r, c = np.nonzero(ok)
            found_pos.append(cand[r, c])
            found_parent.append(frontier_id[i:i + 4096][r])
            found_byte.append(arange[c])
        frontier = np.concatenate(found_pos)
        frontier_id = np.arange(next_id, next_id + frontier.size)
        next_id += frontier.size
        pos_l.append(frontier)
        parent_l.append(np.concatenate(found_parent))
        byte_l.append(np.concatenate(found_byte))
    pos, parent, byte = np.concatenate(pos_l), np.concatenate(parent_l), np.concatenate(byte_l)
    leaf = np.flatnonzero(((units[pos] >> 8) & 1).astype(bool))
    leaf = leaf[leaf > 0]
    value = units[base_of(pos[leaf])] & ((1 << 31) - 1)
    nul = np.flatnonzero(normalized == 0)
    value_end = nul[np.searchsorted(nul, value)]
    # key bytes: walk up to the root, all leaves at once (collected right to left)
    cols = []
    node = leaf.copy()
    while (node > 0).any():
        cols.append(np.where(node > 0, byte[node], 0).astype(np.uint8))
        node = np.where(node > 0, parent[node], 0)
    mat = np.stack(cols[::-1], axis=1) if cols else np.zeros((leaf.size, 0), np.uint8)
    # right-aligned with leading zero bytes (never part of a key: label 0 is the leaf marker)
    raw = normalized.tobytes()
    out: dict[str, str] = {}
    for row, start, end in zip(_rows(mat), value.tolist(),
                               value_end.tolist()):
        try:
            out[row.lstrip(b"\0").decode("utf-8")] = raw[start:end].decode("utf-8")
        except UnicodeDecodeError:
            pass  # a key that is not whole characters can never match decoded text
    return out


def _rows(mat: np.ndarray) -> list[bytes]:
    width = mat.shape[1]
    flat = mat.tobytes()
    return [flat[i:i + width] for i in range(0, len(flat), width)] if width else [b""] * mat.shape[0]


def pack_utf8(s: str) -> int:
    """The int64 key the graph computes for a short string: UTF-8 length << 40 | its bytes."""
    b = s.encode("utf-8")
    return (len(b) << 40) | int.from_bytes(b, "big")


# Grapheme_Cluster_Break values (low 4 bits of a property), then flags
OTHER, CR, LF, CONTROL, EXTEND, ZWJ, RI, PREPEND, SPACING_MARK, L, V, T, LV, LVT = range(14)


GCB_NAMES = {CR: "CR", LF: "LF", CONTROL: "Control", EXTEND: "Extend", ZWJ: "ZWJ", RI: "Regional_Indicator",
             PREPEND: "Prepend", SPACING_MARK: "SpacingMark", L: "L", V: "V", T: "T", LV: "LV", LVT: "LVT"}


EXT_PICT = 1 << 4


INCB_SHIFT = 5  # 2 bits: 0 none, 1 Consonant, 2 Extend, 3 Linker


INCB_CONSONANT, INCB_EXTEND, INCB_LINKER = 1, 2, 3


@lru_cache(maxsize=1)
def _regex_properties() -> np.ndarray:
    """Grapheme-break properties per code point from the ``regex`` package's Unicode tables."""
    import regex

    every = "".join(map(chr, range(N_CODEPOINTS)))
    props = np.zeros(N_CODEPOINTS, dtype=np.int32)

    def positions(pattern):
        return np.fromiter((m.start() for m in regex.finditer(pattern, every)), dtype=np.int64)

    for value, name in GCB_NAMES.items():
        props[positions(r"\p{Grapheme_Cluster_Break=%s}" % name)] = value
    props[positions(r"\p{Extended_Pictographic}")] |= EXT_PICT
    for value, name in ((INCB_CONSONANT, "Consonant"), (INCB_EXTEND, "Extend"), (INCB_LINKER, "Linker")):
        try:
            props[positions(r"\p{InCB=%s}" % name)] |= value << INCB_SHIFT
        except Exception:  # noqa: BLE001 - older regex without InCB: HF probes below still apply
            break
    return props


def _assigned_probe_set() -> np.ndarray:
    """Code points whose break properties are worth probing: assigned, not private use, not Han or
    Hangul syllables (their properties are fixed), not surrogates."""
    import regex

    every = "".join(map(chr, range(N_CODEPOINTS)))
    skip = np.zeros(N_CODEPOINTS, dtype=bool)
    for pattern in (r"\p{Cn}", r"\p{Co}", r"\p{Cs}", r"\p{Ideographic}", r"\p{Hangul_Syllable_Type=LV}",
                    r"\p{Hangul_Syllable_Type=LVT}"):
        for m in regex.finditer(pattern + "+", every):
            skip[m.start():m.end()] = True
    return np.flatnonzero(~skip)


def grapheme_properties(normalize, keys: dict[str, str]) -> np.ndarray:  # noqa: C901
    """Per-code-point grapheme-break properties, as HF's Precompiled normalizer observes them.

    Starts from the ``regex`` tables, then asks HF's own normalizer (``normalize``: str -> str)
    about every property that can change its output, so a Unicode version gap between ``regex``
    and the ``unicode-segmentation`` crate inside ``tokenizers`` cannot leak into the graph:

    * extends the previous grapheme (GB9/GB9a) - ``"ª" + c`` loses ``c``;
    * Prepend (GB9b) - ``c + "ª\\u0301"`` keeps the accent;
    * Extended_Pictographic before ZWJ (GB11) - ``c + ZWJ + "™\\u0301"`` keeps the accent;
    * InCB Consonant / Linker / Extend (GB9c), with Devanagari probes.

    Probes need their marker keys in the charsmap (nmt_nfkc has them); without them the
    ``regex`` table is used as is.
    """
    props = _regex_properties().copy()
    gcb = props & 15
    probe = _assigned_probe_set()
    k2, acc, zwj, tm = "\u00aa", "\u0301", "\u200d", "\u2122"
    if not (k2 in keys and tm in keys and normalize(k2 + acc) == keys[k2] and normalize(tm + acc) == keys[tm]):
        log.info("charsmap lacks the probe keys; grapheme properties from the regex tables only")
        return props

    def keeps_accent(cps, make):
        return np.array([normalize(make(chr(c))).endswith(acc) for c in cps], dtype=bool)

    # GB9/GB9a: c joins the grapheme before it (observable for 2- and 3-byte c after a 2-byte key)
    bmp = probe[(probe >= 0x80) & (probe < 0x10000) & ~np.isin(probe, [0x0D, 0x0A])]
    single = np.array([normalize(chr(c)) for c in bmp], dtype=object)
    joined = np.array([normalize(k2 + chr(c)) == keys[k2] for c in bmp], dtype=bool)
    observable = single != ""
    is_ext = np.isin(gcb[bmp], [EXTEND, ZWJ, SPACING_MARK])
    fix_on = bmp[observable & joined & ~is_ext]
    fix_off = bmp[observable & ~joined & is_ext]
    props[fix_on] = (props[fix_on] & ~15) | EXTEND
    props[fix_off] = (props[fix_off] & ~15) | OTHER
    gcb = props & 15
    # GB9b: Prepend
    cand = probe[~np.isin(gcb[probe], [CR, LF, CONTROL, EXTEND, ZWJ, SPACING_MARK])]
    pre = keeps_accent(cand, lambda c: c + k2 + acc)
    props[cand[pre & (gcb[cand] != PREPEND)]] = (props[cand[pre & (gcb[cand] != PREPEND)]] & ~15) | PREPEND
    wrong = cand[~pre & (gcb[cand] == PREPEND)]
    props[wrong] = (props[wrong] & ~15) | OTHER
    gcb = props & 15
    # GB11: Extended_Pictographic (the side before ZWJ; the same property on both sides)
    cand = probe[~np.isin(gcb[probe], [CR, LF, CONTROL, EXTEND, ZWJ, SPACING_MARK, PREPEND])]
    ep = keeps_accent(cand, lambda c: c + zwj + tm + acc)
    props[cand] = np.where(ep, props[cand] | EXT_PICT, props[cand] & ~EXT_PICT)
    # GB9c: Indic conjunct break, probed with Devanagari KA, VIRAMA and the key QA (U+0958..095F)
    ka, virama, qa = "\u0915", "\u094d", "\u095b"
    if qa in keys and normalize(qa + acc) == keys[qa] and normalize(ka + virama + qa + acc).endswith(acc):
        incb = np.zeros(N_CODEPOINTS, dtype=np.int32)
        cons = keeps_accent(probe, lambda c: c + virama + qa + acc)
        ext_like = probe[np.isin(gcb[probe], [EXTEND, ZWJ])]
        linker = keeps_accent(ext_like, lambda c: ka + c + qa + acc)
        extend = keeps_accent(ext_like, lambda c: ka + c + virama + qa + acc)
        incb[ext_like[extend]] = INCB_EXTEND
        incb[ext_like[linker]] = INCB_LINKER
        incb[probe[cons]] = INCB_CONSONANT
        # code points not probed keep the regex value
        probed = np.zeros(N_CODEPOINTS, dtype=bool)
        probed[probe] = True
        old = (props >> INCB_SHIFT) & 3
        new = np.where(probed, incb, old)
        props = (props & ~(3 << INCB_SHIFT)) | (new << INCB_SHIFT)
    return props


def probed_properties(charsmap: bytes) -> np.ndarray:
    """:func:`grapheme_properties` for a charsmap, cached in memory and on disk (common.cached_probe)
    by the charsmap and the versions of ``tokenizers`` and ``regex``."""
    import regex
    from tokenizers import normalizers

    return cached_probe(f"grapheme_props_regex{regex.__version__}", normalizers.Precompiled(charsmap),
                        lambda norm: grapheme_properties(norm.normalize_str, decode_charsmap(charsmap)))


def lowercase_map() -> dict[int, list[int]]:
    """HF ``Lowercase`` (Rust ``char::to_lowercase``) per code point, probed from ``tokenizers``."""
    from tokenizers import normalizers

    lower = normalizers.Lowercase()
    cps = [c for c in range(N_CODEPOINTS) if not 0xD800 <= c < 0xE000 and c != 0]
    text = "\x00".join(map(chr, cps))
    parts = lower.normalize_str(text).split("\x00")
    return {c: [ord(x) for x in p] for c, p in zip(cps, parts) if p != chr(c)}


def normalizer_steps(normalizer: dict | None) -> list[tuple]:
    """The HF normalizer as a list of supported steps, or UnsupportedError."""
    if not normalizer:
        return []
    kind = normalizer.get("type")
    if kind == "Sequence":
        return [s for n in normalizer.get("normalizers", []) for s in normalizer_steps(n)]
    if kind == "Precompiled":
        import base64

        blob = normalizer.get("precompiled_charsmap")
        if not blob:
            return []
        return [("precompiled", base64.b64decode(blob) if isinstance(blob, str) else bytes(blob))]
    if kind == "Replace":
        pattern = normalizer.get("pattern", {})
        content = normalizer.get("content")
        if pattern.get("Regex") == " {2,}" and content == " ":
            return [("collapse_spaces",)]
    if kind == "Lowercase":
        return [("lowercase",)]
    raise UnsupportedError(
        f"unsupported normalizer for a Unigram tokenizer: {json.dumps(normalizer)[:200]}. Supported: "
        "Precompiled, Replace(' {2,}' -> ' '), Lowercase, Sequence of those"
    )


def pre_tokenizer_steps(pre: dict | None) -> tuple[bool, dict | None]:
    """``(whitespace_split, metaspace config or None)`` or UnsupportedError."""
    if not pre:
        return False, None
    kinds = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    names = [p.get("type") for p in kinds]
    if names == ["WhitespaceSplit", "Metaspace"] or names == ["Metaspace"] or names == ["WhitespaceSplit"]:
        ms = kinds[-1] if names[-1] == "Metaspace" else None
        if ms is not None:
            scheme = ms.get("prepend_scheme")
            if scheme is None:  # tokenizers < 0.14 files
                scheme = "always" if ms.get("add_prefix_space", True) else "never"
            ms = {"replacement": ms.get("replacement", "\u2581"), "prepend_scheme": scheme,
                  "split": bool(ms.get("split", True))}
            if len(ms["replacement"]) != 1 or scheme not in ("always", "first", "never"):
                raise UnsupportedError(f"unsupported Metaspace settings {ms}")
        return names[0] == "WhitespaceSplit", ms
    raise UnsupportedError(
        f"unsupported pre_tokenizer for a Unigram tokenizer: {names}. Supported: Metaspace, WhitespaceSplit, "
        "WhitespaceSplit then Metaspace")


# ------------------------------------------------------------------------------------ word cache
def model_only_tokenizer(tokenizer_json: dict):
    """A ``tokenizers.Tokenizer`` that runs only the Unigram model on its input (one pre-token)."""
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram

    m = tokenizer_json["model"]
    return Tokenizer(Unigram([(str(p), float(sc)) for p, sc in m["vocab"]], m.get("unk_id"),
                             bool(m.get("byte_fallback", False))))


def word_cache(tokenizer_json: dict, whitespace_split: bool, metaspace: dict | None,
               limit: int | None = None) -> tuple[list[str], list[list[int]]]:
    """Pre-tokens that are whole vocab pieces, and HF's Unigram ids for each (its Viterbi, run here once).

    A pre-token's ids depend on the pre-token alone, so the graph can look them up. Only pieces that
    can be pre-tokens are kept: no white space when the pre-tokenizer splits on it (no space when
    Metaspace replaces it); with a splitting
    Metaspace, the replacement only first, and first always when it is prepended to every word.
    ``limit``: keep the best-scored pieces only.
    """
    vocab = tokenizer_json["model"]["vocab"]
    repl = metaspace["replacement"] if metaspace else None
    ws = set(chr(c) for c in WHITE_SPACE) if whitespace_split else ({" "} if metaspace else set())
    always = bool(metaspace) and metaspace["prepend_scheme"] == "always" and metaspace["split"]
    keys = []
    seen = set()
    for piece, score in sorted(vocab, key=lambda ps: -float(ps[1])):
        if not piece or piece in seen or any(c in ws for c in piece):
            continue
        if repl is not None and metaspace["split"] and repl in piece[1:]:
            continue
        if always and not piece.startswith(repl):
            continue
        seen.add(piece)
        keys.append(piece)
        if limit is not None and len(keys) >= limit:
            break
    model = model_only_tokenizer(tokenizer_json).model
    return keys, [[t.id for t in model.tokenize(k)] for k in keys]
