"""Triton target: rendered configs parse with Triton's own proto, templates cannot be injected, the
warmup file is Triton's BYTES format, and the shared writer is atomic (versions kept, force needed,
old-or-new tree even when the writer is killed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from dataclasses import replace

from packager.errors import TargetError
from packager.manifest import Manifest
from packager.manifest import read as read_manifest
from packager.targets import build_from_export, sanitize, triton
from packager.targets.triton import TritonOptions, bytes_tensor_file, read_bytes_tensor_file
from packager.writer import write_tree
from test_build_interrupted import default_sigint

MANIFEST = Manifest(
    packager_version="0.1.0",
    source="sentence-transformers/all-MiniLM-L6-v2",
    name="all-minilm-l6-v2",
    model_type="bert",
    output_dim=384,
    max_seq_length=256,
    tensorflow="2.21.0",
    tensorflow_text="2.21.1",
    op_libraries=("_fast_wordpiece_tokenizer.so", "_regex_split_ops.so"),
)
FAKE_LIBS = {lib: Path(__file__) for lib in MANIFEST.op_libraries}


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse(text, cfg)  # unknown fields or bad syntax raise ParseError
    return cfg


# ------------------------------------------------------------------------------------ config.pbtxt
@pytest.mark.parametrize("backend", ["python", "tensorflow"])
def test_triton_config_parses_with_model_config_pb2_when_default_options(backend):
    opts = TritonOptions(backend=backend)
    cfg = parse_config(triton.render_config(MANIFEST, name="minilm", options=opts, image_tf="2.17.0"))
    assert cfg.name == "minilm"
    assert cfg.max_batch_size == 64
    assert [i.name for i in cfg.input] == ["input_sequence"]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_STRING and list(cfg.input[0].dims) == [1]
    assert cfg.output[0].name == "sentence_embedding" and cfg.output[0].data_type == model_config_pb2.TYPE_FP32
    assert list(cfg.output[0].dims) == [384]
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert cfg.instance_group[0].count == 1 and cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [w.batch_size for w in cfg.model_warmup] == [1, 64]
    assert all(w.inputs["input_sequence"].input_data_file == "sample" for w in cfg.model_warmup)
    if backend == "python":
        assert cfg.backend == "python" and not cfg.platform
        assert not cfg.input[0].HasField("reshape")  # model.py takes the [batch, 1] tensor as sent
        assert not cfg.HasField("model_operations")
        runtime = {k: cfg.parameters[k].string_value for k in ("onednn", "intra_op_threads", "inter_op_threads")}
        assert runtime == {"onednn": "1", "intra_op_threads": "0", "inter_op_threads": "0"}
    else:
        assert cfg.platform == "tensorflow_savedmodel" and not cfg.backend
        # The signature takes [batch] strings: the per-row dim of 1 is reshaped away.
        assert cfg.input[0].HasField("reshape") and list(cfg.input[0].reshape.shape) == []
        assert list(cfg.model_operations.op_library_filename) == [
            "/models/minilm/ops/_fast_wordpiece_tokenizer.so", "/models/minilm/ops/_regex_split_ops.so"]


def test_triton_config_carries_every_option_when_set():
    opts = TritonOptions(
        backend="python", max_batch_size=32, preferred_batch_sizes=(8, 16), max_queue_delay_us=250,
        instance_count=3, instance_kind="gpu", gpus=(0, 1), warmup=False, version_policy="all",
        onednn=False, intra_op_threads=2, inter_op_threads=1,
    )
    cfg = parse_config(triton.render_config(MANIFEST, name="m", options=opts))
    assert [cfg.parameters[k].string_value for k in ("onednn", "intra_op_threads", "inter_op_threads")] == ["0", "2", "1"]
    assert cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    g = cfg.instance_group[0]
    assert (g.count, g.kind, list(g.gpus)) == (3, model_config_pb2.ModelInstanceGroup.KIND_GPU, [0, 1])
    assert len(cfg.model_warmup) == 0
    assert cfg.version_policy.HasField("all")
    specific = parse_config(triton.render_config(MANIFEST, name="m", options=TritonOptions(version_policy=(1, 3))))
    assert list(specific.version_policy.specific.versions) == [1, 3]
    off = parse_config(triton.render_config(MANIFEST, name="m", options=TritonOptions(dynamic_batching=False)))
    assert not off.HasField("dynamic_batching")


@pytest.mark.parametrize("kwargs", [
    {"backend": "onnx"}, {"max_batch_size": 0}, {"preferred_batch_sizes": (128,)}, {"instance_count": 0},
    {"instance_kind": "KIND_TPU"}, {"gpus": (0,)}, {"repo_mount": "models"}, {"repo_mount": '/m"\n'},
    {"version_policy": "newest"}, {"max_queue_delay_us": -1}, {"intra_op_threads": -1},
])
def test_triton_options_raise_target_error_when_invalid(kwargs):
    with pytest.raises(TargetError, match="invalid Triton options"):
        TritonOptions(**kwargs)


def test_triton_config_cannot_be_injected_when_model_strings_hold_quotes_and_newlines():
    evil = 'x" }\ninstance_group [ { count: 99 } ]\nname: "pwned'
    manifest = replace(MANIFEST, source=evil)
    name = sanitize('My "Model"\nname: evil')
    assert name == "my--model--name--evil"
    text = triton.render_config(manifest, name=name, options=TritonOptions(backend="python"))
    cfg = parse_config(text)
    assert cfg.name == name
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
    assert cfg.parameters["packager_source"].string_value == evil  # carried verbatim, as data
    # The comments quote the source on one line: no line of the file starts with injected text.
    assert sum(line.startswith("instance_group") for line in text.splitlines()) == 1
    assert all(line.startswith(("#", "parameters")) for line in text.splitlines() if "pwned" in line)


def test_triton_model_py_compiles_and_quotes_strings_when_source_is_hostile():
    manifest = replace(MANIFEST, source='"""; import os; os.system("x") #\n')
    code = triton.render_model_py(manifest, name="m", options=TritonOptions())
    compile(code, "model.py", "exec")
    ns: dict = {}
    # Only the constants block is executed (the rest needs Triton's pb_utils).
    consts = code[code.index("\nPACKAGER_VERSION = "):code.index("\nBUILT_WITH = ")]
    exec(consts, ns)
    assert ns["SOURCE"] == manifest.source
    assert ns["OP_LIBRARIES"] == list(MANIFEST.op_libraries) and ns["EMBEDDING_DIM"] == 384
    assert ns["MAX_STRING_BYTES"] == 256 * 1024


def test_triton_warmup_file_round_trips_when_strings_are_unicode():
    texts = ["", "a", "Café 中文 🙂", "x\x00y"]
    data = bytes_tensor_file(texts)
    assert data[:4] == b"\x00\x00\x00\x00" and data[4:8] == (1).to_bytes(4, "little")
    assert [b.decode("utf-8") for b in read_bytes_tensor_file(data)] == texts
    with pytest.raises(ValueError):
        read_bytes_tensor_file(data[:-1])


def test_triton_render_lists_layout_when_python_backend():
    files = triton.render_files(MANIFEST, Path("/export"), name="m", version=3, options=TritonOptions())
    assert set(files) == {"config.pbtxt", "configs/gpu.pbtxt", "3/model.savedmodel", "3/model.py", "warmup/sample",
                          "packager-target.json"}
    assert files["3/model.savedmodel"] == Path("/export")
    assert read_bytes_tensor_file(files["warmup/sample"]) == [triton.WARMUP_TEXT.encode("utf-8")]
    info = json.loads(files["packager-target.json"])
    assert info["backend"] == "python" and info["version"] == 3 and info["export"]["source"] == MANIFEST.source


def test_triton_render_raises_when_tensorflow_backend_lacks_op_libraries():
    with pytest.raises(TargetError, match="_regex_split_ops.so"):
        triton.render_files(MANIFEST, None, name="m", options=TritonOptions(backend="tensorflow"),
                      op_library_files={"_fast_wordpiece_tokenizer.so": Path(__file__)})
    files = triton.render_files(MANIFEST, None, name="m", options=TritonOptions(backend="tensorflow"),
                          op_library_files=FAKE_LIBS)
    assert {"ops/_fast_wordpiece_tokenizer.so", "ops/_regex_split_ops.so"} <= set(files)
    assert not any(k.endswith("model.py") for k in files)


# ------------------------------------------------------------------------------------ build + writer
def test_build_writes_parseable_python_repo_when_real_export(tmp_path, tiny_export):
    repo = tmp_path / "repo"
    model_dir = build_from_export(tiny_export, target="triton", output=repo, name="Tiny BERT")
    assert model_dir == repo / "tiny-bert"
    cfg = parse_config((model_dir / "config.pbtxt").read_text())
    assert list(cfg.output[0].dims) == [read_manifest(tiny_export).output_dim]
    assert (model_dir / "1" / "model.savedmodel" / "saved_model.pb").is_file()
    assert (model_dir / "1" / "model.savedmodel" / "variables").is_dir()
    assert "_fast_wordpiece_tokenizer.so" in (model_dir / "1" / "model.py").read_text()
    # Nothing but the model folder lands in the repository (Triton refuses folders it cannot load).
    assert [p.name for p in repo.iterdir()] == ["tiny-bert"]


def test_build_keeps_version_1_when_version_2_added_and_needs_force_to_replace(tmp_path, tiny_export):
    repo = tmp_path / "repo"
    model_dir = build_from_export(tiny_export, target="triton", output=repo, name="m", version=1)
    v1_pb = (model_dir / "1" / "model.savedmodel" / "saved_model.pb").read_bytes()
    (model_dir / "1" / "stale.txt").write_text("left by hand")
    build_from_export(tiny_export, target="triton", output=repo, name="m", version=2, max_batch_size=8)
    assert (model_dir / "1" / "model.savedmodel" / "saved_model.pb").read_bytes() == v1_pb
    assert (model_dir / "1" / "stale.txt").is_file()  # untouched: version 1 is not this build's
    assert (model_dir / "2" / "model.py").is_file()
    assert parse_config((model_dir / "config.pbtxt").read_text()).max_batch_size == 8
    with pytest.raises(TargetError, match="set force"):
        build_from_export(tiny_export, target="triton", output=repo, name="m", version=1)
    assert (model_dir / "1" / "stale.txt").is_file()  # a refused build changes nothing
    build_from_export(tiny_export, target="triton", output=repo, name="m", version=1, force=True)
    assert not (model_dir / "1" / "stale.txt").exists()  # forced: version 1 rewritten whole
    assert (model_dir / "2" / "model.py").is_file()


def test_build_drops_stale_warmup_when_rebuilt_without_warmup(tmp_path, tiny_export):
    repo = tmp_path / "repo"
    model_dir = build_from_export(tiny_export, target="triton", output=repo, name="m")
    assert (model_dir / "warmup" / "sample").is_file()
    build_from_export(tiny_export, target="triton", output=repo, name="m", version=2, warmup=False)
    assert not (model_dir / "warmup").exists()
    assert not parse_config((model_dir / "config.pbtxt").read_text()).model_warmup


def test_build_raises_before_export_when_option_unknown(tmp_path, monkeypatch):
    import packager.graph
    from packager.targets import build

    def no_export(*args, **kwargs):
        raise AssertionError("exported before the options were checked")

    monkeypatch.setattr(packager.graph, "export", no_export)
    with pytest.raises(TargetError, match="unknown option"):
        build(None, target="triton", output=tmp_path / "r", max_batch=3)
    assert not (tmp_path / "r").exists()


def test_writer_refuses_paths_outside_destination_when_relative_path_escapes(tmp_path):
    for bad in ("../x", "/etc/x", "a/../../x", ""):
        with pytest.raises(TargetError):
            write_tree(tmp_path / "d", {bad: b"x"})
    assert not (tmp_path / "x").exists()


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from packager.writer import write_tree
    dest, gen = Path(sys.argv[1]), int(sys.argv[2])
    files = {f"v/{i:03d}.txt": (f"{gen}:{i}:" + "x" * 20000).encode() for i in range(200)}
    files["config.txt"] = f"gen {gen}"
    print("go", flush=True)
    while True:
        write_tree(dest, files, force=True, exclusive=["v"])
""")


def _consistent(dest: Path) -> int:
    """The generation of a complete tree, or fail when the tree mixes generations or misses files."""
    gen = int((dest / "config.txt").read_text().split()[1])
    names = sorted(p.name for p in (dest / "v").iterdir())
    assert names == [f"{i:03d}.txt" for i in range(200)]
    for i, name in enumerate(names):
        assert (dest / "v" / name).read_text().startswith(f"{gen}:{i}:")
    return gen


def test_writer_leaves_old_or_new_tree_when_killed_mid_write(tmp_path):
    dest = tmp_path / "out"
    write_tree(dest, {"config.txt": "gen 0", **{f"v/{i:03d}.txt": f"0:{i}:" for i in range(200)}})
    seen, kills = set(), 0
    delays = [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 1.8, 2.5, 3.5]
    for round_, delay in enumerate(delays):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(dest), str(round_ + 1)],
                                stdout=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        assert proc.stdout.readline().strip() == "go"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL if round_ % 2 == 0 else signal.SIGINT)
        proc.wait(timeout=30)
        kills += 1
        seen.add(_consistent(dest))
        # Staging folders sit beside the destination, never inside it.
        assert not any(p.name.startswith(".") for p in dest.iterdir())
        if kills >= 6 and len(seen) >= 3:
            break
    assert len(seen) >= 2, seen  # kills landed before and after swaps, and every tree was whole
    # The next write cleans up what the killed writers left behind.
    write_tree(dest, {"config.txt": "gen 99", **{f"v/{i:03d}.txt": f"99:{i}:" for i in range(200)}},
               force=True, exclusive=["v"])
    assert _consistent(dest) == 99
    assert sorted(p.name for p in tmp_path.iterdir() if "packager-tmp" in p.name) == []


def test_writer_recovers_old_tree_when_killed_between_fallback_renames(tmp_path):
    from packager import writer

    dest = tmp_path / "out"
    write_tree(dest, {"a.txt": "old"})
    # What a writer without renameat2 leaves when killed between its two renames: the old tree parked.
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
    staging = tmp_path / f".out{writer._TMP_MARK}{dead_pid}-abc"
    staging.mkdir()
    os.rename(dest, staging / writer._OLD)
    writer.recover(dest)
    assert (dest / "a.txt").read_text() == "old" and not staging.exists()


@pytest.mark.network
def test_build_tensorflow_backend_ships_op_libraries_of_the_image_tf_when_backend_tensorflow(tmp_path, tiny_export):
    from packager.oplibs import text_ops_dir
    from packager.servers import get_server

    srv = get_server("triton-tensorflow")
    model_dir = build_from_export(tiny_export, target="triton", output=tmp_path / "repo", name="m", backend="tensorflow")
    cfg = parse_config((model_dir / "config.pbtxt").read_text())
    manifest = read_manifest(tiny_export)
    assert cfg.platform == "tensorflow_savedmodel"
    assert list(cfg.model_operations.op_library_filename) == [f"/models/m/ops/{lib}" for lib in manifest.op_libraries]
    info = json.loads((model_dir / "packager-target.json").read_text())
    assert info["image"] == srv.image and info["image_tensorflow"] == srv.tensorflow != manifest.tensorflow
    for lib in manifest.op_libraries:
        shipped = (model_dir / "ops" / lib).read_bytes()
        local = (text_ops_dir() / lib).read_bytes()
        assert shipped[:4] == b"\x7fELF"
        assert shipped != local  # built for the image's TF (2.17), not the local one
    assert not (model_dir / "1" / "model.py").exists()
    assert (model_dir / "1" / "model.savedmodel" / "saved_model.pb").is_file()
