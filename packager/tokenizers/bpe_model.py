"""TF-free reading of a ``tokenizer.json`` BPE model into the arrays the graph needs.

HF's BPE (``tokenizers/src/models/bpe/model.rs`` + ``word.rs``), reproduced by ``bpe.py``:

* a word is split into characters; each becomes the vocab id of ``prefix + c`` (not first) /
  ``c + suffix`` (last) / ``c``; an unknown character becomes ``<0xXX>`` byte tokens (``byte_fallback``,
  the bytes of the whole prefixed string), else the unknown token (consecutive ones fused with
  ``fuse_unk``; a pending unknown is only written out at the next known character or the word end),
  else it is dropped;
* ``merge_all``: repeatedly the pair with the lowest merge rank, leftmost first, is merged. The
  merge of ``(a, b)`` makes ``a + b[len(prefix):]``;
* ``ignore_merges``: a word that is itself a vocab entry is that one token.

For the parallel merge loop each merge also gets:

* ``monotone``: every merge that uses its product as an input has a higher rank. Then all
  occurrences of that pair in a word can merge at once (nothing they create can jump the queue);
* ``reach``: the longest product (in initial symbols) of any merge ranked below it. A merge whose
  pair has the lowest rank within that distance cannot be pre-empted (a chain of earlier merges
  that reaches it would build a token longer than that), so far-apart pairs merge in parallel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError


# GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n
def bytes_to_unicode() -> np.ndarray:
    """int32 ``[256]``: the character each byte becomes in byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    out = np.zeros(256, dtype=np.int32)
    out[np.array(bs)] = np.array(cs)
    return out


@dataclass
class BPEModel:
    """A BPE model as arrays.

    Attributes:
        vocab: token -> id.
        merges_left, merges_right, merges_new: int64 ``[M]`` ids, ordered by rank (index = rank).
        monotone: bool ``[M]`` (see module doc).
        reach: int64 ``[M]`` (see module doc).
        prefix, suffix: ``continuing_subword_prefix`` / ``end_of_word_suffix`` ("" = none).
        unk_id: id of the unknown token, or -1.
        fuse_unk, byte_fallback, ignore_merges: the model flags.
        byte_ids: int64 ``[256]`` id of ``<0xXX>`` per byte, or -1.
        max_token_symbols: the longest merge product, in initial symbols.
    """

    vocab: dict
    merges_left: np.ndarray
    merges_right: np.ndarray
    merges_new: np.ndarray
    monotone: np.ndarray
    reach: np.ndarray
    prefix: str
    suffix: str
    unk_id: int
    fuse_unk: bool
    byte_fallback: bool
    ignore_merges: bool
    byte_ids: np.ndarray
    max_token_symbols: int

    @property
    def n_merges(self) -> int:
        return int(self.merges_left.size)


def read_bpe_model(model: dict) -> BPEModel:
    """``tokenizer.json["model"]`` (``type == "BPE"``) -> :class:`BPEModel`.

    Raises:
        UnsupportedError: dropout, or a merge whose tokens are not in the vocabulary.
    """
    if model.get("type") != "BPE":
        raise UnsupportedError(f"not a BPE model: {model.get('type')!r}")
    if model.get("dropout") not in (None, 0, 0.0):
        raise UnsupportedError(f"BPE dropout={model.get('dropout')} is random; only dropout=null can be exported")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    raw = model.get("merges") or []
    pairs = []
    for m in raw:
        if isinstance(m, str):
            parts = m.split(" ")
            if len(parts) != 2:
                raise UnsupportedError(f"BPE merge {m!r} is not two tokens")
            pairs.append((parts[0], parts[1]))
        else:
            pairs.append((m[0], m[1]))
    plen = len(prefix.encode("utf-8"))
    # HF collects merges into a hash map: a repeated pair keeps its last rank
    merge_of: dict[tuple[int, int], tuple[int, int]] = {}
    for rank, (a, b) in enumerate(pairs):
        if a not in vocab or b not in vocab:
            raise UnsupportedError(f"BPE merge ({a!r}, {b!r}) uses a token that is not in the vocabulary")
        new = a + b.encode("utf-8")[plen:].decode("utf-8", "surrogateescape")
        if new not in vocab:
            raise UnsupportedError(f"BPE merge ({a!r}, {b!r}) makes {new!r}, which is not in the vocabulary")
        merge_of[(vocab[a], vocab[b])] = (rank, vocab[new])
    items = sorted(merge_of.items(), key=lambda kv: kv[1][0])
    left = np.array([k[0] for k, _ in items], dtype=np.int64)
    right = np.array([k[1] for k, _ in items], dtype=np.int64)
    new_ids = np.array([v[1] for _, v in items], dtype=np.int64)
    m = left.size
    size = max(vocab.values(), default=-1) + 1
    # min rank of a merge using each token as an input
    first_use = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
    ranks = np.arange(m, dtype=np.int64)
    np.minimum.at(first_use, left, ranks)
    np.minimum.at(first_use, right, ranks)
    monotone = first_use[new_ids] > ranks if m else np.zeros(0, dtype=bool)
    # product lengths in initial symbols (a token no merge makes is one symbol)
    symbols = np.ones(size, dtype=np.int64)
    id_len = np.zeros(size, dtype=np.int64)
    for tok, i in vocab.items():
        id_len[i] = len(tok)
    order = np.argsort(id_len[new_ids], kind="stable") if m else np.zeros(0, dtype=np.int64)
    for _ in range(2):  # products of products: lengths only grow; two passes settle odd orders
        for r in order.tolist():
            symbols[new_ids[r]] = max(symbols[new_ids[r]], symbols[left[r]] + symbols[right[r]])
    prod = symbols[new_ids] if m else np.zeros(0, dtype=np.int64)
    below = np.concatenate([[1], np.maximum.accumulate(prod)[:-1]]) if m else prod
    reach = np.maximum(below, 1).astype(np.int64)
    unk = model.get("unk_token")
    unk_id = -1
    if unk is not None:
        if unk not in vocab:
            raise UnsupportedError(f"BPE unk_token {unk!r} is not in the vocabulary")
        unk_id = int(vocab[unk])
    byte_fallback = bool(model.get("byte_fallback", False))
    byte_ids = np.full(256, -1, dtype=np.int64)
    if byte_fallback:
        for b in range(256):
            t = f"<0x{b:02X}>"
            if t in vocab:
                byte_ids[b] = vocab[t]
    return BPEModel(
        vocab=vocab, merges_left=left, merges_right=right, merges_new=new_ids, monotone=monotone, reach=reach,
        prefix=prefix, suffix=suffix, unk_id=unk_id, fuse_unk=bool(model.get("fuse_unk", False)),
        byte_fallback=byte_fallback, ignore_merges=bool(model.get("ignore_merges", False)), byte_ids=byte_ids,
        max_token_symbols=int(prod.max()) if m else 1,
    )


def char_variants(model: BPEModel) -> dict[int, dict[int, int]]:
    """Per variant (bit 0: not the first character -> prefix; bit 1: the last -> suffix), the ids of
    single characters: ``{variant: {code point: id}}``. Without prefix/suffix all variants are equal."""
    out: dict[int, dict[int, int]] = {v: {} for v in range(4)}
    p, s = model.prefix, model.suffix
    for tok, i in model.vocab.items():
        for v in range(4):
            core = tok
            if v & 1 and p:
                if not core.startswith(p):
                    continue
                core = core[len(p):]
            if v & 2 and s:
                if not core.endswith(s):
                    continue
                core = core[: len(core) - len(s)]
            if len(core) == 1:
                out[v][ord(core)] = int(i)
    return out


def reference_merge(model: BPEModel, symbols: list[int]) -> list[int]:
    """HF's ``merge_all`` on a list of initial symbol ids (a slow reference for tests)."""
    import heapq

    table = {(int(a), int(b)): (r, int(n)) for r, (a, b, n) in
             enumerate(zip(model.merges_left, model.merges_right, model.merges_new))}
    sym = list(symbols)
    alive = [True] * len(sym)
    nxt = list(range(1, len(sym))) + [-1]
    prv = [-1] + list(range(len(sym) - 1))
    heap = []
    for i in range(len(sym) - 1):
        m = table.get((sym[i], sym[i + 1]))
        if m:
            heap.append((m[0], i, m[1]))
    heapq.heapify(heap)
    while heap:
        rank, pos, new = heapq.heappop(heap)
        if not alive[pos] or nxt[pos] < 0:
            continue
        j = nxt[pos]
        m = table.get((sym[pos], sym[j]))
        if m is None or m[1] != new:
            continue
        sym[pos] = new
        alive[j] = False
        nxt[pos] = nxt[j]
        if nxt[j] >= 0:
            prv[nxt[j]] = pos
        if prv[pos] >= 0:
            m = table.get((sym[prv[pos]], sym[pos]))
            if m:
                heapq.heappush(heap, (m[0], prv[pos], m[1]))
        if nxt[pos] >= 0:
            m = table.get((sym[pos], sym[nxt[pos]]))
            if m:
                heapq.heappush(heap, (m[0], pos, m[1]))
    return [s for s, a in zip(sym, alive) if a]


# ------------------------------------------------------------------------------------ chunk cache
def _without_prefix_space(spec):
    """A pre-tokenizer spec with every ByteLevel's ``add_prefix_space`` off (the graph adds it)."""
    if isinstance(spec, dict):
        out = {k: _without_prefix_space(v) for k, v in spec.items()}
        if out.get("type") == "ByteLevel":
            out["add_prefix_space"] = False
        return out
    if isinstance(spec, list):
        return [_without_prefix_space(v) for v in spec]
    return spec


def chunk_tokenizer(tokenizer_json: dict):
    """A ``tokenizers.Tokenizer`` that runs only HF's pre-tokenizer (no prefix space) and BPE model.

    What one chunk of a normalized text piece becomes: the reference for the chunk cache.
    """
    import json

    from tokenizers import Tokenizer

    tj = dict(tokenizer_json)  # top-level keys replaced below, nothing nested is changed
    for key in ("normalizer", "post_processor", "decoder", "truncation", "padding"):
        tj[key] = None
    tj["added_tokens"] = []
    tj["pre_tokenizer"] = _without_prefix_space(tj.get("pre_tokenizer"))
    return Tokenizer.from_str(json.dumps(tj))


def chunk_cache(tokenizer_json: dict, classes: np.ndarray, allowed: np.ndarray, byte_level: bool,
                extra: tuple[str, ...] = ()) -> tuple[list[str], list[list[int]]]:
    """Chunk texts and their exact HF ids: every vocab entry whose text is one whole chunk.

    Args:
        tokenizer_json: the backend tokenizer.json.
        classes, allowed: the chunk plan (``pretokenize.chunk_plan``).
        byte_level: vocab entries are byte-level strings (decoded to text here).
        extra: more candidate texts.

    A chunk's ids depend on the chunk alone (see ``pretokenize.chunk_plan``), so each value is
    what HF's own pre-tokenizer and model give for the chunk text, computed once here.
    """
    vocab = tokenizer_json["model"]["vocab"]
    added = {t.get("content") for t in tokenizer_json.get("added_tokens", [])}
    inverse = {int(c): b for b, c in enumerate(bytes_to_unicode())}
    texts: dict[str, None] = {}
    for tok in list(vocab) + list(extra):
        if tok in added or not tok:
            continue
        if byte_level:
            try:
                tok = bytes(inverse[ord(c)] for c in tok).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                continue
        texts.setdefault(tok, None)
    cands = list(texts)
    if not cands:
        return [], []
    # keep texts that form exactly one chunk: no cut between two of their characters
    cps = np.fromiter((ord(c) for t in cands for c in t), dtype=np.int64)
    lens = np.fromiter((len(t) for t in cands), dtype=np.int64)
    cls = classes[cps]
    cut = np.zeros(cps.size, dtype=bool)
    cut[1:] = allowed[cls[:-1], cls[1:]]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    cut[starts] = False
    bad = np.add.reduceat(cut.astype(np.int64), starts) > 0
    keys = [t for t, b in zip(cands, bad) if not b]
    encs = chunk_tokenizer(tokenizer_json).encode_batch(keys, add_special_tokens=False)
    return keys, [list(e.ids) for e in encs]
