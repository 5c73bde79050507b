"""packager: ship a sentence-transformers model as one TensorFlow serving graph."""

__version__ = "0.1.0"

INPUT_KEY = "input_sequence"
OUTPUT_KEY = "sentence_embedding"
