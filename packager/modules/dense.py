"""sentence-transformers ``Dense``: a linear layer + activation on the sentence embedding.

The activation is stored in the config as a dotted torch name; it is mapped, never imported.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError, UnsupportedError
from ..source import read_json

KIND = "Dense"
TYPES = (
    "sentence_transformers.models.Dense",
    "sentence_transformers.models.Dense.Dense",
    "sentence_transformers.base.modules.dense.Dense",
)

# dotted torch class name -> TF activation (exact torch semantics)
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.SiLU": "silu",
    "torch.nn.modules.activation.LeakyReLU": "leaky_relu",
    "torch.nn.modules.activation.ELU": "elu",
    "torch.nn.modules.activation.Softplus": "softplus",
    "torch.nn.modules.activation.Mish": "mish",
}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def read_config(model_dir: Path, module_dir: Path) -> dict:
    cfg = read_json(module_dir / "config.json", "Dense config")
    act = cfg.get("activation_function") or "torch.nn.modules.linear.Identity"
    by_short = {_short(k): v for k, v in ACTIVATIONS.items()}
    if act not in ACTIVATIONS and _short(act) not in by_short:
        raise UnsupportedError(
            f"unsupported Dense activation {act!r}. Supported: {', '.join(sorted(ACTIVATIONS))}"
        )
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (module_dir / p).is_file()]
    if not weights:
        raise ModelError(f"Dense module {module_dir} has no model.safetensors or pytorch_model.bin")
    return {
        "in_features": int(cfg["in_features"]),
        "out_features": int(cfg["out_features"]),
        "bias": bool(cfg.get("bias", True)),
        "activation": ACTIVATIONS.get(act) or by_short[_short(act)],
        "use_residual": bool(cfg.get("use_residual", False)),
        "input_name": cfg.get("module_input_name", "sentence_embedding"),
        "output_name": cfg.get("module_output_name") or cfg.get("module_input_name", "sentence_embedding"),
        "weights_file": weights[0],
    }


def activation_fn(name: str):
    import tensorflow as tf

    return {
        "identity": tf.identity,
        "tanh": tf.tanh,
        "relu": tf.nn.relu,
        "gelu": lambda x: tf.nn.gelu(x, approximate=False),
        "sigmoid": tf.sigmoid,
        "silu": tf.nn.silu,
        "leaky_relu": lambda x: tf.nn.leaky_relu(x, alpha=0.01),
        "elu": tf.nn.elu,
        "softplus": tf.nn.softplus,
        "mish": lambda x: x * tf.tanh(tf.nn.softplus(x)),
    }[name]


def build(spec, model_dir: Path):
    import tensorflow as tf

    from ..encoders.weights import load_weights

    cfg = spec.config
    module_dir = spec.directory(model_dir)
    w = load_weights(module_dir / cfg["weights_file"])
    act = activation_fn(cfg["activation"])

    def get(name):
        for key in (name, "linear." + name.split(".", 1)[-1]):
            if key in w:
                return w[key]
        raise ModelError(f"Dense weights in {module_dir} lack {name!r}; found {sorted(w)}")

    class Dense(tf.Module):
        def __init__(self):
            super().__init__(name="dense")
            self.kernel = tf.Variable(get("linear.weight").T.astype("float32"), trainable=False, name="kernel")
            self.bias = tf.Variable(get("linear.bias").astype("float32"), trainable=False, name="bias") if cfg["bias"] else None
            self.residual = (
                tf.Variable(get("residual.weight").T.astype("float32"), trainable=False, name="residual")
                if cfg["use_residual"] and cfg["in_features"] != cfg["out_features"]
                else None
            )

        def __call__(self, features: dict) -> dict:
            x = features[cfg["input_name"]]
            y = tf.matmul(x, self.kernel)
            if self.bias is not None:
                y = y + self.bias
            y = act(y)
            if cfg["use_residual"]:
                y = y + (x if self.residual is None else tf.matmul(x, self.residual))
            features = dict(features)
            features[cfg["output_name"]] = y
            return features

    return Dense()
