"""CLIP as plain modules whose parameter names are OpenAI's checkpoint keys.

Two image towers (a vision transformer, and the modified ResNet with attention pooling), one
causal text transformer, QuickGELU and ``logit_scale``: ``CLIP(config).state_dict()`` has
exactly the keys of OpenAI's released weights, so they load with ``strict=True`` and no
renaming. The architecture is read off a state dict's shapes (:func:`config_from_state_dict`),
so any size loads.

Layout note: OpenAI's code runs its transformers sequence-first (LND); ours run batch-first
(NLD) and call ``scaled_dot_product_attention``. The parameters are the same tensors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError, StateDictMismatch
from pipeline.models.base import Family, ImageTextModule, ScoreKind
from pipeline.models.configs import (
    OPENAI_MEAN,
    OPENAI_STD,
    Activation,
    CLIPConfig,
    TextConfig,
    VisionConfig,
)
from pipeline.models.skeleton import skeleton
from pipeline.models.text_tokenizers import ClipBpeTokenizer, TextTokenizer

__all__ = [
    "CLIP",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "CLIPConfig",
    "TextConfig",
    "VisionConfig",
    "build_model",
    "config_from_state_dict",
]

# Keys some checkpoints carry that are not parameters (OpenAI's TorchScript archives keep these
# three as attributes; Hugging Face stores position ids as buffers). They are dropped on load.
_IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' dtype (stable in fp16 and bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        out = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: Activation) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    One fused input projection (``in_proj_weight`` holds q, k and v stacked) and
    ``scaled_dot_product_attention``; batch-first.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (N, L, 3D)
        qkv = qkv.view(n, length, 3, self.heads, width // self.heads)  # (N, L, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, nh, L, hs)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (N, nh, L, hs)
        out = out.transpose(1, 2).reshape(n, length, width)  # (N, L, D)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, activation: Activation, mlp_width: int = 0) -> None:
        super().__init__()
        hidden = mlp_width or width * 4
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", _activation(activation)),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(
        self, width: int, layers: int, heads: int, activation: Activation, mlp_width: int = 0
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, activation, mlp_width) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int, activation: Activation) -> None:
        super().__init__()
        if not isinstance(cfg.layers, int) or cfg.patch_size <= 0:
            raise ConfigError("a vision transformer needs an int layer count and a patch size")
        if cfg.image_resolution % cfg.patch_size:
            raise ConfigError(
                f"image resolution {cfg.image_resolution} is not a multiple of the patch size "
                f"{cfg.patch_size}"
            )
        width = cfg.width
        grid = cfg.image_resolution // cfg.patch_size
        self.input_resolution = cfg.image_resolution
        self.conv1 = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, activation, cfg.mlp_width)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (N, g*g, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, g*g + 1, D)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x[:, 0])  # (N, D): the class token
        return x @ self.proj  # (N, E)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        # every convolution has stride 1; a stride > 1 is an average pool after the 3x3 one
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean feature queries every position of the final feature map."""

    def __init__(self, spatial: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.empty(spatial * spatial + 1, width))
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # NCHW -> (N, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (N, HW + 1, C)
        x = x + self.positional_embedding.to(x.dtype)
        hs = c // self.heads
        q = self.q_proj(x[:, :1]).view(n, 1, self.heads, hs).transpose(1, 2)  # (N, nh, 1, hs)
        k = self.k_proj(x).view(n, -1, self.heads, hs).transpose(1, 2)  # (N, nh, HW+1, hs)
        v = self.v_proj(x).view(n, -1, self.heads, hs).transpose(1, 2)  # (N, nh, HW+1, hs)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, nh, 1, hs)
        out = out.transpose(1, 2).reshape(n, c)  # (N, C)
        return self.c_proj(out)  # (N, E)


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: a three-convolution stem, anti-aliased strides, attention pooling."""

    def __init__(self, cfg: VisionConfig, output_dim: int) -> None:
        super().__init__()
        if isinstance(cfg.layers, int):
            raise ConfigError("a ResNet image tower needs four stage depths")
        if cfg.image_resolution % 32:
            raise ConfigError(f"ResNet input resolution {cfg.image_resolution} is not /32")
        width = cfg.width
        self.input_resolution = cfg.image_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, cfg.layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool2d(
            cfg.image_resolution // 32, width * 32, cfg.heads, output_dim
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)  # type: ignore[no-any-return]


class CLIP(ImageTextModule):
    """CLIP: an image tower and a text tower projecting into one embedding space.

    ``encode_image`` takes normalised float pixels ``[B, 3, R, R]``; ``encode_text`` takes
    token ids ``[B, L]`` (``L <= context_length``); both return unnormalised embeddings
    ``[B, embed_dim]`` as OpenAI's do. ``preprocess`` turns ``uint8 [B, H, W, 3]`` RGB into
    the model's input on the model's device, so callers ship bytes, not floats.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        vis = config.vision
        self.visual: nn.Module
        if vis.kind == "vit":
            self.visual = VisionTransformer(vis, config.embed_dim, config.activation)
        else:
            self.visual = ModifiedResNet(vis, config.embed_dim)
        txt = config.text
        self.transformer = Transformer(
            txt.width, txt.layers, txt.heads, config.activation, txt.mlp_width
        )
        self.token_embedding = nn.Embedding(txt.vocab_size, txt.width)
        self.positional_embedding = nn.Parameter(torch.empty(txt.context_length, txt.width))
        self.ln_final = LayerNorm(txt.width)
        self.text_projection = nn.Parameter(torch.empty(txt.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        # Not weights: what the pipeline needs to know to feed the model.
        self.image_mean = OPENAI_MEAN
        self.image_std = OPENAI_STD
        self.logit_bias: torch.Tensor | None = None  # CLIP's head has no bias

    @property
    def family(self) -> Family:
        return "clip"

    @property
    def score_kind(self) -> ScoreKind:
        return "cosine"

    def _default_tokenizer(self) -> TextTokenizer:
        return ClipBpeTokenizer(self.context_length)

    @property
    def input_resolution(self) -> int:
        return self.config.vision.image_resolution

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.dtype

    @property
    def device(self) -> torch.device:
        return self.text_projection.device

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random initialisation for training from scratch (scaled by depth and width)."""
        g = generator

        def normal_(t: torch.Tensor, std: float) -> None:
            with torch.no_grad():
                t.normal_(0.0, std, generator=g)

        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                fan_in = module.weight[0].numel()
                normal_(module.weight, fan_in**-0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, SelfAttention):
                normal_(module.in_proj_weight, module.in_proj_weight.shape[1] ** -0.5)
                nn.init.zeros_(module.in_proj_bias)
        for tower in (self.transformer, getattr(self.visual, "transformer", None)):
            if isinstance(tower, Transformer):
                proj_std = (tower.width**-0.5) * ((2 * tower.layers) ** -0.5)
                for block in tower.resblocks:
                    assert isinstance(block, ResidualAttentionBlock)
                    c_proj = block.mlp.get_submodule("c_proj")
                    assert isinstance(c_proj, nn.Linear)
                    normal_(block.attn.out_proj.weight, proj_std)
                    normal_(c_proj.weight, proj_std)
        if isinstance(self.visual, ModifiedResNet):
            for module in self.visual.modules():
                if isinstance(module, Bottleneck):  # each residual branch starts at zero
                    nn.init.zeros_(module.bn3.weight)
        if isinstance(self.visual, VisionTransformer):
            width = self.visual.class_embedding.shape[0]
            normal_(self.visual.class_embedding, width**-0.5)
            normal_(self.visual.positional_embedding, width**-0.5)
            normal_(self.visual.proj, width**-0.5)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            normal_(pool.positional_embedding, pool.positional_embedding.shape[1] ** -0.5)
        normal_(self.token_embedding.weight, 0.02)
        normal_(self.positional_embedding, 0.01)
        normal_(self.text_projection, self.config.text.width**-0.5)
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1 / 0.07))

    @property
    def image_tower(self) -> nn.Module:
        """Normalised pixels ``[B, 3, R, R]`` -> image embeddings ``[B, E]``, unchecked (what a
        runtime traces)."""
        return self.visual

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        res = self.input_resolution
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[-2:]) != (res, res):
            raise ConfigError(
                f"encode_image takes normalised [B, 3, {res}, {res}] pixels, got "
                f"{tuple(pixels.shape)}; use preprocess() for uint8 frames"
            )
        return self.visual(pixels.to(self.dtype))  # type: ignore[no-any-return]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ConfigError(
                f"encode_text takes token ids [B, L<={self.context_length}], got "
                f"{tuple(tokens.shape)}"
            )
        length = tokens.shape[1]
        x = self.token_embedding(tokens)  # (N, L, D)
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = self.transformer(x, causal=True)
        x = self.ln_final(x)
        # the end-of-text token has the largest id: its position holds the sentence feature
        eot = tokens.argmax(dim=-1)  # (N,)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (N, D)
        out: torch.Tensor = x @ self.text_projection  # (N, E)
        return out

    def forward(
        self, pixels: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-text logits both ways, as in training: ``(per_image, per_text)``."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(tokens), dim=-1)
        per_image = self.logit_scale.exp() * image @ text.t()
        return per_image, per_image.t()


def _count_blocks(keys: list[str], prefix: str) -> int:
    depth = prefix.count(".")
    return len({k.split(".")[depth] for k in keys if k.startswith(prefix)})


def _mlp_width(state_dict: Mapping[str, torch.Tensor], block: str, width: int) -> int:
    """A block's MLP width, 0 when it is the usual 4 x width (so configs compare equal)."""
    hidden = state_dict[f"{block}mlp.c_fc.weight"].shape[0]
    return 0 if hidden == 4 * width else int(hidden)


def config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    activation: Activation = "quick_gelu",
) -> CLIPConfig:
    """Read the architecture off a state dict in OpenAI's layout.

    Head counts are not in the weights; OpenAI's convention is one head per 64 channels
    (ViT and text), and ``width * 32 / 64`` for the ResNet attention pool. Pass them to
    override (a Hugging Face ``config.json`` says them).
    """
    keys = list(state_dict)
    try:
        embed_dim = state_dict["text_projection"].shape[1]
        text_width = state_dict["ln_final.weight"].shape[0]
        text = TextConfig(
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            width=text_width,
            heads=text_heads or max(1, text_width // 64),
            layers=_count_blocks(keys, "transformer.resblocks."),
            mlp_width=_mlp_width(state_dict, "transformer.resblocks.0.", text_width),
        )
        vision: VisionConfig
        if "visual.proj" in state_dict:
            conv = state_dict["visual.conv1.weight"]
            width, patch = conv.shape[0], conv.shape[-1]
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = VisionConfig(
                kind="vit",
                image_resolution=grid * patch,
                width=width,
                layers=_count_blocks(keys, "visual.transformer.resblocks."),
                heads=vision_heads or max(1, width // 64),
                patch_size=patch,
                mlp_width=_mlp_width(state_dict, "visual.transformer.resblocks.0.", width),
            )
        elif "visual.attnpool.positional_embedding" in state_dict:
            stages = tuple(_count_blocks(keys, f"visual.layer{i}.") for i in (1, 2, 3, 4))
            width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
            spatial = round(
                (state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5
            )
            vision = VisionConfig(
                kind="resnet",
                image_resolution=spatial * 32,
                width=width,
                layers=(stages[0], stages[1], stages[2], stages[3]),
                heads=vision_heads or max(1, width * 32 // 64),
            )
        else:
            raise StateDictMismatch(
                "not a CLIP state dict: it has neither 'visual.proj' (vision transformer) nor "
                "'visual.attnpool.positional_embedding' (ResNet)",
                missing=["visual.proj"],
                unexpected=[],
            )
    except KeyError as e:
        if isinstance(e, StateDictMismatch):
            raise
        raise StateDictMismatch(
            f"not a CLIP state dict in OpenAI's layout: key {e.args[0]!r} is missing "
            f"(found {len(keys)} keys, e.g. {keys[:3]})",
            missing=[str(e.args[0])],
            unexpected=[],
        ) from e
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, activation=activation)


def _check_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if wrong:
            parts.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong[:10])}")
        raise StateDictMismatch(
            "the state dict does not fit the CLIP architecture read off its shapes: "
            + " | ".join(parts),
            missing=missing,
            unexpected=unexpected,
        )


def build_model(
    state_dict: Mapping[str, torch.Tensor],
    *,
    config: CLIPConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CLIP:
    """Instantiate CLIP for ``state_dict`` (architecture from its shapes unless ``config``),
    load it strictly, and return it on ``device`` in ``dtype``, in eval mode, without grads."""
    sd = {k: v for k, v in state_dict.items() if k not in _IGNORED_KEYS}
    cfg = config or config_from_state_dict(sd)
    with skeleton():
        model = CLIP(cfg)
    # BatchNorm step counters are bookkeeping, not weights: absent ones start at zero.
    for key in model.state_dict():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=torch.long)
    _check_keys(model, sd)
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
