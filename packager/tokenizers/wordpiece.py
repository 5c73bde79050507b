"""HF-exact WordPiece tokenizer in the graph (BERT, DistilBERT, MPNet and other WordPiece models).

What the HF fast tokenizer does, and how the graph reproduces it:

1. Added tokens (``[CLS]``, ``[MASK]``, ``<mask>`` with lstrip, ...) are split out of the raw text
   first: :class:`~packager.tokenizers.common.InGraphTokenizer`.
2. The normalizer (``BertNormalizer``: clean text, pad CJK ideographs with spaces, NFD + drop
   accents, lower-case; or a ``Sequence`` of ``Lowercase``/``NFD``/``StripAccents``...) acts on each
   character on its own, so at export time every code point 0..0x10FFFF is run through the HF
   normalizer itself and the result is stored compactly:

   * a range table of classes: keep / delete / pad-with-spaces (CJK) / mapped;
   * a hash table for the few thousand "mapped" code points (lower-casing, NFD, whitespace -> " ").

   Deriving the tables from HF (instead of trusting TF's ``\\p{..}`` classes, ``tf.strings.lower``
   or ``normalize_utf8``) is what makes the result exact: the Unicode version inside
   ``tokenizers`` differs from TF's, ``tf.strings.lower`` maps a final Σ to ς and stops at NUL,
   and TF's case folding does compatibility mappings HF does not do.
   Where the normalizer decomposes (NFD), combining marks that survive are put in canonical order
   (a stable sort by combining class inside each run of non-starters), as HF's NFD does.
3. The pre-tokenizer (``BertPreTokenizer``: split on whitespace, isolate punctuation) is probed
   the same way, per code point: part of a word / dropped separator / one-character word.
4. Each word goes through ``text.FastWordpieceTokenizer(no_pretokenization=True)``; words of more
   than ``max_input_chars_per_word`` characters (HF counts characters, TF would count bytes)
   become the unknown token without being tokenized.
5. Truncation, the post-processor's special tokens and padding: ``common.finalize``.

Invalid UTF-8 becomes U+FFFD (like ``bytes.decode("utf-8", "replace")``); see ``common``.

Only core TF ops plus ``FastWordpieceTokenizeWithOffsets`` (TF-Text >= 2.12) are used.
"""
from __future__ import annotations

import unicodedata

import numpy as np
import tensorflow as tf

from ..errors import UnsupportedError
from .common import (
    N_CODEPOINTS,
    CodepointMap,
    InGraphTokenizer,
    RangeTable,
    cached_probe,
    repeat_range,
    probe_normalizer,
    probe_pretokenizer,
)

# normalizer classes (per input code point)
KEEP, DELETE, PAD, MAPPED = 0, 1, 2, 3
# pre-tokenizer classes (per normalized code point), low 2 bits; combining class above them
WORD, SPACE, ISOLATE = 0, 1, 2

SUPPORTED_NORMALIZERS = ("BertNormalizer", "Lowercase", "NFD", "NFKD", "StripAccents", "Sequence")
SUPPORTED_PRE_TOKENIZERS = ("BertPreTokenizer", "WhitespaceSplit")


def _check_normalizer(norm: dict | None) -> bool:
    """Raise for a normalizer that is not per-character; return whether it decomposes (NFD/NFKD)."""
    if not norm:
        return False
    kind = norm.get("type")
    if kind not in SUPPORTED_NORMALIZERS:
        raise UnsupportedError(
            f"unsupported WordPiece normalizer {kind!r}. Supported: {', '.join(SUPPORTED_NORMALIZERS)}")
    if kind == "Sequence":
        return any([_check_normalizer(n) for n in norm.get("normalizers", [])])
    if kind == "BertNormalizer":
        strip = norm.get("strip_accents")
        return bool(strip) or (strip is None and bool(norm.get("lowercase", True)))
    return kind in ("NFD", "NFKD")


def _check_pre_tokenizer(pre: dict | None) -> None:
    if not pre:
        return
    kind = pre.get("type")
    if kind == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        return _check_pre_tokenizer(pre["pretokenizers"][0])
    if kind not in SUPPORTED_PRE_TOKENIZERS:
        raise UnsupportedError(
            f"unsupported WordPiece pre-tokenizer {kind!r}. Supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}")


class WordPieceTokenizer(InGraphTokenizer):
    """The HF WordPiece fast tokenizer, in the graph.

    Args:
        hf_tokenizer: the transformers fast tokenizer (as ``modules.transformer.load_hf_tokenizer``
            configures it). Its backend is probed once here (about a few seconds).
        max_seq_length: truncation length, special tokens included.

    Example:
        >>> tok = WordPieceTokenizer(hf_tok, 256)
        >>> input_ids, attention_mask = tok.tokenize(tf.constant(["Hello world!"]))
    """

    empty_pieces_ok = True  # an empty piece has no word, hence no ids

    def __init__(self, hf_tokenizer, max_seq_length: int):
        super().__init__(hf_tokenizer, max_seq_length, name="wordpiece_tokenizer")
        import tensorflow_text as text

        tj = self.tokenizer_json
        model = tj["model"]
        if model.get("type") != "WordPiece":
            raise UnsupportedError(f"WordPieceTokenizer needs a WordPiece model, got {model.get('type')!r}")
        self.decomposes = _check_normalizer(tj.get("normalizer"))
        _check_pre_tokenizer(tj.get("pre_tokenizer"))
        backend = hf_tokenizer.backend_tokenizer

        # -- normalizer, probed per code point
        probed = cached_probe("normalizer", backend.normalizer, probe_normalizer)
        keys, lens, starts = probed.keys, probed.lengths, probed.splits[:-1]
        chars = probed.chars
        at = lambda off: chars[np.minimum(starts + off, max(chars.size - 1, 0))] if chars.size else np.zeros_like(keys)
        is_pad = (lens == 3) & (at(0) == 32) & (at(1) == keys) & (at(2) == 32)
        is_del = lens == 0
        is_map = ~is_pad & ~is_del
        classes = np.zeros(N_CODEPOINTS, dtype=np.int32)
        classes[keys[is_del]] = DELETE
        classes[keys[is_pad]] = PAD
        classes[keys[is_map]] = MAPPED
        sp = probed.splits
        table = {int(k): chars[sp[i]: sp[i + 1]].tolist() for i, k in zip(np.flatnonzero(is_map), keys[is_map])}
        self.norm_classes = RangeTable(classes, name="normalizer_classes")
        self.norm_map = CodepointMap(table, name="normalizer_map")

        # -- pre-tokenizer classes (+ canonical combining class where NFD reorders)
        pre = cached_probe("pre_tokenizer", backend.pre_tokenizer, probe_pretokenizer).copy()
        if self.decomposes:
            ccc = _combining_classes()
            changed = np.zeros(N_CODEPOINTS, dtype=bool)
            changed[keys] = True
            produced = np.zeros(N_CODEPOINTS, dtype=bool)
            produced[chars] = True
            survives = ccc > 0
            survives &= ~changed | produced  # kept as is, or produced by some mapping
            pre[survives] |= ccc[survives] << 2
            self.reorder = bool(survives.any())
        else:
            self.reorder = False
        self.pre_classes = RangeTable(pre, name="pre_tokenizer_classes")

        # -- the WordPiece model
        vocab: dict[str, int] = model["vocab"]
        size = max(vocab.values()) + 1
        tokens = [None] * size
        for tok, i in vocab.items():
            tokens[i] = tok
        # ids no vocab token has: a filler that no word can equal (words never contain spaces)
        tokens = [t if t is not None else f"  unused {i} " for i, t in enumerate(tokens)]
        self.unk_token = model.get("unk_token", "[UNK]")
        if self.unk_token not in vocab:
            raise UnsupportedError(f"WordPiece unk_token {self.unk_token!r} is not in the vocabulary")
        self.unk_id = int(vocab[self.unk_token])
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        prefix = model.get("continuing_subword_prefix", "##")
        self.wordpiece = text.FastWordpieceTokenizer(
            vocab=tokens, suffix_indicator=prefix, max_bytes_per_word=max(4 * self.max_chars + 4, 8 * len(self.unk_token)),
            token_out_type=tf.int64, unknown_token=self.unk_token, no_pretokenization=True,
            support_detokenization=False,
        )
        # a too-long word is replaced by the unknown token's own text, which must give exactly its id
        if self.wordpiece.tokenize(tf.constant([self.unk_token])).to_list() != [[self.unk_id]]:
            raise UnsupportedError(f"WordPiece unk_token {self.unk_token!r} does not tokenize to itself")

    # -- step 2: the normalizer ---------------------------------------------------------------------
    def normalize_pieces(self, pieces: tf.RaggedTensor) -> tf.RaggedTensor:
        v = pieces.flat_values
        n = tf.size(v, out_type=tf.int64)
        cls = self.norm_classes.lookup(v)
        is_mapped = cls == MAPPED
        lens = tf.gather(tf.constant([1, 0, 3, 0], tf.int64), cls)
        if self.norm_map.size:
            where_m = tf.where(is_mapped)
            slot_m = self.norm_map.table.lookup(tf.cast(tf.gather(v, where_m[:, 0]), tf.int64))
            slot = tf.scatter_nd(where_m, slot_m + 1, tf.reshape(n, [1])) - 1
            safe = tf.maximum(slot, 0)
            lens += tf.where(is_mapped, tf.gather(tf.constant(self.norm_map._lens_np), safe), 0)
        splits = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(lens)], 0)
        total = splits[-1]
        src = repeat_range(lens)
        within = tf.range(total) - tf.gather(splits, src)
        src_cls = tf.gather(cls, src)
        out = tf.gather(v, src)
        out = tf.where((src_cls == PAD) & (within != 1), 32, out)
        if self.norm_map.size:
            values = tf.constant(self.norm_map._values_np)
            at = tf.gather(tf.constant(self.norm_map._splits_np), tf.gather(safe, src)) + within
            from_map = tf.gather(values, tf.minimum(at, self.norm_map._values_np.size - 1))
            out = tf.where(src_cls == MAPPED, from_map, out)
        return tf.RaggedTensor.from_row_splits(out, tf.gather(splits, pieces.row_splits), validate=False)

    # -- steps 3 and 4: pre-tokenizer and WordPiece -------------------------------------------------
    def encode_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        pieces = pieces.with_row_splits_dtype(tf.int64)
        v = pieces.flat_values
        splits = pieces.row_splits
        n = tf.size(v, out_type=tf.int64)
        # first character of each (non-empty) piece; O(n), no per-character row ids
        starts = tf.scatter_nd(splits[:-1, None], tf.ones_like(splits[:-1], tf.int32), tf.reshape(n + 1, [1]))
        piece_start = starts[:-1] > 0
        info = self.pre_classes.lookup(v)
        if self.reorder:
            ccc = info // 4
            v, info = tf.cond(tf.reduce_any(ccc > 0),
                              lambda: _canonical_order(v, info, piece_start), lambda: (v, info))
        pc = info % 4
        prev_pc = tf.concat([tf.constant([SPACE], tf.int32), pc[:-1]], 0)
        new_word = piece_start | (pc == ISOLATE) | (prev_pc != WORD)
        kept = tf.where(pc != SPACE)[:, 0]
        first_kept = tf.where(tf.gather(new_word, kept))[:, 0]  # word starts, as positions in `kept`
        word_splits = tf.concat([first_kept, tf.reshape(tf.size(kept, out_type=tf.int64), [1])], 0)
        words = tf.RaggedTensor.from_row_splits(tf.gather(v, kept), word_splits, validate=False)
        strings = tf.strings.unicode_encode(words, "UTF-8")
        # HF: a word of more than max_input_chars_per_word characters is the unknown token
        too_long = word_splits[1:] - word_splits[:-1] > self.max_chars
        strings = tf.where(too_long, tf.constant(self.unk_token), strings)
        ids = self.wordpiece.tokenize(strings).with_row_splits_dtype(tf.int64)
        # words -> pieces: words are in piece order, so the word splits per piece are a search
        word_piece = tf.searchsorted(splits, tf.gather(kept, first_kept), side="right", out_type=tf.int64) - 1
        piece_words = tf.searchsorted(word_piece, tf.range(pieces.nrows() + 1), side="left", out_type=tf.int64)
        return tf.RaggedTensor.from_row_splits(ids.values, tf.gather(ids.row_splits, piece_words), validate=False)


_COMBINING: list[np.ndarray] = []


def _combining_classes() -> np.ndarray:
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


def _canonical_order(v: tf.Tensor, info: tf.Tensor, piece_start: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """NFD canonical ordering: stable-sort each run of non-starters by combining class (info // 4)."""
    ccc = info // 4
    group = tf.cumsum(tf.cast((ccc == 0) | piece_start, tf.int64))
    order = tf.argsort(group * 256 + tf.cast(ccc, tf.int64), stable=True)
    return tf.gather(v, order), tf.gather(info, order)
