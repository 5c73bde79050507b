"""Read checkpoint weights as numpy arrays, without running any code from the model folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Load ``model.safetensors`` (no torch needed) or ``pytorch_model.bin`` (``weights_only=True``).

    Returns:
        name -> float32 numpy array, with any ``model.``/``bert.``-style prefix left as stored.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"missing weights file {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"cannot read {path}: {exc}") from exc
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
