"""What every in-graph tokenizer shares: UTF-8 decoding, added-token splitting, post-processing.

A Hugging Face fast tokenizer runs, per sentence::

    raw text ──split on non-normalized added tokens──▶ pieces
    each text piece ──normalizer──▶ ──split on normalized added tokens──▶ ──pre-tokenizer + model──▶ ids
    all ids ──truncate──▶ ──post-processor (specials)──▶ ──pad──▶ input_ids, attention_mask

:class:`InGraphTokenizer` implements that skeleton once, vectorised over the flat ragged values of
the whole batch (no per-sentence Python and no per-sentence graph loop). A concrete tokenizer
subclasses it and supplies two graph functions over *pieces* (a ``tf.RaggedTensor`` of int32
Unicode code points, one row per text piece)::

    normalize_pieces(pieces) -> pieces          # the HF normalizer (default: identity)
    encode_pieces(pieces, is_first) -> ids      # HF pre-tokenizer + model: RaggedTensor int64 [P, (n)]

and may override ``encode_raw_pieces(pieces, is_first)`` (default: the two chained) to fuse them;
the pipeline calls it whenever no added token has to be matched on normalized text.

Everything else (added tokens with their ``lstrip``/``rstrip``/``single_word``/``normalized`` flags,
truncation keeping the end token, the post-processor's special tokens, dynamic padding) is here.

Batches in which no code point can start an added token (most of them) skip the splitting and
go straight to ``encode_raw_pieces`` with one piece per sentence (``tf.cond``). Unless a subclass
sets ``empty_pieces_ok = True``, empty sentences are dropped before and restored after, so a
subclass never sees an empty piece.

Ragged plumbing: TF's ``tf.repeat``, ``RaggedTensor.value_rowids`` and ``tf.ragged.boolean_mask``
build a ``[rows, longest row]`` intermediate, so one 1 MB sentence among many pieces needs
gigabytes (it OOMed here). Use :func:`rowids`, :func:`repeat_range`, :func:`mask_rows` and
:func:`splits_from_lengths` instead: O(values).

Invalid UTF-8: strings arrive as raw bytes (a server gets whatever the client sends). They are
decoded like Python's ``bytes.decode("utf-8", errors="replace")``: every maximal invalid
subsequence becomes one U+FFFD (TF's ``unicode_decode(errors="replace")`` follows the same
WHATWG/Unicode "maximal subpart" rule; the tests check it). The ids are then exactly those of the
HF tokenizer on that decoded Python string. NUL bytes are ordinary characters. Nothing crashes.

Helpers for per-code-point behaviour (built at export time by probing the HF tokenizer itself,
because TF's Unicode tables are newer than the ones inside ``tokenizers``):

* :func:`all_codepoints` – every Unicode scalar value (surrogates skipped), for probing.
* :class:`RangeTable` – a dense per-code-point int array compressed into ranges; in-graph lookup
  with one ``tf.searchsorted`` + one ``tf.gather``.
* :class:`CodepointMap` – code point -> replacement sequence of code points (e.g. lower-casing,
  NFD), applied to ragged code points in-graph.
* :func:`decode_utf8` / :func:`encode_utf8` – tf.string <-> ragged code points; :func:`encode_keys` /
  :func:`key_bytes` – table keys of code-point rows, the same in every TF release.

Example (a subclass)::

    class MyTokenizer(InGraphTokenizer):
        def __init__(self, hf_tokenizer, max_seq_length):
            super().__init__(hf_tokenizer, max_seq_length, name="my_tokenizer")
            ...  # build tables from hf_tokenizer

        def encode_pieces(self, pieces, is_first):
            ...  # return tf.RaggedTensor int64 [P, (n)]

    tok = MyTokenizer(hf_tok, 128)
    input_ids, attention_mask = tok.tokenize(tf.constant(["hello world"]))
"""
from __future__ import annotations

import re
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from ..errors import UnsupportedError
# The TF-free analysis (hf.py) and the ragged helpers (ragged.py) are what every tokenizer graph
# builds on; they are importable from here too, as the one entry point of the skeleton.
from .hf import (  # noqa: F401
    MAX_CODEPOINT,
    N_CODEPOINTS,
    REPLACEMENT_CHAR,
    WHITE_SPACE,
    AddedToken,
    NormalizedTable,
    PairTemplate,
    PostProcessor,
    added_tokens,
    all_codepoints,
    cached_probe,
    probe_normalizer,
    probe_pretokenizer,
    probe_white_space,
    probe_word_chars,
    tokenizer_json,
)
from .ragged import mask_rows, repeat_range, rowids, splits_from_lengths  # noqa: F401


# ------------------------------------------------------------------------------------ strings
def decode_utf8(strings: tf.Tensor) -> tf.RaggedTensor:
    """``tf.string [B]`` -> int32 code points ``[B, (chars)]``; invalid UTF-8 -> U+FFFD.

    Same result as Python's ``b.decode("utf-8", "replace")`` (one U+FFFD per maximal invalid
    subsequence). NUL is kept as code point 0.
    """
    return tf.strings.unicode_decode(
        strings, "UTF-8", errors="replace", replacement_char=REPLACEMENT_CHAR, replace_control_characters=False
    )


def encode_utf8(codepoints: tf.RaggedTensor) -> tf.Tensor:
    """int32 code points ``[N, (chars)]`` -> ``tf.string [N]`` (UTF-8).

    Not for table keys: TF <= 2.17 writes noncharacters as U+FFFD (see :func:`encode_keys`).
    """
    return tf.strings.unicode_encode(codepoints, "UTF-8")


# TF bug worked around by encode_keys / key_bytes: UnicodeEncode in TF <= 2.17 (2.12.1 and 2.17.0
# checked; 2.20.0 and 2.21.0 are fine) treats the 66 Unicode noncharacters (U+FDD0..U+FDEF and the
# last two code points of every plane, U+nFFFE / U+nFFFF) as invalid and writes U+FFFD for each
# (with errors="replace", the default), while every other scalar value is written as itself and
# UnicodeDecode reads noncharacters back as themselves in every release. So " \ufdd0" and " \ufffd"
# became the same string there: a table keyed by the encoded text (the BPE and SentencePiece word
# caches, the runtime cache of computed words) answered one with the other's ids, wrong ids that
# depended on what was served before (the runtime cache) or on the vocab (a static key).
NONCHAR_BLOCK = (0xFDD0, 0xFDEF)
KEY_MARK = b"\xff"  # never in valid UTF-8


def _nonchar_code(cp: int) -> int:
    """1..66 for a noncharacter (its index + 1), 0 for anything else."""
    if NONCHAR_BLOCK[0] <= cp <= NONCHAR_BLOCK[1]:
        return cp - NONCHAR_BLOCK[0] + 1
    if (cp & 0xFFFE) == 0xFFFE and 0 <= cp <= MAX_CODEPOINT:
        return 33 + 2 * (cp >> 16) + (cp & 1)
    return 0


_NONCHAR_RE = re.compile("[\ufdd0-\ufdef" + "".join(chr((p << 16) | 0xFFFE) + chr((p << 16) | 0xFFFF)
                                                      for p in range(17)) + "]")


def key_bytes(text: str) -> bytes:
    """The table key :func:`encode_keys` gives for ``text`` (for keys built at export time)."""
    if not _NONCHAR_RE.search(text):
        return text.encode("utf-8")
    codes = [_nonchar_code(ord(c)) for c in text]
    plain = "".join("\ufffd" if k else c for c, k in zip(text, codes))
    return plain.encode("utf-8") + KEY_MARK + bytes(codes)


def encode_keys(codepoints: tf.RaggedTensor) -> tf.Tensor:
    """int32 code points ``[N, (chars)]`` -> ``tf.string [N]`` table keys, the same in every TF release.

    A row without a noncharacter is its UTF-8 (what every release writes). A row with one is the
    UTF-8 of the row with each noncharacter written as U+FFFD (what TF <= 2.17 writes), then
    ``KEY_MARK`` (0xFF, which no UTF-8 has), then one byte per code point: 0, or which of the 66
    noncharacters it was (1..66). So keys are one-to-one with rows everywhere, and equal to
    :func:`key_bytes` of the row's text. Batches without a noncharacter (nearly all) pay only for
    the check.
    """
    v = codepoints.flat_values
    in_block = (v >= NONCHAR_BLOCK[0]) & (v <= NONCHAR_BLOCK[1])
    nonchar = in_block | (tf.equal(tf.bitwise.bitwise_and(v, 0xFFFE), 0xFFFE) & (v >= 0) & (v <= MAX_CODEPOINT))

    def escaped():
        code = tf.where(in_block, v - (NONCHAR_BLOCK[0] - 1), 33 + 2 * tf.bitwise.right_shift(v, 16)
                        + tf.bitwise.bitwise_and(v, 1))
        code = tf.where(nonchar, code, tf.zeros_like(code))
        plain = tf.strings.unicode_encode(codepoints.with_flat_values(tf.where(nonchar, REPLACEMENT_CHAR, v)), "UTF-8")
        marks = tf.strings.unicode_encode(codepoints.with_flat_values(code), "UTF-8")
        splits = tf.cast(codepoints.row_splits, tf.int64)
        c = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(tf.cast(nonchar, tf.int64))], 0)
        row_has = tf.gather(c, splits[1:]) > tf.gather(c, splits[:-1])
        return tf.where(row_has, tf.strings.join([plain, tf.constant(KEY_MARK), marks]), plain)

    return tf.cond(tf.reduce_any(nonchar), escaped, lambda: tf.strings.unicode_encode(codepoints, "UTF-8"))


# ------------------------------------------------------------------------------------ ragged plumbing


# ------------------------------------------------------------------------------- code point tables
class RangeTable(tf.Module):
    """A per-code-point integer class, stored as a two-level table (a small Unicode trie).

    Args:
        values: int array of length 0x110000 (one class per code point; surrogates may hold anything).

    The code points are cut into 4352 blocks of 256; identical blocks are stored once (typically a
    few hundred distinct blocks, a few hundred KB). ``lookup(cps)`` is two ``tf.gather`` per code
    point, whatever the number of ranges (a ``tf.searchsorted`` over range starts was 2x slower).
    """

    BLOCK = 256

    def __init__(self, values: np.ndarray, name: str | None = None):
        super().__init__(name=name)
        values = np.asarray(values, dtype=np.int64)
        if values.shape != (N_CODEPOINTS,):
            raise ValueError(f"RangeTable needs {N_CODEPOINTS} values, got {values.shape}")
        self.n_ranges = int(np.count_nonzero(np.diff(values)) + 1)
        rows = values.reshape(-1, self.BLOCK)
        seen: dict[bytes, int] = {}
        index = np.array([seen.setdefault(r.tobytes(), len(seen)) for r in rows], dtype=np.int64)
        first = {i: k for k, i in reversed([(k, i) for k, i in enumerate(index.tolist())])}
        blocks = rows[[first[i] for i in range(len(seen))]]
        dtype = np.uint8 if values.min() >= 0 and values.max() < 256 else np.int32
        self._index_np = (index.reshape(-1) * self.BLOCK).astype(np.int32)
        self._blocks_np = blocks.reshape(-1).astype(dtype)
        self._constant_class = int(values[0]) if self.n_ranges == 1 else None

    def lookup(self, codepoints: tf.Tensor) -> tf.Tensor:
        """Class of each code point (any shape, int32) -> int32 of the same shape."""
        codepoints = tf.convert_to_tensor(codepoints, tf.int32)
        if self._constant_class is not None:
            return tf.fill(tf.shape(codepoints), tf.constant(self._constant_class, tf.int32))
        cp = tf.clip_by_value(codepoints, 0, MAX_CODEPOINT)
        base = tf.gather(tf.constant(self._index_np), tf.bitwise.right_shift(cp, 8))
        out = tf.gather(tf.constant(self._blocks_np), base + tf.bitwise.bitwise_and(cp, self.BLOCK - 1))
        return tf.cast(out, tf.int32)

    def as_array(self) -> np.ndarray:
        """The dense table back (for tests)."""
        idx = np.repeat(self._index_np, self.BLOCK) + np.tile(np.arange(self.BLOCK), self._index_np.size)
        return self._blocks_np[idx].astype(np.int32)


class CodepointMap(tf.Module):
    """Code point -> sequence of code points (possibly empty), for the few that change.

    Args:
        mapping: ``{code point: [code points]}``; code points not in it map to themselves.

    ``apply(cps)`` rewrites a ragged batch of code points (any ragged rank, int32). It is one hash
    lookup per code point plus a ragged gather, so the cost is linear in the text.
    """

    def __init__(self, mapping: Mapping[int, Sequence[int]], name: str | None = None):
        super().__init__(name=name)
        keys = np.array(sorted(mapping), dtype=np.int64)
        self.size = int(keys.size)
        if self.size:
            lens = np.array([len(mapping[k]) for k in keys], dtype=np.int64)
            vals = np.array([c for k in keys for c in mapping[k]], dtype=np.int32)
            self._splits_np = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            self._values_np = vals
            self._lens_np = lens
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(keys, tf.int64), tf.range(self.size, dtype=tf.int64)
                ),
                default_value=-1,
            )

    def apply_flat(self, values: tf.Tensor) -> tf.RaggedTensor:
        """int32 code points ``[N]`` -> ragged ``[N, (k)]``: each code point's replacement."""
        values = tf.convert_to_tensor(values, tf.int32)
        if not self.size:
            return tf.RaggedTensor.from_uniform_row_length(values, 1)
        slot = self.table.lookup(tf.cast(values, tf.int64))
        mapped = slot >= 0
        safe = tf.maximum(slot, 0)
        lens = tf.where(mapped, tf.gather(tf.constant(self._lens_np), safe), tf.ones_like(slot))
        out_splits = splits_from_lengths(lens)
        total = out_splits[-1]
        out_rowids = repeat_range(lens)
        within = tf.range(total) - tf.gather(out_splits, out_rowids)
        src_slot = tf.gather(safe, out_rowids)
        from_table = tf.gather(
            tf.constant(self._values_np),
            tf.minimum(tf.gather(tf.constant(self._splits_np), src_slot) + within, max(self._values_np.size - 1, 0)),
        ) if self._values_np.size else tf.zeros([total], tf.int32)
        out_values = tf.where(tf.gather(mapped, out_rowids), from_table, tf.gather(values, out_rowids))
        return tf.RaggedTensor.from_row_splits(out_values, out_splits, validate=False)

    def apply(self, codepoints: tf.RaggedTensor) -> tf.RaggedTensor:
        """Ragged ``[..., (chars)]`` -> ragged ``[..., (chars')]`` with every code point replaced."""
        per_cp = self.apply_flat(codepoints.flat_values)
        merged = per_cp.values
        # new innermost row splits: the old ones, counted in replacement characters
        inner = codepoints.nested_row_splits[-1]
        new_inner = tf.gather(per_cp.row_splits, inner)
        rebuilt = tf.RaggedTensor.from_row_splits(merged, new_inner, validate=False)
        for splits in reversed(codepoints.nested_row_splits[:-1]):
            rebuilt = tf.RaggedTensor.from_row_splits(rebuilt, splits, validate=False)
        return rebuilt


# ------------------------------------------------------------------------------------ tokenizer.json


class Pieces(NamedTuple):
    """Sentences split into text pieces and added-token pieces (graph tensors).

    Attributes:
        codepoints: int32 ``[P, (chars)]``, one row per piece, in sentence order.
        token_id: int64 ``[P]``: the added token's id, or -1 for a text piece.
        row_splits: int64 ``[R + 1]``: pieces of input row r are ``row_splits[r]:row_splits[r+1]``.
        is_first: bool ``[P]``: the piece starts at character 0 of its input row.
    """

    codepoints: tf.RaggedTensor
    token_id: tf.Tensor
    row_splits: tf.Tensor
    is_first: tf.Tensor


class AddedTokenMatcher(tf.Module):
    """Finds added tokens in ragged code points exactly as HF ``AddedVocabulary.find_matches`` does.

    HF semantics reproduced:
      * Aho-Corasick leftmost-longest, non-overlapping: scanning left to right, the earliest
        starting match wins, the longest at that position; the scan resumes after it.
      * ``single_word``: a match is dropped (without un-consuming it) when the character before
        it or after it is a word character (Rust regex ``\\w``).
      * ``lstrip``: the match swallows the whitespace (Rust ``\\s``) just before it, but never
        text already taken by the previous match; ``rstrip``: it swallows whitespace after it.
      * Empty text pieces are dropped; an added-token piece yields exactly its id.

    Args:
        tokens: the added tokens to match (all raw or all normalized ones).
        patterns: the string to look for per token (the normalized content for normalized ones).
        word_table: a :class:`RangeTable` of 0/1 "is \\w", required only if a token is single_word.
    """

    def __init__(self, tokens: Sequence[AddedToken], patterns: Sequence[str] | None = None,
                 word_table: RangeTable | None = None, name: str | None = None):
        super().__init__(name=name)
        patterns = list(patterns) if patterns is not None else [t.content for t in tokens]
        pairs = [(p, t) for p, t in zip(patterns, tokens) if p]
        # identical patterns: Aho-Corasick reports the first one given
        seen, uniq = set(), []
        for p, t in pairs:
            if p not in seen:
                seen.add(p)
                uniq.append((p, t))
        self.n_patterns = len(uniq)
        if not self.n_patterns:
            return
        cps = [[ord(c) for c in p] for p, _ in uniq]
        self.max_len = max(len(c) for c in cps)
        pat = np.full((self.n_patterns, self.max_len), -2, dtype=np.int32)
        for i, c in enumerate(cps):
            pat[i, : len(c)] = c
        self._pat = pat
        self._plen = np.array([len(c) for c in cps], dtype=np.int32)
        self._ids = np.array([t.id for _, t in uniq], dtype=np.int64)
        self._lstrip = np.array([t.lstrip for _, t in uniq], dtype=bool)
        self._rstrip = np.array([t.rstrip for _, t in uniq], dtype=bool)
        self._single = np.array([t.single_word for _, t in uniq], dtype=bool)
        self._firsts = np.unique(pat[:, 0]).astype(np.int32)
        self.any_strip = bool(self._lstrip.any() or self._rstrip.any())
        self.any_single = bool(self._single.any())
        if self.any_single and word_table is None:
            raise ValueError("a single_word added token needs a word_table")
        self.word_table = word_table if self.any_single else None
        if self.any_strip:
            ws = np.zeros(N_CODEPOINTS, dtype=np.int32)
            ws[WHITE_SPACE] = 1
            self.space_table = RangeTable(ws, name="white_space")

    # -- graph ---------------------------------------------------------------------------------
    def may_match(self, values: tf.Tensor) -> tf.Tensor:
        """Scalar bool: some code point in ``values`` starts an added token (cheap pre-check)."""
        if not self.n_patterns:
            return tf.constant(False)
        firsts = tf.constant(self._firsts)
        pos = tf.searchsorted(firsts, values, side="left", out_type=tf.int32)
        return tf.reduce_any(tf.gather(firsts, tf.minimum(pos, len(self._firsts) - 1)) == values)

    def split(self, rows: tf.RaggedTensor) -> Pieces:
        """Split each row (int32 code points ``[R, (chars)]``) into text and added-token pieces."""
        rows = rows.with_row_splits_dtype(tf.int64)
        v = rows.flat_values
        splits = rows.row_splits
        nrows = rows.nrows()
        if not self.n_patterns:
            return _whole_rows_as_pieces(rows)
        n = tf.size(v, out_type=tf.int64)
        rid = rowids(splits)
        row_end_of = tf.gather(splits[1:], rid)  # [N]

        # candidate starts: first code point of some pattern
        firsts = tf.constant(self._firsts)
        pos = tf.searchsorted(firsts, v, side="left", out_type=tf.int32)
        is_first_char = tf.gather(firsts, tf.minimum(pos, len(self._firsts) - 1)) == v
        cand = tf.where(is_first_char)[:, 0]  # int64 [C]
        # windows of max_len code points from each candidate, -1 past the row end
        k = tf.range(self.max_len, dtype=tf.int64)
        idx = cand[:, None] + k[None, :]
        inside = idx < tf.gather(row_end_of, cand)[:, None]
        window = tf.where(inside, tf.gather(v, tf.minimum(idx, tf.maximum(n - 1, 0))), -1)  # [C, L]
        pat = tf.constant(self._pat)
        plen = tf.constant(self._plen)
        beyond = tf.range(self.max_len)[None, :] >= plen[:, None]  # [P, L]
        ok = tf.reduce_all((window[:, None, :] == pat[None, :, :]) | beyond[None, :, :], axis=-1)  # [C, P]
        cand_len = tf.where(ok, plen[None, :], 0)
        best_len = tf.reduce_max(cand_len, axis=1)
        best_pat = tf.argmax(cand_len, axis=1, output_type=tf.int32)
        hit = best_len > 0
        m_start = tf.boolean_mask(cand, hit)
        m_stop = m_start + tf.cast(tf.boolean_mask(best_len, hit), tf.int64)
        m_pat = tf.boolean_mask(best_pat, hit)

        # leftmost-longest non-overlapping: rows never overlap (matches stay inside their row),
        # and without an overlap between neighbours there is none at all.
        overlapping = tf.reduce_any(m_start[1:] < m_stop[:-1])
        keep = tf.cond(overlapping, lambda: _greedy_non_overlapping(m_start, m_stop),
                       lambda: tf.ones_like(m_start, tf.bool))
        m_start, m_stop, m_pat = (tf.boolean_mask(x, keep) for x in (m_start, m_stop, m_pat))

        if self.any_single:
            is_word = self.word_table.lookup(v) > 0
            m_row = tf.gather(rid, m_start)
            row_start = tf.gather(splits, m_row)
            row_end = tf.gather(splits, m_row + 1)
            prev_word = (m_start > row_start) & tf.gather(is_word, tf.maximum(m_start - 1, 0))
            next_word = (m_stop < row_end) & tf.gather(is_word, tf.minimum(m_stop, tf.maximum(n - 1, 0)))
            single = tf.gather(tf.constant(self._single), m_pat)
            keep = ~single | (~prev_word & ~next_word)
            m_start, m_stop, m_pat = (tf.boolean_mask(x, keep) for x in (m_start, m_stop, m_pat))

        m_row = tf.gather(rid, m_start)
        if self.any_strip:
            row_start = tf.gather(splits, m_row)
            row_end = tf.gather(splits, m_row + 1)
            non_ws = self.space_table.lookup(v) == 0
            nonws_pos = tf.where(non_ws)[:, 0]
            n_total = tf.size(nonws_pos, out_type=tf.int64)
            nonws_pos = tf.concat([nonws_pos, tf.reshape(n, [1])], 0)  # sentinel: gathers stay in bounds
            n_nonws_before = splits_from_lengths(tf.cast(non_ws, tf.int64))  # [N+1]
            # rstrip: stop moves to the first non-space at or after it (inside the row)
            kk = tf.gather(n_nonws_before, m_stop)
            next_nonws = tf.where(kk < n_total, tf.gather(nonws_pos, kk), n)
            rstrip = tf.gather(tf.constant(self._rstrip), m_pat)
            m_stop = tf.where(rstrip, tf.minimum(next_nonws, row_end), m_stop)
            # lstrip: start moves back over spaces, but not into the previous match of its row
            kb = tf.gather(n_nonws_before, m_start)
            last_nonws = tf.where(kb > 0, tf.gather(nonws_pos, tf.maximum(kb - 1, 0)), -1)
            new_start = tf.maximum(last_nonws + 1, row_start)
            same_row_prev = tf.concat([[False], m_row[1:] == m_row[:-1]], 0)
            prev_stop = tf.concat([tf.zeros([1], tf.int64), m_stop[:-1]], 0)
            floor = tf.where(same_row_prev, prev_stop, row_start)
            lstrip = tf.gather(tf.constant(self._lstrip), m_pat)
            m_start = tf.where(lstrip, tf.maximum(new_start, floor), m_start)

        # boundaries per row: row start, (start, stop) per match, row end
        n_m = tf.math.bincount(tf.cast(m_row, tf.int32), minlength=tf.cast(nrows, tf.int32),
                               maxlength=tf.cast(nrows, tf.int32), dtype=tf.int64)
        pts_per_row = 2 * n_m + 2
        pts_splits = splits_from_lengths(pts_per_row)
        n_pts = pts_splits[-1]
        pts_rid = repeat_range(pts_per_row)
        within = tf.range(n_pts) - tf.gather(pts_splits, pts_rid)
        last_in_row = within == tf.gather(pts_per_row, pts_rid) - 1
        # match boundary j (1-based inside the row) -> flat match index
        m_splits = splits_from_lengths(n_m)
        m_flat = tf.gather(m_splits, pts_rid) + tf.maximum(within - 1, 0) // 2
        # pad with one dummy match so gathers stay in bounds when a batch has no match at all
        m_start_p = tf.concat([m_start, tf.zeros([1], tf.int64)], 0)
        m_stop_p = tf.concat([m_stop, tf.zeros([1], tf.int64)], 0)
        m_pat_p = tf.concat([m_pat, tf.zeros([1], tf.int32)], 0)
        m_flat = tf.minimum(m_flat, tf.size(m_start, out_type=tf.int64))
        bound_of_match = tf.where((within - 1) % 2 == 0, tf.gather(m_start_p, m_flat), tf.gather(m_stop_p, m_flat))
        pts = tf.where(
            within == 0,
            tf.gather(splits, pts_rid),
            tf.where(last_in_row, tf.gather(splits, pts_rid + 1), bound_of_match),
        )
        # intervals between consecutive points of a row
        not_last = ~last_in_row
        lo = tf.boolean_mask(pts, not_last)
        hi = tf.boolean_mask(tf.concat([pts[1:], tf.zeros([1], tf.int64)], 0), not_last)
        iv_within = tf.boolean_mask(within, not_last)
        iv_row = tf.boolean_mask(pts_rid, not_last)
        is_added = iv_within % 2 == 1
        iv_match = tf.boolean_mask(m_flat, not_last)
        keep = is_added | (hi > lo)
        lo, hi, iv_row, is_added, iv_match = (tf.boolean_mask(x, keep) for x in (lo, hi, iv_row, is_added, iv_match))
        token_id = tf.where(is_added, tf.gather(tf.constant(self._ids), tf.gather(m_pat_p, iv_match)),
                            tf.constant(-1, tf.int64))
        return _pieces_from_intervals(v, splits, nrows, lo, hi, iv_row, token_id)


def _whole_rows_as_pieces(rows: tf.RaggedTensor) -> Pieces:
    """No added tokens: every non-empty row is one text piece."""
    lens = rows.row_lengths()
    keep = lens > 0
    pieces = mask_rows(rows, keep)
    per_row = tf.cast(keep, tf.int64)
    row_splits = splits_from_lengths(per_row)
    p = pieces.nrows()
    return Pieces(pieces, tf.fill([p], tf.constant(-1, tf.int64)), row_splits, tf.ones([p], tf.bool))


def _pieces_from_intervals(v, splits, nrows, lo, hi, row, token_id) -> Pieces:
    lens = hi - lo
    p_splits = splits_from_lengths(lens)
    p_rid = repeat_range(lens)
    src = tf.gather(lo, p_rid) + tf.range(p_splits[-1]) - tf.gather(p_splits, p_rid)
    cps = tf.RaggedTensor.from_row_splits(tf.gather(v, src), p_splits, validate=False)
    per_row = tf.math.bincount(tf.cast(row, tf.int32), minlength=tf.cast(nrows, tf.int32),
                               maxlength=tf.cast(nrows, tf.int32), dtype=tf.int64)
    row_splits = splits_from_lengths(per_row)
    is_first = lo == tf.gather(splits, row)
    return Pieces(cps, token_id, row_splits, is_first)


def _greedy_non_overlapping(start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
    """Keep-mask of the leftmost-first non-overlapping subset of matches sorted by start (rare path)."""
    m = tf.size(start)

    def body(i, last_stop, keep):
        take = start[i] >= last_stop
        keep = keep.write(i, take)
        return i + 1, tf.where(take, stop[i], last_stop), keep

    _, _, keep = tf.while_loop(
        lambda i, *_: i < m, body,
        (tf.constant(0), tf.constant(-1, tf.int64), tf.TensorArray(tf.bool, size=m)),
    )
    return tf.reshape(keep.stack(), [-1])


def _split_normalized(pieces_in: Pieces, normalized: tf.RaggedTensor, matcher: AddedTokenMatcher) -> Pieces:
    """Second HF pass: split the normalized text pieces on the normalized added tokens.

    Returns pieces relative to the ORIGINAL rows (added pieces from the first pass kept in place).
    """
    is_text = pieces_in.token_id < 0
    sub = matcher.split(normalized)  # rows = text pieces
    n_sub = tf.concat([sub.row_splits[1:] - sub.row_splits[:-1], tf.zeros([1], tf.int64)], 0)
    text_idx = tf.cumsum(tf.cast(is_text, tf.int64)) - 1
    count = tf.where(is_text, tf.gather(n_sub, tf.maximum(text_idx, 0)), 1)
    out_splits = splits_from_lengths(count)
    # positions of the sub-pieces and of the first-pass added pieces in the output order
    text_pos_piece = tf.boolean_mask(tf.range(tf.size(is_text, out_type=tf.int64)), is_text)
    sub_parent = tf.gather(text_pos_piece, sub_rowids(sub))
    sub_pos = tf.gather(out_splits, sub_parent) + tf.range(tf.size(sub.token_id, out_type=tf.int64)) - tf.gather(
        sub.row_splits, sub_rowids(sub))
    add_pos = tf.boolean_mask(out_splits[:-1], ~is_text)
    added_rows = mask_rows(pieces_in.codepoints, ~is_text)
    total = out_splits[-1]
    order_src = tf.dynamic_stitch(
        [tf.cast(sub_pos, tf.int32), tf.cast(add_pos, tf.int32)],
        [tf.range(tf.size(sub_pos, out_type=tf.int64)),
         tf.size(sub_pos, out_type=tf.int64) + tf.range(tf.size(add_pos, out_type=tf.int64))],
    )
    all_cps = tf.concat([sub.codepoints, added_rows], axis=0)
    all_ids = tf.concat([sub.token_id, tf.boolean_mask(pieces_in.token_id, ~is_text)], 0)
    all_first = tf.concat([sub.is_first & tf.gather(tf.boolean_mask(pieces_in.is_first, is_text), sub_rowids(sub)),
                           tf.boolean_mask(pieces_in.is_first, ~is_text)], 0)
    order_src = tf.reshape(order_src, [total])
    cps = tf.gather(all_cps, order_src)
    # pieces per original row
    piece_row = rowids(pieces_in.row_splits)
    out_rows_count = tf.math.unsorted_segment_sum(count, piece_row, tf.size(pieces_in.row_splits) - 1)
    row_splits = splits_from_lengths(out_rows_count)
    return Pieces(cps, tf.gather(all_ids, order_src), row_splits, tf.gather(all_first, order_src))


def sub_rowids(p: Pieces) -> tf.Tensor:
    return rowids(p.row_splits)


# ------------------------------------------------------------------------------------ post-processing


def _content(ids: tf.RaggedTensor):
    ids = ids.with_row_splits_dtype(tf.int64)
    splits = ids.row_splits
    return tf.cast(ids.flat_values, tf.int64), splits[:-1], splits[1:] - splits[:-1]


def _assemble(segments: list, pad_id: int, padding_side: str) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Lay out rows from segments, pad to the longest row: ``(input_ids, token_type_ids, attention_mask)``.

    Args:
        segments: in order, each either ``("const", ids, types)`` (special tokens) or
            ``("seq", values, first, kept, type_id)``: ``kept[r]`` content ids of row r from
            ``values[first[r]:]``.
        pad_id: the padding id (token type 0, mask 0).
        padding_side: ``"right"`` or ``"left"``.

    One gather per output builds each padded matrix (no ragged concat / to_tensor round trips).
    """
    tables, types, lens = [], [], []
    rows = None
    for seg in segments:
        if seg[0] == "seq":
            _, values, first, kept, type_id = seg
            rows = tf.size(kept, out_type=tf.int64)
            tables.append(values)
            types.append(tf.fill(tf.shape(values), tf.constant(type_id, tf.int64)))
    n_content = sum(tf.size(t, out_type=tf.int64) for t in tables) if tables else tf.constant(0, tf.int64)
    consts = [int(i) for seg in segments if seg[0] == "const" for i in seg[1]] + [pad_id]
    const_types = [int(t) for seg in segments if seg[0] == "const" for t in seg[2]] + [0]
    table = tf.concat(tables + [tf.constant(consts, tf.int64)], 0)
    type_table = tf.concat(types + [tf.constant(const_types, tf.int64)], 0)
    for seg in segments:
        lens.append(seg[3] if seg[0] == "seq" else tf.fill([rows], tf.constant(len(seg[1]), tf.int64)))
    out_len = tf.add_n(lens) if lens else tf.zeros([rows], tf.int64)
    t = tf.reduce_max(tf.concat([out_len, tf.zeros([1], tf.int64)], 0))
    j = tf.range(t)[None, :]  # [1, T]
    src = tf.fill(tf.shape(j + out_len[:, None]), n_content + len(consts) - 1)  # pad everywhere first
    start = tf.zeros_like(out_len)[:, None]
    seq_base, const_base = tf.constant(0, tf.int64), n_content
    for seg, length in zip(segments, lens):
        inside = (j >= start) & (j < start + length[:, None])
        if seg[0] == "seq":
            src = tf.where(inside, seq_base + seg[2][:, None] + (j - start), src)
            seq_base += tf.size(seg[1], out_type=tf.int64)
        else:
            src = tf.where(inside, const_base + (j - start), src)
            const_base += len(seg[1])
        start = start + length[:, None]
    input_ids, type_ids = tf.gather(table, src), tf.gather(type_table, src)
    mask = tf.cast(j < out_len[:, None], tf.int64)
    if padding_side == "left":
        input_ids = tf.reverse(tf.reverse_sequence(input_ids, out_len, seq_axis=1, batch_axis=0), [1])
        type_ids = tf.reverse(tf.reverse_sequence(type_ids, out_len, seq_axis=1, batch_axis=0), [1])
        mask = tf.reverse(mask, [1])
    shape = tf.stack([rows, t])
    return tf.reshape(input_ids, shape), tf.reshape(type_ids, shape), tf.reshape(mask, shape)


def _kept_first(first, lens, kept, truncation_side: str):
    """Where the kept content starts: the beginning (right truncation) or ``lens - kept`` in (left)."""
    return first + (lens - kept if truncation_side == "left" else 0)


def finalize(ids: tf.RaggedTensor, post: PostProcessor, max_seq_length: int, pad_id: int,
             truncation_side: str = "right", padding_side: str = "right") -> tuple[tf.Tensor, tf.Tensor]:
    """Truncate, add specials, pad to the longest row: ragged ids ``[B, (n)]`` -> two int64 ``[B, T]``.

    Truncation keeps ``max_seq_length - n_special`` content ids (from the start for
    ``truncation_side="right"``, the end for ``"left"``), then the prefix and suffix specials are
    added, as HF ``truncation="longest_first"`` does for a single sentence.
    """
    values, first, lens = _content(ids)
    kept = tf.minimum(lens, max(int(max_seq_length) - post.n_special, 0))
    input_ids, _, mask = _assemble(
        [("const", post.prefix, [0] * len(post.prefix)),
         ("seq", values, _kept_first(first, lens, kept, truncation_side), kept, 0),
         ("const", post.suffix, [0] * len(post.suffix))], pad_id, padding_side)
    return input_ids, mask


def longest_first(len_a: tf.Tensor, len_b: tf.Tensor, budget: int) -> tuple[tf.Tensor, tf.Tensor]:
    """How many content ids of each side a pair keeps: HF tokenizers' ``LongestFirst`` truncation.

    With ``n1 <= n2`` the shorter and longer lengths: nothing is cut when they fit; else the longer
    keeps ``max(n1, budget - n1)``; if that still does not fit, the shorter keeps ``budget // 2`` and
    the longer ``budget // 2 + budget % 2`` (tokenizers/src/utils/truncation.rs).
    """
    budget = tf.constant(int(budget), tf.int64)
    swap = len_a > len_b
    n1 = tf.minimum(len_a, len_b)
    k2 = tf.where(n1 > budget, n1, tf.maximum(n1, budget - n1))
    both = n1 + k2 > budget
    k1 = tf.where(both, budget // 2, n1)
    k2 = tf.where(both, budget // 2 + budget % 2, k2)
    fits = len_a + len_b <= budget
    ka = tf.where(fits, len_a, tf.minimum(len_a, tf.where(swap, k2, k1)))
    kb = tf.where(fits, len_b, tf.minimum(len_b, tf.where(swap, k1, k2)))
    return ka, kb


def finalize_pair(ids_a: tf.RaggedTensor, ids_b: tf.RaggedTensor, pair: PairTemplate, max_seq_length: int,
                  pad_id: int, truncation_side: str = "right",
                  padding_side: str = "right") -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A batch of pairs as HF lays them out: ``(input_ids, token_type_ids, attention_mask)`` ``[B, T]``.

    ``truncation="longest_first"`` to ``max_seq_length`` special tokens included (:func:`longest_first`),
    each side cut at the end given by ``truncation_side``; the template's specials and token types.
    """
    va, fa, la = _content(ids_a)
    vb, fb, lb = _content(ids_b)
    ka, kb = longest_first(la, lb, max(int(max_seq_length) - pair.n_special, 0))
    return _assemble(
        [("const", pair.prefix, pair.prefix_types),
         ("seq", va, _kept_first(fa, la, ka, truncation_side), ka, pair.type_a),
         ("const", pair.middle, pair.middle_types),
         ("seq", vb, _kept_first(fb, lb, kb, truncation_side), kb, pair.type_b),
         ("const", pair.suffix, pair.suffix_types)], pad_id, padding_side)


# ------------------------------------------------------------------------------------ the skeleton
class InGraphTokenizer(tf.Module):
    """Base class: an HF fast tokenizer reproduced in-graph. Subclasses supply the pieces functions.

    Args:
        hf_tokenizer: the transformers fast tokenizer (configured as sentence-transformers uses it).
        max_seq_length: truncation length, special tokens included.

    Attributes:
        pad_id, vocab_size, max_seq_length, post (:class:`PostProcessor`), added (list of
        :class:`AddedToken`).
    """

    #: Whether ``normalize_pieces``/``encode_pieces`` accept empty pieces (and give no ids for them).
    #: When true, batches without any added token skip dropping empty sentences first.
    empty_pieces_ok = False

    def __init__(self, hf_tokenizer, max_seq_length: int, name: str | None = None):
        super().__init__(name=name)
        tj = tokenizer_json(hf_tokenizer)
        self._source = _Opaque(tj)  # not tracked by tf.Module (a 30k-entry vocab dict would be)
        self.max_seq_length = int(max_seq_length)
        self.post = PostProcessor.from_tokenizer_json(tj)
        if self.max_seq_length < self.post.n_special:
            raise UnsupportedError(
                f"max_seq_length {self.max_seq_length} is smaller than the {self.post.n_special} special tokens")
        pad = getattr(hf_tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.vocab_size = int(len(hf_tokenizer)) if hasattr(hf_tokenizer, "__len__") else int(
            hf_tokenizer.get_vocab_size())
        self.truncation_side = getattr(hf_tokenizer, "truncation_side", "right") or "right"
        self.padding_side = getattr(hf_tokenizer, "padding_side", "right") or "right"
        self.added = added_tokens(tj)
        raw = [t for t in self.added if not t.normalized]
        norm = [t for t in self.added if t.normalized]
        backend = getattr(hf_tokenizer, "backend_tokenizer", hf_tokenizer)
        norm_patterns = [backend.normalizer.normalize_str(t.content) if backend.normalizer else t.content
                         for t in norm]
        word_table = None
        if any(t.single_word for t in self.added):
            word_table = RangeTable(cached_probe("word_chars", None, lambda _: probe_word_chars()),
                                    name="word_chars")
        self.raw_matcher = AddedTokenMatcher(raw, word_table=word_table, name="raw_added_tokens")
        self.norm_matcher = AddedTokenMatcher(norm, norm_patterns, word_table=word_table,
                                              name="normalized_added_tokens")

    @property
    def tokenizer_json(self) -> dict:
        """The backend tokenizer.json (export time only)."""
        return self._source.value

    # -- to override -----------------------------------------------------------------------------
    def normalize_pieces(self, pieces: tf.RaggedTensor) -> tf.RaggedTensor:
        """HF normalizer on text pieces: int32 ``[P, (chars)]`` -> ``[P, (chars')]``. Default: identity.

        Pieces are never empty unless the subclass sets ``empty_pieces_ok``. Row splits are int64.
        """
        return pieces

    def encode_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        """Pre-tokenizer + model on normalized text pieces -> int64 ids ``[P, (n)]``."""
        raise NotImplementedError

    def encode_raw_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        """Normalizer + pre-tokenizer + model on raw text pieces -> int64 ids ``[P, (n)]``.

        What the pipeline calls when no added token is matched on normalized text (the usual
        case). Override it to fuse the two steps; the default chains the two methods above.
        """
        return self.encode_pieces(self.normalize_pieces(pieces), is_first)

    # -- the pipeline ----------------------------------------------------------------------------
    # Graph code throughout: no Python control flow on tensors, so autograph must not rewrite it
    # (it mis-converted the tf.cond branches below when a caller's tf.function enabled it).
    @tf.autograph.experimental.do_not_convert
    def content_ids(self, strings: tf.Tensor) -> tf.RaggedTensor:
        """Token ids before truncation and specials: int64 ``[B, (n)]``."""
        strings = tf.reshape(tf.convert_to_tensor(strings, tf.string), [-1])
        cps = decode_utf8(strings).with_row_splits_dtype(tf.int64)
        if self.norm_matcher.n_patterns:
            return self._content_ids_general(cps)
        if not self.raw_matcher.n_patterns:
            return self._content_ids_whole_rows(cps)
        # most batches hold no added token at all: skip the splitting machinery for them
        values, splits = tf.cond(
            self.raw_matcher.may_match(cps.flat_values),
            lambda: _parts(self._content_ids_general(cps)),
            lambda: _parts(self._content_ids_whole_rows(cps)),
        )
        return tf.RaggedTensor.from_row_splits(values, splits, validate=False)

    def _content_ids_whole_rows(self, cps: tf.RaggedTensor) -> tf.RaggedTensor:
        """No added token in the batch: every sentence is one text piece."""
        if self.empty_pieces_ok:
            ids = self.encode_raw_pieces(cps, tf.ones([cps.nrows()], tf.bool))
            return tf.cast(ids, tf.int64).with_row_splits_dtype(tf.int64)
        keep = cps.row_lengths() > 0
        text = mask_rows(cps, keep)
        ids = self.encode_raw_pieces(text, tf.ones([text.nrows()], tf.bool))
        ids = tf.cast(ids, tf.int64).with_row_splits_dtype(tf.int64)
        return _merge_piece_ids(keep, ids, tf.zeros_like(keep, tf.int64), added_len=0)

    def _content_ids_general(self, cps: tf.RaggedTensor) -> tf.RaggedTensor:
        pieces = self.raw_matcher.split(cps)
        is_text = pieces.token_id < 0
        text = mask_rows(pieces.codepoints, is_text)
        if self.norm_matcher.n_patterns:
            # put the normalized text back in place, then split it on the normalized added tokens
            pieces = _split_normalized(pieces, self.normalize_pieces(text), self.norm_matcher)
            is_text = pieces.token_id < 0
            normalized = mask_rows(pieces.codepoints, is_text)
            text_ids = self.encode_pieces(normalized, tf.boolean_mask(pieces.is_first, is_text))
        else:
            text_ids = self.encode_raw_pieces(text, tf.boolean_mask(pieces.is_first, is_text))
        text_ids = tf.cast(text_ids, tf.int64).with_row_splits_dtype(tf.int64)
        per_piece = _merge_piece_ids(is_text, text_ids, pieces.token_id)
        return tf.RaggedTensor.from_row_splits(per_piece.values, tf.gather(per_piece.row_splits, pieces.row_splits),
                                               validate=False)

    @tf.autograph.experimental.do_not_convert
    def tokenize(self, strings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``tf.string [B]`` -> ``(input_ids, attention_mask)``, int64 ``[B, T]``, T = longest row."""
        ids = self.content_ids(strings)
        return finalize(ids, self.post, self.max_seq_length, self.pad_id, self.truncation_side, self.padding_side)

    @tf.autograph.experimental.do_not_convert
    def tokenize_pair(self, first: tf.Tensor, second: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Two ``tf.string [B]`` -> ``(input_ids, token_type_ids, attention_mask)`` int64 ``[B, T]``.

        Both sides in one pass through :meth:`content_ids` (one graph for the batch of 2B texts).
        """
        if self.post.pair is None:
            raise UnsupportedError("the tokenizer's post-processor defines no layout for pairs")
        both = self.content_ids(tf.concat([tf.reshape(first, [-1]), tf.reshape(second, [-1])], 0))
        n = tf.size(first, out_type=tf.int64)
        both = both.with_row_splits_dtype(tf.int64)
        split = both.row_splits[n]
        ids_a = tf.RaggedTensor.from_row_splits(both.values[:split], both.row_splits[: n + 1], validate=False)
        ids_b = tf.RaggedTensor.from_row_splits(both.values[split:], both.row_splits[n:] - split, validate=False)
        return finalize_pair(ids_a, ids_b, self.post.pair, self.max_seq_length, self.pad_id, self.truncation_side,
                             self.padding_side)


class _Opaque:
    """Holds a value out of tf.Module's attribute tracking."""

    def __init__(self, value):
        self.value = value


def _parts(rt: tf.RaggedTensor) -> tuple[tf.Tensor, tf.Tensor]:
    rt = rt.with_row_splits_dtype(tf.int64)
    return rt.values, rt.row_splits


def _merge_piece_ids(is_text: tf.Tensor, text_ids: tf.RaggedTensor, added_ids: tf.Tensor,
                     added_len: int = 1) -> tf.RaggedTensor:
    """Interleave text-piece ids ``[T, (n)]`` and ``added_len`` (0 or 1) id per other piece into ``[P, (n)]``."""
    text_ids = text_ids.with_row_splits_dtype(tf.int64)
    text_idx = tf.cumsum(tf.cast(is_text, tf.int64)) - 1
    text_lens = tf.concat([text_ids.row_lengths(), tf.zeros([1], tf.int64)], 0)  # padded: gathers in bounds
    lens = tf.where(is_text, tf.gather(text_lens, tf.maximum(text_idx, 0)), added_len)
    out_splits = splits_from_lengths(lens)
    if added_len == 0:
        values = text_ids.values
    else:
        text_piece_pos = tf.where(is_text)[:, 0]
        tv_rows = rowids(text_ids.row_splits)
        text_pos = (tf.gather(out_splits, tf.gather(text_piece_pos, tv_rows))
                    + tf.range(tf.size(text_ids.values, out_type=tf.int64)) - tf.gather(text_ids.row_splits, tv_rows))
        other = tf.where(~is_text)[:, 0]
        values = tf.dynamic_stitch(
            [tf.cast(text_pos, tf.int32), tf.cast(tf.gather(out_splits, other), tf.int32)],
            [text_ids.values, tf.gather(added_ids, other)],
        )
        values = tf.reshape(values, [out_splits[-1]])
    return tf.RaggedTensor.from_row_splits(values, out_splits, validate=False)


# ------------------------------------------------------------------------------------ probing helpers




class Standalone(tf.Module):
    """An in-graph tokenizer on its own, saveable as a SavedModel: ``tokenize(strings [None]) ->
    {input_ids, attention_mask}`` (what an export's ``tokenize`` signature runs for single texts)."""

    def __init__(self, tokenizer, name=None):
        super().__init__(name=name)
        self.tok = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def tokenize(self, strings):
        ids, mask = self.tok.tokenize(strings)
        return {"input_ids": ids, "attention_mask": mask}
