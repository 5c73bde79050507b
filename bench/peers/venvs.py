"""Virtual environments for the peers whose packages cannot live beside TF (own pins of torch,
transformers, onnxruntime ...).

    .venv/bin/python -m bench.peers.venvs            # build (or find) every peer venv
    .venv/bin/python -m bench.peers.venvs openvino   # one of them

Each venv is built from ``bench/peers/<name>.txt`` (plus the post-install steps in ``POST``) and
cached outside the repository under ``~/.cache/packager/peer-<name>-<hash>``, the hash covering the
requirements text, the post steps and the Python version, so editing a recipe builds a fresh venv
and an unchanged one is reused across clones. A venv is built in ``<dir>.tmp`` and moved into place
only when complete (a ``.complete`` marker), so an interrupted build is never mistaken for a good one.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("PACKAGER_CACHE", Path.home() / ".cache" / "packager"))
PEERS = ("openvino", "fastembed", "infinity")

# Steps after `pip install -r`, as pip arguments. They are part of the cache key.
POST: dict[str, list[list[str]]] = {
    # pip brings a CUDA torchvision whose ops do not register against the CPU torch:
    # `import transformers` then fails with "operator torchvision::nms does not exist".
    "openvino": [["uninstall", "-y", "torchvision"]],
    "infinity": [["uninstall", "-y", "torchvision"]],
}
# The torch CPU wheel lies on this machine's disk (PIP_FIND_LINKS); installing it first keeps pip
# from resolving a CUDA build of several GB.
PRE: dict[str, list[list[str]]] = {
    "openvino": [["install", "torch==2.13.0"]],
    "infinity": [["install", "torch==2.13.0"]],
}


def requirements(name: str) -> Path:
    path = HERE / f"{name}.txt"
    if not path.is_file():
        raise SystemExit(f"unknown peer venv {name!r}; known: {', '.join(PEERS)}")
    return path


def venv_dir(name: str) -> Path:
    key = "\n".join([requirements(name).read_text(), repr(PRE.get(name)), repr(POST.get(name)),
                     f"{sys.version_info.major}.{sys.version_info.minor}"])
    return CACHE / f"peer-{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def python(name: str) -> Path | None:
    """The peer venv's python if it is built, else None (nothing is built here)."""
    d = venv_dir(name)
    return d / "bin" / "python" if (d / ".complete").is_file() else None


def ensure(name: str, *, echo=print, log: Path | None = None) -> Path:
    """Build the peer venv if needed; return its python. Raises ``RuntimeError`` naming the failed step."""
    found = python(name)
    if found:
        return found
    final = venv_dir(name)
    tmp = final.with_name(final.name + ".tmp")
    log = log or final.with_name(final.name + ".log")
    echo(f"   building peer venv {name} in {final} (log {log}; several minutes, first time only)")
    shutil.rmtree(tmp, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    base = sys.executable
    # The shared venv's python is itself a venv python; build from the interpreter underneath.
    base = getattr(sys, "_base_executable", base) or base
    steps = [[base, "-m", "venv", str(tmp)],
             [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip>=24", "setuptools", "wheel"]]
    pip = [str(tmp / "bin" / "python"), "-m", "pip"]
    steps += [pip + s for s in PRE.get(name, [])]
    steps.append(pip + ["install", "-r", str(requirements(name))])
    steps += [pip + s for s in POST.get(name, [])]
    with open(log, "w") as out:
        for step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            proc = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT)
            if proc.returncode:
                raise RuntimeError(f"peer venv {name}: `{' '.join(step[-4:])}` failed (exit {proc.returncode}); see {log}")
    # venvs are not relocatable: rewrite the paths baked into scripts and pyvenv.cfg.
    for f in list((tmp / "bin").iterdir()) + [tmp / "pyvenv.cfg"]:
        try:
            if f.is_file() and not f.is_symlink():
                text = f.read_text()
                if str(tmp) in text:
                    f.write_text(text.replace(str(tmp), str(final)))
        except (UnicodeDecodeError, OSError):
            continue
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (final / ".complete").touch()
    return final / "bin" / "python"


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(PEERS)
    rc = 0
    for name in names:
        try:
            print(f"{name}: {ensure(name)}")
        except RuntimeError as exc:
            print(f"{name}: FAILED: {exc}")
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
