"""In-graph tokenizers that give exactly the Hugging Face tokenizer's ids.

``build_tokenizer`` picks the implementation from the HF fast tokenizer's model type:
WordPiece (bert, distilbert, mpnet) -> ``wordpiece.py``; Unigram (xlm-roberta) -> ``sentencepiece.py``;
BPE (roberta, modernbert, qwen2/3, gpt2, llama 3 ...) -> ``bpe.py``.

Contract of the returned ``tf.Module``:
    tokenize(strings: tf.string [B]) -> (input_ids int64 [B, T], attention_mask int64 [B, T])
        T is the longest sequence in the batch (dynamic padding, right side), at most
        ``max_seq_length``; special tokens added as the HF post-processor does; truncation
        keeps the end token (``truncation="longest_first"`` on single sentences).
    pad_id: int
    vocab_size: int
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UnsupportedError


def build_tokenizer(hf_tokenizer, module_dir: Path, max_seq_length: int):
    """Build the in-graph tokenizer for a Hugging Face fast tokenizer.

    Args:
        hf_tokenizer: the ``transformers`` fast tokenizer, configured as sentence-transformers
            configures it (see ``modules.transformer.load_hf_tokenizer``). Its backend is probed
            at export time so the graph reproduces its exact behaviour.
        module_dir: the Transformer module folder (for ``sentencepiece.bpe.model``).
        max_seq_length: truncation length, special tokens included.
    """
    model_type = json.loads(hf_tokenizer.backend_tokenizer.to_str())["model"]["type"]
    if model_type == "WordPiece":
        from .wordpiece import WordPieceTokenizer

        return WordPieceTokenizer(hf_tokenizer, max_seq_length)
    if model_type == "Unigram":
        from .sentencepiece import SentencePieceTokenizer

        return SentencePieceTokenizer(hf_tokenizer, module_dir, max_seq_length)
    if model_type == "BPE":
        from .bpe import BPETokenizer

        return BPETokenizer(hf_tokenizer, max_seq_length)
    raise UnsupportedError(f"unsupported tokenizer model {model_type!r}. Supported: WordPiece, Unigram, BPE")
