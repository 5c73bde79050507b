"""A Triton client written straight against ``tritonclient`` (not ``packager.clients``), for the
container tests: what a user's own code would send, and the parity assertion they share."""
from __future__ import annotations

import numpy as np


def triton_embed(url: str, model: str, texts: list[str], protocol: str, batch: int = 32) -> np.ndarray:
    """``sentence_embedding`` of ``texts`` from ``model`` at ``url`` (``host:port``), ``batch`` per request."""
    if protocol == "http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client
    c = client.InferenceServerClient(url)
    out = []
    try:
        for i in range(0, len(texts), batch):
            chunk = texts[i:i + batch]
            inp = client.InferInput("input_sequence", [len(chunk), 1], "BYTES")
            inp.set_data_from_numpy(np.array([t.encode("utf-8") for t in chunk], dtype=object).reshape(-1, 1))
            res = c.infer(model, [inp], outputs=[client.InferRequestedOutput("sentence_embedding")])
            out.append(res.as_numpy("sentence_embedding"))
    finally:
        c.close()
    return np.concatenate(out)


def assert_parity(texts: list[str], expected: np.ndarray, got: np.ndarray) -> None:
    """``got`` matches sentence-transformers' ``expected`` (``packager.verify.compare``'s verdict)."""
    from packager.verify import compare

    report = compare(texts, expected, got)
    print(report.render())
    assert report.ok, report.render()
