"""The one activation table: Hugging Face ``hidden_act`` names and torch module names -> TF functions.

TF-free at import: each entry imports TensorFlow only when it is called (at trace time), so
``convert_config`` can validate an activation name without loading TensorFlow.

- :data:`ACTIVATIONS`: name -> callable on a TF tensor, with the exact semantics of
  ``transformers.activations.ACT2FN[name]`` (or of the torch module it names, for the few
  entries that only sentence-transformers' Dense uses: ``elu``, ``softplus``).
- :data:`TORCH_ACTIVATIONS`: the dotted torch class names sentence-transformers writes into a
  Dense ``config.json`` -> a key of :data:`ACTIVATIONS`.

Example:
    >>> act = activation("gelu_new")          # a TF callable
    >>> torch_name_to_activation("torch.nn.modules.activation.Tanh")
    'tanh'
"""
from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import UnsupportedError


def _tf():
    import tensorflow as tf

    return tf


def _gelu(x):
    return _tf().nn.gelu(x, approximate=False)  # exact erf GELU, like torch's default


def _gelu_tanh(x):
    return _tf().nn.gelu(x, approximate=True)


def _gelu_fast(x):
    return 0.5 * x * (1.0 + _tf().tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _laplace(x, mu=0.707107, sigma=0.282095):
    return 0.5 * (1.0 + _tf().math.erf((x - mu) / (sigma * math.sqrt(2.0))))


def _softplus(x):
    # torch.nn.Softplus (beta 1, threshold 20): linear above the threshold.
    tf = _tf()
    return tf.where(x > 20.0, x, tf.nn.softplus(x))


ACTIVATIONS: dict[str, Callable] = {
    # transformers.activations.ACT2CLS names
    "gelu": _gelu,
    "gelu_python": _gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_fast": _gelu_fast,
    "gelu_10": lambda x: _tf().clip_by_value(_gelu(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * _tf().sigmoid(1.702 * x),
    "laplace": _laplace,
    "relu": lambda x: _tf().nn.relu(x),
    "relu2": lambda x: _tf().square(_tf().nn.relu(x)),
    "relu6": lambda x: _tf().nn.relu6(x),
    "leaky_relu": lambda x: _tf().nn.leaky_relu(x, alpha=0.01),
    "silu": lambda x: _tf().nn.silu(x),
    "swish": lambda x: _tf().nn.silu(x),
    "sigmoid": lambda x: _tf().sigmoid(x),
    "tanh": lambda x: _tf().tanh(x),
    "mish": lambda x: x * _tf().tanh(_softplus(x)),
    "hardswish": lambda x: x * _tf().nn.relu6(x + 3.0) / 6.0,
    "sqrtsoftplus": lambda x: _tf().sqrt(_softplus(x)),
    "linear": lambda x: _tf().identity(x),
    # torch modules that sentence-transformers' Dense may name and ACT2FN lacks
    "elu": lambda x: _tf().nn.elu(x),
    "softplus": _softplus,
}

# Dotted torch class name (as sentence-transformers stores a Dense activation) -> ACTIVATIONS key.
TORCH_ACTIVATIONS: dict[str, str] = {
    "torch.nn.modules.linear.Identity": "linear",
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


def check_activation(name, field: str = "hidden_act") -> str:
    """Return ``name`` if it is in :data:`ACTIVATIONS`.

    Args:
        name: the config value.
        field: the config field it came from, for the error message.

    Raises:
        UnsupportedError: naming the field, the value and the supported names.
    """
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise UnsupportedError(f"unsupported {field} {name!r}. Supported: {', '.join(ACTIVATIONS)}")
    return name


def activation(name: str) -> Callable:
    """The TF function for an :data:`ACTIVATIONS` name (raises ``UnsupportedError`` if unknown)."""
    return ACTIVATIONS[check_activation(name, "activation")]


def torch_name_to_activation(dotted: str) -> str:
    """A torch activation class name, dotted (``torch.nn.modules.activation.Tanh``) or short (``Tanh``),
    -> its :data:`ACTIVATIONS` key.

    Raises:
        UnsupportedError: naming the class and listing the supported ones.
    """
    if dotted in TORCH_ACTIVATIONS:
        return TORCH_ACTIVATIONS[dotted]
    short = {k.rsplit(".", 1)[-1]: v for k, v in TORCH_ACTIVATIONS.items()}
    key = str(dotted).rsplit(".", 1)[-1]
    if key in short:
        return short[key]
    raise UnsupportedError(
        f"unsupported activation {dotted!r}. Supported: {', '.join(sorted(TORCH_ACTIVATIONS))}"
    )
