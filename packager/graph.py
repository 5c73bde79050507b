"""Compose tokenizer -> encoder -> heads into one ``tf.Module`` and save it as a SavedModel.

The SavedModel has two signatures:

* ``serving_default``: ``input_sequence`` (tf.string, [batch]) -> ``sentence_embedding``
  (float32, [batch, dim]);
* ``tokenize``: ``input_sequence`` -> ``input_ids`` and ``attention_mask`` (int64, [batch, T]),
  for debugging and parity checks.

Next to ``saved_model.pb`` a ``packager.json`` manifest records the source model, dims, pooling,
the TF / TF-Text versions and the TF-Text op libraries the graph needs.

Example:
    >>> manifest = export(None, Path("exports/minilm"))          # the embedded default model
    >>> graph = load(Path("exports/minilm"))
    >>> graph.signatures["serving_default"](input_sequence=tf.constant(["hello"]))
"""
from __future__ import annotations

import os
from pathlib import Path

from . import INPUT_KEY, OUTPUT_KEY
from .errors import OutputExistsError
from .manifest import Manifest
from .manifest import read as read_manifest
from .manifest import write as write_manifest
from .progress import steps
from .source import PipelineSpec, load_spec
from .writer import staged_tree

__all__ = ["build_module", "export", "load", "manifest_for", "read_manifest", "save"]


def build_module(spec: PipelineSpec):
    """Build the serving ``tf.Module`` for a spec (weights loaded, nothing written)."""
    import tensorflow as tf

    transformer = spec.transformer.build(spec.model_dir)
    heads = [m.build(spec.model_dir) for m in spec.heads]
    sig = [tf.TensorSpec([None], tf.string, name=INPUT_KEY)]

    class ServingGraph(tf.Module):
        def __init__(self):
            super().__init__(name="packager_graph")
            self.transformer = transformer
            self.heads = heads

        @tf.function(input_signature=sig)
        def tokenize(self, input_sequence):
            feats = self.transformer.tokenize(input_sequence)
            return {"input_ids": feats["input_ids"], "attention_mask": feats["attention_mask"]}

        @tf.function(input_signature=sig)
        def serve(self, input_sequence):
            feats = self.transformer(self.transformer.tokenize(input_sequence))
            for head in self.heads:
                feats = head(feats)
            return {OUTPUT_KEY: tf.identity(feats["sentence_embedding"], name=OUTPUT_KEY)}

    return ServingGraph()


def manifest_for(spec: PipelineSpec, saved_model_dir: Path) -> Manifest:
    """The manifest of a SavedModel just written for ``spec``."""
    import tensorflow as tf
    import tensorflow_text

    from .oplibs import analyze_saved_model

    ops = analyze_saved_model(saved_model_dir)
    return Manifest(
        source=spec.source,
        name=spec.name,
        model_type=spec.transformer.model_type,
        output_dim=spec.embedding_dim,
        max_seq_length=spec.max_seq_length,
        pooling=tuple(spec.pooling),
        normalize=spec.normalized,
        modules=tuple({"name": m.name, "kind": m.kind, "type": m.type} for m in spec.modules),
        inputs=(INPUT_KEY,),
        output_key=OUTPUT_KEY,
        signatures=("serving_default", "tokenize"),
        tensorflow=tf.__version__,
        tensorflow_text=tensorflow_text.__version__,
        op_libraries=tuple(ops["op_libraries"]),
        custom_ops=tuple(ops["custom_ops"]),
        ops=tuple(ops["ops"]),  # every op type, so compatibility can be checked from the manifest alone
    )


def save(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(
        module,
        str(path),
        # TF2's saver already strips default-valued attrs, which older server runtimes need.
        signatures={"serving_default": module.serve, "tokenize": module.tokenize},
    )


def export(model=None, out_dir: str | os.PathLike = "exports/model", *, force: bool = False,
           spec: PipelineSpec | None = None) -> Manifest:
    """Export a sentence-transformers model as one SavedModel with the tokenizer inside.

    Args:
        model: a model folder, a model name in the local HF cache, or ``None`` for the default.
        out_dir: where the SavedModel goes (written atomically).
        force: replace an existing export.
        spec: an already-read spec (skips reading ``model``).

    Returns:
        The manifest written to ``<out_dir>/packager.json``.

    Raises:
        ModelError: unsupported or broken model (nothing is written).
        OutputExistsError: ``out_dir`` exists and ``force`` is not set.
    """
    out = Path(out_dir)
    spec = spec or load_spec(model)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; set force to replace it")
    with steps(f"export {spec.source}") as step:
        with step("load weights and derive the in-graph tokenizer"):
            module = build_module(spec)
        with staged_tree(out, force=force, keep_existing=False) as tmp:
            with step("trace and save the SavedModel"):
                save(module, tmp)
            with step("write the manifest"):
                manifest = manifest_for(spec, tmp)
                write_manifest(tmp, manifest)
    return manifest


def load(export_dir: str | os.PathLike, manifest: Manifest | None = None):
    """Load an export in-process, registering only the op libraries its manifest lists."""
    import tensorflow as tf

    from .oplibs import load_op_libraries

    manifest = manifest or read_manifest(export_dir)
    load_op_libraries(manifest.op_libraries)
    return tf.saved_model.load(str(export_dir))
