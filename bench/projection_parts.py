"""Projections in column parts x TensorFlow's thread split: the default model's encoder, per setting.

    .venv/bin/python bench/projection_parts.py [--configs 2x1p1,2x2p1,2x2p2,1x2p2,1x2p4] [--rounds 2] [--texts 256]

A config ``IxJpK`` is I intra-op threads, J inter-op threads, and every projection built as K column parts
(``packager.encoders.layers.Projection``; the shipped graph uses ``PROJECTION_PARTS``). Thread counts are
process-wide in TensorFlow, so each config runs in its own process; the processes run one after another,
``--rounds`` times in rotated order, and each reports sentences/s of the encoder's serving path (the dense
single-row path at batch 1, the sorted chunks batched) over the same realistic texts. Reported: the median
over rounds, and the ratio to the first config. ``2x1p1`` is what the export ran before issue 15 session 4
(one kernel per projection, all cores per op); ``1x2p2`` is the shipped default on 2 cores
(``packager.settings.thread_split``).

Writes ``bench/results/<date>-<machine>-projection-parts.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 8, 32, 128)


def child(intra: int, inter: int, parts: int, texts: int) -> dict:
    """One config in THIS process: sentences/s per batch size, and the max abs diff from 1 part."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    sys.path.insert(0, str(ROOT))
    from bench.corpus import make_corpus
    from packager.encoders import layers
    from packager.modules.transformer import load_hf_tokenizer
    from packager.source import load_spec

    layers.PROJECTION_PARTS = parts  # read when each Projection is built
    spec = load_spec(None)
    enc = spec.transformer.build(spec.model_dir).encoder
    hf = load_hf_tokenizer(spec.transformer, spec.model_dir)
    fn = tf.function(lambda i, m: enc.serve(i, m), input_signature=layers.INPUT_SIGNATURE)
    corpus = make_corpus(texts, seed=1)
    out = {"rates": {}, "parts_built": len(enc.layers[0].qkv.kernels)}
    for batch in BATCHES:
        chunk = corpus[: max(120, batch)] if batch == 1 else corpus
        feeds = []
        for s in range(0, len(chunk), batch):
            e = hf(chunk[s:s + batch], padding=True, truncation=True, max_length=spec.max_seq_length, return_tensors="np")
            feeds.append((tf.constant(e["input_ids"], tf.int64), tf.constant(e["attention_mask"], tf.int64)))
        for f in feeds:  # warm-up: every shape once
            fn(*f)
        start = time.perf_counter()
        for _ in range(2):
            for f in feeds:
                fn(*f).numpy()
        out["rates"][str(batch)] = 2 * len(chunk) / (time.perf_counter() - start)
    # The same hidden states as the 1-part graph (column parts change no dot product; oneDNN's blocking may
    # round differently): checked on the batch-8 feeds against a 1-part encoder built in this process.
    layers.PROJECTION_PARTS = 1
    ref = spec.transformer.build(spec.model_dir).encoder
    out["max_abs_vs_1_part"] = max(float(np.abs(enc(*f).numpy() - ref(*f).numpy()).max()) for f in feeds[:4])
    return out


def parse(config: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)p(\d+)", config)
    if not m:
        raise argparse.ArgumentTypeError(f"config must look like 1x2p2 (intra x inter, parts), not {config!r}")
    return int(m[1]), int(m[2]), int(m[3])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="2x1p1,2x2p1,2x2p2,1x2p2,1x2p4")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*parse(args.child), args.texts)), flush=True)
        return 0
    sys.path.insert(0, str(ROOT))
    from bench.common import header, write_result

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        parse(c)
    result = header("projection_parts.py", argv, texts=args.texts, rounds=args.rounds, configs={})
    runs = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs[r % len(configs):] + configs[: r % len(configs)]:
            proc = subprocess.run([sys.executable, __file__, "--child", c, "--texts", str(args.texts)],
                                  capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"config {c} failed:\n{proc.stderr[-2000:]}")
            runs[c].append(json.loads(line[len("RESULT "):]))
            print(f"round {r + 1} {c}: " + "  ".join(f"b{b} {v:6.1f}/s" for b, v in runs[c][-1]["rates"].items()), flush=True)
    base = configs[0]
    for c in configs:
        med = {b: statistics.median(run["rates"][b] for run in runs[c]) for b in runs[c][0]["rates"]}
        result["configs"][c] = {"sentences_per_s": med,
                                "vs_first": {b: med[b] / statistics.median(run["rates"][b] for run in runs[base]) for b in med},
                                "max_abs_vs_1_part": max(run["max_abs_vs_1_part"] for run in runs[c]), "runs": runs[c]}
    print(f"\n{'config':<8} " + " ".join(f"{'b' + b:>16}" for b in result["configs"][base]["sentences_per_s"]) + "   max abs vs 1 part")
    for c, row in result["configs"].items():
        cells = " ".join(f"{row['sentences_per_s'][b]:7.1f} ({row['vs_first'][b]:.2f}x)" for b in row["sentences_per_s"])
        print(f"{c:<8} {cells}   {row['max_abs_vs_1_part']:.1e}")
    write_result(result, args.out, "projection-parts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
