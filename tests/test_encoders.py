"""TF encoders against the Hugging Face torch models: ``last_hidden_state`` on padded batches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from packager.encoders import architecture, build_encoder  # noqa: E402
from packager.encoders.layers import ACTIVATIONS  # noqa: E402
from packager.encoders.weights import load_weights  # noqa: E402
from packager.errors import ModelError, UnsupportedError  # noqa: E402

TOL = 1e-5
TINY = ["tiny_bert", "tiny_distilbert", "tiny_mpnet", "tiny_xlmr"]


def _hf_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def _encoder(model_dir: Path, **options):
    cfg = _hf_config(model_dir)
    weights = load_weights(Path(model_dir) / "model.safetensors")
    arch = architecture(cfg["model_type"])
    return arch.Encoder(arch.convert_config(cfg), weights, pad_token_id=cfg.get("pad_token_id", 0), **options)


def _torch_model(model_dir: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir)).eval()


def _padded_batch(cfg: dict, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids within the vocab (never the pad id) with right padding, like the tokenizer's output."""
    rng = np.random.default_rng(seed)
    pad = cfg.get("pad_token_id", 0)
    vocab = cfg["vocab_size"]
    T = max(lengths)
    ids = rng.integers(0, vocab, size=(len(lengths), T))
    ids[ids == pad] = (pad + 1) % vocab
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad
    return ids.astype(np.int64), mask.astype(np.int64)


def _reference(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return out.last_hidden_state.numpy()


def _run(encoder, ids, mask) -> np.ndarray:
    return encoder(tf.constant(ids), tf.constant(mask)).numpy()


def _real_diff(got: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Max abs diff over real (unpadded) tokens: the only ones any pooling mode reads."""
    return float(np.abs(got - ref)[mask.astype(bool)].max())


def _save_random_hf(model, path: Path, seed: int, bias_scale: float = 0.1) -> Path:
    """Give every parameter non-trivial values, save as safetensors, return the folder."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(bias_scale * torch.randn(p.shape, generator=g))
    model.eval().save_pretrained(str(path))
    return path


@pytest.mark.parametrize("fixture", TINY)
def test_encoder_matches_hf_last_hidden_state_when_padded_batch_of_mixed_lengths(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    ids, mask = _padded_batch(cfg, [17, 1, 64, 5, 33, 2])
    ref = _reference(_torch_model(model_dir), ids, mask)
    got = _run(_encoder(model_dir), ids, mask)
    assert got.shape == ref.shape and got.dtype == np.float32
    real = mask.astype(bool)
    assert np.abs(got - ref)[real].max() <= TOL
    # Padded positions come out as zeros: per-token layers ran on the real tokens only.
    assert not got[~real].any()


@pytest.mark.parametrize("fixture", TINY)
def test_encoder_matches_hf_at_padded_positions_too_when_unpad_is_off(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    ids, mask = _padded_batch(cfg, [17, 1, 64, 5, 33, 2])
    ref = _reference(_torch_model(model_dir), ids, mask)
    # HF masks keys only, and so does the padded layout: every position matches.
    assert np.abs(_run(_encoder(model_dir, unpad=False), ids, mask) - ref).max() <= TOL


@pytest.mark.parametrize("unpad", [True, False])
def test_encoder_returns_empty_states_when_batch_is_empty(tiny_xlmr, unpad):
    encoder = _encoder(tiny_xlmr, unpad=unpad)
    out = encoder(tf.zeros([0, 0], tf.int64), tf.zeros([0, 0], tf.int64))
    assert out.shape == (0, 0, _hf_config(tiny_xlmr)["hidden_size"])


@pytest.mark.parametrize("fixture", TINY)
def test_encoder_gives_same_real_token_states_when_batched_with_padding_or_alone(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    encoder = _encoder(model_dir)
    ids, mask = _padded_batch(cfg, [40, 9, 3], seed=1)
    batched = _run(encoder, ids, mask)
    for i, n in enumerate([40, 9, 3]):
        alone = _run(encoder, ids[i : i + 1, :n], mask[i : i + 1, :n])
        assert np.abs(batched[i, :n] - alone[0]).max() <= TOL


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


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_transformers_when_applied_to_a_grid(name):
    from transformers.activations import ACT2FN

    x = np.linspace(-12.0, 12.0, 2001, dtype=np.float32)
    expected = ACT2FN[name](torch.from_numpy(x)).numpy()
    got = ACTIVATIONS[name](tf.constant(x)).numpy()
    assert np.abs(got - expected).max() <= 2e-6 * max(1.0, np.abs(expected).max())


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


def test_encoder_raises_model_error_when_weights_belong_to_another_architecture(tiny_distilbert, tiny_bert):
    with pytest.raises(ModelError, match=r"attention\.self\.query"):
        build_encoder("bert", _hf_config(tiny_bert), load_weights(tiny_distilbert / "model.safetensors"), 0)


def test_encoder_raises_model_error_naming_shapes_when_config_disagrees_with_weights(tiny_bert):
    cfg = dict(_hf_config(tiny_bert), intermediate_size=50)
    with pytest.raises(ModelError, match=r"intermediate\.dense\.weight: \(37, 32\)"):
        build_encoder("bert", cfg, load_weights(tiny_bert / "model.safetensors"), 0)


@pytest.mark.parametrize("model_type,field,value", [
    ("bert", "hidden_act", "no_such_act"),
    ("bert", "position_embedding_type", "relative_key"),
    ("distilbert", "activation", "no_such_act"),
    ("xlm-roberta", "hidden_act", "no_such_act"),
    ("mpnet", "hidden_act", "no_such_act"),
])
def test_convert_config_raises_unsupported_when_config_asks_for_missing_feature(model_type, field, value):
    with pytest.raises(UnsupportedError, match=value):
        architecture(model_type).convert_config({"model_type": model_type, field: value})


def test_convert_config_fills_hf_defaults_when_fields_are_missing():
    cfg = architecture("bert").convert_config({"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12})
    assert cfg["layer_norm_eps"] == 1e-12 and cfg["hidden_act"] == "gelu" and cfg["num_layers"] == 12
    assert architecture("xlm-roberta").convert_config({"pad_token_id": 5})["padding_idx"] == 5
    assert architecture("mpnet").convert_config({"pad_token_id": 5})["padding_idx"] == 1  # hard-coded by HF


def _largest_graph_constant(pb: Path) -> int:
    """Bytes of the biggest ``Const`` tensor anywhere in a SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    graph = sm.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return max((len(n.attr["value"].tensor.tensor_content) for n in nodes if n.op == "Const"), default=0)


@pytest.mark.parametrize("fixture", TINY)
def test_encoder_gives_same_output_when_saved_and_reloaded_as_saved_model(fixture, request, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    cfg = _hf_config(model_dir)
    encoder = _encoder(model_dir)
    assert encoder.variables and not encoder.trainable_variables
    export = tmp_path / "saved"
    tf.saved_model.save(encoder, str(export), signatures=encoder.__call__.get_concrete_function())
    # Weights live in variables/, not as constants in the graph.
    weight_bytes = sum(v.numpy().nbytes for v in encoder.variables)
    assert (export / "variables" / "variables.data-00000-of-00001").stat().st_size >= weight_bytes
    assert _largest_graph_constant(export / "saved_model.pb") < 4096


    loaded = tf.saved_model.load(str(export))
    ids, mask = _padded_batch(cfg, [20, 6, 1], seed=8)
    serve = loaded.signatures["serving_default"]
    (out,) = serve(input_ids=tf.constant(ids), attention_mask=tf.constant(mask)).values()
    np.testing.assert_array_equal(out.numpy(), _run(encoder, ids, mask))
    np.testing.assert_array_equal(loaded(tf.constant(ids), tf.constant(mask)).numpy(), out.numpy())


@pytest.mark.parametrize("chunk_tokens", [1, 16, 64, 100000])
def test_sorted_chunks_match_hugging_face_when_a_mixed_batch_is_split(tiny_mpnet, chunk_tokens):
    """The batch is sorted by length and run in chunks (one row each at 1, all rows at 100000);
    rows come back in input order, equal to HF on real tokens and zero on padding. MPNet, because its
    relative position bias depends on the (chunk-cut) sequence length."""
    cfg = _hf_config(tiny_mpnet)
    ids, mask = _padded_batch(cfg, [3, 40, 1, 17, 40, 2, 9, 33], seed=5)
    enc = _encoder(tiny_mpnet)
    got = enc.forward_sorted(tf.constant(ids), tf.constant(mask), chunk_tokens=chunk_tokens).numpy()
    assert got.shape == ids.shape + (cfg["hidden_size"],)
    assert _real_diff(got, _reference(_torch_model(tiny_mpnet), ids, mask), mask) < 1e-5
    assert not got[~mask.astype(bool)].any()
    empty = enc.forward_sorted(tf.zeros([0, 7], tf.int64), tf.zeros([0, 7], tf.int64), chunk_tokens=chunk_tokens)
    assert empty.shape == (0, 7, cfg["hidden_size"])
