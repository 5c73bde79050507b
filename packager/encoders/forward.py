"""Pick the TF forward module for a converted checkpoint (see ``spec.py``)."""
from __future__ import annotations

from .spec import PostLNWeights, PreNormWeights


def build(weights, *, unpad: bool = True, release: bool = False, name: str = "encoder", precision: str = "fp32"):
    """A :class:`~packager.encoders.layers.ChunkedEncoder` for ``convert_weights``' output.

    Args:
        weights: :class:`~packager.encoders.spec.PostLNWeights` or :class:`~packager.encoders.spec.PreNormWeights`.
        unpad: per-token layers on real tokens only (True, the serving path) or the padded layout.
        release: empty ``weights`` as its arrays become variables (see ``layers.build_layers``).
        name: module name.
        precision: ``"fp32"`` or ``"bf16"`` (see ``precision.py``; checked by the caller).
    """
    if isinstance(weights, PostLNWeights):
        from .layers import PostLNEncoder

        return PostLNEncoder(weights, unpad=unpad, release=release, name=name, precision=precision)
    if isinstance(weights, PreNormWeights):
        from .pre_norm import PreNormEncoder

        return PreNormEncoder(weights, unpad=unpad, release=release, name=name, precision=precision)
    raise TypeError(f"no forward pass for {type(weights).__name__}")
