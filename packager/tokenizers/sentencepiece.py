"""HF-exact SentencePiece (Unigram) tokenization in-graph: XLM-R, multilingual-e5, paraphrase-multilingual.

What the reference does (a ``transformers`` fast tokenizer with a ``tokenizers`` Unigram model, as
sentence-transformers calls it), and where the in-graph pipeline reproduces each step::

    raw text ──added tokens split out (<s> <pad> </s> <unk> <mask>, mask with lstrip)──▶  common.py
    each text piece ──normalizer: Precompiled charsmap [, Replace(" {2,}", " ")] [, Lowercase]──▶  here
    ──pre-tokenizer: [WhitespaceSplit,] Metaspace(▁, prepend_scheme, split)──▶  here
    ──Unigram Viterbi per pre-token, float64, HF tie-breaking, unknowns fused──▶  here
    ──ids──▶ truncate keeping </s>, <s> ... </s>, pad to the longest row  common.py

The HF pipeline is read from the tokenizer itself (``backend_tokenizer.to_str()``), not assumed:
transformers 5 rebuilds XLM-R's backend as Precompiled + ``WhitespaceSplit, Metaspace(always)``
whatever tokenizer.json says, while tokenizers-native files carry ``Replace(" {2,}")`` and a
splitting Metaspace. All Metaspace modes are supported; anything else is refused with a clear error.

Where HF and ``sentencepiece`` differ (each difference was measured), and what is done:

* **Lattice arithmetic.** spm (and so ``tensorflow_text.SentencepieceTokenizer``) scores the
  Viterbi lattice in float32, HF in float64. Repeated text ("hahaha", emoji runs, "wordword")
  has segmentations whose scores tie exactly in real arithmetic; rounding then decides, and the
  spm op picked other pieces than HF on 2 of the 87 lines of the shipped corpus. So no spm op is
  used: :class:`UnigramViterbi` runs HF's ``encode_optimized`` in float64 with HF's order of
  additions and tie rule (the piece that starts first wins), on a trie of the HF vocab. The graph
  therefore needs no TF-Text op library at all (core TF ops only).
* **The charsmap is applied per grapheme by HF, per longest match by spm.** HF walks extended
  grapheme clusters; a cluster shorter than 6 bytes that *starts* with a charsmap key is replaced
  by the value of the SHORTEST such key (the rest of the cluster is dropped: ``"ﬁ\u0301" -> "fi"``,
  ``"e\u0302\u0301" -> "ê"``); longer clusters are mapped char by char (NFD Korean jamo and
  half-width kana + dakuten stay decomposed), where spm composes them. :class:`PrecompiledNormalizer`
  reimplements HF's algorithm on code points with the rules decoded from the charsmap and the
  grapheme-break rules of UAX #29 (GB3-GB13, incl. GB9c and GB11). The per-code-point break
  properties come from the ``regex`` package, then are corrected by probing the HF normalizer
  itself wherever a property changes its output, so the graph follows the Unicode tables inside
  ``tokenizers``, not TF's or Python's.
* **Whitespace.** spm strips and collapses whitespace and adds one dummy prefix per sentence; HF
  splits on Unicode White_Space (WhitespaceSplit) or on ``▁`` only, and prefixes ``▁`` per word
  (``always``), only at offset 0 (``first``) or never, and not when the word starts with ``▁``.
* **The vocabulary.** HF's lattice holds every vocab entry (``"＜ｓ＞"`` normalizes to ``"<s>"``
  and becomes id 0), spm never matches control pieces. The trie holds exactly HF's pieces.
* **Ids.** ``sentencepiece.bpe.model`` has spm ids (``<unk>``=0, ``<s>``=1, ``</s>``=2); HF has
  the fairseq layout (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, pieces shifted by one,
  ``<mask>`` last). When the file is shipped it is checked against the HF vocab through the
  id table derived from both (:func:`spm_to_hf_ids`), and recorded as ``vocab_source``; the graph
  always emits HF ids, built from the Unigram vocab that sentence-transformers actually runs.

Speed: a pre-token's ids depend on it alone, so pre-tokens that are whole vocab pieces take their
ids from a table computed at export time by HF's Unigram model itself (``spm.word_cache``), and
pre-tokens computed while serving are remembered (``bpe.RuntimeCache``, as HF's Unigram ``cache``
does); only the others run the trie walk and the Viterbi.

Other inputs:

* **NUL bytes** are ordinary characters in every op used here (no ``regex_split``, whose RE2
  input stops at NUL); they end up as ``<unk>`` as in HF.
* **Invalid UTF-8** (a server receives raw bytes): decoded like Python's
  ``bytes.decode("utf-8", "replace")`` (one U+FFFD per maximal invalid subsequence, see
  ``common.decode_utf8``); the ids are those of HF on that decoded string. Nothing crashes.
* **Huge inputs.** Only the first ``max_seq_length`` pre-tokens of a text piece can reach the
  output, so the rest is dropped before the Viterbi. A pre-token of more than 1024 characters
  runs in chunks and stops once its first ``max_seq_length`` pieces are settled. A word whose
  segmentation stays ambiguous to its very end (250,000 identical emoji) needs the whole
  sequential programme: exact, but seconds per megabyte.

Ops used: core TensorFlow only (hash tables, gathers, ``tf.while_loop``); nothing from TF-Text,
so any TF >= 2.12 server loads the graph without op libraries.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from ..errors import UnsupportedError
from .bpe import WordCache, _ragged_src
from .common import (
    N_CODEPOINTS,
    WHITE_SPACE,
    CodepointMap,
    InGraphTokenizer,
    RangeTable,
    encode_keys,
    repeat_range,
    rowids,
    splits_from_lengths,
)
from .ragged import doubling_rounds, mark_ancestors, pointer_doubling
from .spm import (  # noqa: F401  (model_proto_class, spm_to_hf_ids, decode_charsmap: the SentencePiece API)
    CONTROL,
    CR,
    EXT_PICT,
    EXTEND,
    GRAPHEME_MAX_BYTES,
    INCB_CONSONANT,
    INCB_EXTEND,
    INCB_LINKER,
    INCB_SHIFT,
    LF,
    LV,
    LVT,
    PREPEND,
    RI,
    SPACING_MARK,
    SPM_FILES,
    ZWJ,
    L,
    T,
    V,
    check_spm_file,
    decode_charsmap,
    lowercase_map,
    model_proto_class,
    normalizer_steps,
    pack_utf8,
    pre_tokenizer_steps,
    probed_properties,
    spm_to_hf_ids,
    word_cache,
)

log = logging.getLogger(__name__)
# explicit tf.while_loop/tf.cond everywhere: autograph would only spend tracing time here
_no_autograph = tf.autograph.experimental.do_not_convert


def _scoped(name):
    """Run a graph method under a name scope (readable graphs and profiles)."""
    def wrap(fn):
        import functools

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with tf.name_scope(name):
                return fn(*args, **kwargs)
        return _no_autograph(inner)
    return wrap

# dynamic-programme steps per tf.while_loop iteration
UNROLL = 4


# ------------------------------------------------------------------------------------ model proto


# ------------------------------------------------------------------------------------ the charsmap


# ------------------------------------------------------------------------------------ graphemes


@_no_autograph
def _utf8_len(v: tf.Tensor) -> tf.Tensor:
    return (1 + tf.cast(v >= 0x80, tf.int64) + tf.cast(v >= 0x800, tf.int64) + tf.cast(v >= 0x10000, tf.int64))


@_no_autograph
def _utf8_bytes(v: tf.Tensor) -> tf.Tensor:
    """The UTF-8 bytes of each code point as one big-endian int64."""
    v = tf.cast(v, tf.int64)
    sh, band, bor = tf.bitwise.right_shift, tf.bitwise.bitwise_and, tf.bitwise.bitwise_or

    def cont(x):  # a continuation byte: 10xxxxxx
        return bor(tf.constant(0x80, tf.int64), band(x, 0x3F))

    def lead(mark, x):
        return bor(tf.constant(mark, tf.int64), x)

    c1, c2, c3 = cont(v), cont(sh(v, 6)), cont(sh(v, 12))
    two = lead(0xC0, sh(v, 6)) * 2**8 + c1
    three = lead(0xE0, sh(v, 12)) * 2**16 + c2 * 2**8 + c1
    four = lead(0xF0, sh(v, 18)) * 2**24 + c3 * 2**16 + c2 * 2**8 + c1
    return tf.where(v < 0x80, v, tf.where(v < 0x800, two, tf.where(v < 0x10000, three, four)))


@_no_autograph
def _last_true_before(flags: tf.Tensor, upto: tf.Tensor) -> tf.Tensor:
    """For each index ``upto[i]``: the largest j <= upto[i] with ``flags[j]``, or -1 (vectorised)."""
    pos = tf.where(flags)[:, 0]
    count = tf.cumsum(tf.cast(flags, tf.int64))
    c = tf.where(upto >= 0, tf.gather(count, tf.maximum(upto, 0)), 0)
    pos = tf.concat([pos, [-1]], 0)
    return tf.where(c > 0, tf.gather(pos, tf.maximum(c - 1, 0)), -1)


class PrecompiledNormalizer(tf.Module):
    """HF's ``Precompiled`` normalizer (spm_precompiled's ``normalize_string``) on code points.

    Per extended grapheme cluster g: if ``len(g.encode()) < 6`` and some charsmap key is a prefix of
    g, g becomes the replacement of the shortest such key; otherwise each character is replaced by
    its own rule (if any). Grapheme boundaries follow UAX #29 with properties from
    :func:`grapheme_properties`.

    Args:
        charsmap: the ``precompiled_charsmap`` bytes.
    """

    def __init__(self, charsmap: bytes, name: str | None = None):
        super().__init__(name=name)
        keys = decode_charsmap(charsmap)
        self.n_rules = len(keys)
        self.props = RangeTable(probed_properties(charsmap), name="grapheme_props")
        # rules reachable from the graph: one character, or a prefix of a grapheme < 6 bytes
        short = {k: v for k, v in keys.items() if len(k.encode("utf-8")) < GRAPHEME_MAX_BYTES}
        self.max_key_chars = max((len(k) for k in short), default=1)
        items = sorted(short.items(), key=lambda kv: pack_utf8(kv[0]))
        lens = np.array([len(v) for _, v in items], dtype=np.int64)
        self._lens = lens
        self._splits = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        self._values = np.array([ord(c) for _, v in items for c in v] or [0], dtype=np.int32)
        # one-character rules by code point (every character is looked up), longer ones by their
        # packed UTF-8 bytes (looked up only inside graphemes of several characters)
        single = [(ord(k), i) for i, (k, _) in enumerate(items) if len(k) == 1]
        multi = [(pack_utf8(k), i) for i, (k, _) in enumerate(items) if len(k) > 1] or [(-2, 0)]
        self.single = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([c for c, _ in single] or [-2], tf.int64),
                                                tf.constant([i for _, i in single] or [0], tf.int64)),
            default_value=-1)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([c for c, _ in multi], tf.int64),
                                                tf.constant([i for _, i in multi], tf.int64)),
            default_value=-1)

    @_no_autograph
    def breaks(self, v: tf.Tensor, first: tf.Tensor, piece_start: tf.Tensor) -> tf.Tensor:
        """bool ``[N]``: a grapheme starts at each code point.

        Args:
            v: code points (all pieces, flat).
            first: a piece starts at the code point.
            piece_start: flat index of the first code point of each code point's piece.
        """
        n = tf.size(v, out_type=tf.int64)
        idx = tf.range(n)
        p = self.props.lookup(v)
        gcb = tf.bitwise.bitwise_and(p, 15)
        none = 14  # "no previous character": in no class below
        prev = tf.where(first, none, tf.gather(gcb, tf.maximum(idx - 1, 0)))
        cur_bit = tf.bitwise.left_shift(1, gcb)
        prev_bit = tf.bitwise.left_shift(1, prev)

        def cur_in(*classes):
            return tf.bitwise.bitwise_and(cur_bit, sum(1 << c for c in classes)) != 0

        def prev_in(*classes):
            return tf.bitwise.bitwise_and(prev_bit, sum(1 << c for c in classes)) != 0

        ext_pict = tf.bitwise.bitwise_and(p, EXT_PICT) > 0
        incb = tf.bitwise.bitwise_and(tf.bitwise.right_shift(p, INCB_SHIFT), 3)
        prev_incb = tf.where(first, 0, tf.gather(incb, tf.maximum(idx - 1, 0)))
        # the rules that look further back than one character apply only after ZWJ, an Indic
        # linker/extend or a regional indicator: skip them for batches without any
        rare = ((ext_pict & (prev == ZWJ)) | ((incb == INCB_CONSONANT) & (prev_incb >= INCB_EXTEND))
                | ((gcb == RI) & (prev == RI)))

        def far_rules():
            # GB11: ExtPict Extend* ZWJ x ExtPict
            j = _last_true_before(gcb != EXTEND, idx - 2)
            gb11 = ext_pict & (prev == ZWJ) & (j >= piece_start) & tf.gather(ext_pict, tf.maximum(j, 0))
            # GB9c: Consonant [Extend Linker]* Linker [Extend Linker]* x Consonant
            j = _last_true_before(incb < INCB_EXTEND, idx - 1)
            linkers = tf.cumsum(tf.cast(incb == INCB_LINKER, tf.int64))
            n_link = tf.gather(linkers, tf.maximum(idx - 1, 0)) - tf.gather(linkers, tf.maximum(j, 0))
            gb9c = ((incb == INCB_CONSONANT) & ~first & (j >= piece_start)
                    & (tf.gather(incb, tf.maximum(j, 0)) == INCB_CONSONANT) & (n_link > 0))
            # GB12/13: regional indicators pair up
            j = _last_true_before(gcb != RI, idx - 1)
            run = idx - 1 - tf.maximum(j, piece_start - 1)
            gb12 = (gcb == RI) & (prev == RI) & (run % 2 == 1)
            return gb11 | gb9c | gb12

        far = tf.cond(tf.reduce_any(rare), far_rules, lambda: tf.zeros_like(first))
        no_break = (
            ((prev == L) & cur_in(L, V, LV, LVT))
            | (prev_in(LV, V) & cur_in(V, T))
            | (prev_in(LVT, T) & (gcb == T))
            | cur_in(EXTEND, ZWJ, SPACING_MARK)
            | (prev == PREPEND)
            | far
        )
        hard = prev_in(CR, LF, CONTROL) | cur_in(CR, LF, CONTROL)
        cr_lf = (prev == CR) & (gcb == LF)
        return first | (hard & ~cr_lf) | (~hard & ~no_break)

    @_scoped("sp_normalize")
    def apply(self, pieces: tf.RaggedTensor) -> tf.RaggedTensor:
        """Normalize ragged code points ``[P, (chars)]`` -> ``[P, (chars')]``."""
        pieces = pieces.with_row_splits_dtype(tf.int64)
        v = pieces.flat_values
        n = tf.size(v, out_type=tf.int64)
        idx = tf.range(n)
        starts = pieces.row_splits[:-1]
        first = tf.scatter_nd(tf.reshape(tf.boolean_mask(starts, starts < n), [-1, 1]),
                              tf.ones_like(tf.boolean_mask(starts, starts < n), tf.bool), [n])
        brk = self.breaks(v, first, tf.gather(pieces.row_splits, rowids(pieces.row_splits)))
        # rule of each single character
        slot1 = self.single.lookup(tf.cast(v, tf.int64))

        def multi_char_graphemes():
            """Graphemes of several characters and < 6 bytes take the shortest key that is a prefix."""
            nbytes = _utf8_len(v)
            ubytes = _utf8_bytes(v)
            gstart = tf.where(brk)[:, 0]  # [G]
            gid = tf.cumsum(tf.cast(brk, tf.int64)) - 1
            g_chars = tf.concat([gstart[1:], tf.reshape(n, [1])], 0) - gstart
            g_bytes = tf.math.unsorted_segment_sum(nbytes, gid, tf.size(gstart))
            cand = (g_chars >= 2) & (g_bytes < GRAPHEME_MAX_BYTES)
            c_start = tf.boolean_mask(gstart, cand)
            c_chars = tf.boolean_mask(g_chars, cand)
            found = tf.gather(slot1, c_start)
            acc_bytes = tf.gather(ubytes, c_start)
            acc_len = tf.gather(nbytes, c_start)
            for k in range(1, min(self.max_key_chars, GRAPHEME_MAX_BYTES - 1)):
                pos = tf.minimum(c_start + k, n - 1)
                inside = k < c_chars
                shift = tf.bitwise.left_shift(acc_bytes, 8 * tf.gather(nbytes, pos))
                acc_bytes = tf.where(inside, shift + tf.gather(ubytes, pos), acc_bytes)
                acc_len = tf.where(inside, acc_len + tf.gather(nbytes, pos), acc_len)
                slot_k = self.table.lookup(acc_len * 2**40 + acc_bytes)
                found = tf.where((found < 0) & inside, slot_k, found)
            hit = found >= 0
            hit_start = tf.boolean_mask(c_start, hit)
            # the grapheme's first character emits the key's replacement, the others nothing
            char_slot = tf.tensor_scatter_nd_update(slot1, hit_start[:, None], tf.boolean_mask(found, hit))
            replaced = tf.scatter_nd(hit_start[:, None], tf.ones_like(hit_start), [n])
            dropped = (tf.gather(tf.gather(replaced, gstart), gid) > 0) & ~brk
            return char_slot, dropped

        char_slot, dropped = tf.cond(tf.reduce_any(~brk), multi_char_graphemes,
                                     lambda: (slot1, tf.zeros_like(brk)))

        def rewrite():
            lens = tf.where(dropped, tf.zeros_like(idx),
                            tf.where(char_slot >= 0, tf.gather(tf.constant(self._lens), tf.maximum(char_slot, 0)), 1))
            out_splits = splits_from_lengths(lens)
            src = repeat_range(lens)
            within = tf.range(out_splits[-1]) - tf.gather(out_splits, src)
            s = tf.gather(char_slot, src)
            from_table = tf.gather(tf.constant(self._values),
                                   tf.gather(tf.constant(self._splits), tf.maximum(s, 0)) + within)
            values = tf.where(s >= 0, from_table, tf.gather(v, src))
            return values, tf.gather(out_splits, pieces.row_splits)

        values, new_splits = tf.cond(tf.reduce_any(char_slot >= 0) | tf.reduce_any(dropped), rewrite,
                                     lambda: (v, pieces.row_splits))
        return tf.RaggedTensor.from_row_splits(values, new_splits, validate=False)


# ------------------------------------------------------------------------------------ Unigram
class UnigramViterbi(tf.Module):
    """HF ``Unigram::encode_optimized`` in-graph, in float64, with HF's tie-breaking.

    For every end position e of a pre-token, ``best[e] = max over pieces p = s[st:e] of
    score(p) + best[st]`` (an unknown character costs ``min(score) - 10`` where no one-character
    piece matches); on a tie the piece that starts first wins. The path is read back from the
    end, and consecutive unknowns are fused into one ``unk_id``. Sums are float64 and added in
    HF's order, so near-ties (repeated text: "hahaha", emoji runs) resolve exactly as in HF,
    which a float32 SentencePiece lattice does not.

    Pieces are found with a trie stored as a hash table ``(node, code point) -> child``, walked
    for all positions at once. The dynamic programme steps through positions, vectorised over
    all pre-tokens of the batch; paths are read back by pointer doubling. Pre-tokens longer than
    ``long_word`` code points run in a second programme, in chunks, that stops as soon as their
    first ``max_tokens`` pieces are settled (every best path ending in the last ``max_len``
    positions passes through the same piece number ``max_tokens``), so a huge word usually costs
    only what its first ``max_tokens`` pieces need.

    Args:
        vocab: HF Unigram vocab ``[(piece, score)]`` in id order.
        unk_id: HF id of the unknown piece.
        max_tokens: the most pieces a pre-token can contribute (``max_seq_length``).
    """

    def __init__(self, vocab: Sequence[tuple[str, float]], unk_id: int, max_tokens: int,
                 long_word: int = 1024, chunk: int = 256, name: str | None = None):
        super().__init__(name=name)
        children: dict[tuple[int, int], int] = {}
        node_piece = [-1]
        for i, (piece, _) in enumerate(vocab):
            node = 0
            for ch in piece:
                key = (node, ord(ch))
                nxt = children.get(key)
                if nxt is None:
                    nxt = children[key] = len(node_piece)
                    node_piece.append(-1)
                node = nxt
            if piece:
                node_piece[node] = i  # HF's token_to_ids: a repeated piece keeps its last id
        scores = [float(sc) for _, sc in vocab]
        unk_score = min(scores) - 10.0 if scores else -10.0  # K_UNK_PENALTY
        self.max_len = max([len(p) for p, _ in vocab if p] or [1])
        self.unk_slot = len(vocab)
        self.unk_id = int(unk_id)
        self.max_tokens = int(max_tokens)
        self.long_word = int(long_word)
        self.chunk = -(-int(chunk) // UNROLL) * UNROLL
        self.n_nodes = len(node_piece)
        self._scores = np.array(scores + [unk_score, -np.inf], dtype=np.float64)  # last: no piece
        self._ids = np.array(list(range(len(vocab))) + [unk_id, unk_id], dtype=np.int32)
        self._node_piece = np.array(node_piece, dtype=np.int32)
        keys = np.array([(n << 21) | c for n, c in children], dtype=np.int64)
        vals = np.array(list(children.values()), dtype=np.int32)  # node ids < 2**31: half the bytes
        self.trie = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(vals)), default_value=-1)

    # -- candidates ----------------------------------------------------------------------------
    @_scoped("sp_candidates")
    def candidates(self, v: tf.Tensor, row_end: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The pieces ending at each position, longest first: slots, int32 ``[N, L]``.

        Column ``k`` holds the piece of length ``L - k`` ending there (``len(vocab) + 1``: none,
        score -inf; ``len(vocab)``: an unknown character). Scores are looked up from the slots
        where needed, so a long text costs 4, not 12, bytes per character and column.
        """
        n = tf.size(v, out_type=tf.int64)
        lm = self.max_len
        none = self.unk_slot + 1
        node_piece = tf.constant(self._node_piece)
        v64 = tf.cast(v, tf.int64)

        # walk the trie one level per step from every start position at once; only walks still
        # inside the trie and inside their pre-token stay (live: start, end, node)
        def body(d, live, hits):
            at = live[:, 0] + tf.cast(d - 1, tf.int64)
            child = tf.cast(self.trie.lookup(live[:, 2] * (1 << 21) + tf.gather(v64, at)), tf.int64)
            piece = tf.gather(node_piece, tf.maximum(child, 0))
            found = (child >= 0) & (piece >= 0)
            # (end position, column of length d) -> piece
            hit = tf.stack([at * lm + (lm - tf.cast(d, tf.int64)), tf.cast(piece, tf.int64)], axis=1)
            hits = tf.concat([hits, tf.boolean_mask(hit, found)], 0)
            nxt = tf.stack([live[:, 0], live[:, 1], child], axis=1)
            return d + 1, tf.boolean_mask(nxt, (child >= 0) & (at + 1 < live[:, 1])), hits

        live0 = tf.stack([tf.range(n), row_end, tf.zeros([n], tf.int64)], axis=1)
        # the hits are concatenated, not collected in a growing TensorArray: that one needs
        # TensorListSetItem's resize_if_index_out_of_bounds, which TF <= 2.12 (TF-Serving 2.12) lacks
        _, _, hits = tf.while_loop(
            lambda d, live, hits: (d <= lm) & (tf.shape(live)[0] > 0), body,
            (tf.constant(1), live0, tf.zeros([0, 2], tf.int64)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, 3]), tf.TensorShape([None, 2])))
        slot = tf.scatter_nd(hits[:, :1], tf.cast(hits[:, 1], tf.int32) - none, tf.reshape(n * lm, [1])) + none
        slot = tf.reshape(slot, tf.stack([n, tf.constant(lm, tf.int64)]))
        # no one-character piece: the character is unknown
        last_col = tf.where(tf.equal(slot[:, lm - 1], none), self.unk_slot, slot[:, lm - 1])
        slot = tf.concat([slot[:, : lm - 1], last_col[:, None]], axis=1)
        return slot

    # -- the dynamic programme -----------------------------------------------------------------
    @_no_autograph
    def _window0(self, w):
        lm = self.max_len
        return tf.concat([tf.fill(tf.stack([w, lm - 1]), tf.constant(-np.inf, tf.float64)),
                          tf.zeros(tf.stack([w, 1]), tf.float64)], axis=1)

    @_scoped("sp_forward")
    def _short(self, slot, starts, lens) -> tf.RaggedTensor:
        """Best paths of pre-tokens of at most ``long_word`` code points -> HF ids ``[W, (n)]``.

        Pre-tokens are sorted longest first, so step t of the programme touches only the prefix
        of those at least t long, and every array is laid out step-major without padding (entry
        ``offs[t-1] + rank`` is position t of the pre-token of that rank): the work is the number
        of characters, the number of steps the longest pre-token. The loop carries only the best
        scores; which piece won is recomputed afterwards for all entries at once, from the very
        same float64 sums.
        """
        lm = self.max_len
        w = tf.size(starts, out_type=tf.int32)
        order = tf.argsort(-lens, stable=True)
        s_starts = tf.gather(starts, order)
        s_lens = tf.cast(tf.gather(lens, order), tf.int32)
        big_t = tf.reduce_max(tf.concat([s_lens, [0]], 0))
        active = tf.searchsorted(-s_lens, -tf.range(big_t + 1), side="right", out_type=tf.int32)  # [T+1]
        offs = tf.concat([[0], tf.cumsum(active[1:])], 0)  # step t starts at offs[t - 1]
        total = offs[-1]
        e_step = tf.cast(repeat_range(active[1:]), tf.int32) + 1
        e_rank = tf.range(total) - tf.gather(offs, e_step - 1)
        rows = tf.gather(s_starts, e_rank) + tf.cast(e_step - 1, tf.int64)
        cand = tf.gather(tf.constant(self._scores), tf.gather(slot, rows))  # [total, L]

        # UNROLL steps per loop iteration (the loop's own bookkeeping costs as much as a step);
        # steps past the end touch nothing (zero rows)
        n_loops = (big_t + UNROLL - 1) // UNROLL
        pad = n_loops * UNROLL - big_t
        rows_at = tf.concat([active[1:], tf.zeros(tf.reshape(pad, [1]), tf.int32)], 0)
        first_at = tf.concat([offs[:-1], tf.fill(tf.reshape(pad, [1]), total)], 0)
        begin = tf.reshape(tf.stack([first_at, tf.zeros_like(first_at)], 1), [n_loops, UNROLL, 2])
        size = tf.reshape(tf.stack([rows_at, tf.fill(tf.shape(rows_at), lm)], 1), [n_loops, UNROLL, 2])
        origin = tf.zeros([2], tf.int32)

        def body(i, window, ta):
            b_i, s_i = begin[i], size[i]
            for j in range(UNROLL):
                window = tf.slice(window, origin, s_i[j])
                window.set_shape([None, lm])
                best = tf.reduce_max(tf.slice(cand, b_i[j], s_i[j]) + window, axis=1)
                window = tf.concat([window[:, 1:], best[:, None]], axis=1)
                ta = ta.write(i * UNROLL + j, best)
            return i + 1, window, ta

        _, _, ta = tf.while_loop(
            lambda i, *_: i < n_loops, body,
            (tf.constant(0), self._window0(w),
             tf.TensorArray(tf.float64, size=n_loops * UNROLL, element_shape=[None], infer_shape=False)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, lm]), tf.TensorShape(None)))
        best = tf.cond(big_t > 0, ta.concat, lambda: tf.zeros([0], tf.float64))  # [total], step-major
        # the window each entry saw: best at step t - L + k of the same pre-token
        kk = tf.range(lm)
        src = e_step[:, None] - lm + kk[None, :]
        prev = tf.gather(best, tf.gather(offs, tf.maximum(src - 1, 0)) + e_rank[:, None])
        window = tf.where(src >= 1, prev, tf.where(tf.equal(src, 0), tf.constant(0.0, tf.float64),
                                                   tf.constant(-np.inf, tf.float64)))
        sc = cand + window
        top = tf.reduce_max(sc, axis=1, keepdims=True)
        # ties: the first column, i.e. the piece that starts first
        k = tf.reduce_min(tf.where(tf.equal(sc, top), kk[None, :], lm), axis=1)  # [total]

        # the best paths: from each pre-token's last entry follow the parents (entry of the
        # position the winning piece starts at), marking entries by pointer doubling
        length = lm - k
        p_step = e_step - length
        root = total  # one sentinel entry: every path ends there
        parent = tf.concat([tf.where(p_step >= 1, tf.gather(offs, tf.maximum(p_step - 1, 0)) + e_rank, root),
                            tf.reshape(root, [1])], 0)
        last_entry = tf.gather(offs, tf.maximum(s_lens - 1, 0)) + tf.range(w)
        on = tf.tensor_scatter_nd_max(tf.zeros(tf.reshape(total + 1, [1]), tf.int32),
                                      tf.where(s_lens > 0, last_entry, root)[:, None], tf.ones([w], tf.int32))
        on = mark_ancestors(on, parent, doubling_rounds(big_t))
        # entries of each pre-token in position order: rank-major index = first char of the rank + t - 1
        rank_first = tf.concat([[0], tf.cumsum(s_lens)[:-1]], 0)
        rank_major = tf.gather(rank_first, e_rank) + e_step - 1
        on_rm = tf.scatter_nd(rank_major[:, None], on[:total], tf.reshape(total, [1]))
        by_rank = tf.scatter_nd(rank_major[:, None], tf.range(total), tf.reshape(total, [1]))
        e = tf.boolean_mask(by_rank, on_rm > 0)  # path entries, pre-token by pre-token, in order
        rank = tf.gather(e_rank, e)
        slots = tf.gather_nd(slot, tf.stack([tf.gather(rows, e), tf.cast(tf.gather(k, e), tf.int64)], axis=1))
        ids = self._fuse_unknowns(rank, tf.cast(tf.gather(tf.constant(self._ids), slots), tf.int64), w)
        return tf.gather(ids, tf.math.invert_permutation(order))

    def _fuse_unknowns(self, rows, ids, n_rows) -> tf.RaggedTensor:
        """Ids in row order -> ragged ``[n_rows, (n)]`` with runs of unknowns fused (HF fuse_unk)."""
        same_row = tf.concat([[False], tf.equal(rows[1:], rows[:-1])], 0)
        prev_unk = tf.concat([[False], tf.equal(ids[:-1], self.unk_id)], 0)
        keep = ~(same_row & prev_unk & tf.equal(ids, self.unk_id))
        rows, ids = tf.boolean_mask(rows, keep), tf.boolean_mask(ids, keep)
        counts = tf.math.bincount(tf.cast(rows, tf.int32), minlength=n_rows, maxlength=n_rows, dtype=tf.int64)
        return tf.RaggedTensor.from_row_lengths(ids, counts, validate=False)

    @_scoped("sp_long")
    def _forward_long(self, slot, starts, lens):
        """The programme for long pre-tokens: in chunks of positions, stopping where the first
        ``max_tokens`` pieces are settled. Returns ``(columns [T+1, W], end [W])``: the winning
        column per position (row 0 unused) and the position each path is read back from.

        As in :meth:`_short`, the loop carries only best scores; the winning columns of a chunk
        are recomputed from them, vectorised, once the chunk is done.
        """
        lm = self.max_len
        w = tf.size(starts)
        lens32 = tf.cast(lens, tf.int32)
        chunk = self.chunk  # a multiple of UNROLL
        n_rows = tf.shape(slot, out_type=tf.int64)[0]
        scores = tf.constant(self._scores)
        kk = tf.range(lm)

        def outer(t0, window, acc, end, next_check):
            longest = tf.reduce_max(tf.where(end < 0, lens32, 0))
            n = tf.minimum(chunk, longest + 1 - t0)
            n_pad = (n + UNROLL - 1) // UNROLL * UNROLL
            pos = t0 + tf.range(n_pad)
            rows = tf.minimum(starts[None, :] + tf.cast(pos - 1, tf.int64)[:, None], n_rows - 1)
            block = tf.gather(scores, tf.gather(slot, rows))  # [n_pad, W, L]

            def inner(i, win, ta):
                for j in range(UNROLL):
                    best = tf.reduce_max(block[i * UNROLL + j] + win, axis=1)
                    win = tf.concat([win[:, 1:], best[:, None]], axis=1)
                    ta = ta.write(i * UNROLL + j, best)
                return i + 1, win, ta

            _, window_out, ta = tf.while_loop(
                lambda i, *_: i * UNROLL < n_pad, inner,
                (tf.constant(0), window, tf.TensorArray(tf.float64, size=n_pad, element_shape=[None])))
            # best at positions t0 - L .. t0 + n_pad - 1, then the window each position saw
            hist = tf.concat([tf.transpose(window), ta.stack()], axis=0)
            seen = tf.transpose(tf.gather(hist, tf.range(n_pad)[:, None] + kk[None, :]), [0, 2, 1])  # [n_pad, W, L]
            sc = block + seen
            top = tf.reduce_max(sc, axis=2, keepdims=True)
            k = tf.reduce_min(tf.where(tf.equal(sc, top), kk[None, None, :], lm), axis=2)
            acc = tf.concat([acc, k], axis=0)
            last = t0 + n_pad - 1
            due = last >= next_check
            end = tf.cond(due, lambda: self._settle(acc, last, lens32, end), lambda: end)
            return t0 + n_pad, window_out, acc, end, tf.where(due, next_check * 2, next_check)

        _, _, acc, end, _ = tf.while_loop(
            lambda t0, window, acc, end, nc: tf.reduce_any((t0 <= lens32) & (end < 0)),
            outer,
            (tf.constant(1), self._window0(w), tf.zeros(tf.stack([1, w]), tf.int32), tf.fill([w], -1),
             tf.constant(max(self.max_tokens, chunk))),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, lm]), tf.TensorShape([None, None]),
                              tf.TensorShape([None]), tf.TensorShape([])),
        )
        return acc, tf.where(end < 0, lens32, end)

    @_no_autograph
    def _settle(self, cols, t, lens, end):
        """Pre-tokens whose first ``max_tokens`` pieces are fixed once position ``t`` is known:
        their paths from every position in ``(t - L, t]`` share the piece at depth max_tokens."""
        lm = self.max_len
        cols = cols[: t + 1]
        w = tf.shape(cols)[1]
        parent = _parents(cols, lm)
        depth = _depths(parent, tf.shape(cols)[0], w)
        q = tf.maximum(t - tf.range(lm), 0)[:, None] * w + tf.range(w)[None, :]  # flat, [L, W]
        steps = tf.gather(depth, q) - self.max_tokens
        anc = _lift(parent, q, steps)
        same = tf.reduce_all(tf.equal(anc, anc[:1]), axis=0)
        settled = (end < 0) & (t < lens) & tf.reduce_all(steps >= 0, axis=0) & same
        return tf.where(settled, anc[0] // w, end)

    @_scoped("sp_paths")
    def _read_paths(self, cols, end, slot, starts) -> tf.RaggedTensor:
        """HF ids of the best path ending at ``end[w]`` of each (long) pre-token: ``[W, (n)]``.
        The positions on each path are marked by pointer doubling (log2(T) rounds)."""
        lm = self.max_len
        t1 = tf.shape(cols)[0]
        w = tf.shape(cols)[1]
        cols_flat = tf.reshape(cols, [-1])
        parent = _parents(cols, lm)
        start = tf.cast(end, tf.int32) * w + tf.range(w)
        on = tf.scatter_nd(start[:, None], tf.ones([w], tf.int32), [t1 * w])
        on = mark_ancestors(on, parent, doubling_rounds(t1))
        on = tf.transpose(tf.reshape(on > 0, [t1, w]))  # [W, T+1], position order
        on = tf.concat([tf.zeros([w, 1], tf.bool), on[:, 1:]], axis=1)  # position 0 is not a piece
        where = tf.cast(tf.where(on), tf.int32)  # (pre-token, position), sorted
        ws, pos = where[:, 0], where[:, 1]
        rows = tf.gather(starts, ws) + tf.cast(pos, tf.int64) - 1
        col = tf.gather(cols_flat, pos * w + ws)
        slots = tf.gather_nd(slot, tf.stack([rows, tf.cast(col, tf.int64)], axis=1))
        return self._fuse_unknowns(ws, tf.cast(tf.gather(tf.constant(self._ids), slots), tf.int64), w)

    @_no_autograph
    def encode(self, words: tf.RaggedTensor) -> tf.RaggedTensor:
        """Code points of pre-tokens ``[W, (chars)]`` -> HF ids ``[W, (n)]``."""
        words = words.with_row_splits_dtype(tf.int64)
        splits = words.row_splits
        row_end = tf.gather(splits[1:], rowids(splits))
        slot = self.candidates(words.flat_values, row_end)
        starts, lens = splits[:-1], splits[1:] - splits[:-1]
        long = lens > self.long_word
        long_sel = tf.where(long)[:, 0]
        short_sel = tf.where(~long)[:, 0]
        short_ids = self._short(slot, tf.gather(starts, short_sel), tf.gather(lens, short_sel))
        l_starts, l_lens = tf.gather(starts, long_sel), tf.gather(lens, long_sel)

        def long_path():
            cols, end = self._forward_long(slot, l_starts, l_lens)
            ids = self._read_paths(cols, end, slot, l_starts)[:, : self.max_tokens]
            return ids.flat_values, ids.row_splits

        def no_long():
            return tf.zeros([0], tf.int64), tf.zeros([1], tf.int64)

        values, splits_ = tf.cond(tf.size(long_sel) > 0, long_path, no_long)
        long_ids = tf.RaggedTensor.from_row_splits(values, splits_, validate=False)
        both = tf.concat([short_ids, long_ids], axis=0)
        inverse = tf.math.invert_permutation(tf.cast(tf.concat([short_sel, long_sel], 0), tf.int32))
        return tf.gather(both, inverse)


@_no_autograph
def _parents(cols: tf.Tensor, lm: int) -> tf.Tensor:
    """Flat parent pointers of the best paths: position p -> p - piece length (0 -> 0)."""
    t1, w = tf.shape(cols)[0], tf.shape(cols)[1]
    pos = tf.range(t1)[:, None]
    length = tf.where(pos > 0, lm - cols, 0)
    return tf.reshape((pos - length) * w + tf.range(w)[None, :], [-1])


@_no_autograph
def _depths(parent: tf.Tensor, t1, w) -> tf.Tensor:
    """Number of pieces on the best path to each (flat) position, by pointer doubling."""
    count = tf.reshape(tf.cast(tf.broadcast_to(tf.range(t1)[:, None] > 0, tf.stack([t1, w])), tf.int32), [-1])
    return pointer_doubling(parent, count, lambda _i, c, jump: c + tf.gather(c, jump), doubling_rounds(t1))


@_no_autograph
def _lift(parent: tf.Tensor, q: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
    """The ancestor ``steps`` pieces up from each flat position ``q`` (binary lifting)."""
    steps = tf.maximum(steps, 0)

    def step(bit, node, jump):  # at round ``bit`` a jump spans 2**bit pieces
        take = tf.bitwise.bitwise_and(tf.bitwise.right_shift(steps, bit), 1) > 0
        return tf.where(take, tf.gather(jump, node), node)

    top = tf.reduce_max(tf.concat([tf.reshape(steps, [-1]), [0]], 0))
    return pointer_doubling(parent, q, step, doubling_rounds(top))


# ------------------------------------------------------------------------------------ other steps


@_no_autograph
def _collapse_spaces(pieces: tf.RaggedTensor) -> tf.RaggedTensor:
    """``Replace(Regex(" {2,}"), " ")``: keep only the first space of every run."""
    pieces = pieces.with_row_splits_dtype(tf.int64)
    v = pieces.flat_values
    n = tf.size(v, out_type=tf.int64)
    idx = tf.range(n)
    row = rowids(pieces.row_splits)
    prev_space = (idx > tf.gather(pieces.row_splits, row)) & tf.equal(tf.gather(v, tf.maximum(idx - 1, 0)), 32)
    keep = ~(tf.equal(v, 32) & prev_space)
    kept = tf.math.unsorted_segment_sum(tf.cast(keep, tf.int64), row, pieces.nrows())
    return tf.RaggedTensor.from_row_splits(tf.boolean_mask(v, keep), splits_from_lengths(kept), validate=False)


# ------------------------------------------------------------------------------------ the tokenizer
class SentencePieceTokenizer(InGraphTokenizer):
    """In-graph twin of an HF Unigram (SentencePiece) fast tokenizer, e.g. XLM-R's.

    Args:
        hf_tokenizer: the transformers fast tokenizer as sentence-transformers configures it.
        module_dir: the Transformer module folder; its ``sentencepiece.bpe.model`` is used when
            present and consistent with the HF vocab.
        max_seq_length: truncation length, special tokens included.

    Attributes:
        pad_id, vocab_size: as the contract in ``packager.tokenizers`` says.
        vocab_source: ``"sentencepiece.bpe.model"`` or ``"tokenizer.json"``.

    Example::

        tok = SentencePieceTokenizer(hf_tok, Path("model"), 128)
        ids, mask = tok.tokenize(tf.constant(["Hallo Welt", "<mask> 世界"]))
    """

    def __init__(self, hf_tokenizer, module_dir, max_seq_length: int):
        super().__init__(hf_tokenizer, max_seq_length, name="sentencepiece_tokenizer")
        tj = self.tokenizer_json
        model = tj.get("model") or {}
        if model.get("type") != "Unigram":
            raise UnsupportedError(f"SentencePieceTokenizer needs a Unigram model, got {model.get('type')!r}")
        if model.get("byte_fallback"):
            raise UnsupportedError("Unigram models with byte_fallback are not supported")
        vocab = [(str(p), float(s)) for p, s in model["vocab"]]
        unk_id = model.get("unk_id")
        if unk_id is None:
            raise UnsupportedError("Unigram model without unk_id is not supported")

        # normalizer
        self._steps = []
        for step in normalizer_steps(tj.get("normalizer")):
            if step[0] == "precompiled":
                self._steps.append(("precompiled", PrecompiledNormalizer(step[1], name="precompiled")))
            elif step[0] == "lowercase":
                self._steps.append(("map", CodepointMap(lowercase_map(), name="lowercase")))
            else:
                self._steps.append(step)
        self._modules = [s[1] for s in self._steps if len(s) > 1 and isinstance(s[1], tf.Module)]

        # pre-tokenizer
        self.whitespace_split, self.metaspace = pre_tokenizer_steps(tj.get("pre_tokenizer"))
        ws = np.zeros(N_CODEPOINTS, dtype=np.int32)
        ws[WHITE_SPACE] = 1
        self.white_space = RangeTable(ws, name="white_space")

        # model
        spm_file = next((Path(module_dir) / f for f in SPM_FILES if (Path(module_dir) / f).is_file()), None)
        self.vocab_source = check_spm_file(spm_file, vocab)
        self.unigram = UnigramViterbi(vocab, int(unk_id), self.max_seq_length, name="unigram")
        # pre-tokens that are whole pieces: their ids looked up, not searched for (exact: a pre-token's
        # ids depend on it alone, and HF's own model computed them)
        keys, ids = word_cache(tj, self.whitespace_split, self.metaspace)
        self.word_cache = WordCache(keys, ids, name="word_cache") if keys else None

    # -- graph ---------------------------------------------------------------------------------
    @_no_autograph
    def normalize_pieces(self, pieces: tf.RaggedTensor) -> tf.RaggedTensor:
        pieces = pieces.with_row_splits_dtype(tf.int64)
        for step in self._steps:
            if step[0] == "precompiled":
                pieces = step[1].apply(pieces)
            elif step[0] == "map":
                pieces = step[1].apply(pieces)
            elif step[0] == "collapse_spaces":
                pieces = _collapse_spaces(pieces)
        return pieces

    @_scoped("sp_words")
    def _encode_pretokens(self, words: tf.RaggedTensor) -> tf.RaggedTensor:
        """Pre-tokens ``[W, (chars)]`` -> ids ``[W, (n)]``: cached ones looked up, the others by Viterbi."""
        if self.word_cache is None:
            return self.unigram.encode(words)
        words = words.with_row_splits_dtype(tf.int64)

        def compute(miss):
            lens = tf.gather(words.row_lengths(), miss)
            vals = tf.gather(words.values, _ragged_src(words.row_splits, miss, lens))
            ids = self.unigram.encode(tf.RaggedTensor.from_row_splits(vals, splits_from_lengths(lens), validate=False))
            ids = ids.with_row_splits_dtype(tf.int64)
            return tf.cast(ids.values, tf.int64), ids.row_splits

        ids, lens = self.word_cache.encode(encode_keys(words), compute)
        return tf.RaggedTensor.from_row_splits(ids, splits_from_lengths(lens), validate=False)

    @_scoped("sp_pretokenize")
    def encode_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        pieces = pieces.with_row_splits_dtype(tf.int64)
        v = pieces.flat_values
        n = tf.size(v, out_type=tf.int64)
        idx = tf.range(n)
        row_of = rowids(pieces.row_splits)
        piece_start = tf.gather(pieces.row_splits, row_of)
        at_start = idx == piece_start
        if self.whitespace_split:
            ws = self.white_space.lookup(v) > 0
            prev_ws = tf.gather(ws, tf.maximum(idx - 1, 0))
            word_start = ~ws & (at_start | prev_ws)
            keep = ~ws
        else:
            word_start = at_start
            keep = tf.ones_like(at_start)
        prepend = tf.zeros_like(at_start)
        if self.metaspace is not None:
            repl = ord(self.metaspace["replacement"])
            v = tf.where(tf.equal(v, 32), repl, v)
            is_repl = tf.equal(v, repl)
            scheme = self.metaspace["prepend_scheme"]
            if scheme == "always":
                prepend = word_start & ~is_repl
            elif scheme == "first":
                # HF prepends only to the split at original offset 0: the first word of the first
                # piece of a sentence when no whitespace precedes it
                prepend = word_start & ~is_repl & at_start & tf.gather(is_first, row_of)
            token_start = word_start | (is_repl & keep) if self.metaspace["split"] else word_start
        else:
            token_start = word_start
        token_start = token_start & keep
        # code points of the pre-tokens: kept characters, with the replacement prepended where due
        kept_idx = tf.where(keep)[:, 0]
        kv = tf.gather(v, kept_idx)
        kp = tf.gather(prepend, kept_idx)
        kt = tf.gather(token_start, kept_idx)
        # only the first max_seq_length pre-tokens of a piece can reach the output (each gives >= 1 id)
        k_piece = tf.gather(row_of, kept_idx)
        rank = tf.cumsum(tf.cast(kt, tf.int64)) - 1
        first_rank = tf.gather(tf.math.unsorted_segment_min(rank, k_piece, pieces.nrows()), k_piece)
        useful = rank - first_rank < self.max_seq_length
        kv, kp, kt, k_piece = (tf.boolean_mask(x, useful) for x in (kv, kp, kt, k_piece))
        lens = 1 + tf.cast(kp, tf.int64)
        out_splits = splits_from_lengths(lens)
        src = repeat_range(lens)
        within = tf.range(out_splits[-1]) - tf.gather(out_splits, src)
        is_added = tf.gather(kp, src) & (within == 0)
        repl = ord(self.metaspace["replacement"]) if self.metaspace else 0
        values = tf.where(is_added, tf.constant(repl, tf.int32), tf.gather(kv, src))
        tok_first = tf.gather(kt, src) & (within == 0)
        tok_starts = tf.where(tok_first)[:, 0]
        tok_splits = tf.concat([tok_starts, tf.reshape(tf.size(values, out_type=tf.int64), [1])], 0)
        words = tf.RaggedTensor.from_row_splits(values, tok_splits, validate=False)
        tok_piece = tf.boolean_mask(k_piece, kt)
        per_tok = self._encode_pretokens(words)
        # group pre-tokens into pieces (every piece, also those without a pre-token)
        n_pieces = pieces.nrows()
        counts = tf.math.bincount(tf.cast(tok_piece, tf.int32), minlength=tf.cast(n_pieces, tf.int32),
                                  maxlength=tf.cast(n_pieces, tf.int32), dtype=tf.int64)
        piece_splits = splits_from_lengths(counts)
        return tf.RaggedTensor.from_row_splits(per_tok, piece_splits, validate=False).merge_dims(1, 2)
