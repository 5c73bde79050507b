"""Which TF-Text op libraries a SavedModel needs, and whether a server's TF / TF-Text can run it.

Three jobs, all driven by data generated from the real packages (never a hand-typed op list):

* **analyse a graph**: read ``saved_model.pb`` (graph nodes + every function in its library) and
  list the op types it uses, with the non-default attrs each node carries;
* **map ops to libraries**: which ``tensorflow_text/python/ops/*.so`` registers each TF-Text op.
  The map comes from loading each library in a fresh process and diffing the registered ops
  (:func:`derive_library_map`); ``tools/opsets.py`` stores it, with every op of that TF and
  TF-Text release, in ``packager/data/opsets/*.json``;
* the check against a server's op set lives in :mod:`packager.compat`, which knows the server
  table too (this module does not).

It also loads op libraries in-process (:func:`load_op_libraries`) and fetches the op libraries
of another TF-Text release from PyPI for a server image (:func:`fetch_op_libraries`).

Example:
    >>> analyze_saved_model("exports/minilm")["op_libraries"]
    ['_fast_wordpiece_tokenizer.so']
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import PackagerError, TargetError
from .settings import cache_dir, work_dir

OPSETS_DIR = Path(__file__).with_name("data") / "opsets"
TEXT_OPS_SUBDIR = Path("tensorflow_text") / "python" / "ops"


# ---------------------------------------------------------------- op sets (generated data)
@dataclass(frozen=True)
class OpSet:
    """Every op registered by one ``tensorflow`` + ``tensorflow-text`` release pair.

    Attributes:
        tensorflow: the TF version the core ops come from.
        tensorflow_text: the TF-Text version the library ops come from ("" if none).
        core: op name -> attr names, for ops registered by ``import tensorflow``.
        text: op name -> attr names, for ops registered by the TF-Text libraries.
        libraries: TF-Text library file name -> the ops it registers.
    """

    tensorflow: str
    tensorflow_text: str
    core: Mapping[str, tuple[str, ...]]
    text: Mapping[str, tuple[str, ...]]
    libraries: Mapping[str, tuple[str, ...]]

    def attrs(self, op: str) -> tuple[str, ...] | None:
        """The attr names ``op`` accepts here, or ``None`` when the op is not registered."""
        found = self.core.get(op)
        return found if found is not None else self.text.get(op)

    def library_of(self, op: str) -> str | None:
        for lib, ops in self.libraries.items():
            if op in ops:
                return lib
        return None

    def combine(self, text_from: "OpSet") -> "OpSet":
        """This release's core ops with another release's TF-Text ops (how TF-Serving links them)."""
        return OpSet(self.tensorflow, text_from.tensorflow_text, self.core, text_from.text, text_from.libraries)


def _parse_opset(data: dict) -> OpSet:
    core = {op: tuple(a) for op, a in data["core_ops"].items()}
    text = {op: tuple(a) for op, a in data.get("text_ops", {}).items()}
    libs = {lib: tuple(ops) for lib, ops in data.get("libraries", {}).items()}
    return OpSet(data["tensorflow"], data.get("tensorflow_text") or "", core, text, libs)


@functools.lru_cache(maxsize=None)
def opset_files() -> tuple[tuple[str, str, Path], ...]:
    """(tensorflow, tensorflow_text, path) for every generated op-set file, oldest first."""
    out = []
    for path in sorted(OPSETS_DIR.glob("*.json")):
        head = json.loads(path.read_text(encoding="utf-8"))
        out.append((head["tensorflow"], head.get("tensorflow_text") or "", path))
    return tuple(sorted(out, key=lambda t: (version_key(t[0]), version_key(t[1]))))


@functools.lru_cache(maxsize=None)
def _load_path(path: Path) -> OpSet:
    return _parse_opset(json.loads(path.read_text(encoding="utf-8")))


def load_opset(tensorflow: str, tensorflow_text: str | None = None) -> OpSet:
    """The op set of a TF release (core ops) with a TF-Text release's library ops.

    Core ops are matched on TF major.minor (patch releases do not change the op registry);
    TF-Text ops on the exact TF-Text version, since servers link one exact release.

    Raises:
        TargetError: no generated op set covers that version (run ``tools/opsets.py``).
    """
    files = opset_files()
    core = [p for tf, _, p in files if minor(tf) == minor(tensorflow)]
    if not core:
        known = sorted({minor(tf) for tf, _, _ in files}, key=version_key)
        raise TargetError(f"no op set for TensorFlow {tensorflow} (generated: {', '.join(known)}); run tools/opsets.py")
    base = _load_path(core[-1])
    if tensorflow_text is None:
        return base
    text = [p for _, tt, p in files if tt == tensorflow_text]
    if not text:
        known = sorted({tt for _, tt, _ in files if tt}, key=version_key)
        raise TargetError(f"no op set for TF-Text {tensorflow_text} (generated: {', '.join(known)}); run tools/opsets.py")
    return base.combine(_load_path(text[-1]))


def all_opsets() -> list[OpSet]:
    return [_load_path(p) for _, _, p in opset_files()]


def version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+-]", v or "0")[:3])


def minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


# ---------------------------------------------------------------- reading a SavedModel
@dataclass(frozen=True)
class GraphOps:
    """The op types a SavedModel uses.

    Attributes:
        ops: op type -> the attr names its nodes set (union over nodes; ``_``-prefixed internal
            attrs left out, since every TF ignores them when checking a NodeDef).
        tensorflow: the TF version that wrote the graph (from ``meta_info_def``).
    """

    ops: Mapping[str, frozenset[str]]
    tensorflow: str


def read_graph_ops(saved_model_dir: str | os.PathLike) -> GraphOps:
    """List every op type in ``saved_model.pb``: graph nodes and the nodes of every library function.

    Calls to library functions (node op = a function name) are not registry ops and are skipped.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(saved_model_dir) / "saved_model.pb"
    if not path.is_file():
        raise TargetError(f"{saved_model_dir} holds no saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(path.read_bytes())
    ops: dict[str, set[str]] = {}
    tf_version = ""
    for mg in sm.meta_graphs:
        tf_version = tf_version or mg.meta_info_def.tensorflow_version
        functions = {f.signature.name for f in mg.graph_def.library.function}
        nodes = list(mg.graph_def.node)
        for f in mg.graph_def.library.function:
            nodes.extend(f.node_def)
        for node in nodes:
            if node.op in functions:
                continue
            ops.setdefault(node.op, set()).update(a for a in node.attr if not a.startswith("_"))
    return GraphOps({k: frozenset(v) for k, v in sorted(ops.items())}, tf_version)


def analyze_saved_model(saved_model_dir: str | os.PathLike) -> dict:
    """What a SavedModel needs from the runtime that loads it (what the manifest records).

    Returns:
        ``{"ops": [...every op type...], "custom_ops": [...ops outside core TF...],
        "op_libraries": [...TF-Text .so files that register them...]}``, each sorted.
        An op that neither core TF nor any TF-Text library registers is listed in ``custom_ops``
        without a library; :func:`packager.compat.check_compatible` then reports it as missing everywhere.
    """
    graph = read_graph_ops(saved_model_dir)
    core = local_core_ops()
    lib_map = local_library_map()
    custom = sorted(op for op in graph.ops if op not in core)
    libs = sorted({lib_map[op] for op in custom if op in lib_map})
    return {"ops": sorted(graph.ops), "custom_ops": custom, "op_libraries": libs}


# ---------------------------------------------------------------- the installed TF / TF-Text
def installed_versions() -> tuple[str, str]:
    """(tensorflow, tensorflow-text) versions installed here, read without importing either."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("tensorflow", "tensorflow-text"):
        try:
            out.append(version(dist))
        except PackageNotFoundError:
            out.append("")
    return out[0], out[1]


def text_ops_dir() -> Path:
    """``tensorflow_text/python/ops`` of the installed TF-Text (found without importing it)."""
    spec = importlib.util.find_spec("tensorflow_text")
    if spec is None or not spec.submodule_search_locations:
        raise PackagerError("tensorflow-text is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "python" / "ops"


def _local_opset() -> OpSet | None:
    tf_v, text_v = installed_versions()
    for tf, tt, path in opset_files():
        if tf == tf_v and tt == text_v:
            return _load_path(path)
    return None


@functools.lru_cache(maxsize=None)
def _local_registry() -> dict:
    """{"core": [ops], "map": {op: lib}} for the installed TF / TF-Text.

    From the generated op set when one matches the installed versions; otherwise derived once in
    a subprocess (one TF import) and cached under ``~/.cache/packager/oplibs/``.
    """
    known = _local_opset()
    if known is not None:
        return {"core": sorted(known.core), "map": {op: lib for lib, ops in known.libraries.items() for op in ops}}
    tf_v, text_v = installed_versions()
    folder = cache_dir("oplibs")
    cache = folder / f"registry-tf{tf_v}-text{text_v}.json" if folder else None
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    dump = registry_dump(None, text_ops_dir() if text_v else None, isolated=False)
    data = {"core": sorted(dump["core_ops"]), "map": {op: lib for lib, ops in dump["libraries"].items() for op in ops}}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, cache)
    return data


def local_core_ops() -> frozenset[str]:
    """Ops registered by the installed ``import tensorflow`` alone (no TF-Text library)."""
    return frozenset(_local_registry()["core"])


def local_library_map() -> dict[str, str]:
    """Op name -> TF-Text library file, for the installed TF-Text."""
    return dict(_local_registry()["map"])


# Run in a fresh interpreter: the registry (op -> attr names) after plain `import tensorflow`,
# then what each given library adds when loaded in turn. A registry cannot be "unloaded", so the
# authoritative map (tools/opsets.py) runs one library per process; the run-time fallback loads
# them all in one process, diffing after each.
_REGISTRY_SCRIPT = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session as c_api

def registry():
    ol = op_def_pb2.OpList()
    ol.ParseFromString(c_api.TF_GetBuffer(c_api.TF_GetAllOpList()))
    return {op.name: sorted(a.name for a in op.attr) for op in ol.op}

before = registry()
seen, added, errors = dict(before), {}, {}
for path in sys.argv[1:]:
    name = os.path.basename(path)
    try:
        tf.load_op_library(path)
    except Exception as exc:  # report, do not crash: the caller records the failure
        errors[name] = f"{type(exc).__name__}: {exc}"
    now = registry()
    added[name] = {k: v for k, v in now.items() if k not in seen}
    seen = now
json.dump({"tensorflow": tf.__version__, "before": before, "added": added, "errors": errors}, sys.stdout)
"""


def _run_registry(python: str, libraries: Iterable[str | os.PathLike]) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([python, "-c", _REGISTRY_SCRIPT, *map(str, libraries)], capture_output=True,
                          text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise PackagerError(f"listing the op registry with {python} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def registry_dump(python: str | None = None, ops_dir: Path | None = None, *, isolated: bool = True,
                  jobs: int = 2) -> dict:
    """Every registered op of an interpreter's TF, and which TF-Text library registers which op.

    Args:
        python: interpreter of the environment to inspect (default: this one).
        ops_dir: its ``tensorflow_text/python/ops`` (``None``: core ops only).
        isolated: load each ``*.so`` alone in a fresh process and diff against plain
            ``import tensorflow`` (authoritative, one TF import per library); ``False`` loads
            them in turn in one process (one TF import; what the run-time fallback uses).
        jobs: processes run at once when isolated.

    Returns:
        ``{"tensorflow": ..., "core_ops": {op: [attrs]}, "text_ops": {op: [attrs]},
        "libraries": {lib: [ops]}, "errors": {lib: message}}``; a library that cannot load is
        listed in ``errors``.
    """
    from concurrent.futures import ThreadPoolExecutor

    python = python or sys.executable
    libs = sorted(Path(ops_dir).glob("*.so")) if ops_dir is not None else []
    if isolated:
        base = _run_registry(python, [])
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            runs = list(pool.map(lambda p: _run_registry(python, [p]), libs))
    else:
        base = _run_registry(python, libs)
        runs = [base]
    out = {"tensorflow": base["tensorflow"], "core_ops": base["before"], "text_ops": {}, "libraries": {}, "errors": {}}
    for run in runs:
        out["errors"].update(run["errors"])
        for lib, ops in run["added"].items():
            out["libraries"][lib] = sorted(ops)
            out["text_ops"].update(ops)
    return out


def derive_library_map(ops_dir: Path, python: str | None = None, *, isolated: bool = True) -> dict[str, list[str]]:
    """TF-Text library file -> the ops it registers, derived by loading libraries and diffing the registry."""
    return registry_dump(python, ops_dir, isolated=isolated)["libraries"]


def load_op_libraries(names: Iterable[str], ops_dir: Path | None = None) -> list[Path]:
    """Register the listed TF-Text op libraries in this process (``tf.load_op_library``).

    Args:
        names: library file names, e.g. ``["_fast_wordpiece_tokenizer.so"]``.
        ops_dir: where they are (default: the installed ``tensorflow_text/python/ops``).

    Returns:
        The paths loaded.
    """
    names = list(names)
    if not names:
        return []
    import tensorflow as tf

    ops_dir = Path(ops_dir) if ops_dir else text_ops_dir()
    paths = []
    for name in names:
        path = ops_dir / name
        if not path.is_file():
            raise PackagerError(f"op library {name} not found in {ops_dir}; is tensorflow-text installed?")
        tf.load_op_library(str(path))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- op libraries of another release
def fetch_op_libraries(
    tf_text_version: str,
    dest: str | os.PathLike | None = None,
    *,
    python_version: str = "3.12",
    libraries: Iterable[str] | None = None,
    platforms: Iterable[str] = ("manylinux_2_17_x86_64", "manylinux2014_x86_64"),
) -> list[Path]:
    """The TF-Text op ``.so`` files of one release, for a server image whose TF matches it.

    Downloads the ``tensorflow-text`` wheel with pip (its configured indexes), extracts
    ``tensorflow_text/python/ops/*.so`` and caches them under ``~/.cache/packager/oplibs/<version>/``;
    a second call reads the cache. The libraries need only ``libtensorflow_framework.so.2`` of
    the same TF release, not Python, and are byte-identical across a release's CPython wheels
    (checked for 2.17.0: cp39, cp310, cp311). So when the image's Python has no wheel (there is
    no cp312 wheel of 2.17.0, the release Triton 25.02's TF needs) another CPython's is used.

    Args:
        tf_text_version: exact release, e.g. ``"2.17.0"`` for Triton 25.02 (TF 2.17.0).
        dest: folder to copy them into (created); ``None`` returns the cached files.
        python_version: the image's Python, tried first.
        libraries: only these file names (default: all).
        platforms: wheel platform tags to accept.

    Returns:
        Paths of the copied (or cached) libraries, sorted.

    Raises:
        PackagerError: no wheel of that release for any CPython, or pip failed (pip's message).
    """
    cache = work_dir("oplibs") / tf_text_version
    if not (cache / "wheel.json").is_file():
        tried = [python_version] + [v for v in ("3.12", "3.11", "3.10", "3.9") if v != python_version]
        errors = []
        for py in tried:
            try:
                _download_and_extract(tf_text_version, py, list(platforms), cache)
                break
            except PackagerError as exc:
                errors.append(str(exc))
        else:
            raise PackagerError(f"could not download tensorflow-text=={tf_text_version} for CPython "
                                f"{', '.join(tried)}:\n{errors[0]}")
    available = sorted(cache.glob("*.so"))
    wanted = set(libraries) if libraries is not None else None
    found = [p for p in available if wanted is None or p.name in wanted]
    if wanted is not None and wanted - {p.name for p in found}:
        missing = sorted(wanted - {p.name for p in found})
        raise PackagerError(f"tensorflow-text {tf_text_version} has no {', '.join(missing)} "
                            f"(it ships {', '.join(p.name for p in available)})")
    if dest is None:
        return found
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in found:
        target = dest / p.name
        shutil.copy2(p, target)
        out.append(target)
    return out


def _download_and_extract(version: str, python_version: str, platforms: list[str], cache: Path) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tftext-", dir=cache.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", tmp,
               f"tensorflow-text=={version}"]
        for plat in platforms:
            cmd += ["--platform", plat]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("tensorflow_text-*.whl"))
        if proc.returncode != 0 or not wheels:
            err = "\n".join(l for l in proc.stderr.splitlines() if "is ignored" not in l)[-1500:]
            raise PackagerError(f"no tensorflow-text=={version} wheel for CPython {python_version}: {err.strip()}")
        wheel = wheels[0]
        staged = Path(tmp) / "ops"
        staged.mkdir()
        prefix = TEXT_OPS_SUBDIR.as_posix() + "/"
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                name = info.filename
                if name.startswith(prefix) and name.endswith(".so") and "/" not in name[len(prefix):]:
                    (staged / Path(name).name).write_bytes(zf.read(info))
        if not list(staged.glob("*.so")):
            raise PackagerError(f"{wheel.name} holds no op libraries under {prefix}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (staged / "wheel.json").write_text(json.dumps(
            {"wheel": wheel.name, "sha256": digest, "tensorflow_text": version, "python": python_version}, indent=2))
        # another process may have filled the cache meanwhile: keep whichever landed first
        try:
            os.rename(staged, cache)
        except OSError:
            if not (cache / "wheel.json").is_file():
                shutil.rmtree(cache, ignore_errors=True)
                os.rename(staged, cache)
