"""Server-version compatibility, proven for real (issue 5).

The default export is made once with the project's TF 2.21 / TF-Text 2.21.1, then loaded in a
fresh process of each release venv (exact ``tensorflow`` + ``tensorflow-text`` pairs from PyPI,
cached under ``~/.cache/packager/compat``), registering only the op libraries the manifest lists
from THAT venv's TF-Text. The shipped corpus goes through it and is compared with
sentence-transformers at the usual thresholds. For every venv, ``check_compatible`` must agree
with what really happened: accepted where the graph loads and matches, refused where it does not.
A graph using ``TFText>RoundRobinTrim`` proves the refusal path against a real load failure.

Results go to the test run's temp folder, or to ``PACKAGER_COMPAT_RESULTS`` when set (what
``tools/compat_matrix.py`` does before it turns them into ``docs/compatibility.md``).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import opsets as opset_tools  # tools/opsets.py: venv helpers (tools/ is on the test path)

from packager.compat import INFORMATIONAL_ATTRS, check_compatible, find_problems
from packager.errors import TargetError
from packager.oplibs import load_opset, read_graph_ops
from packager.servers import SERVERS
from packager.verify import compare

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.network]

PROBE = ROOT / "tools" / "compat_probe.py"
PROJECT = ("project", "project")  # the project venv itself (TF 2.21.0 / TF-Text 2.21.1)
RUNTIMES = [PROJECT, *opset_tools.COMPAT_PAIRS]


def _label(pair) -> str:
    return "project venv" if pair == PROJECT else f"TF {pair[0]} / TF-Text {pair[1]}"


# ---------------------------------------------------------------- session fixtures
@pytest.fixture(scope="session")
def results(tmp_path_factory):
    out = Path(os.environ.get("PACKAGER_COMPAT_RESULTS") or tmp_path_factory.getbasetemp() / "compat-results.json")
    data = {"generated_on": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "runtimes": {}, "servers": [], "refusal": {}}
    yield data
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def venvs(results):
    """Every compat venv, built in parallel (pip time is mostly download + unzip); seconds measured."""
    t0 = time.monotonic()
    built = opset_tools.ensure_venvs(opset_tools.COMPAT_PAIRS, jobs=len(opset_tools.COMPAT_PAIRS), log=lambda m: None)
    results["venv_build_wall_seconds"] = round(time.monotonic() - t0, 1)
    out = {PROJECT: (Path(sys.executable), 0.0)}
    for pair, (venv, seconds) in built.items():
        cached = json.loads((venv / ".complete").read_text()).get("build_seconds")
        out[pair] = (venv / "bin" / "python", seconds)
        results.setdefault("venv_builds", {})[_label(pair)] = {"seconds_this_run": round(seconds, 1), "first_build_seconds": cached}
    return out


@pytest.fixture(scope="session")
def export(tmp_path_factory, results):
    """The default export of the default model, made with the project's TF 2.21 / TF-Text 2.21.1."""
    from packager.graph import export as do_export

    out = tmp_path_factory.mktemp("compat") / "export"
    manifest = do_export(None, out)
    results["graph"] = "default export of the default model (all-MiniLM-L6-v2)"
    results["export"] = {k: v for k, v in manifest.to_dict().items()
                         if k in ("tensorflow", "tensorflow_text", "op_libraries", "custom_ops")}
    return out, manifest


# more graph families, each also loaded in every runtime: key -> (model fixture, what the results call it)
FAMILIES = {
    "bpe": ("tiny_qwen3_bpe", "tiny Qwen3 decoder embedder with an in-graph byte-level BPE tokenizer"),
    "sentencepiece": ("tiny_xlmr", "tiny XLM-R encoder with an in-graph SentencePiece (Unigram) tokenizer"),
}


@pytest.fixture(scope="session")
def family(request, exports, texts, results):
    """``family(key)`` -> (export dir, manifest, sentence-transformers reference), built once per key."""
    from packager.manifest import read
    from packager.verify import reference_embeddings, reference_ids, reference_model

    built = {}

    def get(key: str):
        if key not in built:
            fixture, what = FAMILIES[key]
            model = reference_model(request.getfixturevalue(fixture))
            out = exports(fixture)
            results[f"{key}_graph"] = what
            corpus, _ = texts
            built[key] = (out, read(out), (reference_ids(model, corpus), reference_embeddings(model, corpus),
                                           "sentence-transformers"))
        return built[key]

    return get


@pytest.fixture(scope="session")
def texts(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.json"
    path.write_text(json.dumps(corpus, ensure_ascii=False), encoding="utf-8")
    return corpus, path


def run_probe(python: Path, export_dir: Path, corpus_json: Path, out: Path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(python), str(PROBE), str(export_dir), str(corpus_json), str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"probe crashed in {python}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_outputs(npz: Path, runner: str) -> tuple[list[list[int]], np.ndarray]:
    data = np.load(npz)
    ids, lengths = data[f"{runner}_ids"], data[f"{runner}_lengths"]
    rows = np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return [r.tolist() for r in rows], data[f"{runner}_embeddings"]


@pytest.fixture(scope="session")
def reference(texts, default_model_dir):
    """Expected token ids and embeddings: sentence-transformers on the same corpus."""
    from packager.verify import reference_embeddings, reference_ids, reference_model

    corpus, _ = texts
    model = reference_model(default_model_dir)
    return reference_ids(model, corpus), reference_embeddings(model, corpus), "sentence-transformers"


# ---------------------------------------------------------------- the claims
def _check_runtime(pair, export_dir, manifest, texts, reference, venvs, table: dict, tmp_path) -> None:
    """Load ``export_dir`` in the venv of ``pair`` (C++ loader, TF1 session, TF2) and hold it to parity;
    the op-set check must agree with what really happened."""
    corpus, corpus_json = texts
    python, _ = venvs[pair]
    tf_v, text_v = (manifest.tensorflow, manifest.tensorflow_text) if pair == PROJECT else pair
    problems = find_problems(read_graph_ops(export_dir).ops, load_opset(tf_v, text_v))
    rep = run_probe(python, export_dir, corpus_json, tmp_path / "out.npz")
    # the verdict check_compatible gives (strict: an attr the release does not know refuses it too)
    fatal = [p for p in problems if p not in INFORMATIONAL_ATTRS]
    row = {"tensorflow": rep["tensorflow"], "tensorflow_text": rep["tensorflow_text"], "python": rep["python"],
           "check": "refused" if fatal else "accepted",
           "problems": [list(p) for p in problems], "loaded": rep["loaded"], "error": rep["error"],
           "loaders": rep["loaders"], "missing_libraries": rep.get("missing_libraries", []),
           "venv_build_seconds": round(venvs[pair][1], 1), "reference": reference[2]}
    table[_label(pair)] = row
    if pair != PROJECT:
        assert (rep["tensorflow"], rep["tensorflow_text"]) == pair
    if row["check"] == "refused":
        # the checker refuses: the release must really fail to load the graph
        assert not rep["loaded"], f"check refused {pair} ({problems}) but the graph loaded there"
        return
    assert rep["loaded"], f"check accepted {pair} but loading failed: {rep['error']}"
    exp_ids, exp_emb, _ = reference
    for runner in ("session", "tf2"):
        got_ids, got_emb = read_outputs(tmp_path / "out.npz", runner)
        report = compare(corpus, exp_emb, got_emb, exp_ids, got_ids)
        row[runner] = {"n": report.n, "id_match_rate": report.id_match_rate, "max_abs_diff": report.max_abs_diff,
                       "min_cosine": report.min_cosine, "ok": report.ok, "failures": report.failures}
    row.update(n=len(corpus), id_match_rate=min(row[r]["id_match_rate"] for r in ("session", "tf2")),
               max_abs_diff=max(row[r]["max_abs_diff"] for r in ("session", "tf2")),
               parity_ok=all(row[r]["ok"] for r in ("session", "tf2")))
    assert row["parity_ok"], "\n".join(f"{r}: {row[r]['failures']}" for r in ("session", "tf2"))


PAIR_IDS = {"ids": lambda p: "project" if p == PROJECT else f"tf{p[0]}-text{p[1]}"}


@pytest.mark.parametrize("pair", RUNTIMES, **PAIR_IDS)
def test_compat_export_loads_and_matches_when_checker_accepts_release(pair, export, texts, reference, venvs, results, tmp_path):
    _check_runtime(pair, *export, texts, reference, venvs, results["runtimes"], tmp_path)


@pytest.mark.parametrize("pair", RUNTIMES, **PAIR_IDS)
@pytest.mark.parametrize("key", list(FAMILIES))
def test_compat_graph_family_loads_and_matches_when_checker_accepts_release(key, pair, family, texts, venvs, results,
                                                                            tmp_path):
    """A byte-level BPE decoder graph and a SentencePiece graph (their tokenizers are core TF ops) in every runtime."""
    export_dir, manifest, reference = family(key)
    _check_runtime(pair, export_dir, manifest, texts, reference, venvs, results.setdefault(f"{key}_runtimes", {}),
                   tmp_path)


def test_compat_check_agrees_with_runtimes_when_every_server_is_checked(export, results):
    """Each server in the table is accepted or refused; the servers whose exact TF / TF-Text pair
    has a venv row must get the same answer as that row's real load."""
    export_dir, _ = export
    rows = []
    for srv in SERVERS:
        try:
            check_compatible(export_dir, srv)
            verdict, message = "accepted", ""
        except TargetError as exc:
            verdict, message = "refused", str(exc)
        evidence = next((_label(p) for p in RUNTIMES if p != PROJECT and p == (srv.tensorflow, srv.tensorflow_text)), None)
        if srv.kind == "triton-python":
            evidence = _label(PROJECT)
        rows.append({"server": srv.label, "key": srv.key, "image": srv.image, "tensorflow": srv.tensorflow,
                     "tensorflow_text": srv.tensorflow_text, "check": verdict, "message": message,
                     "evidence": evidence or "op set only"})
    results["servers"] = rows
    # what in the graph each generated release lacks (ops refuse; attrs are ignored at load)
    from packager.oplibs import all_opsets

    graph = read_graph_ops(export_dir).ops
    # a TF release without a TF-Text wheel (2.13) is scanned with TF-Serving's TF-Text 2.12.1
    scans = [s if s.tensorflow_text else s.combine(load_opset("2.12.1", "2.12.1")) for s in all_opsets()]
    results["opset_scan"] = {f"TF {s.tensorflow} / TF-Text {s.tensorflow_text}": [list(p) for p in find_problems(graph, s)]
                             for s in scans}
    assert len(rows) == len(SERVERS)
    for row in rows:
        ran = results["runtimes"].get(row["evidence"])
        if ran is not None:
            assert (row["check"] == "accepted") == bool(ran["loaded"] and ran.get("parity_ok", False)), row


def test_compat_build_refuses_release_when_graph_uses_round_robin_trim(venvs, texts, tmp_path, results):
    """TF-Text 2.12.1 (TF-Serving 2.12-2.19) has no TFText>RoundRobinTrim: the check refuses it,
    naming the op and the releases that have it, and that venv really cannot load the graph."""
    from oplib_graphs import save_standin

    rr = tmp_path / "round_robin"
    save_standin(rr, trim="round_robin")
    with pytest.raises(TargetError) as err:
        check_compatible(rr, "tfserving:2.12")
    msg = str(err.value)
    assert "TFText>RoundRobinTrim" in msg and "_trimmer_ops.so" in msg and "TF-Text 2.14.0," in msg and "2.20.0" in msg, msg
    check_compatible(rr, "tfserving:2.20")  # TF-Text 2.20.0 has it
    _, corpus_json = texts
    old = run_probe(venvs[("2.12.1", "2.12.1")][0], rr, corpus_json, tmp_path / "old.npz")
    new = run_probe(venvs[("2.20.0", "2.20.0")][0], rr, corpus_json, tmp_path / "new.npz")
    results["refusal"] = {"graph": "stand-in using text.RoundRobinTrimmer", "check_message": msg,
                          "tf_2_12_load_error": old["error"], "tf_2_20_loaded": new["loaded"]}
    assert not old["loaded"] and "RoundRobinTrim" in (old["error"] or ""), old
    assert new["loaded"], new["error"]
