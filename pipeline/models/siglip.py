"""SigLIP and SigLIP 2 (fixed resolution) as plain modules whose names are the checkpoint keys.

``SigLIP(config).state_dict()`` has exactly the keys of a Hugging Face ``SiglipModel``
``model.safetensors``, so those weights load with ``strict=True`` and no renaming (other
layouts are mapped onto these keys by :mod:`pipeline.models.siglip_formats`). Fixed-resolution
SigLIP 2 checkpoints use the same architecture; only the tokenizer differs.

The image tower is a ViT without class token: patch embedding (a convolution with bias), learned
position embeddings, pre-norm blocks, a final LayerNorm, then attention pooling (the MAP head:
one learned probe queries every patch, followed by a LayerNorm'd MLP with a residual). The text
tower is a bidirectional transformer (no causal mask) whose *last* position, after the final
LayerNorm, goes through a linear head; prompts are padded to the full context so that position
is well defined. MLPs use tanh-approximated GELU, LayerNorm eps is 1e-6. A pair's logit is
``logit_scale.exp() * cos + logit_bias`` and its probability the sigmoid of that.

Transformers run batch-first and call ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.base import Family, ImageTextModule, ScoreKind
from pipeline.models.configs import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
)
from pipeline.models.model import LayerNorm

__all__ = [
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "SigLIP",
    "SiglipConfig",
    "SiglipTextConfig",
    "SiglipVisionConfig",
]


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections (Hugging Face names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        hs = width // self.heads
        q = self.q_proj(x).view(n, length, self.heads, hs).transpose(1, 2)  # (N, nh, L, hs)
        k = self.k_proj(x).view(n, length, self.heads, hs).transpose(1, 2)  # (N, nh, L, hs)
        v = self.v_proj(x).view(n, length, self.heads, hs).transpose(1, 2)  # (N, nh, L, hs)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, nh, L, hs)
        out = out.transpose(1, 2).reshape(n, length, width)  # (N, L, D)
        return self.out_proj(out)


class MLP(nn.Module):
    """fc1, tanh-approximated GELU, fc2."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, eps: float) -> None:
        super().__init__()
        self.layer_norm1 = LayerNorm(width, eps=eps)
        self.self_attn = Attention(width, heads)
        self.layer_norm2 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [EncoderLayer(width, heads, mlp_width, eps) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig) -> None:
        super().__init__()
        grid = cfg.image_size // cfg.patch_size  # a remainder is cropped by the strided conv
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(grid * grid, cfg.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels)  # (N, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (N, g*g, D)
        return x + self.position_embedding.weight.to(x.dtype)


class PoolingAttention(nn.Module):
    """The parameters of ``nn.MultiheadAttention`` (stacked q, k, v), as checkpoints store them;
    the computation is in :class:`MultiheadAttentionPoolingHead`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)


class MultiheadAttentionPoolingHead(nn.Module):
    """MAP head: a learned probe attends over all patches; LayerNorm'd MLP with a residual."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attention = PoolingAttention(width)
        self.layernorm = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        hs = width // self.heads
        w, b = self.attention.in_proj_weight, self.attention.in_proj_bias  # q, k, v stacked
        w_q, w_kv, b_q, b_kv = w[:width], w[width:], b[:width], b[width:]
        probe = self.probe.to(x.dtype)
        q = F.linear(probe, w_q, b_q).view(1, 1, self.heads, hs).transpose(1, 2)  # (1, nh, 1, hs)
        kv = F.linear(x, w_kv, b_kv).view(n, length, 2, self.heads, hs)  # (N, L, 2, nh, hs)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (N, nh, L, hs)
        out = F.scaled_dot_product_attention(q.expand(n, -1, -1, -1), k, v)  # (N, nh, 1, hs)
        out = out.transpose(1, 2).reshape(n, width)  # (N, D)
        out = self.attention.out_proj(out)
        return out + self.mlp(self.layernorm(out))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig) -> None:
        super().__init__()
        if cfg.patch_size <= 0 or cfg.image_size < cfg.patch_size:
            raise ConfigError(
                f"image size {cfg.image_size} is smaller than the patch size {cfg.patch_size}"
            )
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = Encoder(cfg.width, cfg.layers, cfg.heads, cfg.mlp_width, cfg.eps)
        self.post_layernorm = LayerNorm(cfg.width, eps=cfg.eps)
        self.head = MultiheadAttentionPoolingHead(cfg.width, cfg.heads, cfg.mlp_width, cfg.eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embeddings(pixels))
        return self.head(self.post_layernorm(x))  # (N, D)


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: SiglipTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens)  # (N, L, D)
        return x + self.position_embedding.weight[: tokens.shape[1]].to(x.dtype)


class TextTransformer(nn.Module):
    def __init__(self, cfg: SiglipTextConfig) -> None:
        super().__init__()
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = Encoder(cfg.width, cfg.layers, cfg.heads, cfg.mlp_width, cfg.eps)
        self.final_layer_norm = LayerNorm(cfg.width, eps=cfg.eps)
        self.head = nn.Linear(cfg.width, cfg.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.final_layer_norm(self.encoder(self.embeddings(tokens)))  # (N, L, D)
        return self.head(x[:, -1])  # the last position, padding or not: (N, E)


class SigLIP(ImageTextModule):
    """SigLIP / SigLIP 2: image and text towers, ``logit_scale`` and ``logit_bias``.

    ``encode_image`` takes normalised float pixels ``[B, 3, R, R]``; ``encode_text`` takes
    token ids ``[B, L]`` (``L <= context_length``; the tokenizer pads to the full context, as
    the model was trained); both return unnormalised embeddings ``[B, embed_dim]``.
    """

    def __init__(self, config: SiglipConfig) -> None:
        super().__init__()
        if config.text.embed_dim != config.vision.width:
            raise ConfigError(
                f"text head size {config.text.embed_dim} differs from the image tower's width "
                f"{config.vision.width}: the embeddings would not share a space"
            )
        self.config = config
        self.text_model = TextTransformer(config.text)
        self.vision_model = VisionTransformer(config.vision)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))
        self.image_mean = SIGLIP_MEAN
        self.image_std = SIGLIP_STD

    @property
    def family(self) -> Family:
        return self.config.family

    @property
    def score_kind(self) -> ScoreKind:
        return "sigmoid"

    @property
    def input_resolution(self) -> int:
        return self.config.vision.image_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_model.head.weight.device

    @property
    def image_tower(self) -> nn.Module:
        """Normalised pixels ``[B, 3, R, R]`` -> image embeddings ``[B, E]``, unchecked (what a
        runtime traces)."""
        return self.vision_model

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        res = self.input_resolution
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[-2:]) != (res, res):
            raise ConfigError(
                f"encode_image takes normalised [B, 3, {res}, {res}] pixels, got "
                f"{tuple(pixels.shape)}; use preprocess() for uint8 frames"
            )
        return self.vision_model(pixels.to(self.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or not 0 < tokens.shape[1] <= self.context_length:
            raise ConfigError(
                f"encode_text takes token ids [B, L<={self.context_length}], got "
                f"{tuple(tokens.shape)}"
            )
        return self.text_model(tokens)

    def forward(
        self, pixels: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid logits both ways, ``(per_image, per_text)``: ``scale * cos + bias``."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(tokens), dim=-1)
        per_image = image @ text.t() * self.logit_scale.exp() + self.logit_bias
        return per_image, per_image.t()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random weights (for tests and benchmarks: no training recipe is implied)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "layer_norm" in name or "layernorm" in name:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif p.ndim == 1 and name.endswith("bias"):
                    p.zero_()
                else:
                    fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                    p.normal_(0.0, fan_in**-0.5, generator=generator)
            self.logit_scale.fill_(2.302585)  # log(10), SigLIP's initial temperature
            self.logit_bias.fill_(-10.0)
