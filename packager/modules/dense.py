"""sentence-transformers ``Dense``: a linear layer + activation on the sentence embedding.

The activation is stored in the config as a dotted torch name; it is mapped, never imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..files import read_json
from .base import Module

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def torch_activation(dotted: str | None) -> str:
    """The activation name for a dotted torch class name (or its last part); Identity for None.

    Raises:
        UnsupportedError: an activation packager does not map, naming the supported ones.
    """
    from ..encoders.activations import torch_name_to_activation  # TF-free

    return torch_name_to_activation(dotted or "torch.nn.modules.linear.Identity")


@dataclass(frozen=True)
class Dense(Module):
    KIND = "Dense"
    TYPES = (
        "sentence_transformers.models.Dense",
        "sentence_transformers.models.Dense.Dense",
        "sentence_transformers.base.modules.dense.Dense",
    )

    in_features: int = 0
    out_features: int = 0
    bias: bool = True
    activation: str = "linear"
    use_residual: bool = False
    input_name: str = "sentence_embedding"
    output_name: str = "sentence_embedding"
    weights_file: str = "model.safetensors"

    @classmethod
    def from_folder(cls, model_dir: Path, module_dir: Path, **entry) -> "Dense":
        cfg = read_json(module_dir / "config.json", "Dense config")
        weights = [p for p in WEIGHT_FILES if (module_dir / p).is_file()]
        if not weights:
            raise ModelError(f"Dense module {module_dir} has no model.safetensors or pytorch_model.bin")
        return cls(
            **entry,
            in_features=int(cfg["in_features"]),
            out_features=int(cfg["out_features"]),
            bias=bool(cfg.get("bias", True)),
            activation=torch_activation(cfg.get("activation_function")),
            use_residual=bool(cfg.get("use_residual", False)),
            input_name=cfg.get("module_input_name", "sentence_embedding"),
            output_name=cfg.get("module_output_name") or cfg.get("module_input_name", "sentence_embedding"),
            weights_file=weights[0],
        )

    def output_dim(self, input_dim):
        return self.out_features

    def build(self, model_dir: Path):
        import tensorflow as tf

        from ..encoders.layers import ACTIVATIONS
        from ..encoders.weights import load_weights

        cfg = self
        module_dir = self.directory(model_dir)
        w = load_weights(module_dir / self.weights_file)
        act = ACTIVATIONS[self.activation]

        def get(name):
            for key in (name, "linear." + name.split(".", 1)[-1]):
                if key in w:
                    return w[key]
            raise ModelError(f"Dense weights in {module_dir} lack {name!r}; found {sorted(w)}")

        class DenseModule(tf.Module):
            def __init__(self):
                super().__init__(name="dense")
                self.kernel = tf.Variable(get("linear.weight").T.astype("float32"), trainable=False, name="kernel")
                self.bias = (tf.Variable(get("linear.bias").astype("float32"), trainable=False, name="bias")
                             if cfg.bias else None)
                self.residual = (
                    tf.Variable(get("residual.weight").T.astype("float32"), trainable=False, name="residual")
                    if cfg.use_residual and cfg.in_features != cfg.out_features
                    else None
                )

            def __call__(self, features: dict) -> dict:
                x = features[cfg.input_name]
                y = tf.matmul(x, self.kernel)
                if self.bias is not None:
                    y = y + self.bias
                y = act(y)
                if cfg.use_residual:
                    y = y + (x if self.residual is None else tf.matmul(x, self.residual))
                features = dict(features)
                features[cfg.output_name] = y
                return features

        return DenseModule()
