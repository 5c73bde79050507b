"""TF-Serving target: the layout, configs that parse with tensorflow-serving-api protos, warmup
records that read back and run, and a load "like the server" (fresh process, SavedModel loader,
``serving_default`` fed a TensorProto from a PredictRequest) that matches sentence-transformers."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from packager import verify as v
from packager.errors import TargetError
from packager.targets import build_from_export, tfserving
from packager.targets.tfserving import TFServingOptions

@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_export) -> Path:
    """A base folder with the tiny model as version 1."""
    out = tmp_path_factory.mktemp("tfs") / "models"
    build_from_export(tiny_export, target="tfserving", output=out, name="tiny")
    return out


def parse_models_config(text: str):
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, cfg)
    return cfg


def test_tfserving_layout_is_what_the_server_expects_when_built(base):
    version = base / "tiny" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert {p.name for p in base.iterdir()} == {"models.config", "batching_parameters.txt", "tiny", "_examples"}
    assert sorted(p.name for p in (base / "tiny").iterdir()) == ["1"]  # only numeric version folders


def test_tfserving_models_config_parses_with_serving_protos_when_built(base):
    cfg = parse_models_config((base / "models.config").read_text())
    (entry,) = cfg.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("tiny", "/models/tiny", "tensorflow")
    assert entry.model_version_policy.latest.num_versions == 1


def test_tfserving_batching_parameters_parse_when_options_set():
    params = tfserving.batching_parameters_class()()
    opts = TFServingOptions(max_batch_size=32, batch_timeout_us=500, num_batch_threads=4, allowed_batch_sizes=(8, 16, 32))
    text_format.Parse(tfserving.render_batching_parameters(opts), params)
    assert (params.max_batch_size.value, params.batch_timeout_micros.value) == (32, 500)
    assert params.num_batch_threads.value == 4 and list(params.allowed_batch_sizes) == [8, 16, 32]
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 1 }", tfserving.batching_parameters_class()())


def test_tfserving_models_config_keeps_other_models_when_a_model_is_added_or_rebuilt():
    first = tfserving.render_models_config("a", TFServingOptions())
    both = tfserving.render_models_config("b", TFServingOptions(version_policy="all"), existing=first)
    again = tfserving.render_models_config("a", TFServingOptions(version_policy=(1, 2)), existing=both)
    cfg = parse_models_config(again)
    by_name = {c.name: c for c in cfg.model_config_list.config}
    assert set(by_name) == {"a", "b"}
    assert by_name["b"].model_version_policy.HasField("all")
    assert list(by_name["a"].model_version_policy.specific.versions) == [1, 2]
    with pytest.raises(TargetError, match="does not parse"):
        tfserving.render_models_config("a", TFServingOptions(), existing="model_config_list { bogus: 1 }")


def test_tfserving_options_raise_target_error_when_invalid():
    for kwargs in ({"base_path_prefix": "models"}, {"allowed_batch_sizes": (8, 16)}, {"num_batch_threads": 0},
                   {"version_policy": "newest"}):
        with pytest.raises(TargetError, match="invalid TF-Serving options"):
            TFServingOptions(**kwargs)


def test_tfserving_tfrecords_read_back_when_framed_by_packager(tmp_path):
    import tensorflow as tf

    records = [b"", b"abc", bytes(range(256)) * 10]
    path = tmp_path / "r.tfrecord"
    path.write_bytes(tfserving.tfrecords(records))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    # TensorFlow checks each record's masked CRC-32C when asked to; a flipped payload byte fails.
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="")] == records
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))


def test_tfserving_examples_parse_when_built(base):
    from tensorflow_serving.apis import predict_pb2

    ex = base / "_examples" / "tiny"
    rest = json.loads((ex / "predict_rest.json").read_text(encoding="utf-8"))
    assert rest["signature_name"] == "serving_default" and all(isinstance(t, str) for t in rest["instances"])
    req = predict_pb2.PredictRequest()
    text_format.Parse((ex / "predict_grpc.pbtxt").read_text(encoding="utf-8"), req)
    assert req.model_spec.name == "tiny"
    assert [s.decode("utf-8") for s in req.inputs["input_sequence"].string_val] == rest["instances"]
    compile((ex / "predict_grpc.py").read_text(encoding="utf-8"), "predict_grpc.py", "exec")
    assert "/v1/models/tiny:predict" in (ex / "predict_rest.sh").read_text()


def test_tfserving_version_2_keeps_version_1_and_needs_force_when_version_exists(tmp_path, tiny_export):
    out = tmp_path / "models"
    build_from_export(tiny_export, target="tfserving", output=out, name="tiny")
    build_from_export(tiny_export, target="tfserving", output=out, name="other")
    build_from_export(tiny_export, target="tfserving", output=out, name="tiny", version=2, version_policy="all")
    assert sorted(p.name for p in (out / "tiny").iterdir()) == ["1", "2"]
    cfg = parse_models_config((out / "models.config").read_text())
    assert sorted(c.name for c in cfg.model_config_list.config) == ["other", "tiny"]
    with pytest.raises(TargetError, match="set force"):
        build_from_export(tiny_export, target="tfserving", output=out, name="tiny", version=2)
    build_from_export(tiny_export, target="tfserving", output=out, name="tiny", version=2, force=True)


# The server's path, step by step, in a process that has never seen packager's graph code:
# register the op libraries the manifest lists, load the SavedModel with the TF1 session loader
# (as tensorflow_model_server does), take serving_default's tensor names from the SignatureDef,
# and feed TensorProtos taken from PredictRequests: the warmup records and one per corpus batch.
_LIKE_THE_SERVER = textwrap.dedent("""
    import importlib.util, json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    version_dir, requests_file, out_file = sys.argv[1:4]
    manifest = json.load(open(os.path.join(version_dir, "packager.json")))
    ops = os.path.join(list(importlib.util.find_spec("tensorflow_text").submodule_search_locations)[0], "python", "ops")
    for lib in manifest["op_libraries"]:
        tf.load_op_library(os.path.join(ops, lib))
    assert "tensorflow_text" not in sys.modules
    graph = tf.Graph()
    with graph.as_default():
        sess = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
    sig = meta.signature_def["serving_default"]

    def run(request):
        feed = {sig.inputs[k].name: tf.make_ndarray(t) for k, t in request.inputs.items()}
        return sess.run(sig.outputs["sentence_embedding"].name, feed_dict=feed)

    warm = [run(prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request).shape
            for r in tf.data.TFRecordDataset(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))]
    rows = []
    with open(requests_file, "rb") as f:
        for line in f.read().split(b"\\n"):
            if line:
                rows.append(run(predict_pb2.PredictRequest.FromString(bytes.fromhex(line.decode()))))
    np.save(out_file, np.concatenate(rows))
    print(json.dumps({"warmup_shapes": [list(s) for s in warm], "signature_inputs": list(sig.inputs)}))
""")


def test_tfserving_version_matches_sentence_transformers_when_loaded_like_the_server(tmp_path, base, tiny_bert, corpus):
    from packager.targets.tfserving import predict_request

    batches = [corpus[i:i + 16] for i in range(0, len(corpus), 16)]
    reqs = tmp_path / "requests.hex"
    reqs.write_text("\n".join(predict_request("tiny", b, "input_sequence").SerializeToString().hex() for b in batches))
    out = tmp_path / "emb.npy"
    proc = subprocess.run([sys.executable, "-c", _LIKE_THE_SERVER, str(base / "tiny" / "1"), str(reqs), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["signature_inputs"] == ["input_sequence"]
    assert info["warmup_shapes"][0][0] == 1 and len(info["warmup_shapes"]) == 2
    got = np.load(out)
    reference = v.reference_model(tiny_bert)
    report = v.compare(corpus, v.reference_embeddings(reference, corpus), got)
    assert report.ok, report.render()
    assert report.max_abs_diff <= 1e-5


@pytest.mark.parametrize("target, options", [
    ("tfserving", {"server_version": "9.99"}),
    ("triton", {"backend": "tensorflow", "server_version": "24.01"}),
    ("triton", {"server_version": "99.99"}),
])
def test_build_refuses_an_unknown_server_version_before_exporting(tmp_path, monkeypatch, target, options):
    import packager.graph
    from packager.errors import TargetError
    from packager.targets import build

    def no_export(*args, **kwargs):
        raise AssertionError("exported before the server release was checked")

    monkeypatch.setattr(packager.graph, "export", no_export)
    expected = (r"does not apply to the python backend" if "backend" not in options and target == "triton"
                else r"unsupported .* release '(9\.99|24\.01)'. Supported: ")
    with pytest.raises(TargetError, match=expected):
        build(None, target=target, output=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
