"""The wheel is the product: built from this checkout, installed into a fresh venv (on top of the
cached dependencies), it builds Triton and TF-Serving layouts from a folder outside the checkout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the checkout's files (what a clean clone holds): setuptools writes build/
    # and *.egg-info next to the sources, and no test may write into the repository.
    src = work / "src"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for rel in listed:
        path = ROOT / rel
        if not (path.exists() or path.is_symlink()):
            continue  # deleted in the working tree
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            (src / rel).symlink_to(os.readlink(path))
        elif path.is_file():
            (src / rel).write_bytes(path.read_bytes())
    dist = work / "dist"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                          str(src)], capture_output=True, text=True, timeout=600, cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = dist.glob("packager-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # The heavy dependencies come from the cached venv (not reinstalled): its site-packages is added
    # as a plain path, so its editable-install hook for the checkout is NOT activated.
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "cached-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return venv


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([str(venv / "bin" / "packager"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)


def test_wheel_ships_templates_and_imports_from_its_own_site_packages_when_installed(wheel_venv, tmp_path):
    code = ("import json, packager, packager.templating as t; "
            "print(json.dumps([packager.__file__, str(t.templates_dir())]))")
    out = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, templates = json.loads(out.stdout.strip().splitlines()[-1])
    assert str(wheel_venv) in module_file and str(ROOT) not in module_file
    assert str(wheel_venv) in templates and (Path(templates) / "triton" / "config.pbtxt.j2").is_file()


@pytest.mark.parametrize("target, marker", [("triton", "all-minilm-l6-v2/config.pbtxt"),
                                            ("tfserving", "models.config")])
def test_wheel_builds_a_layout_outside_the_checkout_when_installed(wheel_venv, tmp_path, target, marker):
    out = _run(wheel_venv, tmp_path, "-q", "build", "--target", target, "-o", "out", "--compose-dir", "stacks")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / marker).is_file()
    assert (tmp_path / "stacks").is_dir() and any((tmp_path / "stacks").rglob("docker-compose.yml"))
