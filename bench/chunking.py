"""Encoder-only benchmark of the length-sorted chunking (``PostLNEncoder.forward_sorted``).

    .venv/bin/python bench/chunking.py [--texts 256] [--budgets 1024,2048,4096]

Tokenizes the benchmark corpus once (HF tokenizer, padded per batch as a server batch arrives),
then times the encoder on the same batches: one padded pass (``forward``: per-token work on
real tokens only, attention over the padded ``[B, T]``) against sorted chunks of about ``budget``
tokens. Writes ``bench/results/<date>-<machine>-chunking.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import header, write_result  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--batches", default="1,8,32,128")
    p.add_argument("--budgets", default="512,1024,2048")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    import tensorflow as tf

    from bench.corpus import make_corpus
    from bench.run import set_threads
    from packager.modules import module_for_type
    from packager.modules.transformer import load_hf_tokenizer
    from packager.source import load_spec

    set_threads(os.cpu_count() or 2)
    spec = load_spec(None)
    t_spec = spec.modules[0]
    encoder = module_for_type(t_spec.type).build(t_spec, spec.model_dir).encoder
    hf = load_hf_tokenizer(t_spec, spec.model_dir)
    texts = make_corpus(args.texts, seed=1)
    from packager.encoders.layers import INPUT_SIGNATURE

    # One trace per variant (shapes vary per batch): input_signature, as in the exported graph.
    variants = {"padded": tf.function(encoder.forward, input_signature=INPUT_SIGNATURE)}
    for b in (int(x) for x in args.budgets.split(",")):
        variants[f"sorted-{b}"] = tf.function(lambda i, m, b=b: encoder.forward_sorted(i, m, chunk_tokens=b),
                                              input_signature=INPUT_SIGNATURE)
    result = header("chunking.py", argv, texts=len(texts), sentences_per_s={})
    for batch in (int(x) for x in args.batches.split(",")):
        feeds = []
        for i in range(0, len(texts), batch):
            enc = hf(texts[i:i + batch], padding=True, truncation=True, return_tensors="np")
            feeds.append((tf.constant(enc["input_ids"], tf.int64), tf.constant(enc["attention_mask"], tf.int64)))
        ref = variants["padded"](*feeds[0]).numpy()
        row = {}
        for name, fn in variants.items():
            got = fn(*feeds[0]).numpy()
            diff = float(np.abs((got - ref)[feeds[0][1].numpy() > 0]).max())
            assert diff < 1e-4, (name, diff)
        times = {name: [] for name in variants}
        for r in range(args.rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                for f in feeds:
                    fn(*f).numpy()
                times[name].append(time.perf_counter() - t0)
        for name in variants:
            row[name] = len(texts) / float(np.median(times[name]))
        result["sentences_per_s"][str(batch)] = row
        print(f"batch {batch:>4}: " + "  ".join(f"{k} {v:7.1f}/s" for k, v in row.items()), flush=True)
    write_result(result, args.out, "chunking")
    return 0


if __name__ == "__main__":
    sys.exit(main())
