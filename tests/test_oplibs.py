"""Op analysis of SavedModels, the generated op sets, the server table and the build check."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from packager.errors import PackagerError, TargetError
from packager.compat import CompatibilityWarning, check_compatible, find_problems, server_opset
from packager.oplibs import (
    OPSETS_DIR,
    analyze_saved_model,
    fetch_op_libraries,
    installed_versions,
    load_opset,
    read_graph_ops,
    registry_dump,
    text_ops_dir,
)
from packager.servers import SERVERS, get_server

TOKENIZER_LIBS = ["_fast_wordpiece_tokenizer.so", "_normalize_ops.so", "_regex_split_ops.so"]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    from oplib_graphs import save_standin

    out = tmp_path_factory.mktemp("standin") / "export"
    save_standin(out)
    return out


@pytest.fixture(scope="module")
def standin_rr(tmp_path_factory):
    from oplib_graphs import save_standin

    out = tmp_path_factory.mktemp("standin_rr") / "export"
    save_standin(out, trim="round_robin")
    return out


def _fresh_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


# ---------------------------------------------------------------- analysis
def test_analyze_saved_model_lists_tokenizer_libraries_when_graph_uses_tf_text_ops(standin):
    info = analyze_saved_model(standin)
    assert info["op_libraries"] == TOKENIZER_LIBS
    assert set(info["custom_ops"]) == {"FastWordpieceTokenizeWithOffsets", "NormalizeUTF8", "RegexSplitWithOffsets"}
    assert {"StaticRegexReplace", "StringLower", "RestoreV2"} <= set(info["ops"])


def test_read_graph_ops_includes_function_bodies_when_ops_live_in_tf_functions(standin):
    graph = read_graph_ops(standin)
    # the tokenizer ops only exist inside the traced tf.functions, never in the top-level graph
    assert "RegexSplitWithOffsets" in graph.ops and "FastWordpieceTokenizeWithOffsets" in graph.ops
    assert graph.tensorflow == installed_versions()[0]
    assert all(not a.startswith("_") for attrs in graph.ops.values() for a in attrs)


def test_analyze_saved_model_adds_trimmer_library_when_graph_uses_round_robin_trimmer(standin_rr):
    info = analyze_saved_model(standin_rr)
    assert "_trimmer_ops.so" in info["op_libraries"] and "TFText>RoundRobinTrim" in info["custom_ops"]


# ---------------------------------------------------------------- generated op sets
def test_opset_library_map_matches_registry_when_libraries_loaded_in_fresh_process():
    tf_v, text_v = installed_versions()
    stored = load_opset(tf_v, text_v)
    ops_dir = text_ops_dir()
    picked = Path(shutil.copytree(ops_dir, Path(os.environ.get("TMPDIR", "/tmp")) / f"ops-{os.getpid()}",
                                  ignore=lambda d, names: [n for n in names if n not in TOKENIZER_LIBS + ["_trimmer_ops.so"]]))
    try:
        live = registry_dump(None, picked, isolated=False)  # one fresh process, diffed after each library
    finally:
        shutil.rmtree(picked, ignore_errors=True)
    assert live["errors"] == {}
    for lib, ops in live["libraries"].items():
        assert tuple(ops) == stored.libraries[lib], lib
        for op in ops:
            assert tuple(live["text_ops"][op]) == stored.text[op]
    assert set(live["core_ops"]) == set(stored.core)


def test_opset_files_record_provenance_when_generated_by_tool():
    files = sorted(OPSETS_DIR.glob("*.json"))
    assert len(files) >= 4
    for f in files:
        data = json.loads(f.read_text())
        assert data["generated_by"] == "tools/opsets.py"
        assert data["load_errors"] == {}, f.name
        assert "MatMul" in data["core_ops"] and "StaticRegexReplace" in data["core_ops"]
        if data["tensorflow_text"]:
            assert "FastWordpieceTokenizeWithOffsets" in data["libraries"]["_fast_wordpiece_tokenizer.so"]
            assert not set(data["text_ops"]) & set(data["core_ops"])


def test_load_opset_combines_core_and_text_when_server_links_older_tf_text():
    combined = load_opset("2.17.1", "2.12.1")
    assert combined.tensorflow.startswith("2.17") and combined.tensorflow_text == "2.12.1"
    assert "RegexSplitWithOffsets" in combined.text and "TFText>RoundRobinTrim" not in combined.text
    with pytest.raises(TargetError, match="no op set for TensorFlow 1.15"):
        load_opset("1.15.0")


# ---------------------------------------------------------------- server table
def test_servers_have_op_sets_when_table_is_loaded():
    for srv in SERVERS:
        s = server_opset(srv)
        assert "MatMul" in s.core, srv.key
        assert "FastWordpieceTokenizeWithOffsets" in s.text, srv.key
        assert srv.sources, srv.key


def test_get_server_resolves_release_when_server_version_given():
    assert get_server("tfserving", "2.17.1").key == "tfserving:2.17"
    assert get_server("tfserving:2.20").tensorflow_text == "2.20.0"
    triton = get_server("triton-tensorflow")
    assert (triton.version, triton.tensorflow, triton.python) == ("25.02", "2.17.0", "3.12")
    assert any("nvidia.com" in u for u in triton.sources)


def test_get_server_lists_supported_releases_when_version_unknown():
    with pytest.raises(TargetError) as err:
        get_server("tfserving", "2.9")
    assert "2.12" in str(err.value) and "2.20" in str(err.value)
    with pytest.raises(TargetError, match="Supported: triton-tensorflow"):
        get_server("torchserve")


# ---------------------------------------------------------------- the build check
def test_check_compatible_accepts_every_server_when_graph_uses_tokenizer_ops(standin):
    for srv in SERVERS:
        check_compatible(standin, srv)


def test_check_compatible_refuses_tfserving_2_12_when_graph_uses_round_robin_trim(standin_rr):
    with pytest.raises(TargetError) as err:
        check_compatible(standin_rr, "tfserving:2.12")
    msg = str(err.value)
    assert "TF-Serving 2.12" in msg and "'TFText>RoundRobinTrim'" in msg and "_trimmer_ops.so" in msg
    releases = msg.split("it is in", 1)[1].splitlines()[0]
    assert releases.strip().startswith("TF-Text 2.14.0,") and "2.20.0" in releases and "2.12.1" not in releases
    assert "TF-Serving 2.20" in msg  # the servers that can run it
    check_compatible(standin_rr, "tfserving:2.20")
    check_compatible(standin_rr, get_server("triton-python"))


def test_check_compatible_names_attr_when_node_sets_attr_unknown_to_release(standin, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    edited = tmp_path / "edited"
    shutil.copytree(standin, edited)
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((edited / "saved_model.pb").read_bytes())
    nodes = [n for f in sm.meta_graphs[0].graph_def.library.function for n in f.node_def if n.op == "NormalizeUTF8"]
    assert nodes
    nodes[0].attr["future_attr"].b = True  # what a newer TF adds with a non-default value
    (edited / "saved_model.pb").write_bytes(sm.SerializeToString())
    # TF >= 2.12 loads such a graph ("Unknown attributes will be ignored"), but an ignored attr can
    # change what the op does (TensorListSetItem.resize_if_index_out_of_bounds did): refused by default
    with pytest.raises(TargetError) as err:
        check_compatible(edited, "tfserving:2.20")
    assert "'NormalizeUTF8' sets attr 'future_attr'" in str(err.value)
    with pytest.warns(CompatibilityWarning, match="attr 'future_attr' of NormalizeUTF8"):
        check_compatible(edited, "tfserving:2.20", strict_attrs=False)
    assert find_problems({"NormalizeUTF8": {"normalization_form"}}, load_opset("2.12.1", "2.12.1")) == []


def test_check_compatible_stays_silent_when_only_informational_attrs_are_unknown(standin):
    import warnings

    # VarHandleOp.debug_name arrived in TF 2.15; the graph sets it, TF 2.12 ignores it harmlessly
    assert ("VarHandleOp", "debug_name") in find_problems(read_graph_ops(standin).ops, load_opset("2.12.1", "2.12.1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_compatible(standin, "tfserving:2.12")


def test_check_compatible_uses_manifest_ops_when_given_manifest(standin_rr):
    manifest = json.loads((standin_rr / "packager.json").read_text())
    with pytest.raises(TargetError, match="RoundRobinTrim"):
        check_compatible(manifest, "tfserving:2.15")
    with pytest.raises(TargetError, match="RoundRobinTrim"):
        check_compatible(standin_rr / "packager.json", "tfserving:2.19")
    with pytest.raises(TargetError, match="neither a SavedModel"):
        check_compatible(standin_rr / "missing", "tfserving:2.20")


# ---------------------------------------------------------------- loading op libraries
def test_load_op_libraries_makes_graph_loadable_when_only_listed_libraries_registered(standin):
    libs = json.loads((standin / "packager.json").read_text())["op_libraries"]
    code = (
        "import sys, tensorflow as tf\n"
        "from packager.oplibs import load_op_libraries\n"
        f"if sys.argv[-1] == 'with': load_op_libraries({libs!r})\n"
        "try:\n"
        f"    g = tf.saved_model.load({str(standin)!r})\n"
        "    print(g.signatures['tokenize'](input_sequence=tf.constant(['hello world']))['input_ids'].numpy().tolist())\n"
        "except Exception as e:\n"
        "    print('FAILED', e)\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    ok = subprocess.run([sys.executable, "-c", code, "with"], capture_output=True, text=True, env=env, timeout=300)
    bare = subprocess.run([sys.executable, "-c", code, "without"], capture_output=True, text=True, env=env, timeout=300)
    assert ok.stdout.strip().startswith("[["), ok.stderr[-2000:]
    assert "FAILED" in bare.stdout and "Op type not registered" in bare.stdout, bare.stdout


# ---------------------------------------------------------------- op libraries of another release
@pytest.mark.network
def test_fetch_op_libraries_extracts_and_caches_so_files_when_wheel_downloaded(tmp_path):
    paths = fetch_op_libraries("2.17.0", tmp_path / "ops", python_version="3.12", libraries=TOKENIZER_LIBS)
    assert [p.name for p in paths] == TOKENIZER_LIBS
    for p in paths:
        blob = p.read_bytes()
        assert blob[:4] == b"\x7fELF" and b"libtensorflow_framework.so.2" in blob
    cached = fetch_op_libraries("2.17.0", None, python_version="3.12")
    marker = json.loads((cached[0].parent / "wheel.json").read_text())
    # there is no cp312 wheel of 2.17.0; the op libraries of another CPython's wheel are identical
    assert marker["tensorflow_text"] == "2.17.0" and marker["wheel"].startswith("tensorflow_text-2.17.0-cp3")
    assert "_trimmer_ops.so" in {p.name for p in cached}


def test_fetch_op_libraries_names_release_and_pythons_tried_when_the_index_has_no_wheel(tmp_path, monkeypatch):
    """Offline and deterministic: pip is pointed at an empty local index (no network, no user config),
    so the failure is the "no such wheel" one for sure, and the message says what was tried."""
    empty = tmp_path / "index"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", empty.as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PackagerError, match=r"could not download tensorflow-text==2\.17\.0 for CPython 3\.12, 3\.11") as err:
        fetch_op_libraries("2.17.0", tmp_path / "ops", python_version="3.12")
    assert "No matching distribution found for tensorflow-text==2.17.0" in str(err.value)
    assert not (tmp_path / "ops").exists() and not (tmp_path / "cache" / "oplibs" / "2.17.0").exists()


@pytest.mark.parametrize("fixture", ["tiny_qwen3_bpe", "tiny_modernbert_bpe", "tiny_cross_encoder", "tiny_prompted"])
def test_check_compatible_gives_a_verdict_naming_ops_for_every_server_when_graph_is_a_new_family(request, exports, fixture):
    """Every server either runs the new graphs or is refused with the ops it lacks (never a vague error);
    the Python backend, which runs packager's own TensorFlow, always runs them."""
    out = exports(fixture)
    for srv in SERVERS:
        try:
            check_compatible(out, srv)
        except TargetError as exc:
            assert "cannot run the" in str(exc) and "is not registered there" in str(exc) or "sets attr" in str(exc)
            assert srv.kind != "triton-python", str(exc)
