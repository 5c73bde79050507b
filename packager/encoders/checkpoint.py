"""Look up checkpoint weights by architecture-relative name (TF-free)."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError


class CheckpointReader:
    """Looks up weights by their architecture-relative name, whatever prefix the checkpoint uses.

    Real checkpoints store the base model under ``bert.``, ``roberta.``, ``distilbert.``,
    ``mpnet.``, ``model.`` (or nothing). The prefix is found from one anchor key that every
    checkpoint of the architecture has. Missing keys and shape mismatches are collected and
    reported together by :meth:`check`, so one error names everything that is wrong.

    Arrays are returned as stored when they are already float32 (no copy), so a converter that
    only slices and views them holds no second copy of the weights.

    Args:
        weights: name -> array, as :func:`packager.encoders.weights.load_weights` returns it.
        anchor: a key every checkpoint of this architecture has, without prefix.
        model_type: for error messages.
    """

    def __init__(self, weights: dict, anchor: str, model_type: str):
        self.weights = weights
        self.model_type = model_type
        prefixes = sorted({k[: -len(anchor)] for k in weights if k.endswith(anchor)}, key=len)
        if not prefixes:
            sample = ", ".join(sorted(weights)[:5]) or "none"
            raise ModelError(
                f"the {model_type} checkpoint has no {anchor!r} (under any prefix); "
                f"is this really a {model_type} model? First keys: {sample}"
            )
        self.prefix = prefixes[0]
        self.missing: list[str] = []
        self.bad_shapes: list[str] = []

    def has(self, name: str) -> bool:
        """Whether ``prefix + name`` is in the checkpoint."""
        return self.prefix + name in self.weights

    def get(self, name: str, shape: tuple | None = None) -> np.ndarray | None:
        """The float32 array stored as ``prefix + name``, or None (recorded) if absent.

        Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta; HF accepts
        those too, so they are read as weight/bias.
        """
        key = self.prefix + name
        value = self.weights.get(key)
        if value is None and "LayerNorm." in key:
            legacy = {".weight": ".gamma", ".bias": ".beta"}
            suffix = key[key.rindex("."):]
            if suffix in legacy:
                value = self.weights.get(key[: -len(suffix)] + legacy[suffix])
        if value is None:
            self.missing.append(key)
            return None
        value = np.asarray(value, dtype=np.float32)
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.bad_shapes.append(f"{key}: {tuple(value.shape)} (config expects {tuple(shape)})")
        return value

    def check(self) -> None:
        """Raise one ``ModelError`` naming every missing key and wrong shape seen so far."""
        problems = []
        if self.missing:
            shown = ", ".join(self.missing[:12]) + (f" and {len(self.missing) - 12} more" if len(self.missing) > 12 else "")
            problems.append(f"missing {len(self.missing)} weight(s): {shown}")
        if self.bad_shapes:
            problems.append("wrong shapes: " + "; ".join(self.bad_shapes[:12]))
        if problems:
            raise ModelError(f"{self.model_type} checkpoint does not match its config.json: " + ". ".join(problems))
