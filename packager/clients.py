"""Clients that send raw strings to a live server and return embeddings (used by ``packager verify --url``).

* Triton over HTTP/REST (KServe v2) and gRPC, with ``tritonclient``: the strings travel as a BYTES
  tensor of shape ``[batch, 1]``.
* TF-Serving over REST: ``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``.

Example:
    >>> embed = embedder("http://127.0.0.1:8000", "all-minilm-l6-v2")       # doctest: +SKIP
    >>> embed(["hello", "world"]).shape
    (2, 384)
"""
from __future__ import annotations

import functools
import json
import threading
import urllib.error
import urllib.request
from typing import Callable, Sequence

import numpy as np

from . import INPUT_KEY, OUTPUT_KEY
from .errors import PackagerError

PROTOCOLS = ("http", "grpc", "tfserving")
Embed = Callable[[Sequence[str]], np.ndarray]


class ServerError(PackagerError):
    """A live server refused a request or could not be reached (the message carries its answer)."""


def _strings(texts: Sequence[str | bytes]) -> np.ndarray:
    arr = np.empty((len(texts), 1), dtype=object)
    for i, t in enumerate(texts):
        arr[i, 0] = t.encode("utf-8") if isinstance(t, str) else bytes(t)
    return arr


def _host_port(url: str) -> str:
    """``tritonclient`` wants ``host:port`` without a scheme."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def _chunked(send: Embed, max_batch: Callable[[], int], chunk: bool) -> Embed:
    """Split a long list into requests of at most the model's ``max_batch_size`` (when ``chunk``)."""

    def embed(texts: Sequence[str | bytes]) -> np.ndarray:
        n = max_batch() if chunk else 0
        if n <= 0 or len(texts) <= n:
            return send(texts)
        return np.concatenate([send(texts[i:i + n]) for i in range(0, len(texts), n)])

    return embed


def _unreachable(what: str, url: str, exc: BaseException) -> ServerError:
    detail = getattr(exc, "message", None)
    detail = detail() if callable(detail) else (detail or str(exc) or type(exc).__name__)
    return ServerError(f"cannot reach a {what} server at {url}: {detail.strip().splitlines()[0][:200]} "
                       "(is it running, and do this port and protocol match it?)")


def _missing_model(what: str, url: str, model: str, available: Sequence[str]) -> ServerError:
    listed = ", ".join(available) if available else "none"
    return ServerError(f"the {what} server at {url} has no ready model {model!r} (ready models: {listed})")


def triton_http(url: str, model: str, *, version: str = "", input_key: str = INPUT_KEY,
                output_key: str = OUTPUT_KEY, timeout: float = 120.0, chunk: bool = True, probe: bool = True) -> Embed:
    """Embed over Triton's HTTP/REST API (binary tensor data, so any UTF-8 string travels unchanged).

    The returned function may be called from several threads at once: tritonclient's HTTP client is not
    thread-safe (it is built on gevent), so each thread gets its own connection. With ``chunk``, a list
    longer than the model's ``max_batch_size`` is sent as several requests. With ``probe``, the server
    and the model are checked first, so a wrong URL, port, protocol or name is one clear error.

    Raises:
        ServerError: unreachable server, unknown model, or a refused request (with the server's message).
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    local = threading.local()

    def client() -> "httpclient.InferenceServerClient":
        if getattr(local, "client", None) is None:
            local.client = httpclient.InferenceServerClient(_host_port(url), connection_timeout=timeout,
                                                            network_timeout=timeout)
        return local.client

    if probe:
        try:
            live = client().is_server_live()
            ready = live and client().is_model_ready(model, model_version=version)
            index = [] if ready else [m["name"] for m in client().get_model_repository_index()
                                      if m.get("state") == "READY"]
        except InferenceServerException as exc:
            raise _unreachable("Triton HTTP", url, exc) from None
        except Exception as exc:  # noqa: BLE001 - socket, HTTP parser and gevent errors all mean the same here
            raise _unreachable("Triton HTTP", url, exc) from None
        if not live:
            raise ServerError(f"the Triton HTTP server at {url} answers but is not live")
        if not ready:
            raise _missing_model("Triton HTTP", url, model, index)

    def embed(texts: Sequence[str | bytes]) -> np.ndarray:
        inp = httpclient.InferInput(input_key, [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(_strings(texts), binary_data=True)
        out = httpclient.InferRequestedOutput(output_key, binary_data=True)
        try:
            result = client().infer(model, [inp], model_version=version, outputs=[out])
        except InferenceServerException as exc:
            raise ServerError(f"Triton HTTP {url} model {model!r}: {exc.message()}") from exc
        except OSError as exc:
            raise _unreachable("Triton HTTP", url, exc) from None
        return result.as_numpy(output_key)

    @functools.lru_cache(maxsize=1)
    def max_batch() -> int:
        try:
            return int(client().get_model_config(model, model_version=version).get("max_batch_size", 0))
        except InferenceServerException as exc:
            raise ServerError(f"Triton HTTP {url} model {model!r}: {exc.message()}") from exc

    return _chunked(embed, max_batch, chunk)


def triton_grpc(url: str, model: str, *, version: str = "", input_key: str = INPUT_KEY,
                output_key: str = OUTPUT_KEY, timeout: float = 120.0, chunk: bool = True, probe: bool = True) -> Embed:
    """Embed over Triton's gRPC API (``chunk`` and ``probe``: as :func:`triton_http`)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(_host_port(url))
    if probe:
        try:
            live = client.is_server_live(client_timeout=min(timeout, 10.0))
            ready = live and client.is_model_ready(model, model_version=version, client_timeout=min(timeout, 10.0))
            index = [] if ready else [m.name for m in client.get_model_repository_index().models if m.state == "READY"]
        except InferenceServerException as exc:
            raise _unreachable("Triton gRPC", url, exc) from None
        if not live:
            raise ServerError(f"the Triton gRPC server at {url} answers but is not live")
        if not ready:
            raise _missing_model("Triton gRPC", url, model, index)

    def embed(texts: Sequence[str | bytes]) -> np.ndarray:
        inp = grpcclient.InferInput(input_key, [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(_strings(texts))
        out = grpcclient.InferRequestedOutput(output_key)
        try:
            result = client.infer(model, [inp], model_version=version, outputs=[out], client_timeout=timeout)
        except InferenceServerException as exc:
            raise ServerError(f"Triton gRPC {url} model {model!r}: {exc.message()}") from exc
        return result.as_numpy(output_key)

    @functools.lru_cache(maxsize=1)
    def max_batch() -> int:
        try:
            return int(client.get_model_config(model, model_version=version).config.max_batch_size)
        except InferenceServerException as exc:
            raise ServerError(f"Triton gRPC {url} model {model!r}: {exc.message()}") from exc

    return _chunked(embed, max_batch, chunk)


def tfserving_rest(url: str, model: str, *, version: int | None = None, output_key: str = OUTPUT_KEY,
                   signature: str = "serving_default", timeout: float = 120.0, probe: bool = True) -> Embed:
    """Embed over TF-Serving's REST API (row format: ``{"instances": ["text", ...]}``)."""
    base = url.rstrip("/")
    model_path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version else "")

    if probe:
        try:
            with urllib.request.urlopen(base + model_path, timeout=min(timeout, 10.0)) as resp:
                json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise _missing_model("TF-Serving REST", url, model, []) from None
            raise ServerError(f"TF-Serving {url} model {model!r}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _unreachable("TF-Serving REST", url, getattr(exc, "reason", exc)) from None

    def embed(texts: Sequence[str]) -> np.ndarray:
        body = json.dumps({"signature_name": signature, "instances": [str(t) for t in texts]}, ensure_ascii=False)
        req = urllib.request.Request(base + model_path + ":predict", data=body.encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise ServerError(f"TF-Serving {url} model {model!r}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc
        except urllib.error.URLError as exc:
            raise ServerError(f"TF-Serving {url} cannot be reached: {exc.reason}") from exc
        preds = payload["predictions"]
        # With one output the rows are the vectors; with several, each row is {output: vector}.
        rows = [p[output_key] if isinstance(p, dict) else p for p in preds]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)

    return embed


def guess_protocol(url: str) -> str:
    """``grpc://`` or a bare ``host:port`` is Triton gRPC; port 8501 is TF-Serving REST; else Triton HTTP."""
    if url.startswith("grpc://") or "://" not in url:
        return "grpc"
    host_port = _host_port(url).split("/")[0]
    if host_port.endswith(":8501"):
        return "tfserving"
    return "http"


def embedder(url: str, model: str, *, protocol: str | None = None, **kwargs) -> Embed:
    """A function ``texts -> embeddings`` for a live server (what ``packager verify --url`` calls).

    Args:
        url: ``http://host:port`` (Triton HTTP or TF-Serving REST) or ``host:port`` / ``grpc://host:port``.
        model: the served model name.
        protocol: ``"http"`` (Triton), ``"grpc"`` (Triton) or ``"tfserving"``; guessed from ``url`` if None.
    """
    if not model:
        raise PackagerError("a served model name is required with a server URL")
    protocol = protocol or guess_protocol(url)
    if protocol == "http":
        return triton_http(url, model, **kwargs)
    if protocol == "grpc":
        return triton_grpc(url, model, **kwargs)
    if protocol == "tfserving":
        return tfserving_rest(url, model, **kwargs)
    raise PackagerError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
