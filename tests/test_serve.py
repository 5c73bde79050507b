"""A real tritonserver (the one bundled in nvidia-pytriton) serving python-backend repositories built by
packager: metadata, parity with sentence-transformers over HTTP and gRPC at batch sizes 1..64,
dynamic batching under concurrent load, and bad requests that get clear errors without hurting the
server. One server start serves both the default model and a tiny model (the machine has 2 cores)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from packager import verify as v
from packager.clients import ServerError, embedder, triton_grpc, triton_http
from packager.errors import TargetError
from packager.serve import TritonServer, check_repository
from packager.targets import build_from_export

pytestmark = pytest.mark.server

MODELS = {"minilm": "default_model_dir", "tiny": "tiny_bert"}
BATCH_SIZES = [1, 2, 3, 5, 8, 13, 21, 34, 64]


@pytest.fixture(scope="module")
def model_dirs(request) -> dict[str, Path]:
    return {name: request.getfixturevalue(fixture) for name, fixture in MODELS.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dirs, exports):
    repo = tmp_path_factory.mktemp("serve") / "model_repository"
    for name in model_dirs:
        build_from_export(exports(MODELS[name]), target="triton", output=repo,
                          name=name, max_queue_delay_us=50_000)  # 50 ms: batching shows even on a loaded machine
    with TritonServer(repo, ready_timeout=300) as srv:
        yield srv


@pytest.fixture(scope="module")
def references(model_dirs, corpus):
    """sentence-transformers embeddings of the corpus, per model."""
    out = {}
    for name, model_dir in model_dirs.items():
        out[name] = v.reference_embeddings(v.reference_model(model_dir), corpus)
    return out


def _chunks(texts, sizes):
    i, k = 0, 0
    while i < len(texts):
        n = sizes[k % len(sizes)]
        yield texts[i:i + n]
        i, k = i + n, k + 1


def test_server_metadata_shows_bytes_input_when_model_loaded(server):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert client.is_server_ready()
    for name, fixture in MODELS.items():
        meta = client.get_model_metadata(name)
        # the texts, and the optional prompt name (sentence-transformers gives every model "query" and
        # "document" prompts, blank unless the model sets them: encode_query works on any model)
        assert meta["inputs"] == [{"name": "input_sequence", "datatype": "BYTES", "shape": [-1, 1]},
                                  {"name": "prompt_name", "datatype": "BYTES", "shape": [-1, 1]}]
        assert meta["outputs"][0]["name"] == "sentence_embedding" and meta["outputs"][0]["datatype"] == "FP32"
        assert meta["platform"] == "python"
    gmeta = grpcclient.InferenceServerClient(server.grpc_url).get_model_metadata("minilm", as_json=True)
    assert gmeta["inputs"][0]["datatype"] == "BYTES"
    assert grpcclient.InferenceServerClient(server.grpc_url).get_model_metadata("minilm").outputs[0].shape == [-1, 384]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", list(MODELS))
def test_server_matches_sentence_transformers_when_batches_of_1_to_64(server, references, corpus, protocol, name):
    embed = triton_http(server.http_url, name) if protocol == "http" else triton_grpc(server.grpc_url, name)
    # Enough sentences that every batch size is used at least once (the corpus, repeated).
    texts = (corpus * (1 + sum(BATCH_SIZES) // len(corpus)))[: max(len(corpus), sum(BATCH_SIZES))]
    expected = np.concatenate([references[name]] * (1 + len(texts) // len(corpus)))[: len(texts)]
    batches = list(_chunks(texts, BATCH_SIZES))
    assert {len(b) for b in batches} >= set(BATCH_SIZES)
    got = np.concatenate([embed(b) for b in batches])
    assert got.dtype == np.float32
    report = v.compare(texts, expected, got)
    assert report.ok, report.render()
    assert report.max_abs_diff <= 1e-5 and report.min_cosine > 0.99999


def test_server_batches_concurrent_requests_when_dynamic_batching(server, references, corpus):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))

    def stats():
        s = client.get_inference_statistics("tiny")["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    inf0, exe0 = stats()
    texts = corpus[:64]
    # Non-blocking sends over a 16-connection pool: the requests really overlap, however loaded the
    # machine is (Python threads calling a blocking client may not, and then nothing can be batched).
    sender = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"), concurrency=16)

    def request(text):
        inp = httpclient.InferInput("input_sequence", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=object))
        return sender.async_infer("tiny", [inp])

    handles = [request(t) for t in texts]
    rows = [h.get_result().as_numpy("sentence_embedding")[0] for h in handles]
    inf1, exe1 = stats()
    assert inf1 - inf0 == len(texts)
    # Batched: fewer model executions than requests.
    assert exe1 - exe0 < len(texts), (inf1 - inf0, exe1 - exe0)
    report = v.compare(texts, references["tiny"][:64], np.stack(rows))
    assert report.ok, report.render()


def _raw_http(server, datatype, shape, data, binary=False):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    inp = httpclient.InferInput("input_sequence", shape, datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    return client.infer("tiny", [inp])


BAD_REQUESTS = {
    "wrong datatype": (lambda s: _raw_http(s, "INT32", [1, 1], np.array([[1]], dtype=np.int32)),
                       "data-type is 'INT32', but model 'tiny' expects 'BYTES'"),
    "wrong shape": (lambda s: _raw_http(s, "BYTES", [2, 2], np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)),
                    "unexpected shape for input 'input_sequence'"),
    "empty batch": (lambda s: triton_http(s.http_url, "tiny")([]), "got 0"),
    "too large a batch": (lambda s: triton_grpc(s.grpc_url, "tiny", chunk=False)(["x"] * 65),
                          "batch-size must be <= 64"),
    "invalid UTF-8 over HTTP": (lambda s: triton_http(s.http_url, "tiny")([b"ok", b"caf\xc3", b"\xff\xfe"]),
                                "element 1 is not valid UTF-8"),
    "invalid UTF-8 over gRPC": (lambda s: triton_grpc(s.grpc_url, "tiny")([b"\xc0\xaf"]), "element 0 is not valid UTF-8"),
    "1 MB string": (lambda s: triton_http(s.http_url, "tiny")(["a" * 1_000_000]),
                    "element 0 is 1000000 bytes; the limit is 262144"),
    "batch of 10,000 strings": (lambda s: _raw_http(s, "BYTES", [10_000, 1], np.array([[b"x"]] * 10_000, dtype=object)),
                                "batch-size must be <= 64"),
    "missing input": (lambda s: httpclient.InferenceServerClient(s.http_url.removeprefix("http://")).infer("tiny", []),
                      "missing required input(s) ['input_sequence']"),
    "unknown model": (lambda s: triton_http(s.http_url, "nope")(["x"]), "has no ready model 'nope' (ready models: minilm, tiny)"),
    "wrong input name": (lambda s: httpclient.InferenceServerClient(s.http_url.removeprefix("http://")).infer(
        "tiny", [_named_input("text")]), "unexpected inference input 'text'"),
}


def _named_input(name):
    inp = httpclient.InferInput(name, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    return inp


def test_clients_split_long_lists_into_max_batch_size_requests_when_chunking(server, references, corpus):
    texts = (corpus * 2)[:150]
    expected = np.concatenate([references["tiny"]] * 2)[:150]
    for embed in (triton_http(server.http_url, "tiny"), triton_grpc(server.grpc_url, "tiny")):
        got = embed(texts)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_server_answers_bad_request_with_clear_error_and_keeps_serving_when_request_is_bad(server, references, corpus, case):
    send, message = BAD_REQUESTS[case]
    with pytest.raises((ServerError, InferenceServerException)) as err:
        send(server)
    text = str(err.value) if isinstance(err.value, ServerError) else err.value.message()
    assert message in text, text
    # Still alive, and still right, on both models.
    assert server.alive()
    for name in MODELS:
        got = triton_http(server.http_url, name)(corpus[:3])
        assert np.abs(got - references[name][:3]).max() <= 1e-5


def test_server_fails_only_the_bad_request_when_batched_with_good_ones(server, references, corpus):
    """A bad request inside a dynamic batch gets its error; the good requests of that batch get embeddings."""
    good = triton_http(server.http_url, "tiny")
    bad = triton_http(server.http_url, "tiny")

    def one(i):
        if i % 4 == 0:
            try:
                bad([b"\xff bad"])
            except ServerError as exc:
                return "error" if "not valid UTF-8" in str(exc) else str(exc)
            return "no error"
        return good([corpus[i]])[0]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(48)))
    for i, r in enumerate(results):
        if i % 4 == 0:
            assert r == "error"
        else:
            assert np.abs(r - references["tiny"][i]).max() <= 1e-5


@pytest.mark.parametrize("url_attr,protocol,name", [("http_url", None, "minilm"), ("grpc_url", None, "tiny"),
                                                     ("grpc_url", "grpc", "tiny")])
def test_verify_url_passes_parity_when_server_is_live(server, model_dirs, corpus, url_attr, protocol, name):
    embed = embedder(getattr(server, url_attr), name, protocol=protocol)
    report = v.check(corpus, v.reference_model(model_dirs[name]), embed)
    assert report.ok, report.render()


@pytest.mark.parametrize("url_attr,protocol", [("http_url", "http"), ("grpc_url", "grpc")])
def test_client_names_served_models_when_model_name_is_wrong(server, url_attr, protocol):
    with pytest.raises(ServerError, match=r"has no ready model 'no-such-model' \(ready models: minilm, tiny\)"):
        embedder(getattr(server, url_attr), "no-such-model", protocol=protocol)


@pytest.mark.parametrize("url_attr,protocol", [("grpc_url", "http"), ("http_url", "grpc"), ("http_url", "tfserving")])
def test_client_gives_one_clear_error_when_protocol_does_not_match_the_port(server, url_attr, protocol):
    url = getattr(server, url_attr)
    url = url if "://" in url or protocol == "grpc" else f"http://{url}"
    with pytest.raises(ServerError) as err:
        embedder(url, "tiny", protocol=protocol)(["hello"])
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert url in message


def test_verify_and_embed_cli_print_one_line_when_server_is_unreachable(tmp_path):
    for cmd in (["verify", "--url", "http://127.0.0.1:9", "--model", "x"],
                ["embed", "hi", "--url", "127.0.0.1:9", "--model", "x"]):
        out = subprocess.run([sys.executable, "-m", "packager", *cmd], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot reach a Triton"), out.stderr
        assert "Traceback" not in out.stderr


def test_serve_refuses_tensorflow_backend_repository_with_advice_when_checked(tmp_path):
    model = tmp_path / "repo" / "m"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "m"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 8\n')
    with pytest.raises(TargetError, match="only the Python backend.*--backend python.*docker"):
        check_repository(tmp_path / "repo")
    with pytest.raises(TargetError, match="no model"):
        check_repository(tmp_path / "repo" / "m")
    (model / "config.pbtxt").write_text('name: "m"\nbackend: "python"\nmax_batch_size: 8\n')
    (tmp_path / "repo" / ".m.partial").mkdir()
    with pytest.raises(TargetError, match=r"not models \(no config.pbtxt\): .m.partial"):
        check_repository(tmp_path / "repo")
    with pytest.raises(TargetError, match="does not exist"):
        check_repository(tmp_path / "missing")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the server and its Python backend stubs)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def test_serve_cli_prints_endpoints_and_stops_cleanly_when_sent_sigint(tmp_path_factory, tiny_export):
    repo = tmp_path_factory.mktemp("cli") / "repo"
    build_from_export(tiny_export, target="triton", output=repo,
                      name="tiny", warmup=False)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "packager", "serve", str(repo)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        out = "".join(lines)
        assert "HTTP/REST : http://127.0.0.1:" in out and "gRPC      : 127.0.0.1:" in out, out
        assert "metrics   : http://127.0.0.1:" in out, out
        http_url = next(l.split(": ", 1)[1].split()[0] for l in lines if l.strip().startswith("HTTP/REST"))
        assert triton_http(http_url, "tiny")(["hello"]).shape[0] == 1
        children = _descendants(proc.pid)
        assert children, "the CLI started no server process"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + rest
        assert "tritonserver stopped." in rest
        time.sleep(0.5)
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 8
input [ { name: "input_sequence" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "length" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
ECHO_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "input_sequence").as_numpy().reshape(-1)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("length", np.array([[len(v)] for v in x], np.int32))]))
        return out
"""
_ORPHAN = """
import sys, time
from packager.serve import TritonServer
srv = TritonServer(sys.argv[1], ready_timeout=120).start()
print(srv.process.pid, flush=True)
time.sleep(600)
"""


def test_server_stops_when_the_process_that_started_it_is_killed(tmp_path):
    """No tritonserver outlives its owner, even one killed with SIGKILL (no cleanup code runs then)."""
    (tmp_path / "repo" / "echo" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (tmp_path / "repo" / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    owner = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(tmp_path / "repo")], stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid = int(owner.stdout.readline())
        assert Path(f"/proc/{server_pid}").exists()
        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 40
        while Path(f"/proc/{server_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not Path(f"/proc/{server_pid}").exists(), "tritonserver outlived the process that started it"
    finally:
        owner.kill()
        if server_pid and Path(f"/proc/{server_pid}").exists():
            os.killpg(server_pid, signal.SIGKILL)
