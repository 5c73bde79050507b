"""Give freed heap memory back to the operating system (used while exporting large models).

The checkpoint's numpy arrays are freed one layer at a time as they become ``tf.Variable`` s, but
most of them (every tensor up to glibc's dynamic mmap threshold, 32 MB) live on the malloc heap,
and glibc only gives back the *top* of the heap on ``free``: the holes they leave stay resident. For
a Qwen3-0.6B export that was 1.9 GB held on top of the variables (peak 2.35x the float32 weights).
``malloc_trim(0)`` hands every free page of the heap back (``madvise(MADV_DONTNEED)``, also in the
middle of it); it changes no values, only what the process keeps resident. Elsewhere (musl, macOS,
Windows) it is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows: nothing to call)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory(collect: bool = False) -> bool:
    """Return the free pages of the malloc heap to the OS (``collect``: run ``gc.collect()`` first, for
    objects kept alive by reference cycles). True when glibc's ``malloc_trim`` was available and ran."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
