#!/usr/bin/env python3
"""Generate ``packager/data/opsets/*.json``: every op each TF / TF-Text release registers.

For each release pair below this script makes a venv with exactly that ``tensorflow`` and
``tensorflow-text`` from PyPI (cached under ``~/.cache/packager/compat/<hash>``, shared with the
compatibility test), lists the registry after plain ``import tensorflow`` (core ops), then loads
each ``tensorflow_text/python/ops/*.so`` alone in a fresh process and diffs the registry: that
diff is the library's op list. Each op is stored with its attr names so the build check can also
catch attrs an older runtime does not know.

Usage:
    .venv/bin/python tools/opsets.py                 # all pairs (builds missing venvs, 2 at once)
    .venv/bin/python tools/opsets.py 2.17.0/2.17.0   # one pair (tensorflow/tensorflow-text)
    .venv/bin/python tools/opsets.py --drop-venvs    # delete venvs the compat test does not use

The venv helpers (:func:`ensure_venv`) are also what ``tests/test_compat.py`` uses.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from packager.settings import work_dir  # noqa: E402
from packager.oplibs import OPSETS_DIR, installed_versions, registry_dump, text_ops_dir  # noqa: E402

# (tensorflow, tensorflow-text) pairs with cp311 wheels of both on PyPI. TF 2.13 has no cp311
# tensorflow-text wheel: its file holds core ops only (TF-Serving 2.13 links TF-Text 2.12.1).
PAIRS: list[tuple[str, str]] = [
    ("2.12.1", "2.12.1"),
    ("2.13.1", ""),
    ("2.14.1", "2.14.0"),
    ("2.15.1", "2.15.0"),
    ("2.16.2", "2.16.1"),
    ("2.17.0", "2.17.0"),
    ("2.18.1", "2.18.1"),
    ("2.19.1", "2.19.0"),
    ("2.20.0", "2.20.0"),
    ("2.21.0", "2.21.1"),
]
# The venvs the compatibility test loads the export in: TF-Serving 2.12-2.19's TF-Text, Triton
# 25.02's TF, TF-Serving 2.20's pair (the python backend's pair is the project venv itself).
COMPAT_PAIRS: list[tuple[str, str]] = [("2.12.1", "2.12.1"), ("2.17.0", "2.17.0"), ("2.20.0", "2.20.0")]
COMPAT_DIR = work_dir("compat")


def base_python() -> str:
    """The interpreter venvs are made from (the base of the running venv, same minor version)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def venv_key(tf: str, tf_text: str, python: str | None = None) -> str:
    python = python or base_python()
    ver = subprocess.run([python, "-c", "import sys;print(sys.version.split()[0])"], capture_output=True, text=True).stdout.strip()
    return hashlib.sha256(f"tensorflow=={tf}|tensorflow-text=={tf_text}|python {ver}".encode()).hexdigest()[:16]


def venv_dir(tf: str, tf_text: str) -> Path:
    return COMPAT_DIR / venv_key(tf, tf_text)


def ensure_venv(tf: str, tf_text: str, log=print) -> tuple[Path, float]:
    """A cached venv with exactly ``tensorflow==tf`` and ``tensorflow-text==tf_text``.

    Built in a temp folder and renamed into place (a half-built venv is never reused); only
    ``bin/python`` is used, so the rename does not matter for console-script shebangs.

    Returns:
        (venv folder, seconds spent building: 0.0 when cached).
    """
    final = venv_dir(tf, tf_text)
    if (final / ".complete").is_file():
        return final, 0.0
    t0 = time.monotonic()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    reqs = [f"tensorflow=={tf}"] + ([f"tensorflow-text=={tf_text}"] if tf_text else [])
    log(f"building venv {final.name} ({' '.join(reqs)})")
    try:
        subprocess.run([base_python(), "-m", "venv", str(tmp)], check=True)
        proc = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", *reqs], capture_output=True, text=True)
        if proc.returncode != 0:
            err = "\n".join(l for l in proc.stderr.splitlines() if "is ignored" not in l)
            raise RuntimeError(f"pip install {' '.join(reqs)} failed:\n{err[-3000:]}")
        seconds = time.monotonic() - t0
        (tmp / ".complete").write_text(json.dumps({"tensorflow": tf, "tensorflow_text": tf_text,
                                                   "build_seconds": round(seconds, 1)}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"venv {final.name} ready in {seconds:.0f}s")
    return final, seconds


def ensure_venvs(pairs, jobs: int = 3, log=print) -> dict[tuple[str, str], tuple[Path, float]]:
    """Build (or reuse) several venvs at once; pip time is mostly download and unzip."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pair: pool.submit(ensure_venv, *pair, log=log) for pair in pairs}
        return {pair: f.result() for pair, f in futures.items()}


def text_ops_dir_of(venv: Path) -> Path | None:
    found = list(venv.glob("lib/python*/site-packages/tensorflow_text/python/ops"))
    return found[0] if found else None


def opset_name(tf: str, tf_text: str) -> str:
    return f"tf-{tf}" + (f"_text-{tf_text}" if tf_text else "") + ".json"


def generate(tf: str, tf_text: str, log=print) -> Path:
    if (tf, tf_text) == installed_versions():  # the project venv already is that pair
        python, ops_dir = sys.executable, text_ops_dir()
    else:
        venv, _ = ensure_venv(tf, tf_text, log=log)
        python = str(venv / "bin" / "python")
        ops_dir = text_ops_dir_of(venv) if tf_text else None
    dump = registry_dump(python, ops_dir)
    if dump["tensorflow"] != tf:
        raise RuntimeError(f"venv {venv} has TF {dump['tensorflow']}, expected {tf}")
    data = {
        "tensorflow": tf,
        "tensorflow_text": tf_text,
        "python": platform.python_version(),
        "platform": f"{platform.system().lower()}_{platform.machine()}",
        "generated_by": "tools/opsets.py",
        "generated_on": _dt.date.today().isoformat(),
        "method": "registry after `import tensorflow` (core_ops); each tensorflow_text/python/ops/*.so "
                  "loaded alone in a fresh process, registry diffed (libraries, text_ops)",
        "load_errors": dump["errors"],
        "libraries": dump["libraries"],
        "core_ops": dump["core_ops"],
        "text_ops": dump["text_ops"],
    }
    OPSETS_DIR.mkdir(parents=True, exist_ok=True)
    out = OPSETS_DIR / opset_name(tf, tf_text)
    # one op per line: readable diffs between releases, still compact
    lines = ["{"]
    head = {k: v for k, v in data.items() if k not in ("libraries", "core_ops", "text_ops")}
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)},")
    for section in ("libraries", "core_ops", "text_ops"):
        items = sorted(data[section].items())
        lines.append(f"  {json.dumps(section)}: {{")
        lines += [f"    {json.dumps(k)}: {json.dumps(v)}" + ("," if i < len(items) - 1 else "") for i, (k, v) in enumerate(items)]
        lines.append("  }" + ("," if section != "text_ops" else ""))
    lines.append("}")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(out.read_text())  # the hand-formatted file must stay valid JSON
    log(f"wrote {out.relative_to(ROOT)}: {len(data['core_ops'])} core ops, {len(data['text_ops'])} TF-Text ops "
        f"in {len(data['libraries'])} libraries" + (f", load errors: {data['load_errors']}" if data["load_errors"] else ""))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="*", help="tensorflow/tensorflow-text pairs (default: all of PAIRS)")
    p.add_argument("--jobs", type=int, default=2, help="venvs built at once")
    p.add_argument("--drop-venvs", action="store_true", help="afterwards delete venvs the compat test does not use")
    p.add_argument("--missing", action="store_true", help="only pairs without a generated file")
    args = p.parse_args(argv)
    pairs = [tuple((s.split("/") + [""])[:2]) for s in args.pairs] or PAIRS
    if args.missing:
        pairs = [pr for pr in pairs if not (OPSETS_DIR / opset_name(*pr)).is_file()]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for path in pool.map(lambda pr: generate(*pr), pairs):
            pass
    if args.drop_venvs:
        for pair in pairs:
            if pair not in COMPAT_PAIRS:
                shutil.rmtree(venv_dir(*pair), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
