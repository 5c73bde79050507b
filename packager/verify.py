"""One parity helper: token ids and embeddings, compared against sentence-transformers.

Used by ``packager verify``, by ``packager serve --check`` and by the tests, so the CLI and the
tests hold the export to the same thresholds.

The thresholds follow the export's precision (its manifest's ``precision``), :data:`THRESHOLDS`:

* ``fp32`` (the default, exact): token ids identical, embeddings within 1e-5;
* ``bf16`` (opt-in, REDUCED PRECISION): token ids still identical (the tokenizer is the same), embeddings
  within 5e-3 and every sentence's cosine to the reference >= 0.9999 (measured on the shipped corpus
  with all-MiniLM-L6-v2: 1.9e-3 and 0.99995). A report of a bf16 check says so in every line that matters.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_CORPUS = Path(__file__).with_name("data") / "corpus.jsonl"
DEFAULT_ID_MATCH = 1.0
DEFAULT_MAX_ABS_DIFF = 1e-5


@dataclass(frozen=True)
class Thresholds:
    """What a parity check requires.

    Attributes:
        max_abs_diff: the largest allowed absolute difference of any embedding component.
        min_cosine: the smallest allowed cosine between a sentence's two embeddings (None: not checked).
        min_id_match: the share of sentences whose token ids must be identical.
    """

    max_abs_diff: float = DEFAULT_MAX_ABS_DIFF
    min_cosine: float | None = None
    min_id_match: float = DEFAULT_ID_MATCH


# export precision -> its thresholds (packager.encoders.precision.PRECISIONS)
THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(),
    "bf16": Thresholds(max_abs_diff=5e-3, min_cosine=0.9999),
}
REDUCED_PRECISIONS = frozenset(p for p in THRESHOLDS if p != "fp32")


def thresholds(precision: str = "fp32", *, max_abs_diff: float | None = None, min_cosine: float | None = None,
               min_id_match: float | None = None) -> Thresholds:
    """The thresholds of an export of ``precision``, with any given value replacing its default.

    Raises:
        UnsupportedError: an unknown precision.
    """
    from .errors import UnsupportedError

    if precision not in THRESHOLDS:
        raise UnsupportedError(f"unsupported precision {precision!r}. Supported: {', '.join(THRESHOLDS)}")
    base = THRESHOLDS[precision]
    return Thresholds(
        max_abs_diff=base.max_abs_diff if max_abs_diff is None else float(max_abs_diff),
        min_cosine=base.min_cosine if min_cosine is None else float(min_cosine),
        min_id_match=base.min_id_match if min_id_match is None else float(min_id_match),
    )


def load_corpus(path: str | Path | None) -> list[str]:
    """Read a corpus: ``.jsonl`` (one JSON string per line, so any character is allowed) or text lines.

    ``None`` gives the shipped tricky corpus.
    """
    path = Path(path) if path else DEFAULT_CORPUS
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        out = []
        for line in raw.splitlines():
            if line.strip():
                item = json.loads(line)
                out.append(item if isinstance(item, str) else str(item.get("text", "")))
        return out
    return raw.splitlines()


@dataclass
class ParityReport:
    """The result of one parity check.

    Attributes:
        n: number of sentences compared.
        id_match_rate: share of sentences whose token ids equal the reference (None if not checked).
        max_abs_diff: largest absolute difference over all embedding components.
        min_cosine: smallest cosine similarity between a sentence's two embeddings.
        id_mismatches: the first mismatching sentences, as (text, expected ids, got ids).
        failures: every threshold that was not met, as sentences.
        worst_text: the sentence with the largest difference.
        precision: the precision of the export checked (``"bf16"``: a reduced-precision check).
        thresholds: what was required.
    """

    n: int
    id_match_rate: float | None
    max_abs_diff: float
    min_cosine: float
    id_mismatches: list = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    worst_text: str | None = None
    precision: str = "fp32"
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def reduced_precision(self) -> bool:
        """The export is reduced precision: held to looser thresholds than exact parity."""
        return self.precision in REDUCED_PRECISIONS

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "id_match_rate": self.id_match_rate,
            "max_abs_diff": self.max_abs_diff,
            "min_cosine": self.min_cosine,
            "ok": self.ok,
            "precision": self.precision,
            "reduced_precision": self.reduced_precision,
            "thresholds": asdict(self.thresholds),
            "failures": self.failures,
            "id_mismatches": [
                {"text": t[:200], "expected": e[:40], "got": g[:40]} for t, e, g in self.id_mismatches
            ],
        }

    def render(self) -> str:
        if self.reduced_precision:
            t = self.thresholds
            cosine = f", min cosine >= {t.min_cosine:g}" if t.min_cosine is not None else ""
            ids = "token ids identical" if t.min_id_match >= 1 else f"token ids identical for >= {t.min_id_match:.2%}"
            exact = THRESHOLDS["fp32"].max_abs_diff
            lines = [f"parity over {self.n} sentences, REDUCED PRECISION ({self.precision} export, not exact parity):",
                     f"  thresholds          : max abs <= {t.max_abs_diff:g}{cosine}, {ids} (fp32: max abs <= {exact:g})"]
        else:
            lines = [f"parity over {self.n} sentences:"]
        if self.id_match_rate is not None:
            lines.append(f"  token ids identical : {self.id_match_rate * 100:.2f}%")
        lines.append(f"  max abs diff        : {self.max_abs_diff:.3g}")
        lines.append(f"  min cosine          : {self.min_cosine:.8f}")
        for text, exp, got in self.id_mismatches:
            lines.append(f"  MISMATCH {text[:80]!r}")
            lines.append(f"     expected {exp[:24]}")
            lines.append(f"     got      {got[:24]}")
        for f in self.failures:
            lines.append(f"  FAIL: {f}")
        verdict = "OK" if self.ok else "NOT OK"
        lines.append(f"  {verdict} (reduced precision: {self.precision})" if self.reduced_precision else f"  {verdict}")
        return "\n".join(lines)


def compare(
    texts: Sequence[str],
    expected_emb: np.ndarray,
    got_emb: np.ndarray,
    expected_ids: Sequence[Sequence[int]] | None = None,
    got_ids: Sequence[Sequence[int]] | None = None,
    *,
    precision: str = "fp32",
    min_id_match: float | None = None,
    max_abs_diff: float | None = None,
    min_cosine: float | None = None,
    show: int = 5,
) -> ParityReport:
    """Compare embeddings (and optionally token ids) and collect every failure at once.

    The thresholds are ``precision``'s (:func:`thresholds`); a value given here replaces its default.
    """
    limits = thresholds(precision, max_abs_diff=max_abs_diff, min_cosine=min_cosine, min_id_match=min_id_match)
    max_abs_diff, min_cosine, min_id_match = limits.max_abs_diff, limits.min_cosine, limits.min_id_match
    failures = []
    expected_emb = np.asarray(expected_emb, dtype=np.float64)
    got_emb = np.asarray(got_emb, dtype=np.float64)
    if expected_emb.shape != got_emb.shape:
        failures.append(f"embedding shapes differ: expected {expected_emb.shape}, got {got_emb.shape}")
        return ParityReport(len(texts), None, float("inf"), -1.0, failures=failures, precision=precision,
                            thresholds=limits)
    diff = np.abs(expected_emb - got_emb)
    mad = float(diff.max()) if diff.size else 0.0
    num = (expected_emb * got_emb).sum(-1)
    den = np.linalg.norm(expected_emb, axis=-1) * np.linalg.norm(got_emb, axis=-1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    min_cos = float(cos.min()) if cos.size else 1.0
    worst = texts[int(diff.max(-1).argmax())] if diff.size else None
    if not mad <= max_abs_diff:
        failures.append(f"max abs diff {mad:.3g} > {max_abs_diff:g} (worst: {worst!r:.80})")
    if min_cosine is not None and not min_cos >= min_cosine:
        at = texts[int(cos.argmin())]
        failures.append(f"min cosine {min_cos:.8f} < {min_cosine:g} (at: {at!r:.80})")
    rate = None
    mismatches = []
    if expected_ids is not None and got_ids is not None:
        bad = [i for i, (e, g) in enumerate(zip(expected_ids, got_ids)) if list(e) != list(g)]
        rate = 1.0 - len(bad) / max(len(texts), 1)
        mismatches = [(texts[i], list(expected_ids[i]), list(got_ids[i])) for i in bad[:show]]
        if rate < min_id_match:
            failures.append(f"token ids identical for {rate * 100:.2f}% < {min_id_match * 100:g}% of sentences")
    return ParityReport(len(texts), rate, mad, min_cos, mismatches, failures, worst, precision, limits)


# ---------------------------------------------------------------- reference (sentence-transformers)
def reference_model(model_dir: str | Path, *, truncate_dim: int | None = None):
    """The reference: a ``SentenceTransformer``, or a ``CrossEncoder`` for a reranker folder.

    On CPU, offline, without remote code, and in float32 whatever the checkpoint's dtype: the graph
    computes in float32 (a bfloat16 checkpoint, as Qwen3-Embedding ships, would otherwise run in
    bfloat16 and differ by 1e-3 for that reason alone).
    """
    import torch

    if is_reranker_folder(model_dir):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(model_dir), device="cpu", trust_remote_code=False,
                            model_kwargs={"dtype": torch.float32})
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=False, truncate_dim=truncate_dim,
                               model_kwargs={"dtype": torch.float32})


def is_reranker_folder(model_dir: str | Path) -> bool:
    """Whether a sentence-transformers folder holds a CrossEncoder (read without loading it)."""
    path = Path(model_dir) / "config_sentence_transformers.json"
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("model_type") == "CrossEncoder"


def is_reranker(reference) -> bool:
    return type(reference).__name__ == "CrossEncoder"


def reference_ids(model, texts: Sequence, batch_size: int = 64, prompt_name: str | None = None) -> list[list[int]]:
    """Token ids exactly as sentence-transformers feeds them to the encoder (padding removed).

    ``texts`` are strings, or (query, document) pairs for a reranker.
    """
    out: list[list[int]] = []
    # what encode()/predict() apply: the named prompt, else the default prompt (if any)
    prompt = model._resolve_prompt(None, prompt_name) if hasattr(model, "_resolve_prompt") else None
    kw = {"prompt": prompt} if prompt else {}
    for i in range(0, len(texts), batch_size):
        feats = model.preprocess(list(texts[i : i + batch_size]), **kw)
        ids = feats["input_ids"].tolist()
        mask = feats["attention_mask"].tolist()
        out += [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(ids, mask)]
    return out


def reference_embeddings(model, texts: Sequence, batch_size: int = 32, prompt_name: str | None = None) -> np.ndarray:
    """``SentenceTransformer.encode`` (the model's default prompt unless ``prompt_name``), or
    ``CrossEncoder.predict`` as ``[n, num_labels]`` for pairs."""
    if is_reranker(model):
        scores = model.predict(list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(scores, dtype=np.float32).reshape(len(texts), -1)
    return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False,
                        prompt_name=prompt_name)


def strip_padding(ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    return [[int(t) for t, m in zip(row, mrow) if m] for row, mrow in zip(ids, mask)]


def rerank_pairs(texts: Sequence[str], seed: int = 0, long_chars: int = 6000) -> list[tuple[str, str]]:
    """Pairs that make truncation bite on both sides: each text with the corpus shuffled, with an
    empty document, and with a very long one (the corpus joined, its first ``long_chars`` characters).

    The default passes any max_seq_length (512 tokens) of a real vocabulary, and the reference stays
    cheap. The HF tokenizer's cost of cutting a pair grows with the square of its length (it builds
    every overflowing window of both sides), so a model with a tiny vocabulary (several tokens per
    word) and a short max_seq_length wants fewer characters: the tests use about 1000.
    """
    import random

    texts = list(texts)
    shuffled = texts[:]
    random.Random(seed).shuffle(shuffled)
    long_doc = " ".join(texts)[:long_chars]
    pairs = list(zip(texts, shuffled))
    pairs += [(t, "") for t in texts[:8]] + [("", t) for t in texts[8:12]]
    pairs += [(t, long_doc) for t in texts[12:20]] + [(long_doc, t) for t in texts[20:24]] + [(long_doc, long_doc)]
    return pairs


def check(
    texts: Sequence,
    reference,
    embed: Callable,
    tokenize: Callable | None = None,
    *,
    batch_size: int = 32,
    precision: str = "fp32",
    min_id_match: float | None = None,
    max_abs_diff: float | None = None,
    min_cosine: float | None = None,
    prompt_name: str | None = None,
) -> ParityReport:
    """Run ``texts`` through the reference model and through ``embed``/``tokenize``; compare.

    Args:
        texts: the corpus: strings, or (query, document) pairs when ``reference`` is a CrossEncoder.
        reference: see :func:`reference_model`.
        embed: maps a batch of strings to embeddings (pairs: two lists of strings to scores), from the
            in-process graph or a live server client.
        tokenize: maps a batch to unpadded token ids, or ``None`` to skip the id check.
        prompt_name: the prompt the embedder applies (None: the model's default, as ``encode``).
        precision: the export's precision (its manifest's ``precision``): picks the thresholds
            (:data:`THRESHOLDS`); ``min_id_match``, ``max_abs_diff``, ``min_cosine`` replace them one by one.
    """
    texts = list(texts)
    pairs = is_reranker(reference)

    def run(fn, batch):
        return fn([q for q, _ in batch], [d for _, d in batch]) if pairs else fn(batch)

    exp_emb = reference_embeddings(reference, texts, prompt_name=prompt_name)
    chunks = [np.asarray(run(embed, texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
    got_emb = np.concatenate(chunks).reshape(exp_emb.shape[0], -1) if texts else np.zeros_like(exp_emb)
    exp_ids = got_ids = None
    if tokenize is not None:
        exp_ids = reference_ids(reference, texts, prompt_name=prompt_name)
        got_ids = [row for i in range(0, len(texts), batch_size) for row in run(tokenize, texts[i : i + batch_size])]
    shown = [f"{q!r} / {d!r}" for q, d in texts] if pairs else texts
    return compare(shown, exp_emb, got_emb, exp_ids, got_ids, precision=precision, min_id_match=min_id_match,
                   max_abs_diff=max_abs_diff, min_cosine=min_cosine)


def graph_functions(graph, prompt_name: str | None = None):
    """``(embed, tokenize)`` callables over a loaded export, for :func:`check`.

    For a reranker export they take ``(queries, documents)`` and ``embed`` returns the scores. With
    ``prompt_name``, the ``with_prompt`` signature is used (embedders; the tokenize check then uses
    the model's default prompt, so pass ``tokenize=None`` to :func:`check`).
    """
    import tensorflow as tf

    sigs = graph.signatures
    serve, tok = sigs["serving_default"], sigs["tokenize"]
    rerank = "query" in serve.structured_input_signature[1]
    out_key = next(iter(serve.structured_outputs))

    def feeds(args):
        if rerank:
            return {"query": tf.constant(list(args[0]), tf.string), "document": tf.constant(list(args[1]), tf.string)}
        return {"input_sequence": tf.constant(list(args[0]), tf.string)}

    def embed(*args):
        f = feeds(args)
        if prompt_name is not None:
            if "with_prompt" not in sigs:  # every prompt is blank: the default path is the same
                return serve(**f)[out_key].numpy()
            n = len(args[0])
            return sigs["with_prompt"](**f, prompt_name=tf.constant([prompt_name] * n))[out_key].numpy()
        return serve(**f)[out_key].numpy()

    def tokenize(*args):
        out = tok(**feeds(args))
        return strip_padding(out["input_ids"].numpy(), out["attention_mask"].numpy())

    return embed, tokenize
