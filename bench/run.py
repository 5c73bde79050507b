"""Benchmark the exported graph side by side with sentence-transformers and ONNX Runtime.

    make bench                         # full run: default model + an mpnet-base-sized encoder
    .venv/bin/python bench/run.py --quick --models default

Every contender gets the same raw strings and returns normalized embeddings:
  graph  the exported SavedModel, in-process (tokenizer inside the graph)
  st     SentenceTransformer.encode (torch)
  onnx   ONNX Runtime fp32: the same encoder exported with torch.onnx.export, HF fast tokenizer
         outside the graph (what sentence-transformers' backend="onnx" does)
Conditions: one process, the same thread count for every runtime, a warm-up first, then rounds in
which the contenders are interleaved (rotated order); medians, quartiles and ratios are reported.
Results: bench/results/<date>-<machine>.json and a PNG plot (throughput by batch size).
This is never run as a timed test.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as in production (see packager/cli.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.corpus import make_corpus  # noqa: E402

BATCHES = (1, 8, 32, 128)


def set_threads(n: int) -> None:
    import tensorflow as tf
    import torch

    torch.set_num_threads(n)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ------------------------------------------------------------------------------------ contenders
def graph_contender(export_dir: Path):
    from packager.graph import load
    from packager.verify import graph_functions

    embed, _ = graph_functions(load(export_dir))
    tok = load(export_dir).signatures["tokenize"]
    import tensorflow as tf

    def tokenize(texts):
        return tok(input_sequence=tf.constant(texts))["input_ids"]

    return embed, tokenize


def st_contender(model):
    def embed(texts):
        return model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)

    return embed


def onnx_contender(model, threads: int, workdir: Path):
    """The Transformer + Pooling + Normalize of ``model`` exported to ONNX fp32 (legacy exporter)."""
    import onnxruntime as ort
    import torch

    modes = [m for m in model[1].pooling_mode] if not isinstance(model[1].pooling_mode, str) else [model[1].pooling_mode]
    if modes != ["mean"]:
        raise SystemExit(f"onnx contender supports mean pooling only, got {modes}")
    normalize = any(type(m).__name__ == "Normalize" for m in model)
    hf = model[0].auto_model.eval()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = hf

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, p=2, dim=-1) if normalize else e

    tok = model.tokenizer
    max_len = model.max_seq_length
    sample = tok(["hello world", "a longer sentence for tracing"], padding=True, return_tensors="pt")
    path = workdir / "model.onnx"
    torch.onnx.export(
        Wrap().eval(), (sample["input_ids"], sample["attention_mask"]), str(path),
        input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
        dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}, "sentence_embedding": {0: "b"}},
        opset_version=17, dynamo=False,
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def embed(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np")
        return sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                               "attention_mask": enc["attention_mask"].astype(np.int64)})[0]

    return embed


# ------------------------------------------------------------------------------------ timing
def time_calls(fn, batches) -> tuple[float, list[float]]:
    lat = []
    t0 = time.perf_counter()
    for b in batches:
        s = time.perf_counter()
        fn(b)
        lat.append(time.perf_counter() - s)
    return time.perf_counter() - t0, lat


def interleaved(contenders: dict, texts: list[str], batch: int, rounds: int) -> dict:
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    names = list(contenders)
    for name in names:  # warm-up: trace shapes, fill caches
        time_calls(contenders[name], batches[: max(2, min(len(batches), 4))])
    runs = {n: [] for n in names}
    lats = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            total, lat = time_calls(contenders[name], batches)
            runs[name].append(len(texts) / total)
            lats[name] += lat
    out = {}
    for n in names:
        sps = sorted(runs[n])
        out[n] = {
            "sentences_per_s": statistics.median(sps),
            "min": sps[0], "max": sps[-1],
            "latency_p50_ms": float(np.percentile(lats[n], 50) * 1e3),
            "latency_p99_ms": float(np.percentile(lats[n], 99) * 1e3),
            "rounds": rounds, "texts": len(texts),
        }
    return out


def export_stats(model_dir: Path, out: Path) -> dict:
    """Export in a child process to measure wall time and peak memory honestly."""
    code = ("import sys; from packager.graph import export; "
            "export(sys.argv[1], sys.argv[2], force=True)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(model_dir), str(out)],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"export of {model_dir} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    manifest = json.loads((out / "packager.json").read_text())
    weights = sum(p.stat().st_size for p in Path(model_dir).rglob("*")
                  if p.name in ("model.safetensors", "pytorch_model.bin"))
    return {"seconds": seconds, "peak_rss_mb": peak, "savedmodel_mb": size / 2**20,
            "weights_mb": weights / 2**20, "op_libraries": manifest["op_libraries"]}


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


def bench_model(label: str, model_dir: Path, args, workdir: Path) -> dict:
    from packager.verify import reference_model

    print(f"== {label}: {model_dir}", flush=True)
    export_dir = workdir / f"export-{label}"
    result = {"model_dir": str(model_dir), "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "commit": _commit(), "export": export_stats(model_dir, export_dir)}
    print(f"   export {result['export']['seconds']:.1f}s", flush=True)
    st = reference_model(model_dir)
    graph_embed, graph_tok = graph_contender(export_dir)
    contenders = {"graph": graph_embed, "st": st_contender(st)}
    if not args.no_onnx:
        contenders["onnx"] = onnx_contender(st, args.threads, workdir)
    texts = make_corpus(args.base_texts if label.startswith("mpnet-base") else args.texts, seed=1)
    # Sanity: every contender returns the same embeddings before anything is timed.
    ref = contenders["st"](texts[:16])
    for name, fn in contenders.items():
        diff = float(np.abs(fn(texts[:16]) - ref).max())
        result.setdefault("max_abs_diff_vs_st", {})[name] = diff
    result["throughput"] = {}
    big = label.startswith("mpnet-base")
    for batch in (args.base_batches if big else args.batches):
        n = len(texts) if batch > 1 else len(texts) // 4
        result["throughput"][str(batch)] = interleaved(contenders, texts[:n], batch, args.rounds)
        row = result["throughput"][str(batch)]
        print(f"   batch {batch:>4}: " + "  ".join(f"{k} {v['sentences_per_s']:8.1f}/s" for k, v in row.items()), flush=True)
    result["ratios"] = {
        b: {f"graph/{k}": row["graph"]["sentences_per_s"] / row[k]["sentences_per_s"] for k in row if k != "graph"}
        for b, row in result["throughput"].items()
    }
    hf_tok = st.tokenizer
    max_len = st.max_seq_length
    tok_contenders = {
        "graph_tokenize": graph_tok,
        "hf_fast_tokenizer": lambda t: hf_tok(t, padding=True, truncation=True, max_length=max_len, return_tensors="np"),
    }
    result["tokenizer"] = interleaved(tok_contenders, texts, 64, args.rounds)
    result["tokenizer"]["ratio"] = (result["tokenizer"]["graph_tokenize"]["sentences_per_s"]
                                    / result["tokenizer"]["hf_fast_tokenizer"]["sentences_per_s"])
    if args.served and label in args.served_models:
        from bench.served import bench_served

        result["served"] = bench_served(export_dir, texts[: args.served_texts], workdir=workdir)
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, label in zip(axes[0], models):
        thr = results["models"][label]["throughput"]
        batches = sorted(thr, key=int)
        for name in thr[batches[0]]:
            ax.plot([int(b) for b in batches], [thr[b][name]["sentences_per_s"] for b in batches], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("sentences / s")
        ax.set_title(f"{label} ({results['machine']['threads']} threads)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="default,mpnet-base", help="comma list: default, mpnet-base, or model folders")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--texts", type=int, default=256, help="texts per timed round (batch 1 uses a quarter)")
    p.add_argument("--base-texts", type=int, default=48, help="the same for the mpnet-base-sized model (8x the work)")
    p.add_argument("--base-batches", default="1,8,32", help="batch sizes for the mpnet-base-sized model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--quick", action="store_true", help="fewer texts and rounds (a smoke run)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-served", dest="served", action="store_false",
                   help="skip the served benchmark (a local tritonserver, HTTP and gRPC, concurrency 1/4/16)")
    p.add_argument("--served-models", default="all-MiniLM-L6-v2", help="comma list of models to serve (labels)")
    p.add_argument("--served-texts", type=int, default=384, help="texts per served measurement")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.base_batches = [int(b) for b in args.base_batches.split(",")]
    args.served_models = args.served_models.split(",")
    if args.quick:
        args.texts, args.base_texts, args.rounds, args.served_texts = 128, 16, 2, 96
    set_threads(args.threads)
    import onnxruntime
    import tensorflow as tf
    import torch

    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": socket.gethostname(), "cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                    "python": platform.python_version(), "tensorflow": tf.__version__, "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__},
        "settings": {"texts": args.texts, "rounds": args.rounds, "batches": args.batches},
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="packager-bench-") as tmp:
        work = Path(tmp)
        for label in args.models.split(","):
            if label == "default":
                from packager.source import resolve_model

                model_dir = resolve_model(None)[0]
                label = "all-MiniLM-L6-v2"
            elif label == "mpnet-base":
                import tiny_models

                from packager.source import resolve_model

                # all-mpnet-base-v2's shape, random weights, and BERT's uncased WordPiece vocabulary
                # (the one all-mpnet-base-v2's is built from, taken from the embedded default model), so
                # texts have realistic token counts.
                bert_vocab = (resolve_model(None)[0] / "vocab.txt").read_text(encoding="utf-8").splitlines()
                model_dir = tiny_models.make_mpnet(work / "mpnet-base", hidden=768, layers=12, heads=12,
                                                   intermediate=3072, max_position=514, max_seq_length=384,
                                                   wordpieces=bert_vocab)
                label = "mpnet-base-sized (random)"
            else:
                model_dir = Path(label)
                label = model_dir.name
            results["models"][label] = bench_model(label.split(" ")[0], model_dir, args, work)
            write(results, args)  # after each model: a long run that is stopped keeps what it measured
    return 0


def write(results: dict, args) -> None:
    """Write today's JSON and plot. Models measured earlier today and not in this run are kept
    (each model entry records its own date and commit), so ``--models`` can fill in one model."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{socket.gethostname()}"
    path = out_dir / f"{stem}.json"
    if path.is_file():
        earlier = json.loads(path.read_text()).get("models", {})
        results = dict(results, models={**results["models"],
                                        **{k: v for k, v in earlier.items() if k not in results["models"]}})
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / f"{stem}.png")
    print(f"wrote {out_dir / (stem + '.json')} and .png", flush=True)


if __name__ == "__main__":
    sys.exit(main())
