"""Markdown tables from a bench/run.py result (what the README and docs/performance.md show).

    .venv/bin/python bench/report.py [bench/results/<date>-<machine>.json]   # default: the newest
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"graph": "exported graph (in-process)", "st": "SentenceTransformer.encode", "onnx": "ONNX Runtime fp32"}


def newest() -> Path:
    runs = sorted(p for p in RESULTS.glob("*.json") if p.stem.count("-") == 3)  # <date>-<machine>.json
    if not runs:
        raise SystemExit(f"no results in {RESULTS}: run `make bench` first")
    return runs[-1]


def throughput_table(model: dict) -> list[str]:
    thr = model["throughput"]
    batches = sorted(thr, key=int)
    lines = ["| contender | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "| --- |" + " --- |" * len(batches)]
    for name in thr[batches[0]]:
        cells = []
        for b in batches:
            sps = thr[b][name]["sentences_per_s"]
            ratio = sps / thr[b]["st"]["sentences_per_s"]
            cells.append(f"{sps:.1f}/s ({ratio:.2f}x)")
        lines.append(f"| {NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    lat = " · ".join(f"b{b} p50 {thr[b]['graph']['latency_p50_ms']:.0f} / p99 {thr[b]['graph']['latency_p99_ms']:.0f} ms"
                     for b in batches)
    lines.append("")
    lines.append(f"Graph latency per call: {lat}.")
    return lines


def served_table(served: dict) -> list[str]:
    lines = ["| protocol | concurrency | sentences/s | p50 ms | p99 ms | mean server batch | vs in-process |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in served["runs"]:
        lines.append(f"| {r['protocol']} | {r['concurrency']} | {r['sentences_per_s']:.1f} | {r['latency_p50_ms']:.0f} | "
                     f"{r['latency_p99_ms']:.0f} | {r['mean_server_batch']:.1f} | "
                     f"{r['ratio_to_in_process']:.2f}x (batch {r['in_process_batch']}: {r['in_process_per_s']:.1f}/s) |")
    return lines


def report(path: Path) -> str:
    data = json.loads(path.read_text())
    m = data["machine"]
    out = [f"Measured {data['date'][:10]} on {m['cpu']} ({m['cores']} cores, {m['threads']} threads for every runtime; "
           f"TF {m['tensorflow']}, torch {m['torch']}, ONNX Runtime {m['onnxruntime']}), "
           f"`bench/results/{path.name}`.", ""]
    for label, model in data["models"].items():
        out += [f"**{label}**: sentences/s, median of {model['throughput'][next(iter(model['throughput']))]['graph']['rounds']} "
                "interleaved rounds (ratio to sentence-transformers)", ""]
        out += throughput_table(model)
        tok, exp = model["tokenizer"], model["export"]
        out += ["", f"Tokenizer only (batch 64): graph `tokenize` {tok['graph_tokenize']['sentences_per_s']:.0f}/s vs "
                f"HF fast {tok['hf_fast_tokenizer']['sentences_per_s']:.0f}/s ({tok['ratio']:.2f}x). "
                f"Export: {exp['seconds']:.1f} s, peak RSS {exp['peak_rss_mb']:.0f} MB, SavedModel "
                f"{exp['savedmodel_mb']:.1f} MB for {exp['weights_mb']:.1f} MB of weights.", ""]
        if "served" in model:
            out += ["Served by a local tritonserver (python backend, dynamic batching), single-sentence requests:", ""]
            out += served_table(model["served"]) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]) if len(sys.argv) > 1 else newest()))
