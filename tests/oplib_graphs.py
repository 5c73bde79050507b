"""Small SavedModels that use the same TF-Text ops as packager's in-graph WordPiece tokenizer.

They stand in for a real export where a test is about ops, not about a model: the op-library
analysis, the build check, and loading in older TF / TF-Text releases. The layout is that of
``packager.graph.export``: ``serving_default`` and ``tokenize`` signatures keyed
``input_sequence``, and a ``packager.json`` manifest beside ``saved_model.pb``.

``trim="round_robin"`` truncates with ``text.RoundRobinTrimmer``, whose ``TFText>RoundRobinTrim``
op is missing from TF-Text 2.12.1 (the TF-Serving 2.12-2.19 failure of tensorflow/serving#2267).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    words = ["hello", "world", "the", "cat", "sat", "on", "mat", "un", "##able", "##ing", "."]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    return SPECIALS + words + letters + ["##" + c for c in letters]


def build_module(vocab: list[str], *, max_len: int = 16, dim: int = 8, trim: str = "slice", seed: int = 0):
    import tensorflow as tf
    import tensorflow_text as text

    cls_id, sep_id, pad_id = vocab.index("[CLS]"), vocab.index("[SEP]"), vocab.index("[PAD]")
    sig = [tf.TensorSpec([None], tf.string, name="input_sequence")]

    class StandIn(tf.Module):
        def __init__(self):
            super().__init__(name="standin")
            self.wordpiece = text.FastWordpieceTokenizer(vocab, token_out_type=tf.int64, no_pretokenization=True,
                                                         unknown_token="[UNK]")
            rng = np.random.default_rng(seed)
            self.table = tf.Variable(rng.standard_normal((len(vocab), dim)).astype("float32"), name="embeddings")
            self.trimmer = text.RoundRobinTrimmer(max_seq_length=max_len - 2) if trim == "round_robin" else None

        def _ids(self, strings):
            # the op mix of packager's exact BERT normalisation (see NOTES / tokenizers/wordpiece.py)
            s = tf.strings.regex_replace(strings, r"[\t\n\r]", " ")
            s = tf.strings.regex_replace(s, r"[\p{Cc}\p{Cf}]", "")
            s = text.normalize_utf8(s, "NFD")
            s = tf.strings.regex_replace(s, r"\p{Mn}", "")
            s = tf.strings.lower(s)
            words = text.regex_split(s, r"\s+|([\p{P}])", r"[\p{P}]")
            ids = self.wordpiece.tokenize(words.flat_values)
            ids = words.with_flat_values(ids).merge_dims(-2, -1)
            if self.trimmer is not None:
                ids = self.trimmer.trim([ids])[0]
            else:
                ids = ids[:, : max_len - 2]
            n = tf.shape(ids.row_lengths())[0]
            cls = tf.fill([n, 1], tf.constant(cls_id, tf.int64))
            sep = tf.fill([n, 1], tf.constant(sep_id, tf.int64))
            full = tf.concat([cls, ids, sep], axis=1)
            input_ids = full.to_tensor(default_value=pad_id)
            mask = tf.sequence_mask(full.row_lengths(), tf.shape(input_ids)[1], dtype=tf.int64)
            return input_ids, mask

        @tf.function(input_signature=sig)
        def tokenize(self, input_sequence):
            input_ids, mask = self._ids(input_sequence)
            return {"input_ids": input_ids, "attention_mask": mask}

        @tf.function(input_signature=sig)
        def serve(self, input_sequence):
            input_ids, mask = self._ids(input_sequence)
            emb = tf.nn.gelu(tf.gather(self.table, input_ids))
            m = tf.cast(mask, tf.float32)[:, :, None]
            pooled = tf.reduce_sum(emb * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1e-9)
            return {"sentence_embedding": tf.math.l2_normalize(pooled, axis=-1)}

    return StandIn()


def save_standin(out_dir: Path, vocab: list[str] | None = None, **kw) -> dict:
    """Save a stand-in export (SavedModel + ``packager.json``) and return its manifest."""
    import tensorflow as tf
    import tensorflow_text

    from packager.manifest import Manifest
    from packager.manifest import write as write_manifest
    from packager.oplibs import analyze_saved_model

    module = build_module(vocab or tiny_vocab(), **kw)
    out_dir = Path(out_dir)
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve, "tokenize": module.tokenize})
    ops = analyze_saved_model(out_dir)
    manifest = Manifest(
        source="stand-in (tests/oplib_graphs.py)", name="standin", model_type="standin",
        output_dim=int(module.table.shape[1]), max_seq_length=16, pooling=("mean",), normalize=True,
        tensorflow=tf.__version__, tensorflow_text=tensorflow_text.__version__,
        op_libraries=tuple(ops["op_libraries"]), custom_ops=tuple(ops["custom_ops"]), ops=tuple(ops["ops"]),
    )
    write_manifest(out_dir, manifest)
    return manifest.to_dict()
