"""sentence-transformers ``Normalize``: L2-normalise the sentence embedding."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import Module


@dataclass(frozen=True)
class Normalize(Module):
    KIND = "Normalize"
    TYPES = (
        "sentence_transformers.models.Normalize",
        "sentence_transformers.models.Normalize.Normalize",
        "sentence_transformers.base.modules.normalize.Normalize",
        "sentence_transformers.sentence_transformer.modules.normalize.Normalize",
    )

    @classmethod
    def from_folder(cls, model_dir: Path, module_dir: Path, **entry) -> "Normalize":
        # Normalize has no files; its folder may even be missing (all-MiniLM-L6-v2 ships none).
        return cls(**entry)

    def build(self, model_dir: Path):
        import tensorflow as tf

        class NormalizeModule(tf.Module):
            def __call__(self, features: dict) -> dict:
                features = dict(features)
                features["sentence_embedding"] = l2_normalize(features["sentence_embedding"])
                return features

        return NormalizeModule(name="normalize")


def l2_normalize(x):
    """``torch.nn.functional.normalize``: ``x / max(||x||_2, 1e-12)`` over the last axis."""
    import tensorflow as tf

    norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True))
    return x / tf.maximum(norm, 1e-12)
