"""Clients that send raw strings to a live server (used by ``packager verify --url`` and the tests).

* Triton over HTTP/REST (KServe v2) and gRPC, with ``tritonclient``: each string input travels as a
  BYTES tensor of shape ``[batch, 1]``.
* TF-Serving over REST: ``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``.

Embedders take texts (and optionally a prompt name); rerankers take (query, document) pairs.

Example:
    >>> embed = embedder("http://127.0.0.1:8000", "all-minilm-l6-v2")       # doctest: +SKIP
    >>> embed(["hello", "world"]).shape
    (2, 384)
    >>> score = reranker("127.0.0.1:8001", "ms-marco")                     # doctest: +SKIP
    >>> score(["what is tf?"] * 2, ["TensorFlow is ...", "A cat."]).shape
    (2, 1)
"""
from __future__ import annotations

import functools
import json
import threading
import urllib.error
import urllib.request
from typing import Callable, Mapping, Sequence

import numpy as np

from . import DOCUMENT_KEY, INPUT_KEY, OUTPUT_KEY, PROMPT_KEY, QUERY_KEY, SCORES_KEY
from .errors import PackagerError

PROTOCOLS = ("http", "grpc", "tfserving")
Embed = Callable[[Sequence[str]], np.ndarray]
Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]
Infer = Callable[[Mapping[str, Sequence]], np.ndarray]


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


def _unreachable(what: str, url: str, exc: BaseException) -> ServerError:
    detail = getattr(exc, "message", None)
    detail = detail() if callable(detail) else (detail or str(exc) or type(exc).__name__)
    return ServerError(f"cannot reach a {what} server at {url}: {detail.strip().splitlines()[0][:200]} "
                       "(is it running, and do this port and protocol match it?)")


def _missing_model(what: str, url: str, model: str, available: Sequence[str]) -> ServerError:
    listed = ", ".join(available) if available else "none"
    return ServerError(f"the {what} server at {url} has no ready model {model!r} (ready models: {listed})")


def _chunked(send: Infer, max_batch: Callable[[], int], chunk: bool) -> Infer:
    """Split long inputs into requests of at most the model's ``max_batch_size`` (when ``chunk``)."""

    def infer(inputs: Mapping[str, Sequence]) -> np.ndarray:
        n = len(next(iter(inputs.values())))
        size = max_batch() if chunk else 0
        if size <= 0 or n <= size:
            return send(inputs)
        return np.concatenate([send({k: v[i:i + size] for k, v in inputs.items()}) for i in range(0, n, size)])

    return infer


def triton_infer(url: str, model: str, *, protocol: str = "http", output_key: str = OUTPUT_KEY, version: str = "",
                 timeout: float = 120.0, chunk: bool = True, probe: bool = True) -> Infer:
    """``infer({input name: strings}) -> output`` against a Triton model, over HTTP or gRPC.

    HTTP uses binary tensor data (any UTF-8 string travels unchanged); its client is not thread-safe
    (gevent), so each calling thread gets its own connection. With ``probe``, the server and the model
    are checked first, so a wrong URL, port, protocol or name is one clear error. With ``chunk``, inputs
    longer than the model's ``max_batch_size`` go as several requests.

    Raises:
        ServerError: unreachable server, unknown model, or a refused request (with the server's message).
    """
    from tritonclient.utils import InferenceServerException

    if protocol == "http":
        import tritonclient.http as tc
    elif protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        raise PackagerError(f"Triton speaks http or grpc, not {protocol!r}")
    what = f"Triton {'HTTP' if protocol == 'http' else 'gRPC'}"
    local = threading.local()
    shared = tc.InferenceServerClient(_host_port(url), channel_args=_grpc_channel_args()) if protocol == "grpc" else None

    def client():
        if shared is not None:
            return shared
        if getattr(local, "client", None) is None:
            local.client = tc.InferenceServerClient(_host_port(url), connection_timeout=timeout, network_timeout=timeout)
        return local.client

    if probe:
        kw = {"client_timeout": min(timeout, 10.0)} if protocol == "grpc" else {}
        try:
            live = client().is_server_live(**kw)
            ready = live and client().is_model_ready(model, model_version=version, **kw)
            index = []
            if not ready:
                found = client().get_model_repository_index()
                rows = found.models if protocol == "grpc" else found
                index = [(m.name if protocol == "grpc" else m["name"]) for m in rows
                         if (m.state if protocol == "grpc" else m.get("state")) == "READY"]
        except Exception as exc:  # noqa: BLE001 - socket, HTTP parser, gevent and gRPC errors all mean the same here
            raise _unreachable(what, url, exc) from None
        if not live:
            raise ServerError(f"the {what} server at {url} answers but is not live")
        if not ready:
            raise _missing_model(what, url, model, index)

    def send(inputs: Mapping[str, Sequence]) -> np.ndarray:
        tensors = []
        for name, values in inputs.items():
            t = tc.InferInput(name, [len(values), 1], "BYTES")
            if protocol == "http":
                t.set_data_from_numpy(_strings(values), binary_data=True)
            else:
                t.set_data_from_numpy(_strings(values))
            tensors.append(t)
        out = tc.InferRequestedOutput(output_key, binary_data=True) if protocol == "http" else tc.InferRequestedOutput(output_key)
        try:
            kw = {"client_timeout": timeout} if protocol == "grpc" else {}
            result = client().infer(model, tensors, model_version=version, outputs=[out], **kw)
        except InferenceServerException as exc:
            raise ServerError(f"{what} {url} model {model!r}: {exc.message()}") from exc
        except OSError as exc:
            raise _unreachable(what, url, exc) from None
        return result.as_numpy(output_key)

    @functools.lru_cache(maxsize=1)
    def max_batch() -> int:
        try:
            cfg = client().get_model_config(model, model_version=version)
        except InferenceServerException as exc:
            raise ServerError(f"{what} {url} model {model!r}: {exc.message()}") from exc
        return int(cfg.config.max_batch_size if protocol == "grpc" else cfg.get("max_batch_size", 0))

    return _chunked(send, max_batch, chunk)


def tfserving_infer(url: str, model: str, *, output_key: str = OUTPUT_KEY, version: int | None = None,
                    signature: str = "serving_default", timeout: float = 120.0, probe: bool = True) -> Infer:
    """``infer({input name: strings}) -> output`` over TF-Serving's REST API (row format)."""
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

    def infer(inputs: Mapping[str, Sequence]) -> np.ndarray:
        names = list(inputs)
        n = len(inputs[names[0]])
        rows = ([str(t) for t in inputs[names[0]]] if len(names) == 1
                else [{k: str(inputs[k][i]) for k in names} for i in range(n)])
        body = json.dumps({"signature_name": signature, "instances": rows}, ensure_ascii=False)
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
        out = [p[output_key] if isinstance(p, dict) else p for p in preds]
        return np.asarray(out, dtype=np.float32).reshape(n, -1)

    return infer


def guess_protocol(url: str) -> str:
    """``grpc://`` or a bare ``host:port`` is Triton gRPC; port 8501 is TF-Serving REST; else Triton HTTP."""
    if url.startswith("grpc://") or "://" not in url:
        return "grpc"
    host_port = _host_port(url).split("/")[0]
    if host_port.endswith(":8501"):
        return "tfserving"
    return "http"


def _infer(url: str, model: str, protocol: str | None, output_key: str, signature: str = "serving_default",
           **kwargs) -> Infer:
    if not model:
        raise PackagerError("a served model name is required with a server URL")
    protocol = protocol or guess_protocol(url)
    if protocol in ("http", "grpc"):
        return triton_infer(url, model, protocol=protocol, output_key=output_key, **kwargs)
    if protocol == "tfserving":
        return tfserving_infer(url, model, output_key=output_key, signature=signature, **kwargs)
    raise PackagerError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def embedder(url: str, model: str, *, protocol: str | None = None, prompt_name: str | None = None,
             input_key: str = INPUT_KEY, output_key: str = OUTPUT_KEY, **kwargs) -> Embed:
    """A function ``texts -> embeddings`` for a live server (what ``packager verify --url`` calls).

    Args:
        url: ``http://host:port`` (Triton HTTP or TF-Serving REST) or ``host:port`` / ``grpc://host:port``.
        model: the served model name.
        protocol: ``"http"`` (Triton), ``"grpc"`` (Triton) or ``"tfserving"``; guessed from ``url`` if None.
        prompt_name: one of the model's prompts (sent with every text); None: the default prompt.
        **kwargs: of :func:`triton_infer` / :func:`tfserving_infer` (timeout, version, chunk, probe).
    """
    signature = "with_prompt" if prompt_name is not None else "serving_default"
    infer = _infer(url, model, protocol, output_key, signature=signature, **kwargs)

    def embed(texts: Sequence[str | bytes]) -> np.ndarray:
        inputs = {input_key: list(texts)}
        if prompt_name is not None:
            inputs[PROMPT_KEY] = [prompt_name] * len(texts)
        return infer(inputs)

    return embed


def reranker(url: str, model: str, *, protocol: str | None = None, prompt_name: str | None = None,
             **kwargs) -> Score:
    """A function ``(queries, documents) -> scores [n, num_labels]`` for a live reranker."""
    signature = "with_prompt" if prompt_name is not None else "serving_default"
    infer = _infer(url, model, protocol, SCORES_KEY, signature=signature, **kwargs)

    def score(queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        if len(queries) != len(documents):
            raise PackagerError(f"{len(queries)} queries but {len(documents)} documents: send one query per document")
        inputs = {QUERY_KEY: list(queries), DOCUMENT_KEY: list(documents)}
        if prompt_name is not None:
            inputs[PROMPT_KEY] = [prompt_name] * len(queries)
        return np.asarray(infer(inputs), dtype=np.float32).reshape(len(queries), -1)

    return score


def triton_http(url: str, model: str, **kwargs) -> Embed:
    """An embedder over Triton HTTP (see :func:`embedder`)."""
    return embedder(url, model, protocol="http", **kwargs)


def _grpc_channel_args(max_backoff_ms: int = 2000) -> list[tuple]:
    """tritonclient's own gRPC channel defaults (message sizes, keepalive) plus a reconnect backoff capped
    at ``max_backoff_ms``. gRPC's default backoff grows to 120 s, so a client that saw its server go away
    could wait a minute or more after the server was back before trying again; capped, it reconnects
    within about 2 s (tests/test_load.py kills and restarts a server under load)."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keep = KeepAliveOptions()
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keep.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keep.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keep.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keep.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", min(250, max_backoff_ms)),
            ("grpc.min_reconnect_backoff_ms", min(250, max_backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", max_backoff_ms)]


def triton_grpc(url: str, model: str, **kwargs) -> Embed:
    """An embedder over Triton gRPC (see :func:`embedder`)."""
    return embedder(url, model, protocol="grpc", **kwargs)


def tfserving_rest(url: str, model: str, **kwargs) -> Embed:
    """An embedder over TF-Serving REST (see :func:`embedder`)."""
    return embedder(url, model, protocol="tfserving", **kwargs)
