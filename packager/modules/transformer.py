"""sentence-transformers ``Transformer``: raw strings -> token ids -> token embeddings.

In sentence-transformers this module owns both the Hugging Face tokenizer and the encoder, so
here it owns both halves of the graph too: an exact in-graph tokenizer (``packager.tokenizers``)
and a TF encoder per architecture (``packager.encoders``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelError, UnsupportedError
from ..files import read_json, read_optional_json
from .base import Module

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model")


@dataclass(frozen=True)
class Transformer(Module):
    """Attributes:
        model_type: the Hugging Face ``model_type``.
        hf_config: ``config.json`` as read.
        max_seq_length: truncation length (``sentence_bert_config.json``, else the tokenizer's and
            the model's limits).
        do_lower_case: sentence-transformers lower-cases before the tokenizer.
        weights_file: the checkpoint file in the module folder.
    """

    KIND = "Transformer"
    TYPES = (
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Transformer.Transformer",
        "sentence_transformers.base.modules.transformer.Transformer",
    )

    model_type: str = ""
    hf_config: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    max_seq_length: int = 512
    do_lower_case: bool = False
    weights_file: str = "model.safetensors"
    task: str = "feature-extraction"

    @classmethod
    def from_folder(cls, model_dir: Path, module_dir: Path, **entry) -> "Transformer":
        from ..encoders import SUPPORTED_MODEL_TYPES, architecture

        hf_config = read_json(module_dir / "config.json", "Hugging Face config.json")
        model_type = hf_config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedError(
                f"unsupported model_type {model_type!r} in {module_dir / 'config.json'}. "
                f"Supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        # TF-free and fast: refuses rope scaling, unknown activations or bad head geometry before any TF import.
        architecture(model_type).convert_config(dict(hf_config))
        st_config = read_optional_json(module_dir / "sentence_bert_config.json", "sentence_bert_config.json")
        weights = [f for f in WEIGHT_FILES if (module_dir / f).is_file()]
        if not weights:
            raise ModelError(f"no encoder weights in {module_dir}: expected one of {', '.join(WEIGHT_FILES)}")
        if not any((module_dir / f).is_file() for f in TOKENIZER_FILES):
            raise ModelError(f"no tokenizer files in {module_dir}: expected tokenizer.json, vocab.txt or a SentencePiece model")
        max_len = st_config.get("max_seq_length")
        if max_len is None:
            tok_cfg = read_optional_json(module_dir / "tokenizer_config.json", "tokenizer_config.json")
            candidates = [int(v) for v in (tok_cfg.get("model_max_length"), hf_config.get("max_position_embeddings"))
                          if isinstance(v, (int, float)) and 0 < v < 1e9]
            if not candidates:
                raise ModelError(f"cannot determine max_seq_length for {module_dir}")
            max_len = min(candidates)
        task = st_config.get("transformer_task") or "feature-extraction"
        if task == "sequence-classification":
            from ..encoders.heads import check_config

            check_config(model_type, dict(hf_config))
        return cls(**entry, model_type=model_type, hf_config=hf_config, max_seq_length=int(max_len),
                   do_lower_case=bool(st_config.get("do_lower_case", False)), weights_file=weights[0], task=task)

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config.get("hidden_size") or self.hf_config["dim"])  # DistilBERT calls it "dim"

    def output_dim(self, input_dim=None) -> int:
        return self.hidden_size

    def load_hf_tokenizer(self, model_dir: Path):
        """The Hugging Face fast tokenizer configured exactly as sentence-transformers configures it.

        Used at export time only (to derive the in-graph tokenizer) and by the parity checks.
        Never runs code from the model folder (``trust_remote_code=False``).
        """
        from transformers import AutoTokenizer

        module_dir = self.directory(model_dir)
        tok = AutoTokenizer.from_pretrained(str(module_dir), trust_remote_code=False,
                                            model_max_length=self.max_seq_length)
        if not getattr(tok, "is_fast", False):
            raise UnsupportedError(f"{module_dir}: only fast (tokenizers-backed) Hugging Face tokenizers are supported")
        if self.do_lower_case:
            from tokenizers.normalizers import Lowercase, Sequence

            norm = tok.backend_tokenizer.normalizer
            if "Lowercase" not in repr(norm) and '"lowercase": true' not in (tok.backend_tokenizer.to_str().lower()):
                parts = [Lowercase()] + (list(norm) if isinstance(norm, Sequence) else ([norm] if norm is not None else []))
                tok.backend_tokenizer.normalizer = Sequence(parts)
        return tok

    def build(self, model_dir: Path, *, precision: str = "fp32"):
        """The tokenizer and the encoder (and, for a reranker, its classification head) as one module.

        Features in and out, as sentence-transformers names them: ``tokenize`` gives ``input_ids``,
        ``attention_mask`` (and ``token_type_ids`` for pairs); ``__call__`` adds ``token_embeddings``,
        or ``scores`` (the logits) for a sequence-classification model. ``precision``: the encoder's
        (``"fp32"`` or ``"bf16"``, :func:`packager.encoders.build_encoder`); the head stays float32.
        """
        import tensorflow as tf

        from ..encoders import build_encoder
        from ..encoders.weights import load_weights
        from ..memory import release_freed_memory
        from ..tokenizers import build_tokenizer

        module_dir = self.directory(model_dir)
        hf_tok = self.load_hf_tokenizer(model_dir)
        tokenizer = build_tokenizer(hf_tok, module_dir, self.max_seq_length)
        if self.task == "sequence-classification":
            from ..tokenizers.hf import check_pair_template

            if tokenizer.post.pair is None:
                raise UnsupportedError(f"{module_dir}: the tokenizer's post-processor defines no layout for pairs")
            check_pair_template(hf_tok, tokenizer.post.pair)
        # The model sees token types only where its tokenizer hands them over (BERT yes, XLM-R no).
        use_types = "token_type_ids" in (getattr(hf_tok, "model_input_names", None) or [])
        # The HF tokenizer (hundreds of MB for a 150k vocabulary) and what deriving the in-graph one
        # left behind are freed before the checkpoint is read, not held next to it.
        del hf_tok
        release_freed_memory(collect=True)
        weights = load_weights(module_dir / self.weights_file)
        head = None
        if self.task == "sequence-classification":
            from ..encoders.heads import build_head, convert_head

            head = build_head(convert_head(self.model_type, dict(self.hf_config), weights))
        # consume_weights: each checkpoint array is freed (and the heap trimmed) once its variables
        # exist, so the checkpoint is held about once (docs/performance.md, "Export memory").
        encoder = build_encoder(self.model_type, dict(self.hf_config), weights, consume_weights=True,
                                precision=precision)
        del weights

        class TransformerModule(tf.Module):
            def __init__(self):
                super().__init__(name="transformer")
                self.tokenizer = tokenizer
                self.encoder = encoder
                self.head = head

            def tokenize(self, strings):
                input_ids, attention_mask = self.tokenizer.tokenize(strings)
                return {"input_ids": input_ids, "attention_mask": attention_mask}

            def tokenize_pairs(self, first, second):
                input_ids, token_type_ids, attention_mask = self.tokenizer.tokenize_pair(first, second)
                return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

            def __call__(self, features: dict) -> dict:
                features = dict(features)
                if use_types and "token_type_ids" in features:
                    hidden = self.encoder.with_token_types(features["input_ids"], features["token_type_ids"],
                                                           features["attention_mask"])
                else:
                    hidden = self.encoder(features["input_ids"], features["attention_mask"])
                if self.head is not None:
                    features["scores"] = self.head(hidden, features["attention_mask"])
                else:
                    features["token_embeddings"] = hidden
                return features

        return TransformerModule()


def load_hf_tokenizer(module: Transformer, model_dir: Path):
    """:meth:`Transformer.load_hf_tokenizer` as a function (what tests and tools call)."""
    return module.load_hf_tokenizer(model_dir)
