"""Process-wide settings, defined once: runtime environment, the cache folder, native log noise.

Every entry point goes through here: ``import packager`` applies :func:`apply_runtime_settings`
(so ``packager.graph.export()`` called from Python runs with the CLI's oneDNN settings), the CLI
adds :func:`quiet_native_logs`, and the tests and benchmarks only import packager.

Example:
    >>> from packager.settings import cache_dir
    >>> cache_dir("probes")            # None when PACKAGER_CACHE=off
    PosixPath('/root/.cache/packager/probes')
"""
from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

# Read by TensorFlow when it is first imported, so they must be set before that.
RUNTIME_ENV = {
    # oneDNN fuses MatMul + BiasAdd + GELU (about 20% faster per projection); TF 2.21 leaves it off
    # on CPUs without AVX-512. Parity is tested with it on.
    "TF_ENABLE_ONEDNN_OPTS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Nothing is ever downloaded: models come from folders, packages or the local HF cache.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # The reference models load quietly: no weight-loading progress bars or load reports on stderr.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}
# The exported graph computes every projection as this many column parts, separate ops that TF's
# executor runs at once on its inter-op threads (packager/encoders/layers.py, Projection).
PROJECTION_PARTS = 2
# One dense row of at least this many tokens runs its layers with the tokens in two halves, one chain
# per inter-op thread, that meet at attention (layers.py PostLNEncoder._layers_in_halves, pre_norm.py
# PreNormEncoder._layers): on 2 cores 1.13x end to end on 256-token rows; the projection chain alone was
# 1.2x faster that way at 128-256 tokens and slower at 16-37 (bench/projection_layouts.py).
TOKEN_HALVES_FROM = 64


def thread_split(threads: int) -> tuple[int, int]:
    """``(intra_op, inter_op)`` TensorFlow thread counts that use ``threads`` cores in all.

    One inter-op thread per projection part (so the parts run at once, each on its own cores), and
    the cores shared among them for each op: 2 cores -> ``(1, 2)``, 8 -> ``(4, 2)``, 1 -> ``(1, 1)``.
    Measured on 2 cores against ``(2, 1)``: 1.27x at batch 1, 1.1-1.3x batched (docs/performance.md).

    Example:
        >>> thread_split(2), thread_split(8), thread_split(1)
        ((1, 2), (4, 2), (1, 1))
    """
    threads = max(1, int(threads))
    inter = min(threads, PROJECTION_PARTS)
    return max(1, threads // inter), inter


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def apply_thread_split(environ: dict | None = None, cores: int | None = None) -> tuple[int, int]:
    """Set ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` to :func:`thread_split` of the cores,
    keeping values the user already set; TensorFlow reads them when it creates its thread pools (the
    first op), so this must run before that.

    The CLI calls it (``packager embed``, ``verify`` ... run the graph in packager's own process); a
    library import does not, since threads are process-wide and the caller's other TensorFlow work
    shares them.

    Returns:
        ``(intra_op, inter_op)`` in effect.
    """
    env = os.environ if environ is None else environ
    intra, inter = thread_split(available_cores() if cores is None else cores)
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(intra))
    env.setdefault("TF_NUM_INTEROP_THREADS", str(inter))
    return int(env["TF_NUM_INTRAOP_THREADS"]), int(env["TF_NUM_INTEROP_THREADS"])


CACHE_ENV = "PACKAGER_CACHE"
CACHE_OFF = "off"


def apply_runtime_settings(environ: dict | None = None) -> dict[str, str]:
    """Set the runtime environment packager is tested with, keeping values the user already set.

    Returns:
        The values in effect for :data:`RUNTIME_ENV`'s keys.
    """
    env = os.environ if environ is None else environ
    for key, value in RUNTIME_ENV.items():
        env.setdefault(key, value)
    return {k: env[k] for k in RUNTIME_ENV}


def cache_root() -> Path | None:
    """The one cache folder: ``$PACKAGER_CACHE``, or ``~/.cache/packager``; None when it is ``off``."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.lower() == CACHE_OFF:
        return None
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "packager"


def cache_dir(*parts: str) -> Path | None:
    """A sub-folder of the cache (not created), or None when caching is off."""
    root = cache_root()
    return None if root is None else root.joinpath(*parts)


def work_dir(*parts: str) -> Path:
    """A folder for downloads and build contexts: in the cache, or a fresh temp folder when it is off."""
    import tempfile

    folder = cache_dir(*parts)
    if folder is None:
        return Path(tempfile.mkdtemp(prefix="packager-" + "-".join(parts) + "-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------- native log noise
# What TensorFlow's C++ side prints at start-up even with TF_CPP_MIN_LOG_LEVEL=2: absl's banner,
# INFO lines (oneDNN, the CUDA stub) and the cuInit failure on machines without a GPU.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:. ]+\d+ \S+:\d+\] .*"
    r"|E\d{4} [\d:. ]+\d+ (cuda_\w+|cuda_platform|cuda_executor|cuda_diagnostics)\.cc:\d+\] .*"
    r"|E\d{4} [\d:. ]+\d+ util\.cc:\d+\] oneDNN supports DT_\w+ only on platforms with .*"
    r"|.*This TensorFlow binary is optimized to use available CPU instructions.*"
    r"|.*To enable the following instructions: .* in other operations, rebuild TensorFlow.*)$"
)
_filter_started = False


def quiet_native_logs() -> None:
    """Drop TensorFlow's native start-up noise from this process's stderr (keep everything else).

    File descriptor 2 becomes a pipe read by a thread that forwards every line except :data:`NOISE`
    to the real stderr. Python's own ``sys.stderr`` writes straight to the real one, so progress
    output keeps its terminal. Call it before TensorFlow is imported; calling it twice is harmless.
    """
    global _filter_started
    if _filter_started:
        return
    _filter_started = True
    real = os.dup(2)
    sys.stderr.flush()
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                           errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as src:
            for line in src:
                if not NOISE.match(line.decode("utf-8", "replace").rstrip("\r\n")):
                    os.write(real, line)

    thread = threading.Thread(target=pump, name="packager-stderr-filter", daemon=True)
    thread.start()

    import atexit

    def drain() -> None:
        # Closing our fd 2 ends the pump once every native line written so far is forwarded.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            return
        thread.join(timeout=2)

    atexit.register(drain)
