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

# Each case runs real `packager build` processes and signals them: process-level, so slow.
pytestmark = pytest.mark.slow


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
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def repo_v1(tmp_path_factory, tiny_bert):
    repo = tmp_path_factory.mktemp("interrupted") / "model_repository"
    proc = _build(tiny_bert, repo, 1)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return repo


def _signal_inside(proc: subprocess.Popen, folder: Path, prefix: str, sig: int, timeout: float = 600) -> bool:
    """Wait until a folder named ``prefix*`` appears in ``folder``, freeze the build there (SIGSTOP),
    send ``sig`` and let it go on. Returns whether the build was still inside that window when frozen."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if any(n.startswith(prefix) for n in os.listdir(folder)):
            os.killpg(proc.pid, signal.SIGSTOP)
            inside = any(n.startswith(prefix) for n in os.listdir(folder))
            os.killpg(proc.pid, sig)
            os.killpg(proc.pid, signal.SIGCONT)
            return inside
    return False


# The two windows of a build: while the graph is exported (a folder beside the repository), and while
# the new model tree is staged for the swap (a folder beside the repository too: Triton must never
# see a half-written model, so nothing is staged inside the repository itself).
WINDOWS = {"export": ".model_repository.packager-work-", "write": ".m.packager-tmp-"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_build_leaves_previous_version_intact_when_interrupted(repo_v1, tiny_bert, sig, window):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - registers the tokenizer ops for the loads below

    from packager.writer import recover, work_dir_beside

    before = _snapshot(repo_v1)
    for _attempt in range(5):  # a window can be shorter than one poll; then the build finished: try again
        proc = _build(tiny_bert, repo_v1, 2, "--force")
        inside = _signal_inside(proc, repo_v1.parent, WINDOWS[window], sig)
        out, _ = proc.communicate(timeout=300)
        if inside:
            break
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
        subprocess.run(["rm", "-rf", str(repo_v1 / "m" / "2")], check=True)
        before = _snapshot(repo_v1)
    assert inside, f"the build never stayed in its {window} window long enough to be signalled"
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), out.decode(errors="replace")[-2000:]
    # Cut off: the repository is exactly as before; no version 2, no partial folder inside it.
    assert _snapshot(repo_v1) == before
    assert sorted(p.name for p in repo_v1.iterdir()) == ["m"]
    assert not (repo_v1 / "m" / "2").exists()
    leftovers = [p for p in repo_v1.parent.iterdir() if p.name.startswith(tuple(WINDOWS.values()))]
    if sig == signal.SIGINT:
        assert not leftovers, leftovers  # an interrupted build cleans up after itself
    else:
        # What the next build runs first: the killed build's folders are removed.
        recover(repo_v1 / "m", repo_v1.parent)
        with work_dir_beside(repo_v1):
            pass
        assert not [p for p in repo_v1.parent.iterdir() if p.name.startswith(tuple(WINDOWS.values()))]
    text_format.Parse((repo_v1 / "m" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    loaded = tf.saved_model.load(str(repo_v1 / "m" / "1" / "model.savedmodel"))
    assert "serving_default" in loaded.signatures
