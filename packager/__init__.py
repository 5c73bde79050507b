"""packager: ship a sentence-transformers model as one TensorFlow serving graph."""

__version__ = "0.1.0"

INPUT_KEY = "input_sequence"
OUTPUT_KEY = "sentence_embedding"

from .settings import apply_runtime_settings as _apply  # noqa: E402

# Every entry point (CLI, library calls, tests, benchmarks) imports this package first, so this is
# the one place the runtime settings are applied; values the user set themselves are kept.
_apply()
