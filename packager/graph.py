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

from . import DOCUMENT_KEY, INPUT_KEY, OUTPUT_KEY, PROMPT_KEY, QUERY_KEY, SCORES_KEY
from .errors import ModelError, OutputExistsError
from .manifest import Manifest, Prompt
from .manifest import read as read_manifest
from .manifest import write as write_manifest
from .progress import steps
from .source import PipelineSpec, load_spec
from .writer import staged_tree

__all__ = ["build_module", "export", "load", "manifest_for", "read_manifest", "save"]


def prompt_table(spec: PipelineSpec, hf_tokenizer) -> list[Prompt]:
    """The model's prompts with their token counts, measured as sentence-transformers measures them
    (the prompt alone through the tokenizer, minus a trailing special token)."""
    special = set(getattr(hf_tokenizer, "all_special_ids", []) or [])
    out = []
    for name, text in spec.prompts.items():
        n = 0  # a blank prompt is not applied at all (no prompt length), as in sentence-transformers
        if text:
            ids = hf_tokenizer([text], truncation=True, max_length=spec.max_seq_length)["input_ids"][0]
            n = len(ids) - (1 if ids and ids[-1] in special else 0)
        out.append(Prompt(name=name, text=text, n_tokens=n))
    return out


def check_truncate_dim(spec: PipelineSpec, truncate_dim: int | None) -> int | None:
    """``truncate_dim`` itself when the model can give it.

    Raises:
        ModelError: a reranker, or a dimension outside ``1..embedding_dim``.
    """
    if truncate_dim is None:
        return None
    if spec.task != "embed":
        raise ModelError("truncate_dim applies to embedding models, not to a reranker")
    if not 1 <= int(truncate_dim) <= spec.embedding_dim:
        raise ModelError(f"truncate_dim {truncate_dim} is outside 1..{spec.embedding_dim} (the model's dimension)")
    return int(truncate_dim)


def build_module(spec: PipelineSpec, *, truncate_dim: int | None = None, precision: str = "fp32"):
    """Build the serving ``tf.Module`` for a spec (weights loaded, nothing written).

    Its ``signatures()`` are what :func:`save` writes: ``serving_default`` and ``tokenize``, plus
    ``with_prompt`` when the model defines prompts. ``precision``: the encoder's (see :func:`export`).
    """
    import tensorflow as tf

    truncate_dim = check_truncate_dim(spec, truncate_dim)
    # Prompts first: this HF tokenizer is gone before the weights are read (export memory).
    prompts = prompt_table(spec, spec.transformer.load_hf_tokenizer(spec.model_dir))
    transformer = spec.transformer.build(spec.model_dir, precision=precision)
    heads = [m.build(spec.model_dir) for m in spec.heads]
    rerank = spec.task == "rerank"
    first_key = QUERY_KEY if rerank else INPUT_KEY
    from .encoders.activations import ACTIVATIONS

    activation = ACTIVATIONS[spec.activation] if rerank else None

    class ServingGraph(tf.Module):
        """Raw strings in, embeddings (or a reranker's scores) out; the tokenizer inside."""

        def __init__(self):
            super().__init__(name="packager_graph")
            self.transformer = transformer
            self.heads = heads
            self.prompt_names = [p.name for p in prompts]
            if any(p.text for p in prompts):
                # prompt name -> row of the prompt tables; "" (no name) -> the default prompt, or none
                names = self.prompt_names + [""]
                default = self.prompt_names.index(spec.default_prompt_name) if spec.default_prompt_name else len(prompts)
                rows = list(range(len(prompts))) + [default]
                self.prompt_rows = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.constant(rows, tf.int64)), -1)
            self.prompt_texts = [p.text for p in prompts] + [""]
            self.prompt_tokens = [p.n_tokens for p in prompts] + [0]
            self.default_row = (self.prompt_names.index(spec.default_prompt_name) if spec.default_prompt_name
                                else len(prompts))

        def _prompted(self, texts, rows):
            """``prompt + text`` per row (as sentence-transformers prepends it) and the prompt's tokens."""
            if not any(self.prompt_texts):  # no prompt text: nothing to prepend
                return texts, tf.zeros(tf.shape(texts, out_type=tf.int64), tf.int64)
            prefix = tf.gather(tf.constant(self.prompt_texts), rows)
            return tf.strings.join([prefix, texts]), tf.gather(tf.constant(self.prompt_tokens, tf.int64), rows)

        def _rows(self, prompt_name):
            rows = self.prompt_rows.lookup(prompt_name)
            known = ", ".join(repr(n) for n in self.prompt_names)
            check = tf.debugging.assert_non_negative(
                rows, message=f"unknown prompt_name; this model's prompts are {known} (or empty for the default)")
            with tf.control_dependencies([check]):
                return tf.identity(rows)

        def _features(self, first, second, rows):
            texts, n_prompt = self._prompted(first, rows)
            if rerank:
                feats = self.transformer.tokenize_pairs(texts, second)
            else:
                feats = self.transformer.tokenize(texts)
            feats["prompt_length"] = n_prompt
            return feats

        def _outputs(self, feats):
            feats = self.transformer(feats)
            if rerank:
                return {SCORES_KEY: tf.identity(activation(feats["scores"]), name=SCORES_KEY)}
            for head in self.heads:
                feats = head(feats)
            emb = feats["sentence_embedding"]
            if truncate_dim is not None:  # after every module, as SentenceTransformer(truncate_dim=...)
                emb = emb[:, :truncate_dim]
            return {OUTPUT_KEY: tf.identity(emb, name=OUTPUT_KEY)}

        def _default_rows(self, first):
            return tf.fill(tf.shape(first, out_type=tf.int64), tf.constant(self.default_row, tf.int64))

        def signatures(self) -> dict:
            def public(feats):
                return {k: feats[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in feats}

            if rerank:
                @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=QUERY_KEY),
                                              tf.TensorSpec([None], tf.string, name=DOCUMENT_KEY)])
                def serve(query, document):
                    return self._outputs(self._features(query, document, self._default_rows(query)))

                @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=QUERY_KEY),
                                              tf.TensorSpec([None], tf.string, name=DOCUMENT_KEY)])
                def tokenize(query, document):
                    return public(self._features(query, document, self._default_rows(query)))

                sigs = {"serving_default": serve, "tokenize": tokenize}
                if any(p.text for p in prompts):  # all blank: nothing to apply, no signature
                    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=QUERY_KEY),
                                                  tf.TensorSpec([None], tf.string, name=DOCUMENT_KEY),
                                                  tf.TensorSpec([None], tf.string, name=PROMPT_KEY)])
                    def with_prompt(query, document, prompt_name):
                        return self._outputs(self._features(query, document, self._rows(prompt_name)))

                    sigs["with_prompt"] = with_prompt
                return sigs

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
            def serve(input_sequence):
                return self._outputs(self._features(input_sequence, None, self._default_rows(input_sequence)))

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
            def tokenize(input_sequence):
                return public(self._features(input_sequence, None, self._default_rows(input_sequence)))

            sigs = {"serving_default": serve, "tokenize": tokenize}
            if any(p.text for p in prompts):  # all blank: nothing to apply, no signature
                @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY),
                                              tf.TensorSpec([None], tf.string, name=PROMPT_KEY)])
                def with_prompt(input_sequence, prompt_name):
                    return self._outputs(self._features(input_sequence, None, self._rows(prompt_name)))

                sigs["with_prompt"] = with_prompt
            return sigs

    graph = ServingGraph()
    graph.task, graph.prompts, graph.truncate_dim, graph.first_key = spec.task, prompts, truncate_dim, first_key
    graph.precision = transformer.encoder.precision
    return graph


def manifest_for(spec: PipelineSpec, saved_model_dir: Path, graph) -> Manifest:
    """The manifest of a SavedModel just written for ``spec`` by :func:`save` (``graph``: the module)."""
    import tensorflow as tf
    import tensorflow_text

    from .oplibs import analyze_saved_model

    ops = analyze_saved_model(saved_model_dir)
    rerank = spec.task == "rerank"
    return Manifest(
        source=spec.source,
        name=spec.name,
        task=spec.task,
        model_type=spec.transformer.model_type,
        output_dim=graph.truncate_dim or spec.embedding_dim,
        max_seq_length=spec.max_seq_length,
        pooling=() if rerank else tuple(spec.pooling),
        normalize=spec.normalized,
        modules=tuple({"name": m.name, "kind": m.kind, "type": m.type} for m in spec.modules),
        inputs=(QUERY_KEY, DOCUMENT_KEY) if rerank else (INPUT_KEY,),
        output_key=SCORES_KEY if rerank else OUTPUT_KEY,
        signatures=tuple(graph.signatures()),
        prompts=tuple(graph.prompts),
        default_prompt_name=spec.default_prompt_name,
        truncate_dim=graph.truncate_dim,
        activation=spec.activation if rerank else None,
        precision=graph.precision,
        tensorflow=tf.__version__,
        tensorflow_text=tensorflow_text.__version__,
        op_libraries=tuple(ops["op_libraries"]),
        custom_ops=tuple(ops["custom_ops"]),
        ops=tuple(ops["ops"]),  # every op type, so compatibility can be checked from the manifest alone
    )


def save(module, path: Path) -> None:
    import tensorflow as tf

    # TF2's saver already strips default-valued attrs, which older server runtimes need.
    tf.saved_model.save(module, str(path), signatures=module.signatures())


def export(model=None, out_dir: str | os.PathLike = "exports/model", *, force: bool = False,
           spec: PipelineSpec | None = None, truncate_dim: int | None = None, precision: str = "fp32") -> Manifest:
    """Export a sentence-transformers model as one SavedModel with the tokenizer inside.

    Args:
        model: a model folder, a model name in the local HF cache, or ``None`` for the default.
        out_dir: where the SavedModel goes (written atomically).
        force: replace an existing export.
        spec: an already-read spec (skips reading ``model``).
        truncate_dim: keep the first N dimensions (Matryoshka), as ``SentenceTransformer(truncate_dim=N)``.
        precision: ``"fp32"`` (the default: exact, within 1e-5 of sentence-transformers) or ``"bf16"``
            (opt-in reduced precision: the encoder's projection kernels stored and multiplied in
            bfloat16, :mod:`packager.encoders.precision`; recorded in the manifest, verified against
            the reduced-precision thresholds of :mod:`packager.verify`, served with
            :func:`~packager.encoders.precision.serving_environment`).

    Returns:
        The manifest written to ``<out_dir>/packager.json``.

    Raises:
        ModelError: unsupported or broken model (nothing is written).
        UnsupportedError: an unknown precision, or ``"bf16"`` on a CPU without native bfloat16 matmuls
            (checked before the model is read; nothing is written).
        OutputExistsError: ``out_dir`` exists and ``force`` is not set.
    """
    from .encoders.precision import check_precision
    from .memory import release_freed_memory

    check_precision(precision)
    out = Path(out_dir)
    spec = spec or load_spec(model)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; set force to replace it")
    check_truncate_dim(spec, truncate_dim)
    with steps(f"export {spec.source}") as step:
        with step("load weights and derive the in-graph tokenizer"):
            module = build_module(spec, truncate_dim=truncate_dim, precision=precision)
        release_freed_memory(collect=True)  # what building left on the heap, before tracing adds to it
        with staged_tree(out, force=force, keep_existing=False) as tmp:
            with step("trace and save the SavedModel"):
                save(module, tmp)
            release_freed_memory(collect=True)  # tracing's and the saver's garbage, before the pb is read back
            with step("write the manifest"):
                manifest = manifest_for(spec, tmp, module)
                write_manifest(tmp, manifest)
    return manifest


def load(export_dir: str | os.PathLike, manifest: Manifest | None = None):
    """Load an export in-process, registering only the op libraries its manifest lists."""
    import tensorflow as tf

    from .oplibs import load_op_libraries

    manifest = manifest or read_manifest(export_dir)
    load_op_libraries(manifest.op_libraries)
    return tf.saved_model.load(str(export_dir))
