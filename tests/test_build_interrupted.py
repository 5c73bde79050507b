"""An interrupted `packager build` (SIGINT or SIGKILL mid-way) leaves the previous repository and
version intact and loadable, with no partial folder inside the repository."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parent.parent


def _build(model_dir: Path, repo: Path, version: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "packager", "-q", "build", str(model_dir), "--target", "triton", "-o", str(repo),
           "--name", "m", "--version", str(version), "--no-compose", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=default_sigint)


def default_sigint() -> None:
    """Runs in the child before exec: a runner started in the background (``cmd &`` without job
    control) passes SIGINT down as ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".packager-lock")}


@pytest.fixture(scope="module")
def repo_v1(tmp_path_factory, tiny_bert):
    repo = tmp_path_factory.mktemp("interrupted") / "model_repository"
    proc = _build(tiny_bert, repo, 1)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return repo


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("delay", [3.0, 12.0])
def test_build_leaves_previous_version_intact_when_interrupted(repo_v1, tiny_bert, sig, delay):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - registers the tokenizer ops for the loads below

    before = _snapshot(repo_v1)
    proc = _build(tiny_bert, repo_v1, 2)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.communicate(timeout=300)
    after = _snapshot(repo_v1)
    # Either the build was cut off (nothing changed) or it had finished (version 2 complete, version 1 kept).
    changed = {k for k in after if before.get(k) != after[k]} | (before.keys() - after.keys())
    # (a finished build also rewrites the model-level files: config.pbtxt, packager-target.json, warmup/)
    assert not [k for k in changed if k.startswith("m/1/")], sorted(changed)[:10]
    assert all(k in after and after[k] == v for k, v in before.items() if k.startswith("m/1/"))
    # No partial or staging folder is left inside the repository (Triton refuses to start on one).
    assert sorted(p.name for p in repo_v1.iterdir() if not p.name.endswith(".packager-lock")) == ["m"]
    text_format.Parse((repo_v1 / "m" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    loaded = tf.saved_model.load(str(repo_v1 / "m" / "1" / "model.savedmodel"))
    assert "serving_default" in loaded.signatures
    if (repo_v1 / "m" / "2").exists():  # finished before the signal: complete, loadable
        assert "serving_default" in tf.saved_model.load(str(repo_v1 / "m" / "2" / "model.savedmodel")).signatures
