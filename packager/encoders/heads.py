"""Sequence-classification heads (what a CrossEncoder reranker puts on its encoder).

``*ForSequenceClassification`` checkpoints add, on top of the encoder's ``last_hidden_state``:

- BERT: ``tanh(pooler.dense(h[:, 0]))`` then ``classifier`` (``bert.pooler.dense``, ``classifier``);
- RoBERTa, XLM-R, CamemBERT, MPNet: ``classifier.out_proj(tanh(classifier.dense(h[:, 0])))``;
- DistilBERT: ``classifier(relu(pre_classifier(h[:, 0])))``;
- ModernBERT: ``classifier(norm(act(head.dense(pool(h)))))`` with ``classifier_pooling`` ``cls`` or
  ``mean`` (over the attention mask) and ``classifier_activation``.

:func:`convert_head` is TF-free (numpy arrays in torch's ``[out, in]`` layout);
:func:`build_head` makes the TF module. Dropout is an identity at inference and is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from .activations import check_activation
from .checkpoint import CheckpointReader

# model_type -> (anchor of the base model, dense name, dense under the base prefix?, activation, out name)
_LAYOUTS = {
    "bert": ("embeddings.word_embeddings.weight", "pooler.dense", True, "tanh", "classifier"),
    "roberta": ("embeddings.word_embeddings.weight", "classifier.dense", False, "tanh", "classifier.out_proj"),
    "camembert": ("embeddings.word_embeddings.weight", "classifier.dense", False, "tanh", "classifier.out_proj"),
    "xlm-roberta": ("embeddings.word_embeddings.weight", "classifier.dense", False, "tanh", "classifier.out_proj"),
    "mpnet": ("embeddings.word_embeddings.weight", "classifier.dense", False, "tanh", "classifier.out_proj"),
    "distilbert": ("embeddings.word_embeddings.weight", "pre_classifier", False, "relu", "classifier"),
    "modernbert": ("embeddings.tok_embeddings.weight", "head.dense", False, None, "classifier"),
}
SUPPORTED = tuple(_LAYOUTS)


@dataclass
class HeadWeights:
    """``out(norm(act(dense(pool(h)))))``.

    Attributes:
        pooling: ``"cls"`` (the first position) or ``"mean"`` (over real tokens).
        dense_w, dense_b: ``[H, H]`` and ``[H]`` (bias may be None).
        activation: a key of ``activations.ACTIVATIONS``.
        norm: ``(gamma, beta or None, eps)`` of a LayerNorm after the activation, or None.
        out_w, out_b: ``[num_labels, H]`` and ``[num_labels]``.
    """

    pooling: str
    dense_w: np.ndarray
    dense_b: np.ndarray | None
    activation: str
    norm: tuple | None
    out_w: np.ndarray
    out_b: np.ndarray | None

    @property
    def num_labels(self) -> int:
        return int(self.out_w.shape[0])


def num_labels(hf_config: dict) -> int:
    """Labels of a classification config (``id2label`` wins, as in transformers)."""
    if hf_config.get("id2label"):
        return len(hf_config["id2label"])
    return int(hf_config.get("num_labels", 2))


def check_config(model_type: str, hf_config: dict) -> None:
    """Refuse what the head conversion cannot reproduce, before any weights are read.

    Raises:
        UnsupportedError: an architecture without a supported sequence-classification head.
    """
    if model_type not in _LAYOUTS:
        raise UnsupportedError(
            f"no sequence-classification head for model_type {model_type!r} (rerankers built on decoders such "
            f"as Qwen3-Reranker score yes/no tokens instead). Supported: {', '.join(SUPPORTED)}")
    if model_type == "modernbert":
        pooling = hf_config.get("classifier_pooling", "cls")
        if pooling not in ("cls", "mean"):
            raise UnsupportedError(f"unsupported ModernBERT classifier_pooling {pooling!r}. Supported: cls, mean")
        check_activation(hf_config.get("classifier_activation", "gelu"), "classifier_activation")


def convert_head(model_type: str, hf_config: dict, weights: dict) -> HeadWeights:
    """The classification head of a ``*ForSequenceClassification`` checkpoint. Pure.

    Raises:
        UnsupportedError: see :func:`check_config`.
        ModelError: naming every missing weight and wrong shape.
    """
    check_config(model_type, hf_config)
    anchor, dense, under_base, act, out = _LAYOUTS[model_type]
    hidden = int(hf_config.get("hidden_size") or hf_config.get("dim"))
    labels = num_labels(hf_config)
    base = CheckpointReader(weights, anchor, model_type)
    top = CheckpointReader(weights, f"{out}.weight", model_type)
    # the head sits beside the base model (``classifier.*``), or under its prefix (BERT's pooler)
    d = base if under_base else top
    bias = not (model_type == "modernbert" and not hf_config.get("classifier_bias", False))
    dense_w = d.get(f"{dense}.weight", (hidden, hidden))
    dense_b = d.get(f"{dense}.bias", (hidden,)) if bias else None
    norm = None
    if model_type == "modernbert":
        act = hf_config.get("classifier_activation", "gelu")
        gamma = top.get("head.norm.weight", (hidden,))
        beta = top.get("head.norm.bias", (hidden,)) if hf_config.get("norm_bias", False) else None
        norm = (gamma, beta, float(hf_config.get("norm_eps", 1e-5)))
    out_w = top.get(f"{out}.weight", (labels, hidden))
    out_b = top.get(f"{out}.bias", (labels,))
    base.check()
    top.check()
    pooling = hf_config.get("classifier_pooling", "cls") if model_type == "modernbert" else "cls"
    return HeadWeights(pooling, dense_w, dense_b, check_activation(act), norm, out_w, out_b)


def build_head(w: HeadWeights):
    """The TF module: ``head(last_hidden_state, attention_mask) -> logits [B, num_labels]``."""
    import tensorflow as tf

    from .activations import ACTIVATIONS
    from .layers import layer_norm, variable

    class ClassificationHead(tf.Module):
        def __init__(self):
            super().__init__(name="classification_head")
            self.pooling = w.pooling
            self.dense_w = variable(w.dense_w.T, "dense_kernel")
            self.dense_b = variable(w.dense_b, "dense_bias") if w.dense_b is not None else None
            self.act = ACTIVATIONS[w.activation]
            if w.norm is not None:
                self.norm_g = variable(w.norm[0], "norm_gamma")
                self.norm_b = variable(w.norm[1] if w.norm[1] is not None else np.zeros_like(w.norm[0]), "norm_beta")
                self.norm_eps = w.norm[2]
            else:
                self.norm_g = None
            self.out_w = variable(w.out_w.T, "out_kernel")
            self.out_b = variable(w.out_b, "out_bias")

        def __call__(self, hidden, attention_mask):
            if self.pooling == "cls":
                # [:, :1] then reshape, not [:, 0]: an empty batch has no column 0 ([0, 0, H])
                x = tf.reshape(hidden[:, :1, :], [-1, hidden.shape[-1]])
            else:
                m = tf.cast(attention_mask, hidden.dtype)[:, :, None]
                x = tf.reduce_sum(hidden * m, axis=1) / tf.reduce_sum(m, axis=1)
            x = tf.matmul(x, self.dense_w)
            if self.dense_b is not None:
                x = x + self.dense_b
            x = self.act(x)
            if self.norm_g is not None:
                x = layer_norm(x, self.norm_g, self.norm_b, self.norm_eps)
            return tf.matmul(x, self.out_w) + self.out_b

    return ClassificationHead()
