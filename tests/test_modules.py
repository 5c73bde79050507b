"""The head modules (Pooling in every mode, Dense activations, Normalize) against sentence-transformers' own."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from packager import modules
from packager.encoders.activations import TORCH_ACTIVATIONS
from packager.modules import dense, pooling

MODES = list(pooling.MODES) + [["mean", "max", "cls"]]


def _features(batch=5, seq=7, hidden=6, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(batch, seq, hidden)).astype(np.float32)
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return emb, mask


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_pooling_matches_sentence_transformers_when_mode_is_used(mode):
    import tensorflow as tf
    from sentence_transformers.sentence_transformer.modules import Pooling

    emb, mask = _features()
    ref = Pooling(emb.shape[-1], pooling_mode=mode)({"token_embeddings": torch.tensor(emb), "attention_mask": torch.tensor(mask)})
    module = modules.Pooling(name="1", path="1_Pooling", type="x", modes=(mode,) if isinstance(mode, str) else tuple(mode))
    got = module.build()({"token_embeddings": tf.constant(emb), "attention_mask": tf.constant(mask)})
    np.testing.assert_allclose(got["sentence_embedding"].numpy(), ref["sentence_embedding"].numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", pooling.MODES)
def test_pooling_returns_empty_rows_when_batch_is_empty(mode):
    import tensorflow as tf

    fn = tf.function(modules.Pooling(name="1", path="1_Pooling", type="x", modes=(mode,)).build().__call__)
    got = fn({"token_embeddings": tf.zeros([0, 0, 4]), "attention_mask": tf.zeros([0, 0], tf.int64)})
    assert got["sentence_embedding"].shape == (0, 4)


@pytest.mark.parametrize("activation", sorted(TORCH_ACTIVATIONS))
def test_dense_activation_matches_torch_when_mapped_by_dotted_name(activation):
    import importlib

    from packager.encoders.layers import ACTIVATIONS

    module, cls = activation.rsplit(".", 1)
    torch_act = getattr(importlib.import_module(module), cls)()
    x = np.linspace(-6, 6, 97, dtype=np.float32)
    got = ACTIVATIONS[dense.torch_activation(activation)](x).numpy()
    np.testing.assert_allclose(got, torch_act(torch.tensor(x)).numpy(), atol=1e-6)


def test_normalize_matches_torch_when_vectors_include_zero():
    import tensorflow as tf

    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]], dtype=np.float32)
    module = modules.Normalize(name="2", path="2_Normalize", type="x").build(None)
    got = module({"sentence_embedding": tf.constant(x)})["sentence_embedding"].numpy()
    np.testing.assert_allclose(got, torch.nn.functional.normalize(torch.tensor(x), p=2, dim=-1).numpy(), atol=1e-7)
