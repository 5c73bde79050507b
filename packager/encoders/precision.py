"""Numeric precision of the encoder's projections (TF-free).

``fp32`` (the default) is the exact port: embeddings within 1e-5 of ``SentenceTransformer.encode``.
``bf16`` is opt-in reduced precision: the projection kernels (Q/K/V, attention output, FFN / gated
MLP; about 98% of the FLOPs) are stored as bfloat16 variables and multiplied in bfloat16 by oneDNN
(AMX or AVX512-BF16 kernels), with bfloat16 biases and activations fused into the same primitive.
Embeddings, LayerNorm / RMSNorm, residuals, rotary, attention scores and softmax stay float32:
activations are cast to bfloat16 before each projection and its result back to float32, except
between the two FFN projections, which stay bfloat16. Half the weight bytes to stream per call,
accuracy about OpenVINO's own bf16 default (see docs/performance.md for the measured figures).

The serving CPU needs native bfloat16 matmuls: :func:`check_precision` refuses ``bf16`` on a CPU
whose ``/proc/cpuinfo`` flags lack ``avx512_bf16`` and ``amx_bf16`` (without them oneDNN emulates
bfloat16 at a fraction of float32's speed). The check runs where the graph is BUILT; a bf16 export
carried to a machine without these flags still runs, slowly.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UnsupportedError

PRECISIONS = ("fp32", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"
"""Where the CPU flags are read when no ``cpuinfo`` path is given (read at call time)."""

# What the serving process of an export of each precision gets in its environment (the Triton
# python backend's model.py, the compose stacks, the Kubernetes pods). bf16: oneDNN reorders each
# bfloat16 kernel once into its AMX layout and keeps it (the serving graph never assigns its
# variables): 1.34x -> 1.76x at batch 1. Not for fp32, where the cached f32 layout depends on the
# batch's row count and is re-reordered batch after batch (0.85x at batch 8; docs/performance.md).
SERVING_ENVIRONMENT: dict[str, dict[str, str]] = {
    "fp32": {},
    "bf16": {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"},
}


def serving_environment(precision: str) -> dict[str, str]:
    """The environment variables the serving process of a ``precision`` export needs (the one place
    that decides it).

    Raises:
        UnsupportedError: an unknown precision.
    """
    return dict(SERVING_ENVIRONMENT[_known(precision)])


def _known(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; else an :class:`UnsupportedError`."""
    if precision not in PRECISIONS:
        raise UnsupportedError(f"unsupported precision {precision!r}. Supported: {', '.join(PRECISIONS)}")
    return precision


def cpu_flags(cpuinfo: str | Path | None = None) -> set[str]:
    """The CPU feature flags (the first ``flags`` line of ``/proc/cpuinfo``; empty if unreadable)."""
    try:
        text = Path(cpuinfo or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def bf16_supported(cpuinfo: str | Path | None = None) -> bool:
    """True when the CPU has native bfloat16 matmuls (``avx512_bf16`` or ``amx_bf16``)."""
    return bool(cpu_flags(cpuinfo) & set(BF16_FLAGS))


def check_precision(precision: str, cpuinfo: str | Path | None = None) -> str:
    """``precision`` itself if it can be built here (``cpuinfo``: default :data:`CPUINFO`).

    Raises:
        UnsupportedError: an unknown precision, or ``bf16`` on a CPU without bfloat16 matmuls.
    """
    if _known(precision) == "bf16" and not bf16_supported(cpuinfo):
        raise UnsupportedError(
            "precision 'bf16' needs a CPU with native bfloat16 matmuls (cpu flag avx512_bf16 or amx_bf16; "
            f"{cpuinfo or CPUINFO} lists neither): oneDNN would emulate bfloat16 far slower than float32. "
            "Use precision 'fp32' (the default, exact) on this machine")
    return precision
