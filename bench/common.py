"""Pieces every bench driver shares: the result file's header and path, op times from a traced
Session step, the sentence-transformers reference from a worker, a log file's tail, concurrent
client threads, and a projection's whole kernel for the one-kernel reference forward passes."""
from __future__ import annotations

import collections
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path


def header(script: str, argv=None, **extra) -> dict:
    """The fields every result file starts with: when, where, the command, the load."""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
            "command": f"bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
            "load_average_at_start": os.getloadavg(), **extra}


def result_path(out: str | Path, kind: str, tag: str = "") -> Path:
    """``OUT/<date>-<host>-<kind>[-tag].json`` (the folder is created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{dt.date.today().isoformat()}-{socket.gethostname()}-{kind}{'-' + tag if tag else ''}.json"


def write_result(result: dict, out: str | Path, kind: str, tag: str = "", path: Path | None = None) -> Path:
    """Adds the load at the end, writes the JSON and says where."""
    result["load_average_at_end"] = os.getloadavg()
    path = path or result_path(out, kind, tag)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def step_op_times(run_metadata, on_node=None) -> tuple[collections.Counter, collections.Counter, int, int]:
    """(microseconds by op type, executions by op type, node count, total microseconds) of one traced
    ``Session.run``; ``on_node(node, op, us)`` sees every node too."""
    by_op, count = collections.Counter(), collections.Counter()
    nodes = [n for d in run_metadata.step_stats.dev_stats for n in d.node_stats]
    total = 0
    for n in nodes:
        op = n.timeline_label.split("=", 1)[1].split("(")[0].strip() if "=" in n.timeline_label else n.node_name
        us = n.op_end_rel_micros - n.op_start_rel_micros
        by_op[op] += us
        count[op] += 1
        total += us
        if on_node is not None:
            on_node(n, op, us)
    return by_op, count, len(nodes), total


def st_reference(model_dir: Path, texts_path: Path, *, threads: int, workdir: Path, out: Path, echo=print):
    """sentence-transformers' embeddings of the texts in ``texts_path`` (its own worker, closed
    before any timing), as an array."""
    import numpy as np

    from bench.contenders import close_all, start_all

    st, errs = start_all([{"name": "st", "kind": "st", "python": sys.executable, "spec": {"model_dir": str(model_dir)}}],
                         threads=threads, logdir=workdir, timeout=600, echo=echo)
    if errs:
        raise RuntimeError(f"sentence-transformers failed to load: {errs}")
    try:
        st["st"].call(60, op="texts", name="t", path=str(texts_path))
        st["st"].call(1800, op="time", name="t", batch=32, n=len(json.loads(Path(texts_path).read_text())),
                      out=str(out))
    finally:
        close_all(st)
    return np.load(out)


def log_tail(path: Path, n: int = 3000) -> str:
    """The last ``n`` bytes of a log file as text ('' when it cannot be read)."""
    try:
        return Path(path).read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def run_threads(target, concurrency: int, start: threading.Barrier, join_timeout: float | None = None) -> float:
    """Runs ``target(i)`` in ``concurrency`` threads that wait on ``start``; seconds from the start
    until all have finished."""
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(join_timeout)
    return time.perf_counter() - t0


def rotated_calls(names: list[str], rounds: int, items: list):
    """``(item, order)`` for every item of every round, the contenders' order rotated by one per
    call: on a shared machine each contender meets the same load, and none always goes first."""
    k = 0
    for _ in range(rounds):
        for item in items:
            yield item, names[k % len(names):] + names[:k % len(names)]
            k += 1


_WHOLE: dict[int, tuple] = {}


def whole_projection(proj) -> tuple:
    """``(kernel, bias)`` of a ``packager.encoders.layers.Projection`` as ONE variable each (bias may be
    None), made once per projection, eagerly even when first asked for while a ``tf.function`` traces.

    The old forward passes that bench/levers.py and bench/encoder_variants.py keep as references ran one
    kernel per projection; ``Projection.kernel`` would concatenate the parts inside the traced graph,
    copying every weight on every call.
    """
    import tensorflow as tf

    key = id(proj)
    if key not in _WHOLE:
        with tf.init_scope():
            kernel = tf.Variable(proj.kernel, trainable=False)
            bias = None if proj.bias is None else tf.Variable(proj.bias, trainable=False)
        _WHOLE[key] = (proj, kernel, bias)  # the projection too, so its id is not reused
    return _WHOLE[key][1:]


def whole_project(x, proj):
    """``x @ kernel + bias`` with :func:`whole_projection`'s single kernel (MatMul + BiasAdd, as before parts)."""
    import tensorflow as tf

    kernel, bias = whole_projection(proj)
    y = tf.matmul(x, kernel)
    return y if bias is None else tf.nn.bias_add(y, bias)
