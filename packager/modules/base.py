"""The base class of sentence-transformers module types (one subclass per file, like ST's ``models/``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..files import safe_join


@dataclass(frozen=True)
class Module:
    """One entry of ``modules.json`` with its configuration read (plain data; no TensorFlow).

    Subclasses set :attr:`KIND` (the class name) and :attr:`TYPES` (every ``modules.json`` type string
    of that class, old and new sentence-transformers paths), implement :meth:`from_folder` (TF-free),
    :meth:`output_dim` and :meth:`build` (TF: a ``tf.Module`` whose ``__call__`` maps the feature
    dict to the feature dict, with sentence-transformers' names ``input_ids``, ``attention_mask``,
    ``token_embeddings``, ``sentence_embedding``).

    Attributes:
        name: the entry's name (``"1_Pooling"``).
        path: its folder relative to the model folder (``""`` for the root).
        type: the exact ``type`` string from ``modules.json``.
    """

    KIND: ClassVar[str] = ""
    TYPES: ClassVar[tuple[str, ...]] = ()

    name: str
    path: str
    type: str

    @property
    def kind(self) -> str:
        return self.KIND

    def directory(self, model_dir: Path) -> Path:
        return safe_join(model_dir, self.path)

    @classmethod
    def from_folder(cls, model_dir: Path, module_dir: Path, *, name: str, path: str, type: str) -> "Module":
        """Read the module's configuration from its folder (raises ModelError / UnsupportedError)."""
        raise NotImplementedError

    def output_dim(self, input_dim: int | None) -> int | None:
        """The size of the sentence embedding after this module, given the size before it."""
        return input_dim

    def build(self, model_dir: Path):
        """The TensorFlow half: a ``tf.Module`` mapping the feature dict to the feature dict."""
        raise NotImplementedError
