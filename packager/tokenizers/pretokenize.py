"""TF-free analysis of a byte-level / BPE ``tokenizer.json``: regexes, pre-tokenizers, normalizers.

Nothing here imports TensorFlow: it turns the HF pipeline into plain data (numpy tables and small
frozen dataclasses) that ``bpe.py`` compiles into graph ops, and it can be tested on its own.

Regexes (``Split`` pre-tokenizers, ``Replace`` normalizers, ByteLevel's built-in GPT-2 pattern)
------------------------------------------------------------------------------------------------
HF runs them with Oniguruma: leftmost-first alternation, greedy quantifiers with backtracking,
lookarounds. TF's RE2 cannot express ``\\s+(?!\\S)``, so a pattern is parsed here into a small
program that the graph evaluates for every position in parallel:

* the pattern is an ordered list of **alternatives**; each is a sequence of **items**:

  - :class:`Repeat` – one character class ``{min,max}``, greedy, lazy or possessive;
  - :class:`Choice` – an ordered set of fixed-width options (``(?i:'s|'t|'re)``), maybe optional;
  - :class:`Assert` – zero width: lookahead of a sub-program, fixed-width lookbehind, anchors.

  Groups are flattened where that keeps Oniguruma's backtracking order exactly: a group with one
  alternative is inlined; a group of several alternatives is distributed over its sequence when
  everything before it has a single possible length (``Seq[p, (A|B), s] == Seq[p, A, s] | Seq[p, B, s]``
  exactly then). Anything else (quantified groups of varying width, backreferences, atomic groups,
  ...) is refused with an :class:`UnsupportedError` that names the construct.

* a sequence's backtracking semantics per start position ``i`` reduce to, right to left over its
  items: "the largest (greedy) / smallest (lazy) count ``k`` in ``[min, min(max, run)]`` such that
  the rest matches at ``i + k``" — one "previous true position" lookup per item, from run lengths.
  ``match_program`` below is the numpy reference of exactly what the graph does.

* every character class (``\\p{L}``, ``[^\\s\\p{L}\\p{N}]``, ``(?i:s)``, ``\\s`` ...) is **probed
  through the HF ``tokenizers`` regex itself** over all code points, so its membership follows the
  Unicode tables inside ``tokenizers`` (they differ from TF's and Python's).

Normalizers and per-character tables: NFC/NFKC/NFD/NFKD (decompositions, combining classes and
composition pairs derived from HF's own normalizers), Lowercase, Replace, Prepend, Strip,
StripAccents, Sequence.
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import UnsupportedError
from .hf import N_CODEPOINTS, all_chars, all_codepoints
from .hf import normalize_all as _normalize_all

# GPT-2's pattern, as tokenizers' ByteLevel pre-tokenizer hard-codes it (use_regex=true)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

UNBOUNDED = 1 << 30  # "no maximum" for a repeat count


# ------------------------------------------------------------------------------------ code points


# ------------------------------------------------------------------------------------ probe cache
_MEMO: dict[str, object] = {}


def cached(kind: str, key: str, fn: Callable[[], dict]) -> dict:
    """``fn()`` (a dict of numpy arrays), memoised in memory and on disk.

    The key includes the installed ``tokenizers`` version, since the probed behaviour is that
    library's. Disk cache: ``settings.cache_dir("probes")`` (None: caching off).
    """
    import tokenizers

    from ..settings import cache_dir

    digest = hashlib.sha256(f"{kind}|{tokenizers.__version__}|{key}".encode()).hexdigest()[:32]
    if digest in _MEMO:
        return _MEMO[digest]  # type: ignore[return-value]
    folder = cache_dir("probes")
    path = None if folder is None else folder / f"bpe-{kind}-{digest}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                value = {k: z[k] for k in z.files}
            _MEMO[digest] = value
            return value
        except Exception:  # noqa: BLE001 - a broken cache file is just a miss
            pass
    value = fn()
    _MEMO[digest] = value
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez_compressed(tmp, **value)
            os.replace(tmp, path)
        except OSError:
            pass
    return value


def probe_class(regex: str) -> np.ndarray:
    """bool ``[0x110000]``: which code points the HF (Oniguruma) regex ``regex`` matches alone.

    ``regex`` must match exactly one character (a class, an escape, a case-insensitive literal).
    Runs the whole code space through a ``Split(regex, "removed")`` pre-tokenizer: what survives is
    what the class does not match. Cached on disk.
    """
    def run():
        from tokenizers import Regex
        from tokenizers.pre_tokenizers import Split

        split = Split(Regex(regex), behavior="removed")
        chars = all_chars()
        kept = np.zeros(len(chars), dtype=bool)
        chunk = 1 << 16
        for i in range(0, len(chars), chunk):
            for _, (s, e) in split.pre_tokenize_str(chars[i: i + chunk]):
                kept[i + s: i + e] = True
        out = np.zeros(N_CODEPOINTS, dtype=bool)
        out[all_codepoints()] = ~kept
        return {"member": out}

    return cached("class", regex, run)["member"]


# ------------------------------------------------------------------------------------ regex program
@dataclass(frozen=True)
class Atom:
    """One character class. ``literal`` (a code point) needs no probing; otherwise ``source`` is
    the Oniguruma source of a one-character regex (flags applied, e.g. ``(?i:s)``)."""

    source: str
    literal: int | None = None


@dataclass(frozen=True)
class Repeat:
    """``atom{min,max}``; ``mode`` is ``greedy``, ``lazy`` or ``possessive``."""

    atom: Atom
    min: int = 1
    max: int = 1
    mode: str = "greedy"


@dataclass(frozen=True)
class Choice:
    """Ordered fixed-width options (each a tuple of atoms, one per character); ``optional`` adds
    the empty option last (greedy) or first (``lazy``)."""

    options: tuple[tuple[Atom, ...], ...]
    optional: bool = False
    lazy: bool = False


@dataclass(frozen=True)
class Assert:
    """A zero-width condition at the current position.

    ``kind``: ``ahead`` (``program`` matches here), ``behind`` (one of ``options`` ends here),
    ``start``/``end`` (of the string), ``line_start``/``line_end`` (Ruby ``^``/``$``),
    ``end_or_final_newline`` (``\\Z``), ``word_boundary`` (``\\b``, with ``atom`` = ``\\w``).
    """

    kind: str
    negate: bool = False
    program: "Program | None" = None
    options: tuple[tuple[Atom, ...], ...] = ()
    atom: Atom | None = None


Item = Repeat | Choice | Assert


@dataclass(frozen=True)
class Program:
    """A regex as ordered alternatives of item sequences (leftmost-first)."""

    alternatives: tuple[tuple[Item, ...], ...]
    source: str = ""

    def atoms(self) -> list[Atom]:
        """Every distinct atom used, in a stable order."""
        seen: dict[Atom, None] = {}
        _collect_atoms(self, seen)
        return list(seen)

    def can_match_empty(self) -> bool:
        return any(all(_min_width(it) == 0 for it in alt) for alt in self.alternatives)

    def max_fixed_width(self) -> int:
        """Longest fixed-width option or lookbehind (how far the graph must look past a position)."""
        w = 1
        for alt in self.alternatives:
            for it in alt:
                if isinstance(it, Choice):
                    w = max(w, max(len(o) for o in it.options))
                elif isinstance(it, Assert):
                    if it.program is not None:
                        w = max(w, it.program.max_fixed_width())
                    if it.options:
                        w = max(w, max(len(o) for o in it.options))
        return w


def _collect_atoms(p: Program, seen: dict) -> None:
    for alt in p.alternatives:
        for it in alt:
            if isinstance(it, Repeat):
                seen.setdefault(it.atom, None)
            elif isinstance(it, Choice):
                for o in it.options:
                    for a in o:
                        seen.setdefault(a, None)
            else:
                if it.program is not None:
                    _collect_atoms(it.program, seen)
                for o in it.options:
                    for a in o:
                        seen.setdefault(a, None)
                if it.atom is not None:
                    seen.setdefault(it.atom, None)


def _min_width(it: Item) -> int:
    if isinstance(it, Repeat):
        return it.min
    if isinstance(it, Choice):
        return 0 if it.optional else min(len(o) for o in it.options)
    return 0


# -- parser: source -> AST ----------------------------------------------------------------------
@dataclass
class _Node:
    kind: str  # atom | seq | alt | group | quant | anchor | look
    children: list = field(default_factory=list)
    atom: Atom | None = None
    min: int = 1
    max: int = 1
    mode: str = "greedy"
    flags: str = ""
    text: str = ""  # anchor name / look kind
    negate: bool = False


_META = set("\\^$.|?*+()[]{}")
_ANCHORS = {"A": "start", "z": "end", "Z": "end_or_final_newline", "b": "word_boundary", "B": "word_boundary"}
_REFUSED_ESCAPES = {
    "G": "\\G (search start anchor)", "K": "\\K (keep)", "R": "\\R (line break sequence)",
    "X": "\\X (grapheme cluster)", "y": "\\y (grapheme boundary)", "Y": "\\Y (grapheme boundary)",
    "k": "\\k<name> (backreference)", "g": "\\g<name> (subexpression call)",
}


class _Parser:
    """A recursive-descent parser for the Oniguruma (Ruby syntax) subset tokenizers use."""

    def __init__(self, src: str):
        self.s = src
        self.i = 0

    def error(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"regex {self.s!r}: {what} (at offset {self.i}) cannot be emulated exactly in the graph")

    def parse(self) -> _Node:
        node = self.alt(flags="")
        if self.i != len(self.s):
            raise self.error(f"unbalanced {self.s[self.i]!r}")
        return node

    def alt(self, flags: str) -> _Node:
        branches = [self.seq(flags)]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            branches.append(self.seq(flags))
        return _Node("alt", branches)

    def seq(self, flags: str) -> _Node:
        items = []
        while self.i < len(self.s) and self.s[self.i] not in "|)":
            if self.s.startswith("(?", self.i) and self._inline_flags():
                # Oniguruma: "a(?i)b|c" is "a(?i:b|c)": the flag covers the rest of the enclosing
                # group, its later alternatives included
                rest = self.alt(self._pending_flags)
                items.append(_Node("group", [rest]))
                break
            items.append(self.quantified(flags))
        return _Node("seq", items)

    def _inline_flags(self) -> bool:
        j = self.i + 2
        k = j
        while k < len(self.s) and (self.s[k].isalpha() or self.s[k] == "-"):
            k += 1
        if k < len(self.s) and self.s[k] == ")" and k > j:
            self._pending_flags = _apply_flags("", self.s[j:k], self)
            self.i = k + 1
            return True
        return False

    def quantified(self, flags: str) -> _Node:
        node = self.primary(flags)
        while self.i < len(self.s) and self.s[self.i] in "*+?{":
            c = self.s[self.i]
            if c == "{":
                m = self._counted()
                if m is None:  # a literal "{"
                    break
                lo, hi = m
            else:
                self.i += 1
                lo, hi = {"*": (0, UNBOUNDED), "+": (1, UNBOUNDED), "?": (0, 1)}[c]
            mode = "greedy"
            if self.i < len(self.s) and self.s[self.i] == "?":
                mode = "lazy"
                self.i += 1
            elif self.i < len(self.s) and self.s[self.i] == "+" and c != "{":
                mode = "possessive"
                self.i += 1
            if node.kind == "quant":
                raise self.error("a quantifier applied to a quantifier")
            if node.kind in ("anchor", "look"):
                raise self.error("a quantified assertion")
            node = _Node("quant", [node], min=lo, max=hi, mode=mode)
        return node

    def _counted(self):
        j = self.s.find("}", self.i)
        if j < 0:
            return None
        body = self.s[self.i + 1: j]
        parts = body.split(",")
        try:
            if len(parts) == 1:
                lo = hi = int(parts[0])
            elif len(parts) == 2:
                lo = int(parts[0]) if parts[0] else 0
                hi = int(parts[1]) if parts[1] else UNBOUNDED
            else:
                return None
        except ValueError:
            return None
        if lo > hi:
            raise self.error(f"quantifier {{{body}}}")
        self.i = j + 1
        return lo, hi

    def primary(self, flags: str) -> _Node:
        s, i = self.s, self.i
        c = s[i]
        if c == "(":
            return self.group(flags)
        if c == "[":
            j = _class_end(s, i, self)
            self.i = j
            return _Node("atom", atom=_class_atom(s[i:j], flags))
        if c == ".":
            self.i += 1
            return _Node("atom", atom=_class_atom(".", flags))
        if c == "^":
            self.i += 1
            return _Node("anchor", text="line_start")
        if c == "$":
            self.i += 1
            return _Node("anchor", text="line_end")
        if c == "\\":
            return self.escape(flags)
        if c in "*+?":
            raise self.error(f"a dangling quantifier {c!r}")
        self.i += 1
        return _Node("atom", atom=_literal_atom(ord(c), flags))

    def escape(self, flags: str) -> _Node:
        s = self.s
        if self.i + 1 >= len(s):
            raise self.error("a trailing backslash")
        c = s[self.i + 1]
        if c in _ANCHORS:
            self.i += 2
            return _Node("anchor", text=_ANCHORS[c], negate=(c == "B"))
        if c in _REFUSED_ESCAPES:
            raise self.error(_REFUSED_ESCAPES[c])
        if c.isdigit() and c != "0":
            raise self.error(f"backreference \\{c}")
        j = _escape_end(s, self.i, self)
        src = s[self.i: j]
        self.i = j
        lit = _escape_literal(src)
        if lit is not None:
            return _Node("atom", atom=_literal_atom(lit, flags))
        return _Node("atom", atom=_class_atom(src, flags))

    def group(self, flags: str) -> _Node:
        s = self.s
        self.i += 1
        kind, look, negate = "group", "", False
        inner_flags = flags
        if s.startswith("?", self.i):
            j = self.i + 1
            if s.startswith(":", j):
                self.i = j + 1
            elif s.startswith("=", j) or s.startswith("!", j):
                kind, look, negate = "look", "ahead", s[j] == "!"
                self.i = j + 1
            elif s.startswith("<=", j) or s.startswith("<!", j):
                kind, look, negate = "look", "behind", s[j + 1] == "!"
                self.i = j + 2
            elif s.startswith("<", j) or s.startswith("P<", j) or s.startswith("'", j):
                # named capture group: for matching, the same as a plain group
                close = ">" if s[j] in "<P" else "'"
                k = s.find(close, j + 1)
                if k < 0:
                    raise self.error("an unterminated group name")
                self.i = k + 1
            elif s.startswith(">", j):
                raise self.error("an atomic group (?>...)")
            elif s.startswith("#", j):
                k = s.find(")", j)
                self.i = k + 1
                return _Node("seq", [])
            elif s.startswith("~", j):
                raise self.error("an absent operator (?~...)")
            elif s.startswith("(", j):
                raise self.error("a conditional group")
            else:
                k = j
                while k < len(s) and (s[k].isalpha() or s[k] == "-"):
                    k += 1
                if k < len(s) and s[k] == ":" and k > j:
                    inner_flags = _apply_flags(flags, s[j:k], self)
                    self.i = k + 1
                else:
                    raise self.error(f"the group syntax {s[self.i - 1: k + 1]!r}")
        body = self.alt(inner_flags)
        if self.i >= len(s) or s[self.i] != ")":
            raise self.error("an unterminated group")
        self.i += 1
        if kind == "look":
            return _Node("look", [body], text=look, negate=negate)
        return _Node("group", [body])


def _apply_flags(flags: str, spec: str, parser: _Parser) -> str:
    on, _, off = spec.partition("-")
    out = set(flags)
    for f in on:
        if f not in "im":
            raise parser.error(f"the inline flag {f!r}")
        out.add(f)
    for f in off:
        if f not in "im":
            raise parser.error(f"the inline flag {f!r}")
        out.discard(f)
    return "".join(sorted(out))


def _class_end(s: str, i: int, parser: _Parser) -> int:
    """Index just past the ``]`` closing the bracket class that opens at ``s[i]``."""
    depth = 0
    j = i
    first = True
    while j < len(s):
        c = s[j]
        if c == "\\":
            j = _escape_end(s, j, parser)
            first = False
            continue
        if c == "[":
            if s.startswith("[:", j):
                k = s.find(":]", j + 2)
                if k < 0:
                    raise parser.error("an unterminated POSIX bracket")
                j = k + 2
                first = False
                continue
            depth += 1
            j += 1
            first = True
            if j < len(s) and s[j] == "^":
                j += 1
            continue
        if c == "]" and not first:
            depth -= 1
            j += 1
            if depth == 0:
                return j
            continue
        first = False
        j += 1
    raise parser.error("an unterminated character class")


def _escape_end(s: str, i: int, parser: _Parser) -> int:
    """Index just past the escape sequence starting at ``s[i] == '\\'``."""
    c = s[i + 1] if i + 1 < len(s) else ""
    if c in "pP" and s.startswith("{", i + 2):
        k = s.find("}", i + 3)
        if k < 0:
            raise parser.error("an unterminated \\p{...}")
        return k + 1
    if c == "x":
        if s.startswith("{", i + 2):
            return s.index("}", i + 3) + 1
        j = i + 2
        while j < min(len(s), i + 4) and s[j] in "0123456789abcdefABCDEF":
            j += 1
        return j
    if c == "u":
        return i + 6
    if c in "01234567" and c == "0":
        j = i + 2
        while j < min(len(s), i + 4) and s[j] in "01234567":
            j += 1
        return j
    if c in "cC" or (c == "M" and s.startswith("-", i + 2)):
        raise parser.error(f"the control escape \\{c}")
    return i + 2


_SIMPLE_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "v": 0x0B, "a": 0x07, "e": 0x1B}


def _escape_literal(src: str) -> int | None:
    """The code point of a single-character escape (``\\n``, ``\\x41``, ``\\.``), or None for a class."""
    c = src[1]
    if c in _SIMPLE_ESCAPES and len(src) == 2:
        return _SIMPLE_ESCAPES[c]
    if c == "x":
        body = src[3:-1] if src.startswith("\\x{") else src[2:]
        return int(body, 16) if body else 0
    if c == "u":
        return int(src[2:6], 16)
    if c == "0":
        return int(src[1:], 8)
    if len(src) == 2 and not c.isalnum():
        return ord(c)
    return None


def _literal_atom(cp: int, flags: str) -> Atom:
    if "i" in flags:
        ch = chr(cp)
        # Oniguruma folds case with multi-character foldings too ("ß" ~ "ss"): only single folds are exact here
        if len(ch.casefold()) > 1 or len(ch.lower()) > 1 or len(ch.upper()) > 1:
            raise UnsupportedError(
                f"case-insensitive {ch!r} has a multi-character case folding, which cannot be emulated exactly")
        return Atom(f"(?i:{_escape_char(cp)})")
    return Atom(_escape_char(cp), literal=cp)


def _class_atom(src: str, flags: str) -> Atom:
    return Atom(f"(?{flags}:{src})" if flags else src)


def _escape_char(cp: int) -> str:
    ch = chr(cp)
    if ch in _META or ch in "-#&~ " or cp < 0x20 or cp == 0x7F:
        return f"\\x{{{cp:X}}}"
    return ch


# -- lowering: AST -> Program --------------------------------------------------------------------
def compile_regex(source: str) -> Program:
    """Parse an Oniguruma pattern (as tokenizers compiles it) into a :class:`Program`.

    Raises:
        UnsupportedError: naming the construct when the pattern cannot be emulated exactly.
    """
    tree = _Parser(source).parse()
    alts = _lower_alt(tree, source)
    prog = Program(tuple(alts), source)
    _check_case_folding(prog)
    return prog


def literal_program(text: str) -> Program:
    """A pattern matching exactly ``text`` (tokenizers' ``{"String": ...}`` patterns)."""
    if not text:
        raise UnsupportedError("an empty String pattern")
    return Program(((Choice((tuple(Atom(_escape_char(ord(c)), literal=ord(c)) for c in text),)),),),
                   source=text)


def class_program(atom: Atom) -> Program:
    """A pattern matching one character of a class (char-predicate patterns like Digits)."""
    return Program(((Repeat(atom, 1, 1),),), source=atom.source)


def _lower_alt(node: _Node, src: str) -> list[tuple[Item, ...]]:
    out: list[tuple[Item, ...]] = []
    for branch in node.children:
        out.extend(_lower_seq(_flatten(branch.children), src))
    return out


def _flatten(items: list[_Node]) -> list[_Node]:
    """Inline plain groups with a single alternative (no quantifier)."""
    out = []
    for it in items:
        if it.kind == "seq":
            out.extend(_flatten(it.children))
        elif it.kind == "group" and len(it.children[0].children) == 1:
            out.extend(_flatten(it.children[0].children[0].children))
        else:
            out.append(it)
    return out


def _fixed_options(alt: _Node) -> tuple[tuple[Atom, ...], ...] | None:
    """The alternatives of ``alt`` as fixed-width atom strings, or None if one is not."""
    opts = []
    for branch in alt.children:
        atoms: list[Atom] = []
        for it in _flatten(branch.children):
            if it.kind == "atom":
                atoms.append(it.atom)
            elif it.kind == "quant" and it.children[0].kind == "atom" and it.min == it.max:
                atoms.extend([it.children[0].atom] * it.min)
            elif it.kind == "group":
                sub = _fixed_options(it.children[0])
                if sub is None or len(sub) != 1:
                    return None
                atoms.extend(sub[0])
            else:
                return None
        opts.append(tuple(atoms))
    return tuple(opts)


def _deterministic(items: Sequence[Item]) -> bool:
    for it in items:
        if isinstance(it, Repeat) and it.min != it.max:
            return False
        if isinstance(it, Choice) and (it.optional or len({len(o) for o in it.options}) > 1):
            return False
    return True


def _lower_seq(nodes: list[_Node], src: str) -> list[tuple[Item, ...]]:
    items: list[Item] = []
    for k, node in enumerate(nodes):
        if node.kind == "atom":
            items.append(Repeat(node.atom, 1, 1))
        elif node.kind == "anchor":
            atom = Atom(r"\w") if node.text == "word_boundary" else None
            items.append(Assert(node.text, negate=node.negate, atom=atom))
        elif node.kind == "look":
            body = node.children[0]
            if node.text == "ahead":
                sub = Program(tuple(_lower_alt(body, src)), src)
                items.append(Assert("ahead", negate=node.negate, program=sub))
            else:
                opts = _fixed_options(body)
                if opts is None or any(not o for o in opts):
                    raise UnsupportedError(f"regex {src!r}: a lookbehind of varying width cannot be emulated exactly")
                items.append(Assert("behind", negate=node.negate, options=opts))
        elif node.kind == "quant":
            inner = node.children[0]
            if inner.kind == "group":
                single = _single_atom(inner.children[0])
                opts = _fixed_options(inner.children[0])
                if single is not None:
                    items.append(Repeat(single, node.min, node.max, node.mode))
                elif opts is not None and (node.min, node.max) == (0, 1) and node.mode != "possessive" \
                        and all(opts):
                    items.append(Choice(opts, optional=True, lazy=node.mode == "lazy"))
                elif opts is not None and node.min == node.max == 1:
                    items.append(Choice(opts))
                else:
                    raise UnsupportedError(
                        f"regex {src!r}: the quantified group {_src_hint(src)} (a repeated group of varying width "
                        "or count) cannot be emulated exactly")
            elif inner.kind == "atom":
                items.append(Repeat(inner.atom, node.min, node.max, node.mode))
            else:
                raise UnsupportedError(f"regex {src!r}: a quantified {inner.kind} cannot be emulated exactly")
        elif node.kind == "group":
            body = node.children[0]
            opts = _fixed_options(body)
            if opts is not None and all(opts):
                items.append(Choice(opts))
            elif _deterministic(items):
                # exact: with one possible prefix length, trying A (with all its backtracking)
                # then B is the order of Seq[prefix, A, rest] | Seq[prefix, B, rest]
                rest = nodes[k + 1:]
                out: list[tuple[Item, ...]] = []
                for branch in body.children:
                    for tail in _lower_seq(_flatten(branch.children) + rest, src):
                        out.append(tuple(items) + tail)
                return out
            else:
                raise UnsupportedError(
                    f"regex {src!r}: a group of alternatives of varying width after a repeat cannot be emulated exactly")
        else:
            raise UnsupportedError(f"regex {src!r}: unsupported construct {node.kind}")
    return [tuple(items)]


def _single_atom(alt: _Node) -> Atom | None:
    if len(alt.children) != 1:
        return None
    items = _flatten(alt.children[0].children)
    if len(items) == 1 and items[0].kind == "atom":
        return items[0].atom
    return None


def _src_hint(src: str) -> str:
    return f"in {src!r}"


def _check_case_folding(prog: Program) -> None:
    """Refuse case-insensitive strings that a multi-character case folding could match ("ss" ~ "ß")."""
    folds = _multi_folds()
    for atom_seq in _ci_sequences(prog):
        text = "".join(chr(a.literal) if a.literal is not None else _ci_char(a) for a in atom_seq)
        low = text.casefold()
        for f in folds:
            if f in low:
                raise UnsupportedError(
                    f"regex {prog.source!r}: case-insensitive {text!r} can match a character whose case folding is "
                    f"{f!r}, which cannot be emulated exactly")


def _ci_char(a: Atom) -> str:
    if a.source.startswith("(?i:") and a.source.endswith(")"):
        body = a.source[4:-1]
        if len(body) == 1:
            return body
        if body.startswith("\\x{"):
            return chr(int(body[3:-1], 16))
    return "\x00"


def _ci_sequences(prog: Program):
    for alt in prog.alternatives:
        run: list[Atom] = []
        for it in alt:
            if isinstance(it, Choice):
                for o in it.options:
                    if any(a.source.startswith("(?i") for a in o):
                        yield o
                run = []
            elif isinstance(it, Repeat) and it.atom.source.startswith("(?i") and it.min == it.max == 1:
                run.append(it.atom)
            else:
                if len(run) > 1:
                    yield tuple(run)
                run = []
        if len(run) > 1:
            yield tuple(run)


_FOLDS: list[set] = []


def _multi_folds() -> set[str]:
    if not _FOLDS:
        out = set()
        for c in range(N_CODEPOINTS):
            if 0xD800 <= c < 0xE000:
                continue
            f = chr(c).casefold()
            if len(f) > 1:
                out.add(f)
        _FOLDS.append(out)
    return _FOLDS[0]


# -- class tables ----------------------------------------------------------------------------------
def atom_member(atom: Atom) -> np.ndarray:
    """bool ``[0x110000]``: code points the atom matches (probed through HF unless a literal)."""
    if atom.literal is not None:
        out = np.zeros(N_CODEPOINTS, dtype=bool)
        out[atom.literal] = True
        return out
    return probe_class(atom.source)


# -- numpy reference matcher (the graph computes exactly this, vectorised) --------------------------
SENTINEL = -1


def layout(words: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Code points of words laid out with one ``SENTINEL`` after each word, plus ``pad`` more.

    Returns (u, word_starts).
    """
    u, starts = [], []
    for w in words:
        starts.append(len(u))
        u.extend(w)
        u.append(SENTINEL)
    u.extend([SENTINEL] * pad)
    return np.array(u, dtype=np.int64), np.array(starts, dtype=np.int64)


def _prev_true(f: np.ndarray) -> np.ndarray:
    """``out[x]`` = largest q <= x with f[q], or -1."""
    idx = np.where(f, np.arange(f.size), -1)
    return np.maximum.accumulate(idx) if f.size else idx


def _next_true(f: np.ndarray) -> np.ndarray:
    """``out[x]`` = smallest q >= x with f[q], or a huge value."""
    big = np.int64(1) << 40
    idx = np.where(f, np.arange(f.size), big)
    return np.minimum.accumulate(idx[::-1])[::-1] if f.size else idx


def _runs(m: np.ndarray) -> np.ndarray:
    """Length of the run of True starting at each position."""
    nxt = _next_true(~m)
    return np.minimum(nxt, m.size) - np.arange(m.size)


def match_program(prog: Program, member: Callable[[Atom], np.ndarray], u: np.ndarray) -> np.ndarray:
    """Anchored leftmost-first match end at every position of ``u`` (``-1`` = no match).

    ``member(atom)`` gives the atom's bool membership over ``u`` (False at sentinels).
    """
    n = u.size
    pos = np.arange(n)
    out = np.full(n, -1, dtype=np.int64)
    for alt in prog.alternatives:
        end = _seq_end(alt, member, u, pos)
        out = np.where((out < 0) & (end >= 0), end, out)
    return out


def _shift(x: np.ndarray, k: int, fill) -> np.ndarray:
    """``x[i + k]`` (k may be negative), ``fill`` outside."""
    out = np.full_like(x, fill)
    if k >= 0:
        out[: x.size - k] = x[k:]
    else:
        out[-k:] = x[: x.size + k]
    return out


def _seq_end(items, member, u, pos) -> np.ndarray:
    n = u.size
    # end[i]: where the rest of the sequence (items[j:]) ends when started at i, or -1
    end = pos.copy()
    for it in reversed(items):
        ok = end >= 0
        if isinstance(it, Repeat):
            m = member(it.atom)
            run = _runs(m)
            hi = np.minimum(run, it.max)
            if it.mode == "greedy":
                q = _prev_true(ok)[np.minimum(pos + hi, n - 1)]
                good = (hi >= it.min) & (q >= pos + it.min)
            elif it.mode == "lazy":
                q = _next_true(ok)[np.minimum(pos + it.min, n - 1)]
                good = (hi >= it.min) & (q <= pos + hi)
            else:
                q = np.minimum(pos + hi, n - 1)
                good = (hi >= it.min) & ok[q]
            new = np.where(good, end[np.clip(q, 0, n - 1)], -1)
        elif isinstance(it, Choice):
            new = np.full(n, -1, dtype=np.int64)
            cands = list(it.options)
            order = ([()] + cands) if (it.optional and it.lazy) else (cands + ([()] if it.optional else []))
            for opt in order:
                hit = _fixed_match(opt, member, n)
                w = len(opt)
                tgt = np.minimum(pos + w, n - 1)
                take = (new < 0) & hit & ok[tgt]
                new = np.where(take, end[tgt], new)
        else:
            cond = _assert(it, member, u, pos)
            new = np.where(cond & ok, end, -1)
        end = new
    return end


def _fixed_match(opt, member, n) -> np.ndarray:
    hit = np.ones(n, dtype=bool)
    for t, a in enumerate(opt):
        hit &= _shift(member(a), t, False)
    return hit


def _assert(it: Assert, member, u, pos) -> np.ndarray:
    n = u.size
    real = u != SENTINEL
    prev_real = _shift(real, -1, False)
    if it.kind == "ahead":
        cond = match_program(it.program, member, u) >= 0
    elif it.kind == "behind":
        cond = np.zeros(n, dtype=bool)
        for opt in it.options:
            cond |= _shift(_fixed_match(opt, member, n), -len(opt), False)
    elif it.kind == "start":
        cond = ~prev_real
    elif it.kind == "end":
        cond = ~real
    elif it.kind == "end_or_final_newline":
        cond = ~real | ((u == 10) & ~_shift(real, 1, False))
    elif it.kind == "line_start":
        cond = ~prev_real | (_shift(u, -1, SENTINEL) == 10)
    elif it.kind == "line_end":
        cond = ~real | (u == 10)
    elif it.kind == "word_boundary":
        w = member(it.atom)
        cond = w != _shift(w, -1, False)
    else:  # pragma: no cover - the lowering only makes the kinds above
        raise UnsupportedError(f"assertion {it.kind}")
    return ~cond if it.negate else cond


def find_matches(prog: Program, member_of_cp: Callable[[Atom], np.ndarray], text: str) -> list[tuple[int, int]]:
    """Non-overlapping leftmost-first matches of ``prog`` in ``text`` (char offsets), like Oniguruma's
    ``find_iter`` (the reference for tests; empty matches are refused at export)."""
    u, _ = layout([[ord(c) for c in text]], pad=prog.max_fixed_width() + 1)
    cache: dict[Atom, np.ndarray] = {}

    def member(a: Atom) -> np.ndarray:
        if a not in cache:
            tbl = member_of_cp(a)
            cache[a] = np.where(u >= 0, tbl[np.maximum(u, 0)], False)
        return cache[a]

    end = match_program(prog, member, u)
    out = []
    i = 0
    while i < len(text):
        if end[i] > i:
            out.append((i, int(end[i])))
            i = int(end[i])
        else:
            i += 1
    return out


# ------------------------------------------------------------------------------------ char predicates
# tokenizers' char-predicate patterns (Digits: char::is_numeric, WhitespaceSplit: char::is_whitespace,
# Punctuation: is_punc) follow Rust's Unicode tables: probed through those pre-tokenizers themselves.
def _probe_predicate(kind: str) -> np.ndarray:
    def run():
        from tokenizers import pre_tokenizers as P

        out = np.zeros(N_CODEPOINTS, dtype=bool)
        cps = all_codepoints()
        chars = all_chars()
        chunk = 1 << 15
        if kind == "whitespace":
            pre = P.WhitespaceSplit()
            kept = np.zeros(len(chars), dtype=bool)
            for i in range(0, len(chars), chunk):
                for _, (s, e) in pre.pre_tokenize_str(chars[i: i + chunk]):
                    kept[i + s: i + e] = True
            out[cps] = ~kept
            return {"member": out}
        pre = P.Digits(individual_digits=True) if kind == "numeric" else P.Punctuation(behavior="isolated")
        filler = "a"
        for i in range(0, len(chars), chunk):
            part = chars[i: i + chunk]
            text = "".join(filler + c for c in part)
            singles = {s for _, (s, e) in pre.pre_tokenize_str(text) if e - s == 1 and s % 2 == 1}
            for j in range(len(part)):
                if 2 * j + 1 in singles:
                    out[cps[i + j]] = True
        return {"member": out}

    return cached("predicate", kind, run)["member"]


_PREDICATES = {"@numeric": "numeric", "@whitespace": "whitespace", "@punctuation": "punctuation"}
_atom_member_regex = atom_member


def atom_member(atom: Atom) -> np.ndarray:  # noqa: F811 - extends the regex version with predicates
    """bool ``[0x110000]``: code points the atom matches (probed through HF unless a literal)."""
    if atom.source in _PREDICATES:
        return _probe_predicate(_PREDICATES[atom.source])
    return _atom_member_regex(atom)


# ------------------------------------------------------------------------------------ pre-tokenizers
SPLIT_BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")
SUPPORTED_PRE_TOKENIZERS = ("ByteLevel", "Split", "Digits", "WhitespaceSplit", "Punctuation", "CharDelimiterSplit",
                            "Metaspace",
                            "Sequence")
SUPPORTED_NORMALIZERS = ("NFC", "NFKC", "NFD", "NFKD", "Lowercase", "StripAccents", "Replace", "Prepend", "Strip",
                         "Sequence")


def _behavior(name) -> str:
    b = {"removed": "Removed", "isolated": "Isolated", "merged_with_previous": "MergedWithPrevious",
         "merged_with_next": "MergedWithNext", "contiguous": "Contiguous"}.get(str(name).lower(), name)
    if b not in SPLIT_BEHAVIORS:
        raise UnsupportedError(f"unsupported split behavior {name!r}. Supported: {', '.join(SPLIT_BEHAVIORS)}")
    return b


def pattern_program(pattern: dict) -> Program:
    """A tokenizer.json ``{"Regex": ...}`` / ``{"String": ...}`` pattern -> :class:`Program`."""
    if "Regex" in pattern:
        return compile_regex(pattern["Regex"])
    if "String" in pattern:
        return literal_program(pattern["String"])
    raise UnsupportedError(f"unsupported pattern {pattern!r}")


def pre_tokenizer_steps(spec: dict | None) -> list[tuple]:
    """tokenizer.json ``pre_tokenizer`` -> steps:

    ``("split", Program, behavior, invert)``, ``("byte_level", add_prefix_space, use_regex)`` or
    ``("metaspace", replacement, prepend_scheme, split)``.

    Raises:
        UnsupportedError: naming an unsupported pre-tokenizer (and listing the supported ones).
    """
    if not spec:
        return []
    kind = spec.get("type")
    if kind == "Sequence":
        return [s for p in spec.get("pretokenizers", []) for s in pre_tokenizer_steps(p)]
    if kind == "ByteLevel":
        return [("byte_level", bool(spec.get("add_prefix_space", True)), bool(spec.get("use_regex", True)))]
    if kind == "Split":
        return [("split", pattern_program(spec["pattern"]), _behavior(spec["behavior"]), bool(spec.get("invert")))]
    if kind == "Digits":
        beh = "Isolated" if spec.get("individual_digits") else "Contiguous"
        return [("split", class_program(Atom("@numeric")), beh, False)]
    if kind == "WhitespaceSplit":
        return [("split", class_program(Atom("@whitespace")), "Removed", False)]
    if kind == "Punctuation":
        return [("split", class_program(Atom("@punctuation")), _behavior(spec.get("behavior", "Isolated")), False)]
    if kind == "CharDelimiterSplit":
        return [("split", literal_program(spec["delimiter"]), "Removed", False)]
    if kind == "Metaspace":
        repl = spec.get("replacement", "\u2581")
        scheme = spec.get("prepend_scheme")
        if scheme is None:  # tokenizers < 0.14 files
            scheme = "always" if spec.get("add_prefix_space", True) else "never"
        if len(repl) != 1 or scheme not in ("always", "first", "never"):
            raise UnsupportedError(f"unsupported Metaspace settings: replacement {repl!r}, prepend_scheme {scheme!r}")
        return [("metaspace", repl, scheme, bool(spec.get("split", True)))]
    raise UnsupportedError(
        f"unsupported BPE pre-tokenizer {kind!r}. Supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}")


def normalizer_steps(spec: dict | None) -> list[tuple]:
    """tokenizer.json ``normalizer`` -> steps: ``("nfc",)``, ``("lowercase",)``, ``("replace", Program,
    content)``, ``("prepend", text)``, ``("strip", left, right)`` ...

    Raises:
        UnsupportedError: naming an unsupported normalizer (and listing the supported ones).
    """
    if not spec:
        return []
    kind = spec.get("type")
    if kind == "Sequence":
        return [s for n in spec.get("normalizers", []) for s in normalizer_steps(n)]
    if kind in ("NFC", "NFKC", "NFD", "NFKD"):
        return [(kind.lower(),)]
    if kind == "Lowercase":
        return [("lowercase",)]
    if kind == "StripAccents":
        return [("strip_accents",)]
    if kind == "Replace":
        prog = pattern_program(spec["pattern"])
        return [("replace", prog, spec.get("content", ""))]
    if kind == "Prepend":
        return [("prepend", spec.get("prepend", ""))]
    if kind == "Strip":
        return [("strip", bool(spec.get("strip_left", True)), bool(spec.get("strip_right", True)))]
    raise UnsupportedError(f"unsupported BPE normalizer {kind!r}. Supported: {', '.join(SUPPORTED_NORMALIZERS)}")


# ------------------------------------------------------------------------------------ normalizer tables


def char_map_table(kind: str) -> dict[int, list[int]]:
    """Code point -> replacement for a per-character HF normalizer (``lowercase``, ``strip_accents``)."""
    def run():
        from tokenizers import normalizers as N

        norm = {"lowercase": N.Lowercase(), "strip_accents": N.StripAccents()}[kind]
        keys, outs = _normalize_all(norm.normalize_str)
        lens = np.array([len(o) for o in outs], dtype=np.int64)
        return {"keys": np.array(keys, dtype=np.int64), "splits": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                "chars": np.array([ord(c) for o in outs for c in o], dtype=np.int64)}

    t = cached("charmap", kind, run)
    sp = t["splits"]
    return {int(k): t["chars"][sp[i]: sp[i + 1]].tolist() for i, k in enumerate(t["keys"])}


def unicode_tables(kind: str) -> dict[str, np.ndarray]:
    """Tables for ``nfd``/``nfkd``/``nfc``/``nfkc`` that reproduce HF's (older) Unicode normalization.

    Keys: ``dec_keys``/``dec_splits``/``dec_chars`` (full decompositions, HF's), ``ccc`` (canonical
    combining class, HF's: a character HF does not reorder has class 0), ``inert`` (the character is
    unchanged by the form whatever surrounds it), and for the composing forms ``pair_first``,
    ``pair_second``, ``pair_composite``, ``is_second`` (HF's primary compositions, Hangul included).
    """
    return cached("unicode", kind, lambda: _unicode_tables(kind))


def _unicode_tables(kind: str) -> dict[str, np.ndarray]:
    from tokenizers import normalizers as N

    dec_kind = {"nfc": "nfd", "nfkc": "nfkd"}.get(kind, kind)
    dec_norm = {"nfd": N.NFD(), "nfkd": N.NFKD()}[dec_kind].normalize_str
    nfd = N.NFD().normalize_str
    nfc = N.NFC().normalize_str
    keys, outs = _normalize_all(dec_norm)
    dec = dict(zip(keys, outs))
    ccc = _probe_ccc(nfd)
    out: dict[str, np.ndarray] = {}
    lens = np.array([len(o) for o in outs], dtype=np.int64)
    out["dec_keys"] = np.array(keys, dtype=np.int64)
    out["dec_splits"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    out["dec_chars"] = np.array([ord(c) for o in outs for c in o], dtype=np.int64)
    out["ccc"] = ccc
    inert = ccc == 0
    inert[np.array(keys, dtype=np.int64)] = False
    if kind in ("nfc", "nfkc"):
        pairs = _composition_pairs(nfc)
        first = np.array([p[0] for p in pairs], dtype=np.int64)
        second = np.array([p[1] for p in pairs], dtype=np.int64)
        comp = np.array([p[2] for p in pairs], dtype=np.int64)
        is_second = np.zeros(N_CODEPOINTS, dtype=bool)
        is_second[second] = True
        out.update(pair_first=first, pair_second=second, pair_composite=comp, is_second=is_second)
        # inert: unchanged by the form alone, a starter, and its decomposition's first char never
        # composes with what precedes it
        form = (N.NFC() if kind == "nfc" else N.NFKC()).normalize_str
        fkeys, _ = _normalize_all(form)
        inert = ccc == 0
        inert[np.array(fkeys, dtype=np.int64)] = False
        first_dec = np.arange(N_CODEPOINTS, dtype=np.int64)
        for k, o in dec.items():
            first_dec[k] = ord(o[0]) if o else k
        inert &= ~is_second[first_dec]
    out["inert"] = inert
    return out


def _probe_ccc(nfd) -> np.ndarray:
    """Canonical combining classes as HF reorders: Python's values where HF treats the character as
    a non-starter (values are immutable across Unicode versions), 0 elsewhere."""
    cps = all_codepoints()
    hi, lo = "\u0345", "\u0334"  # classes 240 and 1
    non = np.zeros(N_CODEPOINTS, dtype=bool)
    chars = [chr(c) for c in cps.tolist()]
    chunk = 8192
    for i in range(0, len(chars), chunk):
        part = [c for c in chars[i: i + chunk]]
        a = nfd("0" + "0".join(hi + c for c in part) + "0").split("0")[1:-1]
        b = nfd("0" + "0".join(c + lo for c in part) + "0").split("0")[1:-1]
        if len(a) != len(part) or len(b) != len(part):
            a = [nfd(hi + c) for c in part]
            b = [nfd(c + lo) for c in part]
        for c, x, y in zip(part, a, b):
            if nfd(c) != c:
                continue
            if x != hi + c or y != c + lo:
                non[ord(c)] = True
    ccc = np.zeros(N_CODEPOINTS, dtype=np.int64)
    for c in np.flatnonzero(non).tolist():
        v = unicodedata.combining(chr(c))
        if v == 0:
            raise UnsupportedError(f"U+{c:04X} is a combining mark in tokenizers' Unicode tables but unknown to "
                                   f"Python's ({unicodedata.unidata_version}); its combining class cannot be derived")
        ccc[c] = v
    return ccc


def _composition_pairs(nfc) -> list[tuple[int, int, int]]:
    """(first, second, composite) for every canonical composition HF's NFC performs."""
    cand = []
    for c in range(N_CODEPOINTS):
        if 0xD800 <= c < 0xE000:
            continue
        d = unicodedata.decomposition(chr(c))
        if not d or d.startswith("<"):
            continue
        parts = d.split()
        if len(parts) == 2:
            cand.append((int(parts[0], 16), int(parts[1], 16), c))
    for li in range(19):
        for vi in range(21):
            lv = 0xAC00 + (li * 21 + vi) * 28
            cand.append((0x1100 + li, 0x1161 + vi, lv))
            for ti in range(1, 28):
                cand.append((lv, 0x11A7 + ti, lv + ti))
    out = []
    chunk = 4096
    for i in range(0, len(cand), chunk):
        part = cand[i: i + chunk]
        got = nfc("0" + "0".join(chr(a) + chr(b) for a, b, _ in part) + "0").split("0")[1:-1]
        if len(got) != len(part):
            got = [nfc(chr(a) + chr(b)) for a, b, _ in part]
        out.extend((a, b, p) for (a, b, p), g in zip(part, got) if g == chr(p))
    return out


_REF: dict = {}


def _reference_tables(kind: str):
    if kind not in _REF:
        t = unicode_tables(kind)
        sp = t["dec_splits"]
        dec = {int(k): t["dec_chars"][sp[i]: sp[i + 1]].tolist() for i, k in enumerate(t["dec_keys"])}
        pairs = {(int(a), int(b)): int(p) for a, b, p in
                 zip(t.get("pair_first", []), t.get("pair_second", []), t.get("pair_composite", []))}
        _REF[kind] = (dec, t["ccc"], pairs)
    return _REF[kind]


def reference_normalize(kind: str, text: str) -> str:
    """The tables' NFC/NFD/... applied in plain Python (the algorithm the graph runs; for tests)."""
    dec, ccc, pairs = _reference_tables(kind)
    d = [c for ch in text for c in dec.get(ord(ch), [ord(ch)])]
    # canonical order: stable sort of each run of non-starters
    i = 0
    out = []
    while i < len(d):
        if ccc[d[i]] == 0:
            out.append(d[i])
            i += 1
            continue
        j = i
        while j < len(d) and ccc[d[j]] != 0:
            j += 1
        out.extend(sorted(d[i:j], key=lambda c: ccc[c]))
        i = j
    if kind in ("nfd", "nfkd"):
        return "".join(map(chr, out))
    res: list[int] = []
    starter = None  # index in res
    last_ccc = None
    for c in out:
        k = int(ccc[c])
        if starter is None:
            res.append(c)
            if k == 0:
                starter, last_ccc = len(res) - 1, None
            continue
        comp = pairs.get((res[starter], c))
        if comp is not None and (last_ccc is None or last_ccc < k):
            res[starter] = comp
            continue
        if k == 0:
            res.append(c)
            starter, last_ccc = len(res) - 1, None
        else:
            res.append(c)
            last_ccc = k
    return "".join(map(chr, res))


# ------------------------------------------------------------------------------------ chunking
@dataclass(frozen=True)
class ChunkPlan:
    """Where a regex split can be cut into independent chunks without changing its result.

    ``classes`` gives every code point a class (its membership in each of the program's atoms);
    ``allowed[cx, cy]`` says: between a character of class ``cx`` and the next of class ``cy``,
    the split result of the whole text is the concatenation of the split results of the two
    sides, each run alone. See :func:`chunk_plan` for why that holds.
    """

    classes: np.ndarray  # int32 [0x110000]
    allowed: np.ndarray  # bool [K, K]


def _consumer_sets(it: Item, index: dict) -> tuple[set, set, set, bool]:
    """(first atoms, last atoms, adjacent atom pairs inside, nullable) of one consuming item."""
    if isinstance(it, Repeat):
        a = index[it.atom]
        inside = {(a, a)} if it.max >= 2 else set()
        return ({a} if it.max >= 1 else set()), ({a} if it.max >= 1 else set()), inside, it.min == 0
    first = {index[o[0]] for o in it.options if o}
    last = {index[o[-1]] for o in it.options if o}
    inside = {(index[o[k]], index[o[k + 1]]) for o in it.options for k in range(len(o) - 1)}
    return first, last, inside, bool(it.optional) or any(not o for o in it.options)


def _single_char_program(prog: Program) -> bool:
    """Every alternative consumes exactly one character (``\\S``, ``[abc]``, ``x|y``)."""
    for alt in prog.alternatives:
        if len(alt) != 1:
            return False
        it = alt[0]
        if isinstance(it, Repeat):
            if not (it.min == it.max == 1):
                return False
        elif isinstance(it, Choice):
            if it.optional or any(len(o) != 1 for o in it.options):
                return False
        else:
            return False
    return True


def _always_matches(alt: tuple, index: dict, member_rows: np.ndarray) -> np.ndarray:
    """bool [K]: the alternative matches, at a position holding a character of class k, whatever follows.

    True when some item can consume that one character while every item before it can match
    empty (and backtracks: no possessive repeat, no assertion) and every item after it can match
    empty (no assertion): then that path is a match, and a backtracking engine finds a match.
    """
    k_classes = member_rows.shape[0]
    out = np.zeros(k_classes, dtype=bool)
    for k, it in enumerate(alt):
        before_ok = all(
            (isinstance(p, Choice) and (p.optional or any(not o for o in p.options)))
            or (isinstance(p, Repeat) and p.min == 0 and p.mode != "possessive")
            for p in alt[:k])
        after_ok = all(not isinstance(p, Assert) and _min_width(p) == 0 for p in alt[k + 1:])
        if not (before_ok and after_ok):
            continue
        if isinstance(it, Repeat) and it.min <= 1 <= it.max:
            out |= member_rows[:, index[it.atom]]
        elif isinstance(it, Choice):
            for o in it.options:
                if len(o) == 1:
                    out |= member_rows[:, index[o[0]]]
    return out


def chunk_plan(prog: Program) -> ChunkPlan | None:
    """The cut points of an ``Isolated`` regex split, or None when the program does not allow the proof.

    A cut between characters ``x = s[i-1]`` and ``y = s[i]`` (classes ``cx``, ``cy``) is safe when:

    1. no match, nor any partial match the engine tries, consumes ``x`` and then ``y``: for every
       pair of atoms ``(A, B)`` that can be consumed one right after the other (inside a repeat,
       inside a fixed option, or across items with only empty-able items between),
       not (``cx`` in A and ``cy`` in B). So Oniguruma's scan visits i (no match jumps over it),
       and every attempt that started before i stops reading at i;
    2. what such an attempt learns at i equals what it learns at the end of the text: a repeat
       or option cannot take ``y`` (by 1), and a lookahead after an atom that can hold ``x`` is a
       single character class F with ``cy`` not in F (so ``(?!F)`` / ``(?=F)`` give the same as at
       the end). Other assertions (lookbehind, anchors, ``\\b``) are refused outright, so nothing
       after i ever reads before i;
    3. some alternative always matches at i (:func:`_always_matches`), so a segment starts at i
       even after unmatched characters.

    Then the split of ``s`` is the split of ``s[:i]`` followed by that of ``s[i:]``.
    """
    atoms = prog.atoms()
    index = {a: k for k, a in enumerate(atoms)}
    adj: set = set()
    look: set = set()
    for alt in prog.alternatives:
        prev_last: set = set()
        for it in alt:
            if isinstance(it, Assert):
                if it.kind != "ahead" or it.program is None or not _single_char_program(it.program):
                    return None
                body = {index[a] for a in it.program.atoms()}
                look |= {(p, f) for p in prev_last for f in body}
                continue
            first, last, inside, nullable = _consumer_sets(it, index)
            adj |= {(p, f) for p in prev_last for f in first} | inside
            prev_last = (prev_last | last) if nullable else set(last)
    if len(atoms) > 62:
        return None
    bits = np.zeros(N_CODEPOINTS, dtype=np.int64)
    for k, a in enumerate(atoms):
        bits |= atom_member(a).astype(np.int64) << k
    uniq, classes = np.unique(bits, return_inverse=True)
    rows = ((uniq[:, None] >> np.arange(len(atoms))[None, :]) & 1).astype(bool)  # [K, atoms]
    k_classes = len(uniq)
    allowed = np.ones((k_classes, k_classes), dtype=bool)
    for a, b in adj | look:
        allowed &= ~(rows[:, a][:, None] & rows[:, b][None, :])
    starts = np.zeros(k_classes, dtype=bool)
    for alt in prog.alternatives:
        starts |= _always_matches(alt, index, rows)
    allowed &= starts[None, :]
    return ChunkPlan(classes.astype(np.int32).reshape(-1), allowed)


def chunk_starts(plan: ChunkPlan, text: str) -> list[int]:
    """Reference: offsets where :func:`chunk_plan` cuts ``text`` (0 included when non-empty)."""
    if not text:
        return []
    cls = plan.classes[[ord(c) for c in text]]
    return [0] + [i for i in range(1, len(text)) if plan.allowed[cls[i - 1], cls[i]]]
