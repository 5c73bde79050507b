"""Opt-in bf16 as a product feature: ``--precision bf16`` on export and build, recorded in the manifest,
verified against the documented reduced-precision thresholds (and said so), refused before anything is
written on a CPU without bfloat16 matmuls, and served with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`` (bf16
exports only). The encoder's bf16 kernels themselves are tested in test_encoders.py."""
from __future__ import annotations

import ast
import dataclasses
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import yaml

from packager import verify as v
from packager.cli import _verified_precision, main, make_parser
from packager.encoders import precision as precision_module
from packager.encoders.precision import PRECISIONS, bf16_supported, serving_environment
from packager.errors import PackagerError, TargetError, UnsupportedError
from packager.graph import export, load
from packager.manifest import Manifest
from packager.manifest import read as read_manifest

FROZEN = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
NO_BF16 = "this CPU has no native bfloat16 matmuls (no avx512_bf16 / amx_bf16 in /proc/cpuinfo)"
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason=NO_BF16)


@pytest.fixture(scope="module")
def bf16_export(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT exported with ``packager export --precision bf16`` (the real CLI, in-process)."""
    if not bf16_supported():
        pytest.skip(NO_BF16)
    out = tmp_path_factory.mktemp("bf16") / "export"
    assert main(["-q", "export", str(tiny_bert), "-o", str(out), "--precision", "bf16"]) == 0
    return out


def _setdefaults(model_py: str) -> dict[str, str]:
    """The ``os.environ.setdefault(NAME, VALUE)`` calls of a rendered model.py, as NAME -> VALUE."""
    out = {}
    for node in ast.walk(ast.parse(model_py)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setdefault"
                and ast.unparse(node.func.value) == "os.environ" and isinstance(node.args[0], ast.Constant)):
            out[node.args[0].value] = ast.unparse(node.args[1])
    return out


# ------------------------------------------------------------------------------------------- export
@needs_bf16
def test_bf16_export_records_precision_and_stays_within_reduced_thresholds_when_cpu_has_bfloat16(
        bf16_export, tiny_bert, corpus):
    manifest = read_manifest(bf16_export)
    assert manifest.precision == "bf16"
    embed, tokenize = v.graph_functions(load(bf16_export, manifest))
    reference = v.reference_model(tiny_bert)
    report = v.check(corpus, reference, embed, tokenize, precision="bf16")
    assert report.ok and report.reduced_precision, report.render()
    assert report.id_match_rate == 1.0, report.render()  # the tokenizer is the same graph: ids stay identical
    assert report.max_abs_diff <= 5e-3 and report.min_cosine >= 0.9999, report.render()
    # really reduced precision: the exact threshold refuses it
    strict = v.check(corpus, reference, embed, None)
    assert not strict.ok and strict.max_abs_diff > 1e-5 and "max abs diff" in strict.failures[0]


def test_fp32_is_the_default_export_and_manifests_without_precision_read_as_fp32(tiny_export, tmp_path):
    assert read_manifest(tiny_export).precision == "fp32"
    data = json.loads((tiny_export / "packager.json").read_text())
    del data["precision"]  # a manifest written before the field
    (tmp_path / "packager.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path).precision == "fp32"
    bf16 = Manifest.from_dict(dict(data, precision="bf16"))
    assert bf16.precision == "bf16" and Manifest.from_dict(bf16.to_dict()) == bf16
    with pytest.raises(TargetError, match="precision must be one of fp32, bf16, not 'int8'"):
        Manifest.from_dict(dict(data, precision="int8"))


def test_bf16_is_refused_before_anything_is_written_when_cpuinfo_lacks_bfloat16(tiny_bert, tmp_path, monkeypatch,
                                                                                 capsys):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni\n")
    monkeypatch.setattr(precision_module, "CPUINFO", str(fake))
    work = tmp_path / "work"
    work.mkdir()
    message = r"precision 'bf16' needs a CPU with native bfloat16 matmuls \(cpu flag avx512_bf16 or amx_bf16"
    with pytest.raises(UnsupportedError, match=message):
        export(tiny_bert, work / "lib" / "export", precision="bf16")
    with pytest.raises(UnsupportedError, match=message):  # before the model is even read
        export(tmp_path / "no-such-model", work / "x", precision="bf16")
    assert main(["export", str(tiny_bert), "-o", str(work / "cli" / "export"), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "needs a CPU with native bfloat16 matmuls" in err and str(fake) in err and "--precision" not in err
    assert main(["build", str(tiny_bert), "-o", str(work / "repo"), "--compose-dir", str(work / "compose"),
                 "--kubernetes", str(work / "k8s"), "--precision", "bf16"]) == 2
    assert "needs a CPU with native bfloat16 matmuls" in capsys.readouterr().err
    # no export, no repository, no stack, no bundle, no scratch or staging folder
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpuinfo", "work"]


def test_cli_has_precision_on_export_and_build_and_verify_defaults_to_the_export():
    parser = make_parser()
    for command in (["export", "-o", "out"], ["build"]):
        assert parser.parse_args(command).precision == "fp32"
        assert parser.parse_args([*command, "--precision", "bf16"]).precision == "bf16"
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--precision", "fp16"])
    verify = parser.parse_args(["verify", "--url", "http://127.0.0.1:8000", "--model", "m"])
    assert verify.precision is None and verify.max_abs_diff is None and verify.min_cosine is None
    assert set(PRECISIONS) == {"fp32", "bf16"} == set(v.THRESHOLDS)


def test_verify_precision_comes_from_the_option_else_the_export_manifest_else_fp32(tiny_export):
    fp32 = read_manifest(tiny_export)
    bf16 = dataclasses.replace(fp32, precision="bf16")
    assert _verified_precision(Namespace(precision=None, export=None), None) == "fp32"  # --url alone
    assert _verified_precision(Namespace(precision="bf16", export=None), None) == "bf16"  # --url --precision bf16
    assert _verified_precision(Namespace(precision=None, export="e"), bf16) == "bf16"  # --export (or --url --export)
    with pytest.raises(PackagerError, match="--precision fp32 contradicts e: its manifest says bf16"):
        _verified_precision(Namespace(precision="fp32", export="e"), bf16)


# ------------------------------------------------------------------------------------------- verify
def test_parity_thresholds_follow_the_precision_and_a_reduced_report_says_so():
    texts = ["a", "b"]
    expected = np.array([[0.6, 0.8], [1.0, 0.0]])
    got = expected + 2e-3
    exact = v.compare(texts, expected, got)
    assert not exact.ok and not exact.reduced_precision and "REDUCED" not in exact.render()
    assert exact.render().splitlines()[-1] == "  NOT OK"
    reduced = v.compare(texts, expected, got, precision="bf16")
    assert reduced.ok and reduced.reduced_precision
    text = reduced.render()
    assert text.startswith("parity over 2 sentences, REDUCED PRECISION (bf16 export, not exact parity):")
    assert "max abs <= 0.005, min cosine >= 0.9999, token ids identical" in text
    assert text.splitlines()[-1] == "  OK (reduced precision: bf16)"
    assert reduced.to_dict()["reduced_precision"] is True and reduced.to_dict()["precision"] == "bf16"
    # small vectors: the abs difference passes, the cosine does not
    small = np.array([[0.01, 0.0], [0.0, 0.01]])
    turned = v.compare(texts, small, small + [[0.0, 1e-3], [0.0, 0.0]], precision="bf16")
    assert not turned.ok and turned.failures == [f"min cosine {turned.min_cosine:.8f} < 0.9999 (at: 'a')"]
    # token ids must still be identical in bf16
    ids = v.compare(texts, expected, expected, [[1, 2], [3]], [[1, 2], [4]], precision="bf16")
    assert not ids.ok and "token ids identical for 50.00%" in ids.failures[0]
    # an explicit threshold replaces the precision's
    assert not v.compare(texts, expected, got, precision="bf16", max_abs_diff=1e-3).ok
    with pytest.raises(UnsupportedError, match="unsupported precision 'int8'"):
        v.compare(texts, expected, got, precision="int8")


@needs_bf16
def test_verify_cli_holds_a_bf16_export_to_the_reduced_thresholds_and_marks_the_report(bf16_export, tiny_bert,
                                                                                      tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["verify", str(tiny_bert), "--export", str(bf16_export), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "REDUCED PRECISION (bf16 export, not exact parity)" in out and "OK (reduced precision: bf16)" in out
    data = json.loads(report.read_text())
    assert data["ok"] and data["precision"] == "bf16" and data["reduced_precision"] is True
    assert data["thresholds"] == {"max_abs_diff": 5e-3, "min_cosine": 0.9999, "min_id_match": 1.0}
    assert data["id_match_rate"] == 1.0
    assert main(["verify", str(tiny_bert), "--export", str(bf16_export), "--precision", "fp32"]) == 2
    assert "contradicts" in capsys.readouterr().err
    assert main(["verify", str(tiny_bert), "--export", str(bf16_export), "--max-abs-diff", "1e-5"]) == 1
    assert "NOT OK (reduced precision: bf16)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- serving
def test_serving_environment_has_frozen_weights_for_bf16_only_in_compose_and_kubernetes():
    from packager.targets.compose import (
        StackOptions,
        render_compose,
        server_environment,
    )
    from packager.targets.kubernetes import KubernetesOptions, render

    assert serving_environment("fp32") == {} and serving_environment("bf16") == {FROZEN: "1"}
    for target in ("triton", "tfserving"):
        assert FROZEN not in server_environment(StackOptions(target=target))
        assert server_environment(StackOptions(target=target, precision="bf16"))[FROZEN] == "1"
    compose = yaml.safe_load(render_compose(StackOptions(precision="bf16"))["docker-compose.yml"])
    assert compose["services"]["triton"]["environment"][FROZEN] == "1"
    for precision, expected in (("fp32", None), ("bf16", "1")):
        files = render(KubernetesOptions(precision=precision), model_name="m")
        pod = yaml.safe_load(files["base/deployment.yaml"])["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env.get(FROZEN) == expected and env["TF_ENABLE_ONEDNN_OPTS"] == "1"
        kserve = yaml.safe_load(files["kserve/inferenceservice.yaml"])
        assert {e["name"]: e.get("value") for e in kserve["spec"]["predictor"]["triton"]["env"]}.get(FROZEN) == expected
    with pytest.raises(TargetError, match="precision must be one of fp32, bf16"):
        StackOptions(precision="int8")
    with pytest.raises(TargetError, match="precision must be one of fp32, bf16"):
        KubernetesOptions(precision="int8")


def test_triton_layout_of_an_fp32_export_does_not_set_frozen_weights(tiny_export, tmp_path):
    from packager.targets import build_from_export

    model_dir = build_from_export(tiny_export, target="triton", output=tmp_path / "repo", name="tiny")
    model_py = (model_dir / "1" / "model.py").read_text()
    assert FROZEN not in _setdefaults(model_py) and "TF_ENABLE_ONEDNN_OPTS" in _setdefaults(model_py)
    assert "PRECISION = 'fp32'" in model_py
    assert json.loads((model_dir / "packager-target.json").read_text())["export"]["precision"] == "fp32"


@needs_bf16
def test_build_cli_bf16_sets_frozen_weights_in_model_py_compose_and_kubernetes_when_cpu_has_bfloat16(tiny_bert,
                                                                                                    tmp_path):
    repo, compose, k8s = tmp_path / "repo", tmp_path / "compose", tmp_path / "k8s"
    assert main(["-q", "build", str(tiny_bert), "-o", str(repo), "--name", "tiny", "--compose-dir", str(compose),
                 "--kubernetes", str(k8s), "--precision", "bf16"]) == 0
    assert read_manifest(repo / "tiny" / "1" / "model.savedmodel").precision == "bf16"
    assert json.loads((repo / "tiny" / "packager-target.json").read_text())["export"]["precision"] == "bf16"
    model_py = (repo / "tiny" / "1" / "model.py").read_text()
    assert _setdefaults(model_py)[FROZEN] == "'1'"
    # set before TensorFlow is imported (oneDNN reads it in the serving process)
    assert model_py.index(f"os.environ.setdefault('{FROZEN}'") < model_py.index("import tensorflow as tf")
    stack = yaml.safe_load((compose / "triton-python" / "docker-compose.yml").read_text())
    assert stack["services"]["triton"]["environment"][FROZEN] == "1"
    pod = yaml.safe_load((k8s / "tiny" / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    assert {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}[FROZEN] == "1"


@needs_bf16
@pytest.mark.server
def test_verify_url_holds_a_served_bf16_export_to_reduced_thresholds_and_only_it_gets_frozen_weights(
        bf16_export, tiny_export, tiny_bert, tmp_path, capsys):
    """A real tritonserver (python backend) serving the bf16 and the fp32 export side by side."""
    from packager.serve import TritonServer, check_parity
    from packager.targets import build_from_export

    repo = tmp_path / "model_repository"
    build_from_export(bf16_export, target="triton", output=repo, name="tiny-bf16")
    build_from_export(tiny_export, target="triton", output=repo, name="tiny-fp32")
    with TritonServer(repo, ready_timeout=300) as srv:
        # the export the server serves tells verify its precision ...
        assert main(["verify", str(tiny_bert), "--url", srv.http_url, "--model", "tiny-bf16",
                     "--export", str(bf16_export)]) == 0
        assert "OK (reduced precision: bf16)" in capsys.readouterr().out
        # ... or the option does
        assert main(["verify", str(tiny_bert), "--url", srv.grpc_url, "--model", "tiny-bf16", "--protocol", "grpc",
                     "--precision", "bf16"]) == 0
        assert "REDUCED PRECISION (bf16 export" in capsys.readouterr().out
        # without either, the exact fp32 threshold applies, and the bf16 export does not meet it
        assert main(["verify", str(tiny_bert), "--url", srv.http_url, "--model", "tiny-bf16"]) == 1
        assert main(["verify", str(tiny_bert), "--url", srv.http_url, "--model", "tiny-fp32"]) == 0
        # packager serve --check: the precision comes from the repository (packager-target.json)
        lines: list[str] = []
        assert check_parity(srv, echo=lines.append)
        reports = "\n".join(lines)
        assert reports.count("OK (reduced precision: bf16)") == 2 and reports.count("REDUCED PRECISION") == 2
        log = srv.log_file.read_text(errors="replace")
    bf16_line = next(line for line in log.splitlines() if "model tiny-bf16 loaded on" in line)
    fp32_line = next(line for line in log.splitlines() if "model tiny-fp32 loaded on" in line)
    assert "precision bf16;" in bf16_line and "frozen weights 1" in bf16_line, bf16_line
    assert "precision fp32;" in fp32_line and "frozen weights 0" in fp32_line, fp32_line
