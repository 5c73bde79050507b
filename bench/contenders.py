"""The parent side of ``bench/worker.py``: start contenders as long-lived processes, drive them, stop them.

Every call has a deadline; a worker that misses it, dies or answers garbage is killed (its whole
process group) and reported with the tail of its log, and the run goes on without it. ``close`` asks
politely (``quit``), then terminates, then kills.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import log_tail

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "worker.py"


class WorkerError(RuntimeError):
    pass


def worker_env(threads: int, extra: dict | None = None) -> dict:
    """The same thread settings for every runtime (each also sets its own API knob in worker.py)."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[key] = str(threads)
    env.update({
        "BENCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_ENABLE_ONEDNN_OPTS": env.get("TF_ENABLE_ONEDNN_OPTS", "1"), "TOKENIZERS_PARALLELISM": "true",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("PYTHONPATH", None)  # a peer venv must not pick up the shared venv's packages
    env.update(extra or {})
    return env


class Worker:
    """One contender process.

    Args:
        name: the contender's label (``graph``, ``openvino-f32`` ...).
        kind: a key of ``bench.worker.KINDS``.
        python: the interpreter of the venv it needs.
        spec: passed to the kind's factory.
        log: where the worker's stderr goes.
    """

    def __init__(self, name: str, kind: str, python: str | Path, spec: dict, *, threads: int, log: Path,
                 env: dict | None = None):
        self.name, self.kind, self.log = name, kind, Path(log)
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(python), str(WORKER), kind, json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._logf, env=worker_env(threads, env), cwd=str(ROOT), start_new_session=True)
        self._buf = b""
        self.info: dict = {}

    def ready(self, timeout: float) -> dict:
        msg = self._read(timeout)
        if not msg.get("ok"):
            self.kill()
            raise WorkerError(f"{self.name}: failed to load: {msg.get('error')}\n{msg.get('traceback', '')[-1500:]}")
        self.info = msg.get("info", {})
        return self.info

    def call(self, timeout: float, **request) -> dict:
        if self.proc.poll() is not None:
            raise WorkerError(f"{self.name}: worker exited ({self.proc.returncode}); log tail:\n{self.log_tail()}")
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.kill()
            raise WorkerError(f"{self.name}: cannot send ({exc}); log tail:\n{self.log_tail()}") from exc
        msg = self._read(timeout)
        if not msg.get("ok"):
            raise WorkerError(f"{self.name}: {request.get('op')} failed: {msg.get('error')}\n{msg.get('traceback', '')[-1500:]}")
        return msg

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s (killed); log tail:\n{self.log_tail()}")
                if not sel.select(min(left, 1.0)):
                    if self.proc.poll() is not None:
                        break
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                self._buf += chunk
        if b"\n" not in self._buf:
            self.kill()
            raise WorkerError(f"{self.name}: worker exited ({self.proc.poll()}); log tail:\n{self.log_tail()}")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            self.kill()
            raise WorkerError(f"{self.name}: not a protocol line: {line[:200]!r}") from exc

    def log_tail(self, n: int = 2500) -> str:
        return log_tail(self.log, n)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def close(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                self.call(timeout, op="quit")
                self.proc.wait(timeout=timeout)
            except (WorkerError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._logf.close()


def start_all(defs: list[dict], *, threads: int, logdir: Path, timeout: float, echo=print) -> tuple[dict, dict]:
    """Start every worker at once (their loading overlaps), then wait for each.

    ``defs``: dicts with ``name``, ``kind``, ``python``, ``spec`` (and optional ``env``).
    Returns ``(workers, errors)``: name -> Worker for those that loaded, name -> reason for the rest.
    """
    workers, errors = {}, {}
    started = {}
    for d in defs:
        if d.get("python") is None:
            errors[d["name"]] = d.get("why", "no python for this contender")
            continue
        started[d["name"]] = Worker(d["name"], d["kind"], d["python"], d["spec"], threads=threads,
                                    log=logdir / f"worker-{d['name']}.log", env=d.get("env"))
    for name, w in started.items():
        try:
            info = w.ready(timeout)
            workers[name] = w
            echo(f"   {name:<16} ready in {info.get('load_s', 0):5.1f} s  {_short(info)}")
        except WorkerError as exc:
            errors[name] = str(exc)
            echo(f"   {name:<16} FAILED: {str(exc).splitlines()[0][:300]}")
            w.close()
    return workers, errors


def _short(info: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in info.items() if k not in ("load_s", "python", "ov_config"))


def close_all(workers: dict) -> None:
    for w in workers.values():
        w.close()


if __name__ == "__main__":
    sys.exit("bench/contenders.py is a library; run bench/run.py")
