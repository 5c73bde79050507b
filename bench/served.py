"""Served throughput: the exported graph behind a real local tritonserver, against in-process.

Called by ``bench/run.py`` (``--served``, on by default in ``make bench``); it can also run alone
on an existing export::

    .venv/bin/python bench/served.py EXPORT_DIR [--texts 512] [--concurrency 1,4,16]

What is measured: ``C`` client threads (C = 1, 4, 16), each sending requests of ``request_batch``
sentences (default 1: online traffic, the case Triton's dynamic batcher exists for) back to back until
the shared corpus is done (fixed work), over HTTP and over gRPC (tritonclient). Clients and server share the machine, as a
sidecar would. The comparator is the same graph called in-process at batch
``min(C * request_batch, max_batch_size)``: the largest batch the dynamic batcher could form from C
waiting requests, so the ratio shows what the server (transport, queueing, the python-backend stub)
costs for the same work. Triton's own statistics give the batch size it actually formed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONCURRENCY = (1, 4, 16)
PROTOCOLS = ("http", "grpc")


def _requests(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i:i + size] for i in range(0, len(texts), size)]


def _in_process(export_dir: Path, texts: list[str], batch: int) -> float:
    """Sentences/s of the in-process graph over all ``texts`` at ``batch`` (after one warm-up call)."""
    from packager.graph import load
    from packager.verify import graph_functions

    embed, _ = graph_functions(load(export_dir))
    embed(texts[:batch])
    t0 = time.perf_counter()
    for b in _requests(texts, batch):
        embed(b)
    return len(texts) / (time.perf_counter() - t0)


def _load(embed, texts: list[str], concurrency: int, request_batch: int) -> dict:
    """``concurrency`` threads share all ``texts`` (``request_batch`` strings per request, back to back).

    Fixed work, not fixed time: every run embeds exactly the same texts, so throughput is comparable
    with the in-process pass over the same list.
    """
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    start = threading.Barrier(concurrency + 1)

    def client(i: int) -> None:
        reqs = _requests(texts[i::concurrency], request_batch)
        embed(reqs[0])  # connect + warm
        start.wait()
        for r in reqs:
            s = time.perf_counter()
            try:
                embed(r)
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                errors.append(str(exc)[:200])
                continue
            lat[i].append(time.perf_counter() - s)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = [x for per in lat for x in per]
    return {
        "sentences_per_s": (len(texts) - len(errors) * request_batch) / elapsed,
        "requests": len(flat),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "latency_p50_ms": float(np.percentile(flat, 50) * 1e3) if flat else None,
        "latency_p99_ms": float(np.percentile(flat, 99) * 1e3) if flat else None,
    }


def _server_batches(srv, model: str) -> tuple[int, int]:
    """(inferences, executions) so far, from Triton's statistics extension."""
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(srv.http_url.split("://", 1)[1]).get_inference_statistics(model)
    s = stats["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def bench_served(export_dir: Path, texts: list[str], *, workdir: Path,
                 concurrency=CONCURRENCY, protocols=PROTOCOLS, request_batch: int = 1,
                 max_batch_size: int = 64, max_queue_delay_us: int = 1000, echo=print) -> dict:
    """Serve ``export_dir`` from a fresh Triton repository and load it; see the module docstring."""
    from packager.clients import triton_grpc, triton_http
    from packager.serve import TritonServer
    from packager.targets import build_from_export
    from packager.verify import graph_functions

    # In-process first, alone on the machine (the server is not running yet).
    reference = {}
    for c in concurrency:
        b = min(c * request_batch, max_batch_size)
        if b not in reference:
            reference[b] = _in_process(export_dir, texts, b)
            echo(f"   in-process batch {b:>3}: {reference[b]:8.1f}/s")
    repo = Path(tempfile.mkdtemp(prefix="served-repo-", dir=workdir))
    model_dir = build_from_export(export_dir, target="triton", output=repo, name="bench", force=True,
                                  max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us)
    config = {"backend": "python", "max_batch_size": max_batch_size, "max_queue_delay_us": max_queue_delay_us,
              "request_batch": request_batch, "texts": len(texts)}
    rows = []
    with TritonServer(repo) as srv:
        clients = {"http": triton_http(srv.http_url, model_dir.name), "grpc": triton_grpc(srv.grpc_url, model_dir.name)}
        from packager.graph import load

        want, _ = graph_functions(load(export_dir))
        sample = texts[:8]
        for proto in protocols:  # parity before timing: a fast wrong answer is not a result
            diff = float(np.abs(clients[proto](sample) - want(sample)).max())
            if diff > 1e-4:
                raise SystemExit(f"served {proto} embeddings differ from in-process by {diff}")
        for proto, c in itertools.product(protocols, concurrency):
            inf0, exe0 = _server_batches(srv, model_dir.name)
            row = _load(clients[proto], texts, c, request_batch)
            inf1, exe1 = _server_batches(srv, model_dir.name)
            b = min(c * request_batch, max_batch_size)
            row.update(protocol=proto, concurrency=c, in_process_batch=b, in_process_per_s=reference[b],
                       ratio_to_in_process=row["sentences_per_s"] / reference[b],
                       mean_server_batch=(inf1 - inf0) / max(exe1 - exe0, 1))
            rows.append(row)
            echo(f"   served {proto:4} c={c:>2}: {row['sentences_per_s']:8.1f}/s  p50 {row['latency_p50_ms'] or 0:7.1f} ms  "
                 f"p99 {row['latency_p99_ms'] or 0:7.1f} ms  batch {row['mean_server_batch']:.1f}  "
                 f"{row['ratio_to_in_process']:.2f}x in-process  errors {row['errors']}")
    return {"config": config, "in_process": {str(k): v for k, v in reference.items()}, "runs": rows}


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from bench.corpus import make_corpus

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", type=Path)
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    p.add_argument("--request-batch", type=int, default=1)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--out", type=Path, help="write the JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="packager-served-") as tmp:
        result = bench_served(args.export_dir, make_corpus(args.texts, seed=1), workdir=Path(tmp),
                              concurrency=[int(c) for c in args.concurrency.split(",")], request_batch=args.request_batch)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
