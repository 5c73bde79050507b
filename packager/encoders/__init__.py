"""One file per encoder architecture, registered by Hugging Face ``model_type``.

Each architecture module (imported lazily; it imports TF) exposes:
    convert_config(hf_config: dict) -> dict   # pure: the fields the TF encoder needs
    Encoder(config: dict, weights: dict[str, np.ndarray], pad_token_id: int) -> tf.Module
        __call__(input_ids: int64 [B, T], attention_mask: int64 [B, T]) -> float32 [B, T, H]
        (the ``last_hidden_state`` of the Hugging Face model, i.e. ST's ``token_embeddings``)
"""
from __future__ import annotations

import importlib

from ..errors import UnsupportedError

# model_type -> architecture module name (in this package)
SUPPORTED_MODEL_TYPES = {
    "bert": "bert",
    "mpnet": "mpnet",
    "distilbert": "distilbert",
    "xlm-roberta": "xlm_roberta",
}


def architecture(model_type: str):
    try:
        name = SUPPORTED_MODEL_TYPES[model_type]
    except KeyError:
        raise UnsupportedError(
            f"unsupported model_type {model_type!r}. Supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        ) from None
    return importlib.import_module(f"{__name__}.{name}")


def build_encoder(model_type: str, hf_config: dict, weights: dict, pad_token_id: int):
    arch = architecture(model_type)
    return arch.Encoder(arch.convert_config(hf_config), weights, pad_token_id=pad_token_id)
