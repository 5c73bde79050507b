"""Load and faults against the real local tritonserver (loopback only, bounded in count and time).

* 16 concurrent clients for about a minute: zero failed requests; a sample of answers checked
  against sentence-transformers; p50/p99 written to the test run's temp folder (a record, not a
  threshold; ``bench/`` is where measurements live).
* SIGKILL the server in the middle of that load, restart it on the same ports: clients see errors
  only during the outage, the restarted server answers identically, and the repository on disk is
  unchanged.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from packager import verify as v
from packager.clients import ServerError, triton_grpc, triton_http
from packager.serve import TritonServer
from packager.targets import build_from_export

pytestmark = [pytest.mark.server, pytest.mark.slow]

CLIENTS = 16
LOAD_SECONDS = float(os.environ.get("PACKAGER_LOAD_SECONDS", "60"))
MAX_REQUESTS_PER_CLIENT = 5000
MODEL = "minilm"
RECOVERY_S = 30  # the longest a client may take to get an answer from a restarted server


@pytest.fixture(scope="module")
def texts():
    from bench.corpus import make_corpus

    return make_corpus(256, long_share=0.05, seed=7)


@pytest.fixture(scope="module")
def reference(default_model_dir, texts):
    emb = v.reference_embeddings(v.reference_model(default_model_dir), texts)
    return {t: e for t, e in zip(texts, emb)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, exports):
    out = tmp_path_factory.mktemp("load") / "model_repository"
    build_from_export(exports("default_model_dir"), target="triton",
                      output=out, name=MODEL, max_queue_delay_us=2000)
    return out


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


class Load:
    """``CLIENTS`` threads sending 1-4 texts per request until ``stop`` is set or the count is reached."""

    def __init__(self, srv: TritonServer, texts, reference, *, check_every: int = 7):
        self.srv, self.texts, self.reference, self.check_every = srv, texts, reference, check_every
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok: list[tuple[float, float, int]] = []   # (end time, latency, client)
        self.errors: list[tuple[float, str, int]] = []  # (time, message, client)
        self.wrong: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _client(self, i: int) -> None:
        rng = np.random.default_rng(i)
        make = triton_grpc if i % 2 else triton_http
        embed = make(self.srv.grpc_url if i % 2 else self.srv.http_url, MODEL)
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if self.stop.is_set():
                return
            batch = [self.texts[j] for j in rng.integers(0, len(self.texts), int(rng.integers(1, 5)))]
            t0 = time.monotonic()
            try:
                out = embed(batch)
            except (ServerError, Exception) as exc:  # noqa: BLE001 - every failure is recorded
                with self.lock:
                    self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:300], i))
                time.sleep(0.05)
                continue
            t1 = time.monotonic()
            with self.lock:
                self.ok.append((t1, t1 - t0, i))
            if n % self.check_every == 0:
                exp = np.stack([self.reference[t] for t in batch])
                if out.shape != exp.shape or np.abs(out - exp).max() > 1e-5:
                    with self.lock:
                        self.wrong.append(f"{batch[0][:60]!r}: {np.abs(out - exp).max() if out.shape == exp.shape else out.shape}")

    def answered_since(self, t: float) -> set[int]:
        """The clients that got an answer after ``t``."""
        with self.lock:
            return {c for end, _, c in self.ok if end > t}

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def record(out: Path, name: str, data: dict) -> Path:
    path = out / f"{dt.date.today().isoformat()}-{socket.gethostname()}-{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"load record: {path}")
    return path


def test_server_has_no_failed_request_when_16_clients_load_it_for_a_minute(repo, texts, reference, tmp_path):
    with TritonServer(repo, ready_timeout=300) as srv:
        load = Load(srv, texts, reference).start()
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline and not load.stop.is_set():
            time.sleep(0.5)
        load.join()
    assert not load.errors, load.errors[:5]
    assert not load.wrong, load.wrong[:5]
    assert len(load.ok) > CLIENTS  # every client got answers
    lat = np.array([l for _, l, _ in load.ok])
    record(tmp_path, "load", {
        "clients": CLIENTS, "seconds": LOAD_SECONDS, "requests": len(load.ok), "failed": len(load.errors),
        "requests_per_s": len(load.ok) / LOAD_SECONDS,
        "latency_p50_ms": float(np.percentile(lat, 50) * 1e3), "latency_p99_ms": float(np.percentile(lat, 99) * 1e3),
    })


def test_clients_see_errors_only_during_outage_when_server_is_killed_mid_load(repo, texts, reference):
    before_digest = tree_digest(repo)
    probe = texts[:5]
    srv = TritonServer(repo, ready_timeout=300).start()
    ports = dict(http_port=srv.http_port, grpc_port=srv.grpc_port, metrics_port=srv.metrics_port)
    before = triton_http(srv.http_url, MODEL)(probe)
    load = Load(srv, texts, reference).start()
    restarted = None
    try:
        time.sleep(8)
        killed_at = time.monotonic()
        os.killpg(srv.process.pid, signal.SIGKILL)  # the whole server: tritonserver and its stubs
        srv.process.wait(timeout=30)
        time.sleep(3)  # an outage clients must notice
        restarted = TritonServer(repo, ready_timeout=300, **ports).start()
        ready_at = time.monotonic()
        # The load goes on until every client got an answer from the restarted server (bounded: the
        # assertion below), then a few seconds more, so errors after recovery would be seen.
        while time.monotonic() - ready_at < RECOVERY_S and len(load.answered_since(ready_at)) < CLIENTS:
            time.sleep(0.25)
        time.sleep(5)
        load.join()
        after = triton_http(restarted.http_url, MODEL)(probe)
    finally:
        load.stop.set()
        srv.stop()
        if restarted is not None:
            restarted.stop()
    assert not load.wrong, load.wrong[:5]
    assert load.errors, "the outage went unnoticed: the kill did not take the server down"
    # Errors only during the outage as each client sees it: from the kill (a request in flight then
    # fails right at it) until that client's first answer from the restarted server. gRPC clients
    # may need a few seconds longer than HTTP ones: their channel reconnects with backoff.
    recovered = {}
    for t, _, client in sorted(load.ok):
        if t > ready_at:
            recovered.setdefault(client, t)
    assert set(recovered) == set(range(CLIENTS)), f"clients that never recovered: {set(range(CLIENTS)) - set(recovered)}"
    outside = [(t - killed_at, m) for t, m, c in load.errors if not (killed_at - 0.5 <= t <= recovered[c])]
    assert not outside, outside[:5]
    assert max(recovered.values()) - ready_at < RECOVERY_S, f"a client took over {RECOVERY_S} s to answer after the restart"
    assert np.array_equal(before, after), np.abs(before - after).max()
    assert tree_digest(repo) == before_digest
