"""Model configurations: plain dataclasses read off a checkpoint's shapes, with no torch in them,
so the registry, ``clipguard models list`` and ``policy lint`` load fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "Activation",
    "CLIPConfig",
    "Family",
    "ScoreKind",
    "SiglipConfig",
    "SiglipFamily",
    "SiglipTextConfig",
    "SiglipVisionConfig",
    "TextConfig",
    "VisionConfig",
]

#: The model families: OpenAI-style CLIP (incl. open_clip's), SigLIP, SigLIP 2.
Family = Literal["clip", "siglip", "siglip2"]
#: How a model scores an image against a text: CLIP's cosine, SigLIP's sigmoid.
ScoreKind = Literal["cosine", "sigmoid"]

Activation = Literal["quick_gelu", "gelu"]

# Pixel statistics OpenAI's CLIP models were trained with (RGB, on [0, 1] values).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    kind: Literal["vit", "resnet"]  # vision transformer, or modified ResNet
    image_resolution: int  # square input side in pixels
    width: int  # ViT: token width; ResNet: stem width (stage widths are 1, 2, 4, 8 times it x4)
    layers: int | tuple[int, int, int, int]  # ViT: blocks; ResNet: bottlenecks per stage
    heads: int  # attention heads (ViT blocks, or the ResNet attention pool)
    patch_size: int = 0  # ViT only: side of a square patch
    mlp_width: int = 0  # ViT only: MLP hidden width (0: 4 x width; open_clip's bigG and g differ)


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77  # tokens per text, start and end tokens included
    vocab_size: int = 49408  # BPE vocabulary size
    width: int = 512  # token width
    heads: int = 8  # attention heads
    layers: int = 12  # transformer blocks
    mlp_width: int = 0  # MLP hidden width (0: 4 x width)


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int  # size of the joint image/text embedding
    vision: VisionConfig  # image tower
    text: TextConfig = field(default_factory=TextConfig)  # text tower
    activation: Activation = "quick_gelu"  # OpenAI's weights need QuickGELU, not GELU


SiglipFamily = Literal["siglip", "siglip2"]

# SigLIP's pixels are scaled to [-1, 1].
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SiglipVisionConfig:
    image_size: int  # square input side in pixels (So400m/14 at 384: the last 6 px are unused)
    patch_size: int  # side of a square patch
    width: int  # token width (also the embedding size: the image tower has no projection)
    layers: int  # transformer blocks
    heads: int  # attention heads (blocks and the pooling head)
    mlp_width: int  # hidden width of each MLP
    eps: float = 1e-6  # LayerNorm epsilon


@dataclass(frozen=True)
class SiglipTextConfig:
    context_length: int = 64  # tokens per text; every prompt is padded to it
    vocab_size: int = 32000  # 32000 (SigLIP, T5 SentencePiece), 256000 (SigLIP 2, Gemma)
    width: int = 768  # token width
    layers: int = 12  # transformer blocks
    heads: int = 12  # attention heads
    mlp_width: int = 3072  # hidden width of each MLP
    embed_dim: int = 768  # output of the head (equals the image tower's width)
    eps: float = 1e-6  # LayerNorm epsilon


@dataclass(frozen=True)
class SiglipConfig:
    vision: SiglipVisionConfig  # image tower
    text: SiglipTextConfig  # text tower
    family: SiglipFamily = "siglip"  # which tokenizer and text preprocessing it was trained with

    @property
    def embed_dim(self) -> int:
        return self.vision.width
