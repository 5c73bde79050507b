"""packager: ship a sentence-transformers model as one TensorFlow serving graph."""

__version__ = "0.1.0"

# The serving signatures' tensor names (embedders; rerankers; the optional prompt input).
INPUT_KEY = "input_sequence"
OUTPUT_KEY = "sentence_embedding"
QUERY_KEY = "query"
DOCUMENT_KEY = "document"
SCORES_KEY = "scores"
PROMPT_KEY = "prompt_name"

from .settings import apply_runtime_settings as _apply  # noqa: E402

# Every entry point (CLI, library calls, tests, benchmarks) imports this package first, so this is
# the one place the runtime settings are applied; values the user set themselves are kept.
_apply()
