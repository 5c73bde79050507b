"""Read checkpoint weights as numpy arrays, without running any code from the model folder.

TF-free and torch-free for safetensors. Floating-point tensors come back as float32 whatever
they were stored as (F16, BF16, F64): the graph computes in float32, and converting here, one
tensor at a time, means the export never holds a second full-size copy of the weights (a
bfloat16 Qwen3-0.6B is 1.2 GB on disk and 2.4 GB as float32). The file is read with plain reads,
not mapped; the only temporary is one tensor's stored bytes (half its float32 size for BF16).
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelError

# safetensors dtype -> numpy dtype as stored (BF16 is read as its raw 16 bits, then widened)
_STORED = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_FLOAT = {"F64", "F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Load ``model.safetensors`` (no torch needed) or ``pytorch_model.bin`` (``weights_only=True``).

    Returns:
        name -> numpy array (float32 for every floating-point tensor), with any
        ``model.``/``bert.``-style prefix left as stored.

    Raises:
        ModelError: a missing, truncated or malformed file, or an unsupported dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"missing weights file {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix == ".bin":
        try:
            import torch
        except ImportError as exc:
            raise ModelError(f"{path} is a torch checkpoint; install torch to read it (weights_only=True)") from exc
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"cannot read {path} safely (weights_only=True): {exc}") from exc
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    raise ModelError(f"unsupported weights file {path}: expected .safetensors or .bin")


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """The parsed JSON header of a safetensors file and the byte offset where its data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ModelError(f"cannot read {path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise ModelError(f"cannot read {path}: not a safetensors file (header length {n} for {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise ModelError(f"cannot read {path}: malformed safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ModelError(f"cannot read {path}: malformed safetensors header")
    header.pop("__metadata__", None)
    return header, 8 + n


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    header, base = read_safetensors_header(path)
    size = path.stat().st_size
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            try:
                dtype, shape, (start, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"cannot read {path}: malformed header entry for {name!r}") from None
            if dtype not in _STORED:
                raise ModelError(f"cannot read {path}: tensor {name!r} has unsupported dtype {dtype}")
            stored = np.dtype(_STORED[dtype])
            count = math.prod(shape)
            if end - start != count * stored.itemsize or start < 0 or base + end > size:
                raise ModelError(f"cannot read {path}: tensor {name!r} ({dtype}{shape}) has bad data offsets")
            f.seek(base + start)
            # Read straight into an array (no intermediate bytes object): the final one, or the stored
            # 16/64-bit values, widened into the float32 result with no further temporary.
            raw = np.empty(shape, stored.newbyteorder("<"))
            if raw.size and f.readinto(memoryview(raw.reshape(-1).view(np.uint8))) != end - start:
                raise ModelError(f"cannot read {path}: tensor {name!r} is truncated")
            if dtype == "F32" or dtype not in _FLOAT:
                out[name] = raw
            elif dtype == "BF16":  # the top 16 bits of a float32
                wide = np.empty(shape, np.uint32)
                np.left_shift(raw, 16, out=wide, dtype=np.uint32)
                out[name] = wide.view(np.float32)
            else:
                out[name] = raw.astype(np.float32)
            del raw
    return out
