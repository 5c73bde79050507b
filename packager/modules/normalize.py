"""sentence-transformers ``Normalize``: L2-normalise the sentence embedding."""
from __future__ import annotations

from pathlib import Path

KIND = "Normalize"
TYPES = (
    "sentence_transformers.models.Normalize",
    "sentence_transformers.models.Normalize.Normalize",
    "sentence_transformers.base.modules.normalize.Normalize",
)


def read_config(model_dir: Path, module_dir: Path) -> dict:
    # Normalize has no files; its folder may even be missing (all-MiniLM-L6-v2 ships none).
    return {}


def build(spec, model_dir: Path):
    import tensorflow as tf

    class Normalize(tf.Module):
        def __call__(self, features: dict) -> dict:
            x = features["sentence_embedding"]
            # torch.nn.functional.normalize: x / max(||x||_2, 1e-12)
            norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True))
            features = dict(features)
            features["sentence_embedding"] = x / tf.maximum(norm, 1e-12)
            return features

    return Normalize(name="normalize")
