"""HF-exact BPE tokenizer in the graph: byte-level (GPT-2, RoBERTa, ModernBERT, Qwen2/3, Llama 3,
DeepSeek, GPT-4o-style) and character-level BPE (unk / prefix / suffix / byte fallback).

What HF ``tokenizers`` does per text piece, and where this module reproduces it::

    normalizer (NFC, NFKC, NFD, NFKD, Lowercase, Replace, Prepend, Strip, StripAccents, Sequence)
    pre-tokenizer (ByteLevel, Split(regex | string, behavior, invert), Digits, WhitespaceSplit,
                   Punctuation, CharDelimiterSplit, Sequence)
    BPE model (merge ranks, ignore_merges, byte_fallback, unk/fuse_unk, prefix/suffix)

The TF-free half (``pretokenize.py``: regex programs, probed character classes, normalizer tables;
``bpe_model.py``: merge arrays) decides everything at export time; this module only lays it out
as graph ops. Core TF ops only (hash tables, gathers, scatters, ``tf.while_loop``): no TF-Text op
library is needed, so any TF >= 2.12 server loads the graph.

How each step runs vectorised over the whole batch:

* **Regex splitting.** Every word is laid out with a sentinel after it; per item of each
  alternative, the anchored match end at every position is computed right to left from run
  lengths of the item's class ("largest count whose continuation matches": one previous-true
  lookup). The first alternative that matches wins. Oniguruma's scan (match at p, resume at its
  end, else p + 1) is the orbit of position 0 under ``next(p)``, marked by pointer doubling in
  ``log2(n)`` steps. Then the Split behaviour decides which segment boundaries survive.
* **BPE merges.** Rounds over all words of the batch at once. In a word, the pair with the
  lowest rank is what HF merges next; when its merge is ``monotone`` (nothing it creates can rank
  lower) every occurrence of it merges in the same round (overlapping runs ``x x x`` pair up from
  the left, as HF's leftmost-first queue does), otherwise only the leftmost. Words leave the loop
  as soon as no pair of theirs can merge, so the loop runs as many rounds as the slowest word needs.
* **Truncation.** Only the first ``max_seq_length - specials`` words of a text piece can reach the
  output (every non-empty word gives at least one token), so later words are dropped before BPE.
* **Chunk cache** (pre-tokenizers that are one ``Isolated`` regex split, with ByteLevel: GPT-2,
  RoBERTa, Qwen, Llama 3, cl100k, o200k ...). ``pretokenize.chunk_plan`` proves, from the regex
  program, between which character classes the text can be cut so that the split of the whole is
  the splits of the parts (no match, nor a match attempt, can cross the cut or see past it). One
  class lookup per character cuts each piece into chunks (``" world"``, ``"."``, ``"'s"``); a chunk
  whose text is a vocab entry gets its ids from a table computed at export time by HF's own
  pre-tokenizer and model (:class:`WordCache`), so only the other chunks run the regex programme
  and the merge rounds. Chunks computed while serving are remembered too (:class:`RuntimeCache`,
  what HF's BPE ``cache`` does). Both give exactly the computed ids: a chunk's ids depend on the
  chunk alone. Other pre-tokenizers take the full path.

Invalid UTF-8 arrives decoded as U+FFFD (``common.decode_utf8``), NUL is an ordinary character.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..errors import UnsupportedError
from . import pretokenize as pt
from .bpe_model import BPEModel, bytes_to_unicode, char_variants, chunk_cache, read_bpe_model
from .common import (
    WHITE_SPACE,
    CodepointMap,
    InGraphTokenizer,
    RangeTable,
    encode_keys,
    key_bytes,
    repeat_range,
    rowids,
    splits_from_lengths,
)

_no_autograph = tf.autograph.experimental.do_not_convert
BIG = np.int64(1) << 40


# ------------------------------------------------------------------------------------ small helpers
def _prev_true(f: tf.Tensor) -> tf.Tensor:
    """int64: largest q <= x with f[q], or -1."""
    c = tf.cumsum(tf.cast(f, tf.int64))
    where = tf.concat([[-1], tf.where(f)[:, 0]], 0)
    return tf.gather(where, c)


def _next_true(f: tf.Tensor) -> tf.Tensor:
    """int64: smallest q >= x with f[q], or BIG."""
    c = tf.cumsum(tf.cast(f, tf.int64), exclusive=True)
    where = tf.concat([tf.where(f)[:, 0], [BIG]], 0)
    return tf.gather(where, c)


def _shift(x: tf.Tensor, k: int, fill) -> tf.Tensor:
    """``x[i + k]`` with ``fill`` outside (k may be negative)."""
    if k == 0:
        return x
    pad = tf.fill([abs(k)], tf.constant(fill, x.dtype))
    if k > 0:
        return tf.concat([x[k:], pad], 0)
    return tf.concat([pad, x[:k]], 0)


def _gather_clip(x: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
    """``x[clip(idx)]``; safe on an empty ``x`` (gives zeros)."""
    xp = tf.concat([x, tf.zeros([1], x.dtype)], 0)
    return tf.gather(xp, tf.clip_by_value(idx, 0, tf.maximum(tf.size(x, out_type=idx.dtype) - 1, 0)))


class Words:
    """Flat code points with word splits and the piece each word belongs to (a plain container)."""

    def __init__(self, values, splits, piece):
        self.values = values  # int32 [N]
        self.splits = splits  # int64 [W + 1]
        self.piece = piece  # int64 [W]


def _layout(words: Words, pad: int):
    """Words with a sentinel (-1) after each and ``pad`` more at the end.

    Returns (u int32 [M], real_pos int64 [N]: position of each value in u, word_start int64 [W]).
    """
    n = tf.size(words.values, out_type=tf.int64)
    w = tf.size(words.splits, out_type=tf.int64) - 1
    rid = rowids(words.splits)
    real_pos = tf.range(n) + rid
    m = n + w + pad
    u = tf.tensor_scatter_nd_update(tf.fill(tf.reshape(m, [1]), tf.constant(-1, tf.int32)), real_pos[:, None],
                                    words.values)
    starts = words.splits[:-1] + tf.range(w)
    return u, real_pos, starts


# ------------------------------------------------------------------------------------ classes
class ClassTables(tf.Module):
    """Bit tables of several atoms' memberships (31 atoms per RangeTable), looked up once per text."""

    def __init__(self, atoms, name=None):
        super().__init__(name=name)
        members = {}
        for a in atoms:
            members[a] = pt.atom_member(a)
        uniq: list[np.ndarray] = []
        self.slot: dict = {}
        for a, m in members.items():
            for k, other in enumerate(uniq):
                if np.array_equal(other, m):
                    self.slot[a] = k
                    break
            else:
                self.slot[a] = len(uniq)
                uniq.append(m)
        self.tables = []
        for start in range(0, len(uniq), 31):
            bits = np.zeros(pt.N_CODEPOINTS, dtype=np.int64)
            for b, m in enumerate(uniq[start: start + 31]):
                bits |= m.astype(np.int64) << b
            self.tables.append(RangeTable(bits, name=f"class_bits_{start // 31}"))

    def member_fn(self, u: tf.Tensor):
        """``atom -> bool [M]`` over laid-out code points (False at sentinels), memoised per trace."""
        real = u >= 0
        cp = tf.maximum(u, 0)
        looked = [tf.where(real, t.lookup(cp), 0) for t in self.tables]
        memo: dict = {}

        def member(a):
            if a not in memo:
                k = self.slot[a]
                memo[a] = tf.bitwise.bitwise_and(looked[k // 31], 1 << (k % 31)) != 0
            return memo[a]

        return member


# ------------------------------------------------------------------------------------ regex program
class RegexProgram(tf.Module):
    """A :class:`pretokenize.Program` evaluated in-graph (anchored match end per position)."""

    def __init__(self, prog: pt.Program, name=None):
        super().__init__(name=name)
        if prog.can_match_empty():
            raise UnsupportedError(f"regex {prog.source!r} can match the empty string; HF's handling of empty "
                                   "matches is not emulated")
        self.prog = prog
        self.pad = prog.max_fixed_width() + 2
        self.classes = ClassTables(prog.atoms(), name="classes")

    def match_end(self, u: tf.Tensor, member) -> tf.Tensor:
        """int64 [M]: end of the leftmost-first match starting at each position, or -1."""
        pos = tf.range(tf.size(u, out_type=tf.int64))
        memo: dict = {}
        return _program_end(self.prog, member, u, pos, memo)


def _program_end(prog, member, u, pos, memo):
    out = None
    for alt in prog.alternatives:
        end = _seq_end(alt, member, u, pos, memo)
        out = end if out is None else tf.where(out >= 0, out, end)
    return out


def _runs(m, memo, key):
    if ("run", key) not in memo:
        pos = tf.range(tf.size(m, out_type=tf.int64))
        memo[("run", key)] = _next_true(~m) - pos
    return memo[("run", key)]


def _fixed_hit(opt, member, memo):
    key = ("fixed", opt)
    if key not in memo:
        hit = None
        for t, a in enumerate(opt):
            h = _shift(member(a), t, False)
            hit = h if hit is None else hit & h
        memo[key] = hit
    return memo[key]


def _seq_end(items, member, u, pos, memo):
    n = tf.size(u, out_type=tf.int64)
    end = pos
    for it in reversed(items):
        ok = end >= 0
        if isinstance(it, pt.Repeat):
            m = member(it.atom)
            run = _runs(m, memo, it.atom)
            hi = tf.minimum(run, it.max)
            if it.mode == "greedy":
                q = tf.gather(_prev_true(ok), tf.minimum(pos + hi, n - 1))
                good = (hi >= it.min) & (q >= pos + it.min)
            elif it.mode == "lazy":
                q = tf.gather(_next_true(ok), tf.minimum(pos + it.min, n - 1))
                good = (hi >= it.min) & (q <= pos + hi)
            else:
                q = tf.minimum(pos + hi, n - 1)
                good = (hi >= it.min) & tf.gather(ok, q)
            end = tf.where(good, _gather_clip(end, q), -1)
        elif isinstance(it, pt.Choice):
            new = tf.fill(tf.shape(pos), tf.constant(-1, tf.int64))
            opts = list(it.options)
            order = ([()] + opts) if (it.optional and it.lazy) else (opts + ([()] if it.optional else []))
            for opt in order:
                tgt = tf.minimum(pos + len(opt), n - 1)
                hit = _fixed_hit(opt, member, memo) if opt else tf.ones_like(ok)
                take = (new < 0) & hit & tf.gather(ok, tgt)
                new = tf.where(take, tf.gather(end, tgt), new)
            end = new
        else:
            cond = _assert(it, member, u, pos, memo)
            end = tf.where(cond & ok, end, -1)
    return end


def _assert(it, member, u, pos, memo):
    real = u >= 0
    prev_real = _shift(real, -1, False)
    if it.kind == "ahead":
        cond = _program_end(it.program, member, u, pos, memo) >= 0
    elif it.kind == "behind":
        cond = tf.zeros_like(real)
        for opt in it.options:
            cond = cond | _shift(_fixed_hit(opt, member, memo), -len(opt), False)
    elif it.kind == "start":
        cond = ~prev_real
    elif it.kind == "end":
        cond = ~real
    elif it.kind == "end_or_final_newline":
        cond = ~real | ((u == 10) & ~_shift(real, 1, False))
    elif it.kind == "line_start":
        cond = ~prev_real | (_shift(u, -1, -1) == 10)
    elif it.kind == "line_end":
        cond = ~real | (u == 10)
    elif it.kind == "word_boundary":
        w = member(it.atom)
        cond = tf.not_equal(w, _shift(w, -1, False))
    else:  # pragma: no cover
        raise UnsupportedError(f"assertion {it.kind}")
    return ~cond if it.negate else cond


def _scan_taken(end: tf.Tensor) -> tf.Tensor:
    """bool [M]: positions where Oniguruma's left-to-right scan takes a match.

    The scan visits p, jumps to ``end[p]`` after a match or to p + 1 otherwise; the visited set is
    the orbit of 0, marked with pointer doubling (``log2(M)`` steps of gather + scatter).
    """
    m = tf.size(end, out_type=tf.int64)
    pos = tf.range(m)
    has = end > pos
    nxt = tf.concat([tf.minimum(tf.where(has, end, pos + 1), m), tf.reshape(m, [1])], 0)  # [M + 1], m = sink
    mark = tf.concat([[True], tf.zeros(tf.reshape(m, [1]), tf.bool)], 0)
    steps = tf.cast(tf.math.ceil(tf.math.log(tf.cast(m, tf.float64) + 2.0) / np.log(2.0)), tf.int32) + 1

    def body(k, mark, jump):
        hit = tf.gather(jump, tf.where(mark)[:, 0])
        mark = tf.tensor_scatter_nd_update(mark, hit[:, None], tf.ones_like(hit, tf.bool))
        return k + 1, mark, tf.gather(jump, jump)

    _, mark, _ = tf.while_loop(lambda k, *_: k < steps, body, (tf.constant(0), mark, nxt))
    return mark[:-1] & has


def split_words(words: Words, matcher: RegexProgram, behavior: str, invert: bool) -> Words:
    """HF ``NormalizedString.split(pattern, behavior)`` on every word (empty results dropped)."""
    with tf.name_scope("layout"):
        u, real_pos, _ = _layout(words, matcher.pad)
    with tf.name_scope("classes"):
        member = matcher.classes.member_fn(u)
    with tf.name_scope("match_end"):
        end = matcher.match_end(u, member)
    with tf.name_scope("apply"):
        return _apply_matches(words, u, real_pos, end, behavior, invert)


def _apply_matches(words: Words, u, real_pos, end, behavior: str, invert: bool) -> Words:
    m = tf.size(u, out_type=tf.int64)
    taken = _scan_taken(end)
    starts = tf.where(taken)[:, 0]
    stops = tf.gather(end, starts)
    delta = tf.math.unsorted_segment_sum(tf.ones_like(starts), starts, m + 1) - \
        tf.math.unsorted_segment_sum(tf.ones_like(stops), stops, m + 1)
    in_match = tf.cumsum(delta)[:-1] > 0
    prev_in = _shift(in_match, -1, False)
    prev_real = _shift(u >= 0, -1, False)
    seg_start = taken | (~in_match & (~prev_real | prev_in))
    is_m = in_match != invert
    prev_m = _shift(is_m, -1, False)
    boundary = seg_start & prev_real  # a boundary inside the word (not its first char)
    if behavior in ("Isolated", "Removed"):
        keep_b = boundary
    elif behavior == "Contiguous":
        keep_b = boundary & tf.not_equal(prev_m, is_m)
    elif behavior == "MergedWithPrevious":
        keep_b = boundary & ~(is_m & ~prev_m)
    elif behavior == "MergedWithNext":
        keep_b = boundary & ~(prev_m & ~is_m)
    else:
        raise UnsupportedError(f"unsupported Split behavior {behavior!r}")
    # per value (in order): kept?, starts a new word?
    v_seg_start = tf.gather(seg_start, real_pos)
    v_first = ~tf.gather(prev_real, real_pos)
    v_new = v_first | tf.gather(keep_b, real_pos)
    if behavior == "Removed":
        keep = ~tf.gather(is_m, real_pos)
        v_new = v_new | v_seg_start
    else:
        keep = tf.ones_like(v_new)
    return _regroup(words, keep, v_new)


def _regroup(words: Words, keep: tf.Tensor, new_word: tf.Tensor) -> Words:
    """Keep some values; a kept value with ``new_word`` (or after a dropped one) starts a word."""
    rid = rowids(words.splits)
    kidx = tf.where(keep)[:, 0]
    vals = tf.gather(words.values, kidx)
    prev_kept = tf.concat([[False], keep[:-1]], 0)
    starts_here = tf.gather(new_word | ~prev_kept, kidx)
    # a word never spans two old words
    old = tf.gather(rid, kidx)
    starts_here = starts_here | tf.concat([[True], tf.not_equal(old[1:], old[:-1])], 0)
    first = tf.where(starts_here)[:, 0]
    n = tf.size(vals, out_type=tf.int64)
    splits = tf.concat([first, tf.reshape(n, [1])], 0)
    piece = tf.gather(words.piece, tf.gather(old, first))
    return Words(vals, splits, piece)


# ------------------------------------------------------------------------------------ byte level
_BYTE_CHARS = bytes_to_unicode()


def utf8_bytes(values: tf.Tensor, splits: tf.Tensor):
    """Code points -> their UTF-8 bytes (int32), with the splits re-counted in bytes."""
    v = values
    nb = tf.where(v < 0x80, 1, tf.where(v < 0x800, 2, tf.where(v < 0x10000, 3, 4)))
    nb64 = tf.cast(nb, tf.int64)
    src = repeat_range(nb64)
    csum = splits_from_lengths(nb64)
    k = tf.cast(tf.range(csum[-1]) - tf.gather(csum, src), tf.int32)  # byte index within the char
    cp = tf.gather(v, src)
    n = tf.gather(nb, src)
    shift = 6 * (n - 1 - k)
    payload = tf.bitwise.bitwise_and(tf.bitwise.right_shift(cp, shift), 0x3F)
    lead_mark = tf.gather(tf.constant([0, 0, 0xC0, 0xE0, 0xF0], tf.int32), n)
    lead_bits = tf.bitwise.right_shift(cp, shift)
    byte = tf.where(k == 0, tf.where(n == 1, cp, tf.bitwise.bitwise_or(lead_mark, lead_bits)),
                    tf.bitwise.bitwise_or(payload, 0x80))
    return byte, tf.gather(csum, splits)


def byte_level_map(words: Words) -> Words:
    b, splits = utf8_bytes(words.values, words.splits)
    return Words(tf.gather(tf.constant(_BYTE_CHARS), b), splits, words.piece)


def prepend_to_words(words: Words, text: str, only_if_not_starting_with: str | None, mask=None) -> Words:
    """Prepend ``text`` to each word (unless it already starts with the given character / mask false)."""
    cps = [ord(c) for c in text]
    k = len(cps)
    lens = words.splits[1:] - words.splits[:-1]
    first = _gather_clip(words.values, words.splits[:-1])
    add = lens > 0
    if only_if_not_starting_with is not None:
        add = add & tf.not_equal(first, ord(only_if_not_starting_with))
    if mask is not None:
        add = add & mask
    addn = tf.cast(add, tf.int64) * k
    new_lens = lens + addn
    new_splits = splits_from_lengths(new_lens)
    rid = repeat_range(new_lens)
    within = tf.range(new_splits[-1]) - tf.gather(new_splits, rid)
    a = tf.gather(addn, rid)
    src = tf.gather(words.splits, rid) + within - a
    ins = tf.gather(tf.constant(cps + [0], tf.int32), tf.minimum(within, k))
    vals = tf.where(within < a, ins, _gather_clip(words.values, src))
    return Words(vals, new_splits, words.piece)


# ------------------------------------------------------------------------------------ normalizers
class Normalizer(tf.Module):
    """An HF normalizer (possibly a Sequence) as graph steps on pieces."""

    def __init__(self, spec: dict | None, name=None):
        super().__init__(name=name)
        self.steps = []
        self._modules = []
        for s in pt.normalizer_steps(spec):
            kind = s[0]
            if kind in ("nfd", "nfkd", "nfc", "nfkc"):
                mod = UnicodeNormalizer(kind, name=kind)
            elif kind in ("lowercase", "strip_accents"):
                mod = CharMap(pt.char_map_table(kind), name=kind)
            elif kind == "replace":
                mod = Replace(s[1], s[2], name="replace")
            elif kind == "prepend":
                mod = _Prepend(s[1])
            elif kind == "strip":
                mod = _Strip(s[1], s[2])
            else:  # pragma: no cover
                raise UnsupportedError(f"normalizer step {kind}")
            self._modules.append(mod)
        self.identity = not self._modules

    def __call__(self, words: Words) -> Words:
        with tf.name_scope("bpe_normalize"):
            for mod in self._modules:
                words = mod(words)
        return words


class CharMap(tf.Module):
    """A per-character normalizer (Lowercase, StripAccents): code point -> string (maybe empty)."""

    def __init__(self, table: dict, name=None):
        super().__init__(name=name)
        self.map = CodepointMap(table, name="map")

    def __call__(self, words: Words) -> Words:
        if not self.map.size:
            return words
        per = self.map.apply_flat(words.values)
        return Words(per.values, tf.gather(per.row_splits, words.splits), words.piece)


class _Prepend(tf.Module):
    def __init__(self, text):
        super().__init__()
        self.text = text

    def __call__(self, words):
        return prepend_to_words(words, self.text, None) if self.text else words


class _Strip(tf.Module):
    def __init__(self, left, right):
        super().__init__()
        self.left, self.right = left, right
        ws = np.zeros(pt.N_CODEPOINTS, dtype=np.int32)
        ws[WHITE_SPACE] = 1
        self.ws = RangeTable(ws, name="white_space")

    def __call__(self, words):
        sp = self.ws.lookup(words.values) > 0
        rid = rowids(words.splits)
        non = ~sp
        first_non = tf.math.unsorted_segment_min(tf.where(non, tf.range(tf.size(non, out_type=tf.int64)), BIG), rid,
                                                 tf.size(words.splits) - 1)
        last_non = tf.math.unsorted_segment_max(tf.where(non, tf.range(tf.size(non, out_type=tf.int64)), -1), rid,
                                                tf.size(words.splits) - 1)
        i = tf.range(tf.size(non, out_type=tf.int64))
        keep = tf.ones_like(non)
        if self.left:
            keep = keep & (i >= tf.gather(first_non, rid))
        if self.right:
            keep = keep & (i <= tf.gather(last_non, rid))
        vals = tf.boolean_mask(words.values, keep)
        lens = tf.math.unsorted_segment_sum(tf.cast(keep, tf.int64), rid, tf.size(words.splits) - 1)
        return Words(vals, splits_from_lengths(lens), words.piece)


class Replace(tf.Module):
    """HF ``Replace``: every leftmost-first match of the pattern becomes ``content``."""

    def __init__(self, prog: pt.Program, content: str, name=None):
        super().__init__(name=name)
        self.matcher = RegexProgram(prog, name="pattern")
        self.content = [ord(c) for c in content]

    def __call__(self, words: Words) -> Words:
        u, real_pos, _ = _layout(words, self.matcher.pad)
        member = self.matcher.classes.member_fn(u)
        end = self.matcher.match_end(u, member)
        taken = _scan_taken(end)
        m = tf.size(u, out_type=tf.int64)
        starts = tf.where(taken)[:, 0]
        stops = tf.gather(end, starts)
        delta = tf.math.unsorted_segment_sum(tf.ones_like(starts), starts, m + 1) - \
            tf.math.unsorted_segment_sum(tf.ones_like(stops), stops, m + 1)
        in_match = tf.cumsum(delta)[:-1] > 0
        v_start = tf.gather(taken, real_pos)
        v_in = tf.gather(in_match, real_pos)
        k = len(self.content)
        out_len = tf.where(v_start, tf.constant(k, tf.int64), tf.where(v_in, tf.constant(0, tf.int64), 1))
        per_splits = splits_from_lengths(out_len)
        src = repeat_range(out_len)
        within = tf.range(per_splits[-1]) - tf.gather(per_splits, src)
        content = tf.constant(self.content + [0], tf.int32)
        vals = tf.where(tf.gather(v_start, src), tf.gather(content, tf.minimum(within, k)),
                        tf.gather(words.values, src))
        return Words(vals, tf.gather(per_splits, words.splits), words.piece)


class UnicodeNormalizer(tf.Module):
    """NFD / NFKD / NFC / NFKC with HF's own tables (decomposition, combining classes, compositions).

    Batches whose characters are all inert (unchanged by the form, whatever their neighbours: nearly
    all real text) skip the work (one table lookup per character).
    """

    def __init__(self, kind: str, name=None):
        super().__init__(name=name)
        t = pt.unicode_tables(kind)
        self.compose = kind in ("nfc", "nfkc")
        self.inert = RangeTable(t["inert"].astype(np.int32), name="inert")
        keys, splits, chars = t["dec_keys"], t["dec_splits"], t["dec_chars"]
        self.decomp = CodepointMap({int(k): chars[splits[i]: splits[i + 1]].tolist() for i, k in enumerate(keys)},
                                   name="decompose")
        self.ccc = RangeTable(t["ccc"].astype(np.int32), name="ccc")
        if self.compose:
            first, second, comp = t["pair_first"], t["pair_second"], t["pair_composite"]
            self.pairs = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(first * (1 << 21) + second, tf.int64),
                                                    tf.constant(comp, tf.int64)), default_value=-1)
            self.second = RangeTable(t["is_second"].astype(np.int32), name="is_second")

    def __call__(self, words: Words) -> Words:
        v = words.values
        all_inert = tf.reduce_all(self.inert.lookup(v) > 0)
        vals, splits = tf.cond(all_inert, lambda: (v, words.splits), lambda: self._full(v, words.splits))
        return Words(vals, splits, words.piece)

    def _full(self, v, splits):
        per = self.decomp.apply_flat(v)
        d = per.values
        dsplits = tf.gather(per.row_splits, splits)
        n = tf.size(d, out_type=tf.int64)
        ccc = self.ccc.lookup(d)
        piece_start = tf.scatter_nd(dsplits[:-1, None], tf.ones_like(dsplits[:-1], tf.int32),
                                    tf.reshape(n + 1, [1]))[:-1] > 0
        group = tf.cumsum(tf.cast((ccc == 0) | piece_start, tf.int64))
        order = tf.argsort(group * 256 + tf.cast(ccc, tf.int64), stable=True)
        d = tf.gather(d, order)
        ccc = tf.gather(ccc, order)
        if not self.compose:
            return d, dsplits
        return self._compose(d, ccc, dsplits, piece_start)

    def _compose(self, d, ccc, splits, piece_start):
        """Canonical composition (UAX #15), as unicode-normalization's iterator does it, in rounds.

        Each round, every "head" starter composes with the first later character that is not
        blocked and forms a pair with it; characters passed over stay for good (the sequential
        algorithm never returns to them). A starter that could itself be absorbed by the previous
        head waits until that head is settled.
        """
        n = tf.size(d, out_type=tf.int64)
        pos = tf.range(n)
        starter = ccc == 0
        absorbable = self.second.lookup(d) > 0
        # head of each position: last starter at or before it in its piece
        piece_first = tf.gather(splits, rowids(splits))
        head0 = tf.where(_prev_true(starter) >= piece_first, _prev_true(starter), -1)

        def body(r, val, alive, head, cursor, changed):
            is_head = alive & starter & tf.equal(head, pos)
            prev_alive = _prev_true(alive)  # at or before
            last_before = tf.concat([[-1], prev_alive[:-1]], 0)
            # the head before a starter (for absorbing it)
            prev_head = tf.where(pos > piece_first, tf.concat([[-1], head[:-1]], 0), -1)
            h_mark = tf.where(is_head, prev_head, head)
            valid = alive & (h_mark >= 0) & tf.not_equal(h_mark, pos)
            hsafe = tf.maximum(h_mark, 0)
            after_cursor = pos > tf.gather(cursor, hsafe)
            lb = tf.maximum(last_before, 0)
            adjacent = tf.equal(last_before, h_mark)
            blocked_mark = ~adjacent & (tf.gather(ccc, lb) >= ccc)
            ok_pos = tf.where(is_head, adjacent, ~blocked_mark)
            comp = self.pairs.lookup(tf.cast(tf.gather(val, hsafe), tf.int64) * (1 << 21) + tf.cast(val, tf.int64))
            cand = valid & after_cursor & ok_pos & (comp >= 0)
            first_c = tf.math.unsorted_segment_min(tf.where(cand, pos, BIG), hsafe, n)
            has_c = first_c < BIG  # per head position
            # a head that the previous head may still absorb must not compose yet. It is free when
            # some earlier head of its piece that can never be absorbed (not a composition's second
            # character, or first of its piece) has nothing left to compose, and neither has any
            # head after that one: then nothing before it can change any more.
            can_absorb = is_head & absorbable & (prev_head >= 0)
            anchor = is_head & ~can_absorb & ~has_c
            busy = is_head & has_c
            last_anchor = tf.concat([[-1], _prev_true(anchor)[:-1]], 0)
            last_busy = tf.concat([[-1], _prev_true(busy)[:-1]], 0)
            free = ~can_absorb | ((last_anchor >= piece_first) & (last_anchor > last_busy))
            chosen = cand & tf.equal(tf.gather(first_c, hsafe), pos) & tf.gather(free, hsafe)
            ch = tf.where(chosen)[:, 0]
            tgt = tf.gather(hsafe, ch)
            val = tf.tensor_scatter_nd_update(val, tgt[:, None], tf.cast(tf.gather(comp, ch), tf.int32))
            alive = tf.tensor_scatter_nd_update(alive, ch[:, None], tf.zeros_like(ch, tf.bool))
            cursor = tf.tensor_scatter_nd_update(cursor, tgt[:, None], ch)
            # an absorbed starter's followers now belong to the head that absorbed it
            absorbed_into = tf.tensor_scatter_nd_update(pos, ch[:, None], tgt)
            absorbed = tf.tensor_scatter_nd_update(tf.zeros_like(alive), ch[:, None],
                                                   tf.gather(is_head, ch))
            hs = tf.maximum(head, 0)
            head = tf.where((head >= 0) & tf.gather(absorbed, hs), tf.gather(absorbed_into, hs), head)
            return r + 1, val, alive, head, cursor, tf.size(ch) > 0

        _, val, alive, _, _, _ = tf.while_loop(
            lambda r, *rest: rest[-1], body,
            (tf.constant(0), d, tf.ones_like(starter), head0, pos, tf.constant(True)))
        vals = tf.boolean_mask(val, alive)
        lens = tf.math.unsorted_segment_sum(tf.cast(alive, tf.int64), rowids(splits), tf.size(splits) - 1)
        return vals, splits_from_lengths(lens)


# ------------------------------------------------------------------------------------ pre-tokenizer
class PreTokenizer(tf.Module):
    """An HF pre-tokenizer (possibly a Sequence) as graph steps on words."""

    def __init__(self, spec: dict | None, name=None):
        super().__init__(name=name)
        self._steps = []
        self.byte_level = False
        for step in pt.pre_tokenizer_steps(spec):
            kind = step[0]
            if kind == "split":
                self._steps.append(("split", RegexProgram(step[1], name="split"), step[2], step[3]))
            elif kind == "byte_level":
                if step[1]:
                    self._steps.append(("prefix_space",))
                if step[2]:
                    self._steps.append(("split", RegexProgram(pt.compile_regex(pt.GPT2_PATTERN), name="gpt2"),
                                        "Isolated", False))
                self._steps.append(("bytes",))
                self.byte_level = True
            elif kind == "metaspace":
                _, repl, scheme, split = step
                if scheme == "first" and self._steps:
                    raise UnsupportedError("Metaspace(prepend_scheme='first') after another pre-tokenizer step")
                self._steps.append(("metaspace", ord(repl), scheme))
                if split:
                    self._steps.append(("split", RegexProgram(pt.literal_program(repl), name="metaspace"),
                                        "MergedWithNext", False))
            else:  # pragma: no cover
                raise UnsupportedError(f"pre-tokenizer step {kind}")
        self._mods = [s[1] for s in self._steps if s[0] == "split"]
        # chunking (see BPETokenizer): [prefix space,] one Isolated regex split [, bytes]
        kinds = [s[0] for s in self._steps]
        self.chunk_plan = None
        self.chunk_prefix = kinds[:1] == ["prefix_space"]
        core = kinds[1:] if self.chunk_prefix else kinds
        if core in (["split"], ["split", "bytes"]):
            split = self._steps[kinds.index("split")]
            if split[2] == "Isolated" and not split[3]:
                self.chunk_plan = pt.chunk_plan(split[1].prog)

    def __call__(self, words: Words, skip_prefix: bool = False, is_first: tf.Tensor | None = None) -> Words:
        """``is_first``: bool per piece, the piece starts the sentence (Metaspace's ``first`` scheme)."""
        for s in self._steps:
            if s[0] == "prefix_space" and skip_prefix:
                continue
            if s[0] == "metaspace":
                words = _metaspace(words, s[1], s[2], is_first)
                continue
            if s[0] == "split":
                with tf.name_scope("split"):
                    match_words = s[1]
                    words = split_words(words, match_words, s[2], s[3])
            elif s[0] == "prefix_space":
                words = prepend_to_words(words, " ", " ")
            else:
                words = byte_level_map(words)
        return words


def _metaspace(words: Words, repl: int, scheme: str, is_first: tf.Tensor | None) -> Words:
    """HF ``Metaspace`` before its optional split: spaces become ``repl``, which is prepended to a word
    not starting with it (``always``; ``first``: only to the word at offset 0 of the sentence)."""
    words = Words(tf.where(tf.equal(words.values, 32), repl, words.values), words.splits, words.piece)
    if scheme == "never":
        return words
    mask = None
    if scheme == "first":
        if is_first is None:
            raise UnsupportedError("Metaspace(prepend_scheme='first') needs to know which piece starts the sentence")
        # a pre-tokenizer's first step sees one word per piece
        mask = tf.gather(is_first, words.piece)
    return prepend_to_words(words, chr(repl), chr(repl), mask=mask)


# ------------------------------------------------------------------------------------ BPE model
# packed merge value: rank << 35 | reach << 24 | monotone << 23 | new id (< 2**23)
RANK_SHIFT = 35
REACH_SHIFT = 24
MAX_REACH = (1 << 11) - 1
# words with at least this many symbols also use the window rule (see BPEMerger.merge)
LONG_WORD = 24
# words (chunks, pre-tokens) computed while serving that a tokenizer remembers (RuntimeCache); 0: none
RUNTIME_CACHE_WORDS = 1 << 16


class BPEMerger(tf.Module):
    """HF's BPE on words of characters: initial symbols, ignore_merges, then the merge rounds."""

    def __init__(self, model: BPEModel, name=None):
        super().__init__(name=name)
        self.model = model
        size = max(model.vocab.values(), default=0) + 1
        if size >= 1 << 23:
            raise UnsupportedError(f"BPE vocabulary of {size} ids is too large (at most {1 << 23})")
        self.vocab_size = size
        self.has_prefix = bool(model.prefix)
        self.has_suffix = bool(model.suffix)
        variants = char_variants(model)
        keys, vals = [], []
        for var, table in variants.items():
            if (var & 1 and not self.has_prefix) or (var & 2 and not self.has_suffix):
                continue
            for cp, i in table.items():
                keys.append(cp * 4 + var)
                vals.append(i)
        self.chars = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys or [-1], tf.int64),
                                                tf.constant(vals or [-1], tf.int64)), default_value=-1)
        m = model.n_merges
        self.n_merges = m
        if m:
            reach = np.minimum(model.reach, MAX_REACH)
            packed = (np.arange(m, dtype=np.int64) << RANK_SHIFT) | (reach << REACH_SHIFT) \
                | (model.monotone.astype(np.int64) << 23) | model.merges_new
            self.levels = int(np.ceil(np.log2(int(reach.max()) + 2))) + 1
            self.merges = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(model.merges_left * size + model.merges_right, tf.int64), tf.constant(packed, tf.int64)),
                default_value=-1)
        if model.ignore_merges:
            toks = sorted(model.vocab.items(), key=lambda kv: kv[1])
            self.words_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant([key_bytes(t) for t, _ in toks], tf.string),
                                                    tf.constant([i for _, i in toks], tf.int64)), default_value=-1)
        self.prefix_bytes = list(model.prefix.encode("utf-8"))
        self.suffix_bytes = list(model.suffix.encode("utf-8"))
        self.byte_ids = model.byte_ids

    # -- initial symbols -------------------------------------------------------------------------
    def initial_symbols(self, words: Words):
        """Characters -> initial symbol ids, exactly as ``BPE::merge_word`` builds them.

        Returns (ids int64 [S], symbol word splits int64 [W + 1]).
        """
        v = tf.cast(words.values, tf.int64)
        n = tf.size(v, out_type=tf.int64)
        rid = rowids(words.splits)
        i = tf.range(n)
        first = tf.equal(i, tf.gather(words.splits, rid))
        last = tf.equal(i + 1, tf.gather(words.splits, rid + 1))
        var = tf.zeros_like(v)
        if self.has_prefix:
            var += tf.cast(~first, tf.int64)
        if self.has_suffix:
            var += 2 * tf.cast(last, tf.int64)
        ids = self.chars.lookup(v * 4 + var)
        known = ids >= 0
        m = self.model
        if not m.byte_fallback and m.unk_id < 0:
            # unknown characters are dropped (HF: no unk token, no byte fallback)
            lens = tf.math.unsorted_segment_sum(tf.cast(known, tf.int64), rid, tf.size(words.splits) - 1)
            return tf.boolean_mask(ids, known), splits_from_lengths(lens)
        return tf.cond(tf.reduce_all(known),
                       lambda: (ids, words.splits),
                       lambda: self._unknowns(v, ids, known, first, last, rid, words.splits))

    def _unknowns(self, v, ids, known, first, last, rid, splits):
        m = self.model
        n = tf.size(v, out_type=tf.int64)
        nw = tf.size(splits, out_type=tf.int64) - 1
        # byte fallback: the bytes of prefix + char + suffix, when all have <0xXX> tokens
        if m.byte_fallback:
            byte_ids = tf.constant(m.byte_ids)
            cb, csp = utf8_bytes(tf.cast(v, tf.int32), tf.range(n + 1))
            pre = tf.constant(self.prefix_bytes or [0], tf.int32)
            suf = tf.constant(self.suffix_bytes or [0], tf.int32)
            npre = tf.where(~first, len(self.prefix_bytes), 0)
            nsuf = tf.where(last, len(self.suffix_bytes), 0)
            nchar = csp[1:] - csp[:-1]
            tot = tf.cast(npre + nsuf, tf.int64) + nchar
            tsp = splits_from_lengths(tot)
            src = repeat_range(tot)
            k = tf.range(tsp[-1]) - tf.gather(tsp, src)
            npre_s = tf.cast(tf.gather(npre, src), tf.int64)
            nchar_s = tf.gather(nchar, src)
            byte = tf.where(k < npre_s, tf.gather(pre, tf.minimum(k, max(len(self.prefix_bytes) - 1, 0))),
                            tf.where(k < npre_s + nchar_s, _gather_clip(cb, tf.gather(csp, src) + k - npre_s),
                                     tf.gather(suf, tf.clip_by_value(k - npre_s - nchar_s, 0,
                                                                     max(len(self.suffix_bytes) - 1, 0)))))
            bid = tf.gather(byte_ids, byte)
            all_ok = tf.math.unsorted_segment_min(tf.cast(bid >= 0, tf.int32), src, n) > 0
            is_b = ~known & all_ok
        else:
            is_b = tf.zeros_like(known)
        is_u = ~known & ~is_b & (m.unk_id >= 0)
        # where pending unknown tokens are written: before the next known (or unknown, without fuse)
        # character, or at the word end; "pending" = the previous non-byte character is unknown
        nonb = ~is_b & (known | is_u)
        word_start = tf.gather(splits, rid)
        prev_nb = tf.concat([[-1], _prev_true(nonb)[:-1]], 0)
        prev_nb = tf.where(prev_nb >= word_start, prev_nb, -1)
        pending = (prev_nb >= 0) & tf.gather(is_u, tf.maximum(prev_nb, 0))
        flush = pending & (known | (is_u & (not m.fuse_unk)))
        # at the word end: the last non-byte character of the word is unknown
        last_nb = tf.math.unsorted_segment_max(tf.where(nonb, tf.range(n), -1), rid, nw)
        end_flush = (last_nb >= 0) & tf.gather(is_u, tf.maximum(last_nb, 0))
        # per character: [unk if flush] + own tokens; per word: [unk if end_flush] after its chars
        own = tf.where(known, tf.constant(1, tf.int64), tf.zeros_like(v))
        if m.byte_fallback:
            own += tf.where(is_b, tot, 0)
        per_char = own + tf.cast(flush, tf.int64)
        # slots: each word's characters, then one end slot
        slot_len = tf.concat([per_char, tf.cast(end_flush, tf.int64)], 0)
        slot_order = tf.concat([tf.range(n) + rid, splits[1:] + tf.range(nw)], 0)  # position in the slot layout
        order = tf.cast(tf.argsort(slot_order), tf.int64)
        slot_len = tf.gather(slot_len, order)
        is_char_slot = order < n
        ssp = splits_from_lengths(slot_len)
        s_src = repeat_range(slot_len)
        k = tf.range(ssp[-1]) - tf.gather(ssp, s_src)
        slot_item = tf.gather(order, s_src)
        c = tf.minimum(slot_item, tf.maximum(n - 1, 0))
        char_flush = tf.gather(is_char_slot, s_src) & tf.gather(flush, c)
        unk = tf.constant(m.unk_id, tf.int64)
        tok = tf.where(~tf.gather(is_char_slot, s_src), unk,
                       tf.where(char_flush & tf.equal(k, 0), unk, tf.gather(ids, c)))
        if m.byte_fallback:
            kb = k - tf.cast(char_flush, tf.int64)
            tok = tf.where(tf.gather(is_char_slot, s_src) & tf.gather(is_b, c) & ~(char_flush & tf.equal(k, 0)),
                           _gather_clip(bid, tf.gather(tsp, c) + kb), tok)
        # word of each output token
        word_of_slot = tf.where(is_char_slot, tf.gather(rid, tf.minimum(order, tf.maximum(n - 1, 0))), order - n)
        wlen = tf.math.unsorted_segment_sum(slot_len, word_of_slot, nw)
        return tok, splits_from_lengths(wlen)

    # -- merges ----------------------------------------------------------------------------------
    def merge(self, sym: tf.Tensor, splits: tf.Tensor) -> tf.Tensor:
        """Merge rounds over all words at once -> final ids in the same word order (splits returned)."""
        if not self.n_merges:
            return sym, splits
        nw = tf.size(splits, out_type=tf.int64) - 1
        s0 = tf.size(sym, out_type=tf.int64)
        word = rowids(splits)
        orig = tf.range(s0)
        size = tf.constant(self.vocab_size, tf.int64)
        inf = tf.constant(BIG, tf.int64)

        def body(sym, word, orig, done_pos, done_id):
            n = tf.size(sym, out_type=tf.int64)
            pos = tf.range(n)
            same = tf.concat([tf.equal(word[1:], word[:-1]), [False]], 0)
            nxt = tf.concat([sym[1:], [0]], 0)
            packed = self.merges.lookup(sym * size + nxt)
            found = same & (packed >= 0)
            rank = tf.where(found, tf.bitwise.right_shift(packed, RANK_SHIFT), inf)
            wmin = tf.math.unsorted_segment_min(rank, word, nw)
            wmin_at = tf.gather(wmin, word)
            done_sym = tf.equal(wmin_at, inf)
            # finished words leave the loop
            done_pos = tf.concat([done_pos, tf.boolean_mask(orig, done_sym)], 0)
            done_id = tf.concat([done_id, tf.boolean_mask(sym, done_sym)], 0)
            cand = found & tf.equal(rank, wmin_at)
            mono = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed, 23), 1) > 0
            # runs of overlapping occurrences (x x x ...) pair up from their left end
            prev_cand = tf.concat([[False], cand[:-1]], 0)
            run_start = cand & ~prev_cand
            offset = pos - _prev_true(run_start)
            tentative = cand & tf.equal(tf.math.floormod(offset, 2), 0)
            new_id = tf.bitwise.bitwise_and(packed, (1 << 23) - 1)
            # HF pops the occurrences of the word's lowest pair left to right; a non-monotone merge
            # may create a lower pair, which HF pops next: stop after the first occurrence that does
            same_prev = tf.concat([[False], same[:-1]], 0)
            same_next2 = same & tf.concat([same[1:], [False]], 0)
            prev2 = tf.concat([[False, False], tentative], 0)[:n] & same_prev & tf.concat([[False], same_prev[:-1]], 0)
            left_sym = tf.where(prev2, new_id, tf.concat([[0], sym[:-1]], 0))  # after the merge at p - 2
            right_sym = tf.concat([sym, tf.zeros([2], sym.dtype)], 0)[2:]
            left_p = self.merges.lookup(left_sym * size + new_id)
            right_p = self.merges.lookup(new_id * size + right_sym)
            left_r = tf.where(same_prev & (left_p >= 0), tf.bitwise.right_shift(left_p, RANK_SHIFT), inf)
            right_r = tf.where(same_next2 & (right_p >= 0), tf.bitwise.right_shift(right_p, RANK_SHIFT), inf)
            bad = tentative & ~mono & ((left_r < rank) | (right_r < rank))
            first_bad = tf.math.unsorted_segment_min(tf.where(bad, pos, inf), word, nw)
            do = tentative & (pos <= tf.gather(first_bad, word))
            wlen = tf.math.unsorted_segment_sum(tf.ones_like(word), word, nw)
            do = tf.cond(tf.reduce_max(tf.concat([wlen, [0]], 0)) >= LONG_WORD,
                         lambda: do | self._window_safe(rank, packed, mono, word, pos),
                         lambda: do)
            sym = tf.where(do, new_id, sym)
            removed = tf.concat([[False], do[:-1]], 0)
            keep = ~removed & ~done_sym
            return (tf.boolean_mask(sym, keep), tf.boolean_mask(word, keep), tf.boolean_mask(orig, keep),
                    done_pos, done_id)

        # The finished symbols are concatenated, not collected in a growing TensorArray: that one
        # needs TensorListSetItem's resize_if_index_out_of_bounds, which TF <= 2.12 (TF-Serving
        # 2.12) lacks. A round copies what finished before it; symbols finish in few rounds.
        empty = tf.zeros([0], tf.int64)
        _, _, _, all_pos, all_id = tf.while_loop(
            lambda sym, *_: tf.size(sym) > 0, body, (sym, word, orig, empty, empty),
            shape_invariants=(tf.TensorShape([None]),) * 5)
        out = tf.tensor_scatter_nd_update(tf.fill(tf.reshape(s0, [1]), tf.constant(-1, tf.int64)), all_pos[:, None],
                                          all_id)
        alive = out >= 0
        ids = tf.boolean_mask(out, alive)
        lens = tf.math.unsorted_segment_sum(tf.cast(alive, tf.int64), rowids(splits), nw)
        return ids, splits_from_lengths(lens)

    def _window_safe(self, rank, packed, mono, word, pos):
        """Pairs no earlier merge can pre-empt: the strict minimum within their reach.

        A chain of earlier-ranked merges that changes a neighbour of pair p builds one token
        spanning from its start to p; tokens made by merges ranked below p's are at most ``reach``
        symbols long, so pairs farther than ``reach + 1`` cannot interfere. If p's merge is also
        monotone, what it creates ranks after it, and merging it now is what HF does later.
        """
        n = tf.size(rank, out_type=tf.int64)
        reach = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed, REACH_SHIFT), MAX_REACH) + 1
        new_word = tf.concat([[True], tf.not_equal(word[1:], word[:-1])], 0)
        w_first = _prev_true(new_word)
        w_last_pair = _next_true(tf.concat([tf.not_equal(word[1:], word[:-1]), [True]], 0)) - 1
        # sparse table of range minima (static number of levels)
        table = [rank]
        for k in range(1, self.levels):
            prev = table[-1]
            step = 1 << (k - 1)
            table.append(tf.minimum(prev, tf.concat([prev, tf.fill([step], tf.constant(BIG, tf.int64))], 0)[step:]))
        st = tf.stack(table)  # [K, n]

        def range_min(lo, hi):  # inclusive; empty ranges give BIG
            length = hi - lo + 1
            ok = length > 0
            ln = tf.maximum(length, 1)
            k = tf.cast(tf.math.floor(tf.math.log(tf.cast(ln, tf.float64)) / np.log(2.0) + 1e-9), tf.int64)
            k = tf.minimum(k, self.levels - 1)
            a = tf.gather_nd(st, tf.stack([k, tf.clip_by_value(lo, 0, n - 1)], 1))
            b = tf.gather_nd(st, tf.stack([k, tf.clip_by_value(hi - tf.bitwise.left_shift(tf.ones_like(k), k) + 1,
                                                              0, n - 1)], 1))
            return tf.where(ok, tf.minimum(a, b), BIG)

        left = range_min(tf.maximum(w_first, pos - reach), pos - 1)
        right = range_min(pos + 1, tf.minimum(w_last_pair, pos + reach))
        finite = rank < BIG
        prev_rank = tf.concat([[BIG], rank[:-1]], 0)
        next_rank = tf.concat([rank[1:], [BIG]], 0)
        in_run = tf.equal(prev_rank, rank) | tf.equal(next_rank, rank)
        return finite & mono & ~in_run & (right >= rank) & (left >= rank)

    def whole_words(self, words: Words):
        """ignore_merges: the id of each word that is itself a vocab entry, else -1."""
        strings = encode_keys(tf.RaggedTensor.from_row_splits(words.values, words.splits, validate=False))
        return self.words_table.lookup(strings)


# ------------------------------------------------------------------------------------ the tokenizer
class BPETokenizer(InGraphTokenizer):
    """The HF BPE fast tokenizer, in the graph.

    Args:
        hf_tokenizer: the transformers fast tokenizer (as sentence-transformers configures it).
        max_seq_length: truncation length, special tokens included.

    Example:
        >>> tok = BPETokenizer(hf_tok, 512)
        >>> input_ids, attention_mask = tok.tokenize(tf.constant(["Hello world!"]))
    """

    def __init__(self, hf_tokenizer, max_seq_length: int):
        super().__init__(hf_tokenizer, max_seq_length, name="bpe_tokenizer")
        tj = self.tokenizer_json
        self.normalizer = Normalizer(tj.get("normalizer"), name="normalizer")
        self.pre_tokenizer = PreTokenizer(tj.get("pre_tokenizer"), name="pre_tokenizer")
        if any(st[0] == "metaspace" and st[2] == "first" for st in self.pre_tokenizer._steps):
            # HF prepends at original offset 0 only: a normalizer that can delete the first character moves it
            movers = [st[0] for st in pt.normalizer_steps(tj.get("normalizer")) if st[0] in ("strip", "replace",
                                                                                             "strip_accents")]
            if movers:
                raise UnsupportedError(f"Metaspace(prepend_scheme='first') after a {movers[0]} normalizer")
        self.bpe = BPEMerger(read_bpe_model(tj["model"]), name="bpe")
        self.budget = max(self.max_seq_length - self.post.n_special, 0)
        # exact pruning needs: no non-empty word can give zero tokens
        m = self.bpe.model
        if m.unk_id >= 0 or (m.byte_fallback and (m.byte_ids >= 0).all()):
            self.every_word_gives_a_token = True
        elif self.pre_tokenizer.byte_level:
            table = char_variants(m)
            used = [v for v in range(4) if not ((v & 1 and not m.prefix) or (v & 2 and not m.suffix))]
            self.every_word_gives_a_token = all(int(c) in table[v] for v in used for c in bytes_to_unicode())
        else:
            self.every_word_gives_a_token = False
        plan = self.pre_tokenizer.chunk_plan
        self.chunks = ChunkCache(tj, plan, self.pre_tokenizer.byte_level, name="chunk_cache") if plan else None

    def normalize_pieces(self, pieces: tf.RaggedTensor) -> tf.RaggedTensor:
        pieces = pieces.with_row_splits_dtype(tf.int64)
        w = self.normalizer(Words(pieces.flat_values, pieces.row_splits, tf.range(pieces.nrows())))
        return tf.RaggedTensor.from_row_splits(w.values, w.splits, validate=False)

    def encode_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        pieces = pieces.with_row_splits_dtype(tf.int64)
        return self._encode(Words(pieces.flat_values, pieces.row_splits, tf.range(pieces.nrows())), pieces.nrows(),
                            is_first)

    def encode_raw_pieces(self, pieces: tf.RaggedTensor, is_first: tf.Tensor) -> tf.RaggedTensor:
        pieces = pieces.with_row_splits_dtype(tf.int64)
        w = Words(pieces.flat_values, pieces.row_splits, tf.range(pieces.nrows()))
        return self._encode(self.normalizer(w), pieces.nrows(), is_first)

    def _encode(self, words: Words, n_pieces, is_first=None) -> tf.RaggedTensor:
        if self.chunks is not None:
            return self._encode_chunked(words, n_pieces)
        return self._encode_words(words, n_pieces, is_first=is_first)

    def _encode_chunked(self, words: Words, n_pieces) -> tf.RaggedTensor:
        """Pieces -> chunks (cut where ``pretokenize.chunk_plan`` allows) -> cached ids, or BPE for misses."""
        c = self.chunks
        with tf.name_scope("bpe_chunks"):
            if self.pre_tokenizer.chunk_prefix:
                words = prepend_to_words(words, " ", " ")
            v = words.values
            n = tf.size(v, out_type=tf.int64)
            cls = c.classes.lookup(v)
            prev = tf.concat([tf.zeros([1], tf.int32), cls[:-1]], 0)
            cut = tf.gather(tf.constant(c.allowed_flat), prev * c.n_classes + cls)
            cut = cut | _piece_starts(words.splits, n)
            starts = tf.where(cut)[:, 0]
            csplits = tf.concat([starts, tf.reshape(n, [1])], 0)
            cpiece = tf.searchsorted(words.splits, starts, side="right", out_type=tf.int64) - 1
            if self.every_word_gives_a_token:
                csplits, cpiece, v = self._chunks_within_budget(v, csplits, cpiece)
            strings = encode_keys(tf.RaggedTensor.from_row_splits(v, csplits, validate=False))

        def misses(miss):
            with tf.name_scope("bpe_misses"):
                mlens = tf.gather(csplits[1:] - csplits[:-1], miss)
                mv = tf.gather(v, _ragged_src(csplits, miss, mlens))
                n_miss = tf.size(miss, out_type=tf.int64)
                ids = self._encode_words(Words(mv, splits_from_lengths(mlens), tf.range(n_miss)), n_miss,
                                         skip_prefix=True)
                return ids.values, ids.row_splits

        ids, lens = c.cache.encode(strings, misses)
        plen = tf.math.unsorted_segment_sum(lens, cpiece, n_pieces)
        return tf.RaggedTensor.from_row_splits(ids, splits_from_lengths(plen), validate=False)

    def _chunks_within_budget(self, v, csplits, cpiece):
        """Drop the chunks of a piece that truncation removes anyway (each gives >= 1 token)."""
        nc = tf.size(cpiece, out_type=tf.int64)
        idx = tf.range(nc)
        if self.truncation_side == "left":
            last = tf.concat([tf.not_equal(cpiece[1:], cpiece[:-1]), [True]], 0)
            k = _next_true(last) - idx
        else:
            first = tf.concat([[True], tf.not_equal(cpiece[1:], cpiece[:-1])], 0)
            k = idx - _prev_true(first)
        keep = k < max(self.budget, 1)

        def prune():
            kc = tf.where(keep)[:, 0]
            lens = tf.gather(csplits[1:] - csplits[:-1], kc)
            return splits_from_lengths(lens), tf.gather(cpiece, kc), tf.gather(v, _ragged_src(csplits, kc, lens))

        return tf.cond(tf.reduce_all(keep), lambda: (csplits, cpiece, v), prune)

    def _encode_words(self, words: Words, n_pieces, skip_prefix: bool = False, is_first=None) -> tf.RaggedTensor:
        with tf.name_scope("bpe_pretokenize"):
            words = self.pre_tokenizer(words, skip_prefix=skip_prefix, is_first=is_first)
        with tf.name_scope("bpe_budget"):
            words = self._within_budget(words)
        with tf.name_scope("bpe_symbols"):
            sym, ssplits = self.bpe.initial_symbols(words)
            if self.bpe.model.ignore_merges:
                whole = self.bpe.whole_words(words)
                sym, ssplits = _replace_words(sym, ssplits, whole)
        with tf.name_scope("bpe_merge"):
            ids, isplits = self.bpe.merge(sym, ssplits)
        # words -> pieces
        wlen = isplits[1:] - isplits[:-1]
        plen = tf.math.unsorted_segment_sum(wlen, words.piece, n_pieces)
        return tf.RaggedTensor.from_row_splits(ids, splits_from_lengths(plen), validate=False)

    def _within_budget(self, words: Words) -> Words:
        """Drop the words of a piece that truncation removes anyway (every word gives >= 1 token)."""
        if not self.every_word_gives_a_token:
            return words
        nw = tf.size(words.piece, out_type=tf.int64)
        first_of_piece = tf.concat([[True], tf.not_equal(words.piece[1:], words.piece[:-1])], 0)
        idx = tf.range(nw)
        start = _prev_true(first_of_piece)
        k = idx - start
        if self.truncation_side == "left":
            last_of_piece = tf.concat([tf.not_equal(words.piece[1:], words.piece[:-1]), [True]], 0)
            stop = _next_true(last_of_piece)
            k = stop - idx
        keep = k < max(self.budget, 1)
        kw = tf.where(keep)[:, 0]
        new_lens = tf.gather(words.splits[1:] - words.splits[:-1], kw)
        vals = tf.gather(words.values, _ragged_src(words.splits, kw, new_lens))
        return Words(vals, splits_from_lengths(new_lens), tf.gather(words.piece, kw))


class WordCache(tf.Module):
    """Exact ids of whole words (or chunks), computed at export time by HF itself; the rest is computed.

    Args:
        keys: the cached texts.
        ids: the HF ids of each.

    :meth:`encode` takes the texts as ``common.encode_keys`` gives them (plain UTF-8 is no key:
    TF <= 2.17 writes noncharacters as U+FFFD), looks every string up and calls ``compute(rows)``
    only for the misses (and only when there are any), then puts both back in order.
    """

    def __init__(self, keys, ids, runtime_words: int | None = None, name=None):
        super().__init__(name=name)
        self.size = len(keys)
        runtime_words = RUNTIME_CACHE_WORDS if runtime_words is None else runtime_words
        self.runtime = RuntimeCache(runtime_words, name="runtime") if runtime_words > 0 else None
        # per key one int64: (id << 8) | 1 for one id, (offset into values << 8) | count for several
        lens = np.array([len(i) for i in ids], dtype=np.int64)
        if lens.size and lens.max() >= 256:
            raise ValueError("a cached word has 256 ids or more")
        several = [i for i in ids if len(i) != 1]
        offsets = np.concatenate([[0], np.cumsum([len(i) for i in several])]).astype(np.int64)
        packed, k = [], 0
        for i in ids:
            if len(i) == 1:
                packed.append((int(i[0]) << 8) | 1)
            else:
                packed.append((int(offsets[k]) << 8) | len(i))
                k += 1
        self._values = np.array([t for i in several for t in i] or [0], dtype=np.int32)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([key_bytes(k) for k in keys] or [b""], tf.string),
                                                tf.constant(packed or [0], tf.int64)),
            default_value=-1)

    def encode(self, strings: tf.Tensor, compute) -> tuple[tf.Tensor, tf.Tensor]:
        """``tf.string [R]`` -> (int64 ids, int64 ids per row).

        ``compute(miss_rows int64 [K]) -> (int64 ids, int64 row splits [K + 1])`` for the rows not cached.
        """
        packed = self.table.lookup(strings)
        hit = packed >= 0
        lens = tf.where(hit, tf.bitwise.bitwise_and(packed, 255), 0)
        head = tf.bitwise.right_shift(packed, 8)
        miss = tf.where(~hit)[:, 0]
        n_rows = tf.size(packed, out_type=tf.int64)

        def misses():
            if self.runtime is None:
                return compute(miss)
            ids, lens = self.runtime.encode(tf.gather(strings, miss), lambda rows: compute(tf.gather(miss, rows)))
            return ids, splits_from_lengths(lens)

        mvals, msplits = tf.cond(tf.size(miss) > 0, misses,
                                 lambda: (tf.zeros([0], tf.int64), tf.zeros([1], tf.int64)))
        mlen = msplits[1:] - msplits[:-1]
        lens = lens + tf.scatter_nd(miss[:, None], mlen, tf.reshape(n_rows, [1]))
        out_splits = splits_from_lengths(lens)
        src = repeat_range(lens)
        within = tf.range(out_splits[-1]) - tf.gather(out_splits, src)
        # where each row's ids start: in the computed ids (misses, by rank among them) or the cache
        miss_rank = tf.cumsum(tf.cast(~hit, tf.int64), exclusive=True)
        first = tf.where(hit, head, tf.gather(msplits, tf.minimum(miss_rank, tf.size(mlen, out_type=tf.int64))))
        at = tf.gather(first, src) + within
        row_hit = tf.gather(hit, src)
        single = tf.gather(tf.equal(lens, 1) & hit, src)
        from_cache = tf.where(single, at, tf.cast(_gather_clip(tf.constant(self._values), at), tf.int64))
        ids = tf.where(row_hit, from_cache, _gather_clip(mvals, at))
        return ids, lens


class RuntimeCache(tf.Module):
    """Words computed while serving, remembered (HF's BPE and Unigram models keep such a cache too).

    A ``MutableHashTable`` (core TF ops: find, insert, size) from the word to its ids, at most
    ``WIDTH`` of them, padded with -1; words with more ids are not kept. Entries are only added
    while the table holds fewer than ``max_words``. The ids of a word depend on the word alone,
    so a remembered word gives exactly what computing it gives: the output never depends on what
    was served before, only the time does. That holds only if the keys are one-to-one with the
    words: ``common.encode_keys``, not ``unicode_encode`` (TF <= 2.17 wrote " \\ufdd0" and " \\ufffd"
    as the same string, so which ids a word got depended on which of the two was computed first).
    """

    WIDTH = 8

    def __init__(self, max_words: int, name=None):
        super().__init__(name=name)
        self.max_words = int(max_words)
        self.table = _UncheckpointedTable(
            tf.string, tf.int64, default_value=tf.constant([-1] * self.WIDTH, tf.int64), name="words")

    def encode(self, strings: tf.Tensor, compute) -> tuple[tf.Tensor, tf.Tensor]:
        """Like :meth:`WordCache.encode`; computed words are remembered."""
        got = tf.reshape(self.table.lookup(strings), [-1, self.WIDTH])
        known = got >= 0
        hit = known[:, 0]
        hlen = tf.reduce_sum(tf.cast(known, tf.int64), axis=1)
        hvals = tf.boolean_mask(got, known)  # row-major: hit rows' ids in row order
        miss = tf.where(~hit)[:, 0]

        def fresh():
            vals, splits = compute(miss)
            lens = splits[1:] - splits[:-1]
            keep = lens <= self.WIDTH
            rows = tf.where(keep)[:, 0]
            k_lens = tf.gather(lens, rows)
            k_src = repeat_range(k_lens)
            k_within = tf.range(tf.reduce_sum(k_lens)) - tf.gather(splits_from_lengths(k_lens), k_src)
            dense = tf.tensor_scatter_nd_update(
                tf.fill(tf.stack([tf.size(rows, out_type=tf.int64), tf.constant(self.WIDTH, tf.int64)]),
                        tf.constant(-1, tf.int64)),
                tf.stack([k_src, k_within], 1), tf.gather(vals, _ragged_src(splits, rows, k_lens)))
            new_keys = tf.gather(tf.gather(strings, miss), rows)
            insert = tf.cond(self.table.size() < self.max_words,
                             lambda: _after(self.table.insert(new_keys, dense), tf.constant(True)),
                             lambda: tf.constant(False))
            with tf.control_dependencies([insert]):
                return tf.identity(vals), tf.identity(splits)

        mvals, msplits = tf.cond(tf.size(miss) > 0, fresh,
                                 lambda: (tf.zeros([0], tf.int64), tf.zeros([1], tf.int64)))
        return _interleave(hit, hvals, splits_from_lengths(tf.boolean_mask(hlen, hit)), mvals, msplits)


class _UncheckpointedTable(tf.lookup.experimental.MutableHashTable):
    """A ``MutableHashTable`` whose contents are not saved: a cache starts empty wherever it is loaded.

    Without saveables the SavedModel holds no save/restore functions for it; TF 2.12's
    ``tf.saved_model.load`` cannot load the ones TF 2.21 writes for a checkpointed table
    ("save_fn(checkpoint_key) expected a Tensor in checkpoint_key, but got str value").
    """

    def _gather_saveables_for_checkpoint(self):
        return {}


def _after(op, value):
    with tf.control_dependencies([op]):
        return tf.identity(value)


def _interleave(take_a, a_vals, a_splits, b_vals, b_splits) -> tuple[tf.Tensor, tf.Tensor]:
    """Rows from two ragged sets, A for the rows where ``take_a``, B for the others, in row order.

    Returns (values, row lengths).
    """
    a_rank = tf.cumsum(tf.cast(take_a, tf.int64), exclusive=True)
    b_rank = tf.cumsum(tf.cast(~take_a, tf.int64), exclusive=True)
    a_len = a_splits[1:] - a_splits[:-1]
    b_len = b_splits[1:] - b_splits[:-1]
    lens = tf.where(take_a, _gather_clip(a_len, a_rank), _gather_clip(b_len, b_rank))
    first = tf.where(take_a, _gather_clip(a_splits, a_rank), _gather_clip(b_splits, b_rank))
    out_splits = splits_from_lengths(lens)
    src = repeat_range(lens)
    at = tf.gather(first, src) + tf.range(out_splits[-1]) - tf.gather(out_splits, src)
    vals = tf.where(tf.gather(take_a, src), _gather_clip(a_vals, at), _gather_clip(b_vals, at))
    return vals, lens


class ChunkCache(tf.Module):
    """Chunk text -> its HF ids, for the chunks that are whole vocab entries (computed by HF itself).

    A chunk's ids do not depend on its neighbours (``pretokenize.chunk_plan``), so the lookup is
    exact; chunks not in the table run the regex split and the merge rounds.
    """

    def __init__(self, tokenizer_json: dict, plan, byte_level: bool, name=None):
        super().__init__(name=name)
        self.n_classes = int(plan.allowed.shape[0])
        self.classes = RangeTable(plan.classes, name="chunk_classes")
        self.allowed_flat = plan.allowed.reshape(-1)
        keys, ids = chunk_cache(tokenizer_json, plan.classes, plan.allowed, byte_level)
        self.cache = WordCache(keys, ids, name="words")


def _piece_starts(splits: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """bool ``[n]``: the value is the first of its (non-empty) word."""
    starts = tf.scatter_nd(splits[:-1, None], tf.ones_like(splits[:-1], tf.int32), tf.reshape(n + 1, [1]))
    return starts[:-1] > 0


def _ragged_src(splits, rows, lens):
    """Flat source indices of the values of ``rows`` (in order)."""
    sp = splits_from_lengths(lens)
    rid = repeat_range(lens)
    return tf.gather(tf.gather(splits, rows), rid) + tf.range(sp[-1]) - tf.gather(sp, rid)


def _replace_words(sym, splits, whole):
    """Words with a whole-word vocab id become that single symbol."""
    lens = splits[1:] - splits[:-1]
    hit = whole >= 0
    new_lens = tf.where(hit, tf.ones_like(lens), lens)
    nsp = splits_from_lengths(new_lens)
    rid = repeat_range(new_lens)
    within = tf.range(nsp[-1]) - tf.gather(nsp, rid)
    src = tf.gather(splits, rid) + within
    vals = tf.where(tf.gather(hit, rid), tf.gather(whole, rid), _gather_clip(sym, src))
    return vals, nsp
