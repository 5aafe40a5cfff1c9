"""Model registry: architecture name -> builder of a multi-encoder model from the config."""

from __future__ import annotations

from typing import Callable, Sequence

from training.config import ModelConfig
from training.fusion import MultiEncoderModel

ModelBuilder = Callable[[ModelConfig, Sequence[int]], MultiEncoderModel]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return deco


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def build_model(config: ModelConfig, visual_dims: Sequence[int]) -> MultiEncoderModel:
    """visual_dims: the embedding size of each visual stream, in encoder order (empty for audio only)."""
    if config.architecture not in _REGISTRY:
        raise ValueError(f"unknown architecture {config.architecture!r}; known: {model_names()}")
    return _REGISTRY[config.architecture](config, visual_dims)


@register_model("transformer")
def _transformer(config: ModelConfig, visual_dims: Sequence[int]) -> MultiEncoderModel:
    from training.transformer import TransformerDecoderBlock, TransformerEncoderBlock
    return MultiEncoderModel(config, visual_dims, lambda: TransformerEncoderBlock(config),
                             lambda n: TransformerDecoderBlock(config, n), absolute_positions=True, final_norm=True)


@register_model("conformer")
def _conformer(config: ModelConfig, visual_dims: Sequence[int]) -> MultiEncoderModel:
    from training.conformer import ConformerDecoderBlock, ConformerEncoderBlock
    # Conformer blocks end in their own LayerNorm and carry position through relative attention only.
    return MultiEncoderModel(config, visual_dims, lambda: ConformerEncoderBlock(config),
                             lambda n: ConformerDecoderBlock(config, n), absolute_positions=False, final_norm=False)
