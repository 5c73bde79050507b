"""How the 24 projections of a batch-1 call are shared between two cores: column parts or token halves?

    .venv/bin/python bench/projection_layouts.py [--tokens 3,16,37,128,256] [--repeats 2]

A chain shaped like all-MiniLM-L6-v2's projections (6 x [H->3H, H->H, H->I (+GELU), I->H], H=384,
I=1536, random weights held as variables, as the export holds them), run on 1 intra-op x 2 inter-op
threads (``packager.settings.thread_split(2)``), timed per call with the layouts interleaved:

* ``one``: one kernel per projection (one core does it all; the other idles);
* ``parts``: every projection as two column parts, concatenated (what ships: ``PROJECTION_PARTS = 2``);
* ``rows``: the tokens split in two halves, each running every projection with the whole kernel; the
  halves meet once per layer (where attention would need every key and value);
* ``rows-parts``: token halves whose projections are the two column parts (the shipped variables).

Each repeat is a fresh process (thread pools and oneDNN caches are per process). Writes
bench/results/<date>-<machine>-projection-layouts.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H, I, LAYERS = 384, 1536, 6
LAYOUTS = ("one", "parts", "rows", "rows-parts")


def child(tokens: list[int], calls: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    rng = np.random.default_rng(0)
    whole, parts = [], []
    for _ in range(LAYERS):
        for k, n, gelu in ((H, 3 * H, False), (H, H, False), (H, I, True), (I, H, False)):
            w, b = rng.standard_normal((k, n), np.float32) * 0.05, rng.standard_normal(n, np.float32) * 0.05
            whole.append(((tf.Variable(w), tf.Variable(b)),))
            parts.append(((tf.Variable(w[:, : n // 2]), tf.Variable(b[: n // 2])),
                          (tf.Variable(w[:, n // 2:]), tf.Variable(b[n // 2:]))))
    gelus = [g for _ in range(LAYERS) for g in (False, False, True, False)]

    def project(h, pieces, gelu):
        outs = [tf.nn.bias_add(tf.matmul(h, w), b) for w, b in pieces]
        y = outs[0] if len(outs) == 1 else tf.concat(outs, 1)
        y = tf.nn.gelu(y, approximate=False) if gelu else y
        return y[:, :H] if y.shape[-1] == 3 * H else y  # back to width H for the next projection

    def chain(weights, halves: bool):
        @tf.function(input_signature=[tf.TensorSpec([None, H], tf.float32)])
        def f(x):
            if not halves:
                h = x
                for pieces, g in zip(weights, gelus):
                    h = project(h, pieces, g)
                return h
            m = tf.shape(x)[0] // 2
            hs = [x[:m], x[m:]]
            for i, (pieces, g) in enumerate(zip(weights, gelus)):
                hs = [project(h, pieces, g) for h in hs]
                if i % 4 == 3:  # a layer's end: each half reads the other (as attention's keys would)
                    a, b = hs
                    hs = [a + 0.0 * tf.reduce_mean(b), b + 0.0 * tf.reduce_mean(a)]
            return tf.concat(hs, 0)
        return f

    fns = {"one": chain(whole, False), "parts": chain(parts, False), "rows": chain(whole, True),
           "rows-parts": chain(parts, True)}
    out = {}
    for m in tokens:
        x = tf.constant(rng.standard_normal((m, H), np.float32))
        ref = fns["one"](x).numpy()
        for name, f in fns.items():
            assert np.allclose(f(x).numpy(), ref, atol=1e-3), name
            for _ in range(10):
                f(x)
        times = {n: [] for n in fns}
        names = list(fns)
        for r in range(calls):
            for name in names[r % 4:] + names[: r % 4]:
                s = time.perf_counter()
                fns[name](x).numpy()
                times[name].append(time.perf_counter() - s)
        out[str(m)] = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="3,16,37,128,256")
    p.add_argument("--calls", type=int, default=80)
    p.add_argument("--repeats", type=int, default=2, help="fresh processes")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.child:
        print(json.dumps(child(tokens, args.calls)))
        return 0
    sys.path.insert(0, str(ROOT))
    import datetime as dt

    from bench.common import write_result

    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "bench/projection_layouts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "threads": "1 intra x 2 inter", "load_average_at_start": os.getloadavg(), "repeats": []}
    for r in range(args.repeats):
        run = subprocess.run([sys.executable, __file__, "--child", "--tokens", args.tokens, "--calls", str(args.calls)],
                             capture_output=True, text=True, check=True)
        result["repeats"].append(json.loads(run.stdout.strip().splitlines()[-1]))
    result["median_ms"] = {str(m): {n: statistics.median(rep[str(m)][n] for rep in result["repeats"]) for n in LAYOUTS}
                           for m in tokens}
    print("ms per chain call (median of repeats), 1 intra x 2 inter threads")
    print("tokens  " + "  ".join(f"{n:>10}" for n in LAYOUTS))
    for m in tokens:
        print(f"{m:>6}  " + "  ".join(f"{result['median_ms'][str(m)][n]:10.2f}" for n in LAYOUTS))
    write_result(result, args.out, "projection-layouts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
