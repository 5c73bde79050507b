"""Markdown tables from a bench/run.py result (what the README and docs/performance.md show).

    .venv/bin/python bench/report.py [bench/results/<date>-<machine>.json]   # default: the newest
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FP32_PEERS = ("onnx", "openvino", "fastembed")
LABELS = {"graph": "exported graph", "st": "sentence-transformers (torch)", "onnx": "ONNX Runtime fp32",
          "openvino": "OpenVINO f32", "fastembed": "fastembed (ONNX Runtime)",
          "openvino-default": "OpenVINO default precision", "onnx-int8": "ONNX Runtime int8 (dynamic)",
          "graph-bf16": "exported graph, precision bf16 (frozen-weights env)"}


def newest() -> Path:
    runs = sorted(p for p in RESULTS.glob("*.json") if p.stem.count("-") == 3)  # <date>-<machine>.json
    if not runs:
        raise SystemExit(f"no results in {RESULTS}: run `make bench` first")
    return runs[-1]


def _label(name: str, model: dict) -> str:
    c = model.get("contenders", {}).get(name, {})
    label = c.get("label") or LABELS.get(name, name)
    if name == "openvino-default":
        prec = str((c.get("info") or {}).get("inference_precision", ""))
        for p in ("bfloat16", "bf16", "f16", "float32"):
            if p in prec:
                label += f" ({'bf16' if p.startswith('b') else p})"
                break
    if c.get("reduced_precision"):
        label = f"*reduced precision:* {label}"
    return label


def _order(names, model: dict) -> list[str]:
    fp = [n for n in names if not model.get("contenders", {}).get(n, {}).get("reduced_precision")]
    return fp + [n for n in names if n not in fp]


def throughput_table(thr: dict, model: dict) -> list[str]:
    batches = sorted(thr, key=int)
    names = _order(list(dict.fromkeys(n for b in batches for n in thr[b])), model)
    lines = ["| contender | " + " | ".join(f"batch {b}" for b in batches) + " | max abs vs ST | min cosine |",
             "| --- |" + " --- |" * (len(batches) + 2)]
    for name in names:
        cells = []
        for b in batches:
            row = thr[b]
            if name not in row:
                cells.append("—")
                continue
            sps = row[name]["sentences_per_s"]
            cells.append(f"{sps:.1f}" + (f" ({sps / row['st']['sentences_per_s']:.2f}×)" if "st" in row and name != "st" else ""))
        accs = [thr[b][name]["accuracy"] for b in batches if name in thr[b] and "accuracy" in thr[b][name]
                and "max_abs_diff" in thr[b][name]["accuracy"]]
        mad = f"{max(a['max_abs_diff'] for a in accs):.1e}" if accs else "—"
        cos = f"{min(a['min_cosine'] for a in accs):.6f}" if accs else "—"
        lines.append(f"| {_label(name, model)} | " + " | ".join(cells) + f" | {mad} | {cos} |")
    return lines


def latency_table(thr: dict, model: dict) -> list[str]:
    batches = sorted(thr, key=int)
    names = _order(list(dict.fromkeys(n for b in batches for n in thr[b])), model)
    lines = ["| p50 / p99 ms per call | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "| --- |" + " --- |" * len(batches)]
    for name in names:
        cells = [f"{thr[b][name]['latency_p50_ms']:.1f} / {thr[b][name]['latency_p99_ms']:.1f}" if name in thr[b] else "—"
                 for b in batches]
        lines.append(f"| {_label(name, model)} | " + " | ".join(cells) + " |")
    return lines


def lead_line(thr: dict) -> str:
    """The graph against the best fp32 peer at each batch size (what the targets are stated in)."""
    parts = []
    for b in sorted(thr, key=int):
        row = thr[b]
        peers = {n: row[n]["sentences_per_s"] for n in FP32_PEERS if n in row}
        if "graph" not in row or not peers:
            continue
        best = max(peers, key=peers.get)
        parts.append(f"batch {b} {row['graph']['sentences_per_s'] / peers[best]:.2f}× ({LABELS.get(best, best)})")
    return ("Graph ÷ best fp32 peer: " + "; ".join(parts) + ".") if parts else ""


def served_table(served: dict, inproc_b1_p50: float | None) -> list[str]:
    runs = served.get("runs", [])
    if not runs:
        return [f"Served: not measured ({served.get('errors')})."]
    has_inf = any("infinity" in r for r in runs)
    lines = ["| concurrency | packager Triton | " + ("infinity-emb | Triton ÷ infinity |" if has_inf else ""),
             "| --- | --- |" + (" --- | --- |" if has_inf else "")]

    def cell(x):
        return f"{x['sentences_per_s']:.1f}/s, p50 {x['latency_p50_ms']:.1f} / p99 {x['latency_p99_ms']:.1f} ms" + (
            f", {x['errors']} errors" if x.get("errors") else "")

    for r in runs:
        line = f"| {r['concurrency']} | {cell(r['triton'])}"
        if "mean_server_batch" in r["triton"]:
            line += f" (batch {r['triton']['mean_server_batch']:.1f})"
        line += " |"
        if has_inf:
            line += (f" {cell(r['infinity'])} | {r['ratio']:.2f}× |" if "infinity" in r else " — | — |")
        lines.append(line)
    notes = []
    acc = served.get("accuracy", {})
    if acc:
        notes.append("vs sentence-transformers: " + "; ".join(
            f"{k} max abs {v['max_abs_diff']:.1e}, min cosine {v['min_cosine']:.6f}" for k, v in acc.items()))
    rtt = served.get("http_rtt_ms", {})
    if rtt:
        notes.append("HTTP round trip (GET health, same client): " + ", ".join(f"{k} {v:.2f} ms" for k, v in rtt.items()))
    c1 = next((r for r in runs if r["concurrency"] == 1), None)
    if c1 and inproc_b1_p50 and "triton" in rtt:
        budget = inproc_b1_p50 + rtt["triton"] + 1.0
        notes.append(f"Triton p50 at concurrency 1: {c1['triton']['latency_p50_ms']:.1f} ms against a target of "
                     f"{budget:.1f} ms (in-process batch-1 p50 {inproc_b1_p50:.1f} + round trip {rtt['triton']:.2f} + 1)")
    errs = {k: v.splitlines()[0][:200] for k, v in served.get("errors", {}).items()}
    if errs:
        notes.append(f"not measured: {errs}")
    cfg = served.get("config", {})
    lines += ["", f"Single-sentence requests, {cfg.get('texts')} per round, median of {cfg.get('rounds')} interleaved rounds, "
              "one plain HTTP/1.1 keep-alive client (JSON) for both servers. " + ". ".join(notes) + "."]
    return lines


def report(path: Path) -> str:
    data = json.loads(path.read_text())
    if data.get("schema") != 2:
        return f"{path.name}: results of the previous bench (no side-by-side peers); rerun `make bench`."
    m = data["machine"]
    flags = ", ".join(m.get("cpu_flags", []))
    out = [f"Measured {data['date'][:10]} on {m['cpu']} ({m['cores']} cores; {flags}); {m['threads']} threads for "
           f"every runtime; load average {m.get('load_average_at_start', ['?'])[0]:.1f} at start. Command: "
           f"`.venv/bin/python {data.get('command', 'bench/run.py')}` → `bench/results/{path.name}`.", ""]
    for label, model in data["models"].items():
        if "throughput" not in model:
            out += [f"**{label}**: failed: {model.get('errors')}", ""]
            continue
        info = {n: c.get("info") or {} for n, c in model.get("contenders", {}).items()}
        versions = sorted({f"{k} {v}" for i in info.values() for k, v in i.items()
                           if k in ("tensorflow", "torch", "onnxruntime", "openvino", "fastembed", "sentence_transformers")})
        out += [f"### {label}", "", f"Versions: {', '.join(versions)}. Commit {model.get('commit')}.", ""]
        for wl, thr in model["throughput"].items():
            if not thr:
                continue
            w = model.get("workloads", {}).get(wl, {})
            first = thr[next(iter(thr))]
            rounds = next(iter(first.values()))["rounds"] if first else "?"
            desc = ("realistic corpus" if wl == "realistic" else "uniformly long text") + \
                   f", {w.get('texts')} texts, mean {w.get('mean_tokens', 0):.0f} tokens"
            out += [f"**{desc}**: sentences/s, median of {rounds} interleaved rounds (ratio to sentence-transformers)", ""]
            out += throughput_table(thr, model) + ["", lead_line(thr), ""] + latency_table(thr, model) + [""]
        tok, exp = model.get("tokenizer"), model.get("export", {})
        if tok and "ratio" in tok:
            out += [f"Tokenizer only (batch 64): graph `tokenize` {tok['graph_tokenize']['sentences_per_s']:.0f}/s vs "
                    f"HF fast {tok['hf_fast_tokenizer']['sentences_per_s']:.0f}/s ({tok['ratio']:.2f}×)."]
        if "seconds" in exp:
            out += [f"Export: {exp['seconds']:.1f} s, peak RSS {exp['peak_rss_mb']:.0f} MB, SavedModel "
                    f"{exp['savedmodel_mb']:.1f} MB for {exp['weights_mb']:.1f} MB of weights."]
        errs = {k: v.splitlines()[0][:200] for k, v in model.get("errors", {}).items()}
        if errs:
            out += ["", f"Not measured: {errs}"]
        out += [""]
        if "served" in model:
            b1 = model["throughput"].get("realistic", {}).get("1", {}).get("graph", {}).get("latency_p50_ms")
            out += [f"**{label}, served** (`packager serve` Triton, python backend, dynamic batching; "
                    "infinity-emb 0.0.78 `--engine optimum --pooling-method mean`)", ""]
            out += served_table(model["served"], b1) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", nargs="?", type=Path, help="a bench/run.py result JSON (default: the newest)")
    print(report(ap.parse_args().result or newest()))
