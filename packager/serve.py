"""Start and stop the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel, for a local repository.

That binary (Triton 2.51) has only the Python backend, runs on CPU, and *hangs* instead of exiting when
its environment is wrong. So this module always builds the environment itself, binds to 127.0.0.1 on
free (or given) ports, waits for ``/v2/health/ready`` with a timeout, and stops the server by its process
group (the Python backend stubs are children of the server).

Example:
    >>> with TritonServer("model_repository") as srv:      # doctest: +SKIP
    ...     print(srv.http_url, srv.grpc_url)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import TargetError
from .servers import default_image
from .settings import work_dir



@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled server lives and the environment it needs.

    Attributes:
        binary: the ``tritonserver`` executable.
        backend_dir: a folder with ``python/`` (backend library, utils, stub for this Python).
        env: the environment to run it with (LD_LIBRARY_PATH, PATH with this interpreter first).
    """

    binary: Path
    backend_dir: Path
    env: dict


def _pytriton_root() -> Path:
    try:
        import pytriton  # noqa: F401  (only located, the package itself is not used)
    except ImportError as exc:  # pragma: no cover - the venv pins it
        raise TargetError("the local Triton needs nvidia-pytriton: pip install nvidia-pytriton==0.7.0") from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def find_triton() -> TritonInstall:
    """Locate the bundled server and prepare a backend folder for this Python (cached, written atomically).

    Returns:
        The binary, the backend folder and the environment to run it with.

    Raises:
        TargetError: when the wheel, its stub for this Python, or the server binary is missing.
    """
    root = _pytriton_root()
    binary = root / "bin" / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    lib = root / "backends" / "python" / "libtriton_python.so"
    utils = root / "backends" / "python" / "triton_python_backend_utils.py"
    for need in (binary, stub, lib, utils):
        if not need.is_file():
            raise TargetError(f"nvidia-pytriton is incomplete: {need} is missing")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o755)
    # The backend folder must hold the library, the utils and the stub side by side; the wheel keeps the
    # stubs elsewhere, so assemble a copy once per (wheel, Python) and reuse it.
    import pytriton

    version = getattr(pytriton, "__version__", "unknown")
    backend_dir = work_dir("triton-backends") / f"pytriton-{version}-py{pyver}"
    if not (backend_dir / "python" / "triton_python_backend_stub").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=backend_dir.parent))
        try:
            (tmp / "python").mkdir()
            for src in (lib, utils, stub):
                shutil.copy2(src, tmp / "python" / src.name)
            (tmp / "python" / "triton_python_backend_stub").chmod(0o755)
            try:
                os.rename(tmp, backend_dir)
            except OSError:  # another process won the race; theirs is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    libdirs = [str(root.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    # The Python backend starts `python3` from PATH to find its packages: this interpreter's venv first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return TritonInstall(binary, backend_dir, env)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the server binds it right after)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_if_free(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when nothing listens there, else a free port (Triton's 8000/8001/8002 when possible)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind((host, preferred))
        except OSError:
            return free_port(host)
        return preferred


def check_repository(repo: str | Path) -> list[str]:
    """Refuse repositories this binary cannot serve, with a message that says what to do.

    Returns:
        The model names found (folders with a ``config.pbtxt``).

    Raises:
        TargetError: no model, or a model for a backend other than ``python``.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = Path(repo)
    if not repo.is_dir():
        raise TargetError(f"model repository {repo} does not exist; build one with: packager build --target triton")
    names = []
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        cfg = model_config_pb2.ModelConfig()
        try:
            text_format.Parse(cfg_path.read_text(encoding="utf-8"), cfg)
        except text_format.ParseError as exc:
            raise TargetError(f"{cfg_path} does not parse as a Triton model config: {exc}") from exc
        backend = cfg.backend or cfg.platform
        if backend != "python":
            raise TargetError(
                f"model {cfg_path.parent.name!r} uses {backend!r}, but the tritonserver bundled in nvidia-pytriton "
                "has only the Python backend. Rebuild it with `packager build --target triton --backend python`, "
                f"or run this repository in the docker stack ({default_image('triton-tensorflow')} for "
                "the TensorFlow backend; see docs/triton.md)."
            )
        names.append(cfg_path.parent.name)
    if not names:
        raise TargetError(f"no model (no */config.pbtxt) in {repo}")
    strays = sorted(p.name for p in repo.iterdir() if p.is_dir() and not (p / "config.pbtxt").is_file())
    if strays:
        # Triton tries to load every folder of the repository and refuses to start on one it cannot.
        raise TargetError(f"{repo} holds folders that are not models (no config.pbtxt): {', '.join(strays)}; "
                          "move them out of the repository")
    return names


class TritonServer:
    """A local tritonserver for one repository; a context manager that starts it and always stops it.

    Args:
        repo: the model repository (python-backend models only).
        http_port, grpc_port, metrics_port: ports to bind on 127.0.0.1; ``None`` picks free ones.
        host: the address to bind; loopback unless told otherwise.
        ready_timeout: seconds to wait for ``/v2/health/ready`` before giving up (and killing it).
        log_file: where the server log goes; a temp file by default (``self.log_file``).
        extra_args: more ``tritonserver`` flags.

    Attributes:
        http_url: ``http://127.0.0.1:PORT`` (KServe v2 REST).
        grpc_url: ``127.0.0.1:PORT`` (the form tritonclient.grpc takes).
        metrics_url: ``http://127.0.0.1:PORT/metrics``.
    """

    def __init__(
        self,
        repo: str | Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 180.0,
        log_file: str | Path | None = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
    ):
        self.repo = Path(repo).resolve()
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.ready_timeout = ready_timeout
        self._own_log = log_file is None
        self.log_file = Path(log_file) if log_file else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self.models: list[str] = []
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, install: TritonInstall) -> list[str]:
        return [
            str(install.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={install.backend_dir}",
            "--model-control-mode=none",
            "--disable-auto-complete-config",  # our configs are complete: the server must not invent fields
            "--exit-on-error=true",
            "--exit-timeout-secs=10",  # stop() escalates to SIGKILL after 20 s anyway
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self) -> "TritonServer":
        """Start the server and block until it is ready.

        Raises:
            TargetError: the repository cannot be served here, or the server exited or was not ready in time
                (the message carries the end of its log).
        """
        self.models = check_repository(self.repo)
        install = find_triton()
        log = open(self.log_file, "wb")
        try:
            self.process = subprocess.Popen(
                self.command(install), env=install.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,  # own process group: stubs die with it
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise TargetError(f"tritonserver exited with code {code} before it was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise TargetError(f"tritonserver was not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the server: SIGTERM to its process group, then SIGKILL after ``timeout`` seconds.

        Returns:
            The server's exit code (``None`` if it was never started).
        """
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Stubs left behind by a server that died first still belong to its group.
        _signal_group(proc.pid, signal.SIGKILL)
        return proc.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_log and exc[0] is None:
            self.log_file.unlink(missing_ok=True)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the server when the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def served_export(repo: str | Path, model: str) -> dict:
    """What a served model was built from (``packager-target.json``'s ``export``), or {} if unknown."""
    import json

    try:
        return dict(json.loads((Path(repo) / model / "packager-target.json").read_text(encoding="utf-8"))["export"])
    except (OSError, KeyError, ValueError, TypeError):
        return {}


def reference_source(repo: str | Path, model: str) -> str | None:
    """The sentence-transformers model a served model was built from, if known."""
    return served_export(repo, model).get("source")


def check_parity(srv: "TritonServer", *, corpus=None, echo=print) -> bool:
    """Send the corpus to every model of a running server over HTTP and gRPC; compare with sentence-transformers.

    Returns:
        True when every model passes the parity thresholds on both protocols.
    """
    from . import verify as v
    from .clients import embedder, reranker
    from .source import DEFAULT_MODEL_NAME, resolve_model

    corpus_texts = v.load_corpus(corpus)
    ok = True
    for model in srv.models:
        built = served_export(srv.repo, model)
        source = built.get("source")
        model_dir = resolve_model(None if source == DEFAULT_MODEL_NAME else source)[0]
        reference = v.reference_model(model_dir, truncate_dim=built.get("truncate_dim"))
        make, texts = (reranker, v.rerank_pairs(corpus_texts)) if v.is_reranker(reference) else (embedder, corpus_texts)
        for proto, url, protocol in (("HTTP", srv.http_url, "http"), ("gRPC", srv.grpc_url, "grpc")):
            # the clients split batches to max_batch_size; a bf16 export is held to the reduced-precision thresholds
            report = v.check(texts, reference, make(url, model, protocol=protocol), None,
                             precision=built.get("precision", "fp32"))
            echo(f"{model} over {proto} vs sentence-transformers ({source or 'default model'}):")
            echo(report.render())
            ok = ok and report.ok
    return ok


def serve_forever(repository: str | Path = "model_repository", *, http_port: int | None = None,
                  grpc_port: int | None = None, metrics_port: int | None = None, check: bool = False,
                  corpus=None, ready_timeout: float = 180.0, echo=print) -> int:
    """Run a local tritonserver in the foreground until Ctrl-C or SIGTERM (what ``packager serve`` calls).

    Args:
        repository: the model repository (python-backend models).
        http_port, grpc_port, metrics_port: ports on 127.0.0.1; when ``None``, 8000/8001/8002 if free, else
            free ones.
        check: start, send the corpus over HTTP and gRPC, print parity against sentence-transformers, stop.
        corpus: the corpus for ``check`` (default: the shipped tricky corpus).
        ready_timeout: seconds to wait for readiness.
        echo: where the endpoint lines go.

    Returns:
        0 after a clean stop (and, with ``check``, parity), 1 on a parity failure, else the server's exit code.
    """
    # Triton's usual ports when they are free, so the documented URLs work; else free ones (printed below).
    srv = TritonServer(repository, http_port=http_port or port_if_free(8000), grpc_port=grpc_port or port_if_free(8001),
                       metrics_port=metrics_port or port_if_free(8002), ready_timeout=ready_timeout, log_file=None)
    stopping = {"flag": False}

    def _on_signal(signum, _frame):
        stopping["flag"] = True
        if check:  # a check runs in this thread: interrupt it
            raise KeyboardInterrupt

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        echo(f"starting tritonserver on {Path(repository)} ...")
        srv.start()
        echo(f"tritonserver ready; models: {', '.join(srv.models)}")
        echo(f"  HTTP/REST : {srv.http_url}   (e.g. curl {srv.http_url}/v2/models/{srv.models[0]})")
        echo(f"  gRPC      : {srv.grpc_url}")
        echo(f"  metrics   : {srv.metrics_url}")
        echo(f"  log       : {srv.log_file}")
        if check:
            ok = check_parity(srv, corpus=corpus, echo=echo)
            srv.stop()
            echo("tritonserver stopped.")
            return 0 if ok else 1
        echo("Ctrl-C to stop.")
        while not stopping["flag"] and srv.alive():
            time.sleep(0.2)
        died = not stopping["flag"]
        code = srv.stop()
        if died:
            echo(f"tritonserver exited on its own (code {code}):\n{srv.log_tail()}")
            return code or 1
        echo("tritonserver stopped.")
        return 0
    finally:
        srv.stop()
        for s, h in old.items():
            signal.signal(s, h)
