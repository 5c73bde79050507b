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

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import INPUT_KEY, OUTPUT_KEY, __version__
from .errors import TargetError
from .progress import steps
from .source import PipelineSpec, load_spec

MANIFEST = "packager.json"


def build_module(spec: PipelineSpec):
    """Build the serving ``tf.Module`` for a spec (weights loaded, nothing written)."""
    import tensorflow as tf

    from .modules import module_for_type

    parts = [module_for_type(m.type).build(m, spec.model_dir) for m in spec.modules]
    transformer, heads = parts[0], parts[1:]
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


def manifest_for(spec: PipelineSpec, saved_model_dir: Path) -> dict:
    import tensorflow as tf
    import tensorflow_text

    from .oplibs import analyze_saved_model

    ops = analyze_saved_model(saved_model_dir)
    return {
        "packager_version": __version__,
        "source": spec.source,
        "name": spec.name,
        "model_type": spec.transformer.config["model_type"],
        "embedding_dim": spec.embedding_dim,
        "max_seq_length": spec.max_seq_length,
        "pooling": spec.pooling,
        "normalize": spec.normalized,
        "modules": [{"name": m.name, "kind": m.kind, "type": m.type} for m in spec.modules],
        "tensorflow": tf.__version__,
        "tensorflow_text": tensorflow_text.__version__,
        "op_libraries": ops["op_libraries"],
        "custom_ops": ops["custom_ops"],
        "ops": ops["ops"],  # every op type, so check_compatible can check core ops from the manifest alone
        "input_key": INPUT_KEY,
        "output_key": OUTPUT_KEY,
        "signatures": ["serving_default", "tokenize"],
    }


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temp dir beside ``final`` (same filesystem, so the final rename is atomic); removed on error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, final: Path, force: bool) -> None:
    """Move ``tmp`` to ``final`` atomically; an existing ``final`` is replaced only with ``force``.

    The old tree is renamed aside first and removed only after the new one is in place, so a crash
    at any point leaves either the old or the new tree under ``final``, never a mixture.
    """
    if final.exists() or final.is_symlink():
        if not force:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TargetError(f"{final} already exists; pass --force to replace it")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(
        module,
        str(path),
        # TF2's saver already strips default-valued attrs, which older server runtimes need.
        signatures={"serving_default": module.serve, "tokenize": module.tokenize},
    )


def export(model=None, out_dir: str | os.PathLike = "exports/model", *, force: bool = False,
           spec: PipelineSpec | None = None) -> dict:
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
        TargetError: ``out_dir`` exists and ``force`` is not set.
    """
    out = Path(out_dir)
    spec = spec or load_spec(model)
    if out.exists() and not force:
        raise TargetError(f"{out} already exists; pass --force to replace it")
    with steps(f"export {spec.source}") as step:
        with step("load weights and derive the in-graph tokenizer"):
            module = build_module(spec)
        with staging_dir(out) as tmp:
            with step("trace and save the SavedModel"):
                save(module, tmp)
            with step("write the manifest"):
                manifest = manifest_for(spec, tmp)
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            replace_dir(tmp, out, force)
    return manifest


def read_manifest(export_dir: str | os.PathLike) -> dict:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise TargetError(f"{export_dir} is not a packager export (no {MANIFEST})")
    return json.loads(path.read_text(encoding="utf-8"))


def load(export_dir: str | os.PathLike, manifest: dict | None = None):
    """Load an export in-process, registering only the op libraries its manifest lists."""
    import tensorflow as tf

    from .oplibs import load_op_libraries

    manifest = manifest or read_manifest(export_dir)
    load_op_libraries(manifest["op_libraries"])
    return tf.saved_model.load(str(export_dir))
