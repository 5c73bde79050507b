"""TF encoders against the Hugging Face torch models: ``last_hidden_state`` on padded batches.

The BERT-family fixtures (``tiny_bert`` ...) come from conftest; the new families (RoBERTa,
CamemBERT, ModernBERT, Qwen2, Qwen3) are tiny random torch models built here, saved with
``save_pretrained`` and read back from safetensors, as an export reads them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

import tiny_models

from packager.encoders import (
    SUPPORTED_MODEL_TYPES,
    architecture,
    build_encoder,
    convert,
)
from packager.encoders.activations import (
    ACTIVATIONS,
    TORCH_ACTIVATIONS,
    torch_name_to_activation,
)
from packager.encoders.precision import bf16_supported
from packager.settings import TOKEN_HALVES_FROM
from packager.encoders.weights import load_weights
from packager.errors import ModelError, UnsupportedError

TOL = 1e-5
TINY = ["tiny_bert", "tiny_distilbert", "tiny_mpnet", "tiny_xlmr"]
# Tiny random HF models of the new families (fixture name -> left padding?)
NEW = {"tiny_roberta": False, "tiny_camembert": False, "tiny_modernbert": False, "tiny_qwen3": True,
       "tiny_qwen3_sliding": True, "tiny_qwen2": True}
ALL = TINY + list(NEW)
MIXED = [17, 1, 40, 5, 33, 2]  # longer than ModernBERT's window (8) and Qwen3's sliding window (6)


# --------------------------------------------------------------------------- helpers
def _hf_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def _encoder(model_dir: Path, **options):
    cfg = _hf_config(model_dir)
    weights = load_weights(Path(model_dir) / "model.safetensors")
    return build_encoder(cfg["model_type"], cfg, weights, **options)


def _torch_model(model_dir: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir)).eval()


def _padded_batch(cfg: dict, lengths: list[int], seed: int = 0, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Random ids within the vocab (never the pad id), padded right (encoders) or left (decoder embedders)."""
    rng = np.random.default_rng(seed)
    pad = cfg.get("pad_token_id") or 0
    vocab = cfg["vocab_size"]
    T = max(lengths, default=0)
    ids = rng.integers(0, vocab, size=(len(lengths), T))
    ids[ids == pad] = (pad + 1) % vocab
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        real = slice(T - n, T) if left else slice(0, n)
        mask[i, real] = 1
        ids[i, ~mask[i].astype(bool)] = pad
    return ids.astype(np.int64), mask.astype(np.int64)


def _batch_for(fixture: str, model_dir: Path, lengths: list[int], seed: int = 0):
    return _padded_batch(_hf_config(model_dir), lengths, seed=seed, left=NEW.get(fixture, False))


def _reference(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return out.last_hidden_state.numpy()


def _run(encoder, ids, mask) -> np.ndarray:
    return encoder(tf.constant(ids), tf.constant(mask)).numpy()


def _real_diff(got: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Max abs diff over real (unpadded) tokens: the only ones any pooling mode reads."""
    return float(np.abs(got - ref)[mask.astype(bool)].max())


def _randomize(model, seed: int, bias_scale: float = 0.1):
    """Give every parameter non-trivial values (norm weights around 1), so parity tests bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and ("norm" in name.lower()):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(bias_scale * torch.randn(p.shape, generator=g))
    return model.eval()


def _save_random_hf(model, path: Path, seed: int, bias_scale: float = 0.1) -> Path:
    _randomize(model, seed, bias_scale).save_pretrained(str(path))
    return path


# --------------------------------------------------------------------------- new-family fixtures
def _tiny(tmp_path_factory, name: str, make) -> Path:
    return _save_random_hf(make(), tmp_path_factory.mktemp(name), seed=zlib.crc32(name.encode()) % 1000)


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> Path:
    import transformers as tr

    cfg = tr.RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=96, pad_token_id=1, type_vocab_size=1)
    return _tiny(tmp_path_factory, "tiny_roberta", lambda: tr.RobertaModel(cfg, add_pooling_layer=False))


@pytest.fixture(scope="module")
def tiny_camembert(tmp_path_factory) -> Path:
    import transformers as tr

    # pad id 3: positions must use the config's pad id, not RoBERTa's usual 1
    cfg = tr.CamembertConfig(vocab_size=90, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                             intermediate_size=30, max_position_embeddings=96, pad_token_id=3, type_vocab_size=1,
                             hidden_act="gelu_new", layer_norm_eps=1e-5)
    return _tiny(tmp_path_factory, "tiny_camembert", lambda: tr.CamembertModel(cfg, add_pooling_layer=False))


@pytest.fixture(scope="module")
def tiny_modernbert(tmp_path_factory) -> Path:
    import transformers as tr

    # A window of 8 (|i - j| <= 4) on sequences up to 40; layers 0 and 2 global, 1 local; all biases on
    # so each flag's weights are read; distinct rotary bases per layer type.
    cfg = tr.ModernBertConfig(vocab_size=110, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                              num_attention_heads=4, global_attn_every_n_layers=2, local_attention=8,
                              global_rope_theta=5000.0, local_rope_theta=300.0, norm_bias=True,
                              attention_bias=True, mlp_bias=True, norm_eps=1e-6, hidden_activation="gelu",
                              pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    return _tiny(tmp_path_factory, "tiny_modernbert", lambda: tr.ModernBertModel(cfg))


def _qwen3_config(**kw):
    import transformers as tr

    # GQA: 4 query heads on 2 kv heads; head_dim 16 != hidden / heads (12).
    args = {"vocab_size": 130, "hidden_size": 48, "intermediate_size": 56, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 1000.0,
            "rms_norm_eps": 1e-6, "pad_token_id": 0, "max_position_embeddings": 256}
    args.update(kw)
    return tr.Qwen3Config(**args)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory) -> Path:
    import transformers as tr

    return _tiny(tmp_path_factory, "tiny_qwen3", lambda: tr.Qwen3Model(_qwen3_config(attention_bias=True)))


@pytest.fixture(scope="module")
def tiny_qwen3_sliding(tmp_path_factory) -> Path:
    import transformers as tr

    # Layers 1 and 2 see only the last 6 keys (j > i - 6), causally.
    cfg = _qwen3_config(use_sliding_window=True, sliding_window=6, max_window_layers=1)
    return _tiny(tmp_path_factory, "tiny_qwen3_sliding", lambda: tr.Qwen3Model(cfg))


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> Path:
    import transformers as tr

    cfg = tr.Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=44, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, rope_theta=500.0, pad_token_id=0,
                         hidden_act="silu", max_position_embeddings=128)
    return _tiny(tmp_path_factory, "tiny_qwen2", lambda: tr.Qwen2Model(cfg))


# --------------------------------------------------------------------------- parity with HF
@pytest.mark.parametrize("fixture", ALL)
def test_encoder_matches_hf_last_hidden_state_when_padded_batch_of_mixed_lengths(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    ids, mask = _batch_for(fixture, model_dir, MIXED)
    ref = _reference(_torch_model(model_dir), ids, mask)
    got = _run(_encoder(model_dir), ids, mask)
    assert got.shape == ref.shape and got.dtype == np.float32
    real = mask.astype(bool)
    assert np.abs(got - ref)[real].max() <= TOL
    # Padded positions come out as zeros: per-token layers ran on the real tokens only.
    assert not got[~real].any()


@pytest.mark.parametrize("fixture", ALL)
def test_padded_reference_path_matches_hf_when_unpad_is_off(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    ids, mask = _batch_for(fixture, model_dir, MIXED)
    ref = _reference(_torch_model(model_dir), ids, mask)
    got = _run(_encoder(model_dir, unpad=False), ids, mask)
    if fixture in ("tiny_modernbert", "tiny_qwen3", "tiny_qwen3_sliding", "tiny_qwen2"):
        # A padded query may see no key at all (causal + left padding; or beyond ModernBERT's window).
        # HF's value there is whatever its kernel makes of an all-masked row; ours must at least be
        # finite (no NaN to leak into pooling).
        assert np.isfinite(got).all()
        assert _real_diff(got, ref, mask) <= TOL
    else:
        # HF masks keys only, and so does the padded layout: every position matches.
        assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("fixture", ALL)
def test_encoder_matches_hf_when_batch_has_one_row(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    ids, mask = _batch_for(fixture, model_dir, [23], seed=9)
    ref = _reference(_torch_model(model_dir), ids, mask)
    assert _real_diff(_run(_encoder(model_dir), ids, mask), ref, mask) <= TOL


@pytest.mark.parametrize("fixture", ALL)
@pytest.mark.parametrize("extra", [0, 9])
def test_encoder_matches_hf_when_one_long_row_runs_in_token_halves(fixture, extra, request):
    """From TOKEN_HALVES_FROM tokens on, one dense row of the post-LN families runs its layers in two
    halves of tokens that meet at attention (an odd length: halves of unequal size)."""
    model_dir = request.getfixturevalue(fixture)
    ids, mask = _batch_for(fixture, model_dir, [TOKEN_HALVES_FROM + extra], seed=11)
    ref = _reference(_torch_model(model_dir), ids, mask)
    assert _real_diff(_run(_encoder(model_dir), ids, mask), ref, mask) <= TOL


def test_token_halves_are_traced_into_the_dense_path_of_the_post_ln_encoder(tiny_mpnet, monkeypatch):
    """The halves branch is in the graph (and is what a long lone row gets: the parity test above)."""
    from packager.encoders.layers import PostLNEncoder

    calls = []
    original = PostLNEncoder._layers_in_halves
    monkeypatch.setattr(PostLNEncoder, "_layers_in_halves",
                        lambda self, *a: calls.append(a[-1]) or original(self, *a))
    encoder = _encoder(tiny_mpnet)
    ids, mask = _padded_batch(_hf_config(tiny_mpnet), [TOKEN_HALVES_FROM + 1], seed=2)
    halves = _run(encoder, ids, mask)
    assert len(calls) == 1  # traced once, in the dense branch
    whole = encoder.forward(tf.constant(ids), tf.constant(mask)).numpy()  # the padded path: no halves
    assert len(calls) == 1 and np.abs(halves - whole).max() <= TOL


def test_token_halves_are_traced_into_the_dense_path_of_the_pre_norm_encoder(tiny_qwen3, monkeypatch):
    from packager.encoders.pre_norm import PreNormEncoder

    halves = []
    original = PreNormEncoder._layers
    monkeypatch.setattr(PreNormEncoder, "_layers", lambda self, *a: halves.append(a[-1]) or original(self, *a))
    encoder = _encoder(tiny_qwen3)
    ids, mask = _batch_for("tiny_qwen3", tiny_qwen3, [TOKEN_HALVES_FROM + 1], seed=2)
    got = _run(encoder, ids, mask)
    assert sorted(halves) == [False, False, True]  # dense: both branches of the cond; the sorted path: whole
    ref = _reference(_torch_model(tiny_qwen3), ids, mask)
    assert _real_diff(got, ref, mask) <= TOL


@pytest.mark.parametrize("fixture", ALL)
def test_encoder_matches_hf_when_the_one_row_carries_padding(fixture, request):
    """A lone row with padding (a caller padding to a fixed length) must not take the dense
    single-row path: it goes through the sorted path, and matches HF on its real tokens."""
    model_dir = request.getfixturevalue(fixture)
    ids, mask = _batch_for(fixture, model_dir, [23, 30], seed=9)
    ids, mask = ids[:1], mask[:1]  # 23 real tokens padded to 30
    ref = _reference(_torch_model(model_dir), ids, mask)
    got = _run(_encoder(model_dir), ids, mask)
    assert _real_diff(got, ref, mask) <= TOL
    assert not got[~mask.astype(bool)].any()


def test_single_row_with_token_types_matches_the_batched_path_when_a_pair_is_served(tiny_bert):
    encoder = _encoder(tiny_bert)
    ids, mask = _padded_batch(_hf_config(tiny_bert), [19], seed=4)
    types = np.zeros_like(ids)
    types[:, 9:] = 1
    alone = encoder.with_token_types(tf.constant(ids), tf.constant(types), tf.constant(mask)).numpy()
    two = encoder.with_token_types(tf.constant(np.repeat(ids, 2, 0)), tf.constant(np.repeat(types, 2, 0)),
                                   tf.constant(np.repeat(mask, 2, 0))).numpy()
    plain = encoder.forward(tf.constant(ids), tf.constant(mask), token_type_ids=tf.constant(types)).numpy()
    assert np.abs(alone[0] - two[0]).max() <= TOL and np.abs(alone - plain).max() <= TOL
    assert np.abs(alone - _run(encoder, ids, mask)).max() > 1e-4  # the types were used


@pytest.mark.parametrize("fixture", ["tiny_xlmr", "tiny_modernbert", "tiny_qwen3"])
@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("seq", [0, 7])
def test_encoder_returns_empty_states_when_batch_is_empty(fixture, unpad, seq, request):
    model_dir = request.getfixturevalue(fixture)
    encoder = _encoder(model_dir, unpad=unpad)
    out = encoder(tf.zeros([0, seq], tf.int64), tf.zeros([0, seq], tf.int64))
    assert out.shape == (0, seq, _hf_config(model_dir)["hidden_size"])


@pytest.mark.parametrize("fixture", ALL)
def test_encoder_gives_same_real_token_states_when_batched_with_padding_or_alone(fixture, request):
    """Alone, a left-padded Qwen row starts at position 0 instead of past the padding: rotary
    attention depends on position differences only, so its states agree within rounding."""
    model_dir = request.getfixturevalue(fixture)
    encoder = _encoder(model_dir)
    lengths = [40, 9, 3]
    ids, mask = _batch_for(fixture, model_dir, lengths, seed=1)
    batched = _run(encoder, ids, mask)
    for i in range(len(lengths)):
        keep = mask[i].astype(bool)
        alone = _run(encoder, ids[i : i + 1, keep], mask[i : i + 1, keep])
        assert np.abs(batched[i, keep] - alone[0]).max() <= TOL


@pytest.mark.parametrize("fixture", ["tiny_mpnet", "tiny_modernbert", "tiny_qwen3_sliding", "tiny_qwen2"])
@pytest.mark.parametrize("chunk_tokens", [1, 16, 64, 100000])
def test_sorted_chunks_match_hugging_face_when_a_mixed_batch_is_split(fixture, chunk_tokens, request):
    """The batch is sorted by length and run in chunks (one row each at 1, all rows at 100000);
    rows come back in input order, equal to HF on real tokens and zero on padding. MPNet: its
    relative bias depends on the chunk-cut length; ModernBERT: the sliding window must hold in a
    cut chunk; Qwen: left padding, so chunks are cut at the front and keep their positions."""
    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    ids, mask = _batch_for(fixture, model_dir, [3, 40, 1, 17, 40, 2, 9, 33], seed=5)
    enc = _encoder(model_dir)
    got = enc.forward_sorted(tf.constant(ids), tf.constant(mask), chunk_tokens=chunk_tokens).numpy()
    assert got.shape == ids.shape + (cfg["hidden_size"],)
    assert _real_diff(got, _reference(_torch_model(model_dir), ids, mask), mask) <= TOL
    assert not got[~mask.astype(bool)].any()
    empty = enc.forward_sorted(tf.zeros([0, 7], tf.int64), tf.zeros([0, 7], tf.int64), chunk_tokens=chunk_tokens)
    assert empty.shape == (0, 7, cfg["hidden_size"])


@pytest.mark.slow
def test_modernbert_matches_hf_when_sequences_span_several_windows(tmp_path):
    """Default-like ModernBERT geometry scaled down: window 32 on 300-token rows, every third layer global."""
    import transformers as tr

    cfg = tr.ModernBertConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                              num_attention_heads=4, local_attention=32, pad_token_id=0, bos_token_id=1,
                              eos_token_id=2, cls_token_id=1, sep_token_id=2)
    path = _save_random_hf(tr.ModernBertModel(cfg), tmp_path, seed=21)
    ids, mask = _padded_batch(_hf_config(path), [300, 45, 130], seed=3)
    ref = _reference(_torch_model(path), ids, mask)
    assert _real_diff(_run(_encoder(path), ids, mask), ref, mask) <= TOL


def test_qwen3_encoder_matches_hf_base_model_when_checkpoint_is_a_causal_lm(tmp_path):
    """A ``Qwen3ForCausalLM`` checkpoint: the base model under ``model.``, plus ``lm_head`` (ignored)."""
    import transformers as tr

    lm = _randomize(tr.Qwen3ForCausalLM(_qwen3_config(tie_word_embeddings=False)), seed=4)
    lm.save_pretrained(str(tmp_path))
    assert any(k.startswith("model.") for k in load_weights(tmp_path / "model.safetensors"))
    ids, mask = _padded_batch(_hf_config(tmp_path), [12, 30, 1], seed=6, left=True)
    ref = _reference(lm.model, ids, mask)
    assert _real_diff(_run(_encoder(tmp_path), ids, mask), ref, mask) <= TOL


def test_encoder_matches_hf_when_default_model_padded_to_max_seq_length(default_model_dir):
    cfg = _hf_config(default_model_dir)
    assert cfg["model_type"] == "bert" and cfg["hidden_size"] == 384 and cfg["num_hidden_layers"] == 6
    ids, mask = _padded_batch(cfg, [256, 3, 128, 40, 1, 200, 17, 9], seed=2)
    ref = _reference(_torch_model(default_model_dir), ids, mask)
    got = _run(_encoder(default_model_dir), ids, mask)
    assert _real_diff(got, ref, mask) <= TOL


@pytest.mark.slow
def test_mpnet_encoder_matches_hf_when_base_sized_and_sequences_reach_512_tokens(tmp_path):
    """all-mpnet-base-v2 geometry (12 layers, 768 hidden, 514 positions), random weights:
    relative-bias buckets far beyond max_distance=128 and RoBERTa positions up to 513."""
    import transformers as tr

    cfg = tr.MPNetConfig(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, pad_token_id=1)
    torch.manual_seed(0)
    model = tr.MPNetModel(cfg, add_pooling_layer=False)
    with torch.no_grad():  # make the relative bias large enough that a wrong bucket shows
        model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    model.eval().save_pretrained(str(tmp_path))
    hf_cfg = _hf_config(tmp_path)
    ids, mask = _padded_batch(hf_cfg, [512, 300, 7], seed=3)
    ref = _reference(model, ids, mask)
    assert _real_diff(_run(_encoder(tmp_path), ids, mask), ref, mask) <= TOL


def test_mpnet_relative_position_bucket_matches_hf_when_distances_span_thousands():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    from packager.encoders.mpnet import relative_position_bucket

    rel = torch.arange(-3000, 3001)
    expected = MPNetEncoder.relative_position_bucket(rel).numpy()
    np.testing.assert_array_equal(relative_position_bucket(rel.numpy()), expected)


@pytest.mark.parametrize("hidden_act,eps", [("gelu_new", 1e-5), ("relu", 1e-12), ("silu", 1e-7)])
def test_bert_encoder_matches_hf_when_config_uses_other_activation_and_eps(hidden_act, eps, tmp_path):
    import transformers as tr

    cfg = tr.BertConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=31, max_position_embeddings=40, hidden_act=hidden_act,
                        layer_norm_eps=eps)
    path = _save_random_hf(tr.BertModel(cfg, add_pooling_layer=False), tmp_path, seed=5)
    ids, mask = _padded_batch(_hf_config(path), [40, 11, 2], seed=4)
    ref = _reference(_torch_model(path), ids, mask)
    assert _real_diff(_run(_encoder(path), ids, mask), ref, mask) <= TOL


@pytest.mark.parametrize("model,act", [("modernbert", "gelu_pytorch_tanh"), ("modernbert", "silu"),
                                       ("qwen3", "gelu"), ("qwen2", "relu")])
def test_pre_norm_encoder_matches_hf_when_config_uses_other_activation(model, act, tmp_path):
    import transformers as tr

    if model == "modernbert":
        cfg = tr.ModernBertConfig(vocab_size=80, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                                  num_attention_heads=2, hidden_activation=act, local_attention=4,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
        hf, left = tr.ModernBertModel(cfg), False
    elif model == "qwen3":
        hf, left = tr.Qwen3Model(_qwen3_config(hidden_act=act, num_hidden_layers=2)), True
    else:
        cfg = tr.Qwen2Config(vocab_size=80, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, hidden_act=act, pad_token_id=0)
        hf, left = tr.Qwen2Model(cfg), True
    path = _save_random_hf(hf, tmp_path, seed=8)
    ids, mask = _padded_batch(_hf_config(path), [19, 4, 1], seed=4, left=left)
    ref = _reference(_torch_model(path), ids, mask)
    assert _real_diff(_run(_encoder(path), ids, mask), ref, mask) <= TOL


# --------------------------------------------------------------------------- activations
def _torch_reference_activation(name: str):
    from transformers.activations import ACT2FN

    if name in ACT2FN:
        return ACT2FN[name]
    dotted = next(k for k, v in TORCH_ACTIVATIONS.items() if v == name)
    module, cls = dotted.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[cls]), cls)()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_torch_when_applied_to_a_grid(name):
    x = np.linspace(-30.0, 30.0, 4001, dtype=np.float32)
    expected = _torch_reference_activation(name)(torch.from_numpy(x)).numpy()
    got = ACTIVATIONS[name](tf.constant(x)).numpy()
    assert np.abs(got - expected).max() <= 2e-6 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("dotted", sorted(TORCH_ACTIVATIONS))
def test_torch_activation_names_map_to_the_same_function_when_dense_names_them(dotted):
    module, cls = dotted.rsplit(".", 1)
    expected_fn = getattr(__import__(module, fromlist=[cls]), cls)()
    x = np.linspace(-30.0, 30.0, 1001, dtype=np.float32)
    for spelling in (dotted, cls):
        got = ACTIVATIONS[torch_name_to_activation(spelling)](tf.constant(x)).numpy()
        assert np.abs(got - expected_fn(torch.from_numpy(x)).numpy()).max() <= 2e-6 * max(1.0, np.abs(x).max())


def test_torch_activation_lookup_raises_unsupported_naming_the_class_when_unknown():
    with pytest.raises(UnsupportedError, match=r"torch\.nn\.modules\.activation\.Hardtanh"):
        torch_name_to_activation("torch.nn.modules.activation.Hardtanh")


# --------------------------------------------------------------------------- checkpoints
def test_bert_encoder_reads_prefixed_pytorch_model_bin_when_checkpoint_is_a_task_model(tiny_bert, tmp_path):
    """A ``pytorch_model.bin`` saved from a task model: keys under ``bert.`` plus head weights."""
    weights = load_weights(tiny_bert / "model.safetensors")
    state = {f"bert.{k}": torch.from_numpy(v.copy()) for k, v in weights.items()}
    state["cls.predictions.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "pytorch_model.bin")
    cfg = _hf_config(tiny_bert)
    encoder = build_encoder("bert", cfg, load_weights(tmp_path / "pytorch_model.bin"), pad_token_id=0)
    ids, mask = _padded_batch(cfg, [12, 30, 1], seed=6)
    ref = _reference(_torch_model(tiny_bert), ids, mask)
    assert _real_diff(_run(encoder, ids, mask), ref, mask) <= TOL


def test_bert_encoder_accepts_legacy_gamma_beta_names_when_layer_norms_use_them(tiny_bert):
    weights = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in load_weights(tiny_bert / "model.safetensors").items()}
    cfg = _hf_config(tiny_bert)
    ids, mask = _padded_batch(cfg, [9, 4], seed=7)
    got = _run(build_encoder("bert", cfg, weights, pad_token_id=0), ids, mask)
    assert np.abs(got - _run(_encoder(tiny_bert), ids, mask)).max() == 0.0


def test_encoder_raises_model_error_naming_missing_keys_when_checkpoint_lacks_them(tiny_mpnet):
    weights = load_weights(tiny_mpnet / "model.safetensors")
    prefix = "mpnet." if any(k.startswith("mpnet.") for k in weights) else ""
    del weights[prefix + "encoder.relative_attention_bias.weight"]
    del weights[prefix + "encoder.layer.1.attention.attn.q.bias"]
    cfg = _hf_config(tiny_mpnet)
    with pytest.raises(ModelError) as err:
        build_encoder("mpnet", cfg, weights, pad_token_id=1)
    assert "encoder.relative_attention_bias.weight" in str(err.value)
    assert "encoder.layer.1.attention.attn.q.bias" in str(err.value)


@pytest.mark.parametrize("fixture,drop", [
    ("tiny_qwen3", ["layers.1.self_attn.k_norm.weight", "norm.weight", "layers.0.self_attn.q_proj.bias"]),
    ("tiny_modernbert", ["layers.2.attn_norm.bias", "final_norm.weight", "layers.0.mlp.Wi.weight"]),
])
def test_convert_weights_raises_model_error_naming_every_missing_key_when_checkpoint_lacks_them(fixture, drop, request):
    model_dir = request.getfixturevalue(fixture)
    weights = load_weights(model_dir / "model.safetensors")
    for key in drop:
        del weights[key]
    with pytest.raises(ModelError) as err:
        convert(_hf_config(model_dir)["model_type"], _hf_config(model_dir), weights)
    for key in drop:
        assert key in str(err.value)


def test_convert_weights_raises_model_error_naming_shapes_when_kv_heads_disagree_with_weights(tiny_qwen3):
    cfg = dict(_hf_config(tiny_qwen3), num_key_value_heads=4)
    with pytest.raises(ModelError, match=r"layers\.0\.self_attn\.k_proj\.weight: \(32, 48\) \(config expects \(64, 48\)\)"):
        convert("qwen3", cfg, load_weights(tiny_qwen3 / "model.safetensors"))


def test_encoder_raises_model_error_when_weights_belong_to_another_architecture(tiny_distilbert, tiny_bert):
    with pytest.raises(ModelError, match=r"attention\.self\.query"):
        build_encoder("bert", _hf_config(tiny_bert), load_weights(tiny_distilbert / "model.safetensors"), 0)


def test_encoder_raises_model_error_naming_shapes_when_config_disagrees_with_weights(tiny_bert):
    cfg = dict(_hf_config(tiny_bert), intermediate_size=50)
    with pytest.raises(ModelError, match=r"intermediate\.dense\.weight: \(37, 32\)"):
        build_encoder("bert", cfg, load_weights(tiny_bert / "model.safetensors"), 0)


def test_convert_weights_keeps_views_of_the_checkpoint_when_weights_are_float32(tiny_qwen3, tiny_modernbert):
    """No second copy of the weights before they become variables: splits and selections are views."""
    w = load_weights(tiny_qwen3 / "model.safetensors")
    spec = convert("qwen3", _hf_config(tiny_qwen3), w)
    assert np.shares_memory(spec.word_embeddings, w["embed_tokens.weight"])
    assert np.shares_memory(spec.layers[1].q_w, w["layers.1.self_attn.q_proj.weight"])
    w = load_weights(tiny_modernbert / "model.safetensors")
    spec = convert("modernbert", _hf_config(tiny_modernbert), w)
    fused = w["layers.1.attn.Wqkv.weight"]
    assert all(np.shares_memory(m, fused) for m in (spec.layers[1].q_w, spec.layers[1].k_w, spec.layers[1].v_w))
    assert np.shares_memory(spec.layers[1].gate_w, w["layers.1.mlp.Wi.weight"])


@pytest.mark.parametrize("fixture", ["tiny_mpnet", "tiny_modernbert", "tiny_qwen3"])
def test_build_encoder_empties_the_weights_and_gives_the_same_states_when_consuming_them(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    weights = load_weights(model_dir / "model.safetensors")
    consumed = build_encoder(cfg["model_type"], cfg, weights, consume_weights=True)
    assert weights == {}
    ids, mask = _batch_for(fixture, model_dir, [11, 3], seed=3)
    np.testing.assert_array_equal(_run(consumed, ids, mask), _run(_encoder(model_dir), ids, mask))


def _layer_of(name: str) -> int | None:
    import re

    m = re.search(r"\blayers?\.(\d+)\.", name)
    return None if m is None else int(m.group(1))


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_modernbert", "tiny_qwen3"])
def test_build_encoder_frees_each_layers_checkpoint_arrays_once_its_variables_exist(fixture, request, monkeypatch):
    """Export memory: with consume_weights a layer's arrays die as soon as its variables are built (the
    heap is trimmed right then), not when the whole encoder is done; the later layers are still alive."""
    import weakref

    import packager.memory

    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    weights = load_weights(model_dir / "model.safetensors")
    refs = {name: (_layer_of(name), weakref.ref(arr)) for name, arr in weights.items()}
    n_layers = 1 + max(i for i, _ in refs.values() if i is not None)
    seen = []

    def record(collect=False):  # called by build_layers after each layer
        seen.append({i for i, ref in refs.values() if i is not None and ref() is not None})
        return True

    monkeypatch.setattr(packager.memory, "release_freed_memory", record)
    build_encoder(cfg["model_type"], cfg, weights, consume_weights=True)
    assert len(seen) == n_layers
    for k, alive in enumerate(seen):
        assert not alive & set(range(k + 1)), f"after layer {k}: arrays of layers {sorted(alive)} still alive"
        if fixture != "tiny_bert":  # the pre-norm converters only view the checkpoint (BERT's may copy)
            assert alive == set(range(k + 1, n_layers))
    assert all(ref() is None for _, ref in refs.values())


def test_variable_fills_a_large_array_in_blocks_bit_for_bit(monkeypatch):
    """The blockwise copy (no full-size temporaries) gives the same variable as ``tf.Variable``."""
    from packager.encoders import layers

    monkeypatch.setattr(layers, "VARIABLE_BLOCK_BYTES", 100)  # 3 rows of 7 floats per block, a partial last one
    a = np.random.default_rng(0).standard_normal((13, 7)).astype(np.float32) * 1e3
    for dtype in (tf.float32, tf.bfloat16):
        got = layers.variable(a.T.T, "w", dtype)
        expected = tf.Variable(a if dtype == tf.float32 else tf.cast(a, dtype), trainable=False)
        assert (got.dtype, got.shape, got.trainable, got.name) == (dtype, (13, 7), False, "w:0")
        bits = np.uint32 if dtype == tf.float32 else np.uint16
        np.testing.assert_array_equal(got.numpy().view(bits), expected.numpy().view(bits))


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_qwen3"])
def test_encoder_built_with_blockwise_variables_gives_identical_states(fixture, request, monkeypatch):
    from packager.encoders import layers

    model_dir = request.getfixturevalue(fixture)
    ids, mask = _batch_for(fixture, model_dir, [11, 3, 7], seed=4)
    whole = _run(_encoder(model_dir), ids, mask)
    monkeypatch.setattr(layers, "VARIABLE_BLOCK_BYTES", 256)
    np.testing.assert_array_equal(_run(_encoder(model_dir, consume_weights=True), ids, mask), whole)


def test_release_freed_memory_trims_the_heap_on_glibc():
    import platform

    from packager.memory import release_freed_memory

    assert release_freed_memory(collect=True) is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_load_weights_returns_float32_equal_to_torch_when_safetensors_holds_other_float_types(dtype, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(7, 5, generator=g).to(getattr(torch, dtype)),
               "b": torch.randn(3, generator=g).to(getattr(torch, dtype)), "ids": torch.arange(4)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    got = load_weights(tmp_path / "model.safetensors")
    for k, v in tensors.items():
        expected = v.float().numpy() if v.is_floating_point() else v.numpy()
        assert got[k].dtype == expected.dtype
        np.testing.assert_array_equal(got[k], expected)


def test_load_weights_raises_model_error_when_safetensors_is_truncated(tiny_qwen3, tmp_path):
    data = (tiny_qwen3 / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelError, match="bad data offsets|truncated"):
        load_weights(tmp_path / "model.safetensors")


def test_qwen3_encoder_matches_hf_when_checkpoint_is_stored_in_bfloat16(tiny_qwen3, tmp_path):
    """The graph computes in float32 on the bf16 values widened, as transformers does when asked for
    float32. (By default transformers 5 loads such a checkpoint as bfloat16 and computes in it.)"""
    from transformers import AutoModel

    _torch_model(tiny_qwen3).to(torch.bfloat16).save_pretrained(str(tmp_path))
    reference = AutoModel.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids, mask = _padded_batch(_hf_config(tmp_path), [15, 6], seed=2, left=True)
    assert _real_diff(_run(_encoder(tmp_path), ids, mask), _reference(reference, ids, mask), mask) <= TOL


# --------------------------------------------------------------------------- config conversion
@pytest.mark.parametrize("model_type,field,value", [
    ("bert", "hidden_act", "no_such_act"),
    ("bert", "position_embedding_type", "relative_key"),
    ("distilbert", "activation", "no_such_act"),
    ("xlm-roberta", "hidden_act", "no_such_act"),
    ("roberta", "position_embedding_type", "relative_key_query"),
    ("camembert", "hidden_act", "no_such_act"),
    ("mpnet", "hidden_act", "no_such_act"),
    ("modernbert", "hidden_activation", "no_such_act"),
    ("qwen3", "hidden_act", "no_such_act"),
    ("qwen2", "hidden_act", "no_such_act"),
])
def test_convert_config_raises_unsupported_when_config_asks_for_missing_feature(model_type, field, value):
    with pytest.raises(UnsupportedError, match=f"{field} '{value}'"):
        architecture(model_type).convert_config({"model_type": model_type, field: value})


@pytest.mark.parametrize("model_type,config,named", [
    ("qwen3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, r"rope_parameters\.rope_type 'yarn'"),
    ("qwen3", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_scaling\.rope_type 'dynamic'"),
    ("qwen2", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, r"rope_scaling\.rope_type 'linear'"),
    ("modernbert", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e5},
                                        "sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
     r"rope_parameters\.sliding_attention\.rope_type 'linear'"),
    ("modernbert", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, r"rope_scaling\.rope_type 'yarn'"),
    ("modernbert", {"num_hidden_layers": 2, "layer_types": ["full_attention", "chunked_attention"]},
     r"layer_types entry 'chunked_attention'"),
    ("qwen3", {"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"]},
     r"sliding_attention layers without use_sliding_window"),
    ("qwen3", {"num_attention_heads": 6, "num_key_value_heads": 4}, r"num_key_value_heads 4"),
])
def test_convert_config_raises_unsupported_naming_the_field_when_rotary_or_layout_is_not_implemented(
        model_type, config, named):
    with pytest.raises(UnsupportedError, match=named):
        architecture(model_type).convert_config({"model_type": model_type, **config})


def test_convert_config_fills_hf_defaults_when_fields_are_missing():
    cfg = architecture("bert").convert_config({"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12})
    assert cfg["layer_norm_eps"] == 1e-12 and cfg["hidden_act"] == "gelu" and cfg["num_layers"] == 12
    assert architecture("xlm-roberta").convert_config({"pad_token_id": 5})["padding_idx"] == 5
    assert architecture("camembert").convert_config({"model_type": "camembert", "pad_token_id": 3})["padding_idx"] == 3
    assert architecture("mpnet").convert_config({"pad_token_id": 5})["padding_idx"] == 1  # hard-coded by HF
    # Qwen3Config's head_dim default is 128, not hidden / heads; Qwen2 has no such default.
    assert architecture("qwen3").convert_config({"hidden_size": 64, "num_attention_heads": 4})["head_dim"] == 128
    assert architecture("qwen2").convert_config({"hidden_size": 64, "num_attention_heads": 4})["head_dim"] == 16


def _hf_modernbert_layers(**kwargs) -> list[dict]:
    """What transformers 5 makes of a ModernBERT config: (rope theta, half window or None) per layer."""
    import transformers as tr

    c = tr.ModernBertConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, **kwargs)
    return [{"rope_theta": float(c.rope_parameters[t]["rope_theta"]),
             "look_back": c.sliding_window if t == "sliding_attention" else None,
             "look_ahead": c.sliding_window if t == "sliding_attention" else None} for t in c.layer_types]


@pytest.mark.parametrize("kwargs", [
    {"num_hidden_layers": 7},  # HF defaults: every 3rd layer global, thetas 160000 / 10000, window 128
    {"num_hidden_layers": 5, "global_attn_every_n_layers": 2, "local_attention": 10,
     "global_rope_theta": 1000.0, "local_rope_theta": 77.0},  # transformers 4 spelling
    {"num_hidden_layers": 3, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
     "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 12.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 34.0}}},  # transformers 5
])
def test_modernbert_convert_config_resolves_layers_like_transformers_when_config_uses_either_spelling(kwargs):
    hf_config = {"model_type": "modernbert", **kwargs}
    assert architecture("modernbert").convert_config(hf_config)["layers"] == _hf_modernbert_layers(**kwargs)


def test_modernbert_convert_config_reads_saved_config_when_written_by_transformers_5(tiny_modernbert):
    cfg = architecture("modernbert").convert_config(_hf_config(tiny_modernbert))
    assert [layer["look_back"] for layer in cfg["layers"]] == [None, 4, None]
    assert [layer["rope_theta"] for layer in cfg["layers"]] == [5000.0, 300.0, 5000.0]


def test_qwen3_convert_config_reads_rope_theta_when_config_is_written_by_transformers_4():
    old = {"model_type": "qwen3", "rope_theta": 1000000.0, "rope_scaling": None, "use_sliding_window": False,
           "sliding_window": None, "max_window_layers": 28, "num_hidden_layers": 2, "hidden_size": 64,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    cfg = architecture("qwen3").convert_config(old)
    assert [layer["rope_theta"] for layer in cfg["layers"]] == [1e6, 1e6]
    assert all(layer["look_ahead"] == 0 and layer["look_back"] is None for layer in cfg["layers"])


def test_rope_inverse_frequencies_match_torch_when_bases_and_dims_are_those_of_real_models():
    from packager.encoders.rope import inverse_frequencies

    for base in (10_000.0, 160_000.0, 1_000_000.0):
        for dim in (32, 64, 128):
            expected = (1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))).numpy()
            got = inverse_frequencies(base, dim)
            assert got.dtype == np.float32
            assert np.abs(got.view(np.int32) - expected.view(np.int32)).max() <= 1  # at most 1 ulp


def test_architecture_raises_unsupported_listing_supported_types_when_model_type_is_unknown():
    with pytest.raises(UnsupportedError) as err:
        architecture("llama")
    assert "'llama'" in str(err.value)
    for model_type in ("bert", "roberta", "modernbert", "qwen3", "qwen2"):
        assert model_type in str(err.value)


def test_encoder_package_converts_configs_and_weights_without_importing_tensorflow_when_used_tf_free(tiny_qwen3):
    code = (
        "import sys, json\n"
        "from packager.encoders import SUPPORTED_MODEL_TYPES, architecture, convert\n"
        "from packager.encoders.weights import load_weights\n"
        "for t in SUPPORTED_MODEL_TYPES: architecture(t).convert_config({'model_type': t})\n"
        f"d = {str(tiny_qwen3)!r}\n"
        "spec = convert('qwen3', json.load(open(d + '/config.json')), load_weights(d + '/model.safetensors'))\n"
        "assert len(spec.layers) == 3\n"
        "bad = [m for m in ('tensorflow', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# --------------------------------------------------------------------------- SavedModel
def _largest_graph_constant(pb: Path) -> int:
    """Bytes of the biggest ``Const`` tensor anywhere in a SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    graph = sm.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return max((len(n.attr["value"].tensor.tensor_content) for n in nodes if n.op == "Const"), default=0)


@pytest.mark.parametrize("fixture", TINY + ["tiny_modernbert", "tiny_qwen3"])
def test_encoder_gives_same_output_when_saved_and_reloaded_as_saved_model(fixture, request, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    encoder = _encoder(model_dir)
    assert encoder.variables and not encoder.trainable_variables
    export = tmp_path / "saved"
    tf.saved_model.save(encoder, str(export), signatures=encoder.__call__.get_concrete_function())
    # Weights live in variables/, not as constants in the graph.
    weight_bytes = sum(v.numpy().nbytes for v in encoder.variables)
    assert (export / "variables" / "variables.data-00000-of-00001").stat().st_size >= weight_bytes
    assert _largest_graph_constant(export / "saved_model.pb") < 4096

    loaded = tf.saved_model.load(str(export))
    ids, mask = _batch_for(fixture, model_dir, [20, 6, 1], seed=8)
    serve = loaded.signatures["serving_default"]
    (out,) = serve(input_ids=tf.constant(ids), attention_mask=tf.constant(mask)).values()
    np.testing.assert_array_equal(out.numpy(), _run(encoder, ids, mask))
    np.testing.assert_array_equal(loaded(tf.constant(ids), tf.constant(mask)).numpy(), out.numpy())


# --------------------------------------------------------------------------- sentence-transformers
@pytest.mark.parametrize("arch", ["qwen3", "modernbert", "roberta"])
def test_encoder_and_heads_match_sentence_transformers_encode_when_fed_hf_token_ids(arch, tmp_path, corpus):
    """HF-tokenized ids (left-padded for Qwen3, whose tokenizer appends EOS) through this encoder and
    the exported pooling/normalize modules equal ``SentenceTransformer.encode``."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from packager.source import load_spec

    st_dir = tiny_models.make_bpe_st(tmp_path, arch)
    sentences = [s for s in corpus if s.strip()][:40] + ["a", "hello world " * 30]
    expected = SentenceTransformer(str(st_dir), device="cpu").encode(sentences, batch_size=64, convert_to_numpy=True)
    tok = AutoTokenizer.from_pretrained(str(st_dir))
    enc = tok(sentences, padding=True, truncation=True, max_length=48, return_tensors="np")
    mask = enc["attention_mask"]
    if arch == "qwen3":
        assert tok.padding_side == "left" and (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    features = {"input_ids": tf.constant(enc["input_ids"], tf.int64), "attention_mask": tf.constant(mask, tf.int64)}
    features["token_embeddings"] = _encoder(st_dir)(features["input_ids"], features["attention_mask"])
    spec = load_spec(st_dir)
    for head in spec.heads:
        features = head.build(spec.model_dir)(features)
    got = features["sentence_embedding"].numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOL


# --------------------------------------------------------------------------- registry
def test_supported_model_types_resolve_to_converters_when_listed():
    for model_type in SUPPORTED_MODEL_TYPES:
        arch = architecture(model_type)
        assert callable(arch.convert_config) and callable(arch.convert_weights)


# --------------------------------------------------------------------------- precision
def test_check_precision_refuses_bf16_naming_the_flags_when_cpu_lacks_bfloat16(tmp_path):
    from packager.encoders.precision import bf16_supported, check_precision

    plain, amx, arm = tmp_path / "plain", tmp_path / "amx", tmp_path / "arm"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert not bf16_supported(plain) and bf16_supported(amx) and not bf16_supported(arm)
    assert not bf16_supported(tmp_path / "missing")
    assert check_precision("fp32", plain) == "fp32"
    assert check_precision("bf16", amx) == "bf16"
    with pytest.raises(UnsupportedError, match="avx512_bf16 or amx_bf16"):
        check_precision("bf16", plain)
    with pytest.raises(UnsupportedError, match="unsupported precision 'fp16'. Supported: fp32, bf16"):
        check_precision("fp16", amx)


def test_build_encoder_refuses_bf16_before_building_when_cpu_lacks_bfloat16(tiny_bert, monkeypatch):
    from packager.encoders import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda cpuinfo="/proc/cpuinfo": False)
    with pytest.raises(UnsupportedError, match="precision 'bf16' needs a CPU with native bfloat16"):
        _encoder(tiny_bert, precision="bf16")
    with pytest.raises(UnsupportedError, match="unsupported precision"):
        _encoder(tiny_bert, precision="float32")


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16 matmuls")
@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_mpnet", "tiny_modernbert", "tiny_qwen3"])
def test_bf16_encoder_keeps_kernels_in_bfloat16_and_stays_close_to_fp32_when_cpu_has_bfloat16(fixture, request):
    """bf16 is reduced precision (never parity): kernels stored as bfloat16, norms and embeddings in
    float32, the output float32 and within bfloat16 rounding of the exact encoder."""
    model_dir = request.getfixturevalue(fixture)
    exact, half = _encoder(model_dir), _encoder(model_dir, precision="bf16")
    assert exact.precision == "fp32" and half.precision == "bf16"
    kernels = [v for v in half.variables if "kernel" in v.name]
    assert kernels and all(v.dtype == tf.bfloat16 for v in kernels)
    assert all(v.dtype == tf.float32 for v in half.variables if "norm" in v.name or "embeddings" in v.name)
    ids, mask = _batch_for(fixture, model_dir, MIXED, seed=2)
    a, b = _run(exact, ids, mask), _run(half, ids, mask)
    assert b.dtype == np.float32
    real = mask.astype(bool)
    cos = (a * b).sum(-1)[real] / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))[real]
    assert cos.min() > 0.999
    assert 0 < np.abs(a - b)[real].max() < 0.1 * np.abs(a[real]).max()
    assert not b[~real].any()
    one = _run(half, ids[:1, : MIXED[0]], mask[:1, : MIXED[0]])  # the dense single-row path in bf16
    assert np.abs(one[0] - b[0, : MIXED[0]]).max() < 0.1 * np.abs(a[real]).max()


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_qwen3"])
def test_every_projection_is_held_in_parts_that_concatenate_to_its_checkpoint_weight_when_built(fixture, request):
    """Each projection is PROJECTION_PARTS column parts (separate MatMuls the executor runs at once,
    packager.settings.thread_split); together they are the checkpoint's weight, column for column."""
    from packager.encoders.layers import Projection
    from packager.settings import PROJECTION_PARTS

    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    enc = _encoder(model_dir)
    ckpt = load_weights(Path(model_dir) / "model.safetensors")
    projections = [m for m in enc.submodules if isinstance(m, Projection)]
    assert projections
    layer0 = enc.layers[0]
    if fixture == "tiny_bert":
        expected = {layer0.ffn_in: ckpt["encoder.layer.0.intermediate.dense.weight"].T,
                    layer0.ffn_out: ckpt["encoder.layer.0.output.dense.weight"].T}
        assert len(projections) == 4 * cfg["num_hidden_layers"]
    else:
        expected = {layer0.down: ckpt["layers.0.mlp.down_proj.weight"].T,
                    layer0.attention_output: ckpt["layers.0.self_attn.o_proj.weight"].T}
        assert len(layer0.gate.kernels) == len(layer0.up.kernels) == 1  # gate and up: two projections at once
    for proj, weight in expected.items():
        assert len(proj.kernels) == PROJECTION_PARTS
        np.testing.assert_array_equal(np.concatenate([k.numpy() for k in proj.kernels], axis=1), weight)
