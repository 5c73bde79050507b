"""One file per encoder architecture, registered by Hugging Face ``model_type`` (keras-hub style).

Each architecture file is TF-free (numpy only) and provides two pure functions:

    convert_config(hf_config: dict) -> dict
        the fields the forward pass needs, with Hugging Face's defaults filled in; raises
        ``UnsupportedError`` naming any config field whose value the port does not implement.
    convert_weights(config: dict, weights: dict[str, np.ndarray]) -> PostLNWeights | PreNormWeights
        the checkpoint mapped onto one of the shared forward passes (``spec.py``); raises
        ``ModelError`` naming every missing weight and wrong shape.

The forward passes (TensorFlow) live apart, in ``layers.py`` (post-LN: BERT family) and
``pre_norm.py`` (rotary, pre-norm: ModernBERT, Qwen), picked by ``forward.build``. Importing
this package, :func:`architecture` and the converters never imports TensorFlow, so a bad model
is refused before TF loads. Adding an architecture is one new file plus one line in
:data:`SUPPORTED_MODEL_TYPES`.

Example:
    >>> arch = architecture("qwen3")                     # TF-free
    >>> cfg = arch.convert_config(hf_config)
    >>> encoder = build_encoder("qwen3", hf_config, load_weights(path))   # imports TF
    >>> encoder(input_ids, attention_mask)               # int64 [B, T] -> float32 [B, T, H]
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UnsupportedError

# Hugging Face model_type -> architecture module (in this package). The registry, as a table.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "bert": "bert",
    "mpnet": "mpnet",
    "distilbert": "distilbert",
    "xlm-roberta": "xlm_roberta",
    "roberta": "roberta",
    "camembert": "roberta",
    "modernbert": "modernbert",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}


def architecture(model_type: str) -> ModuleType:
    """The (TF-free) architecture module for a Hugging Face ``model_type``.

    Raises:
        UnsupportedError: naming the type and listing the supported ones.
    """
    try:
        name = SUPPORTED_MODEL_TYPES[model_type]
    except (KeyError, TypeError):
        raise UnsupportedError(
            f"unsupported model_type {model_type!r}. Supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        ) from None
    return importlib.import_module(f"{__name__}.{name}")


def convert(model_type: str, hf_config: dict, weights: dict):
    """``convert_config`` then ``convert_weights`` of the architecture (TF-free).

    Returns:
        the :mod:`~packager.encoders.spec` weights of the forward pass.
    """
    arch = architecture(model_type)
    return arch.convert_weights(arch.convert_config(hf_config), weights)


def build_encoder(model_type: str, hf_config: dict, weights: dict, pad_token_id: int | None = None, *,
                  unpad: bool = True, consume_weights: bool = False, precision: str = "fp32"):
    """The TF encoder (a ``tf.Module``) of a checkpoint.

    Args:
        model_type: Hugging Face ``model_type``.
        hf_config: ``config.json`` as a dict.
        weights: checkpoint name -> array (:func:`packager.encoders.weights.load_weights`). The
            encoder copies them into variables.
        pad_token_id: unused: every architecture here takes its padding id (where positions need
            one) from ``config.json``, as Hugging Face does. Kept for callers.
        unpad: run per-token layers on real tokens only (padded positions come out as zeros);
            False keeps the padded layout (the reference path).
        consume_weights: empty ``weights`` (``dict.clear()``) once converted, and free each array
            as soon as its variables exist, so the export holds the checkpoint about once, not
            twice (a 2.4 GB Qwen3-0.6B). Pass it when nothing else needs the dict.
        precision: ``"fp32"`` (the default: the exact port) or ``"bf16"`` (opt-in reduced precision:
            projection kernels stored and multiplied in bfloat16, see :mod:`.precision`).

    Returns:
        a module whose ``__call__(input_ids, attention_mask)`` (int64 ``[B, T]``) gives the
        ``last_hidden_state`` (float32 ``[B, T, H]``), with a ``precision`` attribute.

    Raises:
        UnsupportedError: the architecture or its config (see :func:`architecture`), an unknown
            ``precision``, or ``"bf16"`` on a CPU without bfloat16 matmuls (no ``avx512_bf16`` /
            ``amx_bf16`` flag): checked before TensorFlow is imported.
    """
    del pad_token_id
    from .precision import check_precision

    check_precision(precision)
    architecture(model_type)
    from .forward import build  # TF from here on

    spec = convert(model_type, hf_config, weights)
    if consume_weights:
        weights.clear()  # the spec's views are now the only references to the arrays
    return build(spec, unpad=unpad, release=consume_weights, precision=precision)
