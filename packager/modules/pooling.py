"""sentence-transformers ``Pooling``: token embeddings -> one sentence embedding.

Every mode sentence-transformers has: cls, mean, max, mean_sqrt_len_tokens, weightedmean,
lasttoken (several modes are concatenated in config order, as sentence-transformers does).
With ``include_prompt: false`` the prompt's tokens (``features["prompt_length"]``, set by the graph
when a prompt is applied) are left out, as ST's ``_exclude_prompt_from_mask`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, UnsupportedError
from ..files import read_json
from .base import Module

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class Pooling(Module):
    """Attributes:
        modes: the pooling modes, concatenated in this order.
        include_prompt: ``False`` leaves the prompt's tokens out of the pooled tokens.
    """

    KIND = "Pooling"
    TYPES = (
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Pooling.Pooling",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    )

    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True

    @classmethod
    def from_folder(cls, model_dir: Path, module_dir: Path, **entry) -> "Pooling":
        cfg = read_json(module_dir / "config.json", "Pooling config")
        mode = cfg.get("pooling_mode")
        if mode is None:
            modes = [m for key, m in _LEGACY.items() if cfg.get(key)]
        else:
            modes = [mode] if isinstance(mode, str) else list(mode)
        if not modes:
            raise ModelError(f"{module_dir / 'config.json'} enables no pooling mode")
        for m in modes:
            if m not in MODES:
                raise UnsupportedError(f"unsupported pooling mode {m!r}. Supported modes: {', '.join(MODES)}")
        return cls(**entry, modes=tuple(modes), include_prompt=bool(cfg.get("include_prompt", True)))

    def output_dim(self, input_dim):
        return None if input_dim is None else input_dim * len(self.modes)

    def build(self, model_dir: Path | None = None):
        return pooling_module(self.modes, self.include_prompt)


def pooling_module(modes, include_prompt: bool = True):
    """The pooling ``tf.Module`` for ``modes`` (``features`` in, ``sentence_embedding`` added)."""
    import tensorflow as tf

    modes = tuple(modes)

    class PoolingModule(tf.Module):
        def __call__(self, features: dict) -> dict:
            emb = features["token_embeddings"]
            attention = features["attention_mask"]
            seq_len = tf.shape(emb)[1]
            pos = tf.range(seq_len)[None, :]
            if not include_prompt and "prompt_length" in features:
                # ST zeroes the mask before first_real + prompt_length (first_real is 0 without left padding).
                first_real = tf.reduce_min(tf.where(attention > 0, pos, seq_len), axis=1)
                cut = first_real + tf.cast(features["prompt_length"], tf.int32)  # [B]
                attention = tf.where(pos < cut[:, None], tf.zeros_like(attention), attention)
            mask = tf.cast(attention, emb.dtype)  # [B, T]
            mask3 = mask[:, :, None]
            # First / last real position per row, as torch's argmax idioms give them (0 for a row
            # with no real token), but without argmax, which fails on an empty batch ([0, 0]).
            real = attention > 0
            first = tf.reduce_min(tf.where(real, pos, seq_len), axis=1)
            first = tf.where(first >= seq_len, 0, first)
            last = tf.maximum(tf.reduce_max(tf.where(real, pos, -1), axis=1), 0)
            outs = []
            for mode in modes:
                if mode == "cls":
                    outs.append(tf.gather(emb, first, axis=1, batch_dims=1))
                elif mode == "max":
                    neg_inf = tf.constant(float("-inf"), emb.dtype)
                    outs.append(tf.reduce_max(tf.where(mask3 > 0, emb, neg_inf), axis=1))
                elif mode in ("mean", "mean_sqrt_len_tokens"):
                    total = tf.reduce_sum(emb * mask3, axis=1)
                    count = tf.maximum(tf.reduce_sum(mask3, axis=1), 1e-9)
                    outs.append(total / (count if mode == "mean" else tf.sqrt(count)))
                elif mode == "weightedmean":
                    weights = tf.cast(tf.range(1, seq_len + 1), emb.dtype)[None, :] - tf.cast(first, emb.dtype)[:, None]
                    w = (mask * weights)[:, :, None]
                    outs.append(tf.reduce_sum(emb * w, axis=1) / tf.maximum(tf.reduce_sum(w, axis=1), 1e-9))
                elif mode == "lasttoken":
                    outs.append(tf.gather(emb * mask3, last, axis=1, batch_dims=1))
            features = dict(features)
            features["sentence_embedding"] = outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)
            return features

    return PoolingModule(name="pooling")
