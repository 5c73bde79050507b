"""HF-exact WordPiece tokenizer in the graph (BERT, DistilBERT, MPNet and other WordPiece models).

What the HF fast tokenizer does, and how the graph reproduces it:

1. Added tokens (``[CLS]``, ``[MASK]``, ``<mask>`` with lstrip, ...) are split out of the raw text
   first: :class:`~packager.tokenizers.common.InGraphTokenizer`.
2. The normalizer (``BertNormalizer``: clean text, pad CJK ideographs with spaces, NFD + drop
   accents, lower-case; or a ``Sequence`` of ``Lowercase``/``NFD``/``NFKD``/``StripAccents``) acts on
   each character on its own, so at export time every code point 0..0x10FFFF is run through the
   HF normalizer itself and the result is stored compactly, in one two-level table giving per
   code point: keep-or-map-to-one-character (with the target as an offset), delete, or expand to
   several characters (a small hash table, e.g. Hangul syllables -> jamo); plus the pre-tokenizer
   class of the resulting character. A CJK character padded with spaces becomes an "isolated"
   character (same words, no re-layout). Batches where every character maps to exactly one
   character (nearly all real text) skip the re-layout entirely.

   Deriving the tables from HF (instead of trusting TF's ``\\p{..}`` classes, ``tf.strings.lower``
   or ``normalize_utf8``) is what makes the result exact: the Unicode version inside
   ``tokenizers`` differs from TF's, ``tf.strings.lower`` maps a final Σ to ς and stops at NUL,
   and TF's case folding does compatibility mappings HF does not do.
   Where the normalizer decomposes (NFD), combining marks that survive are put in canonical order
   (a stable sort by combining class inside each run of non-starters), as HF's NFD does. The
   combining classes come from Python's ``unicodedata``.
3. The pre-tokenizer (``BertPreTokenizer``: split on whitespace, isolate punctuation) is probed
   the same way, per code point: part of a word / dropped separator / one-character word.
4. Each word goes through ``text.FastWordpieceTokenizer(no_pretokenization=True)``; words of more
   than ``max_input_chars_per_word`` characters (HF counts characters, TF would count bytes)
   are replaced by the unknown token's own text first (checked at export to give exactly its id).
5. Truncation, the post-processor's special tokens and padding: ``common.finalize``.

Invalid UTF-8 becomes U+FFFD (like ``bytes.decode("utf-8", "replace")``); see ``common``.

Only core TF ops plus ``FastWordpieceTokenizeWithOffsets`` (TF-Text >= 2.12) are used.
"""
from __future__ import annotations

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
    splits_from_lengths,
)
from .hf import check_wordpiece_normalizer, check_wordpiece_pre_tokenizer, combining_classes, usable_vocab

# Per input code point, one int32 from one table lookup (two gathers) says everything the common
# case needs:  bits 0-1  normalizer class: KEEP (kept, or mapped to exactly one character), DELETE,
#                        or EXPAND (several characters: a hash-table lookup, only when present);
#              bits 2-3  pre-tokenizer class of the output character: WORD, SPACE or ISOLATE;
#              bit  4    the output character has a non-zero combining class (NFD reordering);
#              bit  5    CJK padding: HF writes " c " (only re-created by ``normalize_pieces``);
#              bits 6-   output code point minus input code point, plus DELTA_OFFSET.
# CJK padding (" c ") is "c as an ISOLATE character": same words, no expansion.
KEEP, DELETE, EXPAND = 0, 1, 2
WORD, SPACE, ISOLATE = 0, 1, 2
DELTA_OFFSET = N_CODEPOINTS


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
        self.decomposes = check_wordpiece_normalizer(tj.get("normalizer"))
        check_wordpiece_pre_tokenizer(tj.get("pre_tokenizer"))
        backend = hf_tokenizer.backend_tokenizer

        # -- normalizer and pre-tokenizer, probed per code point (cached on disk)
        probed = cached_probe("normalizer", backend.normalizer, probe_normalizer)
        pre = cached_probe("pre_tokenizer", backend.pre_tokenizer, probe_pretokenizer)
        ccc = combining_classes() if self.decomposes else np.zeros(N_CODEPOINTS, dtype=np.int32)
        keys, lens, chars, sp = probed.keys, probed.lengths, probed.chars, probed.splits
        first = chars[np.minimum(sp[:-1], max(chars.size - 1, 0))] if chars.size else np.zeros_like(keys)
        mid = chars[np.minimum(sp[:-1] + 1, max(chars.size - 1, 0))] if chars.size else np.zeros_like(keys)
        last = chars[np.minimum(sp[:-1] + 2, max(chars.size - 1, 0))] if chars.size else np.zeros_like(keys)
        one = lens == 1
        pad = (lens == 3) & (first == 32) & (last == 32) & (pre[mid] == WORD) & (ccc[mid] == 0) & (pre[32] == SPACE)
        out_cp = np.arange(N_CODEPOINTS, dtype=np.int64)  # output character of KEEP code points
        out_cp[keys[one]] = first[one]
        out_cp[keys[pad]] = mid[pad]
        ncls = np.zeros(N_CODEPOINTS, dtype=np.int64)
        ncls[keys[lens == 0]] = DELETE
        expand = ~one & ~pad & (lens > 0)
        ncls[keys[expand]] = EXPAND
        pclass = pre[out_cp].astype(np.int64)
        pclass[keys[pad]] = ISOLATE
        has_ccc = (ccc[out_cp] > 0).astype(np.int64)
        is_pad = np.zeros(N_CODEPOINTS, dtype=np.int64)
        is_pad[keys[pad]] = 1
        info = ((out_cp - np.arange(N_CODEPOINTS) + DELTA_OFFSET) << 6) | (is_pad << 5) | (has_ccc << 4) \
            | (pclass << 2) | ncls
        info[(ncls != KEEP)] &= 0x3F  # no offset for deleted / expanded code points
        self.char_info = RangeTable(info, name="char_info")
        self.expansions = CodepointMap(
            {int(k): chars[sp[i]: sp[i + 1]].tolist() for i, k in zip(np.flatnonzero(expand), keys[expand])},
            name="expansions")
        # for expanded / already-normalized text: classes of arbitrary output characters
        self.pre_classes = RangeTable(pre | ((ccc > 0).astype(np.int32) << 2), name="pre_tokenizer_classes")
        # canonical reordering is needed only if a combining mark can survive the normalizer
        produced = np.zeros(N_CODEPOINTS, dtype=bool)
        produced[chars] = True
        changed = np.zeros(N_CODEPOINTS, dtype=bool)
        changed[keys] = True
        self.reorder = bool(((ccc > 0) & (~changed | produced)).any())
        if self.reorder:
            self.combining = RangeTable(ccc, name="combining_classes")

        # -- the WordPiece model
        vocab: dict[str, int] = model["vocab"]
        size = max(vocab.values()) + 1
        tokens = [None] * size
        for tok, i in vocab.items():
            tokens[i] = tok
        self.unk_token = model.get("unk_token", "[UNK]")
        if self.unk_token not in vocab:
            raise UnsupportedError(f"WordPiece unk_token {self.unk_token!r} is not in the vocabulary")
        self.unk_id = int(vocab[self.unk_token])
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        prefix = model.get("continuing_subword_prefix", "##")
        tokens = usable_vocab(tokens, prefix, self.max_chars, keep=self.unk_token)
        self.wordpiece = text.FastWordpieceTokenizer(
            vocab=tokens, suffix_indicator=prefix, max_bytes_per_word=max(4 * self.max_chars + 4, 8 * len(self.unk_token)),
            token_out_type=tf.int64, unknown_token=self.unk_token, no_pretokenization=True,
            support_detokenization=False,
        )
        # a too-long word is replaced by the unknown token's own text, which must give exactly its id
        if self.wordpiece.tokenize(tf.constant([self.unk_token])).to_list() != [[self.unk_id]]:
            raise UnsupportedError(f"WordPiece unk_token {self.unk_token!r} does not tokenize to itself")

    # -- the graph ------------------------------------------------------------------------------------
    def encode_raw_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        """Normalizer + pre-tokenizer + WordPiece on raw text pieces, fused (the common path)."""
        pieces = pieces.with_row_splits_dtype(tf.int64)
        v = pieces.flat_values
        info = self.char_info.lookup(v)

        def one_to_one():  # every character stays one character: no re-layout at all
            out = v + (tf.bitwise.right_shift(info, 6) - DELTA_OFFSET)
            return out, tf.bitwise.bitwise_and(tf.bitwise.right_shift(info, 2), 7), pieces.row_splits

        def general():
            return self._expand(v, info, pieces.row_splits)

        out, cls, splits = tf.cond(tf.reduce_any(tf.bitwise.bitwise_and(info, 3) != KEEP), general, one_to_one)
        return self._words_to_ids(out, cls, splits)

    def normalize_pieces(self, pieces: tf.RaggedTensor) -> tf.RaggedTensor:
        """The HF normalizer alone (used when some added token is matched on normalized text)."""
        pieces = pieces.with_row_splits_dtype(tf.int64)
        out, cls, splits = self._expand(pieces.flat_values, self.char_info.lookup(pieces.flat_values),
                                        pieces.row_splits, literal=True)
        if self.reorder:
            out, _ = tf.cond(tf.reduce_any(cls >= 4),
                             lambda: self._canonical_order(out, cls, _piece_starts(splits, tf.size(out, tf.int64))),
                             lambda: (out, cls))
        return tf.RaggedTensor.from_row_splits(out, splits, validate=False)

    def encode_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        """Pre-tokenizer + WordPiece on already normalized pieces."""
        pieces = pieces.with_row_splits_dtype(tf.int64)
        return self._words_to_ids(pieces.flat_values, self.pre_classes.lookup(pieces.flat_values),
                                  pieces.row_splits)

    def _expand(self, v, info, splits, literal: bool = False):
        """Normalize with re-layout: deletions and one-to-many mappings. Returns (chars, classes, splits).

        ``literal``: give HF's exact normalized text (CJK padded with spaces) instead of marking
        padded characters as isolated.
        """
        n = tf.size(v, out_type=tf.int64)
        ncls = tf.bitwise.bitwise_and(info, 3)
        lens = tf.cast(ncls == KEEP, tf.int64)
        if literal:
            lens += 2 * tf.cast(tf.bitwise.bitwise_and(info, 32) > 0, tf.int64)
        if self.expansions.size:
            is_exp = ncls == EXPAND
            where_e = tf.where(is_exp)
            slot_e = self.expansions.table.lookup(tf.cast(tf.gather(v, where_e[:, 0]), tf.int64))
            slot = tf.scatter_nd(where_e, slot_e + 1, tf.reshape(n, [1])) - 1
            safe = tf.maximum(slot, 0)
            lens += tf.where(is_exp, tf.gather(tf.constant(self.expansions._lens_np), safe), 0)
        out_splits = splits_from_lengths(lens)
        src = repeat_range(lens)
        src_info = tf.gather(info, src)
        out = tf.gather(v, src) + (tf.bitwise.right_shift(src_info, 6) - DELTA_OFFSET)
        cls = tf.bitwise.bitwise_and(tf.bitwise.right_shift(src_info, 2), 7)
        if literal or self.expansions.size:
            within = tf.range(out_splits[-1]) - tf.gather(out_splits, src)
        if literal:
            padding = (tf.bitwise.bitwise_and(src_info, 32) > 0) & (within != 1)
            out = tf.where(padding, 32, out)
            cls = tf.where(padding, SPACE, cls)
        if self.expansions.size:
            from_exp = tf.bitwise.bitwise_and(src_info, 3) == EXPAND
            at = tf.gather(tf.constant(self.expansions._splits_np), tf.gather(safe, src)) + within
            exp_values = tf.gather(tf.constant(self.expansions._values_np),
                                   tf.minimum(at, self.expansions._values_np.size - 1))
            out = tf.where(from_exp, exp_values, out)
            cls = tf.where(from_exp, self.pre_classes.lookup(out), cls)
        return out, cls, tf.gather(out_splits, splits)

    def _words_to_ids(self, v, cls, splits):
        """Characters with their pre-tokenizer class -> words -> WordPiece ids, per piece."""
        piece_start = _piece_starts(splits, tf.size(v, out_type=tf.int64))
        if self.reorder:
            v, cls = tf.cond(tf.reduce_any(cls >= 4),
                             lambda: self._canonical_order(v, cls, piece_start), lambda: (v, cls))
        pc = tf.bitwise.bitwise_and(cls, 3)
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
        piece_words = tf.searchsorted(word_piece, tf.range(tf.size(splits, out_type=tf.int64)), side="left",
                                      out_type=tf.int64)
        return tf.RaggedTensor.from_row_splits(ids.values, tf.gather(ids.row_splits, piece_words), validate=False)

    def _canonical_order(self, v, cls, piece_start):
        """NFD canonical ordering: stable-sort each run of non-starters by combining class."""
        ccc = self.combining.lookup(v)
        group = tf.cumsum(tf.cast((ccc == 0) | piece_start, tf.int64))
        order = tf.argsort(group * 256 + tf.cast(ccc, tf.int64), stable=True)
        return tf.gather(v, order), tf.gather(cls, order)


def _piece_starts(splits: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """bool ``[n]``: the character is the first of its (non-empty) piece. O(pieces) scatter."""
    starts = tf.scatter_nd(splits[:-1, None], tf.ones_like(splits[:-1], tf.int32), tf.reshape(n + 1, [1]))
    return starts[:-1] > 0
